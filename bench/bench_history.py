"""Downsampled history over 7 days of 1 Hz data for 10 fields: rollups against raw rows.

For each store backend (``--backends``, default ``sqlite,clickhouse,postgres``; the
ClickHouse and PostgreSQL servers are started as ``tests/servers`` starts them) this
script

1. starts ``livedata demo`` (1 machine) on that store, with retention of 8 days,
2. bulk-writes ``--days`` (7) days of 1 Hz ``client_raw_data`` for 10 fields ``f0..f9``
   of the demo machine straight into the store, ending now, in batches of an hour,
   with 20 planted spikes (+1,000 and -1,000 on a smooth signal between -100 and 100)
   -- timed, rollups included,
3. asks the history API ``--repeat`` (20) times each, p50 and p99:

   * **7 d, maxPoints=2000** (what the page's 7 d range asks for: 1-minute rollups),
   * **24 h, maxPoints=2000** (10-second rollups),
   * **1 h, maxPoints=2000** (buckets under 8 s: raw rows),

   and prints response time, payload size and points, and whether every planted
   spike is in the 7 d answer,
4. in this process, on the same data, runs the store's 7 d downsampling
   (``Store.downsample``, 1,000 buckets) through the rollups and through raw rows
   (``store.rollups = False``: the computation as it was before rollups, the
   baseline), ``--raw-repeat`` (2) times, and checks that both give the same
   minimum and maximum in every bucket and every global extreme.

Bounded in time: about 1 minute per backend here (the raw-row baseline is the
longest part on SQLite; a raw run that takes longer than 20 s is not repeated).
Every process and temporary directory is removed at the end, also on Ctrl-C.

    python bench/bench_history.py                      # all three backends
    python bench/bench_history.py --backends sqlite --days 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livedata.errors import StoreError
from livedata.model import Kind, Record, Value
from livedata.store import Store, open_store
from livedata.store.base import Series, bucket_grid
from tests.conftest import start_demo, stop

FIELDS = [f"f{i}" for i in range(10)]
SPIKES = 20
BATCH_SECONDS = 3_600
MAX_POINTS = 2_000
SLOW_RAW_S = 20.0


def values_at(second: int, spikes: dict[int, float]) -> dict[str, float | int | str]:
    base = 100 * math.sin(second / 3_600)
    values: dict[str, float | int | str] = {
        name: round(base + i + 0.01 * (second % 97), 3) for i, name in enumerate(FIELDS)
    }
    if second in spikes:
        values[FIELDS[second % len(FIELDS)]] = spikes[second]
    return values


async def fill(
    url: str, chassis: str, start_ms: int, seconds: int, spikes: dict[int, float]
) -> float:
    """Write the data set; the seconds it took."""
    store = open_store(url)
    await store.start()
    began = time.perf_counter()
    try:
        for first in range(0, seconds, BATCH_SECONDS):
            records = [
                Record(
                    "demo",
                    chassis,
                    "client_raw_data",
                    start_ms + s * 1000,
                    Kind.BACKFILL,
                    values_at(s, spikes),
                )
                for s in range(first, min(first + BATCH_SECONDS, seconds))
            ]
            await store.write(records)
    finally:
        await store.close()
    return time.perf_counter() - began


def p50_p99(times: list[float]) -> tuple[float, float]:
    """Median and 99th percentile in ms (the largest time when there are few)."""
    if len(times) < 2:
        return times[0] * 1000, times[0] * 1000
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def measure(client: httpx.Client, path: str, params: dict[str, Any], repeat: int) -> dict[str, Any]:
    times, body, size = [], None, 0
    for _ in range(repeat):
        began = time.perf_counter()
        response = client.get(path, params=params)
        times.append(time.perf_counter() - began)
        response.raise_for_status()
        size = len(response.content)
        body = response.json()
    assert body is not None
    points = sum(len(p) for p in body["series"].values())
    p50, p99 = p50_p99(times)
    return {"p50": p50, "p99": p99, "bytes": size, "points": points, "body": body}


def per_bucket(series: Series, start: int, end: int, buckets: int) -> dict[Any, tuple[Value, ...]]:
    """(field, bucket) -> (min, max) of a downsampled answer: what two answers must share."""
    grid = bucket_grid(start, end, buckets)
    found: dict[Any, list[Value]] = {}
    for name, points in series.items():
        for ts, value in points:
            found.setdefault((name, grid.bucket(ts)), []).append(value)
    return {key: (min(v), max(v)) for key, v in found.items()}  # type: ignore[type-var]


async def store_paths(url: str, chassis: str, start: int, end: int, repeat: int) -> dict[str, Any]:
    """The store's 7 d downsampling through rollups and through raw rows, in this process."""
    buckets = MAX_POINTS // 2
    out: dict[str, Any] = {}
    for label, rollups, runs in (("rollups", True, 10), ("raw rows", False, repeat)):
        store: Store = open_store(url)
        store.rollups = rollups  # type: ignore[attr-defined]
        await store.start()
        times: list[float] = []
        answer: Series = {}
        try:
            for _ in range(runs):
                began = time.perf_counter()
                try:
                    answer = await store.downsample(
                        "demo", chassis, "client_raw_data", FIELDS, start, end, buckets
                    )
                except StoreError as exc:
                    out[label] = {"error": f"{exc} (after {time.perf_counter() - began:.0f} s)"}
                    break
                times.append(time.perf_counter() - began)
                if times[-1] > SLOW_RAW_S:
                    break
        finally:
            await store.close()
        if times:
            p50, p99 = p50_p99(times)
            out[label] = {"p50": p50, "p99": p99, "runs": len(times), "answer": answer}
    return out


