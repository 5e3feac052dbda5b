"""{{name}}: a jetplug plugin. One example of each decision:
ack (done), retry (not now), term (never: dead-letter it)."""

import jetplug
from jetplug import ack, retry, term


class MyPlugin(jetplug.Plugin):
    """Config keys: ``max_amount`` (default 1000)."""

    def __init__(self, config):
        config.deny_unknown(["max_amount"])
        self.max_amount = config.get_float("max_amount", 1000.0)

    def handle(self, msg):
        # Not JSON, or not an order: it will never work, dead-letter it.
        try:
            order = jetplug.json_payload(msg)
            order_id, amount = order["id"], float(order["amount"])
        except jetplug.PayloadError as e:
            return term(e)
        except (KeyError, TypeError, ValueError) as e:
            return term(f"not an order: {e!r}")
        if amount < 0:
            return term(f"order {order_id}: negative amount")
        # Too big to take now: ask for it again in five seconds.
        if amount > self.max_amount:
            return retry(5000)
        jetplug.info(f"order {order_id} accepted")
        return ack()


Handler = jetplug.export(MyPlugin)
