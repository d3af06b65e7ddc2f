"""The DTC lifecycle: DM1s in, active/cleared/occurrence changes out, kept in SQLite metadata."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event, text

from livedata.decode.dm1 import Dm1, Dtc, Lamps
from livedata.metadata import Metadata
from livedata.metadata.dtcs import DtcLog
from livedata.pipeline.dtcs import MAX_ACTIVE, DtcService, DtcState

AMBER = Lamps(0, 0, 1, 0, 3, 3, 3, 3)
OFF = Lamps(0, 0, 0, 0, 3, 3, 3, 3)


def dm1(ts: int, sa: int, *codes: tuple[int, int, int], lamps: Lamps = AMBER) -> Dm1:
    return Dm1(ts, sa, lamps if codes else OFF, tuple(Dtc(s, f, o, 0) for s, f, o in codes))


def test_state_lifecycle() -> None:
    """A DTC becomes active, changes its count, clears; other ECUs' DTCs are untouched; the
    summary has one field per active code and 0 for those that just cleared."""
    state = DtcState()
    for message, kinds in [
        (dm1(1000, 0, (110, 16, 1)), ["active"]),
        (dm1(1500, 3, (523, 2, 1)), ["active"]),
        (dm1(2000, 0, (110, 16, 1)), []),
        (dm1(3000, 0, (110, 16, 2), (100, 1, 1)), ["oc", "active"]),
        (dm1(4000, 0), ["cleared", "cleared"]),
    ]:
        changes, dropped = state.diff(message)
        assert [c.kind for c in changes] == kinds and dropped == 0
        state.commit(message, changes)
    assert state.active == {(3, 523, 2): 1}
    assert state.summary(changes) == {
        "dtc_active": 1,
        "lamp_mil": 0,
        "lamp_red_stop": 0,
        "lamp_amber_warning": 1,
        "lamp_protect": 0,
        "dtc.523.2": 1,
        "dtc.110.16": 0,
        "dtc.100.1": 0,
    }
    assert "dtc.110.16" not in state.summary()


def test_state_ignores_late_dm1() -> None:
    """A DM1 older than the last one applied for its ECU (late backfill) changes nothing."""
    state = DtcState()
    newer = dm1(5000, 0, (110, 16, 1))
    state.commit(newer, state.diff(newer)[0])
    older = dm1(4000, 0)
    assert state.diff(older) == ([], 0)
    state.commit(older, [])
    assert state.active == {(0, 110, 16): 1} and state.latest == {0: 5000}


def test_quiet_dm1s_apply_as_diff_and_commit_would() -> None:
    """A DM1 without DTCs while none is active (lamps changing, late ones included) leaves
    the state and summary as diff then commit would; any other DM1 is left to them."""
    red = Lamps(0, 1, 0, 0, 3, 3, 3, 3)
    quiet = [dm1(1000, 0), dm1(1000, 3), Dm1(2000, 0, red, ()), dm1(1500, 0), dm1(3000, 3)]
    fast, slow = DtcState(), DtcState()
    for message in quiet:
        fast.summary()
        assert fast.quiet(message)
        slow.commit(message, slow.diff(message)[0])
        assert (fast.latest, fast.lamps, fast.summary()) == (
            slow.latest,
            slow.lamps,
            slow.summary(),
        )
    assert fast.summary()["lamp_red_stop"] == 1 and fast.lamps[0] == red
    assert not fast.quiet(dm1(4000, 0, (110, 16, 1)))
    fast.commit(dm1(4000, 0, (110, 16, 1)), fast.diff(dm1(4000, 0, (110, 16, 1)))[0])
    assert not fast.quiet(dm1(5000, 3))  # a DTC is active: the clearing needs diff
    assert fast.latest == {0: 4000, 3: 3000}


def test_repeated_dm1s_with_dtcs_are_quiet_as_diff_and_commit_would_be() -> None:
    """A DM1 listing the same DTCs as its ECU's latest one is applied at once (lamps included),
    leaving the state and summary as diff then commit would; a changed count, a cleared
    code, or another ECU's first DM1 while DTCs are active is left to them."""
    red = Lamps(0, 1, 0, 0, 3, 3, 3, 3)
    fast, slow = DtcState(), DtcState()
    first = dm1(1000, 0, (110, 16, 1), (100, 1, 2))
    for state in (fast, slow):
        state.commit(first, state.diff(first)[0])
    same = dm1(2000, 0, (110, 16, 1), (100, 1, 2))
    for message in [same, Dm1(3000, 0, red, same.dtcs), dm1(2500, 0, (523, 2, 1))]:
        fast.summary()
        assert fast.quiet(message)
        changes, dropped = slow.diff(message)
        assert changes == [] and dropped == 0
        slow.commit(message, changes)
        assert (fast.active, fast.latest, fast.lamps, fast.summary()) == (
            slow.active,
            slow.latest,
            slow.lamps,
            slow.summary(),
        )
    assert fast.summary()["lamp_red_stop"] == 1
    assert not fast.quiet(dm1(4000, 0, (110, 16, 2), (100, 1, 2)))  # a count changed
    assert not fast.quiet(dm1(4000, 0, (110, 16, 1)))  # one cleared
    assert not fast.quiet(dm1(4000, 3))  # SA 3's first DM1: nothing known of it yet
    assert fast.latest == {0: 3000}


