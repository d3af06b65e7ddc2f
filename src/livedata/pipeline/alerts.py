"""The alert role: records from the log checked against the alert rules.

Two layers:

* :class:`Evaluator` -- the sans-I/O core.  It is fed the rules
  (:meth:`~Evaluator.set_rules`), records (:meth:`~Evaluator.feed`: a machine's
  values of one message type at a time) and clock ticks (:meth:`~Evaluator.tick`),
  and returns :class:`AlertEvent` s (``raise``/``clear``).  It keeps one state per
  (rule, machine):

  - a *value* rule's condition must hold on every record for ``for_seconds`` (by
    the records' timestamps: the first record that meets it starts the clock, one
    that does not resets it) before the alert is raised -- once;
  - an active alert clears when the value passes the clear threshold (hysteresis:
    below it for ``>``/``>=``, above it for ``<``/``<=``, back inside the clear
    range for ``outside``), or, without one, as soon as the condition stops holding;
  - a *nodata* rule raises when nothing (of its message type, or of any) arrived
    from a machine for ``nodata_seconds`` by the clock given to ``tick`` (arrival
    time, not the device's clock), and clears on the next record.  A machine is
    watched from its first record, or from :meth:`~Evaluator.watch` (the role
    watches every machine in a nodata rule's scope from its start, so a machine
    that stays silent after a restart is noticed too);
  - :meth:`~Evaluator.restore` marks an alert active without an event: the role
    rebuilds the state from the stored active alerts, so a restart never raises
    the same alert twice (and the database refuses a second active alert for one
    rule and machine anyway).

  Values that are not numbers are skipped; records older than the newest one seen
  for a rule and machine are skipped (out of order).

* :class:`AlertRole` -- the I/O around it.  It consumes the log as consumer group
  ``alerts`` (records are keyed by chassis, so copies of the role split the
  machines between them as distribute's copies do), loads the enabled rules and
  the active alerts from :class:`~livedata.metadata.alerts.AlertStore` every
  ``refresh_s`` (3 s: a new or edited rule acts within that), persists raises and
  clears (with their notifications, in the same transaction) and publishes each
  on the pub/sub channel :func:`alerts_channel` (``live-stream/{tenant}/alerts``),
  from which every gateway pushes them to its browsers (SSE log table ``alerts``,
  Socket.IO ``alert-created``, the fleet page).  It runs the
  :class:`~livedata.pipeline.notify.Notifier` when given one.

Under stress: only real-time records are evaluated (backfill is history: it
was sent late, so it would raise alerts for the past), and records more than
10 minutes old are skipped (a log replayed from its start must not raise
alerts for old data).  When the metadata database is down a raise is not lost
silently: the core forgets it and raises it again on the next record that
still meets the condition, and the error is logged; rules keep their last
known state until the database is back.  The nodata clock is the arrival of
records from the log, so a store outage (ingest spilling to its journal, the log
still flowing) raises nothing.  A nodata raise is first checked against the
newest timestamp in the store and in the live channel's history (another copy
may be the one receiving that machine's data; the store lags while ingest
spills), so it costs one store query and one history read per machine and
``nodata_seconds`` at most; when neither answers the raise waits for a later
tick rather than risk a false alarm.  Alert pushes go through the pub/sub, whose
Redis backlog keeps them while Redis restarts and sends them when it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from livedata import observe
from livedata.bus.base import Log, PubSub, as_live
from livedata.catalog import Catalog
from livedata.errors import BackendError, BusError, LivedataError
from livedata.metadata.alerts import AlertStore, RuleSpec, alert_dict
from livedata.model import Kind, MsgType, Record, live_channel
from livedata.pipeline.notify import Notifier, parse_networks
from livedata.ratelog import Throttled
from livedata.retry import backoff

if TYPE_CHECKING:
    from livedata.runtime import Runtime

log = logging.getLogger("livedata.alerts")

STALE_MS = 600_000
"""Records older than this (by their timestamp, against the wall clock) are not evaluated."""

LastSeen = Callable[
    [str, Sequence[str], str | None], Awaitable[dict[str, int | BackendError | None]]
]
"""(tenant, machines, msg_type or None for any) -> per machine the newest timestamp, None
when it has none, or the error when it could not be checked (raising: none could)."""


def alerts_channel(tenant: str) -> str:
    """The pub/sub channel on which an organisation's alert events travel."""
    return f"live-stream/{tenant}/alerts"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A rule started or stopped firing for a machine."""

    kind: str
    """``raise`` or ``clear``."""
    rule: RuleSpec
    tenant: str
    chassis: str
    ts: int
    """When: the record's timestamp (value rules) or the clock (nodata raises, ms)."""
    value: float | None
    message: str


