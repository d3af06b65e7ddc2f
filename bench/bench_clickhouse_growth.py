"""ClickHouse's CPU over a long steady write load: does it grow, and which work grows.

    flock /tmp/heavy.lock python bench/bench_clickhouse_growth.py [--minutes 13]
        [--machines 5000] [--writers 2] [--src DIR] [--base DIR] [--no-frames]

Starts a private ``clickhouse-server`` (Debian's 18.16; ``tests/servers``: free loopback
ports, a temporary directory, removed at the end, also on Ctrl-C) with ``query_log`` and
``part_log`` on, then ``--writers`` worker processes, each a :class:`ClickHouseStore` (as
ingest processes are), with ``DIR`` (a ``src`` directory, default this checkout's) first on
``sys.path``.  ``--base DIR`` runs the same load on a second server of its own, with
another tree's ``src`` (the code before), at the same time: both see the same machine
load, and their CPU per minute is printed as ratios.  Every second each machine of
``--machines`` makes one ``vehicle_can`` record (8 values, 2 strings) and one
``client_raw_data`` (15 values), timestamped with the wall clock, and each record goes
to one writer, changing from second to second as an MQTT share group spreads messages;
each writer writes its share of a second in one ``write`` once the second is over
(ingest's 1 s batch), writer ``k`` of ``n`` ``k/n`` s later (ingest processes flush at
moments of their own; writes at the same instant both settled each cohort, neither
seeing the other's claim yet), and beside it the ``vehicle_can`` messages' raw frames (a
150-byte blob each, ``write_frames``; not with ``--no-frames``).  So the server gets
the demo's 10,000 records/s at 5,000 machines, in real time: a stream settles its
minutes every :data:`SETTLE_SPAN` (10) minutes, so runs shorter than about 12 minutes
miss the steady state.

Prints per minute of the run: the server's CPU (``/proc``, % of one core), its active
parts (records, rollups, rollup_open, streams), and from ``system.query_log`` per query
kind (records and frames inserts, the settle SELECT on ``rollup_open``, the claim check
of a settling write, the roll-up ``INSERT ... SELECT``, the ``rollup_open`` inserts) the
queries, their CPU (user + system, ms per second of the run) and rows read per second;
from ``system.part_log`` the merges and rows merged per table.  Then the writers' write
time (p50, max) and lag behind the clock.  Asserts nothing.
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_LOGS = """<query_log><database>system</database><table>query_log</table>
<flush_interval_milliseconds>2000</flush_interval_milliseconds></query_log>
<part_log><database>system</database><table>part_log</table>
<flush_interval_milliseconds>2000</flush_interval_milliseconds></part_log>
</yandex>"""

KINDS = """multiIf(
    query LIKE 'INSERT INTO %.rollup_open %', 'rollup_open insert',
    query LIKE 'INSERT INTO %.rollups %', 'roll-up insert',
    query LIKE 'INSERT INTO %.records %', 'records insert',
    query LIKE 'INSERT INTO %.frames %', 'frames insert',
    query LIKE 'SELECT tenant, chassis, msg_type, maxIf(open_minute%IN (SELECT%', 'claim check',
    query LIKE 'SELECT tenant, chassis, msg_type, maxIf(open_minute%', 'settle select',
    query LIKE '%system.%', 'bench',
    'other')"""
"""The query kinds of the store's writes, from the query's text."""

_CPU_US = (
    "(arraySum(arrayFilter((v, n) -> n IN ('UserTimeMicroseconds', 'SystemTimeMicroseconds'),"
    " ProfileEvents.Values, ProfileEvents.Names)))"
)


def _server_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid`` so far, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the writers ---------------------------------------------------------------------


def _shapes() -> list[tuple[str, dict[str, Any]]]:
    """The demo's two message types as bench_storecost makes them."""
    can = {f"sig_{n}": float(n) * 1.25 + 0.1 for n in range(12)}
    can |= {f"cnt_{n}": n * 1000 + 7 for n in range(3)}
    raw = {f"app_{n}": float(n) / 3 for n in range(6)} | {"state": "RUNNING", "gps": "N48.1"}
    return [("vehicle_can", raw), ("client_raw_data", can)]


def _writer_of(machine: int, second: int, writers: int) -> int:
    """The writer that gets ``machine``'s messages of ``second`` (a share group's spread)."""
    return ((machine * 2_654_435_761 + second * 40_503) >> 7) % writers


_NOISE = os.urandom(1 << 16)


def _blob_data(machine: int, second: int) -> bytes:
    """About what a deflated blob of 12 frames weighs (150 bytes), incompressible."""
    at = (machine * 151 + second * 7919) % (len(_NOISE) - 150)
    return _NOISE[at : at + 150]