def test_dm1_that_overflowed_is_never_quiet() -> None:
    """A DM1 whose new DTCs did not all fit MAX_ACTIVE goes through diff again when repeated,
    so the ones dropped are counted again and taken once there is room."""
    state = DtcState()
    message = dm1(1, 0, *((spn, 1, 1) for spn in range(1, MAX_ACTIVE + 3)))
    changes, dropped = state.diff(message)
    state.commit(message, changes, dropped)
    again = dm1(2, 0, *((spn, 1, 1) for spn in range(1, MAX_ACTIVE + 3)))
    assert dropped == 2 and not state.quiet(again)
    assert state.diff(again) == ([], 2)


def test_state_is_bounded() -> None:
    """Beyond MAX_ACTIVE active DTCs per machine, new ones are dropped and counted."""
    state = DtcState()
    message = dm1(1, 0, *((spn, 1, 1) for spn in range(1, MAX_ACTIVE + 11)))
    changes, dropped = state.diff(message)
    state.commit(message, changes)
    assert len(state.active) == MAX_ACTIVE and dropped == 10


async def test_service_persists_and_survives_restart(meta: Metadata) -> None:
    """Changes are written once; a new service (a restart) knows what is active and repeats nothing."""
    service = DtcService(meta)
    summary = (await service.observe_many([("acme", "M1", [dm1(1000, 0, (110, 16, 3))])]))[0]
    assert summary["dtc_active"] == 1 and summary["lamp_amber_warning"] == 1
    await service.observe_many([("acme", "M1", [dm1(2000, 0, (110, 16, 3))])])
    await service.flush()
    log = DtcLog(meta)
    active, cleared = await log.listing("acme", "M1")
    assert [(r.spn, r.fmi, r.oc, r.since_ms, r.cleared_ms) for r in active] == [
        (110, 16, 3, 1000, None)
    ]
    assert cleared == []

    restarted = DtcService(meta)
    summary = (await restarted.observe_many([("acme", "M1", [dm1(3000, 0, (110, 16, 4))])]))[0]
    assert summary["dtc.110.16"] == 4
    summary = (await restarted.observe_many([("acme", "M1", [dm1(4000, 0)])]))[0]
    assert summary["dtc.110.16"] == 0 and summary["dtc_active"] == 0
    await restarted.flush()
    active, cleared = await log.listing("acme", "M1")
    assert active == []
    assert [(r.spn, r.oc, r.since_ms, r.cleared_ms) for r in cleared] == [(110, 4, 1000, 4000)]
    assert await log.active([("acme", "M2")]) == {("acme", "M2"): {}}


@contextlib.asynccontextmanager
async def writing(service: DtcService) -> AsyncIterator[None]:
    """``service``'s writer task runs inside the block."""
    writer = asyncio.create_task(service.run())
    try:
        yield
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def all_written(service: DtcService) -> None:
    """Wait until the writer has written every queued change."""
    async with asyncio.timeout(15):
        while service.unwritten:  # noqa: ASYNC110 - the writer's task
            await asyncio.sleep(0.05)


async def test_changes_wait_for_a_failing_database_in_order_then_are_written(
    meta: Metadata, caplog: pytest.LogCaptureFixture
) -> None:
    """While the table cannot be written, the records still get their DM1s' summaries and
    the changes wait, in order (the failure logged once); once it can, they are written."""
    service = DtcService(meta)
    await service.observe_many([("acme", "M1", [])])  # loads the (empty) active set
    async with meta.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE dtcs RENAME TO dtcs_away"))
    async with writing(service):
        with caplog.at_level(logging.WARNING, logger="livedata.dtcs"):
            first = await service.observe_many([("acme", "M1", [dm1(1000, 0, (110, 16, 1))])])
            second = await service.observe_many([("acme", "M1", [dm1(2000, 0)])])
            assert first[0]["dtc_active"] == 1 and second[0]["dtc_active"] == 0
            await asyncio.sleep(1.5)  # the first write and its first retry fail
        assert service.unwritten == 2 and service.seq == 0
        assert len([r for r in caplog.records if "not saved" in r.message]) == 1
        async with meta.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE dtcs_away RENAME TO dtcs"))
        await all_written(service)
    active, cleared = await DtcLog(meta).listing("acme", "M1")
    assert active == [] and [(r.spn, r.since_ms, r.cleared_ms) for r in cleared] == [
        (110, 1000, 2000)
    ]
    assert [row["EVENT"] for _, row in service.events_since(0)] == ["active", "cleared"]


