"""Downsampled history over 7 days of 1 Hz data for 10 fields, through the real history API.

For each store backend (SQLite always; ClickHouse and PostgreSQL from ``tests/servers``
with ``--backends sqlite,clickhouse,postgres``) this script

1. starts ``livedata demo`` (1 machine) on that store, with retention of 8 days,
2. writes ``--days`` (7) days of 1 Hz ``client_raw_data`` for 10 fields ``f0..f9`` of
   the demo machine straight into the store, ending now, with 20 planted spikes
   (+1,000 and -1,000 on a smooth signal between -100 and 100),
3. asks the history API, ``--repeat`` times each (medians):

   * **7 d, maxPoints=2000** (what the page's 7 d range asks for),
   * **1 h raw** (the baseline: raw query, no maxPoints),
   * **7 d raw** once (capped by the API at the newest 100,000 points per field),

   and prints response time, payload size and points, and whether every planted
   spike is in the downsampled answer.

Bounded in time (the write is the longest part: about 6 M points), and every process
and temporary directory is removed at the end, also on Ctrl-C.

    python bench/bench_history.py                          # SQLite, 7 days
    python bench/bench_history.py --backends sqlite,clickhouse,postgres
"""

from __future__ import annotations

import argparse
import asyncio
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

from livedata.model import Kind, Record
from livedata.store import open_store
from tests.conftest import start_demo, stop

FIELDS = [f"f{i}" for i in range(10)]
SPIKES = 20
BATCH_SECONDS = 3_600


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
    return {"ms": statistics.median(times) * 1000, "bytes": size, "points": points, "body": body}


def run_backend(name: str, url: str | None, work: Path, days: float, repeat: int) -> None:
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
        print(f"\n== {name}: {seconds * len(FIELDS):,} points written in {wrote:.1f} s")
        path = f"/api/resources/demo/_common/datasets/{chassis}/history"
        common = {"msgType": "client_raw_data", "fields": ",".join(FIELDS)}
        with httpx.Client(base_url=server.url, timeout=300) as client:
            long = {**common, "from": start_ms, "to": end_ms}
            measure(client, path, {**long, "maxPoints": 2000}, 1)  # warm the caches
            down = measure(client, path, {**long, "maxPoints": 2000}, repeat)
            hour = {**common, "from": end_ms - 3_600_000, "to": end_ms}
            raw_hour = measure(client, path, hour, repeat)
            raw_week = measure(client, path, long, 1)
        kept = 0
        for second, value in spikes.items():
            field = FIELDS[second % len(FIELDS)]
            kept += [start_ms + second * 1000, value] in down["body"]["series"][field]
        per_field = max(len(p) for p in down["body"]["series"].values())
        print(f"{'request':34} {'median ms':>10} {'bytes':>12} {'points':>10}")
        for label, m in (
            (f"{days:g} d, maxPoints=2000", down),
            ("1 h raw (baseline)", raw_hour),
            (f"{days:g} d raw (API cap 100k/field)", raw_week),
        ):
            print(f"{label:34} {m['ms']:10.1f} {m['bytes']:12,} {m['points']:10,}")
        print(
            f"downsampled={down['body']['downsampled']}, at most {per_field} points per field; "
            f"spikes kept: {kept}/{len(spikes)}"
        )
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite", help="sqlite,clickhouse,postgres")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-history-"))
    servers: list[Any] = []
    try:
        for backend in options.backends.split(","):
            if backend == "sqlite":
                run_backend("sqlite", None, work, options.days, options.repeat)
            elif backend == "clickhouse":
                from tests.servers.clickhouse import start_clickhouse

                clickhouse = start_clickhouse(work / "clickhouse-server")
                servers.append(clickhouse)
                url = clickhouse.url("bench_history")
                run_backend("clickhouse", url, work, options.days, options.repeat)
            elif backend == "postgres":
                from tests.servers.postgres import start_postgres

                postgres = start_postgres(fsync=False)
                servers.append(postgres)
                run_backend("postgres", postgres.url(), work, options.days, options.repeat)
            else:
                raise SystemExit(f"unknown backend {backend!r}")
    finally:
        for server in servers:
            try:
                server.stop(remove=True)  # PostgresServer
            except TypeError:
                server.stop()  # ClickHouseServer
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