async def _worker(args: argparse.Namespace) -> None:
    from livedata.model import Kind, Record
    from livedata.store.clickhouse import ClickHouseStore
    from livedata.store.frames import FrameBlob

    store = ClickHouseStore(args.url)
    await store.start()
    shapes = _shapes()
    frames = not args.no_frames
    durations: list[float] = []
    lags: list[float] = []
    cpu0 = time.process_time()
    first = int(args.start)
    for second in range(first, first + int(args.minutes * 60)):
        delay = second + 1 + args.worker / args.writers - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        records = []
        blobs = []
        for machine in range(args.machines):
            if _writer_of(machine, second, args.writers) != args.worker:
                continue
            ts = second * 1000 + machine * 197 % 1000
            chassis = f"m{machine}"
            for kind, values in shapes:
                values = dict(values)
                values[next(iter(values))] = float(second % 977 + machine)
                records.append(Record("demo", chassis, kind, ts, Kind.REALTIME, values))
            if frames:  # the vehicle_can message's raw frames (ingest keeps them too)
                blobs.append(FrameBlob("demo", chassis, ts, 12, _blob_data(machine, second)))
        began = time.time()
        if blobs:  # FrameKeeper writes the second's blobs beside the records' write
            await asyncio.gather(store.write(records), store.write_frames(blobs))
        else:
            await store.write(records)
        ended = time.time()
        durations.append(ended - began)
        lags.append(ended - (second + 1))
    cpu = time.process_time() - cpu0
    await store.close()
    durations.sort()
    print(
        json.dumps(
            {
                "writes": len(durations),
                "p50_s": durations[len(durations) // 2],
                "max_s": durations[-1],
                "max_lag_s": max(lags),
                "cpu_s": cpu,
            }
        )
    )


# -- the run ---------------------------------------------------------------------------


def _report(
    client: Any, start: float, cpu_by_minute: list[tuple[int, float, dict[str, int]]]
) -> None:
    client.execute("SYSTEM FLUSH LOGS")
    since = int(start)
    queries = client.execute(
        f"SELECT intDiv(toUInt32(event_time) - {since}, 60) AS minute, {KINDS} AS kind,"
        f" count(), sum({_CPU_US}) / 1000, sum(read_rows), sum(query_duration_ms)"
        f" FROM system.query_log WHERE type = 2 AND toUInt32(event_time) >= {since}"
        " GROUP BY minute, kind ORDER BY minute, kind"
    )
    try:
        merges = client.execute(
            f"SELECT intDiv(toUInt32(event_time) - {since}, 60) AS minute, table, count(),"
            f" sum(rows), sum(duration_ms) FROM system.part_log"
            f" WHERE event_type = 2 AND toUInt32(event_time) >= {since}"
            " GROUP BY minute, table ORDER BY minute, table"
        )
    except Exception as exc:  # no merge yet: part_log not created
        print("part_log:", str(exc).splitlines()[0])
        merges = []
    by_minute: dict[int, dict[str, tuple[int, float, int, int]]] = {}
    for minute, kind, count, cpu_ms, rows, dur in queries:
        by_minute.setdefault(minute, {})[kind] = (count, cpu_ms, rows, dur)
    merged: dict[int, dict[str, tuple[int, int, int]]] = {}
    for minute, table, count, rows, dur in merges:
        merged.setdefault(minute, {})[table] = (count, rows, dur)
    kinds = [
        "records insert",
        "frames insert",
        "settle select",
        "claim check",
        "roll-up insert",
        "rollup_open insert",
        "other",
    ]
    print()
    print("per minute: server CPU % of a core; per query kind: queries, CPU ms/s, rows read/s")
    print("minute  server%  parts(rec/rup/open/str)  " + "  ".join(f"{k:>26}" for k in kinds))
    for minute, cpu_pct, parts in cpu_by_minute:
        cells = []
        for kind in kinds:
            count, cpu_ms, rows, _dur = by_minute.get(minute, {}).get(kind, (0, 0.0, 0, 0))
            cells.append(f"{count:>5} {cpu_ms / 60:>8.1f} {rows / 60:>10.0f}")
        part_cells = "/".join(
            str(parts.get(t, 0)) for t in ("records", "rollups", "rollup_open", "streams")
        )
        print(
            f"{minute:>6}  {cpu_pct:>7.1f}  {part_cells:>23}  "
            + "  ".join(f"{c:>26}" for c in cells)
        )
    print()
    print("merges per minute: table merges rows-merged duration-ms")
    for minute in sorted(merged):
        print(
            f"{minute:>6}  "
            + "  ".join(
                f"{table}: {count} {rows} {dur}"
                for table, (count, rows, dur) in sorted(merged[minute].items())
            )
        )


def _start(label: str, src: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """A private server and its writers running the tree ``src``."""
    import tests.servers.clickhouse as servers

    server = servers.start_clickhouse(directory)
    assert server.process is not None
    url = server.url("growth")
    env = {**os.environ, "PYTHONPATH": f"{src}:{ROOT}"}
    # the schema first, once, so the writers do not race to create it
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio; from livedata.store.clickhouse import ClickHouseStore as S;"
            f"asyncio.run(S({url!r}).start())",
        ],
        env=env,
        check=True,
    )
    return {"label": label, "server": server, "url": url, "env": env, "workers": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=13.0)
    parser.add_argument("--machines", type=int, default=5000)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--src", default=str(ROOT / "src"), help="the tree's src directory")
    parser.add_argument(
        "--base", default="", help="another tree's src, run at the same time on its own server"
    )
    parser.add_argument("--no-frames", action="store_true", help="write no raw frame blobs")
    parser.add_argument("--worker", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker >= 0:
        asyncio.run(_worker(args))
        return

    from clickhouse_driver import Client

    import tests.servers.clickhouse as servers

    servers._CONFIG = servers._CONFIG.replace("</yandex>", _LOGS)
    servers._USERS = servers._USERS.replace(
        "<poll_interval>", "<log_queries>1</log_queries><poll_interval>"
    )
    trees = [("this", args.src)] + ([("base", args.base)] if args.base else [])
    print(f"trees {trees}; load {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ch-growth-") as directory:
        runs: list[dict[str, Any]] = []
        try:
            for label, src in trees:
                runs.append(_start(label, src, args, Path(directory) / label))
            start = float(int(time.time()) + 2)
            for run in runs:
                for worker in range(args.writers):
                    command = [
                        sys.executable, __file__, "--worker", str(worker), "--url", run["url"],
                        "--start", str(start), "--minutes", str(args.minutes),
                        "--machines", str(args.machines), "--writers", str(args.writers),
                    ] + (["--no-frames"] if args.no_frames else [])  # fmt: skip
                    run["workers"].append(
                        subprocess.Popen(command, env=run["env"], stdout=subprocess.PIPE)
                    )
                run["client"] = Client("127.0.0.1", port=run["server"].tcp_port)
                run["pid"] = run["server"].process.pid
                run["by_minute"] = []
            time.sleep(max(0.0, start - time.time()))
            last = {run["label"]: _server_cpu(run["pid"]) for run in runs}
            for minute in range(int(args.minutes)):
                samples: dict[str, list[float]] = {run["label"]: [] for run in runs}
                for third in range(3):
                    time.sleep(max(0.0, start + minute * 60 + (third + 1) * 20 - time.time()))
                    for run in runs:
                        now = _server_cpu(run["pid"])
                        samples[run["label"]].append((now - last[run["label"]]) / 20 * 100)
                        last[run["label"]] = now
                line = [f"minute {minute}:"]
                for run in runs:
                    parts = dict(
                        run["client"].execute(
                            "SELECT table, count() FROM system.parts"
                            " WHERE active AND database = 'growth' GROUP BY table"
                        )
                    )
                    cpu = samples[run["label"]]
                    run["by_minute"].append((minute, sum(cpu) / 3, parts))
                    line.append(
                        f"{run['label']} {sum(cpu) / 3:.1f} % "
                        f"(20 s: {', '.join(f'{s:.0f}' for s in cpu)}),"
                    )
                line.append(f"load {os.getloadavg()[0]:.2f}")
                print(" ".join(line), flush=True)
            for run in runs:
                for process in run["workers"]:
                    out, _ = process.communicate(timeout=120)
                    print(f"{run['label']} writer:", out.decode().strip())
            for run in runs:
                print(f"\n== {run['label']}")
                _report(run["client"], start, run["by_minute"])
            if len(runs) == 2:
                this, base = (run["by_minute"] for run in runs)
                print("\nserver CPU per minute, base / this:")
                for (minute, cpu, _), (_, cpu_base, _) in zip(this, base, strict=True):
                    print(
                        f"{minute:>6}  {cpu_base:6.1f} / {cpu:6.1f} = {cpu_base / max(cpu, 0.1):.2f}"
                    )
        finally:
            for run in runs:
                for process in run["workers"]:
                    if process.poll() is None:
                        process.kill()
                        process.wait()
                run["server"].stop()


if __name__ == "__main__":
    main()
