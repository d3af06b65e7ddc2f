"""Alert rules, alerts and their notifications in the metadata database.

Three tables beside those of :mod:`livedata.metadata.tables` (same ``Base``,
created by the migration ``0002_alerts``):

* ``alert_rules`` -- what to watch: a *value* rule compares one field of one
  message type with a threshold (``>``, ``>=``, ``<``, ``<=``, ``==``, ``!=``, or
  ``outside`` a low..high range), for a duration, with an optional clear
  threshold (hysteresis); a *nodata* rule fires when a machine sent nothing (of
  one message type, or of any) for ``nodata_seconds``.  A rule applies to all
  machines of its organisation, to those of one model, or to one machine.
* ``alerts`` -- one row per raise: active until cleared, acknowledged by someone
  (with a comment) or not.  ``active_key`` is ``"{rule}:{chassis}"`` while the
  alert is active and NULL after; it is unique, so the database itself refuses a
  second active alert for the same rule and machine, whichever evaluator copy or
  restart tries it.
* ``notifications`` -- one row per alert event (raised, cleared) and target
  (webhook URL, e-mail address): pending until sent, retried with backoff, failed
  after the last attempt, visible through the API either way.

:class:`AlertStore` is the repository the API and the alert role use;
:func:`validate_rule` refuses invalid rules with a message that says why.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, replace
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    delete,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from livedata.errors import Conflict, InputError, NotFound
from livedata.metadata import Metadata
from livedata.metadata.tables import Base
from livedata.model import MsgType, valid_id

CONDITIONS = (">", ">=", "<", "<=", "==", "!=", "outside")
HYSTERESIS_CONDITIONS = (">", ">=", "<", "<=", "outside")
SCOPES = ("all", "model", "machine")
SEVERITIES = ("info", "warning", "critical")
KINDS = ("value", "nodata")
ALERT_STATES = ("active", "cleared")
NOTIFY_STATUSES = ("pending", "sent", "failed")
MAX_FOR_SECONDS = 86_400.0
MAX_NODATA_SECONDS = 7 * 86_400.0
MIN_NODATA_SECONDS = 1.0
MAX_EMAILS = 20
MAX_RULES_PER_ORG = 1_000
_EMAIL = re.compile(r"^[^@\s<>,;\"]{1,64}@[A-Za-z0-9.\-]{1,253}\Z")


def now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- tables


class AlertRule(Base):
    __tablename__ = "alert_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    kind: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(16))
    scope_value: Mapped[str | None] = mapped_column(String(64))
    msg_type: Mapped[str | None] = mapped_column(String(64))
    field: Mapped[str | None] = mapped_column(String(64))
    condition: Mapped[str | None] = mapped_column(String(8))
    threshold: Mapped[float | None] = mapped_column(Float)
    threshold_high: Mapped[float | None] = mapped_column(Float)
    clear_threshold: Mapped[float | None] = mapped_column(Float)
    clear_threshold_high: Mapped[float | None] = mapped_column(Float)
    for_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    nodata_seconds: Mapped[float | None] = mapped_column(Float)
    severity: Mapped[str] = mapped_column(String(16))
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_secret: Mapped[str | None] = mapped_column(String(200))
    email_to: Mapped[list[Any]] = mapped_column(JSON)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)


class Alert(Base):
    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_org_state", "org_id", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    rule_id: Mapped[int | None] = mapped_column(
        ForeignKey("alert_rules.id", ondelete="SET NULL"), index=True
    )
    rule_name: Mapped[str] = mapped_column(String(200))
    severity: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    msg_type: Mapped[str | None] = mapped_column(String(64))
    field: Mapped[str | None] = mapped_column(String(64))
    chassis_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    active_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    raised_ms: Mapped[int] = mapped_column(BigInteger)
    cleared_ms: Mapped[int | None] = mapped_column(BigInteger)
    value: Mapped[float | None] = mapped_column(Float)
    clear_value: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str] = mapped_column(Text)
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    acknowledged_ms: Mapped[int | None] = mapped_column(BigInteger)
    comment: Mapped[str | None] = mapped_column(Text)


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_due", "status", "next_attempt_ms"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_ms: Mapped[int] = mapped_column(BigInteger)
    locked_until_ms: Mapped[int | None] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    sent_ms: Mapped[int | None] = mapped_column(BigInteger)


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """A rule as the evaluator and the API see it (no I/O, no secrets).

    For ``outside``, ``threshold`` is the low and ``threshold_high`` the high end;
    the alert holds while the value is below low or above high.  The clear
    threshold(s) give hysteresis: an active ``>``/``>=`` alert clears only when the
    value is below ``clear_threshold``, a ``<``/``<=`` one when it is above it, an
    ``outside`` one when it is back between ``clear_threshold`` and
    ``clear_threshold_high``; without them an alert clears as soon as its
    condition no longer holds.
    """

    id: int
    org: str
    name: str
    kind: str = "value"
    scope: str = "all"
    scope_value: str | None = None
    msg_type: str | None = None
    field: str | None = None
    condition: str | None = None
    threshold: float | None = None
    threshold_high: float | None = None
    clear_threshold: float | None = None
    clear_threshold_high: float | None = None
    for_seconds: float = 0.0
    nodata_seconds: float | None = None
    severity: str = "warning"
    enabled: bool = True
    webhook_url: str | None = None
    email_to: tuple[str, ...] = ()

    def applies_to(self, chassis: str, model: str | None) -> bool:
        """Whether the rule's scope covers a machine."""
        if self.scope == "all":
            return True
        if self.scope == "model":
            return model is not None and model == self.scope_value
        return chassis == self.scope_value

    def identity(self) -> tuple[Any, ...]:
        """What an alert of this rule is about; when it changes, active alerts no longer fit."""
        return (self.kind, self.scope, self.scope_value, self.msg_type, self.field)

    def describe(self) -> str:
        """``engine_rpm > 1200 for 2 s`` or ``no data for 30 s``."""
        if self.kind == "nodata":
            what = f" of {self.msg_type}" if self.msg_type else ""
            return f"no data{what} for {_num(self.nodata_seconds or 0)} s"
        if self.condition == "outside":
            text = f"{self.field} outside {_num(self.threshold)}..{_num(self.threshold_high)}"
        else:
            text = f"{self.field} {self.condition} {_num(self.threshold)}"
        if self.for_seconds:
            text += f" for {_num(self.for_seconds)} s"
        return text


