"""``livedata serve --seed-demo N``'s seeding on PostgreSQL: wall, client CPU and server CPU.

Starts a throwaway PostgreSQL (fsync off, as the cluster bench runs it); per tree
(``--before TREE``: the old code, run first; then this tree) and round, in a fresh
process on a fresh database: ``seed_demo`` of ``--machines`` machines (``first``: they
are created, a first start) and then again (``again``: they exist, a gateway restarted
on the same database).  Prints the wall time, the seeding process's CPU and the
PostgreSQL server's CPU (the postmaster and its backends, from ``psutil``).  One process
and PostgreSQL, seconds with batching (the old code: tens of seconds)::

    flock /tmp/heavy.lock python bench/bench_seed_demo.py --machines 5000 --before /tmp/base
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _server_cpu(pid: int) -> float:
    """CPU seconds of the postmaster and every backend it has run (live and ended)."""
    import psutil

    server = psutil.Process(pid)
    total = sum(server.cpu_times()[:4])  # user, system, children_user, children_system
    for child in server.children():
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:  # ended since listed: counted in children_* next time
            continue
    return total


async def _seed(url: str, machines: int, pid: int) -> dict[str, dict[str, float]]:
    """``seed_demo`` twice on an empty database: the figures of each, and the machines
    listed after it (counted outside the figures)."""
    from livedata.metadata import Metadata
    from livedata.sim.demo import ORG, seed_demo
    from livedata.sim.fleet import default_chassis_ids

    meta = Metadata(url)
    await meta.start()
    chassis = default_chassis_ids(machines)
    out = {}
    for name in ("first", "again"):
        server, cpu, wall = _server_cpu(pid), time.process_time(), time.perf_counter()
        await seed_demo(meta, chassis)
        out[name] = {
            "wall": time.perf_counter() - wall,
            "cpu": time.process_time() - cpu,
            "server": _server_cpu(pid) - server,
            "machines": len(await meta.list_machines(ORG)),
        }
    await meta.close()
    return out


async def _create_database(url: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", type=Path, help="a tree of the old code, run first")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, machines, pid = args.child
        print(json.dumps(asyncio.run(_seed(url, int(machines), int(pid)))))
        return

    sys.path.insert(0, str(ROOT))
    from tests.servers.postgres import start_postgres

    trees = [("this", ROOT / "src")]
    if args.before:
        trees.insert(0, ("before", args.before.resolve() / "src"))
    server = start_postgres(fsync=False)
    try:
        postmaster = (server.data / "postmaster.pid").read_text().split()[0]
        print(f"seed_demo of {args.machines:,} machines on PostgreSQL; load {os.getloadavg()}")
        for round_ in range(args.rounds):
            for name, src in trees:
                database = f"seed_{name}_{round_}"
                asyncio.run(_create_database(server.url(), database))
                env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
                child = [
                    sys.executable,
                    __file__,
                    "--child",
                    server.url(database),
                    str(args.machines),
                    postmaster,
                ]
                done = subprocess.run(child, env=env, check=True, capture_output=True)
                result = json.loads(done.stdout.decode().strip().splitlines()[-1])
                for phase, r in result.items():
                    print(
                        f"  {name:6} {phase:5} wall {r['wall']:6.2f} s,"
                        f" seeding process CPU {r['cpu']:6.2f} s,"
                        f" PostgreSQL CPU {r['server']:6.2f} s, {r['machines']:,} machines"
                    )
        print(f"load {os.getloadavg()}")
    finally:
        server.stop(remove=True)


if __name__ == "__main__":
    main()
