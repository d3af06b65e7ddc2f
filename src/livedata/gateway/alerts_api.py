"""Alert rules, alerts and the fleet summary over HTTP; alert events relayed to browsers.

Routes (errors are ``{"error":{"code","message"}}``: 400 invalid input saying
why, 404 unknown or another organisation's object, 409 conflict):

=======================================================  ======================================
``GET/POST /api/resources/{orgId}/alert-rules``          list / create rules
``GET/PUT/DELETE …/alert-rules/{ruleId}``                one rule (PUT replaces it)
``GET …/alerts?state=active|cleared&chassisId=&limit=``  alerts, newest first
``GET …/alerts/{alertId}``                               one alert
``POST …/alerts/{alertId}/ack`` ``{"comment": …}``       acknowledge (once)
``GET …/alerts/{alertId}/notifications``                 webhook / e-mail deliveries and errors
``GET …/fleet?fields=a,b``                               every machine: online, last seen,
                                                         latest values, latest GPS; ``map``:
                                                         the tile URL template and attribution
                                                         (settings ``map_tiles``,
                                                         ``map_attribution``; ``""`` = none)
=======================================================  ======================================

A rule body is ``{"name", "enabled", "kind": "value"|"nodata", "scope":
"all"|"model"|"machine", "scopeValue", "msgType", "field", "condition": ">"|">="|
"<"|"<="|"=="|"!="|"outside", "threshold", "thresholdHigh" (outside: threshold =
low, thresholdHigh = high), "clearThreshold", "clearThresholdHigh", "forSeconds",
"nodataSeconds", "severity": "info"|"warning"|"critical", "notify": {"webhook":
{"url", "secret"}, "email": [addresses]}}``.  The webhook secret is write-only:
rules show ``hasSecret``; a PUT without ``secret`` keeps the stored one.

A rule created, changed or deleted through this API applies at once when this
process runs the alert role too (the embedded shape); other processes' alert roles
reload the rules every 3 s.

Acknowledging records who did it: the signed-in user (operators and admins).

Fleet summary: read from the gateway's one shared fleet state
(:class:`~livedata.gateway.fleet.Fleet`, also Socket.IO's), held for the process's
life once an organisation's summary was asked; it listens to the live channels of
each machine, so a request reads memory, never the telemetry database (each
machine's last values are read from the store once, when the state first meets
it).  A machine is ``online`` while real-time data arrived in the last 5 s.  ``realtime`` (is the machine's stream switched on) is
``null`` = unknown until device commands exist.

The relay (:attr:`AlertsService.relay`, an :class:`~livedata.gateway.relay.OrgRelay` run by
every gateway process): alert events
arrive on the pub/sub channel ``live-stream/{org}/alerts`` (from the alert role,
in this or another process, and from acknowledgements) and are pushed as rows of
the SSE log table ``alerts`` (``/db/watch/alerts``), as Socket.IO
``alert-created`` (raised) and ``alert-updated`` (cleared, acknowledged) to the
organisation's clients, each as it arrives (no queue: the pushes go to the
clients' outboxes, each bounded; pages reload the list from the API on reconnect).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from livedata.errors import InputError
from livedata.gateway.fleet import OrgFleet
from livedata.gateway.relay import OrgRelay
from livedata.gateway.security import principal_of
from livedata.gateway.sio import ALERT_CREATED, ALERT_UPDATED
from livedata.gateway.state import gateway_of
from livedata.metadata.alerts import (
    AlertStore,
    RuleSpec,
    alert_dict,
    notification_dict,
    rule_dict,
)
from livedata.model import MsgType, Name, valid_id
from livedata.pipeline.alerts import alerts_channel, publish_alert
from livedata.pipeline.notify import check_webhook_url, parse_networks

if TYPE_CHECKING:
    from livedata.catalog import Catalog
    from livedata.gateway.fanout import Fanout
    from livedata.gateway.gateway import Gateway
    from livedata.gateway.sio import SocketGateway
    from livedata.metadata import Metadata

log = logging.getLogger("livedata.gateway.alerts")
MAX_FLEET_FIELDS = 50

router = APIRouter(prefix="/api", tags=["alerts"])


# --------------------------------------------------------------------------- bodies


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2000)
    secret: str | None = Field(None, max_length=200)


class NotifyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    webhook: WebhookBody | None = None
    email: list[str] = Field(default_factory=list, max_length=20)


class RuleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    enabled: bool = True
    kind: str = "value"
    scope: str = "all"
    scopeValue: str | None = Field(None, max_length=64)
    msgType: str | None = None
    field: str | None = Field(None, max_length=64)
    condition: str | None = None
    threshold: float | None = None
    thresholdHigh: float | None = None
    clearThreshold: float | None = None
    clearThresholdHigh: float | None = None
    forSeconds: float = 0.0
    nodataSeconds: float | None = None
    severity: str = "warning"
    notify: NotifyBody = Field(default_factory=NotifyBody)


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str = Field("", max_length=2000)


# --------------------------------------------------------------------------- services


def fleet_summary(
    state: OrgFleet, fields: list[str] | None, active: dict[str, int]
) -> dict[str, Any]:
    """The fleet summary of an organisation from the shared fleet state."""
    now = time.monotonic()
    machines = []
    for m in sorted(state.machines.values(), key=lambda m: m.chassis):
        latest = m.latest()
        values = latest if fields is None else {f: latest[f] for f in fields if f in latest}
        online = m.online(now)
        machines.append(
            {
                "chassisId": m.chassis,
                "name": m.name,
                "model": m.model,
                "online": online,
                "status": "online" if online else "offline",
                "lastSeen": m.last_seen,
                "values": values,
                "gps": {"lat": m.gps[0], "lng": m.gps[1], "ts": m.gps[2]} if m.gps else None,
                "activeAlerts": active.get(m.chassis, 0),
            }
        )
    return {
        "org": state.org,
        "timestamp": int(time.time() * 1000),
        "online": sum(1 for m in machines if m["online"]),
        "total": len(machines),
        "machines": machines,
    }


class AlertsService:
    """The alert API's state in one gateway process."""

    def __init__(
        self,
        meta: Metadata,
        hub: Fanout,
        publish_row: Callable[[str, str, dict[str, Any]], None],
        socket: SocketGateway,
    ) -> None:
        """``publish_row(org, table, row)`` feeds the ``alerts`` log table, ``socket`` the
        Socket.IO clients."""
        self.store = AlertStore(meta)
        self.publish_row = publish_row
        self.socket = socket
        self.relay = OrgRelay(hub, meta, "alert", alerts_channel, self.deliver)
        """Alert events of every organisation to this gateway (a supervised task)."""

    def deliver(self, org: str, body: dict[str, Any]) -> None:
        alert = body.get("alert")
        if not isinstance(alert, dict):
            return
        event = str(body.get("event", ""))
        self.publish_row(
            org,
            "alerts",
            {
                "TIME": alert.get("clearedMs") if event == "cleared" else alert.get("raisedMs"),
                "ID": alert.get("id"),
                "EVENT": event,
                "RULE": alert.get("ruleName"),
                "MACHINE": alert.get("chassisId"),
                "SEVERITY": alert.get("severity"),
                "STATE": alert.get("state"),
                "VALUE": alert.get("clearValue") if event == "cleared" else alert.get("value"),
                "MESSAGE": alert.get("message"),
                "ACKNOWLEDGED_BY": alert.get("acknowledgedBy"),
            },
        )
        payload = {**alert, "event": event}
        if event == "raised":
            self.socket.push_org(org, ALERT_CREATED, payload)
        else:
            self.socket.push_org(org, ALERT_UPDATED, payload)


