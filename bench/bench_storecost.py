"""The ingest role's per-record costs outside decoding: this checkout against another tree.

    python bench/bench_storecost.py --base /work/main/src [--records 40000] [--rounds 2] [--batch 2500]
        [--phase codec|clickhouse|kafka|ingest|ranges ...] [--no-linger] [--widths N,N,...]

One run starts ClickHouse (Debian's server), a Tansu broker (Kafka) and PostgreSQL
the way the tests do (``tests/servers``: free loopback ports, temporary
directories, removed at the end, also on Ctrl-C), then for each tree (``--base
DIR``, a ``src`` directory of the code before, and this checkout's ``src``),
alternating ``--rounds`` times, a worker process that measures, with the tree
under test first on ``sys.path``, the process CPU (all threads) per record of:

* ``envelope encode`` / ``envelope decode``: :func:`livedata.model.encode_records` /
  :func:`~livedata.model.decode_records` over batches of 500 records (what the Kafka
  producer in ingest and the consumers in distribute and alerts pay per record);
* ``clickhouse write``: :meth:`ClickHouseStore.write_normalised` (as ingest writes; ``write``
  in a tree without it) in batches of ``--batch`` (2,500) records
  (half ``vehicle_can`` records of 8 values, 2 of them strings; half
  ``client_raw_data`` of 15 values, 12 floats and 3 ints; ``--widths 15,30,50``: records
  of 15, 30 and 50 values in turn, N - 4 floats, 3 ints and a string each), a database
  per worker;
  ``clickhouse server write``: the ``clickhouse-server`` process's CPU (``/proc``) over
  those writes and the merges after them (until a second passes with under 20 ms of
  server CPU, at most 30 s), less its idle CPU of as long; ``clickhouse merged
  rows/record`` and ``bytes/record``: the server's ``MergedRows`` and
  ``MergedUncompressedBytes`` (``system.events``) over the same time, per record (shown
  in the µs column); ``clickhouse 2-min query``:
  wall time of the live page's query (:meth:`ClickHouseStore.query`, the 15 fields of one
  machine's newest 2 minutes), median of 50, after the merges above;
* ``kafka append``: :meth:`KafkaLog.append` of 500-record batches, one at a time
  (ingest's appender), and ``kafka consume``: one consumer of a new group reading them
  all back; ``kafka append (10)``: batches of 10 records, to show the fixed cost per
  append (CPU and wall time per call);
* ``ingest (ClickHouse + Kafka)``: the real :class:`~livedata.pipeline.ingest.Ingest` with
  its default batching (ClickHouse's 500 ms, the log's ``batch_ms``) between a list of
  deliveries and ClickHouse + Kafka: ``client_raw_data`` messages of 500 machines (15
  values each, like a decoded CAN batch) at ``--rate`` (10,000) records/s in ``--tick-ms``
  (2) ticks
  for ``--seconds`` (5); process CPU per record until all is stored and in the log (no
  MQTT, no CAN decoding: what the store, the log and ingest's own work cost);
  ``--no-linger`` also runs this tree with the Kafka URL's ``linger_ms=0``;
* ``decode ranges``: :meth:`FrameKeeper.write_ranges` for 5,000 machines whose ranges
  all moved (what ingest does every 10 s in a fleet of 5,000), on PostgreSQL metadata,
  per machine; its cost per record is this divided by the records of 10 s.

The machine is shared and noisy: compare the two trees' figures of the same round,
and read ratios (printed: base / this, > 1 is cheaper now).  Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def _records(count: int, machines: int = 500, widths: str = "") -> list[Any]:
    """Half ``vehicle_can`` records of 8 values, half ``client_raw_data`` of 15; with
    ``widths`` (``N,N,...``) records of those numbers of values in turn instead, each of its
    own message type (``wN``: N - 4 floats, 3 ints, 1 string)."""
    from livedata.model import Kind, Record

    can = {f"sig_{n}": float(n) * 1.25 + 0.1 for n in range(12)}
    can |= {f"cnt_{n}": n * 1000 + 7 for n in range(3)}
    raw = {f"app_{n}": float(n) / 3 for n in range(6)} | {"state": "RUNNING", "gps": "N48.1"}
    shapes = [("vehicle_can", raw), ("client_raw_data", can)]
    if widths:
        shapes = [
            (
                f"w{width}",
                {f"sig_{n}": float(n) * 1.25 + 0.1 for n in range(width - 4)}
                | {f"cnt_{n}": n * 1000 + 7 for n in range(3)}
                | {"state": "RUNNING"},
            )
            for width in map(int, widths.split(","))
        ]
    out = []
    ts = 1_700_000_000_000
    for n in range(count):
        if n % machines == 0:
            ts += 1000
        kind, values = shapes[n % len(shapes)]
        out.append(Record("demo", f"m{n % machines}", kind, ts, Kind.REALTIME, dict(values)))
    return out


def _cpu() -> float:
    return time.process_time()


def _server_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid`` so far, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _ingest_phase(
    urls: dict[str, str], rate: int, seconds: float, tick_s: float
) -> dict[str, Any]:
    """The real Ingest between a list of deliveries and ClickHouse + Kafka: ``client_raw_data``
    messages of 500 machines (15 values each, as a decoded CAN batch) at ``rate``/s in ``tick_s``
    ticks; process CPU per record (ingest, its writer, the ClickHouse threads, aiokafka)
    until everything is stored and in the log."""
    from livedata.bus.kafka import KafkaLog
    from livedata.catalog import Catalog
    from livedata.devices.base import Delivery
    from livedata.metadata import Metadata
    from livedata.model import DeviceMessage, MsgType
    from livedata.pipeline.ingest import Ingest
    from livedata.store.clickhouse import ClickHouseStore

    machines = 500
    with tempfile.TemporaryDirectory(prefix="bench-storecost-meta-") as tmp:
        meta = Metadata(f"sqlite:///{tmp}/meta.db")
        await meta.start()
        await meta.ensure_org("demo", "Demo")
        for n in range(machines):
            await meta.upsert_machine("demo", f"m{n}", f"Machine {n}", "WL")
        store = ClickHouseStore(urls["clickhouse"] + "ingest" + uuid.uuid4().hex[:8])
        topic = f"ingest{uuid.uuid4().hex[:8]}"
        log = KafkaLog(f"{urls['kafka']}/{topic}?partitions=8&replication=1{urls.get('query', '')}")
        await store.start()
        await log.start()
        ingest = Ingest(store, log, Catalog(meta))
        task = asyncio.create_task(ingest.run())
        values = {f"sig_{n}": float(n) * 1.25 + 0.1 for n in range(12)}
        values |= {f"cnt_{n}": n * 1000 + 7 for n in range(3)}
        per_tick = max(1, round(rate * tick_s))
        ticks = int(seconds / tick_s)
        loop = asyncio.get_running_loop()
        ts = int(time.time() * 1000)
        sent = 0

        async def tick(n: int) -> None:
            nonlocal sent
            batch = [
                Delivery(
                    DeviceMessage(
                        "demo",
                        f"m{(sent + i) % machines}",
                        MsgType.CLIENT_RAW_DATA,
                        ts + (sent + i) // machines,
                        values=dict(values),
                    )
                )
                for i in range(per_tick)
            ]
            sent += per_tick
            await ingest.handle_many(batch)

        for n in range(-(-machines // per_tick)):  # every machine once: its fields noted
            await tick(n)
        while ingest.depth() or ingest.unlogged:  # noqa: ASYNC110 - counters both trees have
            await asyncio.sleep(0.01)
        cpu, wall = _cpu(), time.perf_counter()
        start = sent
        next_at = loop.time()
        for n in range(ticks):
            await tick(n)
            next_at += tick_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        while ingest.depth() or ingest.oldest_unstored() is not None or ingest.unlogged:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        records = sent - start
        result = {
            "ingest (ClickHouse + Kafka) per record": (_cpu() - cpu) / records,
            f"ingest records/s (offered {rate})": records / (time.perf_counter() - wall),
        }
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await log.close()
        await store.close()
        await meta.close()
    return result


async def _worker(
    urls: dict[str, str],
    count: int,
    phases: list[str],
    rate: int,
    seconds: float,
    tick: float,
    batch: int,
    widths: str = "",
) -> dict[str, Any]:
    from livedata.model import decode_records, encode_records

    records = _records(count, widths=widths)
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
        out["envelope bytes/record"] = sum(map(len, encoded)) / count * 1e-6  # shown "µs"

    if "clickhouse" in phases:
        from livedata.store.clickhouse import ClickHouseStore

        store = ClickHouseStore(urls["clickhouse"] + "bench" + uuid.uuid4().hex[:8])
        await store.start()
        await store.write(records[:100])
        pid = int(urls["clickhouse_pid"])
        idle = _server_cpu(pid)
        await asyncio.sleep(1.0)
        idle_rate = _server_cpu(pid) - idle
        server_url = urls["clickhouse"] + "default"
        merged = _merged(server_url)
        write = getattr(store, "write_normalised", store.write)  # as ingest writes
        cpu, server, wall = _cpu(), _server_cpu(pid), time.perf_counter()
        for i in range(0, count, batch):
            await write(records[i : i + batch])
        out["clickhouse write"] = (_cpu() - cpu) / count
        settled = _server_cpu(pid)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            now = _server_cpu(pid)
            if now - settled < 0.02:
                break
            settled = now
        spent = settled - server - idle_rate * (time.perf_counter() - wall)
        out["clickhouse server write"] = spent / count
        (rows_after, bytes_after), (rows_before, bytes_before) = _merged(server_url), merged
        # counts, shown in the "µs" column
        out["clickhouse merged rows/record"] = (rows_after - rows_before) / count * 1e-6
        out["clickhouse merged bytes/record"] = (bytes_after - bytes_before) / count * 1e-6
        fields = list(records[1].values)
        last = records[-1].ts
        latencies = []
        for _ in range(50):
            started = time.perf_counter()
            got = await store.query("demo", "m1", records[1].msg_type, fields, last - 120_000, last)
            latencies.append(time.perf_counter() - started)
        assert got[fields[0]], "the 2-minute query found nothing"
        out["clickhouse 2-min query wall"] = sorted(latencies)[len(latencies) // 2]
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

    if "ingest" in phases:
        out.update(await _ingest_phase(urls, rate, seconds, tick))

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


def _merged(url: str) -> tuple[int, int]:
    """The server's ``MergedRows`` and ``MergedUncompressedBytes`` so far (``system.events``)."""
    from clickhouse_driver import Client

    client = Client.from_url(url)
    try:
        found = dict(
            client.execute(
                "SELECT event, value FROM system.events"
                " WHERE event IN ('MergedRows', 'MergedUncompressedBytes')"
            )
        )
    finally:
        client.disconnect()
    return int(found.get("MergedRows", 0)), int(found.get("MergedUncompressedBytes", 0))


