"""The nats-py consumer `jetplug-bench throughput` sets beside jetplug: what
a team would write in Python (the seeds' stack) without jetplug. It binds to
an existing durable pull consumer, fetches batches and acks each message,
nothing else, until COUNT messages are done; the bench times it from the
server's side, as it does the others.

Usage: natspy_consumer.py URL STREAM DURABLE COUNT BATCH
"""

import asyncio
import sys

import nats
from nats.errors import TimeoutError as FetchTimeout


async def main(url: str, stream: str, durable: str, count: int, batch: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
    done = 0
    while done < count:
        try:
            msgs = await sub.fetch(batch, timeout=5)
        except FetchTimeout:
            continue
        for m in msgs:
            await m.ack()
            done += 1
    await nc.flush()
    await nc.close()


if __name__ == "__main__":
    url, stream, durable, count, batch = sys.argv[1:6]
    asyncio.run(main(url, stream, durable, int(count), int(batch)))
