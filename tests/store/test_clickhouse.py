"""The store contract on ClickHouse (the installed server, 18.16 here), plus restarts,
outages, deduplication before merges and retention by day partitions."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from clickhouse_driver import Client, defines
from clickhouse_driver import errors as ch_errors
from clickhouse_driver.block import ColumnOrientedBlock
from clickhouse_driver.bufferedwriter import CompressedBufferedWriter
from clickhouse_driver.context import Context
from clickhouse_driver.streams.native import BlockOutputStream

from livedata.errors import ConfigError, StoreError
from livedata.model import Record
from livedata.store import open_store
from livedata.store.base import first_open_minute, settle_cohort, stream_key
from livedata.store.clickhouse import (
    _COLUMNS,
    _MIGRATE_SELECT,
    DAY_MS,
    KIND_FLOAT,
    KIND_INT,
    KIND_STR,
    RECORDS_TYPES,
    SETTLE_SPAN,
    ClickHouseStore,
    _Columns,
    _quiet,
    _schema,
)
from tests.servers import free_port
from tests.servers.clickhouse import ClickHouseServer, start_clickhouse
from tests.store.contract import (
    T0,
    StoreContract,
    assert_downsampled,
    long_records,
    long_values,
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
    """A record written in two inserts is two unmerged rows on disk but one record in queries;
    a later record of other fields at the same ts changes only its own fields."""
    db = unique_id("db_")
    store = open_store(clickhouse_server.url(db))
    await store.start()
    client = admin(clickhouse_server)
    try:
        client.execute(f"SYSTEM STOP MERGES {db}.records")
        batch = [rec("t1", T0 + i * 1000, {"x": i, "s": f"v{i}"}) for i in range(50)]
        await store.write(batch)
        await store.write(batch[:20])  # a redelivery
        await store.write([rec("t1", T0, {"x": 99.5})])  # a correction: last write wins
        parts = client.execute(
            "SELECT count(), sum(rows) FROM system.parts"
            " WHERE database = %(db)s AND table = 'records' AND active",
            {"db": db},
        )
        assert parts == [(3, 50 + 20 + 1)]  # one row per record, nothing merged yet
        got = await store.query("t1", "machine-1", "vehicle_can", ["x", "s"], 0, T0 * 2)
        assert got["x"] == [(T0, 99.5)] + [(T0 + i * 1000, i) for i in range(1, 50)]
        assert got["s"] == [(T0 + i * 1000, f"v{i}") for i in range(50)]
        limited = await store.query("t1", "machine-1", "vehicle_can", ["x"], 0, T0 * 2, limit=3)
        assert limited["x"] == [(T0 + i * 1000, i) for i in (47, 48, 49)]
        # The redelivered records counted once each; the correction, a record of its own
        # (another set of fields), counts its value again.
        assert await store.delete_before(T0 + 10_000) == 20 + 1
    finally:
        client.execute(f"SYSTEM START MERGES {db}.records")
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
            " WHERE database = %(db)s AND table = 'records' AND active ORDER BY partition",
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
        ((open_minute,),) = client.execute(
            f"SELECT max(open_minute) FROM {db}.rollup_open WHERE done = 1"
        )
    finally:
        client.disconnect()
        await store.close()
    settled = {r.ts // 60_000 for r in records if r.ts // 60_000 < open_minute}
    assert len(before) == 3 * len(settled)  # one step: a minute, settled minutes only


def settled_rollup_rows(client: Client, db: str) -> list[tuple[object, ...]]:
    """:func:`rollup_rows` of the minutes every stream has settled (only those are read)."""
    ((first_open,),) = client.execute(
        f"SELECT min(o) FROM (SELECT max(open_minute) AS o FROM {db}.rollup_open WHERE done = 1"
        " GROUP BY tenant, chassis, msg_type)"
    )
    return [row for row in rollup_rows(client, db) if row[2] < first_open]  # type: ignore[operator]


async def test_database_of_an_older_version_gets_its_rollups(
    clickhouse_server: ClickHouseServer,
) -> None:
    """Without the rollup tables (an older version), start builds them from the records."""
    db = unique_id("db_")
    records = long_records("t1", seconds=3_600)
    store = open_store(clickhouse_server.url(db))
    await store.start()
    await store.write(records)
    await store.close()
    client = admin(clickhouse_server)
    try:
        built = settled_rollup_rows(client, db)
        client.execute(f"DROP TABLE {db}.rollup_open")
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
        assert settled_rollup_rows(client, db) == built
    finally:
        client.disconnect()


OLD_ROLLUPS_VIEW = """CREATE MATERIALIZED VIEW {db}.records_rollups_mv TO {db}.rollups AS
    SELECT tenant, chassis, msg_type, field, toUInt32(60000) AS step,
        intDiv(ts, 60000) - (modulo(ts, toInt64(60000)) < 0) AS bucket,
        argMinState(tuple(ts, kind, num, int), num) AS lo,
        argMaxState(tuple(ts, kind, num, int), num) AS hi
    FROM {db}.records ARRAY JOIN field, kind, num, int, str
    WHERE kind != 3 GROUP BY tenant, chassis, msg_type, field, bucket"""
"""The view of the previous version, which rolled up every insert into ``records``."""


async def test_database_with_the_rollups_view_is_migrated(
    clickhouse_server: ClickHouseServer,
) -> None:
    """A database whose rollups a view filled on every insert (the previous version) loses the
    view on start, keeps its rollups, and downsamples exactly, also after later and late writes."""
    db = unique_id("db_")
    url = clickhouse_server.url(db)
    client = admin(clickhouse_server)
    records = long_records("t1", seconds=2 * 3_600)
    first, later = records[:3_600], records[3_600:]
    try:
        fresh = ClickHouseStore(url)
        await fresh.start()  # the tables; then the previous version's view instead of rollup_open
        await fresh.close()
        client.execute(f"DROP TABLE {db}.rollup_open")
        client.execute(OLD_ROLLUPS_VIEW.format(db=db))
        previous = ClickHouseStore(url)
        previous.rollups = False  # writes records only: the view rolls them up
        await previous.start()
        for n in range(0, len(first), 250):
            await previous.write(first[n : n + 250])
        await previous.close()
        from_view = rollup_rows(client, db)
        minutes = {r.ts // 60_000 for r in first}
        assert len(from_view) == 3 * len(minutes)  # every minute, the open ones too

        store = ClickHouseStore(url)
        await store.start()
        try:
            assert client.execute(f"EXISTS TABLE {db}.records_rollups_mv") == [(0,)]
            assert rollup_rows(client, db) == from_view  # kept as they were
            written = {r.ts: r.values["a"] for r in first}
            end = T0 + 2 * 3_600_000
            for buckets in (1, 30, 90):
                got = await store.downsample(
                    "t1", "machine-1", "vehicle_can", ["a"], T0, end, buckets
                )
                assert_downsampled(got["a"], written, T0, end, buckets)
            for n in range(0, len(later), 250):
                await store.write(later[n : n + 250])
            late = rec("t1", T0 + 600_500, {"a": 1.0e9})  # into minute 10, rolled up by the view
            await store.write([late])
            written |= {r.ts: r.values["a"] for r in later} | {late.ts: 1.0e9}
            for buckets in (1, 30, 90, 600):
                got = await store.downsample(
                    "t1", "machine-1", "vehicle_can", ["a"], T0, end, buckets
                )
                assert_downsampled(got["a"], written, T0, end, buckets)
        finally:
            await store.close()
    finally:
        client.disconnect()


def live_batches(records: list[Record], size: int = 2) -> list[list[Record]]:
    """``records`` in batches of ``size``, as ingest writes live data."""
    return [records[n : n + size] for n in range(0, len(records), size)]


@pytest.fixture
async def fresh_store(
    clickhouse_server: ClickHouseServer,
) -> AsyncIterator[tuple[str, ClickHouseStore, Client]]:
    """(database, started store on it, admin client); closed afterwards."""
    db = unique_id("db_")
    store, client = ClickHouseStore(clickhouse_server.url(db)), admin(clickhouse_server)
    await store.start()
    try:
        yield db, store, client
    finally:
        client.disconnect()
        await store.close()


async def test_late_data_in_a_settled_minute_is_rolled_up_again(
    fresh_store: tuple[str, ClickHouseStore, Client],
) -> None:
    """Live writes roll up no open minute; late points in a settled minute (new extremes, a
    new field) show in downsampling as soon as their write returns."""
    db, store, client = fresh_store
    records = long_records("t1", seconds=25 * 60)
    for batch in live_batches(records):
        await store.write(batch)
    ((open_minute,),) = client.execute(
        f"SELECT max(open_minute) FROM {db}.rollup_open WHERE done = 1"
    )
    rolled = sorted({row[2] for row in rollup_rows(client, db)})
    assert rolled == list(range(T0 // 60_000, open_minute))  # settled minutes only
    settled = (T0 // 60_000 + 3) * 60_000  # the start of a settled minute
    assert settled // 60_000 < open_minute
    late = [
        rec("t1", settled + 500, {"a": 1.0e9, "b": -(10**9)}),  # new extremes
        rec("t1", settled + 1_500, {"new": 5}),  # a field the minute had not
    ]
    await store.write(late)
    end = T0 + 25 * 60_000
    for name, written in (
        ("a", {r.ts: r.values["a"] for r in records} | {settled + 500: 1.0e9}),
        ("b", {r.ts: r.values["b"] for r in records} | {settled + 500: -(10**9)}),
        ("new", {settled + 1_500: 5}),
    ):
        for buckets in (1, 5, 10):
            got = await store.downsample("t1", "machine-1", "vehicle_can", [name], T0, end, buckets)
            assert_downsampled(got[name], written, T0, end, buckets)


async def test_two_stores_rolling_up_the_same_minutes_agree(
    clickhouse_server: ClickHouseServer,
) -> None:
    """Two stores (two processes) writing one machine's records in turn settle the same
    minutes, each also late behind the other; the rollups equal those of one store alone."""
    shared, alone = unique_id("db_"), unique_id("db_")
    one, two, single = (
        ClickHouseStore(clickhouse_server.url(db)) for db in (shared, shared, alone)
    )
    client = admin(clickhouse_server)
    records = long_records("t1", seconds=30 * 60)
    try:
        for store in (one, two, single):
            await store.start()
        batches = live_batches(records, size=3)
        for n, batch in enumerate(batches):
            await (one if n % 2 else two).write(batch)
            await single.write(batch)
        # `two` writes a minute that `one` settled, without having seen its newer points.
        late = [rec("t1", r.ts, r.values) for r in records[200:260]]
        await two.write(late)
        await single.write(late)
        for db in (shared, alone):
            client.execute(f"OPTIMIZE TABLE {db}.rollups FINAL")
        assert settled_rollup_rows(client, shared) == settled_rollup_rows(client, alone)
        assert len(settled_rollup_rows(client, shared)) >= 3 * 13
        end = T0 + 30 * 60_000
        written = {r.ts: r.values["a"] for r in records}
        for store in (one, two):
            for buckets in (1, 7, 15):
                got = await store.downsample(
                    "t1", "machine-1", "vehicle_can", ["a"], T0, end, buckets
                )
                assert_downsampled(got["a"], written, T0, end, buckets)
    finally:
        client.disconnect()
        for store in (one, two, single):
            await store.close()


def rollup_states(client: Client, db: str) -> int:
    """Rollup rows as inserted (one per roll-up of a (series, minute)), before any merge."""
    client.execute(f"SYSTEM STOP MERGES {db}.rollups")
    return int(client.execute(f"SELECT count() FROM {db}.rollups")[0][0])


async def test_share_group_writers_roll_up_each_group_once(
    clickhouse_server: ClickHouseServer,
) -> None:
    """Two stores writing one stream's seconds alternately (an MQTT share group) roll up each
    settled group of minutes once, not once per store, and downsample it exactly."""
    db = unique_id("db_")
    one, two = (
        ClickHouseStore(clickhouse_server.url(db)),
        ClickHouseStore(clickhouse_server.url(db)),
    )
    client = admin(clickhouse_server)
    records = long_records("t1", seconds=25 * 60)
    try:
        await one.start()
        client.execute(f"SYSTEM STOP MERGES {db}.rollups")
        await two.start()
        for n, batch in enumerate(live_batches(records, size=1)):
            await (one if n % 2 else two).write([batch[0]])
        rows = rollup_states(client, db)
        minutes = {r.ts // 60_000 for r in records if r.ts // 60_000 < settled_minute(client, db)}
        assert rows == 3 * len(minutes)  # fields a, b, m: one rollup row each per minute
        end = T0 + 25 * 60_000
        for store in (one, two):
            got = await store.downsample("t1", "machine-1", "vehicle_can", ["a"], T0, end, 10)
            assert_downsampled(got["a"], {r.ts: r.values["a"] for r in records}, T0, end, 10)
    finally:
        client.disconnect()
        for store in (one, two):
            await store.close()


async def test_a_settling_write_settles_its_cohort_streams_it_does_not_hold(
    clickhouse_server: ClickHouseServer,
) -> None:
    """Two stores each writing one of two streams of one settle cohort every second, taking
    turns (a share group): the write that settles one stream settles the other too, so the
    cohort is rolled up in one statement; both downsample exactly."""
    db = unique_id("db_")
    one, two = (
        ClickHouseStore(clickhouse_server.url(db)),
        ClickHouseStore(clickhouse_server.url(db)),
    )
    client = admin(clickhouse_server)

    def cohort(chassis: str) -> tuple[int, int]:
        return settle_cohort(stream_key(("t1", chassis, "vehicle_can")), SETTLE_SPAN)

    mate = next(
        f"machine-{n}" for n in range(2, 10_000) if cohort(f"machine-{n}") == cohort("machine-1")
    )
    seconds = 25 * 60
    by_chassis = {
        chassis: [rec("t1", T0 + s * 1000, long_values(s), chassis) for s in range(seconds)]
        for chassis in ("machine-1", mate)
    }

    def settled(chassis: str) -> int:
        return int(
            client.execute(
                f"SELECT max(open_minute) FROM {db}.rollup_open WHERE done = 1"
                " AND chassis = %(chassis)s",
                {"chassis": chassis},
            )[0][0]
        )

    try:
        for store in (one, two):
            await store.start()
        moves = 0
        for second in range(seconds):
            first, then = (one, two) if second % 2 else (two, one)
            for store, chassis in ((first, "machine-1"), (then, mate)):
                before = settled(chassis)
                await store.write([by_chassis[chassis][second]])
                if second > 1 and settled(chassis) > before:
                    moves += 1
                    assert settled("machine-1") == settled(mate)  # in the same write
        assert moves >= 2
        end = T0 + seconds * 1000
        for chassis, records in by_chassis.items():
            got = await one.downsample("t1", chassis, "vehicle_can", ["a"], T0, end, 10)
            assert_downsampled(got["a"], {r.ts: r.values["a"] for r in records}, T0, end, 10)
    finally:
        client.disconnect()
        for store in (one, two):
            await store.close()


def settled_minute(client: Client, db: str) -> int:
    """The settled open minute of machine-1's vehicle_can stream."""
    return int(
        client.execute(f"SELECT max(open_minute) FROM {db}.rollup_open WHERE done = 1")[0][0]
    )