# --------------------------------------------------------------------------- routes


async def _spec(gw: Gateway, org: str, body: RuleBody, rule_id: int = 0) -> RuleSpec:
    if (
        body.scope == "machine"
        and body.scopeValue
        and (
            not valid_id(body.scopeValue) or await gw.catalog.machine(org, body.scopeValue) is None
        )
    ):
        raise InputError(f"scope machine {body.scopeValue!r} is not a machine of {org!r}")
    if body.scope == "model" and body.scopeValue:
        models = {m.model for m in await gw.meta.list_machines(org)}
        if body.scopeValue not in models:
            known = ", ".join(sorted(models)) or "none"
            raise InputError(f"scope model {body.scopeValue!r} has no machines (models: {known})")
    webhook = body.notify.webhook
    if webhook is not None:
        check_webhook_url(webhook.url, parse_networks(gw.settings.webhook_allowed_networks))
    return RuleSpec(
        id=rule_id,
        org=org,
        name=body.name,
        kind=body.kind,
        scope=body.scope,
        scope_value=body.scopeValue,
        msg_type=body.msgType,
        field=body.field,
        condition=body.condition,
        threshold=body.threshold,
        threshold_high=body.thresholdHigh,
        clear_threshold=body.clearThreshold,
        clear_threshold_high=body.clearThresholdHigh,
        for_seconds=body.forSeconds,
        nodata_seconds=body.nodataSeconds,
        severity=body.severity,
        enabled=body.enabled,
        webhook_url=webhook.url if webhook else None,
        email_to=tuple(body.notify.email),
    )


