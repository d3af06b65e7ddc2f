"""Ingest with real parts (SQLite metadata and store, memory log): decoding, counting, storing, logging."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from livedata.bus.memory import MemoryLog
from livedata.catalog import Catalog
from livedata.decode.can import CanDecoder
from livedata.devices.base import Delivery, QueueLink, Rejection
from livedata.metadata import Metadata
from livedata.model import DeviceMessage, Frame, Kind, MsgType, Record
from livedata.pipeline import ingest as ingest_module
from livedata.pipeline.ingest import Ingest, Refused
from livedata.sim.demo import DBC_PATH
from livedata.sim.machine import Machine
from livedata.store.clickhouse import ClickHouseStore
from livedata.store.memory import MemoryStore
from livedata.store.sqlite import SQLiteStore

T0 = 1_750_000_000_000


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[Ingest, SQLiteStore, MemoryLog]]:
    meta = Metadata(f"sqlite:///{tmp_path}/meta.db")
    await meta.start()
    await meta.ensure_org("acme", "Acme")
    dbc = await meta.add_dbc("acme", "loader", DBC_PATH.read_text())
    await meta.upsert_machine("acme", "M1", "Loader", "WL")
    await meta.assign_model_dbc("acme", "WL", dbc.id)
    await meta.upsert_machine("acme", "NODBC", "Other", "XX")
    store = SQLiteStore(f"sqlite:///{tmp_path}/telemetry.db")
    await store.start()
    log = MemoryLog(f"memory://{uuid.uuid4().hex}")
    ingest = Ingest(store, log, Catalog(meta), linger=0)
    task = asyncio.create_task(ingest.run())
    yield ingest, store, log
    task.cancel()
    await store.close()
    await meta.close()


def machine_frames(ts: int) -> tuple[list[Frame], dict[str, float]]:
    machine = Machine("M1", CanDecoder.from_dbc(DBC_PATH.read_text()), seed=1)
    frames, _ = machine.step(ts)
    return frames, machine.signals


async def first_batch(log: MemoryLog) -> list[Record]:
    return await asyncio.wait_for(anext(log.consume("test")), 5)


async def stored_all(ingest: Ingest) -> None:
    """Wait until ingest's store has every record (live goes first, the store after)."""
    deadline = time.monotonic() + 10
    while ingest.depth() or ingest.oldest_unstored() is not None:
        assert time.monotonic() < deadline, "ingest did not store everything"
        await asyncio.sleep(0.02)


async def test_can_batch_is_decoded_stored_and_logged(parts) -> None:
    """A vehicle_can batch becomes one record, stored in SQLite and appended to the log."""
    ingest, store, log = parts
    frames, signals = machine_frames(T0)
    msg = DeviceMessage("acme", "M1", MsgType.VEHICLE_CAN, T0, frames=tuple(frames))
    record = await ingest.handle(msg)
    assert record is not None and record.kind is Kind.REALTIME
    assert record.values["engine_rpm"] == pytest.approx(signals["engine_rpm"], abs=0.125)
    logged = await first_batch(log)
    assert logged[0].values == record.values
    await stored_all(ingest)
    stored = await store.query("acme", "M1", "vehicle_can", ["engine_rpm"], T0 - 1, T0 + 1)
    assert stored["engine_rpm"] == [(T0, record.values["engine_rpm"])]


async def test_bad_frames_are_counted_and_the_rest_decoded(parts) -> None:
    """An unknown id and a short frame are counted; the other frames of the batch still decode."""
    ingest, _, _ = parts
    frames, _ = machine_frames(T0)
    bad = [Frame(T0, 0x7FF, False, b"\x01"), Frame(T0, 0x18FEF100, True, b"\x01\x02")]
    msg = DeviceMessage("acme", "M1", MsgType.VEHICLE_CAN, T0, frames=(*bad, *frames))
    record = await ingest.handle(msg)
    assert record is not None and "engine_rpm" in record.values and "coolant_temp" in record.values
    stats = ingest.stats_for("acme", "M1").to_dict()
    assert stats["unknownIds"] == 1 and stats["malformed"] == 1
    assert "0x18FEF100" in stats["lastErrors"][0]


