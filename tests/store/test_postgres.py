"""The store contract on PostgreSQL (a cluster made by the tests, plain PostgreSQL here),
plus restarts, outages, duplicates across batches and retention by time slices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from livedata.errors import ConfigError, StoreError
from livedata.model import Value
from livedata.store import open_store
from livedata.store.postgres import DELETE_SLICE_MS, PostgresStore
from tests.servers import free_port
from tests.servers.postgres import PostgresServer, start_postgres
from tests.store.contract import (
    T0,
    StoreContract,
    assert_downsampled,
    long_records,
    rec,
    unique_id,
    write_shuffled,
)


async def create_database(server: PostgresServer) -> str:
    """A new empty database on ``server``; its name."""
    name = unique_id("db_")
    conn = await asyncpg.connect(server.url())
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return name


async def drop_database(server: PostgresServer, name: str) -> None:
    conn = await asyncpg.connect(server.url())
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


class TestPostgresStore(StoreContract):
    @pytest.fixture(autouse=True)
    async def _database(self, postgres_server: PostgresServer) -> AsyncIterator[None]:
        # A database per test: retention is table-wide.
        self.server = postgres_server
        self.database = await create_database(postgres_server)
        yield
        await drop_database(postgres_server, self.database)

    def make_url(self, tmp_path: Path) -> str:
        return self.server.url(self.database)


@pytest.fixture
async def database_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """The URL of a fresh database on the session's cluster."""
    name = await create_database(postgres_server)
    yield postgres_server.url(name)
    await drop_database(postgres_server, name)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A cluster of this test alone, since the test stops and restarts it."""
    server = start_postgres(fsync=False)
    yield server
    server.stop(remove=True)


def test_postgresql_url_opens_postgres_store() -> None:
    """``postgresql://`` opens PostgresStore; livedata's own options are read, bad ones refused."""
    store = open_store("postgresql://u@127.0.0.1:5432/db?pool_size=2&sslmode=disable")
    assert isinstance(store, PostgresStore)
    assert store.pool_size == 2 and store.retention_ms is None
    with pytest.raises(ConfigError):
        open_store("postgresql://u@127.0.0.1/db?pool_size=0")
    with pytest.raises(ConfigError):
        open_store("postgresql://u@127.0.0.1/db?timescaledb=maybe")


async def test_unreachable_server_raises_store_error() -> None:
    """Starting against a port where nothing listens raises StoreError, not an asyncpg error."""
    store = open_store(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(StoreError) as caught:
        await store.start()
    assert isinstance(caught.value.__cause__, OSError | asyncpg.PostgresError)
    with pytest.raises(StoreError):
        await store.write([rec("t1", T0, {"x": 1})])
    await store.close()


async def test_plain_postgres_gets_a_plain_table_with_brin(database_url: str) -> None:
    """Without TimescaleDB the points table is a plain table keyed by (series_id, ts) with a BRIN index on ts."""
    store = open_store(database_url)
    await store.start()
    assert isinstance(store, PostgresStore) and store.timescale is False
    await store.close()
    conn = await asyncpg.connect(database_url)
    try:
        indexes = {
            row["indexname"]: row["indexdef"]
            for row in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'telemetry_points'"
            )
        }
    finally:
        await conn.close()
    assert "(series_id, ts)" in indexes["telemetry_points_pkey"]
    assert "USING brin (ts)" in indexes["telemetry_points_ts_brin"]


async def test_duplicates_in_two_batches_are_one_row(database_url: str) -> None:
    """A batch written twice, and a correction, leave one row per key with the last value."""
    store = open_store(database_url)
    await store.start()
    try:
        batch = [rec("t1", T0 + i * 1000, {"x": i, "s": f"v{i}"}) for i in range(50)]
        assert await store.write(batch) == 100
        assert await store.write(batch[:20]) == 40
        await store.write([rec("t1", T0, {"x": 99.5})])
        got = await store.query("t1", "machine-1", "vehicle_can", ["x", "s"], 0, T0 * 2)
        assert got["x"] == [(T0, 99.5)] + [(T0 + i * 1000, i) for i in range(1, 50)]
        assert got["s"] == [(T0 + i * 1000, f"v{i}") for i in range(50)]
    finally:
        await store.close()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM telemetry_points") == 100
        assert await conn.fetchval("SELECT count(*) FROM telemetry_series") == 2
    finally:
        await conn.close()


