"""The Redis pub/sub reader alone: CPU per message received, livedata's protocol vs redis-py.

A ``redis-server`` on a free loopback port; in one process (uvloop) a publisher sends
``--messages`` live messages (53 fields, the shape of ``bench_fanout.py``) over 50
channels in pipelines of 1,000, and a subscriber on the same loop counts them:

- ``redis-py``: ``PubSub.get_message(timeout=…)`` in a loop (redis-py's reader, with
  hiredis when installed: a coroutine, a timeout and a dict per message; how
  ``RedisPubSub`` read before);
- ``livedata``: :class:`~livedata.bus.redis.RedisPubSub` (its protocol reader with a
  hiredis parser, ``bus/redis_subscriber.py``).

Printed: CPU µs per message of the process minus a publishing-only run, each reader
``--rounds`` times (alternating), and the ratio; with the load average.

    python bench/bench_subscriber.py

Prints figures only; asserts nothing.  The Redis server and its directory are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import redis.asyncio as aioredis
import uvloop

from livedata.bus.redis import RedisPubSub

CHANNELS = 50
MESSAGE = orjson.dumps(
    {"ts": 1.0, "seq": 1, "epoch": "bench", "values": {f"f{i:02d}": i / 10 for i in range(53)}}
)


async def publish(url: str, count: int) -> None:
    client = aioredis.from_url(url)
    for start in range(0, count, 1000):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(count, start + 1000)):
                pipe.publish(f"ch{i % CHANNELS}", MESSAGE)
            await pipe.execute()
        await asyncio.sleep(0.005)
    await client.aclose()


async def publishing_only(url: str, count: int) -> None:
    await publish(url, count)


async def redis_py(url: str, count: int) -> None:
    client = aioredis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe(*(f"ch{c}" for c in range(CHANNELS)))
    publisher = asyncio.create_task(publish(url, count))
    got = 0
    while got < count:
        message = await pubsub.get_message(timeout=15.0)
        if message is not None and message["type"] == "message":
            got += 1
    await publisher
    await pubsub.aclose()
    await client.aclose()


async def livedata(url: str, count: int) -> None:
    subscriber = RedisPubSub(url)
    await subscriber.start()
    got = [0]
    done = asyncio.Event()

    def count_one(channel: str, message: object) -> None:
        got[0] += 1
        if got[0] == count:
            done.set()

    for c in range(CHANNELS):
        await subscriber.subscribe(f"ch{c}", count_one)
    publisher = asyncio.create_task(publish(url, count))
    await done.wait()
    await publisher
    await subscriber.close()


def cpu_us(run: Callable[[str, int], Awaitable[None]], url: str, count: int) -> float:
    start = time.process_time()
    uvloop.run(run(url, count))  # type: ignore[arg-type]
    return (time.process_time() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from tests.servers.redis import start_redis

    tmp = Path(tempfile.mkdtemp(prefix="bench_subscriber_"))
    server = start_redis(tmp)
    try:
        results: dict[str, list[float]] = {"redis-py": [], "livedata": []}
        for _ in range(args.rounds):
            base = cpu_us(publishing_only, server.url, args.messages)
            results["redis-py"].append(cpu_us(redis_py, server.url, args.messages) - base)
            results["livedata"].append(cpu_us(livedata, server.url, args.messages) - base)
        print(
            f"{args.messages:,} messages of {len(MESSAGE)} bytes on {CHANNELS} channels; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        for name, values in results.items():
            print(
                f"  {name:9} CPU µs per message received: " + ", ".join(f"{v:.2f}" for v in values)
            )
        ratio = min(results["livedata"]) / min(results["redis-py"])
        print(f"  livedata / redis-py (best of each): {ratio:.2f}×")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
