"""Ingest throughput in one process, no HTTP: device messages → ``Ingest.handle`` → store + log.

What runs is what ``livedata demo`` runs between the device link and distribute
(messages sent into a ``local://`` device link, ingest reading it in batches):
metadata on a temporary SQLite file seeded like ``sim/demo.py`` (organisation
``demo``, the wheel-loader DBC, N machines), a :class:`Catalog`, an
:class:`Ingest` with the default batch and queue sizes and its writer task, a
:class:`MemoryLog`, and one consumer draining the log (standing in for
distribute).  The device messages are made up front by the simulated fleet
(``Fleet.tick``: one ``vehicle_can`` CAN batch and one ``client_raw_data``
message per machine and simulated second), encoded and read back as the MQTT and
HTTP links hand them over (``codec.decode``, which keeps a CAN batch's wire payload
for the raw frames; not timed), and pushed through ``Ingest.handle``
as fast as it takes them, so the figures are the ceiling of one ingest process.

Figures, in one run:

* ``sim``: what making the messages cost (the demo server pays this too), with
  their wire round trip.
* ``CanDecoder.decode``: the raw decoder alone, frames/s.
* ``SQLiteStore.write`` alone, by transaction size (one demo tick, 1,000, 5,000
  records), on a store that already holds a few minutes of history: rate, CPU
  and bytes passed to write()/read() per record (the WAL's write amplification).
* ``Catalog`` refresh: the cost of reloading every machine when the cache
  entries expire, for N and 5N machines.
* ingest → SQLiteStore (the demo's shape) and ingest → MemoryStore (so the
  SQLite cost is visible): records/s, points/s, CPU per record (process CPU,
  which includes the SQLite writer thread, and the event-loop thread's share),
  and RSS.

Run: ``python bench/bench_ingest.py [--machines 100] [--seconds 300]``.

``--before DIR`` compares with another tree (e.g. ``git worktree add /tmp/base main``):
only the ingest runs (device link → SQLiteStore, → MemoryStore, and → a slow SQLiteStore
with the spill journal on: every write takes 0.3 s longer, ``spill_after`` 0.2 s, so
every batch outlives it -- a store up but behind), first with
``DIR/src``, then with this tree (this script in a fresh subprocess each), alternating ``--rounds``
times (default 2), each figure printed with the load average, then the stages alone: decoding
(the DBC decoder with a bus state per machine, ``decode_values``) per message, and
``SQLiteStore.write`` of the records the MemoryStore run made, in writes of 500, on a new
file (CPU of all threads per record); then the ratios of CPU
per record (before / after: > 1 is faster now) and the records/s one core would take
(1 / CPU per record, what "one core" means on a shared machine).

``--store-down N`` runs the outage mode instead: ingest → SQLiteStore with the
spill journal on (as the demo runs it), the device messages pushed as fast as
ingest takes them for 2 + N seconds each (the first 2 not counted) in three runs -- store up; store down
(every write raises ``StoreError``) with the default journal bound; store down
with a small bound (``--small-spill-mib``, 16) so the bound is reached.  For
each: records/s accepted (acknowledged: durable and in the log), records/s that
reached the log, the journal's peak (records, bytes), the process's peak RSS,
and after the store is back (pushing stopped) the time the drainer takes to
empty the journal.

Prints figures only; asserts nothing.  Everything lives in a temporary
directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# the fault-injecting store wrapper of the tests (tests.pipeline.faults)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from livedata.bus.memory import MemoryLog
from livedata.catalog import Catalog
from livedata.codec import decode, encode
from livedata.decode.can import BusState, CanDecoder
from livedata.decode.values import decode_values
from livedata.devices.local import LocalDeviceLink
from livedata.metadata import Metadata
from livedata.model import DeviceMessage, MsgType, Record
from livedata.pipeline.ingest import Ingest, consume_devices
from livedata.pipeline.spill import SpillJournal
from livedata.settings import Settings
from livedata.sim.demo import DBC_PATH, DEFAULT_GROUPS, MODEL, ORG
from livedata.sim.fleet import Fleet, default_chassis_ids
from livedata.store.base import Store
from livedata.store.memory import MemoryStore
from livedata.store.sqlite import SQLiteStore
from tests.pipeline.faults import FlakyStore

WARMUP_SECONDS = 2
SLOW_WRITE_S, SLOW_SPILL_AFTER_S = 0.3, 0.2
"""The slow-store run: every write outlives ``spill_after`` (a store up but behind)."""
"""Simulated seconds pushed before timing starts (catalog loads, series interning)."""

PROC = psutil.Process()
WARMUP_OUTAGE_S = 2.0
"""Outage mode: seconds of pushing before the figures are counted (the queue fills first)."""


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


@dataclass
class RunResult:
    label: str
    records: int
    points: int
    wall: float
    cpu: float
    loop_cpu: float
    rss_before: int
    rss_after: int

    def lines(self) -> list[str]:
        return [
            f"{self.label}",
            f"  records            {self.records:>10,}   in {self.wall:6.2f} s",
            f"  records/s          {self.records / self.wall:>10,.0f}",
            f"  points/s           {self.points / self.wall:>10,.0f}",
            f"  CPU per record     {self.cpu / self.records * 1e6:>10.1f} µs  "
            f"(event-loop thread {self.loop_cpu / self.records * 1e6:.1f} µs, "
            f"other threads {(self.cpu - self.loop_cpu) / self.records * 1e6:.1f} µs)",
            f"  CPU use            {self.cpu / self.wall * 100:>10.0f} % of one core",
            f"  RSS                {mib(self.rss_before):>10} → {mib(self.rss_after)}",
        ]


async def seed(meta: Metadata, chassis_ids: Sequence[str], dbc_text: str) -> None:
    """What ``sim.demo.attach_demo`` does before the fleet starts."""
    await meta.ensure_org(ORG, "Demo fleet")
    dbc = await meta.add_dbc(ORG, "loader.dbc", dbc_text)
    await meta.assign_model_dbc(ORG, MODEL, dbc.id)
    for n, chassis in enumerate(chassis_ids, 1):
        await meta.upsert_machine(ORG, chassis, f"Wheel loader {n}", MODEL)
    await meta.ensure_groups(ORG, DEFAULT_GROUPS)


async def make_messages(
    chassis_ids: list[str], decoder: CanDecoder, seconds: int
) -> tuple[list[DeviceMessage], float]:
    """``seconds`` simulated seconds of the fleet, ending now, as a device link hands them
    to ingest (read from their wire payloads, as the MQTT and HTTP links do); and the CPU
    time making them took."""
    messages: list[DeviceMessage] = []

    async def collect(message: DeviceMessage) -> None:
        messages.append(decode(message.tenant, message.chassis, message.msg_type, encode(message)))

    fleet = Fleet(ORG, chassis_ids, decoder, collect)
    start_ts = (int(time.time()) - seconds) * 1000
    cpu = time.process_time()
    for i in range(seconds):
        await fleet.tick(start_ts + i * 1000)
    return messages, time.process_time() - cpu


class SlowStore(FlakyStore):
    """A store whose every write takes ``delay`` seconds longer, without CPU (a busy server)."""

    def __init__(self, inner: Store, delay: float) -> None:
        super().__init__(inner)
        self.delay = delay

    async def write(self, records: Sequence[Record]) -> int:
        await asyncio.sleep(self.delay)
        return await super().write(records)


async def started_ingest(
    store: Store, log: MemoryLog, catalog: Catalog, spill: SpillJournal | None, spill_after: float
) -> Ingest:
    """Start ``store`` and ``log``; an Ingest on them with the default batch and queue sizes."""
    defaults = Settings()
    await store.start()
    await log.start()
    return Ingest(
        store,
        log,
        catalog,
        batch_max=defaults.store_batch_max,
        queue_max=defaults.ingest_queue,
        spill=spill,
        spill_after=spill_after,
    )


async def run_ingest(
    label: str,
    store: Store,
    catalog: Catalog,
    warmup: list[DeviceMessage],
    timed: list[DeviceMessage],
    spill: SpillJournal | None = None,
    spill_after: float = 2.0,
) -> tuple[RunResult, list[list[Record]]]:
    """Push ``warmup`` then ``timed`` through a local device link into a fresh Ingest (as the
    demo's ``consume_devices``); time ``timed`` until it is in the log and in the store."""
    log = MemoryLog(f"memory://bench-{uuid.uuid4().hex}")
    ingest = await started_ingest(store, log, catalog, spill, spill_after)
    batches: list[list[Record]] = []
    received = 0
    target = 0
    reached = asyncio.Event()

    async def drain() -> None:
        nonlocal received
        async for batch in log.consume("bench"):
            batches.append(batch)
            received += len(batch)
            if received >= target:
                reached.set()

    async def push(messages: list[DeviceMessage]) -> None:
        nonlocal target
        target += len(messages)
        stored = ingest.written + len(messages)
        reached.clear()
        for message in messages:
            await link.send(message)
        await reached.wait()
        while ingest.written < stored:  # noqa: ASYNC110 - the log has them first, then the store
            await asyncio.sleep(0.002)

    link = LocalDeviceLink()
    consumer = asyncio.create_task(drain())
    writer = asyncio.create_task(ingest.run())
    feeder = asyncio.create_task(consume_devices(ingest, link))
    await asyncio.sleep(0)  # let the consumer register its group
    try:
        await push(warmup)
        batches.clear()
        rss_before = PROC.memory_info().rss
        cpu0, loop0, t0 = time.process_time(), time.thread_time(), time.perf_counter()
        await push(timed)
        wall = time.perf_counter() - t0
        cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
        rss_after = PROC.memory_info().rss
    finally:
        for task in (writer, consumer, feeder):
            task.cancel()
        await asyncio.gather(writer, consumer, feeder, return_exceptions=True)
        await ingest.close()
        await log.close()
        await store.close()
    records = sum(len(b) for b in batches)
    points = sum(len(r.values) for b in batches for r in b)
    result = RunResult(label, records, points, wall, cpu, loop_cpu, rss_before, rss_after)
    return result, batches


def bench_decoder(decoder: CanDecoder, messages: list[DeviceMessage]) -> list[str]:
    batches = [m.frames for m in messages if m.msg_type == MsgType.VEHICLE_CAN]
    frames = sum(len(b) for b in batches)
    t0 = time.perf_counter()
    for frames_of_second in batches:
        decoder.decode(frames_of_second)
    wall = time.perf_counter() - t0
    return [
        "CanDecoder.decode alone",
        f"  batches            {len(batches):>10,}   ({frames / len(batches):.0f} frames each)",
        f"  frames/s           {frames / wall:>10,.0f}",
        f"  µs per batch       {wall / len(batches) * 1e6:>10.1f}",
    ]


async def bench_store_write(
    url: str, records: list[Record], machines: int, segment_seconds: int
) -> list[str]:
    """``SQLiteStore.write`` alone, by transaction size, on a store that already has history.

    The records before the last three segments are loaded first (5,000 per write);
    then each segment is written in transactions of one demo tick, 1,000 and 5,000
    records.  In the running demo the ingest writer takes what has queued, which
    is about one tick (``2 × machines`` records), so the first row is what the
    demo pays; the bulk runs above use large batches.
    """
    per_second = 2 * machines
    segment = segment_seconds * per_second
    history, rest = records[: -3 * segment], records[-3 * segment :]
    store = SQLiteStore(url)
    await store.start()
    lines = [
        f"SQLiteStore.write alone, by transaction size, after {len(history):,} records "
        f"({len(history) // per_second} s of {machines} machines) of history",
        f"  {'records/write':>14} {'records/s':>10} {'points/s':>10} {'CPU/record':>11} "
        f"{'write()/record':>15} {'read()/record':>14}",
    ]
    try:
        for i in range(0, len(history), 5_000):
            await store.write(history[i : i + 5_000])
        for n, size in enumerate((per_second, 1_000, 5_000)):
            chunk = rest[n * segment : (n + 1) * segment]
            io0, cpu0, t0 = PROC.io_counters(), time.process_time(), time.perf_counter()
            points = 0
            for i in range(0, len(chunk), size):
                points += await store.write(chunk[i : i + size])
            wall = time.perf_counter() - t0
            cpu, io1 = time.process_time() - cpu0, PROC.io_counters()
            written = (io1.write_chars - io0.write_chars) / len(chunk)
            read = (io1.read_chars - io0.read_chars) / len(chunk)
            lines.append(
                f"  {size:>14,} {len(chunk) / wall:>10,.0f} {points / wall:>10,.0f} "
                f"{cpu / len(chunk) * 1e6:>8.0f} µs {written / 1024:>12,.1f} KiB "
                f"{read / 1024:>10,.1f} KiB"
            )
    finally:
        await store.close()
    return lines


async def bench_catalog(tmp: Path, dbc_text: str, counts: Sequence[int]) -> list[str]:
    """What ingest pays when the catalog's entries expire (every ``Catalog.ttl`` seconds).

    All machines of a fleet are looked up within one tick, so their entries expire
    together; the next tick then reloads every one of them inside ``Ingest.handle``.
    """
    lines = ["Catalog refresh (every machine looked up again after the TTL has expired)"]
    for count in counts:
        meta = Metadata(f"sqlite:///{tmp / f'catalog-{count}.db'}")
        await meta.start()
        try:
            chassis_ids = default_chassis_ids(count)
            await seed(meta, chassis_ids, dbc_text)
            catalog = Catalog(meta)
            for chassis in chassis_ids:
                await catalog.machine(ORG, chassis)
            catalog.invalidate()
            cpu0, t0 = time.process_time(), time.perf_counter()
            for chassis in chassis_ids:
                await catalog.machine(ORG, chassis)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        finally:
            await meta.close()
        lines.append(
            f"  {count:>6,} machines: {wall:6.2f} s wall, {cpu:6.2f} s CPU per refresh "
            f"= {cpu / catalog.ttl:.0%} of a core at TTL {catalog.ttl:g} s"
        )
    return lines


@dataclass
class OutageResult:
    label: str
    accepted: int
    logged: int
    wall: float
    journal_records: int
    journal_bytes: int
    rss_before: int
    rss_peak: int
    drain_s: float
    drained: int
    stored: int

    def row(self) -> str:
        drain = (
            f"{self.drain_s:6.1f} s ({self.drained / self.drain_s:,.0f} rec/s)"
            if self.drained
            else f"{'–':>6}"
        )
        return (
            f"  {self.label:<32} {self.accepted / self.wall:>9,.0f} {self.logged / self.wall:>9,.0f} "
            f"{self.journal_records:>9,} {mib(self.journal_bytes):>8} "
            f"{mib(self.rss_before):>7} → {mib(self.rss_peak):<7} {drain}"
        )


def endless(messages: list[DeviceMessage], span_ms: int) -> Iterator[DeviceMessage]:
    """``messages`` again and again, each pass ``span_ms`` earlier, so no key repeats."""
    shift = 0
    while True:
        for message in messages:
            yield dataclasses.replace(message, ts=message.ts - shift) if shift else message
        shift += span_ms


async def run_outage(
    label: str,
    tmp: Path,
    catalog: Catalog,
    source: Iterator[DeviceMessage],
    seconds: float,
    *,
    down: bool,
    spill_max_bytes: int,
) -> OutageResult:
    """Push ``source`` for ``seconds`` with the store up or down; then bring it up and drain."""
    name = uuid.uuid4().hex[:8]
    store = FlakyStore(SQLiteStore(f"sqlite:///{tmp / f'outage-{name}.db'}"))
    log = MemoryLog(f"memory://bench-{name}")
    spill = SpillJournal(tmp / f"spill-{name}", spill_max_bytes)
    ingest = await started_ingest(store, log, catalog, spill, Settings().spill_after)
    counts = {"acked": 0, "logged": 0}
    rss_peak = PROC.memory_info().rss

    async def ack() -> None:
        counts["acked"] += 1

    async def drain_log() -> None:
        async for batch in log.consume("bench"):
            counts["logged"] += len(batch)

    async def sample() -> None:
        nonlocal rss_peak
        while True:
            rss_peak = max(rss_peak, PROC.memory_info().rss)
            await asyncio.sleep(0.05)

    async def push() -> None:
        for n, message in enumerate(source):
            await ingest.handle(message, ack)
            if n % 100 == 0:  # a device link yields between messages; let the writer run
                await asyncio.sleep(0)

    tasks = [asyncio.create_task(c()) for c in (drain_log, ingest.run, sample)]
    try:
        await asyncio.sleep(0.1)
        rss_before = PROC.memory_info().rss
        store.down = down
        pusher = asyncio.create_task(push())
        await asyncio.sleep(WARMUP_OUTAGE_S)  # past the first fill of the queue
        acked0, logged0 = counts["acked"], counts["logged"]
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        pusher.cancel()
        await asyncio.gather(pusher, return_exceptions=True)
        wall = time.perf_counter() - t0
        accepted, logged = counts["acked"] - acked0, counts["logged"] - logged0
        peak_records, peak_bytes = spill.peak_records, spill.peak_bytes
        store.down = False
        backlog = spill.records
        t1 = time.perf_counter()
        while True:
            if not (spill.records or ingest.depth() or ingest.oldest_unstored() is not None):
                break
            await asyncio.sleep(0.01)
        drain_s = time.perf_counter() - t1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ingest.close()
        await log.close()
        await store.close()
    return OutageResult(
        label,
        accepted,
        logged,
        wall,
        peak_records,
        peak_bytes,
        rss_before,
        rss_peak,
        drain_s,
        backlog,
        ingest.written,
    )


async def main_outage(machines: int, seconds: int, down_s: float, small_mib: int) -> None:
    """The ``--store-down`` mode (see the module doc)."""
    logging.basicConfig(level=logging.CRITICAL)
    chassis_ids = default_chassis_ids(machines)
    dbc_text = DBC_PATH.read_text()
    decoder = CanDecoder.from_dbc(dbc_text)
    default_bound = Settings().spill_max_bytes
    print(
        f"bench_ingest --store-down {down_s:g}: {machines} machines, {seconds} simulated s of "
        f"messages (repeated with earlier timestamps as needed), {psutil.cpu_count()} CPUs; "
        f"ingest → SQLiteStore with the spill journal, pushed as fast as it takes them"
    )
    messages, _ = await make_messages(chassis_ids, decoder, seconds)
    with tempfile.TemporaryDirectory(prefix="livedata-bench-outage-") as tmp:
        meta = Metadata(f"sqlite:///{Path(tmp) / 'metadata.db'}")
        await meta.start()
        try:
            await seed(meta, chassis_ids, dbc_text)
            catalog = Catalog(meta)
            source = endless(messages, seconds * 1000)
            for message in messages[: 2 * machines]:  # warm the catalog and the decoder
                await catalog.machine(message.tenant, message.chassis)
            results = [
                await run_outage(
                    "store up",
                    Path(tmp),
                    catalog,
                    source,
                    down_s,
                    down=False,
                    spill_max_bytes=default_bound,
                ),
                await run_outage(
                    f"store down, bound {mib(default_bound)}",
                    Path(tmp),
                    catalog,
                    source,
                    down_s,
                    down=True,
                    spill_max_bytes=default_bound,
                ),
                await run_outage(
                    f"store down, bound {small_mib} MiB",
                    Path(tmp),
                    catalog,
                    source,
                    down_s,
                    down=True,
                    spill_max_bytes=small_mib * 2**20,
                ),
            ]
        finally:
            await meta.close()
    print()
    print(
        f"  {'run (' + format(down_s, 'g') + ' s each)':<32} {'accepted':>9} {'logged':>9} "
        f"{'journal':>9} {'journal':>8} {'RSS':>7}   {'peak':<7} drain after recovery"
    )
    print(f"  {'':<32} {'rec/s':>9} {'rec/s':>9} {'peak rec':>9} {'peak':>8}")
    for result in results:
        print(result.row())
    encoded = results[1].journal_bytes / max(1, results[1].journal_records)
    print()
    print(
        f"journal: {encoded:.0f} B per record encoded; the default bound holds "
        f"{default_bound / encoded / (2 * machines) / 60:,.0f} min of {machines} machines at 1 Hz "
        f"({2 * machines} records/s)"
    )
    for result in results:
        print(
            f"{result.label}: {result.stored:,} records stored in all, "
            f"{result.accepted:,} accepted while pushing"
        )


async def main(machines: int, seconds: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    chassis_ids = default_chassis_ids(machines)
    dbc_text = DBC_PATH.read_text()
    decoder = CanDecoder.from_dbc(dbc_text)

    print(
        f"bench_ingest: {machines} machines × {seconds} simulated s "
        f"(+{WARMUP_SECONDS} s warm-up), {psutil.cpu_count()} CPUs"
    )
    messages, sim_cpu = await make_messages(chassis_ids, decoder, WARMUP_SECONDS + seconds)
    split = len(messages) * WARMUP_SECONDS // (WARMUP_SECONDS + seconds)
    warmup, timed = messages[:split], messages[split:]
    steps = machines * (WARMUP_SECONDS + seconds)
    print(
        f"sim: {len(messages):,} messages made in {sim_cpu:.2f} s CPU = "
        f"{sim_cpu / steps * 1e6:.0f} µs per machine-second (Machine.step + CAN encode)"
    )
    print()
    print("\n".join(bench_decoder(decoder, timed)))
    print()

    with tempfile.TemporaryDirectory(prefix="livedata-bench-ingest-") as tmp:
        meta = Metadata(f"sqlite:///{Path(tmp) / 'metadata.db'}")
        await meta.start()
        try:
            await seed(meta, chassis_ids, dbc_text)
            results = []
            sqlite_url = f"sqlite:///{Path(tmp) / 'telemetry.db'}"
            for label, store in (
                ("ingest → SQLiteStore (demo shape)", SQLiteStore(sqlite_url)),
                ("ingest → MemoryStore (baseline)", MemoryStore(f"memory://{uuid.uuid4().hex}")),
            ):
                result, batches = await run_ingest(label, store, Catalog(meta), warmup, timed)
                results.append(result)
                print("\n".join(result.lines()))
                print()
            write_url = f"sqlite:///{Path(tmp) / 'write-only.db'}"
            records = [r for b in batches for r in b]
            segment = max(1, min(30, seconds // 6))
            print("\n".join(await bench_store_write(write_url, records, machines, segment)))
            db_size = (Path(tmp) / "telemetry.db").stat().st_size
            print()
            print("\n".join(await bench_catalog(Path(tmp), dbc_text, (machines, 5 * machines))))
        finally:
            await meta.close()
    print()
    sqlite_run, memory_run = results
    extra = (sqlite_run.cpu / sqlite_run.records - memory_run.cpu / memory_run.records) * 1e6
    print(
        f"SQLite costs {extra:.1f} µs CPU per record over MemoryStore; SQLite run at "
        f"{memory_run.wall / sqlite_run.wall:.0%} of the MemoryStore run's throughput"
    )
    print(
        f"telemetry.db after the run: {mib(db_size)} "
        f"({db_size / sqlite_run.points:.0f} B per point incl. warm-up)"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak RSS of this process: {mib(peak)}")
    print(
        f"real-time need of the demo: {machines * 2} records/s at 1 Hz, "
        f"{machines * 20} records/s at 10 Hz"
    )


def stage_decode(decoder: CanDecoder, messages: list[DeviceMessage]) -> float:
    """CPU µs per message of decoding alone: the DBC decoder for ``vehicle_can`` (with a
    bus state per machine, as ingest keeps), ``decode_values`` for ``client_raw_data``."""
    buses: dict[str, BusState] = {}
    cpu = time.process_time()
    for message in messages:
        if message.msg_type == MsgType.VEHICLE_CAN:
            bus = buses.get(message.chassis) or buses.setdefault(message.chassis, BusState())
            decoder.decode(message.frames, bus)
        else:
            decode_values(message.values)
    return (time.process_time() - cpu) / len(messages) * 1e6


async def stage_store(url: str, records: list[Record], size: int = 500) -> float:
    """CPU µs per record (all threads: the writer's work) of ``SQLiteStore.write`` alone,
    ``records`` in writes of ``size`` on a new file."""
    store = SQLiteStore(url)
    await store.start()
    try:
        cpu = time.process_time()
        for i in range(0, len(records), size):
            await store.write(records[i : i + size])
        return (time.process_time() - cpu) / len(records) * 1e6
    finally:
        await store.close()


async def main_runs(machines: int, seconds: int) -> list[RunResult]:
    """The ingest runs only (link → SQLiteStore, → MemoryStore, → slow store), printed;
    then the stages alone (decoding, SQLite writes of the records ingest made)."""
    logging.basicConfig(level=logging.WARNING)
    chassis_ids = default_chassis_ids(machines)
    dbc_text = DBC_PATH.read_text()
    decoder = CanDecoder.from_dbc(dbc_text)
    messages, _ = await make_messages(chassis_ids, decoder, WARMUP_SECONDS + seconds)
    split = len(messages) * WARMUP_SECONDS // (WARMUP_SECONDS + seconds)
    results = []
    made: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="livedata-bench-ingest-") as tmp:
        meta = Metadata(f"sqlite:///{Path(tmp) / 'metadata.db'}")
        await meta.start()
        try:
            await seed(meta, chassis_ids, dbc_text)
            slow = SlowStore(SQLiteStore(f"sqlite:///{Path(tmp) / 'slow.db'}"), SLOW_WRITE_S)
            for label, store, spill in (
                (
                    "link → SQLiteStore",
                    SQLiteStore(f"sqlite:///{Path(tmp) / 'telemetry.db'}"),
                    None,
                ),
                ("link → MemoryStore", MemoryStore(f"memory://{uuid.uuid4().hex}"), None),
                ("link → slow store, journal", slow, SpillJournal(Path(tmp) / "spill", 2**28)),
            ):
                result, batches = await run_ingest(
                    label,
                    store,
                    Catalog(meta),
                    messages[:split],
                    messages[split:],
                    spill,
                    SLOW_SPILL_AFTER_S,
                )
                results.append(result)
                if isinstance(store, MemoryStore):
                    made = [record for batch in batches for record in batch]
                load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
                print("\n".join(result.lines()) + f"\n  load average       {load}", flush=True)
            decoding = stage_decode(decoder, messages[split:])
            writing = await stage_store(f"sqlite:///{Path(tmp) / 'stage.db'}", made)
        finally:
            await meta.close()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"stages alone (CPU per record)\n  decoding           {decoding:>10.1f} µs\n"
        f"  SQLiteStore.write  {writing:>10.1f} µs  (writes of 500 records)\n"
        f"  load average       {load}",
        flush=True,
    )
    for label, us in (("stage: decoding", decoding), ("stage: SQLite write", writing)):
        results.append(RunResult(label, 1_000_000, 0, 1.0, us, us, 0, 0))
    return results


def compare(before_dir: Path, machines: int, seconds: int, rounds: int) -> None:
    """``main_runs`` on ``before_dir``'s tree and this one, alternately, each in a fresh
    subprocess (so neither inherits the other's heap)."""
    args = [sys.executable, __file__, "--runs-only", f"--machines={machines}"]
    args.append(f"--seconds={seconds}")
    trees = {"before": before_dir, "after": Path(__file__).resolve().parent.parent}
    cpu: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
    for round_no in range(rounds):
        for which, tree in trees.items():
            print(f"--- round {round_no + 1}: {which} ({tree})", flush=True)
            env = {**os.environ, "PYTHONPATH": str(tree / "src")}
            out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                if line.startswith("RESULT "):
                    for label, us in json.loads(line[7:]).items():
                        cpu[which].setdefault(label, []).append(us)
                else:
                    print(line)
    print("\nCPU per record, best of the rounds (the least disturbed by other processes):")
    for label, befores in cpu["before"].items():
        before, after = min(befores), min(cpu["after"][label])
        print(
            f"  {label:<20} {before:6.1f} µs → {after:6.1f} µs  ({before / after:.2f}x; "
            f"{1e6 / before:,.0f} → {1e6 / after:,.0f} records/s per core)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=300, help="simulated seconds to push")
    parser.add_argument(
        "--store-down",
        type=float,
        default=0,
        metavar="N",
        help="outage mode: store up, then down, for N s each (see the module doc)",
    )
    parser.add_argument(
        "--small-spill-mib", type=int, default=16, help="journal bound of the third outage run"
    )
    parser.add_argument("--before", type=Path, help="compare with this tree (see the doc)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --before")
    parser.add_argument("--runs-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs_only:
        done = asyncio.run(main_runs(args.machines, args.seconds))
        print("RESULT " + json.dumps({r.label: r.cpu / r.records * 1e6 for r in done}))
    elif args.before:
        compare(args.before, args.machines, args.seconds, args.rounds)
    elif args.store_down:
        asyncio.run(main_outage(args.machines, args.seconds, args.store_down, args.small_spill_mib))
    else:
        asyncio.run(main(args.machines, args.seconds))
