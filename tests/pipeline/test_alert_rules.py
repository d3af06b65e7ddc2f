"""Alert rule evaluation: the sans-I/O core, rule validation, and the role's restart on SQLite."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from livedata.bus.memory import MemoryLog, MemoryPubSub
from livedata.catalog import Catalog
from livedata.errors import BackendError, InputError, StoreError
from livedata.metadata import Metadata
from livedata.metadata.alerts import AlertStore, RuleSpec, validate_rule
from livedata.model import Kind, Record, decode_records, encode_records
from livedata.pipeline.alerts import AlertRole, Evaluator, alert_role
from livedata.pipeline.distribute import live_message
from livedata.runtime import Runtime
from livedata.settings import Settings
from tests.bus.contract import parsed
from tests.pipeline.faults import FlakyStore

T0 = 1_700_000_000_000


def rule(**kw) -> RuleSpec:
    base = RuleSpec(
        id=1,
        org="o",
        name="r",
        kind="value",
        msg_type="vehicle_can",
        field="x",
        condition=">",
        threshold=100.0,
    )
    return validate_rule(replace(base, **kw))


def run(ev: Evaluator, values: list[float], field: str = "x", start: int = T0, step: int = 1000):
    """Feed one value per second; returns [(kind, ts)] of the events."""
    out = []
    for i, v in enumerate(values):
        for e in ev.feed("o", "M1", "WL", "vehicle_can", {field: v}, start + i * step):
            out.append((e.kind, e.ts))
    return out


def evaluator(*rules: RuleSpec) -> Evaluator:
    ev = Evaluator()
    ev.set_rules(rules)
    return ev


@pytest.mark.parametrize(
    ("condition", "threshold", "high", "hit", "miss"),
    [
        (">", 100, None, [100.5, 1e9], [100, 99, -5]),
        (">=", 100, None, [100, 101], [99.9, -1]),
        ("<", 10, None, [9.99, -50], [10, 11]),
        ("<=", 10, None, [10, 3], [10.01, 20]),
        ("==", 2, None, [2, 2.0], [1, 3, 2.01]),
        ("!=", 2, None, [1, 3, 2.5], [2]),
        ("outside", 10, 20, [9.9, 20.1, -100], [10, 15, 20]),
    ],
)
def test_each_condition_raises_on_hits_only(condition, threshold, high, hit, miss) -> None:
    """Every condition raises on a value that meets it and never on one that does not."""
    r = rule(condition=condition, threshold=threshold, threshold_high=high)
    for value in miss:
        assert run(evaluator(r), [value]) == [], (condition, value)
    for value in hit:
        assert run(evaluator(r), [value]) == [("raise", T0)], (condition, value)


def test_raised_once_while_the_condition_holds_then_cleared_once() -> None:
    """An alert is raised once however long the condition holds, and cleared once when it ends."""
    ev = evaluator(rule())
    events = run(ev, [150, 160, 170, 180, 50, 40])
    assert events == [("raise", T0), ("clear", T0 + 4000)]


def test_duration_must_hold_on_every_record() -> None:
    """With `for 2 s` the alert is raised on the record 2 s after the first hit, not earlier;
    a miss in between restarts the clock."""
    ev = evaluator(rule(for_seconds=2))
    assert run(ev, [150, 150]) == []
    assert run(ev, [150], start=T0 + 2000) == [("raise", T0 + 2000)]
    ev = evaluator(rule(for_seconds=2))
    assert run(ev, [150, 150, 50, 150, 150]) == []
    assert run(ev, [150], start=T0 + 5000) == [("raise", T0 + 5000)]


def test_hysteresis_keeps_the_alert_between_clear_and_threshold() -> None:
    """With clear 90 for `> 100`, values between 90 and 100 keep the alert; below 90 clears it;
    without a clear threshold the first value not over 100 clears it."""
    ev = evaluator(rule(clear_threshold=90))
    assert run(ev, [105, 99, 95, 90, 101, 89.9]) == [("raise", T0), ("clear", T0 + 5000)]
    ev = evaluator(rule())
    assert run(ev, [105, 99]) == [("raise", T0), ("clear", T0 + 1000)]


def test_hysteresis_below_and_outside() -> None:
    """`<` clears above its clear threshold; `outside` clears back inside its clear range."""
    ev = evaluator(rule(condition="<", threshold=10, clear_threshold=15))
    assert run(ev, [5, 12, 14.9, 15.1]) == [("raise", T0), ("clear", T0 + 3000)]
    r = rule(
        condition="outside",
        threshold=10,
        threshold_high=20,
        clear_threshold=12,
        clear_threshold_high=18,
    )
    ev = evaluator(r)
    assert run(ev, [25, 19, 11, 21, 17]) == [("raise", T0), ("clear", T0 + 4000)]


def test_nodata_raises_after_silence_and_clears_on_data() -> None:
    """A nodata rule raises once after N s without records (by the clock), clears on the next
    record, and raises again after a new silence."""
    r = rule(kind="nodata", nodata_seconds=30, msg_type=None)
    ev = evaluator(r)
    ev.feed("o", "M1", "WL", "vehicle_can", {"x": 1}, T0, now_ms=T0)
    assert ev.tick(T0 + 29_999) == []
    raised = ev.tick(T0 + 30_000)
    assert [(e.kind, e.chassis, e.ts) for e in raised] == [("raise", "M1", T0 + 30_000)]
    assert "no data from M1 for 30 s" in raised[0].message
    assert ev.tick(T0 + 60_000) == []
    cleared = ev.feed("o", "M1", "WL", "client_raw_data", {"y": 1}, T0 + 61_000, T0 + 61_000)
    assert [(e.kind, e.ts) for e in cleared] == [("clear", T0 + 61_000)]
    assert ev.tick(T0 + 90_000) == []
    assert [e.kind for e in ev.tick(T0 + 91_000)] == ["raise"]


def test_nodata_uses_arrival_time_and_watched_machines() -> None:
    """Silence is measured from arrival (a device clock that lags does not count), a machine
    watched from the start is covered before it ever sends, and a message-type rule ignores
    other message types."""
    ev = evaluator(rule(kind="nodata", nodata_seconds=10, msg_type="vehicle_can"))
    ev.feed("o", "M1", "WL", "vehicle_can", {}, T0 - 3_600_000, now_ms=T0)
    assert ev.tick(T0 + 9_000) == []
    ev.watch("o", "M2", "WL", T0)
    ev.feed("o", "M1", "WL", "client_raw_data", {}, T0 + 5_000, now_ms=T0 + 5_000)
    assert sorted(e.chassis for e in ev.tick(T0 + 10_000)) == ["M1", "M2"]


def test_nodata_any_type_covers_a_watched_machine_that_never_sent() -> None:
    """A nodata rule without a message type raises for a machine watched from the start that
    has sent nothing (it used to crash the role with a TypeError)."""
    ev = evaluator(rule(kind="nodata", nodata_seconds=10, msg_type=None))
    ev.watch("o", "M2", "WL", T0)
    assert ev.tick(T0 + 9_999) == []
    assert [(e.kind, e.chassis) for e in ev.tick(T0 + 10_000)] == [("raise", "M2")]


def test_scope_model_and_machine() -> None:
    """A model rule applies to that model's machines only; a machine rule to that machine only."""
    ev = evaluator(
        rule(id=1, scope="model", scope_value="WL"), rule(id=2, scope="machine", scope_value="M2")
    )
    got = ev.feed("o", "M1", "WL", "vehicle_can", {"x": 500}, T0)
    assert [(e.rule.id, e.chassis) for e in got] == [(1, "M1")]
    got = ev.feed("o", "M2", "EX", "vehicle_can", {"x": 500}, T0)
    assert [(e.rule.id, e.chassis) for e in got] == [(2, "M2")]
    assert ev.feed("o", "M3", "EX", "vehicle_can", {"x": 500}, T0) == []
    assert ev.feed("other", "M1", "WL", "vehicle_can", {"x": 500}, T0) == []