def _num(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:g}"


def _finite(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{name} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise InputError(f"{name} must be a finite number")
    return number


def validate_rule(spec: RuleSpec) -> RuleSpec:
    """``spec`` normalised (irrelevant parts dropped), or :class:`InputError` saying why not."""
    name = spec.name.strip()
    if not name:
        raise InputError("name is empty")
    if len(name) > 200:
        raise InputError("name is longer than 200 characters")
    if spec.kind not in KINDS:
        raise InputError(f"kind {spec.kind!r} is unknown: use value or nodata")
    if spec.severity not in SEVERITIES:
        raise InputError(f"severity {spec.severity!r} is unknown: use info, warning or critical")
    if spec.scope not in SCOPES:
        raise InputError(f"scope {spec.scope!r} is unknown: use all, model or machine")
    scope_value = spec.scope_value.strip() if spec.scope_value else None
    if spec.scope == "all":
        scope_value = None
    elif not scope_value:
        raise InputError(f"scope {spec.scope} needs the {spec.scope}'s name in scopeValue")
    elif not valid_id(scope_value):
        raise InputError(f"scopeValue {scope_value[:80]!r} is not a valid {spec.scope} name")
    msg_type = spec.msg_type or None
    if msg_type is not None and msg_type not in set(MsgType):
        raise InputError(f"msgType {msg_type!r} is unknown: use one of {', '.join(MsgType)}")
    for_seconds = _finite(spec.for_seconds, "forSeconds") or 0.0
    if not 0 <= for_seconds <= MAX_FOR_SECONDS:
        raise InputError(f"forSeconds must be between 0 and {MAX_FOR_SECONDS:g}")
    emails = tuple(e.strip() for e in spec.email_to if e.strip())
    if len(emails) > MAX_EMAILS:
        raise InputError(f"{len(emails)} e-mail recipients; at most {MAX_EMAILS}")
    bad = [e for e in emails if not _EMAIL.match(e)]
    if bad:
        raise InputError(f"{bad[0][:100]!r} is not an e-mail address")
    url = (spec.webhook_url or "").strip() or None
    if url is not None:
        if not re.match(r"^https?://[^\s/]+", url):
            raise InputError("the webhook URL must start with http:// or https://")
        if len(url) > 2000:
            raise InputError("the webhook URL is longer than 2000 characters")
    base = replace(spec, name=name, scope_value=scope_value, email_to=emails, webhook_url=url)
    if spec.kind == "nodata":
        seconds = _finite(spec.nodata_seconds, "nodataSeconds")
        if seconds is None:
            raise InputError("a nodata rule needs nodataSeconds")
        if not MIN_NODATA_SECONDS <= seconds <= MAX_NODATA_SECONDS:
            raise InputError(
                f"nodataSeconds must be between {MIN_NODATA_SECONDS:g} and {MAX_NODATA_SECONDS:g}"
            )
        return replace(
            base,
            msg_type=msg_type,
            field=None,
            condition=None,
            threshold=None,
            threshold_high=None,
            clear_threshold=None,
            clear_threshold_high=None,
            for_seconds=0.0,
            nodata_seconds=seconds,
        )
    if msg_type is None:
        raise InputError("a value rule needs msgType")
    fld = (spec.field or "").strip()
    if not fld:
        raise InputError("a value rule needs a field")
    if not valid_id(fld):
        raise InputError(f"field {fld[:80]!r} is not a valid field name")
    if spec.condition not in CONDITIONS:
        raise InputError(
            f"condition {spec.condition!r} is unknown: use one of {' '.join(CONDITIONS)}"
        )
    cond = spec.condition
    threshold = _finite(spec.threshold, "threshold")
    high = _finite(spec.threshold_high, "thresholdHigh")
    clear = _finite(spec.clear_threshold, "clearThreshold")
    clear_high = _finite(spec.clear_threshold_high, "clearThresholdHigh")
    if threshold is None:
        raise InputError("a value rule needs a threshold" + (" (low)" if cond == "outside" else ""))
    if cond == "outside":
        if high is None:
            raise InputError("outside needs low and high (threshold and thresholdHigh)")
        if not threshold < high:
            raise InputError("outside needs low < high")
        if (clear is None) != (clear_high is None):
            raise InputError("outside needs both clear thresholds (low and high) or neither")
        if (
            clear is not None
            and clear_high is not None
            and not threshold < clear <= clear_high < high
        ):
            raise InputError(
                "the clear range of outside must lie inside low..high "
                "(low < clear low <= clear high < high)"
            )
    else:
        high = None
        clear_high = None
        if clear is not None:
            if cond in ("==", "!="):
                raise InputError(
                    f"a clear threshold applies to >, >=, <, <= and outside, not to {cond}"
                )
            if cond in (">", ">=") and not clear < threshold:
                raise InputError(f"clear threshold must be below the threshold for {cond}")
            if cond in ("<", "<=") and not clear > threshold:
                raise InputError(f"clear threshold must be above the threshold for {cond}")
    return replace(
        base,
        msg_type=msg_type,
        field=fld,
        condition=cond,
        threshold=threshold,
        threshold_high=high,
        clear_threshold=clear,
        clear_threshold_high=clear_high,
        for_seconds=for_seconds,
        nodata_seconds=None,
    )


def spec_of(row: AlertRule) -> RuleSpec:
    return RuleSpec(
        id=row.id,
        org=row.org_id,
        name=row.name,
        kind=row.kind,
        scope=row.scope,
        scope_value=row.scope_value,
        msg_type=row.msg_type,
        field=row.field,
        condition=row.condition,
        threshold=row.threshold,
        threshold_high=row.threshold_high,
        clear_threshold=row.clear_threshold,
        clear_threshold_high=row.clear_threshold_high,
        for_seconds=row.for_seconds or 0.0,
        nodata_seconds=row.nodata_seconds,
        severity=row.severity,
        enabled=row.enabled,
        webhook_url=row.webhook_url,
        email_to=tuple(row.email_to or ()),
    )


def rule_dict(row: AlertRule) -> dict[str, Any]:
    """The API's view of a rule; the webhook secret is write-only (``hasSecret`` tells)."""
    return {
        "id": row.id,
        "name": row.name,
        "enabled": row.enabled,
        "kind": row.kind,
        "scope": row.scope,
        "scopeValue": row.scope_value,
        "msgType": row.msg_type,
        "field": row.field,
        "condition": row.condition,
        "threshold": row.threshold,
        "thresholdHigh": row.threshold_high,
        "clearThreshold": row.clear_threshold,
        "clearThresholdHigh": row.clear_threshold_high,
        "forSeconds": row.for_seconds,
        "nodataSeconds": row.nodata_seconds,
        "severity": row.severity,
        "notify": {
            "webhook": {"url": row.webhook_url, "hasSecret": bool(row.webhook_secret)}
            if row.webhook_url
            else None,
            "email": list(row.email_to or ()),
        },
        "description": spec_of(row).describe(),
        "createdMs": row.created_ms,
        "updatedMs": row.updated_ms,
    }


def alert_dict(row: Alert) -> dict[str, Any]:
    return {
        "id": row.id,
        "ruleId": row.rule_id,
        "ruleName": row.rule_name,
        "severity": row.severity,
        "kind": row.kind,
        "msgType": row.msg_type,
        "field": row.field,
        "chassisId": row.chassis_id,
        "state": row.state,
        "raisedMs": row.raised_ms,
        "clearedMs": row.cleared_ms,
        "value": row.value,
        "clearValue": row.clear_value,
        "message": row.message,
        "acknowledged": row.acknowledged_ms is not None,
        "acknowledgedBy": row.acknowledged_by,
        "acknowledgedMs": row.acknowledged_ms,
        "comment": row.comment,
    }


def notification_dict(row: Notification) -> dict[str, Any]:
    return {
        "id": row.id,
        "alertId": row.alert_id,
        "event": row.event,
        "channel": row.channel,
        "target": row.target,
        "status": row.status,
        "attempts": row.attempts,
        "lastError": row.last_error,
        "nextAttemptMs": row.next_attempt_ms if row.status == "pending" else None,
        "createdMs": row.created_ms,
        "sentMs": row.sent_ms,
    }


def active_key(rule_id: int, chassis: str) -> str:
    return f"{rule_id}:{chassis}"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A notification claimed for sending, with what is needed to send it."""

    id: int
    org: str
    alert_id: int
    rule_id: int | None
    channel: str
    target: str
    payload: str
    attempts: int
    secret: str | None


# --------------------------------------------------------------------------- store


class AlertStore:
    """Rules, alerts and notifications of every organisation; shares the metadata engine."""

    def __init__(self, meta: Metadata) -> None:
        self.meta = meta

    # rules ----------------------------------------------------------------------

    async def list_rules(self, org_id: str) -> list[AlertRule]:
        async with self.meta.session() as s:
            query = select(AlertRule).where(AlertRule.org_id == org_id).order_by(AlertRule.id)
            return list((await s.scalars(query)).all())

    async def enabled_specs(self) -> list[RuleSpec]:
        """Every enabled rule of every organisation (what the evaluator runs)."""
        async with self.meta.session() as s:
            rows = await s.scalars(select(AlertRule).where(AlertRule.enabled.is_(True)))
            return [spec_of(r) for r in rows.all()]

    async def get_rule(self, org_id: str, rule_id: int) -> AlertRule:
        async with self.meta.session() as s:
            row = await s.get(AlertRule, rule_id)
        if row is None or row.org_id != org_id:
            raise NotFound(f"alert rule {rule_id} not found")
        return row

    async def create_rule(self, spec: RuleSpec, secret: str | None = None) -> AlertRule:
        spec = validate_rule(spec)
        await self.meta.require_org(spec.org)
        stamp = now_ms()
        async with self.meta.session() as s:
            rules = await s.scalars(select(AlertRule.id).where(AlertRule.org_id == spec.org))
            if len(rules.all()) >= MAX_RULES_PER_ORG:
                raise Conflict(f"the organisation has {MAX_RULES_PER_ORG} rules already")
            row = AlertRule(org_id=spec.org, created_ms=stamp)
            _apply(row, spec, secret, stamp)
            s.add(row)
        return row

    async def update_rule(
        self, spec: RuleSpec, secret: str | None = None, keep_secret: bool = True
    ) -> AlertRule:
        """Replace a rule; its active alerts are cleared when it is disabled or when what it
        watches (kind, scope, message type, field) changed -- they no longer fit."""
        spec = validate_rule(spec)
        stamp = now_ms()
        async with self.meta.session() as s:
            row = await s.get(AlertRule, spec.id)
            if row is None or row.org_id != spec.org:
                raise NotFound(f"alert rule {spec.id} not found")
            before = spec_of(row)
            if keep_secret and secret is None:
                secret = row.webhook_secret
            _apply(row, spec, secret, stamp)
            if not spec.enabled or before.identity() != spec.identity():
                await _clear_rule_alerts(s, row.id, stamp)
        return row

    async def delete_rule(self, org_id: str, rule_id: int) -> None:
        """Delete a rule; its active alerts are cleared (their history stays)."""
        stamp = now_ms()
        async with self.meta.session() as s:
            row = await s.get(AlertRule, rule_id)
            if row is None or row.org_id != org_id:
                raise NotFound(f"alert rule {rule_id} not found")
            await _clear_rule_alerts(s, rule_id, stamp)
            await s.delete(row)

    async def secret_of(self, rule_id: int) -> str | None:
        async with self.meta.session() as s:
            row = await s.get(AlertRule, rule_id)
            return row.webhook_secret if row is not None else None

    # alerts ---------------------------------------------------------------------

    async def active_alerts(self) -> list[Alert]:
        """Every active alert of every organisation (the evaluator's state after a restart)."""
        async with self.meta.session() as s:
            rows = await s.scalars(select(Alert).where(Alert.state == "active"))
            return list(rows.all())

    async def list_alerts(
        self,
        org_id: str,
        state: str | None = None,
        chassis: str | None = None,
        limit: int = 200,
    ) -> list[Alert]:
        if state is not None and state not in ALERT_STATES:
            raise InputError(f"state {state!r} is unknown: use active or cleared")
        async with self.meta.session() as s:
            query = select(Alert).where(Alert.org_id == org_id)
            if state is not None:
                query = query.where(Alert.state == state)
            if chassis is not None:
                query = query.where(Alert.chassis_id == chassis)
            query = query.order_by(Alert.raised_ms.desc(), Alert.id.desc()).limit(limit)
            return list((await s.scalars(query)).all())

    async def get_alert(self, org_id: str, alert_id: int) -> Alert:
        async with self.meta.session() as s:
            row = await s.get(Alert, alert_id)
        if row is None or row.org_id != org_id:
            raise NotFound(f"alert {alert_id} not found")
        return row

    async def raise_alert(
        self,
        rule: RuleSpec,
        chassis: str,
        ts: int,
        value: float | None,
        message: str,
        payload: dict[str, Any] | None = None,
    ) -> Alert | None:
        """Store a new active alert and its notifications in one transaction.

        ``None`` when the rule already has an active alert for the machine (raised by
        another evaluator copy, or before a restart): the database refuses the
        duplicate.  ``payload`` is the body each notification will carry (``id`` is
        filled in here).
        """
        stamp = now_ms()
        try:
            async with self.meta.session() as s:
                if await s.get(AlertRule, rule.id) is None:
                    return None  # deleted meanwhile
                row = Alert(
                    org_id=rule.org,
                    rule_id=rule.id,
                    rule_name=rule.name,
                    severity=rule.severity,
                    kind=rule.kind,
                    msg_type=rule.msg_type,
                    field=rule.field,
                    chassis_id=chassis,
                    state="active",
                    active_key=active_key(rule.id, chassis),
                    raised_ms=ts,
                    value=value,
                    message=message,
                )
                s.add(row)
                await s.flush()
                _notify(s, row, rule, "raised", payload, stamp)
        except Conflict:
            return None
        return row

    async def clear_alert(
        self,
        rule: RuleSpec,
        chassis: str,
        ts: int,
        value: float | None,
        payload: dict[str, Any] | None = None,
    ) -> Alert | None:
        """Mark the active alert of ``rule`` and ``chassis`` cleared; ``None`` when there is none."""
        stamp = now_ms()
        async with self.meta.session() as s:
            query = select(Alert).where(Alert.active_key == active_key(rule.id, chassis))
            row = (await s.scalars(query)).first()
            if row is None:
                return None
            row.state = "cleared"
            row.active_key = None
            row.cleared_ms = max(ts, row.raised_ms)
            row.clear_value = value
            await s.flush()
            _notify(s, row, rule, "cleared", payload, stamp)
        return row

    async def acknowledge(self, org_id: str, alert_id: int, who: str, comment: str) -> Alert:
        async with self.meta.session() as s:
            row = await s.get(Alert, alert_id)
            if row is None or row.org_id != org_id:
                raise NotFound(f"alert {alert_id} not found")
            if row.acknowledged_ms is not None:
                raise Conflict(
                    f"alert {alert_id} was already acknowledged by {row.acknowledged_by}"
                )
            row.acknowledged_by = who
            row.acknowledged_ms = now_ms()
            row.comment = comment or None
        return row

    # notifications --------------------------------------------------------------

    async def notifications(self, org_id: str, alert_id: int) -> list[Notification]:
        await self.get_alert(org_id, alert_id)
        async with self.meta.session() as s:
            query = (
                select(Notification)
                .where(Notification.alert_id == alert_id)
                .order_by(Notification.id)
            )
            return list((await s.scalars(query)).all())

    async def claim_due(self, limit: int = 20, lease_ms: int = 60_000) -> list[Delivery]:
        """Pending notifications whose time has come, leased to the caller for ``lease_ms``.

        A lease keeps other notifier copies off them; a crash before
        :meth:`finish` only delays them by the lease.
        """
        stamp = now_ms()
        claimed: list[Delivery] = []
        async with self.meta.session() as s:
            query = (
                select(Notification)
                .where(
                    Notification.status == "pending",
                    Notification.next_attempt_ms <= stamp,
                    or_(
                        Notification.locked_until_ms.is_(None),
                        Notification.locked_until_ms < stamp,
                    ),
                )
                .order_by(Notification.next_attempt_ms)
                .limit(limit)
            )
            for row in (await s.scalars(query)).all():
                result = await s.execute(
                    update(Notification)
                    .where(
                        Notification.id == row.id,
                        or_(
                            Notification.locked_until_ms.is_(None),
                            Notification.locked_until_ms < stamp,
                        ),
                    )
                    .values(locked_until_ms=stamp + lease_ms)
                    .execution_options(synchronize_session=False)
                )
                if not getattr(result, "rowcount", 0):
                    continue
                alert = await s.get(Alert, row.alert_id)
                rule_id = alert.rule_id if alert is not None else None
                secret = None
                if rule_id is not None:
                    rule = await s.get(AlertRule, rule_id)
                    secret = rule.webhook_secret if rule is not None else None
                claimed.append(
                    Delivery(
                        row.id,
                        row.org_id,
                        row.alert_id,
                        rule_id,
                        row.channel,
                        row.target,
                        row.payload,
                        row.attempts,
                        secret,
                    )
                )
        return claimed

    async def finish(
        self, notification_id: int, error: str | None, retry_at_ms: int | None
    ) -> None:
        """Record an attempt: sent (``error`` None), retried at ``retry_at_ms``, or failed."""
        stamp = now_ms()
        async with self.meta.session() as s:
            row = await s.get(Notification, notification_id)
            if row is None:
                return
            row.attempts += 1
            row.locked_until_ms = None
            if error is None:
                row.status, row.sent_ms, row.last_error = "sent", stamp, None
            else:
                row.last_error = error[:2000]
                if retry_at_ms is None:
                    row.status = "failed"
                else:
                    row.next_attempt_ms = retry_at_ms
        return None

    async def next_due_ms(self) -> int | None:
        """When the next pending notification is due (``None``: nothing pending)."""
        async with self.meta.session() as s:
            query = (
                select(Notification.next_attempt_ms)
                .where(Notification.status == "pending")
                .order_by(Notification.next_attempt_ms)
                .limit(1)
            )
            return (await s.scalars(query)).first()

    async def purge_org(self, org_id: str) -> None:
        """Delete an organisation's rules and alerts (tests, org removal)."""
        async with self.meta.session() as s:
            await s.execute(delete(Alert).where(Alert.org_id == org_id))
            await s.execute(delete(AlertRule).where(AlertRule.org_id == org_id))


def _apply(row: AlertRule, spec: RuleSpec, secret: str | None, stamp: int) -> None:
    row.name = spec.name
    row.enabled = spec.enabled
    row.kind = spec.kind
    row.scope = spec.scope
    row.scope_value = spec.scope_value
    row.msg_type = spec.msg_type
    row.field = spec.field
    row.condition = spec.condition
    row.threshold = spec.threshold
    row.threshold_high = spec.threshold_high
    row.clear_threshold = spec.clear_threshold
    row.clear_threshold_high = spec.clear_threshold_high
    row.for_seconds = spec.for_seconds
    row.nodata_seconds = spec.nodata_seconds
    row.severity = spec.severity
    row.webhook_url = spec.webhook_url
    row.webhook_secret = (secret or None) if spec.webhook_url else None
    row.email_to = list(spec.email_to)
    row.updated_ms = stamp


async def _clear_rule_alerts(s: Any, rule_id: int, stamp: int) -> None:
    await s.execute(
        update(Alert)
        .where(Alert.rule_id == rule_id, Alert.state == "active")
        .values(state="cleared", active_key=None, cleared_ms=stamp)
        .execution_options(synchronize_session=False)
    )


def _notify(
    s: Any,
    alert: Alert,
    rule: RuleSpec,
    event: str,
    payload: dict[str, Any] | None,
    stamp: int,
) -> None:
    body = dict(payload or {})
    body.setdefault("event", event)
    body["alert"] = {**alert_dict(alert), **body.get("alert", {}), "id": alert.id}
    encoded = orjson.dumps(body).decode()
    targets: list[tuple[str, str]] = []
    if rule.webhook_url:
        targets.append(("webhook", rule.webhook_url))
    targets.extend(("email", address) for address in rule.email_to)
    for channel, target in targets:
        s.add(
            Notification(
                alert_id=alert.id,
                org_id=alert.org_id,
                event=event,
                channel=channel,
                target=target,
                payload=encoded,
                status="pending",
                attempts=0,
                next_attempt_ms=stamp,
                created_ms=stamp,
            )
        )


__all__ = [
    "ALERT_STATES",
    "CONDITIONS",
    "KINDS",
    "SCOPES",
    "SEVERITIES",
    "Alert",
    "AlertRule",
    "AlertStore",
    "Delivery",
    "Notification",
    "RuleSpec",
    "active_key",
    "alert_dict",
    "notification_dict",
    "rule_dict",
    "spec_of",
    "validate_rule",
]