def run_worker(
    src: Path, urls: dict[str, str], args: argparse.Namespace, query: str = ""
) -> dict[str, Any]:
    urls = {**urls, "query": query}
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(urls)]
        + [
            f"--{k.replace('_', '-')}={getattr(args, k)}"
            for k in ("records", "rate", "seconds", "tick_ms", "batch", "widths")
        ]
        + [f"--phase={p}" for p in args.phase or PHASES],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"worker of {src} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


PHASES = ["codec", "clickhouse", "kafka", "ingest", "ranges"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="src directory of the code before")
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument(
        "--batch", type=int, default=2_500, help="clickhouse phase: records per write"
    )
    parser.add_argument(
        "--widths",
        default="",
        help="records of these numbers of values in turn (N,N,...; codec and clickhouse phases)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--no-linger",
        action="store_true",
        help="also run this tree with the Kafka URL's linger_ms=0 (ingest phase)",
    )
    parser.add_argument("--rate", type=int, default=10_000, help="ingest phase: records/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="ingest phase: seconds")
    parser.add_argument(
        "--tick-ms", type=float, default=2.0, help="ingest phase: messages handed in every … ms"
    )
    parser.add_argument("--phase", action="append", choices=PHASES, help="only these (repeat)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    phases = args.phase or PHASES
    if args.worker:
        urls = json.loads(args.worker)
        result = _worker(
            urls,
            args.records,
            phases,
            args.rate,
            args.seconds,
            args.tick_ms / 1000,
            args.batch,
            args.widths,
        )
        print(json.dumps(asyncio.run(result)))
        return

    sys.path.insert(0, str(ROOT))
    from tests.servers.clickhouse import start_clickhouse
    from tests.servers.kafka import start_kafka
    from tests.servers.postgres import start_postgres

    trees = [("this", ROOT / "src", "")]
    if args.no_linger:
        trees.append(("this, linger_ms=0", ROOT / "src", "&linger_ms=0"))
    if args.base:
        trees.insert(0, ("base", args.base.resolve(), ""))
    print(
        f"bench_storecost: {args.records} records, phases {' '.join(phases)}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in trees}
    with tempfile.TemporaryDirectory(prefix="bench-storecost-") as tmp, ExitStack() as stack:
        urls: dict[str, str] = {}
        if "clickhouse" in phases or "ingest" in phases:
            ch = start_clickhouse(Path(tmp) / "clickhouse")
            stack.callback(ch.stop)
            urls["clickhouse"] = ch.url("")
            assert ch.process is not None
            urls["clickhouse_pid"] = str(ch.process.pid)
        if "kafka" in phases or "ingest" in phases:
            kafka = start_kafka(Path(tmp))
            stack.callback(kafka.stop)
            urls["kafka"] = kafka.url
        if "ranges" in phases:
            pg = start_postgres(fsync=False)
            stack.callback(pg.stop, remove=True)
            urls["metadata"] = pg.url()
        for round_ in range(args.rounds):
            for name, src, query in trees:
                results[name].append(run_worker(src, urls, args, query))
                print(
                    f"  round {round_ + 1} {name} done (load {os.getloadavg()[0]:.1f})", flush=True
                )
    print()
    names = list(results["this"][0])
    print(
        "| what | "
        + " | ".join(name for name, _, _ in trees)
        + " | base/this (CPU), this/base (/s) |"
    )
    print("| --- |" + " --- |" * (len(trees) + 1))
    for what in names:
        cells = []
        rate = "/s" in what  # higher is better, not scaled
        scale, unit = (1.0, "") if rate else (1e6, " µs")
        for name, _, _ in trees:
            figures = [r[what] * scale for r in results[name] if what in r]
            cells.append(f"{min(figures):,.1f}–{max(figures):,.1f}{unit}" if figures else "-")
        ratio = ""
        if args.base:
            ratios = [
                (t[what] / b[what] if rate else b[what] / t[what])
                for b, t in zip(results["base"], results["this"], strict=True)
                if what in b and t[what]
            ]
            ratio = ", ".join(f"{r:.1f}x" for r in ratios)
        print(f"| {what} | " + " | ".join(cells) + f" | {ratio} |")


if __name__ == "__main__":
    main()
