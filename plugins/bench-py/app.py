"""Benchmark plugin for ``jetplug-bench languages`` (twin of bench-rust):
config ``mode = "noop"`` (default) acks every message; ``mode = "json"``
parses each payload as JSON first (terminating what does not parse)."""

import json

import jetplug
from jetplug import ConfigError, ack, term

ACK = ack()


class Bench(jetplug.Plugin):
    def __init__(self, config):
        config.deny_unknown(["mode"])
        mode = config.get("mode", "noop")
        if mode not in ("noop", "json"):
            raise ConfigError("mode", f"`{mode}`: use noop or json")
        self.parse = mode == "json"

    def handle_batch(self, batch):
        if not self.parse:
            return [ACK] * len(batch)
        out = []
        for msg in batch:
            try:
                json.loads(msg.payload)
                out.append(ACK)
            except ValueError as e:
                out.append(term(f"payload is not JSON: {e}"))
        return out


Handler = jetplug.export(Bench)
