"""The log and pub/sub contracts on the in-process bus, plus memory-only behaviour."""

from __future__ import annotations

import asyncio

from livedata.bus import open_log
from livedata.bus.memory import MemoryLog, MemoryPubSub
from livedata.model import Kind, Record
from tests.bus.contract import LogContract, PubSubContract, unique_id


class TestMemoryLog(LogContract):
    def make_url(self, capacity: int | None = None) -> str:
        query = f"?capacity={capacity}" if capacity is not None else ""
        return f"memory://{unique_id('log')}{query}"


class TestMemoryPubSub(PubSubContract):
    def make_url(self) -> str:
        return f"memory://{unique_id('pubsub')}"


def test_open_log_and_pubsub_pick_memory_backends() -> None:
    """``memory://`` URLs open the in-process log and pub/sub."""
    from livedata.bus import open_pubsub

    assert isinstance(open_log("memory://"), MemoryLog)
    assert isinstance(open_pubsub("memory://"), MemoryPubSub)


def test_memory_log_url_works_from_a_second_event_loop() -> None:
    """A memory log URL used in one event loop still works in the next (e.g. test after test)."""
    url = f"memory://{unique_id('log')}"

    async def round_trip() -> list[Record]:
        log = MemoryLog(url)
        batches = log.consume("g")
        first = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0.01)  # the consumer now waits on the broker's condition
        await log.append([Record("t", "m1", "vehicle_can", 1, Kind.REALTIME, {"x": 1})])
        batch = await asyncio.wait_for(first, 2)
        await log.close()
        return batch

    assert len(asyncio.run(round_trip())) == 1
    assert len(asyncio.run(round_trip())) == 1
