"""The spill journal on its own: bounded, ordered, durable across a restart, idempotent to drain."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from livedata.errors import BackendError
from livedata.model import Kind, Record
from livedata.pipeline import spill as spill_module
from livedata.pipeline.spill import STORE, JournalFull, SpillJournal, decode_row, spill_dir_of
from livedata.store.base import storable_values
from livedata.store.sqlite import SQLiteStore

T0 = 1_750_000_000_000


def batch(start: int, count: int, chassis: str = "M1") -> list[Record]:
    """``count`` records of one machine, one per ms from ``T0 + start``."""
    return [
        Record("acme", chassis, "client_raw_data", T0 + i, Kind.REALTIME, {"x": i, "y": i / 2})
        for i in range(start, start + count)
    ]


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[SpillJournal]:
    spill = SpillJournal(tmp_path / "spill", max_bytes=2**20)
    await spill.open()
    yield spill
    await spill.close()


async def drain_all(spill: SpillJournal, max_records: int = 1_000) -> list[Record]:
    out: list[Record] = []
    while (chunk := await spill.read(max_records)) is not None:
        out.extend(chunk.records)
        await spill.delete_through(chunk.last_id)
    return out


async def test_batches_come_back_in_append_order(journal: SpillJournal) -> None:
    """Rows are read oldest first, chunked by record count, and counted exactly."""
    for n in range(5):
        await journal.append(batch(n * 10, 10))
    assert (journal.rows, journal.records) == (5, 50)
    chunk = await journal.read(25)
    assert chunk is not None and [r.ts for r in chunk.records] == [T0 + i for i in range(20)]
    assert await journal.delete_through(chunk.last_id) == 20
    assert (journal.rows, journal.records) == (3, 30)
    rest = await drain_all(journal)
    assert [r.ts for r in rest] == [T0 + i for i in range(20, 50)]
    assert (journal.rows, journal.records, journal.bytes, journal.oldest_ms) == (0, 0, 0, None)


async def test_a_row_bigger_than_the_chunk_is_still_read(journal: SpillJournal) -> None:
    """A single row larger than ``max_records`` comes back whole, so draining always progresses."""
    await journal.append(batch(0, 30))
    chunk = await journal.read(10)
    assert chunk is not None and len(chunk.records) == 30


async def test_values_normalised_at_ingest_survive_exactly(journal: SpillJournal) -> None:
    """Values as ingest normalised them (floats, ints, strings, bools as ints, huge ints as
    floats, NaN left out) come back from the journal exactly."""
    raw = {"f": 0.1 + 0.2, "i": 2**62, "s": "on", "nan": math.nan, "b": True, "big": 2**70}
    record = Record("acme", "M1", "client_raw_data", T0, Kind.BACKFILL, storable_values(raw))
    await journal.append([record])
    chunk = await journal.read(10)
    assert chunk is not None
    (back,) = chunk.records
    assert back.values == {"f": 0.1 + 0.2, "i": 2**62, "s": "on", "b": 1, "big": float(2**70)}
    assert back.kind is Kind.BACKFILL and (back.tenant, back.chassis, back.ts) == ("acme", "M1", T0)


def test_rows_of_a_journal_written_before_the_envelope_are_read() -> None:
    """A row in the former shape (arrays of fields) decodes to the same records; one whose
    values are not an object is refused."""
    old = b'[["acme","M1","vehicle_can",1750000000000,"realTime",{"rpm":900.5}]]'
    (record,) = decode_row(old)
    assert record == Record("acme", "M1", "vehicle_can", T0, Kind.REALTIME, {"rpm": 900.5})
    with pytest.raises(TypeError):
        decode_row(b'[["acme","M1","vehicle_can",1750000000000,"realTime",5]]')


async def test_append_waits_while_the_journal_is_full(tmp_path: Path) -> None:
    """Past ``max_bytes`` an append waits until rows are deleted; it never exceeds the bound."""
    spill = SpillJournal(tmp_path, max_bytes=4_000)
    await spill.open()
    try:
        size = await spill.append(batch(0, 20))
        while spill.bytes + size <= spill.max_bytes:
            await spill.append(batch(spill.records, 20))
        with pytest.raises(JournalFull):
            await spill.append(batch(1_000, 20), wait=False)
        waiting = asyncio.create_task(spill.append(batch(1_000, 20)))
        await asyncio.sleep(0.2)
        assert not waiting.done() and spill.bytes <= spill.max_bytes
        chunk = await spill.read(20)
        assert chunk is not None
        await spill.delete_through(chunk.last_id)
        await asyncio.wait_for(waiting, 5)
        assert spill.bytes <= spill.max_bytes
        assert spill.peak_bytes <= spill.max_bytes
    finally:
        await spill.close()


async def test_a_batch_bigger_than_the_bound_is_taken_when_empty(tmp_path: Path) -> None:
    """An oversized batch fits an empty journal (no deadlock), and only that."""
    spill = SpillJournal(tmp_path, max_bytes=2**16)
    await spill.open()
    try:
        await spill.append(batch(0, 2_000), wait=False)
        assert spill.bytes > spill.max_bytes
        with pytest.raises(JournalFull):
            await spill.append(batch(5_000, 1), wait=False)
    finally:
        await spill.close()


async def test_rows_are_replayed_after_a_restart(tmp_path: Path) -> None:
    """What was appended and not deleted is there, in order, when the journal is opened again."""
    spill = SpillJournal(tmp_path, max_bytes=2**20)
    await spill.open()
    await spill.append(batch(0, 10), accepted=1_750_000_000.5)
    await spill.append(batch(10, 10))
    chunk = await spill.read(10)
    assert chunk is not None
    await spill.delete_through(chunk.last_id)
    await spill.append(batch(20, 5))
    await spill.close()

    again = SpillJournal(tmp_path, max_bytes=2**20)
    await again.open()
    try:
        assert (again.rows, again.records) == (2, 15)
        assert again.bytes == spill.bytes and again.oldest_ms == spill.oldest_ms
        assert [r.ts for r in await drain_all(again)] == [T0 + i for i in range(10, 25)]
    finally:
        await again.close()


async def test_draining_twice_stores_once_and_deletes_nothing_new(tmp_path: Path) -> None:
    """A drain interrupted before its delete writes the same records again (one copy stored);
    repeating a delete deletes nothing, not even rows appended since (ids are never reused)."""
    store = SQLiteStore(f"sqlite:///{tmp_path}/telemetry.db")
    await store.start()
    spill = SpillJournal(tmp_path / "spill", max_bytes=2**20)
    await spill.open()
    try:
        await spill.append(batch(0, 10))
        first = await spill.read(100)
        assert first is not None
        await store.write(first.records)  # ... and the process dies before deleting
        await spill.close()
        await spill.open()
        second = await spill.read(100)
        assert second is not None and second == first
        await store.write(second.records)
        assert await spill.delete_through(second.last_id) == 10
        await spill.append(batch(10, 3))  # the journal was empty: would reuse id 1 without care
        assert await spill.delete_through(second.last_id) == 0
        assert spill.records == 3
        stored = await store.query("acme", "M1", "client_raw_data", ["x"], T0, T0 + 100)
        assert stored["x"] == [(T0 + i, i) for i in range(10)]
    finally:
        await spill.close()
        await store.close()


async def test_a_second_process_cannot_open_the_same_journal(tmp_path: Path) -> None:
    """The journal is locked while open: a second opener gets a clear error, not shared rows."""
    first = SpillJournal(tmp_path, max_bytes=2**20)
    await first.open()
    try:
        await first.append(batch(0, 1))
        with pytest.raises(BackendError, match="in use by another process"):
            await SpillJournal(tmp_path, max_bytes=2**20).open()
    finally:
        await first.close()


async def test_the_file_shrinks_once_drained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an outage's worth of rows is drained, the file is vacuumed back to a few pages."""
    monkeypatch.setattr(spill_module, "VACUUM_ABOVE_BYTES", 2**19)
    spill = SpillJournal(tmp_path, max_bytes=2**26)
    await spill.open()
    try:
        for n in range(20):
            await spill.append(batch(n * 1_000, 1_000, chassis=uuid.uuid4().hex[:8]))
        assert disk_use(tmp_path) > 2**20
        await drain_all(spill, 5_000)
        assert disk_use(tmp_path) < 2**18
    finally:
        await spill.close()


def disk_use(directory: Path) -> int:
    """Bytes of the journal's file and its WAL."""
    return sum(p.stat().st_size for p in directory.glob(f"{STORE.file_name}*"))


def test_spill_dir_setting() -> None:
    """``auto`` spills under the data dir whatever the store (per MQTT client id when there
    is one); ``off`` never; a path is used as is."""
    data = Path("/srv/livedata")
    assert spill_dir_of("auto", data) == data / "spill"
    assert spill_dir_of("auto", data, "ingest-2") == data / "spill" / "ingest-2"
    assert spill_dir_of("off", data, "ingest-2") is None
    assert spill_dir_of("/var/spool/ld", data, "ingest-2") == Path("/var/spool/ld")