async def test_text_with_nul_is_skipped_not_failing_the_batch(database_url: str) -> None:
    """A string with NUL (PostgreSQL text cannot hold it) is skipped; the rest is stored."""
    store = open_store(database_url)
    await store.start()
    try:
        assert await store.write([rec("t1", T0, {"ok": "a", "nul": "a\x00b", "x": 1})]) == 2
        got = await store.query("t1", "machine-1", "vehicle_can", ["ok", "nul", "x"], T0, T0)
        assert got == {"ok": [(T0, "a")], "nul": [], "x": [(T0, 1)]}
    finally:
        await store.close()


async def test_concurrent_stores_intern_the_same_new_series(database_url: str) -> None:
    """Two stores (two processes) writing the same new series at once share one series row."""
    stores = [open_store(database_url) for _ in range(2)]
    for store in stores:
        await store.start()
    try:
        fields: dict[str, Value] = {f"f{i}": i for i in range(50)}
        await asyncio.gather(*(s.write([rec("t1", T0, fields)]) for s in stores))
        got = await stores[1].query("t1", "machine-1", "vehicle_can", list(fields), T0, T0)
        assert got == {name: [(T0, value)] for name, value in fields.items()}
    finally:
        for store in stores:
            await store.close()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM telemetry_series") == 50
    finally:
        await conn.close()


