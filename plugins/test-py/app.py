"""test-py: a Python test plugin (tests only).

- payload ``loop``: loops forever (the host must interrupt it at its deadline);
- payload ``alloc:N``: holds N MiB for the call, then acks (memory limits);
- payload ``ok``: acks;
- payload ``key``: terminates with ``key:<idempotency key>``;
- anything else: terminates with ``handled-by:py``, like test-v1/test-v2, so
  a hot swap from a Rust version shows which version handled each message.

Config is accepted and ignored (it runs with test-v1's config in hot-swap tests).
"""

import jetplug
from jetplug import ack, term


class TestPy(jetplug.Plugin):
    def handle(self, msg):
        body = bytes(msg.payload)
        if body == b"loop":
            n = 0
            while True:
                n += 1
        if body.startswith(b"alloc:"):
            held = bytearray(int(body[6:]) * 1024 * 1024)
            return ack() if len(held) else ack()
        if body == b"ok":
            return ack()
        if body == b"key":
            return term("key:" + jetplug.idempotency_key(msg))
        return term("handled-by:py")


Handler = jetplug.export(TestPy)