async def test_claim_left_pending_is_rolled_up_once_the_patience_is_over(
    fresh_store: tuple[str, ClickHouseStore, Client],
) -> None:
    """A group of minutes claimed by a writer that never settled it (died between its claim
    and its roll-up) is left to that writer by every write within ``claim_patience_s`` of
    first seeing the claim, then rolled up by the stream's next write."""
    db, store, client = fresh_store
    store.claim_patience_s = 1.0
    records = long_records("t1", seconds=25 * 60)
    stream = ("t1", "machine-1", "vehicle_can")
    claimed = None
    for n, batch in enumerate(live_batches(records, size=1)):
        if claimed is None and n > 0:  # the first write opens the stream
            new = first_open_minute(batch[0].ts, stream_key(stream), SETTLE_SPAN)
            if new > settled_minute(client, db):  # this write settles: another claimed it
                claimed = new
                client.execute(
                    f"INSERT INTO {db}.rollup_open (tenant, chassis, msg_type, done,"
                    " open_minute) VALUES",
                    [(*stream, 0, new)],
                )
                before = rollup_states(client, db)
                await store.write(batch)
                assert rollup_states(client, db) == before  # left to the claimer
                assert settled_minute(client, db) < new
                await store.write(batch)  # seen pending again at once: still the claimer's
                assert rollup_states(client, db) == before
                assert settled_minute(client, db) < new
                await asyncio.sleep(store.claim_patience_s)
                continue
            if claimed is not None and claimed > settled_minute(client, db):
                await store.write(batch)  # past the patience: abandoned, rolled up here
                assert rollup_states(client, db) > before
                assert settled_minute(client, db) == claimed
                continue
        await store.write(batch)
    assert claimed is not None and settled_minute(client, db) > claimed
    end = T0 + 25 * 60_000
    for name in ("a", "b"):
        got = await store.downsample("t1", "machine-1", "vehicle_can", [name], T0, end, 10)
        assert_downsampled(got[name], {r.ts: r.values[name] for r in records}, T0, end, 10)