async def test_unknown_machine_and_missing_dbc_are_rejected(parts) -> None:
    """Messages of an unknown machine or a machine without DBC are rejected and counted."""
    ingest, _, _ = parts
    frames, _ = machine_frames(T0)
    for chassis in ("GHOST", "NODBC"):
        msg = DeviceMessage("acme", chassis, MsgType.VEHICLE_CAN, T0, frames=tuple(frames))
        assert await ingest.handle(msg) is None
        assert ingest.stats_for("acme", chassis).rejected == 1
    other_org = DeviceMessage("other", "M1", MsgType.CLIENT_RAW_DATA, T0, values={"x": 1})
    assert await ingest.handle(other_org) is None


async def test_counters_of_unknown_machines_are_bounded(parts, monkeypatch) -> None:
    """Made-up machine ids keep counters for the most recent few only; known machines keep theirs."""
    monkeypatch.setattr(ingest_module, "MAX_UNKNOWN_MACHINES", 3)
    ingest, _, _ = parts
    bad = DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, T0, values={"x": 1})
    await ingest.handle_many([Delivery(bad), Rejection("acme", "M1", "truncated")])
    ingest.take_erred()
    items = [
        Delivery(DeviceMessage("acme", f"GHOST{i}", MsgType.CLIENT_RAW_DATA, T0, values={"x": 1}))
        for i in range(5)
    ] + [Rejection("acme", f"NOISE{i}", "truncated") for i in range(5)]
    await ingest.handle_many(items)
    assert sorted(ingest.stats) == [("acme", "M1"), *(("acme", f"NOISE{i}") for i in (2, 3, 4))]
    assert ingest.stats_for("acme", "M1").to_dict()["rejected"] == 1
    erred = ingest.take_erred()
    assert {("acme", "GHOST0"), ("acme", "NOISE4")} <= erred and ("acme", "M1") not in erred


async def test_half_the_ack_window_ends_the_batch_wait(parts) -> None:
    """With a batch age of an hour, deliveries are still stored and acked once half of
    ack_window wait (the link's other half stays open while the batch is written)."""
    ingest, _, _ = parts
    ingest.linger = 3600.0
    ingest.ack_window = 6
    acked: list[int] = []
    done = asyncio.Event()

    def ack_of(n: int) -> Callable[[], Awaitable[None]]:
        async def ack() -> None:
            acked.append(n)
            if len(acked) == 3:
                done.set()

        return ack

    messages = [
        DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, T0 + n, values={"n": n})
        for n in range(3)
    ]
    await ingest.handle_many([Delivery(m, ack_of(n)) for n, m in enumerate(messages)])
    await asyncio.wait_for(done.wait(), 10)
    assert acked == [0, 1, 2] and ingest.written == 3


async def test_a_full_batch_ends_the_log_linger(parts) -> None:
    """With a log that lets records gather for an hour, batch_max waiting records are
    appended at once, together."""
    ingest, _, log = parts
    log.batch_ms = 3_600_000.0
    ingest.batch_max = 10
    messages = [
        DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, T0 + n, values={"n": n})
        for n in range(10)
    ]
    await ingest.handle_many([Delivery(m) for m in messages[:4]])
    await ingest.handle_many([Delivery(m) for m in messages[4:]])
    logged = await first_batch(log)
    assert [r.values["n"] for r in logged] == list(range(10))


async def test_batches_handed_in_do_not_wake_the_lingering_appender(parts, monkeypatch) -> None:
    """While the appender lets records gather for the log, the small batches a link hands
    in one by one do not wake it to recheck (one wake-up per batch cost more than the
    append); they go to the log together when the linger ends."""
    ingest, _, log = parts
    checks: list[int] = []
    real = ingest_module._wait_until

    async def counting(event, done, deadline) -> None:  # type: ignore[no-untyped-def]
        count = 0

        def counted() -> bool:
            nonlocal count
            count += 1
            return bool(done())

        await real(event, counted, deadline)
        checks.append(count)

    monkeypatch.setattr(ingest_module, "_wait_until", counting)
    log.batch_ms = 300.0
    for n in range(20):
        message = DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, T0 + n, values={"n": n})
        await ingest.handle_many([Delivery(message)])
        await asyncio.sleep(0.005)
    logged = await first_batch(log)
    assert [r.values["n"] for r in logged] == list(range(20))
    assert checks and max(checks) <= 2


