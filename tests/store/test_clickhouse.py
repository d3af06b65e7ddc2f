"""The store contract on ClickHouse (the installed server, 18.16 here), plus restarts,
outages, deduplication before merges and retention by day partitions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from livedata.errors import ConfigError, StoreError
from livedata.store import open_store
from livedata.store.clickhouse import DAY_MS, ClickHouseStore
from tests.servers import free_port
from tests.servers.clickhouse import ClickHouseServer, start_clickhouse
from tests.store.contract import (
    T0,
    StoreContract,
    assert_downsampled,
    long_records,
    rec,
    unique_id,
    write_shuffled,
)


class TestClickHouseStore(StoreContract):
    rollups_follow_corrections = False  # a replaced value stays in the rollups

    @pytest.fixture(autouse=True)
    def _server(self, clickhouse_server: ClickHouseServer) -> None:
        self.server = clickhouse_server

    def make_url(self, tmp_path: Path) -> str:
        # A database per test (the store creates it): retention is table-wide.
        return self.server.url(unique_id("db_"))


def admin(server: ClickHouseServer) -> Client:
    return Client("127.0.0.1", port=server.tcp_port)


@pytest.fixture
def own_clickhouse(tmp_path: Path) -> Iterator[ClickHouseServer]:
    """A server of this test alone, since the test stops and restarts it."""
    server = start_clickhouse(tmp_path / "clickhouse")
    yield server
    server.stop()


def test_clickhouse_url_opens_clickhouse_store() -> None:
    """``clickhouse://`` opens ClickHouseStore with the URL's database and pool size."""
    store = open_store("clickhouse://u:p@127.0.0.1:9000/telemetry?pool_size=2")
    assert isinstance(store, ClickHouseStore)
    assert (store.database, store.pool_size) == ("telemetry", 2)
    assert open_store("clickhouse://127.0.0.1").database == "default"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        open_store("clickhouse://127.0.0.1:9000/bad-name;drop")
    with pytest.raises(ConfigError):
        open_store("clickhouse://127.0.0.1:9000/db?pool_size=0")


async def test_unreachable_server_raises_store_error() -> None:
    """Starting against a port where nothing listens raises StoreError, not a driver error."""
    store = open_store(f"clickhouse://127.0.0.1:{free_port()}/db?connect_timeout=1")
    with pytest.raises(StoreError) as caught:
        await store.start()
    assert isinstance(caught.value.__cause__, ch_errors.Error)
    with pytest.raises(StoreError):
        await store.write([rec("t1", T0, {"x": 1})])
    await store.close()


async def test_duplicates_in_two_batches_are_one_point_before_merges(
    clickhouse_server: ClickHouseServer,
) -> None:
    """A record written in two inserts is two unmerged rows on disk but one point in queries."""
    db = unique_id("db_")
    store = open_store(clickhouse_server.url(db))
    await store.start()
    client = admin(clickhouse_server)
    try:
        client.execute(f"SYSTEM STOP MERGES {db}.points")
        batch = [rec("t1", T0 + i * 1000, {"x": i, "s": f"v{i}"}) for i in range(50)]
        await store.write(batch)
        await store.write(batch[:20])  # a redelivery
        await store.write([rec("t1", T0, {"x": 99.5})])  # a correction: last write wins
        parts = client.execute(
            "SELECT count(), sum(rows) FROM system.parts"
            " WHERE database = %(db)s AND table = 'points' AND active",
            {"db": db},
        )
        assert parts == [(3, 100 + 40 + 1)]  # nothing merged yet
        got = await store.query("t1", "machine-1", "vehicle_can", ["x", "s"], 0, T0 * 2)
        assert got["x"] == [(T0, 99.5)] + [(T0 + i * 1000, i) for i in range(1, 50)]
        assert got["s"] == [(T0 + i * 1000, f"v{i}") for i in range(50)]
        limited = await store.query("t1", "machine-1", "vehicle_can", ["x"], 0, T0 * 2, limit=3)
        assert limited["x"] == [(T0 + i * 1000, i) for i in (47, 48, 49)]
        assert await store.delete_before(T0 + 10_000) == 20  # counted once each, too
    finally:
        client.execute(f"SYSTEM START MERGES {db}.points")
        client.disconnect()
        await store.close()