async def _rules_changed(gw: Gateway) -> None:
    """Let this process's alert role use a changed rule at once (others reload within 3 s)."""
    if gw.refresh_alert_rules is not None:
        try:
            await gw.refresh_alert_rules()
        except Exception as exc:  # the periodic reload will catch up
            log.warning("alert role refresh failed: %s", exc)


@router.get("/resources/{orgId}/alert-rules", summary="The organisation's alert rules")
async def list_rules(request: Request, orgId: str) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    rows = await gw.alerts.store.list_rules(orgId)
    return {"rules": [rule_dict(r) for r in rows]}


@router.post("/resources/{orgId}/alert-rules", status_code=201, summary="Create an alert rule")
async def create_rule(request: Request, orgId: str, body: RuleBody) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    service = gw.alerts
    spec = await _spec(gw, orgId, body)
    secret = body.notify.webhook.secret if body.notify.webhook else None
    row = await service.store.create_rule(spec, secret)
    await service.relay.ensure(orgId)
    await _rules_changed(gw)
    return rule_dict(row)


@router.get("/resources/{orgId}/alert-rules/{ruleId}", summary="One alert rule")
async def get_rule(request: Request, orgId: str, ruleId: int) -> dict[str, Any]:
    gw = gateway_of(request)
    return rule_dict(await gw.alerts.store.get_rule(orgId, ruleId))


@router.put("/resources/{orgId}/alert-rules/{ruleId}", summary="Replace an alert rule")
async def update_rule(request: Request, orgId: str, ruleId: int, body: RuleBody) -> dict[str, Any]:
    gw = gateway_of(request)
    service = gw.alerts
    await service.store.get_rule(orgId, ruleId)
    spec = await _spec(gw, orgId, body, ruleId)
    secret = body.notify.webhook.secret if body.notify.webhook else None
    row = await service.store.update_rule(spec, secret)
    await _rules_changed(gw)
    return rule_dict(row)


@router.delete(
    "/resources/{orgId}/alert-rules/{ruleId}", status_code=204, summary="Delete an alert rule"
)
async def delete_rule(request: Request, orgId: str, ruleId: int) -> Response:
    gw = gateway_of(request)
    await gw.alerts.store.delete_rule(orgId, ruleId)
    await _rules_changed(gw)
    return Response(status_code=204)


