"""The store contract on :class:`~livedata.store.memory.MemoryStore`, plus its URL sharing."""

from __future__ import annotations

from pathlib import Path

from livedata.model import Kind, Record
from livedata.store import open_store
from livedata.store.memory import MemoryStore
from tests.store.contract import T0, StoreContract, unique_id


class TestMemoryStore(StoreContract):
    def make_url(self, tmp_path: Path) -> str:
        return f"memory://{unique_id('store')}"


async def test_open_store_picks_memory_backend() -> None:
    """``memory://`` opens a MemoryStore."""
    assert isinstance(open_store("memory://"), MemoryStore)


async def test_same_url_shares_data_other_url_does_not() -> None:
    """Stores opened with the same memory URL see each other's writes; other names do not."""
    name = unique_id("store")
    first, second, other = (
        open_store(f"memory://{name}"),
        open_store(f"memory://{name}"),
        open_store(f"memory://{name}-other"),
    )
    await first.write([Record("t1", "m1", "vehicle_can", T0, Kind.REALTIME, {"x": 1})])
    assert await second.query("t1", "m1", "vehicle_can", ["x"], T0, T0) == {"x": [(T0, 1)]}
    assert await other.query("t1", "m1", "vehicle_can", ["x"], T0, T0) == {"x": []}