async def test_a_roll_up_failed_after_its_claim_is_settled_by_the_retry(
    fresh_store: tuple[str, ClickHouseStore, Client],
) -> None:
    """A write whose roll-up fails after its claim (the rollups table gone a moment) raises,
    and its retry rolls the group up at once: a claim of the store's own is not left to the
    claim patience as another writer's is."""
    db, store, client = fresh_store
    store.claim_patience_s = 3_600.0
    records = long_records("t1", seconds=25 * 60)
    key = stream_key(("t1", "machine-1", "vehicle_can"))
    batches = live_batches(records, size=1)
    await store.write(batches[0])  # opens the stream
    opened = settled_minute(client, db)
    crossing = next(
        n
        for n, batch in enumerate(batches)
        if first_open_minute(batch[0].ts, key, SETTLE_SPAN) > opened
    )
    for batch in batches[1:crossing]:
        await store.write(batch)
    client.execute(f"RENAME TABLE {db}.rollups TO {db}.rollups_away")
    with pytest.raises(StoreError):
        await store.write(batches[crossing])
    assert settled_minute(client, db) == opened
    client.execute(f"RENAME TABLE {db}.rollups_away TO {db}.rollups")
    await store.write(batches[crossing])  # the retry
    assert settled_minute(client, db) == first_open_minute(
        batches[crossing][0].ts, key, SETTLE_SPAN
    )
    for batch in batches[crossing + 1 :]:
        await store.write(batch)
    end = T0 + 25 * 60_000
    got = await store.downsample("t1", "machine-1", "vehicle_can", ["a"], T0, end, 10)
    assert_downsampled(got["a"], {r.ts: r.values["a"] for r in records}, T0, end, 10)


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

        assert partitions("rollups") == partitions("records") == [(str(day0 // DAY_MS + 2),)]
    finally:
        client.disconnect()
        await store.close()


OLD_POINTS_SCHEMA = [
    """CREATE TABLE {db}.points (
        tenant String, chassis String, msg_type String, field String, ts Int64,
        kind UInt8, num Float64, int Int64, str String, ver UInt64
    ) ENGINE = ReplacingMergeTree(ver) PARTITION BY intDiv(ts, 86400000)
    ORDER BY (tenant, chassis, msg_type, field, ts)""",
    """CREATE TABLE {db}.streams (tenant String, chassis String, msg_type String, last_ts Int64)
    ENGINE = ReplacingMergeTree(last_ts) ORDER BY (tenant, chassis, msg_type)""",
    """CREATE MATERIALIZED VIEW {db}.streams_mv TO {db}.streams AS
    SELECT tenant, chassis, msg_type, max(ts) AS last_ts FROM {db}.points
    GROUP BY tenant, chassis, msg_type""",
    """CREATE TABLE {db}.retention (cutoff Int64) ENGINE = ReplacingMergeTree(cutoff)
    ORDER BY tuple()""",
    """CREATE TABLE {db}.rollups (
        tenant String, chassis String, msg_type String, field String, step UInt32, bucket Int64,
        lo AggregateFunction(argMin, Tuple(Int64, UInt8, Float64, Int64), Float64),
        hi AggregateFunction(argMax, Tuple(Int64, UInt8, Float64, Int64), Float64)
    ) ENGINE = AggregatingMergeTree() PARTITION BY intDiv(bucket * step, 86400000)
    ORDER BY (tenant, chassis, msg_type, field, step, bucket)""",
    """CREATE MATERIALIZED VIEW {db}.rollups_mv TO {db}.rollups AS
    SELECT tenant, chassis, msg_type, field, toUInt32(60000) AS step,
        intDiv(ts, 60000) - (ts % toInt64(60000) < 0) AS bucket,
        argMinState(tuple(ts, kind, num, int), num) AS lo,
        argMaxState(tuple(ts, kind, num, int), num) AS hi
    FROM {db}.points WHERE kind != 3 GROUP BY tenant, chassis, msg_type, field, bucket""",
]
"""The schema of a database written by the per-point version of the store (before the
records table), as that version created it."""


def old_point_rows(records: list[Record], ver: int) -> list[tuple[object, ...]]:
    """``records`` as the per-point version stored them: one row per value."""
    rows: list[tuple[object, ...]] = []
    for r in records:
        for name, value in r.values.items():
            kind = 3 if isinstance(value, str) else 2 if isinstance(value, int) else 1
            num = float(value) if kind != 3 else 0.0  # type: ignore[arg-type]
            integer = value if kind == 2 else 0
            text = value if kind == 3 else ""
            rows.append(
                (r.tenant, r.chassis, r.msg_type, name, r.ts, kind, num, integer, text, ver)
            )
    return rows


async def test_per_point_database_is_migrated_with_identical_answers(
    clickhouse_server: ClickHouseServer,
) -> None:
    """A database of the per-point schema (two days, redeliveries, corrections, a late field,
    a retention cutoff, one day copied already by an interrupted start) answers every read
    exactly like a fresh database given the same writes, and its ``points`` table is gone."""
    old_db, fresh_db = unique_id("db_"), unique_id("db_")
    day0 = T0 // DAY_MS * DAY_MS
    start = day0 + DAY_MS - 6 * 3_600_000  # 18:00, over midnight: two day partitions
    streams = [(c, m) for c in ("m1", "m2") for m in ("vehicle_can", "client_raw_data")]
    writes: list[list[Record]] = [
        [
            rec("t1", start + s * 20_000, long_values(s * 20), chassis=c, msg_type=m)
            for s in range(12 * 180)  # 12 hours, a record every 20 s
            for c, m in streams
        ]
    ]
    writes.append(writes[0][5_000:5_400])  # a redelivery
    writes.append(  # corrections: the same records with other values, no two equal
        [
            rec("t1", r.ts, {k: -v - 0.5 if isinstance(v, float) else v for k, v in r.values.items()},
                chassis=r.chassis, msg_type=r.msg_type)
            for r in writes[0][2_000:2_100]
        ]
    )  # fmt: skip
    writes.append([rec("t1", start + 40_000, {"late": 7}, chassis="m2")])  # another field
    cutoff = start + 3_600_000 + 1_234

    client = admin(clickhouse_server)
    client.execute(f"CREATE DATABASE {old_db}")
    for statement in OLD_POINTS_SCHEMA:
        client.execute(statement.format(db=old_db))
    client.execute(f"INSERT INTO {old_db}.retention (cutoff) VALUES", [(-(2**63),), (cutoff,)])
    for ver, batch in enumerate(writes, start=1):
        client.execute(
            f"INSERT INTO {old_db}.points (tenant, chassis, msg_type, field, ts, kind, num,"
            " int, str, ver) VALUES",
            old_point_rows(batch, ver),
        )
    # A start interrupted after copying the first day, before dropping it from `points`.
    old = open_store(clickhouse_server.url(old_db))
    assert isinstance(old, ClickHouseStore)
    client.execute(_schema(old_db)[1])
    client.execute(
        f"INSERT INTO {old_db}.records ({_COLUMNS})"
        + _MIGRATE_SELECT.format(db=old_db, where=f"intDiv(ts, {DAY_MS}) = {day0 // DAY_MS}")
    )

    fresh = open_store(clickhouse_server.url(fresh_db))
    try:
        await old.start()
        await fresh.start()
        for batch in writes:
            await fresh.write(batch)
        await fresh.delete_before(cutoff)
        assert client.execute(f"EXISTS TABLE {old_db}.points") == [(0,)]
        for db in (old_db, fresh_db):  # downsampling counts a corrected value until merged
            client.execute(f"OPTIMIZE TABLE {db}.records FINAL")
        end = start + 12 * 3_600_000
        fields = ["a", "b", "m", "late"]
        for chassis, msg_type in streams:
            for store in (old, fresh):
                assert await store.latest_ts("t1", chassis, msg_type) == end - 20_000
            got, want = [
                await store.query("t1", chassis, msg_type, fields, day0, end + DAY_MS)
                for store in (old, fresh)
            ]
            assert got == want and len(got["a"]) > 1_000
            for buckets in (1, 50, 400, 3_000):
                got, want = [
                    await store.downsample("t1", chassis, msg_type, fields, day0, end, buckets)
                    for store in (old, fresh)
                ]
                assert got == want
        for chassis in ("m1", "m2"):
            counts = [await store.machine_points("t1", chassis) for store in (old, fresh)]
            assert counts[0] == counts[1] > 0
        assert settled_rollup_rows(client, old_db) == settled_rollup_rows(client, fresh_db)
        assert await old.delete_before(end) == await fresh.delete_before(end) > 0
    finally:
        await old.close()
        await fresh.close()
        client.disconnect()


class _Sink:
    """Collects what clickhouse-driver's buffered writer flushes (its "compressor" is only
    called with the bytes to write)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


def _drivers_block(rows: list[tuple[tuple[str, str, str], int, dict[str, object]]], ver: int,
                   revision: int) -> bytes:  # fmt: skip
    """The records block as clickhouse-driver serialises it from Python columns, the rows
    grouped by field names in order of appearance (as the store groups them)."""
    kind = {float: KIND_FLOAT, int: KIND_INT, str: KIND_STR}
    groups: dict[tuple[str, ...], list[tuple[tuple[str, str, str], int, dict[str, object]]]]
    groups = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row[2])), []).append(row)
    columns: list[list[object]] = [[] for _ in RECORDS_TYPES]
    for (tenant, chassis, msg_type), ts, values in [row for g in groups.values() for row in g]:
        names = sorted(values)
        ordered = [values[name] for name in names]
        for column, value in zip(
            columns,
            [
                tenant.encode(),
                chassis.encode(),
                msg_type.encode(),
                ts,
                [name.encode() for name in names],
                [kind[type(v)] for v in ordered],
                [float(v) if not isinstance(v, str) else 0.0 for v in ordered],
                [v if type(v) is int else 0 for v in ordered],
                [v.encode() if isinstance(v, str) else b"" for v in ordered],
                ver,
            ],
            strict=True,
        ):
            column.append(value)
    context = Context()
    context.server_info = SimpleNamespace(used_revision=revision)
    context.settings = {}
    context.client_settings = {"strings_as_bytes": True, "use_numpy": False}
    sink = _Sink()
    out = CompressedBufferedWriter(sink, 1024)
    BlockOutputStream(out, context).write(ColumnOrientedBlock(list(RECORDS_TYPES), columns))
    return bytes(sink.data)


@pytest.mark.parametrize(
    "revision",
    [defines.DBMS_MIN_REVISION_WITH_SERVER_LOGS, defines.CLIENT_REVISION],
    ids=["18.16", "current"],
)
def test_encoded_records_block_is_the_drivers_byte_for_byte(revision: int) -> None:
    """The hand-encoded insert block of records of every value kind (long and non-ASCII
    strings, 64-bit int limits, unsorted and single fields, one field set with values of
    several kinds per field, strings among them) equals clickhouse-driver's."""
    shapes: list[dict[str, object]] = [
        {"b": 1.5, "a": -2, "c": "text", "z": 0.0},
        {"only": 7},
        {"f": float("inf"), "g": -0.0, "h": 1e300},
        {"i": 2**63 - 1, "j": -(2**63), "k": 0},
        {"s": "é" * 100, "t": "", "u": "x" * 300, "v": 3},
        {"name ä": "€", "n": 2.25},
        {"b": 2, "a": 0.5, "c": "other", "z": 1},  # the first one's fields, other kinds
        {"b": "now text", "a": 3, "c": 4.5, "z": 2**63 - 1},  # strings among numbers too
    ]
    rows = [
        (("tenant", f"machine-{n % 3}", "vehicle_can" if n % 2 else "gps ü"), T0 + n, values)
        for n, values in enumerate(
            shapes * 3 + [{"s": f"v{n}", "t": "", "u": "x" * n, "v": n} for n in range(200)]
        )
    ]
    for picked in (rows, rows[1:2], rows[2:3], rows[3:4], rows[-2:]):
        columns = _Columns()
        for stream, ts, values in picked:
            columns.add(stream, ts, values)  # type: ignore[arg-type]
        block = columns.encoded(T0 * 1_000_000)
        sink = _Sink()
        out = CompressedBufferedWriter(sink, 1024)
        block.write(out, revision)
        out.flush()
        assert bytes(sink.data) == _drivers_block(picked, T0 * 1_000_000, revision)
        assert block.rows == len(picked)


def test_quiet_socket_until_the_peer_closes_or_sends() -> None:
    """A connected socket with nothing to read is quiet; bytes from the peer, or the peer
    closing, make it not quiet (the store then pings before its query)."""
    for closing in (False, True):
        ours, theirs = socket.socketpair()
        try:
            assert _quiet(ours)
            if closing:
                theirs.close()
            else:
                theirs.sendall(b"\x04")
            assert not _quiet(ours)
        finally:
            ours.close()
            theirs.close()


async def test_restart_between_writes_costs_no_failed_write(
    own_clickhouse: ClickHouseServer,
) -> None:
    """A server restarted between two writes of one client: the next write sees the closed
    connection before sending, reconnects and succeeds (no StoreError), as do reads."""
    store = open_store(own_clickhouse.url("livedata") + "?pool_size=1")
    await store.start()
    try:
        await store.write([rec("t1", T0 + i, {"x": i}) for i in range(10)])
        await asyncio.to_thread(own_clickhouse.restart)
        assert await store.write([rec("t1", T0 + 10 + i, {"x": 10 + i}) for i in range(10)]) == 10
        got = await store.query("t1", "machine-1", "vehicle_can", ["x"], T0, T0 + 100)
        assert got["x"] == [(T0 + i, i) for i in range(20)]
    finally:
        await store.close()


async def test_two_writes_overlapping_a_stalled_server_are_stored_exactly(
    own_clickhouse: ClickHouseServer,
) -> None:
    """Two writes of different records in flight at once on two pool threads while the
    server is stopped (SIGSTOP) for 1 s: both return once it goes on, and every record of
    each is stored once, with its own values (no state shared between concurrent writes)."""
    db = unique_id("db_")
    store = open_store(own_clickhouse.url(db))
    await store.start()
    assert own_clickhouse.process is not None
    pid = own_clickhouse.process.pid

    def batch(prefix: str, offset: float) -> list[Record]:
        return [
            rec(
                "t1",
                T0 + second * 1000,
                {"n": m * 100 + second, "x": m + offset, "s": f"{prefix}{m}"},
                chassis=f"{prefix}{m}",
            )
            for m in range(1_000)
            for second in range(5)
        ]

    first, second = batch("a", 0.25), batch("b", 0.5)
    client = admin(own_clickhouse)
    try:
        os.kill(pid, signal.SIGSTOP)
        try:
            writing = asyncio.create_task(store.write(first))
            await asyncio.sleep(0.2)
            overlapping = asyncio.create_task(store.write(second))
            await asyncio.sleep(1.0)
            assert not writing.done() and not overlapping.done(), "both wait for the server"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await asyncio.gather(writing, overlapping) == [15_000, 15_000]
        rows = client.execute(
            f"SELECT chassis, ts, field, kind, num, int, str FROM {db}.records ORDER BY chassis, ts"
        )
        expected = sorted(
            (
                r.chassis,
                r.ts,
                ["n", "s", "x"],
                [2, 3, 1],
                [r.values["n"], 0.0, r.values["x"]],
                [r.values["n"], 0, 0],
                ["", r.values["s"], ""],
            )
            for r in first + second
        )
        assert [(c, ts, f, k, n, i, s) for c, ts, f, k, n, i, s in rows] == [
            tuple(e) for e in expected
        ]
    finally:
        client.disconnect()
        await store.close()