def test_other_fields_strings_and_old_records_are_skipped() -> None:
    """Records without the field, non-numeric values and records older than the newest are
    not evaluated."""
    ev = evaluator(rule())
    assert ev.feed("o", "M1", "WL", "vehicle_can", {"y": 500}, T0) == []
    assert ev.feed("o", "M1", "WL", "vehicle_can", {"x": "high"}, T0) == []
    assert ev.feed("o", "M1", "WL", "client_raw_data", {"x": 500}, T0) == []
    assert run(ev, [50], start=T0 + 5000) == []
    assert run(ev, [500], start=T0 + 1000) == []


def test_restart_from_stored_active_alerts_raises_no_duplicate() -> None:
    """A new evaluator restored from the active alerts raises nothing for a condition that
    still holds, and clears when it ends; sync_active adopts and forgets."""
    first = evaluator(rule())
    assert run(first, [150]) == [("raise", T0)]
    second = evaluator(rule())
    second.restore(1, "M1", T0)
    assert run(second, [150, 160], start=T0 + 1000) == []
    assert run(second, [10], start=T0 + 3000) == [("clear", T0 + 3000)]
    third = evaluator(rule())
    third.sync_active({(1, "M1"): T0})
    assert run(third, [150]) == []
    third.sync_active({})
    assert run(third, [150], start=T0 + 1000) == [("raise", T0 + 1000)]


