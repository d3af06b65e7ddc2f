"""The distributed live path: records from Kafka through distribute to Redis, on real servers."""

from __future__ import annotations

import asyncio

from livedata.bus.base import LiveMessage, Message, encoded
from livedata.bus.kafka import KafkaLog
from livedata.bus.redis import RedisPubSub
from livedata.model import Kind, Record, live_channel
from livedata.pipeline.distribute import Distribute
from tests.bus.contract import eventually, unique_id
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
