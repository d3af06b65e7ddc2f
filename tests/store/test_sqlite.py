"""The store contract on :class:`~livedata.store.sqlite.SQLiteStore`, plus file behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from livedata.errors import ConfigError, StoreError
from livedata.model import Kind, Record
from livedata.store import open_store
from livedata.store.base import Store
from livedata.store.sqlite import BUCKET_MS, SCHEMA_VERSION, SQLiteStore, database_path
from tests.files.store.make_telemetry_v2 import reads
from tests.store.contract import (
    T0,
    StoreContract,
    assert_downsampled,
    long_records,
    rec,
    unique_id,
    write_shuffled,
)

V2_FILE = Path(__file__).parent.parent / "files" / "store" / "telemetry-v2.db"


class TestSQLiteFileStore(StoreContract):
    def make_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/telemetry.db"


class TestSQLiteMemoryStore(StoreContract):
    def make_url(self, tmp_path: Path) -> str:
        return "sqlite:///:memory:"


def test_url_follows_sqlalchemy_convention() -> None:
    """Three slashes give a relative path, four an absolute one; no file means :memory:."""
    assert database_path("sqlite:///data/telemetry.db") == "data/telemetry.db"
    assert database_path("sqlite:////var/lib/t.db") == "/var/lib/t.db"
    assert database_path("sqlite:///:memory:") == ":memory:"
    assert database_path("sqlite://") == ":memory:"
    with pytest.raises(ConfigError):
        database_path("sqlite://host/t.db")


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    """Points written before close are read back by a new store on the same file."""
    url = f"sqlite:///{tmp_path}/telemetry.db"
    tenant = unique_id()
    store = open_store(url)
    await store.start()
    await store.write([rec(tenant, T0 + i, {"x": i, "s": f"v{i}"}) for i in range(100)])
    await store.close()
    with pytest.raises(StoreError):
        await store.write([rec(tenant, T0, {"x": 0})])

    reopened = open_store(url)
    await reopened.start()
    try:
        got = await reopened.query(tenant, "machine-1", "vehicle_can", ["x", "s"], T0, T0 + 99)
        assert got["x"] == [(T0 + i, i) for i in range(100)]
        assert got["s"] == [(T0 + i, f"v{i}") for i in range(100)]
        assert await reopened.latest_ts(tenant, "machine-1", "vehicle_can") == T0 + 99
        await reopened.write([rec(tenant, T0 + 100, {"x": 100})])  # interned ids still valid
        got = await reopened.query(tenant, "machine-1", "vehicle_can", ["x"], T0 + 99, T0 + 100)
        assert got["x"] == [(T0 + 99, 99), (T0 + 100, 100)]
    finally:
        await reopened.close()


async def test_relative_path_and_parent_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path is taken from the working directory and missing parents are created."""
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///deep/er/telemetry.db")
    await store.start()
    await store.write([rec("t1", T0, {"x": 1})])
    await store.close()
    assert (tmp_path / "deep" / "er" / "telemetry.db").is_file()


async def test_unusable_file_raises_store_error(tmp_path: Path) -> None:
    """A database path that is a directory gives StoreError, not a sqlite3 exception."""
    (tmp_path / "telemetry.db").mkdir()
    store = open_store(f"sqlite:///{tmp_path}/telemetry.db")
    with pytest.raises(StoreError) as caught:
        await store.start()
    assert not isinstance(caught.value, sqlite3.Error)
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    with pytest.raises(StoreError):  # write starts lazily and fails the same way
        await store.write([rec("t1", T0, {"x": 1})])
    await store.close()


async def test_parent_is_a_file_raises_store_error(tmp_path: Path) -> None:
    """A parent directory that cannot be created gives StoreError, not OSError."""
    (tmp_path / "file").write_text("not a directory")
    store = open_store(f"sqlite:///{tmp_path}/file/telemetry.db")
    with pytest.raises(StoreError):
        await store.start()