def test_editing_what_a_rule_watches_drops_its_state() -> None:
    """Changing a threshold keeps the state; changing the field starts over."""
    ev = evaluator(rule())
    run(ev, [150])
    ev.set_rules([rule(threshold=120)])
    assert ev.is_active(1, "M1")
    ev.set_rules([rule(field="z")])
    assert not ev.is_active(1, "M1")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"condition": "outside", "threshold": 20, "threshold_high": 10},
            "outside needs low < high",
        ),
        ({"condition": "outside", "threshold_high": None}, "outside needs low and high"),
        ({"clear_threshold": 120}, "clear threshold must be below the threshold for >"),
        ({"condition": "<", "clear_threshold": 50}, "clear threshold must be above"),
        ({"condition": "==", "clear_threshold": 1}, "a clear threshold applies to"),
        ({"condition": "~"}, "condition '~' is unknown"),
        ({"threshold": None}, "a value rule needs a threshold"),
        ({"field": None}, "a value rule needs a field"),
        ({"msg_type": "x"}, "msgType 'x' is unknown"),
        ({"severity": "huge"}, "severity 'huge' is unknown"),
        ({"scope": "machine"}, "scope machine needs"),
        ({"kind": "nodata", "nodata_seconds": None}, "a nodata rule needs nodataSeconds"),
        ({"for_seconds": -1}, "forSeconds must be between"),
        ({"email_to": ("not-an-address",)}, "is not an e-mail address"),
        ({"webhook_url": "ftp://x"}, "must start with http"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"name": "  "}, "name is empty"),
    ],
)
def test_invalid_rules_are_refused_saying_why(changes, message) -> None:
    """Each invalid rule is refused with a message that names the problem."""
    base = RuleSpec(
        id=1, org="o", name="r", msg_type="vehicle_can", field="x", condition=">", threshold=100
    )
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        validate_rule(replace(base, **changes))


async def test_role_restart_on_sqlite_does_not_duplicate(tmp_path: Path) -> None:
    """The role stores a raise; a restarted role on the same database raises nothing for the
    same condition, and the database refuses a second active alert for a rule and machine."""
    meta = Metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    await meta.start()
    await meta.ensure_org("o", "O")
    await meta.upsert_machine("o", "M1", "M1", "WL")
    store = AlertStore(meta)
    row = await store.create_rule(
        RuleSpec(
            id=0,
            org="o",
            name="hot",
            msg_type="vehicle_can",
            field="x",
            condition=">",
            threshold=100,
        )
    )
    url = f"memory://{uuid.uuid4().hex}"
    now = int(time.time() * 1000)

    def rec(value: float, ts: int) -> Record:
        return Record("o", "M1", "vehicle_can", ts, Kind.REALTIME, {"x": value})

    async def fresh_role() -> AlertRole:
        role = AlertRole(store, MemoryLog(url), MemoryPubSub(url), Catalog(meta))
        await role.refresh()
        return role

    published: list[bytes] = []
    await MemoryPubSub(url).subscribe("live-stream/o/alerts", lambda _c, m: published.append(m))
    first = await fresh_role()
    await first.handle([rec(150, now - 2000), rec(160, now - 1000)])
    assert first.raised == 1
    assert len(published) == 1
    second = await fresh_role()
    await second.handle([rec(170, now)])
    assert second.raised == 0
    spec = (await store.enabled_specs())[0]
    assert await store.raise_alert(spec, "M1", now, 1.0, "again") is None
    active = await store.list_alerts("o", "active")
    assert [(a.rule_id, a.chassis_id, a.value) for a in active] == [(row.id, "M1", 150.0)]
    await second.handle([rec(10, now + 1000)])
    assert second.cleared == 1
    assert await store.list_alerts("o", "active") == []
    await asyncio.sleep(0)
    await meta.close()


async def test_nodata_raise_waits_while_the_last_data_cannot_be_checked(tmp_path: Path) -> None:
    """A due nodata raise is held (no alert) while its check against the store and the live
    history fails, raised on a later tick once the check answers "silent", and retracted
    when the check finds recent data."""
    meta = Metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    await meta.start()
    await meta.ensure_org("o", "O")
    await meta.upsert_machine("o", "M1", "M1", "WL")
    await meta.upsert_machine("o", "M2", "M2", "WL")
    store = AlertStore(meta)
    await store.create_rule(
        RuleSpec(id=0, org="o", name="silent", kind="nodata", msg_type=None, nodata_seconds=10)
    )
    answers: dict[str, int | BackendError | None] = {}
    asked: list[list[str]] = []

    async def last_seen(
        tenant: str, machines: Sequence[str], msg_type: str | None
    ) -> dict[str, int | BackendError | None]:
        asked.append(list(machines))
        if isinstance(answers.get("*"), BackendError):
            raise answers["*"]
        return {chassis: answers[chassis] for chassis in machines}

    url = f"memory://{uuid.uuid4().hex}"
    role = AlertRole(store, MemoryLog(url), MemoryPubSub(url), Catalog(meta), last_seen=last_seen)
    role._started_ms = T0
    await role.refresh()
    answers["*"] = StoreError("store down")
    await role.tick(T0 + 10_000)
    assert role.raised == 0 and role.core.active() == set()
    assert asked == [["M1", "M2"]]  # one check for the rule's machines
    answers.update({"*": None, "M1": StoreError("down"), "M2": T0 + 9_000})  # M2: another copy
    await role.tick(T0 + 10_500)
    assert role.raised == 0 and role.core.active() == set()
    answers.update(M1=None)  # M1 silent
    await role.tick(T0 + 11_000)
    assert role.raised == 1 and asked[-1] == ["M1"]
    assert [a.chassis_id for a in await store.list_alerts("o", "active")] == ["M1"]
    await meta.close()


