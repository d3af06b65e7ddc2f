"""Distribute on the memory bus: only real-time records go live, numbered per channel."""

from __future__ import annotations

import asyncio
import uuid

import orjson

from livedata.bus.memory import MemoryLog, MemoryPubSub
from livedata.model import Kind, Record, live_channel
from livedata.pipeline.distribute import Distribute


async def test_only_realtime_records_are_published_with_per_channel_sequence() -> None:
    """Backfill is not published; each channel numbers its messages 1, 2, 3 … under one epoch."""
    url = f"memory://{uuid.uuid4().hex}"
    log, pubsub = MemoryLog(url), MemoryPubSub(url)
    received: dict[str, list[dict]] = {}
    for chassis in ("A", "B"):
        channel = live_channel("t", chassis, "vehicle_can")
        await pubsub.subscribe(
            channel, lambda ch, data: received.setdefault(ch, []).append(orjson.loads(data))
        )
    distribute = Distribute(log, MemoryPubSub(url))
    task = asyncio.create_task(distribute.run())
    await asyncio.sleep(0.01)
    records = [
        Record("t", "A", "vehicle_can", 1000, Kind.REALTIME, {"x": 1}),
        Record("t", "A", "vehicle_can", 2000, Kind.BACKFILL, {"x": 2}),
        Record("t", "B", "vehicle_can", 1000, Kind.REALTIME, {"x": 3}),
        Record("t", "A", "vehicle_can", 3000, Kind.REALTIME, {"x": 4}),
    ]
    await log.append(records)
    for _ in range(100):
        if sum(map(len, received.values())) >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    a = received[live_channel("t", "A", "vehicle_can")]
    b = received[live_channel("t", "B", "vehicle_can")]
    assert [(m["seq"], m["ts"], m["values"]) for m in a] == [
        (1, 1000, {"x": 1}),
        (2, 3000, {"x": 4}),
    ]
    assert [(m["seq"], m["values"]) for m in b] == [(1, {"x": 3})]
    assert {m["epoch"] for m in a + b} == {distribute.epoch}
