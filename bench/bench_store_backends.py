"""Store backends: write throughput and query latency on ClickHouse and PostgreSQL, SQLite as baseline.

    python bench/bench_store_backends.py [--seconds 8] [--pg-fsync on|off] [--no-dedup]

The servers are started the way the tests start them (``tests/servers``): Debian's
``clickhouse-server`` and a fresh PostgreSQL cluster (``initdb``) on free loopback
ports, in temporary directories that are removed at the end, also on Ctrl-C.
PostgreSQL runs with ``fsync`` on by default (every commit waits for the disk);
ClickHouse does not fsync inserted parts and SQLite (WAL, ``synchronous=NORMAL``)
syncs at checkpoints only, so ``--pg-fsync off`` gives the like-for-like figure.

Records are 15-field ``vehicle_can`` records (12 floats, 3 ints) of 200 machines,
one per machine per second, as in ``bench_store.py``.  For each store:

* write throughput in records/s and points/s for batches of 100 and 1,000 records
  (``--seconds`` each; only the ``await store.write`` is timed), with the rollups of
  the downsampled history off (``store.rollups = False``, as before them) and on, each
  in a database of its own, in turns -- the write-path cost of the rollups;
* latency p50/p99 of the history query (2-minute window, 10 fields, one machine),
  idle and while a writer keeps writing batches of 1,000 records;
* size on disk per million points, without and with rollups.

Then, unless ``--no-dedup``, the ClickHouse deduplication choice: 1 M points of
one machine (10 fields), 150 unmerged one-second inserts and 10 redelivered
batches, merges stopped; the 2-minute and the full-range query with ``argMax ...
GROUP BY`` (what the store does), with ``FINAL``, and without deduplication; then
the same once everything is merged.  Runs in about 3-4 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from clickhouse_driver import Client

from bench_store import (
    FIELDS,
    MACHINES,
    T0,
    percentiles,
    query_latencies,
    record_stream,
)
from livedata.model import Kind, Record
from livedata.store import Store, open_store
from livedata.store.clickhouse import _ARRAY_JOIN
from tests.servers.clickhouse import ClickHouseServer, start_clickhouse
from tests.servers.postgres import PostgresServer, start_postgres

QUERIES = 500
ROUNDS = 2
"""Write phases per batch size and mode, off and on in turns."""


async def write_for(
    store: Store, tenant: str, batch: int, seconds: float, second: int
) -> tuple[float, float, int, int]:
    """Write batches for ``seconds`` of store time: (records/s, points/s, points, last second)."""
    stream = record_stream(tenant, seed=batch, second=second)
    busy = 0.0
    records = points = 0
    last_ts = T0
    while busy < seconds:
        records_batch = [next(stream) for _ in range(batch)]
        start = time.perf_counter()
        points += await store.write(records_batch)
        busy += time.perf_counter() - start
        records += batch
        last_ts = records_batch[-1].ts
    return records / busy, points / busy, points, (last_ts - T0) // 1000


async def bench(
    name: str,
    make_url: Callable[[str], str],
    seconds: float,
    size: Callable[[str], Awaitable[int]],
) -> None:
    """``make_url(mode)`` and ``size(mode)``: a fresh database per mode, "off" and "on"."""
    print(f"\n{name}  ({make_url('on')})", flush=True)
    stores: dict[str, Store] = {}
    totals = {"off": 0, "on": 0}
    try:
        for mode in ("off", "on"):
            store = open_store(make_url(mode))
            store.rollups = mode == "on"  # type: ignore[attr-defined]
            await store.start()
            stores[mode] = store
        store = stores["on"]
        second = 0
        first_ts = T0
        for batch in (100, 1000):
            busy = {"off": 0.0, "on": 0.0}
            points = {"off": 0, "on": 0}
            nexts = {"off": 0, "on": 0}
            for _ in range(ROUNDS):  # in turns, so that load from elsewhere hits both alike
                for mode in ("off", "on"):
                    _, pts_s, written, last = await write_for(
                        stores[mode], f"bench-b{batch}", batch, seconds / ROUNDS, nexts[mode]
                    )
                    nexts[mode] = last + 1
                    points[mode] += written
                    busy[mode] += written / pts_s
            second = nexts["on"] - 1
            rates = {}
            for mode in ("off", "on"):
                totals[mode] += points[mode]
                pts_s = points[mode] / busy[mode]
                rates[mode] = (pts_s / len(FIELDS), pts_s)  # every record has every field
            cost = rates["off"][0] / rates["on"][0] - 1
            print(
                f"  write, batches of {batch:>5,}: rollups off {rates['off'][0]:>9,.0f} records/s"
                f" {rates['off'][1]:>11,.0f} points/s; on {rates['on'][0]:>9,.0f} records/s"
                f" {rates['on'][1]:>11,.0f} points/s ({cost:+.0%} time per record)",
                flush=True,
            )
        tenant, last_ts = "bench-b1000", T0 + second * 1000
        print(
            f"  stored {totals['on']:,} points (rollups on); the queried tenant has"
            f" {second + 1:,} s per machine"
        )
        idle = await query_latencies(store, tenant, first_ts, last_ts, QUERIES)
        print(f"  query 2 min x 10 fields, idle:          {percentiles(idle)}", flush=True)

        stop = asyncio.Event()

        async def background_writer() -> None:
            stream = record_stream("bench-background", seed=3, second=second + 1)
            while not stop.is_set():
                await store.write([next(stream) for _ in range(1000)])
                await asyncio.sleep(0.01)

        writer = asyncio.create_task(background_writer())
        try:
            busy = await query_latencies(store, tenant, first_ts, last_ts, QUERIES // 2)
        finally:
            stop.set()
            await writer
        print(f"  query 2 min x 10 fields, while writing: {percentiles(busy)}")
    finally:
        for store in stores.values():
            await store.close()
    for mode in ("off", "on"):
        on_disk = await size(mode)
        print(
            f"  size on disk, rollups {mode}: {on_disk / 1e6:,.1f} MB"
            f" = {on_disk / totals[mode]:,.1f} bytes/point (approx.)"
        )


async def sqlite_size(db_path: Path) -> int:
    return sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*"))


async def clickhouse_size(server: ClickHouseServer, database: str) -> int:
    client = Client("127.0.0.1", port=server.tcp_port)
    try:
        client.execute(f"OPTIMIZE TABLE {database}.records FINAL")
        if client.execute(f"EXISTS TABLE {database}.rollups")[0][0]:
            client.execute(f"OPTIMIZE TABLE {database}.rollups FINAL")
        rows = client.execute(
            "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = %(db)s AND active",
            {"db": database},
        )
        return int(rows[0][0])
    finally:
        client.disconnect()


async def postgres_size(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
        size = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(oid)) FROM pg_class"
            " WHERE relkind = 'r' AND relname LIKE 'telemetry_%'"
        )
        return int(size)
    finally:
        await conn.close()


def interleaved(client: Client, queries: dict[str, str], rounds: int) -> dict[str, list[float]]:
    """Run every query once per round, in turn, so that load from elsewhere hits all alike."""
    latencies: dict[str, list[float]] = {name: [] for name in queries}
    for _ in range(rounds):
        for name, sql in queries.items():
            start = time.perf_counter()
            client.execute(sql)
            latencies[name].append(time.perf_counter() - start)
    return latencies


async def dedup_bench(server: ClickHouseServer) -> None:
    """FINAL against argMax on 1 M points of one machine, unmerged and merged."""
    print("\nClickHouse deduplication: argMax ... GROUP BY (the store) against FINAL", flush=True)
    database = "dedup"
    store = open_store(server.url(database))
    await store.start()
    client = Client("127.0.0.1", port=server.tcp_port)
    fields = [f"f{i}" for i in range(10)]
    seconds = 100_000
    rnd = random.Random(7)

    def batch(first: int, last: int) -> list[Record]:
        return [
            Record(
                "t1",
                "m1",
                "vehicle_can",
                T0 + s * 1000,
                Kind.REALTIME,
                {f: rnd.random() for f in fields},
            )
            for s in range(first, last)
        ]

    try:
        for first in range(0, seconds - 150, 10_000):
            await store.write(batch(first, min(first + 10_000, seconds - 150)))
        client.execute(f"SYSTEM STOP MERGES {database}.records")
        for s in range(seconds - 150, seconds):
            await store.write(batch(s, s + 1))
        for s in range(seconds - 100, seconds, 10):
            await store.write(batch(s, s + 10))  # redelivered
        where = (
            "tenant = 't1' AND chassis = 'm1' AND msg_type = 'vehicle_can'"
            " AND ts >= {lo} AND ts <= {hi}"
        )
        asked = f"field IN ({', '.join(repr(f) for f in fields)})"
        points = f"(SELECT * FROM {database}.records{{final}} WHERE {{w}}) {_ARRAY_JOIN}"
        variants = {
            "argMax": (
                "SELECT field, ts, argMax(kind, ver), argMax(num, ver), argMax(int, ver),"
                f" argMax(str, ver) FROM {points.format(final='', w='{w}')} WHERE {asked}"
                " GROUP BY field, ts ORDER BY field, ts DESC LIMIT 100000 BY field"
            ),
            "FINAL": (
                "SELECT field, ts, kind, num, int, str"
                f" FROM {points.format(final=' FINAL', w='{w}')} WHERE {asked}"
                " ORDER BY field, ts DESC LIMIT 100000 BY field"
            ),
            "no dedup": (
                "SELECT field, ts, kind, num, int, str"
                f" FROM {points.format(final='', w='{w}')} WHERE {asked}"
                " ORDER BY field, ts DESC LIMIT 100000 BY field"
            ),
        }
        windows = (
            ("2 min, newest", T0 + (seconds - 120) * 1000, T0 + seconds * 1000, False, 40),
            ("2 min, older", T0 + 50_000_000, T0 + 50_120_000, False, 40),
            ("all 1 M, count()", 0, T0 * 2, True, 5),
        )
        for state in ("150 unmerged parts", "merged"):
            if state == "merged":
                client.execute(f"SYSTEM START MERGES {database}.records")
                client.execute(f"OPTIMIZE TABLE {database}.records FINAL")
            parts = client.execute(
                "SELECT count(), sum(rows) FROM system.parts"
                " WHERE database = %(db)s AND table = 'records' AND active",
                {"db": database},
            )[0]
            print(f"  {state}: {parts[0]} parts, {parts[1]:,} records")
            for label, lo, hi, count_only, rounds in windows:
                queries = {}
                for name, template in variants.items():
                    sql = template.format(w=where.format(lo=lo, hi=hi))
                    queries[name] = f"SELECT count() FROM ({sql})" if count_only else sql
                latencies = interleaved(client, queries, rounds)
                figures = "   ".join(
                    f"{name} {statistics.median(values) * 1000:7.1f} ms"
                    for name, values in latencies.items()
                )
                print(f"    {label:17s} median of {rounds:2d}:  {figures}", flush=True)
    finally:
        with contextlib.suppress(Exception):
            client.execute(f"SYSTEM START MERGES {database}.records")
        client.disconnect()
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per write phase (default 8)")
    parser.add_argument("--pg-fsync", choices=("on", "off"), default="on")
    parser.add_argument(
        "--no-dedup", action="store_true", help="skip the ClickHouse FINAL/argMax part"
    )
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs,"
        f" {len(FIELDS)} fields per record, {len(MACHINES)} machines"
    )
    clickhouse: ClickHouseServer | None = None
    postgres: PostgresServer | None = None
    with tempfile.TemporaryDirectory(prefix="livedata-bench-") as tmp:
        try:
            db_dir = Path(tmp)
            await bench(
                "sqlite (baseline)",
                lambda mode: f"sqlite:///{db_dir}/telemetry-{mode}.db",
                args.seconds,
                lambda mode: sqlite_size(db_dir / f"telemetry-{mode}.db"),
            )

            clickhouse = ch = start_clickhouse(Path(tmp) / "clickhouse")
            client = Client("127.0.0.1", port=ch.tcp_port)
            print(f"\nclickhouse-server {client.execute('SELECT version()')[0][0]}")
            client.disconnect()
            await bench(
                "clickhouse",
                lambda mode: ch.url(f"bench_{mode}"),
                args.seconds,
                lambda mode: clickhouse_size(ch, f"bench_{mode}"),
            )
            if not args.no_dedup:
                await dedup_bench(ch)
            ch.stop()
            clickhouse = None

            postgres = pg = start_postgres(fsync=args.pg_fsync == "on")
            conn = await asyncpg.connect(pg.url())
            version = await conn.fetchval("SHOW server_version")
            for mode in ("off", "on"):
                await conn.execute(f"CREATE DATABASE bench_{mode}")
            await conn.close()
            print(f"\npostgresql {version}, fsync {args.pg_fsync}")
            await bench(
                "postgresql",
                lambda mode: pg.url(f"bench_{mode}"),
                args.seconds,
                lambda mode: postgres_size(pg.url(f"bench_{mode}")),
            )
        finally:
            if clickhouse is not None:
                clickhouse.stop()
            if postgres is not None:
                postgres.stop(remove=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