async def test_a_links_backlog_is_handed_in_bounded_batches_with_the_loop_between(
    parts,
) -> None:
    """A link's backlog of 1,200 messages reaches handle_many in batches of at most
    HANDLE_MAX, other tasks running between two batches, and every message is stored."""
    ingest, _, _ = parts
    link = QueueLink("queue://?queue=2000")
    count = 1_200
    for n in range(count):
        await link.send(
            DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, T0 + n, values={"n": n})
        )
    events: list[int] = []  # a batch's size, or 0 for a turn of another task
    handle_many = ingest.handle_many

    async def noted(deliveries):  # type: ignore[no-untyped-def]
        events.append(len(deliveries))
        return await handle_many(deliveries)

    ingest.handle_many = noted  # type: ignore[method-assign]

    async def other_task() -> None:
        while True:
            if events and events[-1]:
                events.append(0)
            await asyncio.sleep(0)

    tasks = [
        asyncio.create_task(other_task()),
        asyncio.create_task(ingest_module.consume_devices(ingest, link)),
    ]
    try:
        async with asyncio.timeout(20):
            while sum(events) < count or ingest.written < count:  # noqa: ASYNC110 - the writer task stores
                await asyncio.sleep(0.01)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    batches = [e for e in events if e]
    assert len(batches) >= count // ingest_module.HANDLE_MAX
    assert max(batches) <= ingest_module.HANDLE_MAX
    assert all(a == 0 or b == 0 for a, b in itertools.pairwise(events))


class GatedLog(MemoryLog):
    """A memory log whose first append waits until ``release`` is set (a slow broker)."""

    def __init__(self) -> None:
        super().__init__(f"memory://{uuid.uuid4().hex}")
        self.appends: list[list[int]] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def append(self, records):  # type: ignore[no-untyped-def]
        self.appends.append([r.values["n"] for r in records])
        self.entered.set()
        if len(self.appends) == 1:
            await self.release.wait()
        await super().append(records)


async def test_records_that_waited_out_an_append_are_not_lingered_again(parts) -> None:
    """The log's linger counts from the oldest waiting record: records that came while an
    append was in flight, and have waited the linger meanwhile, are appended as soon as it
    returns, not a linger later with what came after."""
    ingest, store, _ = parts
    log = GatedLog()
    log.batch_ms = 1000.0
    gated = Ingest(store, log, ingest.catalog, linger=0)
    task = asyncio.create_task(gated.run())

    def message(n: int) -> Delivery:
        return Delivery(
            DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, T0 + n, values={"n": n})
        )

    try:
        await gated.handle_many([message(0)])
        await asyncio.wait_for(log.entered.wait(), 10)
        await gated.handle_many([message(1)])
        await asyncio.sleep(1.5)  # record 1 has waited out the linger behind the append
        log.release.set()
        await asyncio.sleep(0.2)
        await gated.handle_many([message(2)])
        async with asyncio.timeout(10):
            while sum(map(len, log.appends)) < 3:  # noqa: ASYNC110 - the appender's task
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert log.appends == [[0], [1], [2]]


async def test_a_store_batch_waits_for_the_log_to_take_its_records(parts) -> None:
    """Live first: a batch the log has not taken yet (its append in flight) is written to
    the store only once the log has it, then stored and acknowledged."""
    ingest, store, _ = parts
    log = GatedLog()
    gated = Ingest(store, log, ingest.catalog, linger=0, log_wait=30.0)
    task = asyncio.create_task(gated.run())
    acked = asyncio.Event()

    async def ack() -> None:
        acked.set()

    message = DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, T0, values={"n": 0})
    try:
        await gated.handle_many([Delivery(message, ack)])
        await asyncio.wait_for(log.entered.wait(), 10)
        await asyncio.sleep(0.5)
        assert gated.written == 0, "the store wrote before the log had the records"
        log.release.set()
        await asyncio.wait_for(acked.wait(), 10)
        assert gated.written == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_batch_bounds_default_to_the_stores_own(tmp_path: Path) -> None:
    """Without settings, ingest batches as the store prefers: ClickHouse long, SQLite short."""
    assert (ClickHouseStore.batch_ms, ClickHouseStore.batch_max) == (1000.0, 10_000)
    assert (SQLiteStore.batch_ms, MemoryStore.batch_ms) == (50.0, 50.0)
    catalog = Catalog(Metadata(f"sqlite:///{tmp_path}/meta.db"))
    log = MemoryLog(f"memory://{uuid.uuid4().hex}")
    store = MemoryStore(f"memory://{uuid.uuid4().hex}")
    store.batch_ms, store.batch_max = 700.0, 123
    ingest = Ingest(store, log, catalog)
    assert (ingest.linger, ingest.batch_max) == (0.7, 123)
    ingest = Ingest(store, log, catalog, batch_max=9, linger=0.01)
    assert (ingest.linger, ingest.batch_max) == (0.01, 9)