def run_backend(
    name: str, url: str | None, work: Path, days: float, repeat: int, raw_repeat: int
) -> None:
    data_dir = work / name
    args = ["--machines", "1", "--retention-days", "8"]
    if url is not None:
        args += ["--store", url]
    server = start_demo(data_dir, *args)
    try:
        chassis = server.machines[0]
        seconds = int(days * 86_400)
        end_ms = int(time.time() * 1000) // 1000 * 1000 - 10_000
        start_ms = end_ms - (seconds - 1) * 1000
        step = seconds // (SPIKES + 1)
        spikes = {step * (k + 1) + 17: (1000.0 if k % 2 else -1000.0) for k in range(SPIKES)}
        store_url = url or f"sqlite:///{data_dir}/telemetry.db"
        wrote = asyncio.run(fill(store_url, chassis, start_ms, seconds, spikes))
        points = seconds * len(FIELDS)
        print(
            f"\n== {name}: {points:,} points written in {wrote:.1f} s"
            f" ({points / wrote:,.0f} points/s, batches of {BATCH_SECONDS:,} records)",
            flush=True,
        )
        path = f"/api/resources/demo/_common/datasets/{chassis}/history"
        common = {"msgType": "client_raw_data", "fields": ",".join(FIELDS)}
        http: dict[str, dict[str, Any]] = {}
        with httpx.Client(base_url=server.url, timeout=300, headers=server.headers) as client:
            for label, span in (("7 d", seconds * 1000), ("24 h", 86_400_000), ("1 h", 3_600_000)):
                params = {**common, "from": end_ms - span + 1000, "to": end_ms}
                params["maxPoints"] = MAX_POINTS
                measure(client, path, params, 1)  # warm the caches
                http[label] = measure(client, path, params, repeat)
        down = http["7 d"]
        kept = 0
        for second, value in spikes.items():
            field = FIELDS[second % len(FIELDS)]
            kept += [start_ms + second * 1000, value] in down["body"]["series"][field]
        per_field = max(len(p) for p in down["body"]["series"].values())
        print(
            f"{'history API, maxPoints=2000':34} {'p50 ms':>9} {'p99 ms':>9} {'bytes':>11} {'points':>8}"
        )
        for label, m in http.items():
            print(f"{label:34} {m['p50']:9.1f} {m['p99']:9.1f} {m['bytes']:11,} {m['points']:8,}")
        print(
            f"7 d: downsampled={down['body']['downsampled']}, at most {per_field} points per"
            f" field; spikes kept: {kept}/{len(spikes)}"
        )
        paths = asyncio.run(store_paths(store_url, chassis, start_ms, end_ms, raw_repeat))
        print(
            f"{'Store.downsample 7 d, 1,000 buckets':34} {'p50 ms':>9} {'p99 ms':>9} {'runs':>11}"
        )
        for label, m in paths.items():
            if "error" in m:
                print(f"{label:34} failed: {m['error']}")
            else:
                print(f"{label:34} {m['p50']:9.1f} {m['p99']:9.1f} {m['runs']:11}")
        if all("answer" in m for m in paths.values()):
            fast, slow = paths["rollups"]["answer"], paths["raw rows"]["answer"]
            same = per_bucket(fast, start_ms, end_ms, MAX_POINTS // 2) == per_bucket(
                slow, start_ms, end_ms, MAX_POINTS // 2
            )
            extremes = all(
                min(v for _, v in slow[f]) in [v for _, v in fast[f]]  # type: ignore[type-var]
                and max(v for _, v in slow[f]) in [v for _, v in fast[f]]  # type: ignore[type-var]
                for f in FIELDS
            )
            speedup = paths["raw rows"]["p50"] / paths["rollups"]["p50"]
            print(
                f"rollups = raw rows in every bucket: {same}; global extremes kept: {extremes};"
                f" {speedup:,.0f}x faster"
            )
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,clickhouse,postgres")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--repeat", type=int, default=20, help="API requests per range")
    parser.add_argument("--raw-repeat", type=int, default=2, help="raw-row baseline runs")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-history-"))
    servers: list[Any] = []
    try:
        for backend in options.backends.split(","):
            run: tuple[str, str | None]
            if backend == "sqlite":
                run = ("sqlite", None)
            elif backend == "clickhouse":
                from tests.servers.clickhouse import start_clickhouse

                clickhouse = start_clickhouse(work / "clickhouse-server")
                servers.append(clickhouse)
                run = ("clickhouse", clickhouse.url("bench_history"))
            elif backend == "postgres":
                from tests.servers.postgres import start_postgres

                postgres = start_postgres(fsync=False)
                servers.append(postgres)
                run = ("postgres", postgres.url())
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            run_backend(*run, work, options.days, options.repeat, options.raw_repeat)
    finally:
        for server in servers:
            try:
                server.stop(remove=True)  # PostgresServer
            except TypeError:
                server.stop()  # ClickHouseServer
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
