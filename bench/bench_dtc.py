"""DTC changes through ingest: this checkout against another tree, on SQLite and PostgreSQL.

    python bench/bench_dtc.py --base /tmp/dtc-base/src [--machines 1000] [--toggling 200]
        [--batches 5] [--rounds 3] [--metadata sqlite --metadata postgres]

For each metadata database (a temporary SQLite file; a PostgreSQL started the way the
tests do, on a free loopback port, removed at the end) and each tree (``--base DIR``, a
``src`` directory of the code before, and this checkout's ``src``), alternating
``--rounds`` times, a worker process with the tree under test first on ``sys.path``
seeds a fresh database (``--machines`` J1939 machines on ``tests/files/can/j1939.dbc``),
lets a first :class:`~livedata.pipeline.ingest.Ingest` make DTC 100/1 active on a tenth
of them, then -- the role restarted -- hands a new ``Ingest`` (catalog warm, so only DTC
work differs) batches of one ``vehicle_can`` message per machine with one single-frame
DM1 each, through :meth:`Ingest.handle_many` (what the device links call), and times
each call (wall time, and the worker's CPU time: all its threads, not the database
server's), once ingest's writer has taken the batch before:

* ``start-up``: the first batch, which loads the active DTCs of every machine, less a
  steady batch (the same DM1s again: nothing changes, nothing is loaded);
* ``steady batch``: the median of ``--batches`` such batches;
* ``per change``: ``--batches`` batches in which the first ``--toggling`` machines turn
  DTC 100/1 on and off again by turns (~0.9 then 1 change per machine; one change per
  transaction before made a thousand of them take a minute on a busy disk), the others
  as in the steady batch; their median less the steady batch's, divided by the
  changes they made (counted by the service's event number).

The machine is shared and noisy: compare the two trees' figures of the same round and
read the ratios (base / this, > 1 is faster now).  Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DBC = ROOT / "tests" / "files" / "can" / "j1939.dbc"
ORG, MODEL = "bench", "j1939-loader"
DM1_ID = 0x18FECA00
"""A single-frame DM1 of source address 0."""
QUIET = bytes([0x00, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF])
"""A DM1 listing no DTC, lamps off."""
AMBER = bytes([0x04, 0xFF, 100, 0, 1, 1, 0xFF, 0xFF])
"""A DM1 listing SPN 100 FMI 1 (occurrence count 1), amber lamp on."""


async def _worker(url: str, machines: int, toggling: int, batches: int) -> dict[str, float]:
    from livedata.bus.memory import MemoryLog
    from livedata.catalog import Catalog
    from livedata.devices.base import Delivery
    from livedata.metadata import Metadata
    from livedata.model import DeviceMessage, Frame, Kind, MsgType
    from livedata.pipeline.ingest import Ingest
    from livedata.settings import Settings
    from livedata.store.memory import MemoryStore

    if url.startswith("postgresql://"):
        import asyncpg

        database = f"bench_dtc_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(url)
        await conn.execute(f"CREATE DATABASE {database}")
        await conn.close()
        url = url.rsplit("/", 1)[0] + f"/{database}"
    meta = Metadata(url)
    await meta.start()
    await meta.ensure_org(ORG, "Bench")
    dbc = await meta.add_dbc(ORG, "j1939.dbc", DBC.read_text(), j1939=True)
    await meta.assign_model_dbc(ORG, MODEL, dbc.id)
    chassis_ids = [f"M{n:05d}" for n in range(machines)]
    for chassis in chassis_ids:
        await meta.upsert_machine(ORG, chassis, chassis, MODEL)
    ts = int(time.time() * 1000) - 3_600_000

    def batch(data: list[bytes]) -> list[Delivery]:
        nonlocal ts
        ts += 1000
        return [
            Delivery(
                DeviceMessage(
                    ORG,
                    chassis,
                    MsgType.VEHICLE_CAN,
                    ts,
                    Kind.REALTIME,
                    frames=(Frame(ts, DM1_ID, True, payload),),
                )
            )
            for chassis, payload in zip(chassis_ids, data, strict=True)
        ]

    def started(catalog: Catalog) -> tuple[Ingest, asyncio.Task[None]]:
        defaults = Settings()
        ingest = Ingest(
            MemoryStore(f"memory://{uuid.uuid4().hex}"),
            MemoryLog(f"memory://{uuid.uuid4().hex}"),
            catalog,
            batch_max=defaults.store_batch_max,
            queue_max=max(defaults.ingest_queue, 4 * machines),
        )
        return ingest, asyncio.create_task(ingest.run())

    catalog = Catalog(meta)
    for chassis in chassis_ids:
        await catalog.machine(ORG, chassis)
    tenth = [AMBER if n % 10 == 0 else QUIET for n in range(machines)]
    before, task = started(catalog)  # the role before its restart
    await before.handle_many(batch(tenth))
    task.cancel()
    ingest, task = started(catalog)

    async def timed(deliveries: list[Delivery]) -> tuple[float, float]:
        """(wall, process CPU) of ``handle_many``, once the writer has taken all before."""
        while ingest.depth() or ingest.unlogged:  # noqa: ASYNC110 - ingest has no event for it
            await asyncio.sleep(0.01)
        t0, cpu0 = time.perf_counter(), time.process_time()
        await ingest.handle_many(deliveries)
        return time.perf_counter() - t0, time.process_time() - cpu0

    first = await timed(batch(tenth))
    steady = [await timed(batch(tenth)) for _ in range(batches)]
    seq = ingest.dtcs.seq
    toggles = [
        await timed(batch([AMBER if n % 2 == 0 else QUIET] * toggling + tenth[toggling:]))
        for n in range(batches)
    ]
    per_batch = (ingest.dtcs.seq - seq) / batches
    out: dict[str, float] = {}
    for i, clock in enumerate(("wall", "CPU")):
        calm = statistics.median(t[i] for t in steady)
        out[f"start-up {clock} ms"] = (first[i] - calm) * 1e3
        out[f"steady batch {clock} ms"] = calm * 1e3
        busy = statistics.median(t[i] for t in toggles)
        out[f"per change {clock} ms"] = (busy - calm) / per_batch * 1e3
    out["changes per batch"] = per_batch
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await meta.close()
    return out


def run_worker(src: Path, url: str, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, __file__, "--worker", url]
        + [f"--{k}={getattr(args, k)}" for k in ("machines", "toggling", "batches")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode:
        raise SystemExit(f"worker of {src} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="src directory of the code before")
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--toggling", type=int, default=200, help="machines whose DTC toggles")
    parser.add_argument("--batches", type=int, default=5, help="steady and toggling batches")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--metadata", action="append", choices=["sqlite", "postgres"], help="default both"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(
            json.dumps(
                asyncio.run(_worker(args.worker, args.machines, args.toggling, args.batches))
            )
        )
        return

    sys.path.insert(0, str(ROOT))
    from tests.servers.postgres import start_postgres

    trees = [("this", ROOT / "src")]
    if args.base:
        trees.insert(0, ("base", args.base.resolve()))
    backends = args.metadata or ["sqlite", "postgres"]
    print(
        f"bench_dtc: {args.machines} machines ({args.toggling} toggling), {args.batches} batches, "
        f"{args.rounds} rounds; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dtc-") as tmp, ExitStack() as stack:
        urls: dict[str, str] = {}
        if "postgres" in backends:
            pg = start_postgres(fsync=False)
            stack.callback(pg.stop, remove=True)
            urls["postgres"] = pg.url()
        for round_ in range(args.rounds):
            for backend in backends:
                for name, src in trees:
                    url = urls.get(backend) or f"sqlite:///{tmp}/{uuid.uuid4().hex}.db"
                    results.setdefault((backend, name), []).append(run_worker(src, url, args))
            print(f"  round {round_ + 1} done (load {os.getloadavg()[0]:.1f})", flush=True)
    print()
    print("| metadata | what | " + " | ".join(n for n, _ in trees) + " | base/this |")
    print("| --- | --- |" + " --- |" * (len(trees) + 1))
    for backend in backends:
        for what in results[backend, "this"][0]:
            cells = []
            for name, _ in trees:
                figures = [r[what] for r in results[backend, name]]
                cells.append(f"{min(figures):,.2f}–{max(figures):,.2f}")
            ratio = ""
            if args.base and "changes" not in what:
                pairs = zip(results[backend, "base"], results[backend, "this"], strict=True)
                ratio = ", ".join(f"{b[what] / t[what]:.1f}x" for b, t in pairs if t[what] > 0)
            print(f"| {backend} | {what} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