async def test_nodata_check_reads_the_live_history_while_the_store_is_down(
    tmp_path: Path,
) -> None:
    """The runtime's nodata check answers from the live channel's history while the store is
    down (ingest spilling), and takes the newer of the two when both answer."""

    name = uuid.uuid4().hex
    rt = Runtime(
        Settings(
            data_dir=tmp_path,
            store="memory://",
            log=f"memory://{name}",
            pubsub=f"memory://{name}",
            roles=["alerts"],
        )
    )
    store = rt.store = FlakyStore(rt.store, down=True)
    last_seen = alert_role(rt).last_seen
    assert last_seen is not None
    now = int(time.time() * 1000)
    record = Record("o", "M1", "vehicle_can", now, Kind.REALTIME, {"x": 1})
    await rt.pubsub.publish(record.channel, live_message(record, 1, "e"))
    assert await last_seen("o", ["M1", "M2"], None) == {"M1": now, "M2": None}
    assert await last_seen("o", ["M2"], "vehicle_can") == {"M2": None}  # history: silent
    store.down = False
    await store.inner.write([replace(record, ts=now + 5)])
    assert await last_seen("o", ["M1"], "vehicle_can") == {"M1": now + 5}
    await store.inner.write([replace(record, chassis="M2", ts=now + 7)])
    assert await last_seen("o", ["M1", "M2"], None) == {"M1": now + 5, "M2": now + 7}


async def test_role_parses_only_the_values_a_value_rule_applies_to(tmp_path: Path) -> None:
    """Of records read from the log, only those of an organisation, message type and machine
    (or model) that a value rule applies to have their values parsed; those raise as before,
    and a nodata rule's records are tracked without parsing theirs."""
    meta = Metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    await meta.start()
    for org in ("o", "p", "q"):
        await meta.ensure_org(org, org.upper())
    await meta.upsert_machine("o", "M1", "M1", "WL")
    await meta.upsert_machine("o", "M2", "M2", "EX")
    store = AlertStore(meta)
    hot = RuleSpec(0, "o", "hot", msg_type="vehicle_can", field="x", condition=">", threshold=100)
    await store.create_rule(replace(hot, scope="machine", scope_value="M1"))
    await store.create_rule(
        replace(
            hot, name="wl", msg_type="client_raw_data", field="y", scope="model", scope_value="WL"
        )
    )
    await store.create_rule(RuleSpec(0, "q", "silent", kind="nodata", nodata_seconds=10))
    now = int(time.time() * 1000)
    batch = decode_records(
        encode_records(
            [
                Record("o", "M1", "vehicle_can", now, Kind.REALTIME, {"x": 150}),
                Record("o", "M2", "vehicle_can", now, Kind.REALTIME, {"x": 150}),
                Record("o", "M2", "client_raw_data", now, Kind.REALTIME, {"y": 150}),
                Record("o", "M1", "client_raw_data", now, Kind.REALTIME, {"y": 150}),
                Record("o", "M1", "vehicle_can", now, Kind.BACKFILL, {"x": 150}),
                Record("p", "M1", "vehicle_can", now, Kind.REALTIME, {"x": 150}),
                Record("q", "Q1", "vehicle_can", now, Kind.REALTIME, {"x": 150}),
            ]
        ),
        values_as_json=True,
    )
    url = f"memory://{uuid.uuid4().hex}"
    role = AlertRole(store, MemoryLog(url), MemoryPubSub(url), Catalog(meta))
    await role.refresh()
    await role.handle(batch)
    assert [parsed(r) for r in batch] == [True, False, False, True, False, False, False]
    assert role.raised == 2
    active = await store.list_alerts("o", "active")
    assert sorted((a.chassis_id, a.value) for a in active) == [("M1", 150.0), ("M1", 150.0)]
    assert role.core.tick(now + 11_000)[0].chassis == "Q1"
    await meta.close()
