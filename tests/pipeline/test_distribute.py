"""Distribute on the memory bus: only real-time records go live, numbered per channel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import orjson

from livedata.bus.base import LiveMessage, encoded
from livedata.bus.memory import MemoryLog, MemoryPubSub
from livedata.errors import BusError
from livedata.model import Kind, Record, decode_records, encode_records, live_channel
from livedata.pipeline.distribute import Distribute
from tests.bus.contract import parsed


async def test_only_realtime_records_are_published_with_per_channel_sequence() -> None:
    """Backfill is not published; each channel numbers its messages 1, 2, 3 … under one epoch."""
    url = f"memory://{uuid.uuid4().hex}"
    log, pubsub = MemoryLog(url), MemoryPubSub(url)
    received: dict[str, list[dict]] = {}
    for chassis in ("A", "B"):
        channel = live_channel("t", chassis, "vehicle_can")
        await pubsub.subscribe(
            channel,
            lambda ch, data: received.setdefault(ch, []).append(orjson.loads(encoded(data))),
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


class CountingPubSub(MemoryPubSub):
    """The memory pub/sub, remembering the size of each batch it was given."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.batches: list[int] = []

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        self.batches.append(len(messages))
        await super().publish_many(messages)


async def test_a_log_batch_is_published_in_one_call() -> None:
    """The real-time records of one log batch reach the pub/sub as one batch, numbered in order."""
    url = f"memory://{uuid.uuid4().hex}"
    log, pubsub = MemoryLog(url), CountingPubSub(url)
    received: list[dict] = []
    channel = live_channel("t", "A", "vehicle_can")
    await pubsub.subscribe(channel, lambda ch, data: received.append(orjson.loads(encoded(data))))
    await log.append(
        [Record("t", "A", "vehicle_can", ts, Kind.REALTIME, {"x": ts}) for ts in range(300)]
    )
    task = asyncio.create_task(Distribute(log, pubsub).run())
    for _ in range(100):
        if len(received) >= 300:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert pubsub.batches == [300]
    assert [m["seq"] for m in received] == list(range(1, 301))


async def test_a_refused_batch_is_skipped_and_logged_once(caplog) -> None:
    """A batch the pub/sub refuses (BusError) is skipped with one log line; distribute goes on."""
    url = f"memory://{uuid.uuid4().hex}"
    log, pubsub = MemoryLog(url), CountingPubSub(url)

    async def refuse(messages: Sequence[tuple[str, bytes]]) -> None:
        pubsub.batches.append(len(messages))
        raise BusError("pub/sub is closed")

    pubsub.publish_many = refuse  # type: ignore[method-assign]
    task = asyncio.create_task(Distribute(log, pubsub).run())
    await asyncio.sleep(0.01)
    for ts in (1, 2):
        await log.append([Record("t", "A", "vehicle_can", ts, Kind.REALTIME, {"x": ts})])
        for _ in range(100):
            if len(pubsub.batches) >= ts:
                break
            await asyncio.sleep(0.01)
    alive = not task.done()
    task.cancel()
    assert pubsub.batches == [1, 1] and alive
    refused = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(refused) == 1


def test_records_read_from_the_log_are_published_without_parsing_their_values() -> None:
    """Records decoded from the log become messages made of their values' JSON with the head
    around it, byte for byte what the in-process message encodes to; their values stay
    unparsed."""
    url = f"memory://{uuid.uuid4().hex}"
    odd = {"x": 1.1, "big": 1e300, "n": -7, "on": False, "s": 'ü "q" \\ \n\u2028', "e": ""}
    records = decode_records(
        encode_records(
            [
                Record("t", "A", "vehicle_can", 1000, Kind.REALTIME, odd),
                Record("t", "A", "vehicle_can", 1500, Kind.BACKFILL, {"x": 2}),
                Record("t", "A", "vehicle_can", 2000, Kind.REALTIME, {}),
            ]
        ),
        values_as_json=True,
    )
    distribute = Distribute(MemoryLog(url), MemoryPubSub(url))
    channel = live_channel("t", "A", "vehicle_can")
    assert distribute.messages(records) == [
        (channel, LiveMessage(1000, 1, distribute.epoch, odd).encode()),
        (channel, LiveMessage(2000, 2, distribute.epoch, {}).encode()),
    ]
    assert not any(parsed(record) for record in records)