@router.get("/resources/{orgId}/alerts", summary="Alerts, newest first")
async def list_alerts(
    request: Request,
    orgId: str,
    state: Annotated[str | None, Query(description="active or cleared; default both")] = None,
    chassisId: Annotated[str | None, Query(description="only this machine")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    service = gw.alerts
    await service.relay.ensure(orgId)
    rows = await service.store.list_alerts(orgId, state, chassisId, limit)
    return {"alerts": [alert_dict(a) for a in rows]}


@router.get("/resources/{orgId}/alerts/{alertId}", summary="One alert")
async def get_alert(request: Request, orgId: str, alertId: int) -> dict[str, Any]:
    gw = gateway_of(request)
    return alert_dict(await gw.alerts.store.get_alert(orgId, alertId))


@router.post("/resources/{orgId}/alerts/{alertId}/ack", summary="Acknowledge an alert")
async def acknowledge(
    request: Request, orgId: str, alertId: int, body: AckBody | None = None
) -> dict[str, Any]:
    gw = gateway_of(request)
    service = gw.alerts
    comment = (body.comment if body else "").strip()
    row = await service.store.acknowledge(orgId, alertId, principal_of(request).username, comment)
    alert = alert_dict(row)
    await service.relay.ensure(orgId)
    await publish_alert(
        gw.pubsub,
        alerts_channel(orgId),
        {"event": "acknowledged", "org": orgId, "alert": alert},
        "api",
        0,
    )
    return alert


@router.get(
    "/resources/{orgId}/alerts/{alertId}/notifications",
    summary="The alert's notifications: status, attempts, last error",
)
async def notifications(request: Request, orgId: str, alertId: int) -> dict[str, Any]:
    gw = gateway_of(request)
    rows = await gw.alerts.store.notifications(orgId, alertId)
    return {"notifications": [notification_dict(n) for n in rows]}


@router.get("/resources/{orgId}/fleet", summary="Every machine: online, last seen, latest values")
async def fleet(
    request: Request,
    orgId: str,
    fields: Annotated[str | None, Query(description="comma-separated; default all")] = None,
) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(orgId)
    names: list[str] | None = None
    if fields is not None:
        names = list(dict.fromkeys(f.strip() for f in fields.split(",") if f.strip()))
        if len(names) > MAX_FLEET_FIELDS:
            raise InputError(f"{len(names)} fields; at most {MAX_FLEET_FIELDS}")
        bad = [f for f in names if not valid_id(f)]
        if bad:
            raise InputError(f"invalid field names: {bad[:5]}")
    service = gw.alerts
    await service.relay.ensure(orgId)
    state = await gw.fleet.keep(orgId)
    active: dict[str, int] = {}
    for alert in await service.store.list_alerts(orgId, "active", limit=1000):
        active[alert.chassis_id] = active.get(alert.chassis_id, 0) + 1
    summary = fleet_summary(state, names, active)
    statuses = gw.status
    for machine in summary["machines"]:
        machine["realtime"] = statuses.known_realtime(orgId, machine["chassisId"])
    summary["fields"] = await _field_info(gw.catalog, orgId, state, names)
    summary["map"] = {"tiles": gw.settings.map_tiles, "attribution": gw.settings.map_attribution}
    return summary


async def _field_info(
    catalog: Catalog, org: str, state: OrgFleet, names: list[str] | None
) -> list[dict[str, Any]]:
    """Unit, min and max of the asked fields, from the first machine that has each."""
    if not names:
        return []
    found: dict[str, dict[str, Any]] = {}
    models_done: set[str] = set()
    for machine in state.machines.values():
        if machine.model in models_done:
            continue
        models_done.add(machine.model)
        info = await catalog.machine(org, machine.chassis)
        if info is None:
            continue
        for msg_type in MsgType:
            for f in await catalog.fields(info, msg_type.value):
                if f["name"] in names and f["name"] not in found:
                    found[f["name"]] = {**f, "msgType": msg_type.value}
    return [found.get(n, {"name": n, "unit": "", "min": None, "max": None}) for n in names]


__all__ = [
    "AlertsService",
    "fleet_summary",
    "router",
]