@dataclass(slots=True)
class _State:
    active: bool = False
    pending_since: int | None = None
    raised_ms: int | None = None
    newest_ts: int | None = None


@dataclass(slots=True)
class _Machine:
    model: str | None
    since: int
    """When watching began (ms): the first record's arrival or :meth:`Evaluator.watch`."""
    seen: dict[str, int]
    """Arrival time (ms) of the newest record per message type."""

    def last(self, msg_type: str | None) -> int:
        """When the machine last sent ``msg_type`` (any type for ``None``), or ``since``."""
        if msg_type is not None:
            return self.seen.get(msg_type, self.since)
        return max([self.since, *self.seen.values()])


def holds(rule: RuleSpec, value: float) -> bool:
    """Whether a value meets a value rule's condition."""
    t = rule.threshold
    if t is None:
        return False
    match rule.condition:
        case ">":
            return value > t
        case ">=":
            return value >= t
        case "<":
            return value < t
        case "<=":
            return value <= t
        case "==":
            return value == t
        case "!=":
            return value != t
        case "outside":
            high = rule.threshold_high
            return high is not None and (value < t or value > high)
    return False


def clears(rule: RuleSpec, value: float) -> bool:
    """Whether a value ends an active alert of a value rule (with hysteresis when set)."""
    c = rule.clear_threshold
    if c is None:
        return not holds(rule, value)
    match rule.condition:
        case ">" | ">=":
            return value < c
        case "<" | "<=":
            return value > c
        case "outside":
            high = rule.clear_threshold_high
            return high is not None and c <= value <= high
    return not holds(rule, value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


class Evaluator:
    """The sans-I/O alert evaluator: rules, records and ticks in, raise/clear events out."""

    def __init__(self) -> None:
        self._rules: dict[int, RuleSpec] = {}
        self._value_rules: dict[tuple[str, str], list[RuleSpec]] = {}
        self._nodata_rules: dict[str, list[RuleSpec]] = {}
        self._state: dict[tuple[int, str], _State] = {}
        self._machines: dict[tuple[str, str], _Machine] = {}
        self._orgs: set[str] = set()

    # rules and state ----------------------------------------------------------

    @property
    def rules(self) -> dict[int, RuleSpec]:
        return dict(self._rules)

    def set_rules(self, rules: Iterable[RuleSpec]) -> None:
        """Replace the rules (only enabled ones are used).  The state of a rule that is gone,
        or whose identity (kind, scope, message type, field) changed, is dropped; an
        edited threshold applies to the next record."""
        new = {r.id: r for r in rules if r.enabled}
        for rule_id, old in self._rules.items():
            rule = new.get(rule_id)
            if rule is None or rule.identity() != old.identity():
                for key in [k for k in self._state if k[0] == rule_id]:
                    del self._state[key]
        self._rules = new
        self._orgs = {r.org for r in new.values()}
        self._value_rules = {}
        self._nodata_rules = {}
        for rule in new.values():
            if rule.kind == "nodata":
                self._nodata_rules.setdefault(rule.org, []).append(rule)
            elif rule.msg_type and rule.field:
                self._value_rules.setdefault((rule.org, rule.msg_type), []).append(rule)

    def has_rules(self, tenant: str) -> bool:
        return tenant in self._orgs

    def has_any_rules(self) -> bool:
        return bool(self._orgs)

    def nodata_orgs(self) -> set[str]:
        return set(self._nodata_rules)

    def restore(self, rule_id: int, chassis: str, raised_ms: int) -> None:
        """Mark an alert active (it is stored as active) without an event."""
        state = self._state.setdefault((rule_id, chassis), _State())
        state.active, state.raised_ms, state.pending_since = True, raised_ms, None

    def is_active(self, rule_id: int, chassis: str) -> bool:
        state = self._state.get((rule_id, chassis))
        return state is not None and state.active

    def active(self) -> set[tuple[int, str]]:
        return {key for key, state in self._state.items() if state.active}

    def sync_active(self, stored: Mapping[tuple[int, str], int]) -> None:
        """Align with the stored active alerts ((rule, chassis) -> raised_ms): adopt those
        raised elsewhere, forget those cleared elsewhere (rule edited, disabled, deleted)."""
        for key, state in self._state.items():
            if state.active and key not in stored:
                state.active, state.raised_ms, state.pending_since = False, None, None
        for (rule_id, chassis), raised in stored.items():
            if not self.is_active(rule_id, chassis):
                self.restore(rule_id, chassis, raised)

    def watch(self, tenant: str, chassis: str, model: str | None, since_ms: int) -> None:
        """Watch a machine for nodata rules as if it had last sent at ``since_ms`` (when
        nothing was seen from it yet)."""
        machine = self._machines.get((tenant, chassis))
        if machine is None:
            self._machines[(tenant, chassis)] = _Machine(model, since_ms, {})
        elif model is not None:
            machine.model = model

    def forget_machine(self, tenant: str, chassis: str) -> None:
        self._machines.pop((tenant, chassis), None)

    def revert(self, event: AlertEvent) -> None:
        """Undo an event that could not be stored: a raise is raised again later, a clear
        leaves the alert active."""
        state = self._state.setdefault((event.rule.id, event.chassis), _State())
        if event.kind == "raise":
            state.active, state.raised_ms, state.pending_since = False, None, None
        else:
            state.active = True

    def retract(self, event: AlertEvent, seen_ms: int) -> None:
        """A nodata raise was wrong: the machine sent at ``seen_ms`` (found in the store)."""
        self.revert(event)
        machine = self._machines.get((event.tenant, event.chassis))
        if machine is not None:
            key = event.rule.msg_type
            if key is None:
                machine.since = max(machine.since, seen_ms)
            else:
                machine.seen[key] = max(machine.seen.get(key, 0), seen_ms)

    # input ----------------------------------------------------------------------

    def feed(
        self,
        tenant: str,
        chassis: str,
        model: str | None,
        msg_type: str,
        values: Mapping[str, Any],
        ts: int,
        now_ms: int | None = None,
    ) -> list[AlertEvent]:
        """Evaluate one record given by its parts (:meth:`feed_record`)."""
        record = Record(tenant, chassis, msg_type, ts, Kind.REALTIME, dict(values))
        return self.feed_record(record, model, now_ms)

    def feed_record(
        self, record: Record, model: str | None, now_ms: int | None = None
    ) -> list[AlertEvent]:
        """Evaluate one record; ``now_ms`` is its arrival time (default its ``ts``).

        Its values are read only when a value rule of its organisation and message type
        applies to the machine: a record from the log parses them then, and only then
        (``ValueError`` if they are not values, raised before anything changed here).
        """
        tenant, chassis, msg_type, ts = record.tenant, record.chassis, record.msg_type, record.ts
        arrived = ts if now_ms is None else now_ms
        machine = self._machines.get((tenant, chassis))
        if model is None and machine is not None:
            model = machine.model
        rules = [
            rule
            for rule in self._value_rules.get((tenant, msg_type), ())
            if rule.field is not None and rule.applies_to(chassis, model)
        ]
        values = record.values if rules else {}
        events: list[AlertEvent] = []
        if machine is None:
            machine = self._machines[(tenant, chassis)] = _Machine(model, arrived, {})
        else:
            machine.model = model
        machine.seen[msg_type] = max(machine.seen.get(msg_type, arrived), arrived)
        for rule in self._nodata_rules.get(tenant, ()):
            if rule.msg_type not in (None, msg_type):
                continue
            state = self._state.get((rule.id, chassis))
            if state is not None and state.active:
                state.active, state.raised_ms = False, None
                events.append(AlertEvent("clear", rule, tenant, chassis, arrived, None, ""))
        for rule in rules:
            field = rule.field
            if field not in values:
                continue
            value = _number(values[field])
            if value is None:
                continue
            state = self._state.get((rule.id, chassis))
            if state is None:
                state = self._state[(rule.id, chassis)] = _State()
            if state.newest_ts is not None and ts < state.newest_ts:
                continue
            state.newest_ts = ts
            event = self._step(rule, state, tenant, chassis, value, ts)
            if event is not None:
                events.append(event)
        return events

    def _step(
        self, rule: RuleSpec, state: _State, tenant: str, chassis: str, value: float, ts: int
    ) -> AlertEvent | None:
        if state.active:
            if clears(rule, value):
                state.active, state.raised_ms, state.pending_since = False, None, None
                return AlertEvent("clear", rule, tenant, chassis, ts, value, "")
            return None
        if not holds(rule, value):
            state.pending_since = None
            return None
        if state.pending_since is None:
            state.pending_since = ts
        if ts - state.pending_since < rule.for_seconds * 1000:
            return None
        state.active, state.raised_ms, state.pending_since = True, ts, None
        message = f"{rule.field} = {value:g} ({rule.describe()})"
        return AlertEvent("raise", rule, tenant, chassis, ts, value, message)

    def tick(self, now_ms: int) -> list[AlertEvent]:
        """Raise the nodata alerts that are due at ``now_ms``."""
        events: list[AlertEvent] = []
        for (tenant, chassis), machine in self._machines.items():
            for rule in self._nodata_rules.get(tenant, ()):
                if not rule.applies_to(chassis, machine.model):
                    continue
                if rule.nodata_seconds is None:
                    continue
                silent = now_ms - machine.last(rule.msg_type)
                if silent < rule.nodata_seconds * 1000:
                    continue
                state = self._state.setdefault((rule.id, chassis), _State())
                if state.active:
                    continue
                state.active, state.raised_ms = True, now_ms
                message = f"no data from {chassis} for {silent // 1000} s ({rule.describe()})"
                events.append(AlertEvent("raise", rule, tenant, chassis, now_ms, None, message))
        return events


# --------------------------------------------------------------------------- the role


class AlertRole:
    """Evaluates the log against the rules, stores alerts and publishes them."""

    def __init__(
        self,
        store: AlertStore,
        log: Log,
        pubsub: PubSub,
        catalog: Catalog,
        *,
        last_seen: LastSeen | None = None,
        notifier: Any = None,
        group: str = "alerts",
        refresh_s: float = 3.0,
        tick_s: float = 1.0,
        machines_refresh_s: float = 30.0,
    ) -> None:
        self.store = store
        self.log = log
        self.pubsub = pubsub
        self.catalog = catalog
        self.last_seen = last_seen
        self.notifier = notifier
        self.group = group
        self.refresh_s = refresh_s
        self.tick_s = tick_s
        self.machines_refresh_s = machines_refresh_s
        self.core = Evaluator()
        self.epoch = uuid.uuid4().hex[:12]
        self.raised = 0
        self.cleared = 0
        self._seq: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._machines_at = 0.0
        self._started_ms = 0
        self._failures = Throttled(logging.getLogger("livedata.alerts"))

    async def run(self) -> None:
        """Evaluate until cancelled."""
        with observe.log_context(role="alerts"):
            self._started_ms = int(time.time() * 1000)
            await self._load()
            tasks = [
                asyncio.create_task(self._consume(), name="alerts-consume"),
                asyncio.create_task(self._clock(), name="alerts-clock"),
            ]
            if self.notifier is not None:
                tasks.append(asyncio.create_task(self.notifier.run(), name="alerts-notify"))
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _load(self) -> None:
        """Rules and active alerts at start, retried until the database answers."""
        delays = backoff(1.0, 30.0)
        while True:
            try:
                await self.refresh()
                return
            except BackendError as exc:
                delay = next(delays)
                log.error("cannot load alert rules, retrying in %.0f s: %s", delay, exc)
                await asyncio.sleep(delay)

    async def refresh(self) -> None:
        """Reload the enabled rules and the stored active alerts."""
        async with self._lock:  # not between a raise and its storing
            rules = await self.store.enabled_specs()
            active = await self.store.active_alerts()
            self.core.set_rules(rules)
            self.core.sync_active(
                {(a.rule_id, a.chassis_id): a.raised_ms for a in active if a.rule_id is not None}
            )
        if time.monotonic() - self._machines_at >= self.machines_refresh_s:
            self._machines_at = time.monotonic()
            await self._watch_machines()

    async def _watch_machines(self) -> None:
        for org in self.core.nodata_orgs():
            for machine in await self.catalog.meta.list_machines(org):
                self.core.watch(org, machine.chassis_id, machine.model, self._started_ms)

    async def _clock(self) -> None:
        last_refresh = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                if time.monotonic() - last_refresh >= self.refresh_s:
                    last_refresh = time.monotonic()
                    await self.refresh()
                await self.tick(int(time.time() * 1000))
            except LivedataError as exc:
                log.error("alert clock: %s", exc)

    async def tick(self, now_ms: int) -> None:
        async with self._lock:
            events = self.core.tick(now_ms)
            seen = await self._last_seen(events)
            confirmed: list[AlertEvent] = []
            for event in events:
                if self.last_seen is not None:
                    latest = seen[event.tenant, event.rule.msg_type][event.chassis]
                    if isinstance(latest, BackendError):  # unknown: asked again next tick
                        self.core.revert(event)
                        self._failures.failed(
                            "last_seen",
                            "nodata raises wait: cannot check the last data: %s",
                            latest,
                        )
                        continue
                    self._failures.recovered("last_seen", "nodata raises are checked again")
                    nodata_ms = (event.rule.nodata_seconds or 0) * 1000
                    if latest is not None and now_ms - latest < nodata_ms:
                        self.core.retract(event, latest)
                        continue
                confirmed.append(event)
            await self._deliver(confirmed)

    async def _last_seen(
        self, events: list[AlertEvent]
    ) -> dict[tuple[str, str | None], dict[str, int | BackendError | None]]:
        """The nodata check of ``events``: one :data:`LastSeen` call per organisation and
        message type for all their machines (a burst of raises after a start costs the store
        a few batched reads, not one per machine)."""
        if self.last_seen is None:
            return {}
        groups: dict[tuple[str, str | None], list[str]] = {}
        for event in events:
            groups.setdefault((event.tenant, event.rule.msg_type), []).append(event.chassis)
        seen: dict[tuple[str, str | None], dict[str, int | BackendError | None]] = {}
        for (tenant, msg_type), chassis in groups.items():
            try:
                seen[tenant, msg_type] = await self.last_seen(tenant, chassis, msg_type)
            except BackendError as exc:
                seen[tenant, msg_type] = dict.fromkeys(chassis, exc)
        return seen

    async def _consume(self) -> None:
        async for batch in self.log.consume(self.group):
            await self.handle(batch)

    async def handle(self, batch: list[Record]) -> None:
        """Evaluate a batch of records from the log.

        A batch of organisations without rules is passed over at once (the usual case
        for most of a fleet); each machine's model is looked up once per batch; a record's
        values are parsed only when a value rule applies to it (:meth:`Evaluator.feed_record`).
        A record whose values cannot be parsed is skipped and logged (once a minute with a
        count).
        """
        core = self.core
        if not core.has_any_rules():
            return
        now = int(time.time() * 1000)
        oldest = now - STALE_MS
        realtime = Kind.REALTIME
        models: dict[tuple[str, str], str | None] = {}
        async with self._lock:
            events: list[AlertEvent] = []
            for record in batch:
                if record.kind is not realtime or record.ts < oldest:
                    continue
                tenant, chassis = record.tenant, record.chassis
                if not core.has_rules(tenant):
                    continue
                key = (tenant, chassis)
                if key in models:
                    model = models[key]
                else:
                    info = await self.catalog.machine(tenant, chassis)
                    model = models[key] = info.model if info is not None else None
                try:
                    found = core.feed_record(record, model, now)
                except ValueError as exc:
                    self._failures.failed(
                        "values",
                        "skipped a record of %s whose values cannot be read: %s",
                        chassis,
                        exc,
                    )
                    continue
                if found:
                    events.extend(found)
            await self._deliver(events)

    async def _deliver(self, events: list[AlertEvent]) -> None:
        for event in events:
            try:
                row = await self._persist(event)
            except BackendError as exc:
                log.error("cannot store alert %s of %s: %s", event.kind, event.chassis, exc)
                self.core.revert(event)
                continue
            if row is None:
                continue
            if event.kind == "raise":
                self.raised += 1
            else:
                self.cleared += 1
            await self._publish(event, row)
            if self.notifier is not None:
                self.notifier.wake()

    async def _persist(self, event: AlertEvent) -> dict[str, Any] | None:
        payload: dict[str, Any] = {
            "event": "raised" if event.kind == "raise" else "cleared",
            "org": event.tenant,
        }
        payload["rule"] = {
            "id": event.rule.id,
            "name": event.rule.name,
            "description": event.rule.describe(),
            "severity": event.rule.severity,
        }
        if event.kind == "raise":
            row = await self.store.raise_alert(
                event.rule, event.chassis, event.ts, event.value, event.message, payload
            )
            if row is None:
                log.info("alert of rule %d for %s is already active", event.rule.id, event.chassis)
        else:
            row = await self.store.clear_alert(
                event.rule, event.chassis, event.ts, event.value, payload
            )
        if row is None:
            return None
        with observe.log_context(machine=event.chassis):
            log.info("alert %s: %s (%s)", payload["event"], event.rule.name, event.message)
        return {**payload, "alert": alert_dict(row)}

    async def _publish(self, event: AlertEvent, body: dict[str, Any]) -> None:
        channel = alerts_channel(event.tenant)
        await publish_alert(self.pubsub, channel, body, self.epoch, self._next_seq(channel))

    def _next_seq(self, channel: str) -> int:
        seq = self._seq.get(channel, 0) + 1
        self._seq[channel] = seq
        return seq


async def publish_alert(
    pubsub: PubSub, channel: str, body: dict[str, Any], epoch: str, seq: int
) -> None:
    """Publish an alert event in the live-channel shape (``values`` = the event)."""
    alert = body.get("alert") or {}
    ts = alert.get("clearedMs") or alert.get("raisedMs") or int(time.time() * 1000)
    message = orjson.dumps({"ts": ts, "seq": seq, "epoch": epoch, "values": body})
    try:
        await pubsub.publish(channel, message)
    except BusError as exc:
        log.warning("publishing an alert on %s failed: %s", channel, exc)


def alert_role(rt: Runtime) -> AlertRole:
    """The alert role of a runtime: its store, log, pub/sub and catalog, notifications by the
    runtime's SMTP settings, nodata raises checked against its telemetry store."""
    store = AlertStore(rt.meta)

    async def last_seen(
        tenant: str, machines: Sequence[str], msg_type: str | None
    ) -> dict[str, int | BackendError | None]:
        """Per machine the newest timestamp in the store or the live channel's history,
        whichever is newer: the store lags while ingest spills, the history is gone while
        Redis restarts.  The store is read once for all the machines
        (:meth:`~livedata.store.base.Store.latest_many`); a machine gets the
        :class:`BackendError` only when neither answered."""
        types = [msg_type] if msg_type else [t.value for t in MsgType]
        store_failure: BackendError | None = None
        try:
            stored = await rt.store.latest_many(tenant, machines)
        except BackendError as exc:
            store_failure, stored = exc, {}
        seen: dict[str, int | BackendError | None] = {}
        for chassis in machines:
            newest = stored.get(chassis, {})
            stamps: list[int | None] = [newest.get(t) for t in types]
            failures: list[BackendError] = []
            for t in types:
                try:
                    history = await rt.pubsub.history(live_channel(tenant, chassis, t))
                except BackendError as exc:
                    failures.append(exc)
                else:
                    stamps.append(int(as_live(history[-1]).head["ts"]) if history else None)
            if store_failure is not None and len(failures) == len(types):
                seen[chassis] = store_failure
            else:
                seen[chassis] = max((s for s in stamps if s is not None), default=None)
        return seen

    notifier = Notifier(
        store,
        smtp_host=rt.settings.smtp_host,
        smtp_port=rt.settings.smtp_port,
        smtp_from=rt.settings.smtp_from,
        allowed_networks=parse_networks(rt.settings.webhook_allowed_networks),
    )
    return AlertRole(store, rt.log, rt.pubsub, rt.catalog, last_seen=last_seen, notifier=notifier)


__all__ = [
    "STALE_MS",
    "AlertEvent",
    "AlertRole",
    "Evaluator",
    "alert_role",
    "alerts_channel",
    "clears",
    "holds",
    "publish_alert",
]
