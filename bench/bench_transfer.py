"""Import and export benchmark: CAN log import into SQLite, history export to CSV/Parquet.

    python bench/bench_transfer.py [--frames 1000000] [--hours 24]

Import: a candump log of the simulated wheel loader (its 11 frames per second sent
ten times, a 100 ms cycle) with ``--frames`` frames is written first (not timed).
Then, in this one process, each in turn:

* baseline ``python-can reader``: iterating ``can.LogReader`` over the file (no decoding);
* baseline ``cantools decode_message``: decoding every frame once with cantools,
  frames already in memory;
* ``candump parser``: :func:`livedata.pipeline.backfill.candump_entries` alone;
* ``read + decode``: :class:`~livedata.pipeline.backfill.LogImport` without a store;
* ``import into SQLite``: :func:`~livedata.pipeline.backfill.import_log` into a fresh
  SQLite store (one core for reading/decoding, SQLite's writes on its own thread),
  and the peak RSS growth over it.

Export: ``--hours`` of 10 float fields at 1 Hz are written to SQLite (not timed);
then a quarter of the range and the whole range are exported as CSV and as Parquet with
:class:`~livedata.pipeline.export.Export` (the code behind the HTTP and CLI export),
each in a fresh process sampling its RSS every 50 ms; baseline: one ``Store.query``
of the whole range (what an export that holds everything in memory needs first).
Prints rows/s and the RSS growth (peak over the start) of each.  Runs in about a
minute for the defaults and removes its temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can
import psutil

from livedata.decode.can import CanDecoder, builtin_dbc
from livedata.model import Kind, Record
from livedata.pipeline.backfill import LogFile, LogImport, candump_entries, import_log
from livedata.pipeline.export import Export
from livedata.sim.machine import Machine
from livedata.store import open_store

START_S = 1_768_471_200


def write_log(path: Path, frames: int) -> None:
    decoder = CanDecoder.from_dbc(builtin_dbc())
    machine = Machine("L1", decoder, 1)
    written = second = 0
    with path.open("w") as out:
        while written < frames:
            sent, _ = machine.step(0)
            for rep in range(10):
                for i, f in enumerate(sent):
                    ts = START_S + second + rep / 10 + i / 1000
                    ident = (
                        f"{f.arbitration_id:08X}" if f.is_extended else f"{f.arbitration_id:03X}"
                    )
                    out.write(f"({ts:.6f}) can0 {ident}#{f.data.hex().upper()}\n")
                    written += 1
            second += 1


class RssPeak:
    """The peak resident memory above the level at start, sampled every 50 ms."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.base = self.process.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        return (self.peak - self.base) / 2**20


def timed(label: str, count: int, unit: str, work: Callable[[], Any]) -> float:
    gc.collect()
    started = time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    rate = count / elapsed
    print(f"  {label:<34} {elapsed:7.2f} s  {rate:>12,.0f} {unit}/s")
    return rate


async def bench_import(tmp: Path, frames: int) -> None:
    log = tmp / "run.log"
    write_log(log, frames)
    decoder = CanDecoder.from_dbc(builtin_dbc())
    print(f"import: {frames:,} frames, candump log of {log.stat().st_size / 2**20:.0f} MiB")

    def python_can() -> None:
        with can.LogReader(str(log)) as reader:
            for _ in reader:
                pass

    base = timed("baseline python-can reader", frames, "frames", python_can)
    sample = []
    with log.open() as f:
        for entry in candump_entries(f):
            sample.append(entry)
    messages = {m.frame_id: m for m in decoder.database.messages}

    def cantools_decode() -> None:  # the DM1 (no DBC message: decoded by livedata) is skipped
        for _, ident, _, data in sample:
            message = messages.get(ident)
            if message is not None:
                message.decode(data)

    floor = timed("baseline cantools decode_message", frames, "frames", cantools_decode)
    sample.clear()

    def parse() -> None:
        with log.open() as f:
            for _ in candump_entries(f):
                pass

    timed("candump parser", frames, "frames", parse)

    def read_decode() -> None:
        job = LogImport(LogFile(log), decoder, "bench", "L1")
        while job.next_batch() is not None:
            pass

    timed("read + decode (no store)", frames, "frames", read_decode)
    store = open_store(f"sqlite:///{tmp}/telemetry.db")
    await store.start()
    rss = RssPeak()
    started = time.perf_counter()
    summary = await import_log(store, decoder, "bench", "L1", log)
    elapsed = time.perf_counter() - started
    grown = rss.stop()
    await store.close()
    rate = summary.frames / elapsed
    print(
        f"  {'import into SQLite':<34} {elapsed:7.2f} s  {rate:>12,.0f} frames/s  "
        f"({summary.records:,} rows, {summary.points:,} values; RSS +{grown:.0f} MiB)"
    )
    print(
        f"  ratios: import / python-can reader alone = {rate / base:.2f}x, "
        f"import / cantools decode_message alone = {rate / floor:.2f}x"
    )


