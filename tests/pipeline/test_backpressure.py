"""Ingest under a failing or stalled store, with real parts (SQLite metadata, store and spill
journal, memory log) and an injected outage: live keeps flowing, memory stays bounded, and
every acknowledged record is stored once the store is back -- also after a killed process."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from livedata import observe
from livedata.bus.memory import MemoryLog
from livedata.catalog import Catalog
from livedata.metadata import Metadata
from livedata.model import DeviceMessage, MsgType, Record
from livedata.pipeline.ingest import Ingest
from livedata.pipeline.spill import LOG, SpillJournal
from livedata.store.sqlite import SQLiteStore
from tests.conftest import Server
from tests.pipeline.faults import FlakyLog, FlakyStore

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_750_000_000_000
MACHINES = [f"M{n}" for n in range(10)]


def message(n: int, value: float | None = None) -> DeviceMessage:
    """The ``n``-th message of the load: machines in turn, a distinct ts per machine."""
    chassis, ts = MACHINES[n % len(MACHINES)], T0 + n // len(MACHINES)
    values = {f"s{k}": n * 0.5 + k for k in range(6)}
    values["n"] = n if value is None else value
    return DeviceMessage("acme", chassis, MsgType.CLIENT_RAW_DATA, ts, values=values)


async def seed(meta: Metadata) -> None:
    await meta.ensure_org("acme", "Acme")
    for chassis in MACHINES:
        await meta.upsert_machine("acme", chassis, chassis, "WL")


async def stored_keys(store: SQLiteStore, upto: int) -> set[tuple[str, int]]:
    """(chassis, ts) of every stored message among the first ``upto``."""
    keys = set()
    for chassis in MACHINES:
        series = await store.query(
            "acme", chassis, "client_raw_data", ["n"], T0, T0 + upto, limit=10**6
        )
        keys |= {(chassis, ts) for ts, _ in series["n"]}
    return keys


def key(n: int) -> tuple[str, int]:
    m = message(n)
    return m.chassis, m.ts


@dataclass
class Rig:
    """An ingest with its writer running, a consumer of its log, and what was acknowledged."""

    ingest: Ingest
    store: FlakyStore
    inner: SQLiteStore
    spill: SpillJournal
    log: FlakyLog
    log_journal: SpillJournal | None = None
    logged: list[Record] = field(default_factory=list)
    acked: list[tuple[str, int]] = field(default_factory=list)
    peak_queue: int = 0

    def ack_for(self, msg: DeviceMessage) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            self.acked.append((msg.chassis, msg.ts))

        return ack

    async def push(self, start: int, stop: int) -> None:
        for n in range(start, stop):
            msg = message(n)
            assert await self.ingest.handle(msg, self.ack_for(msg)) is not None


async def until(check: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    meta = Metadata(f"sqlite:///{tmp_path}/meta.db")
    await meta.start()
    await seed(meta)
    tasks: list[asyncio.Task[None]] = []
    closers: list[Callable[[], Awaitable[None]]] = []

    async def make(
        *,
        queue_max: int,
        spill_max_bytes: int,
        spill_after: float = 1.0,
        log_journal_max_bytes: int | None = None,
    ) -> Rig:
        inner = SQLiteStore(f"sqlite:///{tmp_path}/telemetry.db")
        store = FlakyStore(inner)
        await store.start()
        log = FlakyLog(MemoryLog(f"memory://{uuid.uuid4().hex}"))
        spill = SpillJournal(tmp_path / "spill", spill_max_bytes)
        log_journal = (
            None
            if log_journal_max_bytes is None
            else SpillJournal(tmp_path / "spill", log_journal_max_bytes, LOG)
        )
        ingest = Ingest(
            store,
            log,
            Catalog(meta),
            batch_max=500,
            queue_max=queue_max,
            linger=0.01,
            spill=spill,
            spill_after=spill_after,
            drain_retry_max=0.2,
            log_journal=log_journal,
        )
        made = Rig(ingest, store, inner, spill, log, log_journal)

        async def consume() -> None:
            async for batch in log.consume("live"):
                made.logged.extend(batch)

        async def sample() -> None:
            while True:
                made.peak_queue = max(made.peak_queue, ingest.depth())
                await asyncio.sleep(0.002)

        tasks.extend(asyncio.create_task(c()) for c in (consume, ingest.run, sample))
        closers.extend((ingest.close, store.close))
        await asyncio.sleep(0)
        return made

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for close in closers:
        await close()
    await meta.close()


async def test_store_outage_under_load_loses_nothing_and_stays_bounded(rig) -> None:
    """Store down under load: live records and acks keep flowing until the journal is full,
    then ingest waits within its bounds; once the store is back every record is stored."""
    r: Rig = await rig(queue_max=400, spill_max_bytes=512 * 1024, spill_after=30.0)
    total = 12_000
    await r.push(0, 1_000)
    await until(lambda: len(r.acked) == 1_000, what="the first acks")
    assert r.spill.peak_records == 0, "a healthy store is written directly"
    spilled0, failures0 = observe.SPILLED._value.get(), observe.STORE_FAILURES._value.get()
    full0 = observe.SPILL_FULL._value.get()

    r.store.down = True
    logged0, acked0 = len(r.logged), len(r.acked)
    producer = asyncio.create_task(r.push(1_000, total))
    await until(lambda: observe.SPILL_FULL._value.get() > full0, what="the journal to fill")
    await until(lambda: r.ingest.depth() == 400, what="the queue to fill")
    await asyncio.sleep(0.2)
    assert not producer.done(), "devices are made to wait, not buffered without bound"
    assert len(r.logged) - logged0 >= 1_000 and len(r.acked) - acked0 >= 1_000, (
        "live records were logged and acknowledged during the outage"
    )
    assert r.spill.peak_bytes <= r.spill.max_bytes and r.peak_queue <= 400
    assert r.ingest.oldest_unstored() is not None
    assert observe.STORE_FAILURES._value.get() > failures0

    r.store.down = False
    await asyncio.wait_for(producer, 30)
    await until(lambda: len(r.acked) == total and r.spill.records == 0, what="the drain")
    assert r.spill.peak_bytes <= r.spill.max_bytes and r.peak_queue <= 400
    assert await stored_keys(r.inner, total) == {key(n) for n in range(total)}
    assert sorted(r.acked) == sorted(key(n) for n in range(total))
    assert sorted((rec.chassis, rec.ts) for rec in r.logged) == sorted(r.acked)
    assert observe.SPILLED._value.get() > spilled0
    r.ingest.update_gauges()
    assert observe.SPILL_RECORDS._value.get() == 0 and observe.UNSTORED_AGE._value.get() == 0


async def test_a_long_outage_goes_to_disk_not_to_memory(rig) -> None:
    """With the store down, the journal on disk grows with the outage while the Python heap
    does not (tracemalloc, between 2,000 and 8,000 records into the outage)."""
    r: Rig = await rig(queue_max=1_000, spill_max_bytes=2**26)
    r.store.down = True

    async def outage(start: int, stop: int) -> tuple[int, int]:
        await r.push(start, stop)
        count = stop - start
        await until(lambda: len(r.acked) == len(r.logged) == count, what="the outage's acks")
        r.acked.clear()  # the test's own lists, not ingest's memory
        r.logged.clear()
        gc.collect()
        return tracemalloc.get_traced_memory()[0], r.spill.bytes

    tracemalloc.start()
    try:
        heap1, disk1 = await outage(0, 2_000)
        heap2, disk2 = await outage(2_000, 8_000)
    finally:
        tracemalloc.stop()
    assert r.spill.records == 8_000 and disk2 - disk1 > 700_000
    assert heap2 - heap1 < (disk2 - disk1) / 10, f"heap +{heap2 - heap1} B, disk +{disk2 - disk1} B"


async def test_stalled_store_keeps_live_going_and_the_later_value(rig) -> None:
    """A store write that hangs past ``spill_after`` sends later batches to the journal and
    the log at once; when it returns, the journal is stored after it, so the later value wins."""
    r: Rig = await rig(queue_max=1_000, spill_max_bytes=2**20, spill_after=0.2)
    r.store.gate.clear()
    first = message(0, value=1.0)
    await r.ingest.handle(first, r.ack_for(first))
    await asyncio.sleep(0.1)  # its store write has started and hangs
    second = message(0, value=2.0)  # same key, a new value
    await r.ingest.handle(second, r.ack_for(second))
    await r.push(1, 200)
    await until(lambda: len(r.acked) == len(r.logged) == 201, what="live while the store hangs")
    await asyncio.sleep(0.3)
    assert r.ingest.spilling and r.store.writes == 0
    assert r.store.started == 1, "the drainer waits for the hanging write before its own"

    r.store.gate.set()
    await until(lambda: r.spill.records == 0 and r.ingest._direct is None, what="the drain")
    series = await r.inner.query("acme", "M0", "client_raw_data", ["n"], T0, T0)
    assert series["n"] == [(T0, 2.0)]
    assert await stored_keys(r.inner, 200) == {key(n) for n in range(200)}
    spilled, r.ingest.spill_after = r.ingest.spilled, 30.0
    await r.push(200, 300)  # drained: back to writing the store directly
    await until(lambda: len(r.acked) == 301, what="direct writes")
    assert r.ingest.spilled == spilled and r.spill.records == 0


async def test_log_outage_keeps_acknowledging_within_the_bound(rig) -> None:
    """Log down (Kafka restarting): records are still stored and acknowledged until
    ``queue_max`` of them wait for the log, then ingest waits; when the log is back every
    record reaches it once, in order per machine."""
    r: Rig = await rig(queue_max=1_000, spill_max_bytes=2**22)
    r.log.down = True
    producer = asyncio.create_task(r.push(0, 3_000))
    await until(lambda: r.ingest.unlogged >= 1_000, what="the log backlog to fill")
    await asyncio.sleep(0.3)
    assert not producer.done(), "beyond the bound devices are made to wait"
    assert len(r.acked) >= 1_000 and r.logged == []
    assert r.ingest.unlogged <= 1_000 + 500  # the bound plus one batch
    assert await stored_keys(r.inner, len(r.acked)) >= set(r.acked)

    r.log.down = False
    await asyncio.wait_for(producer, 30)
    await until(lambda: len(r.logged) == 3_000, what="the log to catch up")
    assert sorted((rec.chassis, rec.ts) for rec in r.logged) == sorted(key(n) for n in range(3_000))
    for chassis in MACHINES:
        stamps = [rec.ts for rec in r.logged if rec.chassis == chassis]
        assert stamps == sorted(stamps)
    assert r.log.failures > 0 and r.ingest.unlogged == 0


async def killed_child(
    directory: Path, *args: str, acks: int | None = None
) -> tuple[set[tuple[str, int]], list[str]]:
    """Run ``tests.pipeline.spill_child`` on ``directory`` (its stderr in ``child.log``
    there) until it printed ``acks`` acknowledgements or its ``done`` line with figures,
    then SIGKILL it: the acknowledged (chassis, ts), and the figures."""
    with (directory / "child.log").open("wb") as err:
        child = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tests.pipeline.spill_child", str(directory), *args),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    acked: set[tuple[str, int]] = set()
    done: list[str] = []
    try:
        assert child.stdout is not None
        while not done and (acks is None or len(acked) < acks):
            line = (await asyncio.wait_for(child.stdout.readline(), 60)).decode()
            if not line:
                break
            if line.startswith("acked "):
                _, chassis, ts = line.split()
                acked.add((chassis, int(ts)))
            elif line.startswith("done "):
                done = line.split()[1:]
    finally:
        child.send_signal(signal.SIGKILL)
        await asyncio.wait_for(child.wait(), 10)
    return acked, done


def assert_logged_once_in_order(logged: list[Record], numbers: Sequence[int]) -> None:
    """The log got the messages ``numbers``, each once, each machine's in the order ingest
    took them (the log keeps the order per machine, its partition key)."""
    for chassis in MACHINES:
        got = [int(rec.values["n"]) for rec in logged if rec.chassis == chassis]
        assert got == [n for n in numbers if message(n).chassis == chassis], chassis
    assert len(logged) == len(numbers)


async def test_log_outage_beyond_memory_goes_to_the_log_journal(rig) -> None:
    """Log down longer than the in-memory bound, with a log journal: every message is still
    acknowledged (nothing waits), the oldest beyond ``queue_max / 2`` wait on disk, and when
    the log is back it gets every record once, in order, and the journal empties."""
    r: Rig = await rig(queue_max=1_000, spill_max_bytes=2**22, log_journal_max_bytes=2**24)
    assert r.log_journal is not None
    r.log.down = True
    await asyncio.wait_for(r.push(0, 6_000), 60)  # six times the bound, never made to wait
    await until(lambda: len(r.acked) == 6_000, what="every message to be acknowledged")
    assert r.logged == [] and r.ingest.unlogged <= 1_000 + 500
    assert r.log_journal.records >= 6_000 - 1_500 and r.ingest.log_journalled >= 4_500
    assert await stored_keys(r.inner, 6_000) == {key(n) for n in range(6_000)}

    r.log.down = False
    await until(lambda: len(r.logged) >= 6_000, what="the log to catch up")
    await until(lambda: r.log_journal.records == 0, what="the log journal to empty")
    assert_logged_once_in_order(r.logged, range(6_000))
    assert r.log.failures > 0 and r.ingest.unlogged == 0 and r.log_journal.rows == 0


async def test_hanging_log_beyond_memory_goes_to_the_log_journal(rig) -> None:
    """A log whose append hangs (a stopped Kafka before its request timeout), with a log
    journal: messages keep being acknowledged past ``queue_max``; when the append returns
    the log gets every record once, in order."""
    r: Rig = await rig(queue_max=1_000, spill_max_bytes=2**22, log_journal_max_bytes=2**24)
    assert r.log_journal is not None
    r.log.gate.clear()
    await asyncio.wait_for(r.push(0, 4_000), 60)
    await until(lambda: len(r.acked) == 4_000, what="every message to be acknowledged")
    assert r.log_journal.records >= 4_000 - 1_500 and r.ingest.unlogged <= 1_000 + 500

    r.log.gate.set()
    await until(lambda: len(r.logged) >= 4_000, what="the log to catch up")
    await until(lambda: r.log_journal.records == 0, what="the log journal to empty")
    assert_logged_once_in_order(r.logged, range(4_000))


async def test_full_log_journal_makes_ingest_wait(rig) -> None:
    """Log down and the log journal at its byte bound: ``handle_many`` waits (memory and
    disk stay bounded); when the log is back the waiting messages go on and the log gets
    every record once, in order."""
    r: Rig = await rig(queue_max=1_000, spill_max_bytes=2**22, log_journal_max_bytes=100_000)
    assert r.log_journal is not None
    r.log.down = True
    producer = asyncio.create_task(r.push(0, 5_000))
    await until(lambda: observe.LOG_JOURNAL_FULL._value.get() > 0, what="the journal to fill")
    await until(lambda: r.ingest.unlogged >= 1_000, what="memory to fill")
    await asyncio.sleep(0.3)
    assert not producer.done(), "with the journal full devices are made to wait"
    assert r.log_journal.bytes <= 100_000 and r.ingest.unlogged <= 1_000 + 500
    assert len(r.acked) < 5_000

    r.log.down = False
    await asyncio.wait_for(producer, 60)
    await until(lambda: len(r.logged) >= 5_000, what="the log to catch up")
    assert_logged_once_in_order(r.logged, range(5_000))
    await until(lambda: len(r.acked) == 5_000, what="every acknowledgement")


@pytest.mark.slow
async def test_a_killed_process_log_journal_is_replayed(tmp_path: Path) -> None:
    """A process killed (SIGKILL) while the log is down leaves its log journal; the next
    process appends it to the log first, each record once, in order, before its own."""
    acked, done = await killed_child(tmp_path, "4000", "log")
    assert done, (tmp_path / "child.log").read_text()
    journalled, in_memory = int(done[0]), int(done[1])
    assert journalled >= 4_000 - 1_500 and journalled + in_memory == 4_000

    meta = Metadata(f"sqlite:///{tmp_path}/meta.db")
    await meta.start()
    store = SQLiteStore(f"sqlite:///{tmp_path}/telemetry.db")
    await store.start()
    assert acked == await stored_keys(store, 4_000) == {key(n) for n in range(4_000)}
    log_journal = SpillJournal(tmp_path / "spill", 2**26, LOG)
    log = MemoryLog(f"memory://{uuid.uuid4().hex}")
    logged: list[Record] = []

    async def consume() -> None:
        async for batch in log.consume("live"):
            logged.extend(batch)

    ingest = Ingest(store, log, Catalog(meta), linger=0.01, log_journal=log_journal)
    tasks = [asyncio.create_task(c()) for c in (consume, ingest.run)]
    try:
        await until(
            lambda: len(logged) == journalled and log_journal.records == 0, what="the replay"
        )
        await ingest.handle(message(4_000))
        await until(lambda: len(logged) == journalled + 1, what="the new record")
        # lost with memory: the appender's first chunk (the oldest) and the newest records
        first = min(int(rec.values["n"]) for rec in logged)
        assert_logged_once_in_order(logged, [*range(first, first + journalled), 4_000])
        assert int(logged[-1].values["n"]) == 4_000, "after the replay"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ingest.close()
        await store.close()
        await meta.close()


async def test_acknowledged_records_survive_a_killed_process(tmp_path: Path) -> None:
    """A process killed (SIGKILL) while the store is down loses no acknowledged record: the
    next process replays its journal into the store."""
    acked, _ = await killed_child(tmp_path, "3000", acks=1_500)
    assert len(acked) >= 1_500, (tmp_path / "child.log").read_text()

    meta = Metadata(f"sqlite:///{tmp_path}/meta.db")
    await meta.start()
    store = SQLiteStore(f"sqlite:///{tmp_path}/telemetry.db")
    await store.start()
    assert await stored_keys(store, 3_000) == set(), "the store was down: nothing stored yet"
    spill = SpillJournal(tmp_path / "spill", 2**26)
    log = MemoryLog(f"memory://{uuid.uuid4().hex}")
    ingest = Ingest(store, log, Catalog(meta), spill=spill, drain_retry_max=0.2)
    task = asyncio.create_task(ingest.run())
    try:
        await until(lambda: spill.is_open and spill.records == 0, what="the replay")
        assert acked <= await stored_keys(store, 3_000)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ingest.close()
        await store.close()
        await meta.close()


def test_metrics_and_health_show_the_queue_and_the_journal(demo: Server) -> None:
    """The demo (journals on under its data dir) exposes queue, journals, age and failures."""
    with httpx.Client(base_url=demo.url, headers=demo.headers, timeout=10) as http:
        metrics = http.get("/metrics").text
        health = http.get("/healthz").json()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("livedata_")
    }
    for name in (
        "livedata_ingest_queue",
        "livedata_spill_records",
        "livedata_spill_bytes",
        "livedata_spill_max_bytes",
        "livedata_unstored_oldest_seconds",
        "livedata_spilled_records_total",
        "livedata_spill_full_total",
        "livedata_store_failures_total",
        "livedata_log_failures_total",
        "livedata_log_journal_records",
        "livedata_log_journalled_records_total",
        "livedata_log_journal_full_total",
    ):
        assert name in values, name
    assert values["livedata_spill_max_bytes"] == 256 * 2**20
    assert health["spill"]["maxBytes"] == 256 * 2**20 and health["spill"]["records"] >= 0
    assert health["logJournal"]["maxBytes"] == 2**30 and health["logJournal"]["records"] >= 0


async def test_live_does_not_wait_for_the_store_and_the_ack_waits_for_both(rig) -> None:
    """While a store write hangs, its records are already in the log (live); their devices
    are acknowledged only once the write has returned."""
    r: Rig = await rig(queue_max=1_000, spill_max_bytes=2**20, spill_after=30.0)
    r.store.gate.clear()
    await r.push(0, 50)
    await until(lambda: len(r.logged) == 50, what="the records in the log")
    await until(lambda: r.store.started == 1, what="the store write to begin")
    assert r.acked == [] and r.store.writes == 0
    r.store.gate.set()
    await until(lambda: len(r.acked) == 50, what="the acks")
    assert await stored_keys(r.inner, 50) == {key(n) for n in range(50)}


async def test_a_hanging_log_delays_acks_by_log_wait_only(rig) -> None:
    """A log append that hangs (a stopped Kafka before its timeout) holds the acks for
    ``log_wait`` only: storing and acknowledging go on, the records wait for the log and
    reach it, in order per machine, once it answers again."""
    r: Rig = await rig(queue_max=1_000, spill_max_bytes=2**20)
    r.ingest.log_wait = 0.2
    r.log.gate.clear()
    await r.push(0, 300)
    await until(lambda: len(r.acked) == 300, what="acks without the log")
    assert r.logged == [] and r.ingest.unlogged == 300
    assert await stored_keys(r.inner, 300) == {key(n) for n in range(300)}
    r.log.gate.set()
    await until(lambda: len(r.logged) == 300, what="the log to catch up")
    assert sorted((rec.chassis, rec.ts) for rec in r.logged) == sorted(key(n) for n in range(300))
    for chassis in MACHINES:
        stamps = [rec.ts for rec in r.logged if rec.chassis == chassis]
        assert stamps == sorted(stamps)


async def test_slow_store_write_deletes_its_own_journal_row(rig) -> None:
    """A store write slower than ``spill_after`` but successful is journalled, acknowledged and
    deletes its own row when done; the next batch waits for it and goes to the store, so no
    batch is read back from the journal nor written twice."""
    r: Rig = await rig(queue_max=1_000, spill_max_bytes=2**20, spill_after=0.2)
    r.store.gate.clear()
    await r.push(0, 1)
    await until(lambda: r.acked == [key(0)] and r.spill.records == 1, what="the slow batch's ack")
    r.ingest.spill_after = 30.0  # the next batch waits for the slow write, not the journal
    await r.push(1, 50)
    await asyncio.sleep(0.5)  # longer than the old spill_after: the next batch waits
    assert r.store.started == 1 and r.spill.rows == 1, "it waits for the slow write"
    r.store.gate.set()
    await until(lambda: len(r.acked) == 50 and r.spill.records == 0, what="the store to catch up")
    assert await stored_keys(r.inner, 50) == {key(n) for n in range(50)}
    assert r.store.writes == r.store.started >= 2, "each batch written once, none drained"
    assert r.ingest.spilled == 1 and r.spill.rows == 0
