"""The distributed live path: records from Kafka through distribute to Redis, on real servers."""

from __future__ import annotations

import asyncio
import itertools

import orjson

from livedata.bus.base import LiveMessage, Message, encoded
from livedata.bus.kafka import KafkaLog
from livedata.bus.redis import RedisPubSub
from livedata.model import Kind, Record, live_channel
from livedata.pipeline.distribute import Distribute
from tests.bus.contract import eventually, unique_id
from tests.bus.test_kafka import partition_of
from tests.servers.kafka import KafkaServer
from tests.servers.redis import RedisServer

JOIN_TIMEOUT = 20.0
"""Seconds the consumer group may take to form (Tansu answers a join after ~5 s)."""


async def test_distribute_sends_the_logs_values_json_as_the_live_message(
    kafka_server: KafkaServer, redis_server: RedisServer
) -> None:
    """Records read from Kafka reach a Redis subscriber and the channel's history as exactly the
    bytes the in-process message encodes to, numbered per channel; backfill is not published."""
    tenant = unique_id("t")
    log = KafkaLog(f"{kafka_server.url}/{unique_id('topic')}")
    pubsub = RedisPubSub(f"{redis_server.url}?prefix={unique_id('p')}/")
    await log.start()
    await pubsub.start()
    odd = {"x": 1.1, "big": 1e300, "tiny": -5e-324, "n": -7, "on": True, "s": 'ü "q" \\ \n\u2028'}
    records = [
        Record(tenant, "A", "vehicle_can", 1000, Kind.REALTIME, odd),
        Record(tenant, "A", "vehicle_can", 1500, Kind.BACKFILL, {"x": 0.5}),
        Record(tenant, "B", "client_raw_data", 1000, Kind.REALTIME, {}),
        Record(tenant, "A", "vehicle_can", 2000, Kind.REALTIME, {"x": 2.25}),
    ]
    received: dict[str, list[Message]] = {}
    channels = [
        live_channel(tenant, "A", "vehicle_can"),
        live_channel(tenant, "B", "client_raw_data"),
    ]
    for channel in channels:
        await pubsub.subscribe(channel, lambda ch, m: received.setdefault(ch, []).append(m))
    distribute = Distribute(log, pubsub)
    task = asyncio.create_task(distribute.run())
    try:
        await log.append(records)
        await eventually(lambda: sum(map(len, received.values())) >= 3, timeout=JOIN_TIMEOUT)
        a, b = channels
        expected = {
            a: [
                LiveMessage(1000, 1, distribute.epoch, odd).encode(),
                LiveMessage(2000, 2, distribute.epoch, {"x": 2.25}).encode(),
            ],
            b: [LiveMessage(1000, 1, distribute.epoch, {}).encode()],
        }
        assert received == expected
        for channel in channels:
            assert [encoded(m) for m in await pubsub.history(channel)] == expected[channel]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await log.close()
        await pubsub.close()


async def test_distribute_by_share_restarted_resumes_at_once_and_the_other_never_stops(
    kafka_server: KafkaServer, redis_server: RedisServer
) -> None:
    """Two distributes on ``share=0/2`` and ``1/2``: while the first is gone the second's
    machines get every record live, and the first's restart publishes what its machines
    sent meanwhile within 3 s (no rebalance, from its last commit), none missing."""
    tenant = unique_id("t")
    url = f"{kafka_server.url}/{unique_id('topic')}?partitions=4"
    prefix = unique_id("p")
    producer = KafkaLog(url)
    pubsub = RedisPubSub(f"{redis_server.url}?prefix={prefix}/")
    await producer.start()
    await pubsub.start()
    machines = [f"m{i}" for i in range(16)]
    share_of = {m: partition_of(m, 4) % 2 for m in machines}
    got: dict[str, list[tuple[float, int]]] = {m: [] for m in machines}
    loop = asyncio.get_running_loop()
    for m in machines:
        await pubsub.subscribe(
            live_channel(tenant, m, "vehicle_can"),
            lambda _, msg, m=m: got[m].append((loop.time(), orjson.loads(encoded(msg))["ts"])),
        )
    running: dict[int, tuple[KafkaLog, asyncio.Task[None]]] = {}

    async def start(share: int) -> None:
        log = KafkaLog(f"{url}&share={share}/2")
        await log.start()
        running[share] = log, asyncio.create_task(Distribute(log, pubsub).run())

    async def stop(share: int) -> None:
        log, task = running.pop(share)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await log.close()

    sent: list[int] = []

    async def send(seconds: float) -> None:
        for _ in range(int(seconds / 0.2)):
            ts = 1000 * (len(sent) + 1)
            await producer.append(
                [Record(tenant, m, "vehicle_can", ts, Kind.REALTIME, {"x": 1}) for m in machines]
            )
            sent.append(ts)
            await asyncio.sleep(0.2)

    try:
        await start(0)
        await start(1)
        await send(3)
        await eventually(lambda: all(got[m] for m in machines), timeout=JOIN_TIMEOUT)
        await stop(0)
        await send(3)
        restarted = loop.time()
        await start(0)
        await send(2)
        await eventually(
            lambda: all({ts for _, ts in got[m]} >= set(sent) for m in machines), timeout=10
        )
        for m in machines:
            arrival = {ts: t for t, ts in reversed(got[m])}  # the first arrival of each
            if share_of[m] == 0:
                assert max(arrival.values()) - restarted < 3.0, m
            else:
                stamps = [arrival[ts] for ts in sent]
                assert max(b - a for a, b in itertools.pairwise(stamps)) < 1.5, m
        assert set(share_of.values()) == {0, 1}
    finally:
        for share in list(running):
            await stop(share)
        await producer.close()
        await pubsub.close()