async def test_client_values_keep_good_keys_and_report_bad_ones(parts) -> None:
    """client_raw_data keeps valid values, reports invalid ones, and remembers the field names."""
    ingest, _, log = parts
    values = {"gps_lat": 51.1, "cpu_usage": 12, "nested": {"a": 1}, "ok": True}
    msg = DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, T0, Kind.BACKFILL, values=values)
    record = await ingest.handle(msg)
    assert record is not None and record.values == {"gps_lat": 51.1, "cpu_usage": 12, "ok": 1}
    assert ingest.stats_for("acme", "M1").malformed == 1
    assert (await first_batch(log))[0].kind is Kind.BACKFILL
    fields = await ingest.catalog.meta.list_fields("acme", "M1", "client_raw_data")
    assert fields == ["cpu_usage", "gps_lat", "ok"]


async def test_impossible_timestamps_are_rejected(parts) -> None:
    """A timestamp before 2000, in seconds instead of ms, or far in the future is rejected."""
    ingest, _, _ = parts
    for ts in (0, 1_700_000_000, 2**70, int(time.time() * 1000) + 7 * 86_400_000):
        msg = DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, ts, values={"x": 1})
        assert await ingest.handle(msg) is None
    assert ingest.stats_for("acme", "M1").rejected == 4


async def test_values_are_normalised_once_at_ingest(parts) -> None:
    """Records submitted without decoding get the stores' values at ingest (bool as int,
    NaN left out, huge int as float), and the log carries exactly those."""
    ingest, _, log = parts
    raw = {"b": True, "nan": float("nan"), "big": 2**70, "s": "x", "f": 1.5}
    record = Record("acme", "M1", "user", T0, Kind.BACKFILL, dict(raw))
    await ingest.submit(record)
    (logged,) = await first_batch(log)
    assert logged.values == {"b": 1, "big": float(2**70), "s": "x", "f": 1.5}


async def test_a_batch_gets_one_outcome_per_message(parts) -> None:
    """handle_many returns each message's record or why it was refused, in order."""
    ingest, _, _ = parts
    good = DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, T0, values={"x": 1})
    ghost = DeviceMessage("acme", "GHOST", MsgType.CLIENT_RAW_DATA, T0, values={"x": 1})
    unreadable = Rejection("acme", "M1", "truncated payload")
    outcomes = await ingest.handle_many([Delivery(good), Delivery(ghost), unreadable])
    assert isinstance(outcomes[0], Record) and outcomes[0].values == {"x": 1}
    assert outcomes[1] == Refused("rejected", "unknown machine 'GHOST' in organisation 'acme'")
    assert outcomes[2] == Refused("decode_error", "truncated payload")


async def test_a_batch_saves_its_new_field_names_in_one_statement(parts) -> None:
    """A batch of many machines' first client_raw_data remembers every machine's field names
    with one metadata INSERT (a fleet's first second), and refuses only a machine past max_fields."""
    from sqlalchemy import event

    ingest, _, _ = parts
    meta = ingest.catalog.meta
    for i in range(200):
        await meta.upsert_machine("acme", f"F{i}", f"F{i}", "XX")
    ingest.catalog.invalidate()
    ingest.catalog.max_fields = 3
    inserts: list[str] = []

    def count(_conn, _cursor, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO MACHINE_FIELDS"):
            inserts.append(statement)

    event.listen(meta.engine.sync_engine, "before_cursor_execute", count)
    try:
        batch = [
            Delivery(
                DeviceMessage("acme", f"F{i}", MsgType.CLIENT_RAW_DATA, T0, values={"a": i, "b": 1})
            )
            for i in range(200)
        ]
        batch.append(  # a fourth field for F0: refused, the rest kept
            Delivery(
                DeviceMessage(
                    "acme", "F0", MsgType.CLIENT_RAW_DATA, T0 + 1, values={"c": 1, "d": 1}
                )
            )
        )
        outcomes = await ingest.handle_many(batch)
    finally:
        event.remove(meta.engine.sync_engine, "before_cursor_execute", count)
    assert all(isinstance(o, Record) for o in outcomes[:200])
    assert isinstance(outcomes[200], Refused) and "at most 3" in outcomes[200].reason
    assert len(inserts) == 1, inserts
    for i in (0, 99, 199):
        assert await meta.list_fields("acme", f"F{i}", "client_raw_data") == ["a", "b"]