async def test_delete_before_drops_whole_days_and_hides_the_rest(
    clickhouse_server: ClickHouseServer,
) -> None:
    """Old days go as partitions; older points of the cutoff's day vanish from queries at once."""
    db = unique_id("db_")
    store = open_store(clickhouse_server.url(db))
    await store.start()
    client = admin(clickhouse_server)
    day0 = T0 // DAY_MS * DAY_MS
    try:
        hours = [day0 + h * 3_600_000 for h in range(0, 72, 6)]  # 3 days, 4 points a day
        await store.write([rec("t1", ts, {"x": n}) for n, ts in enumerate(hours)])
        await store.write([rec("t1", day0, {"x": -1}, chassis="old-only")])
        cutoff = day0 + 2 * DAY_MS + 7 * 3_600_000  # day 3, 07:00
        assert await store.delete_before(cutoff) == 11
        partitions = client.execute(
            "SELECT DISTINCT partition FROM system.parts"
            " WHERE database = %(db)s AND table = 'points' AND active ORDER BY partition",
            {"db": db},
        )
        assert partitions == [(str(day0 // DAY_MS + 2),)]
        got = await store.query("t1", "machine-1", "vehicle_can", ["x"], 0, day0 * 2)
        assert got["x"] == [(hours[n], n) for n in (10, 11)]
        assert await store.latest_ts("t1", "old-only", "vehicle_can") is None
        assert await store.latest_ts("t1", "machine-1", "vehicle_can") == hours[-1]
        assert await store.delete_before(cutoff) == 0
        assert await store.delete_before(cutoff - DAY_MS) == 0  # an older cutoff changes nothing
        got = await store.query("t1", "machine-1", "vehicle_can", ["x"], 0, day0 * 2)
        assert len(got["x"]) == 2
    finally:
        client.disconnect()
        await store.close()


async def test_batch_spanning_many_days_is_stored(clickhouse_server: ClickHouseServer) -> None:
    """A backfill touching 250 days (more than one insert may hold) is stored whole."""
    store = open_store(clickhouse_server.url(unique_id("db_")))
    await store.start()
    try:
        times = [T0 + d * DAY_MS for d in range(250)]
        assert await store.write([rec("t1", ts, {"x": d}) for d, ts in enumerate(times)]) == 250
        got = await store.query("t1", "machine-1", "vehicle_can", ["x"], 0, T0 * 2)
        assert got["x"] == [(ts, d) for d, ts in enumerate(times)]
    finally:
        await store.close()


async def test_data_survives_restart_and_outage_raises_store_error(
    own_clickhouse: ClickHouseServer,
) -> None:
    """Stored points survive a restart; a write while the server is down raises StoreError
    and the same write succeeds, once, after the server is back."""
    store = open_store(own_clickhouse.url("livedata") + "?connect_timeout=2")
    await store.start()
    try:
        await store.write([rec("t1", T0 + i, {"x": i, "s": f"v{i}"}) for i in range(100)])
        await asyncio.to_thread(own_clickhouse.stop)
        batch = [rec("t1", T0 + 100 + i, {"x": 100 + i}) for i in range(10)]
        with pytest.raises(StoreError) as caught:
            await store.write(batch)
        assert isinstance(caught.value.__cause__, ch_errors.Error | OSError | EOFError)
        with pytest.raises(StoreError):
            await store.query("t1", "machine-1", "vehicle_can", ["x"], T0, T0 + 200)
        await asyncio.to_thread(own_clickhouse.start)
        assert await store.write(batch) == 10
        await store.write(batch)  # a retry that had in fact succeeded: still one point each
        got = await store.query("t1", "machine-1", "vehicle_can", ["x", "s"], T0, T0 + 200)
        assert got["x"] == [(T0 + i, i) for i in range(110)]
        assert got["s"] == [(T0 + i, f"v{i}") for i in range(100)]
        assert await store.latest_ts("t1", "machine-1", "vehicle_can") == T0 + 109
    finally:
        await store.close()


def rollup_rows(client: Client, db: str) -> list[tuple[object, ...]]:
    """The rollups as merged states give them: (field, step, bucket, min point, max point)."""
    rows: list[tuple[object, ...]] = client.execute(
        f"SELECT field, step, bucket, argMinMerge(lo), argMaxMerge(hi) FROM {db}.rollups"
        " GROUP BY field, step, bucket ORDER BY field, step, bucket"
    )
    return rows


async def test_rewriting_same_records_leaves_rollups_unchanged(
    clickhouse_server: ClickHouseServer,
) -> None:
    """A redelivery of every record, in other batches and orders, leaves the merged rollups as they were."""
    db = unique_id("db_")
    store = open_store(clickhouse_server.url(db))
    await store.start()
    client = admin(clickhouse_server)
    records = long_records("t1", seconds=2 * 3_600)
    try:
        for first in range(0, len(records), 300):
            await store.write(records[first : first + 300])
        before = rollup_rows(client, db)
        await write_shuffled(store, records, seed=3)
        await store.write(records)
        assert rollup_rows(client, db) == before
        client.execute(f"OPTIMIZE TABLE {db}.rollups FINAL")
        assert rollup_rows(client, db) == before
    finally:
        client.disconnect()
        await store.close()
    minutes = {r.ts // 60_000 for r in records}
    assert len(before) == 3 * len(minutes)  # one step: a minute


async def test_database_of_an_older_version_gets_its_rollups(
    clickhouse_server: ClickHouseServer,
) -> None:
    """Without the rollups view and table (an older version), start builds them from the points."""
    db = unique_id("db_")
    records = long_records("t1", seconds=3_600)
    store = open_store(clickhouse_server.url(db))
    await store.start()
    await store.write(records)
    await store.close()
    client = admin(clickhouse_server)
    try:
        built = rollup_rows(client, db)
        client.execute(f"DROP TABLE {db}.rollups_mv")
        client.execute(f"DROP TABLE {db}.rollups")
        store = open_store(clickhouse_server.url(db))
        await store.start()
        try:
            written = {r.ts: r.values["a"] for r in records}
            end = T0 + 3_600_000
            got = await store.downsample("t1", "machine-1", "vehicle_can", ["a"], T0, end, 90)
            assert_downsampled(got["a"], written, T0, end, 90)
        finally:
            await store.close()
        assert rollup_rows(client, db) == built
    finally:
        client.disconnect()


async def test_retention_drops_rollup_partitions_with_the_points(
    clickhouse_server: ClickHouseServer,
) -> None:
    """Whole days older than the cutoff leave the rollups table as they leave the points table."""
    db = unique_id("db_")
    store = open_store(clickhouse_server.url(db))
    await store.start()
    client = admin(clickhouse_server)
    day0 = T0 // DAY_MS * DAY_MS
    try:
        await store.write([rec("t1", day0 + h * 3_600_000, {"x": h}) for h in range(0, 72, 5)])
        await store.delete_before(day0 + 2 * DAY_MS + 1)

        def partitions(table: str) -> list[tuple[str]]:
            return client.execute(  # type: ignore[no-any-return]
                "SELECT DISTINCT partition FROM system.parts WHERE database = %(db)s"
                " AND table = %(table)s AND active ORDER BY partition",
                {"db": db, "table": table},
            )

        assert partitions("rollups") == partitions("points") == [(str(day0 // DAY_MS + 2),)]
    finally:
        client.disconnect()
        await store.close()
