"""The ingest role's per-record costs outside decoding: this checkout against another tree.

    python bench/bench_storecost.py --base /work/main/src [--records 40000] [--rounds 2]

One run starts ClickHouse (Debian's server), a Tansu broker (Kafka) and PostgreSQL
the way the tests do (``tests/servers``: free loopback ports, temporary
directories, removed at the end, also on Ctrl-C), then for each tree (``--base
DIR``, a ``src`` directory of the code before, and this checkout's ``src``),
alternating ``--rounds`` times, a worker process that measures, with the tree
under test first on ``sys.path``, the process CPU (all threads) per record of:

* ``envelope encode`` / ``envelope decode``: :func:`livedata.model.encode_records` /
  :func:`~livedata.model.decode_records` over batches of 500 records (what the Kafka
  producer in ingest and the consumers in distribute and alerts pay per record);
* ``clickhouse write``: :meth:`ClickHouseStore.write` in batches of 2,500 records
  (half ``vehicle_can`` records of 15 values, 12 floats and 3 ints; half
  ``client_raw_data`` of 8 values, 2 of them strings), a database per worker;
* ``kafka append``: :meth:`KafkaLog.append` of 500-record batches, one at a time
  (ingest's appender), and ``kafka consume``: one consumer of a new group reading them
  all back; ``kafka append (10)``: batches of 10 records, to show the fixed cost per
  append (CPU and wall time per call);
* ``decode ranges``: :meth:`FrameKeeper.write_ranges` for 5,000 machines whose ranges
  all moved (what ingest does every 10 s in a fleet of 5,000), on PostgreSQL metadata,
  per machine; its cost per record is this divided by the records of 10 s.

The machine is shared and noisy: compare the two trees' figures of the same round,
and read ratios (printed: base / this, > 1 is cheaper now).  Asserts nothing.
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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _records(count: int, machines: int = 500) -> list[Any]:
    from livedata.model import Kind, Record

    can = {f"sig_{n}": float(n) * 1.25 + 0.1 for n in range(12)}
    can |= {f"cnt_{n}": n * 1000 + 7 for n in range(3)}
    raw = {f"app_{n}": float(n) / 3 for n in range(6)} | {"state": "RUNNING", "gps": "N48.1"}
    out = []
    ts = 1_700_000_000_000
    for n in range(count):
        if n % machines == 0:
            ts += 1000
        kind = "vehicle_can" if n % 2 == 0 else "client_raw_data"
        out.append(
            Record("demo", f"m{n % machines}", kind, ts, Kind.REALTIME, dict(can if n % 2 else raw))
        )
    return out


def _cpu() -> float:
    return time.process_time()


async def _worker(urls: dict[str, str], count: int, phases: list[str]) -> dict[str, Any]:
    from livedata.model import decode_records, encode_records

    records = _records(count)
    out: dict[str, Any] = {}

    if "codec" in phases:
        batches = [records[i : i + 500] for i in range(0, len(records), 500)]
        cpu = _cpu()
        encoded = [encode_records(b) for b in batches]
        out["envelope encode"] = (_cpu() - cpu) / count
        cpu = _cpu()
        for data in encoded:
            decode_records(data)
        out["envelope decode"] = (_cpu() - cpu) / count
        out["envelope bytes"] = sum(map(len, encoded)) / count * 1e-6  # shown as µs: bytes

    if "clickhouse" in phases:
        from livedata.store.clickhouse import ClickHouseStore

        store = ClickHouseStore(urls["clickhouse"] + "bench" + uuid.uuid4().hex[:8])
        await store.start()
        await store.write(records[:100])
        cpu = _cpu()
        for i in range(0, count, 2500):
            await store.write(records[i : i + 2500])
        out["clickhouse write"] = (_cpu() - cpu) / count
        await store.close()

    if "kafka" in phases:
        from livedata.bus.kafka import KafkaLog

        topic = "bench" + uuid.uuid4().hex[:8]
        log = KafkaLog(f"{urls['kafka']}/{topic}?partitions=8&replication=1")
        await log.start()
        await log.append(records[:100])
        cpu = _cpu()
        for i in range(0, count, 500):
            await log.append(records[i : i + 500])
        out["kafka append"] = (_cpu() - cpu) / count
        small = min(2000, count)
        cpu, wall = _cpu(), time.perf_counter()
        for i in range(0, small, 10):
            await log.append(records[i : i + 10])
        calls = small // 10
        out["kafka append (10) per call"] = (_cpu() - cpu) / calls
        out["kafka append (10) wall per call"] = (time.perf_counter() - wall) / calls
        total = 100 + count + small
        seen = 0
        cpu = _cpu()
        async for batch in log.consume("bench"):
            seen += len(batch)
            if seen >= total:
                break
        out["kafka consume"] = (_cpu() - cpu) / seen
        await log.close()

    if "ranges" in phases:
        from livedata.metadata import Metadata
        from livedata.model import Kind
        from livedata.pipeline.rawframes import FrameKeeper
        from livedata.store.memory import MemoryStore

        meta = Metadata(urls["metadata"])
        await meta.start()
        org = "o" + uuid.uuid4().hex[:8]
        await meta.ensure_org(org, "Bench")
        keeper = FrameKeeper(MemoryStore("memory://"), meta)
        machines = 5000
        for n in range(machines):
            keeper.ranges.note(org, f"m{n}", Kind.REALTIME, None, "none.dbc", 1000)
        await keeper.write_ranges()  # the rows
        rounds = 3
        cpu = _cpu()
        for r in range(rounds):
            for n in range(machines):
                keeper.ranges.note(org, f"m{n}", Kind.REALTIME, None, "none.dbc", 2000 + r)
            await keeper.write_ranges()
        out["decode ranges per machine"] = (_cpu() - cpu) / (machines * rounds)
        await meta.close()
    return out


def run_worker(src: Path, urls: dict[str, str], count: int, phases: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(urls), f"--records={count}"]
        + [f"--phase={p}" for p in phases],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


PHASES = ["codec", "clickhouse", "kafka", "ranges"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="src directory of the code before")
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--phase", action="append", choices=PHASES, help="only these (repeat)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    phases = args.phase or PHASES
    if args.worker:
        print(json.dumps(asyncio.run(_worker(json.loads(args.worker), args.records, phases))))
        return

    sys.path.insert(0, str(ROOT))
    from tests.servers.clickhouse import start_clickhouse
    from tests.servers.kafka import start_kafka
    from tests.servers.postgres import start_postgres

    trees = [("this", ROOT / "src")]
    if args.base:
        trees.insert(0, ("base", args.base.resolve()))
    print(
        f"bench_storecost: {args.records} records, phases {' '.join(phases)}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory(prefix="bench-storecost-") as tmp, ExitStack() as stack:
        urls: dict[str, str] = {}
        if "clickhouse" in phases:
            ch = start_clickhouse(Path(tmp) / "clickhouse")
            stack.callback(ch.stop)
            urls["clickhouse"] = ch.url("")
        if "kafka" in phases:
            kafka = start_kafka(Path(tmp))
            stack.callback(kafka.stop)
            urls["kafka"] = kafka.url
        if "ranges" in phases:
            pg = start_postgres(fsync=False)
            stack.callback(pg.stop, remove=True)
            urls["metadata"] = pg.url()
        for round_ in range(args.rounds):
            for name, src in trees:
                results[name].append(run_worker(src, urls, args.records, phases))
                print(
                    f"  round {round_ + 1} {name} done (load {os.getloadavg()[0]:.1f})", flush=True
                )
    print()
    names = list(results["this"][0])
    print("| what | " + " | ".join(name for name, _ in trees) + " | base/this |")
    print("| --- |" + " --- |" * (len(trees) + 1))
    for what in names:
        cells = []
        for name, _ in trees:
            figures = [r[what] * 1e6 for r in results[name] if what in r]
            cells.append(
                f"{min(figures):.1f}–{max(figures):.1f} µs" if figures else "-"
            )
        ratio = ""
        if args.base:
            ratios = [
                b[what] / t[what]
                for b, t in zip(results["base"], results["this"], strict=True)
                if what in b and t[what]
            ]
            ratio = ", ".join(f"{r:.1f}x" for r in ratios)
        print(f"| {what} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
