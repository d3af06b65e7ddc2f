"""The gateway's fleet seeding against ClickHouse: server CPU and queries per machine met.

Starts a throwaway ClickHouse (18.16) -- or, with ``--store sqlite``, a SQLite telemetry
file (the embedded shape: no server, so only the seeding process's CPU and wall) -- and a
SQLite metadata database with the demo
organisation's ``--machines`` machines (DBC'd wheel loaders), stores a few records of both
message types per machine, then, per tree (``--before TREE``: a ``git archive`` of the old
code, run first; then this tree), in a fresh process each round: builds the gateway's
fleet state of the organisation (``OrgFleet.ensure``: listens to every machine and seeds
it from the store) and prints the ClickHouse server's CPU (``/proc``), the number of
queries it ran (``system.events`` ``Query``), the seeding process's CPU and the wall time,
per machine.  Server CPU and queries are the figures to compare; wall time is noisy when
the machine is shared.

    python bench/bench_seed.py --machines 2000 --rounds 3 --before /tmp/seed-before
    python bench/bench_seed.py --store sqlite --machines 5000 --before /tmp/seed-before
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
ORG = "demo"


def _server_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid`` so far, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _queries(url: str) -> int:
    from clickhouse_driver import Client

    client = Client(host="127.0.0.1", port=urlsplit(url).port, database="default")
    rows = client.execute("SELECT value FROM system.events WHERE event = 'Query'")
    client.disconnect()
    return int(rows[0][0])


async def _fill(store_url: str, meta_url: str, machines: int) -> None:
    from livedata.decode.can import CanDecoder
    from livedata.metadata import Metadata
    from livedata.model import Kind, MsgType, Record
    from livedata.sim.demo import DBC_PATH, seed_demo
    from livedata.sim.fleet import default_chassis_ids
    from livedata.store import open_store

    chassis = default_chassis_ids(machines)
    meta = Metadata(meta_url)
    await meta.start()
    await seed_demo(meta, chassis)
    signals = [s.name for s in CanDecoder.from_dbc(DBC_PATH.read_text()).signals()]
    raw = ["cpu_usage", "mem_usage", "gps_lat", "gps_lng"]
    store = open_store(store_url)
    await store.start()
    now = int(time.time() * 1000)
    records = []
    for n, c in enumerate(chassis):
        await meta.add_fields(ORG, c, MsgType.CLIENT_RAW_DATA, raw)
        for k in range(3):
            ts = now - 60_000 + k * 1_000 + n % 1_000
            can = {name: float(n + k) for name in signals}
            records.append(Record(ORG, c, MsgType.VEHICLE_CAN, ts, Kind.REALTIME, can))
            values = {name: float(k) for name in raw}
            records.append(Record(ORG, c, MsgType.CLIENT_RAW_DATA, ts, Kind.REALTIME, values))
    for start in range(0, len(records), 5_000):
        await store.write(records[start : start + 5_000])
    await store.close()
    await meta.close()


async def _seed(store_url: str, meta_url: str, pid: int) -> dict[str, float]:
    from livedata.bus.memory import MemoryPubSub
    from livedata.catalog import Catalog
    from livedata.gateway.fanout import Fanout
    from livedata.gateway.fleet import OrgFleet
    from livedata.metadata import Metadata
    from livedata.store import open_store

    meta = Metadata(meta_url)
    await meta.start()
    store = open_store(store_url)
    await store.start()
    catalog = Catalog(meta)
    await catalog.machines(ORG)
    hub = Fanout(MemoryPubSub(f"memory://{uuid.uuid4().hex}"))
    fleet = OrgFleet(hub, store, meta, catalog, ORG)
    queries, server = (_queries(store_url), _server_cpu(pid)) if pid else (0, 0.0)
    cpu, wall = time.process_time(), time.perf_counter()
    await fleet.ensure()
    out = {
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "machines": len(fleet.machines),
        "seeded": sum(1 for m in fleet.machines.values() if m.values),
    }
    if pid:
        out["server"] = _server_cpu(pid) - server
        out["queries"] = _queries(store_url) - queries - 1  # less the count's own query
    await fleet.close()
    await store.close()
    await meta.close()
    return out


def _server_line(result: dict[str, float]) -> str:
    """The ClickHouse server's part of a round's line (nothing for SQLite)."""
    if "server" not in result:
        return ""
    n = result["machines"]
    return (
        f" server {result['server']:.2f} s ({result['server'] / n * 1e6:,.0f} µs/machine),"
        f" {result['queries']:,.0f} queries ({result['queries'] / n:.2f}/machine),"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", choices=("clickhouse", "sqlite"), default="clickhouse")
    parser.add_argument("--before", type=Path, help="a tree of the old code, run first")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        store_url, meta_url, pid = args.child
        print(json.dumps(asyncio.run(_seed(store_url, meta_url, int(pid)))))
        return

    sys.path.insert(0, str(ROOT))
    from tests.servers.clickhouse import start_clickhouse

    trees = [("this", ROOT / "src")]
    if args.before:
        trees.insert(0, ("before", args.before.resolve() / "src"))
    with tempfile.TemporaryDirectory(prefix="bench-seed-") as tmp:
        server = start_clickhouse(Path(tmp) / "clickhouse") if args.store == "clickhouse" else None
        try:
            pid = server.process.pid if server is not None and server.process else 0
            store_url = server.url("seed") if server else f"sqlite:///{tmp}/telemetry.db"
            meta_url = f"sqlite:///{tmp}/meta.db"
            asyncio.run(_fill(store_url, meta_url, args.machines))
            print(
                f"{args.machines} machines, 2 message types each, {args.store};"
                f" load {os.getloadavg()}"
            )
            results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
            for _ in range(args.rounds):
                for name, src in trees:
                    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
                    child = [sys.executable, __file__, "--child", store_url, meta_url, str(pid)]
                    done = subprocess.run(child, env=env, check=True, capture_output=True)
                    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
                    results[name].append(result)
                    n = result["machines"]
                    print(
                        f"  {name:6}{_server_line(result)}"
                        f" seeding process {result['cpu'] / n * 1e6:,.0f} µs/machine,"
                        f" wall {result['wall']:.2f} s, seeded {result['seeded']}/{n}"
                    )
            print(f"load {os.getloadavg()}")
            for name, rows in results.items():
                best = min(rows, key=lambda r: r.get("server", r["cpu"]))
                server_part = (
                    f" server {best['server']:.2f} s, {best['queries']:,.0f} queries,"
                    if "server" in best
                    else ""
                )
                print(
                    f"{name:6} best of {len(rows)}:{server_part}"
                    f" seeding process {best['cpu']:.2f} s, wall {best['wall']:.2f} s"
                )
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