async def test_delete_before_walks_slices_and_gaps(database_url: str) -> None:
    """Retention deletes across many slices and long gaps, counts exactly, keeps the rest."""
    store = open_store(database_url)
    await store.start()
    try:
        old = [1_000 + i for i in range(3)]  # far in the past: a gap of decades follows
        recent = [T0 + i * DELETE_SLICE_MS // 2 for i in range(10)]  # 5 hours of slices
        await store.write([rec("t1", ts, {"x": n, "y": -n}) for n, ts in enumerate(old + recent)])
        cutoff = recent[7]
        assert await store.delete_before(cutoff) == 2 * (3 + 7)
        got = await store.query("t1", "machine-1", "vehicle_can", ["x"], 0, T0 * 2)
        assert got["x"] == [(recent[n], 3 + n) for n in (7, 8, 9)]
        assert await store.delete_before(cutoff) == 0
        assert await store.latest_ts("t1", "machine-1", "vehicle_can") == recent[-1]
        assert await store.delete_before(recent[-1] + 1) == 6
        assert await store.latest_ts("t1", "machine-1", "vehicle_can") is None
    finally:
        await store.close()


async def test_data_survives_restart_and_outage_raises_store_error(
    own_postgres: PostgresServer,
) -> None:
    """Stored points survive a restart; a write while the server is down raises StoreError
    and the same write succeeds, once, after the server is back."""
    store = open_store(own_postgres.url())
    await store.start()
    try:
        await store.write([rec("t1", T0 + i, {"x": i, "s": f"v{i}"}) for i in range(100)])
        await asyncio.to_thread(own_postgres.stop)
        batch = [rec("t1", T0 + 100 + i, {"x": 100 + i}) for i in range(10)]
        with pytest.raises(StoreError) as caught:
            await store.write(batch)
        assert isinstance(caught.value.__cause__, OSError | asyncpg.PostgresError)
        with pytest.raises(StoreError):
            await store.query("t1", "machine-1", "vehicle_can", ["x"], T0, T0 + 200)
        await asyncio.to_thread(own_postgres.start)
        assert await store.write(batch) == 10
        await store.write(batch)  # a retry that had in fact succeeded: still one point each
        got = await store.query("t1", "machine-1", "vehicle_can", ["x", "s"], T0, T0 + 200)
        assert got["x"] == [(T0 + i, i) for i in range(110)]
        assert got["s"] == [(T0 + i, f"v{i}") for i in range(100)]
        assert await store.latest_ts("t1", "machine-1", "vehicle_can") == T0 + 109
    finally:
        await store.close()


async def rollup_rows(url: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT * FROM telemetry_rollups ORDER BY series_id, step, bucket")
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


async def test_rewriting_same_records_leaves_rollups_unchanged(database_url: str) -> None:
    """A redelivery of every record, in other batches and orders, leaves the rollups table as it was."""
    store = open_store(database_url)
    await store.start()
    records = long_records("t1", seconds=2 * 3_600)
    try:
        for first in range(0, len(records), 300):
            await store.write(records[first : first + 300])
        before = await rollup_rows(database_url)
        await write_shuffled(store, records, seed=3)
        await store.write(records)
        after = await rollup_rows(database_url)
    finally:
        await store.close()
    minutes = {row[2] for row in before if row[1] == 60_000}
    assert len(minutes) >= 118 and len(before) > 3 * 7 * 118
    assert after == before


async def test_concurrent_writers_of_one_series_keep_rollups_exact(database_url: str) -> None:
    """Two stores writing the same series at once (live data and backfill) leave exact rollups."""
    stores = [open_store(database_url) for _ in range(2)]
    for store in stores:
        await store.start()
    records = long_records("t1", seconds=3_600)
    try:
        live, backfill = records[1_800:], records[:1_800]
        await asyncio.gather(
            *(
                store.write(part[first : first + 120])
                for store, part in zip(stores, (live, backfill), strict=True)
                for first in range(0, len(part), 120)
            )
        )
        written = {r.ts: r.values["b"] for r in records}
        end = T0 + 3_600_000
        for buckets in (20, 60, 300):
            got = await stores[0].downsample(
                "t1", "machine-1", "vehicle_can", ["b"], T0, end, buckets
            )
            assert_downsampled(got["b"], written, T0, end, buckets)
    finally:
        for store in stores:
            await store.close()


async def test_tables_of_an_older_version_get_their_rollups(database_url: str) -> None:
    """Without a rollups table (an older version), start builds it from the stored points."""
    records = long_records("t1", seconds=3_600)
    store = open_store(database_url)
    await store.start()
    await store.write(records)
    await store.close()
    built = await rollup_rows(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP TABLE telemetry_rollups, telemetry_rollup_open")
    finally:
        await conn.close()
    store = open_store(database_url)
    await store.start()
    try:
        written = {r.ts: r.values["a"] for r in records}
        got = await store.downsample(
            "t1", "machine-1", "vehicle_can", ["a"], T0, T0 + 3_600_000, 90
        )
        assert_downsampled(got["a"], written, T0, T0 + 3_600_000, 90)
        await store.write(records[-60:])  # the streams came back too: nothing changes
    finally:
        await store.close()
    upgraded = await rollup_rows(database_url)
    assert set(built) <= set(upgraded)


async def test_downsample_keeps_ints_beyond_doubles_exact(database_url: str) -> None:
    """Ints that one double cannot tell apart keep their exact value and order in downsampling."""
    store = open_store(database_url)
    await store.start()
    try:
        big = 2**62
        values = [big + 2, big + 1, big + 3, -big - 1, -big - 2]
        await store.write([rec("t1", T0 + i * 1000, {"i": v}) for i, v in enumerate(values)])
        got = await store.downsample("t1", "machine-1", "vehicle_can", ["i"], T0, T0 + 2_999, 1)
        assert got["i"] == [(T0 + 1000, big + 1), (T0 + 2000, big + 3)]
        got = await store.downsample("t1", "machine-1", "vehicle_can", ["i"], T0, T0 + 4_999, 1)
        assert got["i"] == [(T0 + 2000, big + 3), (T0 + 4000, -big - 2)]
    finally:
        await store.close()