async def test_full_database_rolls_back_the_whole_batch(tmp_path: Path) -> None:
    """When the database is full the write raises StoreError and stores none of the batch."""
    store = SQLiteStore(f"sqlite:///{tmp_path}/telemetry.db")
    await store.start()
    try:
        await store.write([rec("t1", T0, {"x": 0})])
        pages = await store._on_writer(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await store._on_writer(lambda c: c.execute(f"PRAGMA max_page_count={pages + 2}"))
        big = [rec("t1", T0 + i, {"x": i, "y": "y" * 100}) for i in range(1, 5000)]
        with pytest.raises(StoreError) as caught:
            await store.write(big)
        assert "full" in str(caught.value)
        got = await store.query("t1", "machine-1", "vehicle_can", ["x", "y"], 0, T0 * 2)
        assert got == {"x": [(T0, 0)], "y": []}
        await store._on_writer(lambda c: c.execute("PRAGMA max_page_count=1073741823"))
        assert await store.write(big) == 2 * len(big)  # the retry stores everything, once
        got = await store.query("t1", "machine-1", "vehicle_can", ["x", "y"], 0, T0 * 2)
        assert len(got["x"]) == 5000 and len(got["y"]) == 4999
    finally:
        await store.close()


async def test_locked_database_raises_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write lock held by another connection past the busy timeout gives StoreError."""
    monkeypatch.setattr("livedata.store.sqlite.BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "telemetry.db"
    store = open_store(f"sqlite:///{path}")
    await store.start()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError):
            await store.write([rec("t1", T0, {"x": 1})])
        other.execute("ROLLBACK")
        assert await store.write([rec("t1", T0, {"x": 1})]) == 1
    finally:
        other.close()
        await store.close()


async def test_reads_proceed_while_a_write_is_in_progress(tmp_path: Path) -> None:
    """Queries are answered from the last commit while the writer thread holds a transaction."""
    store = SQLiteStore(f"sqlite:///{tmp_path}/telemetry.db")
    await store.start()
    try:
        await store.write([rec("t1", T0, {"x": 1})])
        release = asyncio.get_running_loop().create_future()
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        def hold(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            store._insert(conn, [rec("t1", T0 + 1, {"x": 2})])
            loop.call_soon_threadsafe(started.set)
            while not release.done():
                time.sleep(0.005)
            conn.execute("COMMIT")

        holding = asyncio.ensure_future(store._on_writer(hold))
        await asyncio.wait_for(started.wait(), timeout=5)
        got = await asyncio.wait_for(
            store.query("t1", "machine-1", "vehicle_can", ["x"], T0, T0 + 1), timeout=2
        )
        assert got == {"x": [(T0, 1)]}
        release.set_result(None)
        await holding
        got = await store.query("t1", "machine-1", "vehicle_can", ["x"], T0, T0 + 1)
        assert got == {"x": [(T0, 1), (T0 + 1, 2)]}
    finally:
        await store.close()


async def test_same_key_twice_is_one_row(tmp_path: Path) -> None:
    """Rewriting a batch (a redelivery) leaves exactly one row per record key in the file."""
    store = open_store(f"sqlite:///{tmp_path}/telemetry.db")
    await store.start()
    batch = [Record("t1", "m1", "vehicle_can", T0 + i, Kind.BACKFILL, {"x": i}) for i in range(50)]
    await store.write(batch)
    await store.write(batch)
    await store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "telemetry.db")) as conn:
        assert conn.execute("SELECT COUNT(*), SUM(n) FROM records").fetchone() == (50, 50)


async def test_batch_failing_part_way_stores_nothing(tmp_path: Path) -> None:
    """A batch that fails after some rows were inserted is rolled back whole (StoreError)."""
    store = open_store(f"sqlite:///{tmp_path}/telemetry.db")
    await store.start()
    try:
        good = [rec("t1", T0 + i, {"x": i}) for i in range(100)]
        with pytest.raises(StoreError):
            await store.write([*good, rec("t1", 2**70, {"x": -1})])  # ts beyond 64 bits
        assert await store.query("t1", "machine-1", "vehicle_can", ["x"], 0, T0 * 2) == {"x": []}
        assert await store.write(good) == 100  # the connection is usable afterwards
    finally:
        await store.close()


@pytest.mark.parametrize(
    "prepare",
    [
        "PRAGMA user_version=99",
        "CREATE TABLE points (series_id INTEGER, ts INTEGER, value)",
    ],
    ids=["newer-version", "foreign-tables"],
)
async def test_unknown_schema_raises_store_error(tmp_path: Path, prepare: str) -> None:
    """A database of another schema is refused with StoreError, not written into."""
    path = tmp_path / "telemetry.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(prepare)
        conn.commit()
    store = open_store(f"sqlite:///{path}")
    with pytest.raises(StoreError, match="not a livedata telemetry database"):
        await store.start()
    await store.close()


async def test_file_that_is_not_a_database_raises_store_error(tmp_path: Path) -> None:
    """A file of other content gives StoreError on start."""
    path = tmp_path / "telemetry.db"
    path.write_bytes(b"certainly not sqlite " * 100)
    store = open_store(f"sqlite:///{path}")
    with pytest.raises(StoreError):
        await store.start()


def rollup_rows(path: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT * FROM rollups ORDER BY step, series_id, bucket").fetchall()


async def test_rewriting_same_records_leaves_rollups_unchanged(tmp_path: Path) -> None:
    """A redelivery of every record, in other batches and orders, leaves the rollups table as it was."""
    path = tmp_path / "telemetry.db"
    store = open_store(f"sqlite:///{path}")
    await store.start()
    records = long_records("t1", seconds=2 * 3_600)
    try:
        for first in range(0, len(records), 300):
            await store.write(records[first : first + 300])
        before = rollup_rows(path)
        await write_shuffled(store, records, seed=3)
        await store.write(records)
    finally:
        await store.close()
    # 3 series; every minute settled but the newest one or two, each 10 s and 1 min bucket
    minutes = {row[2] for row in before if row[0] == BUCKET_MS}
    stored = {r.ts // BUCKET_MS for r in records}
    assert len(stored) - 2 <= len(minutes) < len(stored)
    tens = {r.ts // 10_000 for r in records if r.ts // BUCKET_MS in minutes}
    assert len(before) == 3 * (len(minutes) + len(tens))
    assert rollup_rows(path) == before


async def test_failed_batch_leaves_no_rollups(tmp_path: Path) -> None:
    """Rollups are written in the batch's transaction: a batch that fails leaves none."""
    path = tmp_path / "telemetry.db"
    store = open_store(f"sqlite:///{path}")
    await store.start()
    try:
        good = [rec("t1", T0 + i * 1000, {"x": i}) for i in range(600)]
        with pytest.raises(StoreError):
            await store.write([*good, rec("t1", 2**70, {"x": -1})])
        assert rollup_rows(path) == []
        await store.write(good)
        assert rollup_rows(path) != []
    finally:
        await store.close()


# The table of schema versions 1 and 2 that version 3 replaced: one row per point.
OLD_POINTS = """CREATE TABLE points (
    bucket INTEGER NOT NULL, series_id INTEGER NOT NULL, ts INTEGER NOT NULL, value,
    PRIMARY KEY (bucket, series_id, ts)
) WITHOUT ROWID"""


def make_old_file(path: Path, version: int) -> None:
    """Turn a file written by this store into the layout of schema ``version`` (1 or 2):
    its records as one row per point (version 1 also without rollups)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(OLD_POINTS)
        for bucket, ts, blob in conn.execute("SELECT bucket, ts, v FROM records").fetchall():
            flat = json.loads(blob)
            conn.executemany(
                "INSERT INTO points VALUES (?, ?, ?, ?)",
                [(bucket, flat[i], ts, old_value(flat[i + 1])) for i in range(0, len(flat), 2)],
            )
        conn.execute("DROP TABLE records")
        if version == 1:
            conn.execute("DROP TABLE rollups")
            conn.execute("DROP TABLE retention")
        conn.execute(f"PRAGMA user_version={version}")
        conn.commit()


def old_value(value: object) -> object:
    """A value as the old points table held it (a non-finite float as a REAL)."""
    return float(value[0]) if isinstance(value, list) else value


async def test_version_1_file_gets_its_rollups(tmp_path: Path) -> None:
    """A file of schema version 1 (points, no rollups) is upgraded on start: rollups built from its points."""
    path = tmp_path / "telemetry.db"
    records = long_records("t1", seconds=3_600)
    store = open_store(f"sqlite:///{path}")
    await store.start()
    await store.write(records)
    await store.close()
    built = rollup_rows(path)
    make_old_file(path, 1)
    store = open_store(f"sqlite:///{path}")
    await store.start()
    try:
        written = {r.ts: r.values["a"] for r in records}
        got = await store.downsample(
            "t1", "machine-1", "vehicle_can", ["a"], T0, T0 + 3_600_000, 90
        )
        assert_downsampled(got["a"], written, T0, T0 + 3_600_000, 90)
    finally:
        await store.close()
    upgraded = rollup_rows(path)
    assert set(built) <= set(upgraded)  # also the open minutes, which writes leave for later
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_version_2_file_reads_the_same_after_its_upgrade(tmp_path: Path) -> None:
    """A file of schema version 2 (one row per point) is moved to one row per record on start,
    and every read (query, downsample, counts, latest) answers as before; writes go on."""
    path = tmp_path / "telemetry.db"
    odd = {"s": "null", "big": 2**62, "inf": float("inf"), "ninf": float("-inf"), "a": 0.1}
    records = [*long_records("t1", seconds=1_800), rec("t1", T0 + 500, odd)]
    args = ("t1", "machine-1", "vehicle_can", ["a", "b", "c", "s", "big", "inf", "ninf"])

    async def reads(store: Store) -> list[object]:
        return [
            await store.query(*args, T0, T0 + 1_800_000),
            await store.query(*args, T0, T0 + 1_800_000, limit=7),
            await store.downsample(*args, T0, T0 + 1_800_000, 90),
            await store.downsample(*args, T0 + 1_234, T0 + 654_321, 500),
            await store.machine_points("t1", "machine-1"),
            await store.latest_ts("t1", "machine-1", "vehicle_can"),
        ]

    store = open_store(f"sqlite:///{path}")
    await store.start()
    await store.write(records)
    before = await reads(store)
    await store.close()
    assert before[0]["inf"] == [(T0 + 500, float("inf"))]  # type: ignore[index]
    rollups = rollup_rows(path)
    make_old_file(path, 2)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM points").fetchone()[0] == before[4]
    store = open_store(f"sqlite:///{path}")
    await store.start()
    try:
        assert await reads(store) == before
        assert rollup_rows(path) == rollups
        assert await store.write([rec("t1", T0 + 1_800_000, {"a": 1.5})]) == 1
        got = await store.query("t1", "machine-1", "vehicle_can", ["a"], T0 + 1_800_000, T0 * 2)
        assert got == {"a": [(T0 + 1_800_000, 1.5)]}
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert "points" not in tables and "records" in tables


async def test_rewritten_key_keeps_its_other_fields(tmp_path: Path) -> None:
    """A record written again with some of its fields replaces those and keeps the others
    (last write wins per point), also within one batch."""
    store = open_store(f"sqlite:///{tmp_path}/telemetry.db")
    await store.start()
    try:
        await store.write([rec("t1", T0, {"x": 1, "y": 2})])
        await store.write([rec("t1", T0, {"y": 3, "z": "on"}), rec("t1", T0, {"x": 4.5})])
        got = await store.query("t1", "machine-1", "vehicle_can", ["x", "y", "z"], T0, T0)
        assert got == {"x": [(T0, 4.5)], "y": [(T0, 3)], "z": [(T0, "on")]}
        assert await store.machine_points("t1", "machine-1") == 3
    finally:
        await store.close()


async def test_real_version_2_file_answers_as_before(tmp_path: Path) -> None:
    """A file written by the schema-2 store (tests/files/store) answers every read as that
    store did, once upgraded on open (strings, an infinity, a replaced range included)."""
    path = tmp_path / "telemetry.db"
    shutil.copy(V2_FILE, path)
    expected = json.loads(V2_FILE.with_suffix(".json").read_text())
    store = SQLiteStore(f"sqlite:///{path}")
    await store.start()
    try:
        got = json.loads(json.dumps(await reads(store)))
    finally:
        await store.close()
    assert got == expected
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