async def bench_export(tmp: Path, hours: float) -> None:
    fields = [f"signal_{i}" for i in range(10)]
    seconds = int(hours * 3600)
    store = open_store(f"sqlite:///{tmp}/export.db")
    await store.start()
    t0 = START_S * 1000
    batch: list[Record] = []
    for s in range(seconds):
        values = {name: s * 0.001 + i / 7 for i, name in enumerate(fields)}
        batch.append(Record("bench", "L1", "client_raw_data", t0 + s * 1000, Kind.BACKFILL, values))
        if len(batch) == 5000:
            await store.write(batch)
            batch = []
    await store.write(batch)
    await store.close()
    print(f"export: {hours:g} h x {len(fields)} fields at 1 Hz = {seconds * len(fields):,} values")
    print(
        "  (each in a fresh process; RSS: peak growth after start-up, SQLite's page cache of up to"
        " 16 MiB and pyarrow's pool included; Python heap: tracemalloc peak of a second run)"
    )


def export_runs(tmp: Path, seconds: int) -> None:
    runs = [("query", seconds)] + [
        (f, n) for f in ("csv", "parquet") for n in (seconds // 4, seconds)
    ]
    for what, span in runs:
        child = subprocess.run(
            [sys.executable, __file__, "--child", what, str(span), str(tmp)],
            capture_output=True,
            text=True,
            check=True,
        )
        elapsed, count, size, grown, traced = child.stdout.split()
        label = (
            "baseline one query of the range"
            if what == "query"
            else f"export {what} of {span / 3600:g} h"
        )
        rate = int(count) / float(elapsed)
        extra = f"{int(count):,} values" if what == "query" else f"{int(size) / 2**20:.1f} MiB file"
        print(
            f"  {label:<34} {float(elapsed):7.2f} s  {rate:>12,.0f} {'values' if what == 'query' else 'rows'}/s  {extra}, RSS +{float(grown):.0f} MiB, "
            f"Python heap peak {float(traced):.1f} MiB"
        )


async def child(what: str, span: int, tmp: Path) -> None:
    """One export (or the baseline query) in this fresh process: prints elapsed, count, size, RSS."""
    fields = [f"signal_{i}" for i in range(10)]
    store = open_store(f"sqlite:///{tmp}/export.db")
    await store.start()
    t0 = START_S * 1000
    end = t0 + span * 1000 - 1

    async def once() -> tuple[int, int]:
        size = 0
        if what == "query":
            series = await store.query(
                "bench", "L1", "client_raw_data", fields, t0, end, limit=10**7
            )
            return sum(len(p) for p in series.values()), size
        job = Export(store, "bench", "L1", "client_raw_data", fields, {}, t0, end)
        with (tmp / f"out.{what}").open("wb") as out:
            async for block in job.encode(what):
                size += len(block)
                out.write(block)
        return job.rows, size

    gc.collect()
    rss = RssPeak()
    started = time.perf_counter()
    count, size = await once()
    elapsed = time.perf_counter() - started
    grown = rss.stop()
    gc.collect()
    tracemalloc.start()
    await once()
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    await store.close()
    print(elapsed, count, size, grown, traced)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, span, tmp = args.child
        asyncio.run(child(what, int(span), Path(tmp)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-transfer-") as tmp:
        asyncio.run(bench_import(Path(tmp), args.frames))
        asyncio.run(bench_export(Path(tmp), args.hours))
        export_runs(Path(tmp), int(args.hours * 3600))


if __name__ == "__main__":
    main()
