"""Store benchmark: write throughput, query latency and size, SQLite against memory.

    python bench/bench_store.py [--seconds 20]

Records are 15-field ``vehicle_can`` records (12 floats, 3 ints) of 200 machines,
one per machine per second.  For each store it measures

* write throughput in records/s and points/s for batches of 100 and 1,000 records
  (``--seconds`` in total for the SQLite writes, a quarter of that for memory);
  only the ``await store.write`` is timed, not building the records;
* query latency p50/p99 of a 2-minute window of 10 fields of one machine, idle and
  while a writer keeps writing batches of 1,000 records;
* size per million points: the SQLite file after close; for memory the growth of
  the process's resident memory (a rough figure).

Runs in about ``2 * --seconds`` and removes its temporary files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from livedata.model import Kind, Record
from livedata.store import Store, open_store

FIELDS = [f"signal_{i:02d}" for i in range(15)]
QUERY_FIELDS = FIELDS[:10]
MACHINES = [f"chassis-{i:04d}" for i in range(200)]
T0 = 1_700_000_000_000
WINDOW_MS = 120_000
QUERIES = 1_000


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def record_stream(tenant: str, seed: int, second: int = 0) -> Iterator[Record]:
    """Records of every machine, second after second from ``second``, with plausible values."""
    rnd = random.Random(seed)
    while True:
        ts = T0 + second * 1000
        for chassis in MACHINES:
            values: dict[str, float | int | str] = {
                name: round(rnd.uniform(0, 3000), 3) for name in FIELDS[:12]
            }
            values.update({name: rnd.randrange(0, 256) for name in FIELDS[12:]})
            yield Record(tenant, chassis, "vehicle_can", ts, Kind.REALTIME, values)
        second += 1


class Written:
    """What a store was given so far; phases go on in time from ``last_ts`` ("now")."""

    def __init__(self) -> None:
        self.points = 0
        self.last_ts = T0


async def write_for(
    store: Store, tenant: str, batch: int, seconds: float, written: Written
) -> tuple[float, float, int]:
    """Write batches for ``seconds`` of store time; return (records/s, points/s, first ts)."""
    first_ts = written.last_ts + 1000
    stream = record_stream(tenant, seed=batch, second=(first_ts - T0) // 1000)
    busy = 0.0
    records = points = 0
    while busy < seconds:
        records_batch = [next(stream) for _ in range(batch)]
        start = time.perf_counter()
        points += await store.write(records_batch)
        busy += time.perf_counter() - start
        records += batch
        written.last_ts = records_batch[-1].ts
    written.points += points
    return records / busy, points / busy, first_ts


async def query_latencies(
    store: Store, tenant: str, first_ts: int, last_ts: int, count: int
) -> list[float]:
    """Latencies of ``count`` queries of 2-minute windows inside [first_ts, last_ts]."""
    rnd = random.Random(1)
    latencies = []
    for _ in range(count):
        end = rnd.randrange(first_ts + WINDOW_MS, last_ts + 1)
        chassis = rnd.choice(MACHINES)
        start = time.perf_counter()
        got = await store.query(tenant, chassis, "vehicle_can", QUERY_FIELDS, end - WINDOW_MS, end)
        latencies.append(time.perf_counter() - start)
        assert all(len(points) >= 100 for points in got.values()), "window not filled"
        await asyncio.sleep(0)  # let a background writer take turns
    return latencies


def percentiles(latencies: list[float]) -> str:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return f"p50 {cuts[49] * 1000:7.3f} ms   p99 {cuts[98] * 1000:7.3f} ms"


async def bench(name: str, url: str, seconds: float, db_path: Path | None) -> None:
    print(f"\n{name}  ({url})")
    gc.collect()
    rss_before = rss_bytes()
    store = open_store(url)
    await store.start()
    written = Written()
    first_ts = T0
    for batch in (100, 1000):
        rec_s, pts_s, first_ts = await write_for(
            store, f"bench-b{batch}", batch, seconds / 2, written
        )
        print(
            f"  write, batches of {batch:>5,}: {rec_s:>10,.0f} records/s {pts_s:>12,.0f} points/s"
        )
    tenant, last_ts = "bench-b1000", written.last_ts
    print(
        f"  stored {written.points:,} points; the queried tenant has "
        f"{(last_ts - first_ts) // 1000 + 1:,} s of data per machine"
    )

    idle = await query_latencies(store, tenant, first_ts, last_ts, QUERIES)
    print(f"  query 2 min x 10 fields, idle:          {percentiles(idle)}")

    stop = asyncio.Event()

    async def background_writer() -> None:
        stream = record_stream("bench-background", seed=3, second=(last_ts - T0) // 1000 + 1)
        while not stop.is_set():
            written.points += await store.write([next(stream) for _ in range(1000)])
            await asyncio.sleep(0.01)  # batches of 1,000 records almost back to back

    writer = asyncio.create_task(background_writer())
    busy = await query_latencies(store, tenant, first_ts, last_ts, QUERIES // 2)
    stop.set()
    await writer
    print(f"  query 2 min x 10 fields, while writing: {percentiles(busy)}")

    await store.close()
    if db_path is not None:
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            total = conn.execute("SELECT COALESCE(SUM(n), 0) FROM records").fetchone()[0]
        size = sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*"))
        print(
            f"  size: {size / 1e6:,.1f} MB for {total:,} points = {size / total:,.1f} MB/M points"
        )
    else:
        rss_after = rss_bytes()
        if rss_before is not None and rss_after is not None:
            grown = rss_after - rss_before
            print(
                f"  resident memory grew {grown / 1e6:,.0f} MB for {written.points:,} points"
                f" = {grown / written.points:,.0f} MB/M points (rough)"
            )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="write time for SQLite (default 20)"
    )
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, {len(FIELDS)} fields per record, {len(MACHINES)} machines"
    )
    await bench("memory (baseline)", "memory://bench", args.seconds / 4, None)
    with tempfile.TemporaryDirectory(prefix="livedata-bench-store-") as tmp:
        db_path = Path(tmp) / "telemetry.db"
        await bench("sqlite", f"sqlite:///{db_path}", args.seconds, db_path)


if __name__ == "__main__":
    asyncio.run(main())
