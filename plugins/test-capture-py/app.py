"""test-capture-py: test-capture in Python (tests only; the capture proof in
a second language). For each message (payload: an account id) it reads the
account's status from PostgreSQL, the time of day from ``time.time()`` and
four random bytes from ``os.urandom`` (logged as a nonce), and terminates
only when the account is ``frozen`` and it is past the ``cutoff``.

Config: ``database`` (default ``db``), ``cutoff`` (``HH:MM`` UTC, default
``17:00``), ``api_key`` (logged, so a capture must mask it).
"""

import os
import time

import jetplug
from jetplug import ack, retry, term
from componentize_py_types import Err
from wit_world.imports import sql, types


class Accounts(jetplug.Plugin):
    def __init__(self, config):
        super().__init__(config)
        self.database = config.get("database", "db")
        hours, minutes = config.get("cutoff", "17:00").split(":")
        self.cutoff = int(hours) * 60 + int(minutes)
        self.api_key = config.get("api_key", "")

    def handle(self, msg):
        account = bytes(msg.payload).decode().strip()
        try:
            rows = sql.query(self.database, "SELECT status FROM accounts WHERE id = $1",
                             [sql.Value_Text(account)])
        except Err as e:
            if isinstance(e.value, types.Error_Unavailable):
                return retry(100)
            return term(f"query failed: {e.value}")
        if not rows.rows:
            return term(f"unknown account {account}")
        status = rows.rows[0][0].value
        minute = int(time.time()) % 86400 // 60
        at = f"{minute // 60:02}:{minute % 60:02}"
        nonce = os.urandom(4).hex()
        jetplug.info(f"account {account} is {status} at {at} (key {self.api_key}, nonce {nonce})")
        if status == "frozen" and minute >= self.cutoff:
            return term(f"cannot settle account {account} at {at}")
        return ack()


Handler = jetplug.export(Accounts)