async def test_observe_many_does_not_wait_for_the_database_write(
    meta: Metadata, tmp_path: Path
) -> None:
    """A DM1 batch's summaries come back while another connection holds the database's
    write lock; its changes are written once the lock is released."""
    service = DtcService(meta)
    await service.observe_many([("acme", "M1", [])])
    async with writing(service):
        other = sqlite3.connect(tmp_path / "meta.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # SQLite's write lock, held by another connection
            async with asyncio.timeout(1):
                summary = await service.observe_many([("acme", "M1", [dm1(1000, 0, (110, 16, 1))])])
            assert summary[0]["dtc_active"] == 1
            await asyncio.sleep(0.3)
            assert service.unwritten == 1, "written while another connection held the lock"
            other.execute("ROLLBACK")
        finally:
            other.close()
        await all_written(service)
    active, _ = await DtcLog(meta).listing("acme", "M1")
    assert [(r.spn, r.since_ms) for r in active] == [(110, 1000)]


class Transactions:
    """Counts the transactions committed and the SELECTs run on a metadata engine."""

    def __init__(self, meta: Metadata) -> None:
        self.commits = 0
        self.selects = 0
        engine = meta.engine.sync_engine
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "before_cursor_execute", self._execute)

    def _commit(self, conn: object) -> None:
        self.commits += 1

    def _execute(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        self.selects += statement.lstrip().upper().startswith("SELECT")


async def test_batch_writes_as_one_by_one_in_one_transaction(meta: Metadata) -> None:
    """A batch of several machines' DM1s (one machine several times) gives the summaries,
    rows and log-table events that applying them one by one gives, in one transaction."""
    await meta.ensure_org("beta", "Beta")
    items = [
        ("M1", [dm1(1000, 0, (110, 16, 1))]),
        ("M2", [dm1(1000, 0, (100, 1, 1)), dm1(1500, 3, (523, 2, 1))]),
        ("M1", [dm1(2000, 0, (110, 16, 2)), dm1(3000, 0)]),
        ("M1", [dm1(4000, 0, (110, 16, 1))]),
        ("M2", [dm1(4000, 0)]),
    ]
    one_by_one = DtcService(meta)
    expected = []
    for chassis, dm1s in items:
        expected.append((await one_by_one.observe_many([("acme", chassis, dm1s)]))[0])
        await one_by_one.flush()
    batched = DtcService(meta)
    counted = Transactions(meta)
    got = await batched.observe_many([("beta", chassis, dm1s) for chassis, dm1s in items])
    await batched.flush()
    assert got == expected
    assert counted.commits == 2  # the load of M1 and M2, the write
    assert [row for _, row in batched.events_since(0)] == [
        row for _, row in one_by_one.events_since(0)
    ]
    log = DtcLog(meta)
    for chassis in ("M1", "M2"):
        rows = []
        for org in ("acme", "beta"):
            active, cleared = await log.listing(org, chassis)
            rows.append(
                [(r.sa, r.spn, r.oc, r.lamps, r.since_ms, r.cleared_ms) for r in active + cleared]
            )
        assert rows[0] == rows[1] and rows[0]


async def test_restart_loads_the_fleet_at_once_and_repeats_nothing(meta: Metadata) -> None:
    """After a restart, the first batch of 1,200 machines with active DTCs loads them with
    one query per 500 machines; DM1s repeating those DTCs write and report nothing."""
    machines = [f"M{n}" for n in range(1200)]
    first = DtcService(meta)
    await first.observe_many([("acme", m, [dm1(1000, 0, (110, 16, 1))]) for m in machines])
    await first.flush()
    restarted = DtcService(meta)
    counted = Transactions(meta)
    summaries = await restarted.observe_many(
        [("acme", m, [dm1(2000, 0, (110, 16, 1))]) for m in machines]
    )
    assert (counted.selects, counted.commits) == (3, 1)
    assert all(s["dtc_active"] == 1 and s["dtc.110.16"] == 1 for s in summaries)
    assert restarted.seq == 0
    active, cleared = await DtcLog(meta).listing("acme", "M7")
    assert [(r.since_ms, r.cleared_ms) for r in active] == [(1000, None)] and cleared == []
