"""Direct methods (IoT Hub compatible), the command log, and machine status.

``POST /api/iothubs/{iothubName}/devices/{deviceId}/methods`` with
``{"methodName", "payload", "responseTimeoutInSeconds" (30; 5 … 300),
"connectTimeoutInSeconds" (0; 0 … 300)}`` delivers a direct method through the
device link (:meth:`livedata.devices.base.DeviceLink.call`) and answers
``200 {"status", "payload"}`` — the device's own answer, whatever its status.
livedata has no IoT hubs: ``iothubName`` is the **organisation id**, ``deviceId`` the
chassis id.  Errors (``{"error": {"code", "message"}}``): unknown organisation or
machine → 404 ``not_found``; machine not connected → 404 ``DeviceNotConnected`` at
once (after ``connectTimeoutInSeconds`` when given); no answer in time → 504
``GatewayTimeout``; a malformed body → 400 ``bad_request`` naming the field.
Every call is recorded (:mod:`livedata.metadata.commands`), listed newest first by
``GET …/methods`` and published to the ``commands`` watch log table; so are the
server's own (:func:`send_command` with a ``reason``: ``viewers`` for real-time that
follows the viewers, :mod:`livedata.gateway.viewers`).  A manual ``startMs``/``endMs``
the machine accepted is passed on to that policy (a Stop holds until a Start).

``GET /api/resources/{orgId}/machines/{chassisId}/status`` →
``{deviceId, connected, since, online, commands, commandsReason, realtime:
"on"|"off"|"unknown", lastSeen}``: ``connected`` from the device link (MQTT: the
retained status and Last Will; embedded: the simulated machine exists and the fleet
runs), ``online`` also while its newest record is less than 10 s old (a machine
sending over HTTP ingest has no link), ``commands`` whether direct methods can reach
it (``commandsReason`` says why not), ``realtime`` from the last successful
``startMs``/``endMs``/``getStatus`` answer seen by this process, else asked of a
connected device with ``getStatus`` (2 s), ``lastSeen`` the newest stored record of
the machine (ms).  A machine that comes online on an MQTT link is asked
``getStatus`` once at once, and so is one the fleet summary does not know yet, so its
real-time state is known (and pushed) without anyone opening it; a machine coming online
is pushed once, after that answer (or the probe's 2 s), with its presence and real-time
state together.  Changes (presence, real-time) are pushed as ``device_status``
log table rows and Socket.IO ``device-update`` ``{deviceId, status, lastSeen,
realtime}`` by every gateway: the change is published on the pub/sub channel
``live-stream/{org}/status`` and each gateway's :attr:`StatusService.relay` delivers it,
also in the process that made it.

Under stress (a whole fleet connecting at once, as at a broker's or this link's start):
each push needs the machine's newest record time, and nothing else of a status change
reads the store: a probe asks only the device.  The pushes of a burst read those times
together (:class:`LastSeenReads`: one ``latest_many`` per organisation and 20 ms, at
most 500 machines a query), so a fleet coming online costs one ``getStatus`` and one
push per machine and a few store queries in all (before: two store queries per
machine, before that two pushes and six: ``bench/README.md``, *bench_status.py*).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from livedata.errors import DeviceError, DeviceNotConnected, DeviceTimeout
from livedata.gateway.relay import OrgRelay, publish_event
from livedata.gateway.security import principal_of
from livedata.gateway.state import gateway_of
from livedata.metadata.commands import MAX_LIST, CommandLog, command_dict

if TYPE_CHECKING:
    from livedata.bus.base import PubSub
    from livedata.devices.base import DeviceLink
    from livedata.gateway.fanout import Fanout
    from livedata.metadata import Metadata
    from livedata.store.base import Store

log = logging.getLogger("livedata.gateway.commands")

router = APIRouter(prefix="/api")

STATUS_PROBE_TIMEOUT_S = 2.0
SENDING_WINDOW_MS = 10_000
"""A machine whose newest record is this recent is ``online`` (it sends), link or not."""
PROBE_EVERY_S = 60.0
LAST_SEEN_WINDOW_S = 0.02
"""How long a status waits for others to read the store together (:class:`LastSeenReads`)."""


def status_channel(org: str) -> str:
    return f"live-stream/{org}/status"


class MethodBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    methodName: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    payload: Any = None
    responseTimeoutInSeconds: int = Field(30, ge=5, le=300)
    connectTimeoutInSeconds: int = Field(0, ge=0, le=300)


class LastSeenReads:
    """The newest stored record time of machines, asked one at a time and read in batches.

    Every :meth:`get` made within :data:`LAST_SEEN_WINDOW_S` of the first one waiting
    (and while a batch is being read) is read with one :meth:`Store.latest_many` per
    organisation.  Under stress (a fleet coming online at once: each machine's push asks
    for its own) a burst of thousands of machines costs a handful of store queries, not
    two per machine; a read that fails fails each of its batch's callers (as its own read
    would have) and the next batch reads anew.  Pending machines are bounded by the
    callers waiting (one entry per machine and organisation)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: dict[str, dict[str, list[asyncio.Future[int | None]]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def get(self, org: str, chassis: str) -> int | None:
        """The machine's newest record time (ms), None when it has stored none."""
        waiter: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(org, {}).setdefault(chassis, []).append(waiter)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read())
        return await waiter

    async def _read(self) -> None:
        batch: dict[str, dict[str, list[asyncio.Future[int | None]]]] = {}
        try:
            while self._pending:
                await asyncio.sleep(LAST_SEEN_WINDOW_S)
                batch, self._pending = self._pending, {}
                for org, waiting in batch.items():
                    await self._answer(org, waiting)
        finally:  # cancelled (shutdown): nobody waits for ever
            self._reader = None
            for waiting in [*batch.values(), *self._pending.values()]:
                _settle(waiting, None, asyncio.CancelledError())
            self._pending = {}

    async def _answer(self, org: str, waiting: dict[str, list[asyncio.Future[int | None]]]) -> None:
        try:
            newest = await self.store.latest_many(org, waiting)
        except Exception as exc:
            _settle(waiting, None, exc)
            return
        for chassis, waiters in waiting.items():
            seen = newest.get(chassis, {}).values()
            _settle({chassis: waiters}, max(seen) if seen else None, None)


def _settle(
    waiting: dict[str, list[asyncio.Future[int | None]]],
    value: int | None,
    error: BaseException | None,
) -> None:
    """Answer every still waiting caller with ``value``, or ``error`` when given."""
    for waiters in waiting.values():
        for waiter in waiters:
            if waiter.done():
                continue  # its caller was cancelled
            if error is None:
                waiter.set_result(value)
            elif isinstance(error, asyncio.CancelledError):
                waiter.cancel()
            else:
                waiter.set_exception(error)


class StatusService:
    """Real-time state and status pushes of one gateway."""

    def __init__(
        self,
        hub: Fanout,
        store: Store,
        meta: Metadata,
        devices: DeviceLink,
        pubsub: PubSub,
        publish_row: Callable[[str, str, dict[str, Any]], None],
        emit_device_update: Callable[[str, str, dict[str, Any]], None],
    ) -> None:
        """``publish_row(org, table, row)`` feeds the log tables, ``emit_device_update(org,
        chassis, update)`` Socket.IO."""
        self.store, self.meta, self.devices, self.pubsub = store, meta, devices, pubsub
        self.publish_row = publish_row
        self.emit_device_update = emit_device_update
        self.realtime: dict[tuple[str, str], str] = {}
        self._probed: dict[tuple[str, str], float] = {}
        self._probes: set[asyncio.Task[Any]] = set()
        self._last_seen = LastSeenReads(store)
        self.relay = OrgRelay(hub, meta, "status", status_channel, self.deliver)
        """Status changes of every organisation to this gateway's pages (a supervised task)."""

    async def last_seen(self, org: str, chassis: str) -> int | None:
        """The machine's newest stored record time (ms), None without one; read together
        with the other machines asked meanwhile (:class:`LastSeenReads`)."""
        return await self._last_seen.get(org, chassis)

    def note_result(self, org: str, chassis: str, payload: Any) -> bool:
        """Remember ``realtime`` from a device's answer; whether it changed."""
        state = payload.get("realtime") if isinstance(payload, dict) else None
        if state not in ("on", "off"):
            return False
        old = self.realtime.get((org, chassis))
        self.realtime[(org, chassis)] = state
        return old != state

    def known_realtime(self, org: str, chassis: str) -> str:
        """The real-time state as far as known now; unknown ones are asked in the background
        (``getStatus``, at most once a minute per machine), so the next call knows."""
        state = self.realtime.get((org, chassis))
        if state is not None:
            return state
        now = time.monotonic()
        if now - self._probed.get((org, chassis), -PROBE_EVERY_S) >= PROBE_EVERY_S:
            self._probed[(org, chassis)] = now
            self.probe_soon(org, chassis)
        return "unknown"

    def probe_soon(self, org: str, chassis: str, push: bool = False) -> None:
        """Ask a connected machine ``getStatus`` in the background; push its status when the
        answer changed the real-time state (or in any case with ``push``)."""

        async def probe() -> None:
            before = self.realtime.get((org, chassis))
            if await self.ask_realtime(org, chassis) != before or push:
                await self.push(org, chassis)

        task = asyncio.create_task(probe())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def ask_realtime(self, org: str, chassis: str) -> str | None:
        """The real-time state as known, else asked of a connected machine (``getStatus``,
        at most :data:`STATUS_PROBE_TIMEOUT_S`); None when still unknown.  Reads no store."""
        realtime = self.realtime.get((org, chassis))
        if realtime is None and self.devices.status(org, chassis).connected:
            try:
                result = await self.devices.call(
                    org, chassis, "getStatus", None, response_timeout=STATUS_PROBE_TIMEOUT_S
                )
                if result.status == 200:
                    self.note_result(org, chassis, result.payload)
            except Exception as exc:  # a status page must not fail because a probe did
                log.debug("getStatus of %s/%s: %s", org, chassis, exc)
            realtime = self.realtime.get((org, chassis))
        return realtime

    async def status(self, org: str, chassis: str, probe: bool = True) -> dict[str, Any]:
        """The machine's status (see the module doc); ``probe``: ask an unknown real-time
        state of the machine first."""
        if probe:
            realtime = await self.ask_realtime(org, chassis)
        else:
            realtime = self.realtime.get((org, chassis))
        link = self.devices.status(org, chassis)
        last_seen = await self.last_seen(org, chassis)
        sending = last_seen is not None and time.time() * 1000 - last_seen <= SENDING_WINDOW_MS
        reason = None
        if not link.connected:
            reason = (
                "no command channel: the machine sends without a device link (HTTP ingest)"
                if sending
                else "the machine is not connected"
            )
        return {
            "deviceId": chassis,
            "connected": link.connected,
            "since": link.since_ms,
            "online": link.connected or sending,
            "commands": link.connected,
            "commandsReason": reason,
            "realtime": realtime or "unknown",
            "lastSeen": last_seen,
        }

    async def push(self, org: str, chassis: str) -> None:
        """Tell every gateway's open pages about a status change (through pub/sub)."""
        state = await self.status(org, chassis, probe=False)
        await self.relay.ensure(org)  # an organisation created since the relay last looked
        await publish_event(self.pubsub, status_channel(org), state)

    def deliver(self, org: str, state: dict[str, Any]) -> None:
        """A status change from pub/sub: remember it, then log table row and Socket.IO."""
        chassis = str(state.get("deviceId"))
        if state.get("realtime") in ("on", "off"):
            self.realtime[(org, chassis)] = state["realtime"]
        elif not state.get("connected"):
            self.realtime.pop((org, chassis), None)
        self.publish_row(
            org,
            "device_status",
            {
                "MACHINE": chassis,
                "CONNECTED": state.get("connected"),
                "ONLINE": state.get("online"),
                "COMMANDS_REASON": state.get("commandsReason"),
                "REALTIME": state.get("realtime"),
                "LAST_SEEN": state.get("lastSeen"),
            },
        )
        update = {
            "deviceId": chassis,
            "status": "online" if state.get("online", state.get("connected")) else "offline",
            "lastSeen": state.get("lastSeen"),
            "realtime": state.get("realtime"),
        }
        self.emit_device_update(org, chassis, update)

    async def presence_feed(self) -> None:
        """Push presence changes of an MQTT device link until cancelled (a supervised task)."""
        changes = getattr(self.devices, "presence_changes", None)
        if changes is None:
            return
        async for change in changes():
            key = (change.tenant, change.chassis)
            if not change.online:
                self.realtime.pop(key, None)
            if change.online and key not in self.realtime:
                # asked first (known without a page open), then one push with both
                self.probe_soon(change.tenant, change.chassis, push=True)
            else:
                await self.push(change.tenant, change.chassis)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@dataclass(frozen=True, slots=True)
class Sent:
    """What became of one direct method: ``outcome`` (``ok`` when the device answered),
    its ``status`` and ``payload``, and the error ``message`` otherwise."""

    outcome: str
    status: int | None = None
    payload: Any = None
    message: str = ""


async def send_command(
    service: StatusService,
    org: str,
    chassis: str,
    method: str,
    payload: Any,
    *,
    who: str,
    reason: str | None = None,
    response_timeout: float = 30,
    connect_timeout: float = 0,
) -> Sent:
    """Send a direct method, record it in the command log (and its log table), push a
    changed real-time state.  The one path of a user's command and of the server's own
    (``reason``, like ``viewers``)."""
    started = time.monotonic()
    created = int(time.time() * 1000)
    try:
        answer = await service.devices.call(
            org,
            chassis,
            method,
            payload,
            response_timeout=response_timeout,
            connect_timeout=connect_timeout,
        )
        sent = Sent("ok", answer.status, answer.payload)
    except (DeviceNotConnected, DeviceTimeout) as exc:
        sent = Sent(exc.code, message=str(exc))
    except DeviceError as exc:
        sent = Sent("error", message=str(exc))
    duration = int((time.monotonic() - started) * 1000)
    row = await CommandLog(service.meta).record(
        org_id=org,
        chassis_id=chassis,
        method=method,
        payload=payload,
        requested_by=who,
        created_ms=created,
        duration_ms=duration,
        outcome=sent.outcome,
        status=sent.status,
        result=sent.payload,
        reason=reason,
    )
    service.publish_row(
        org,
        "commands",
        {
            "TIME": created,
            "MACHINE": chassis,
            "METHOD": method,
            "WHO": who,
            "REASON": reason,
            "OUTCOME": sent.outcome,
            "STATUS": sent.status,
            "DURATION_MS": duration,
            "ID": row.id,
        },
    )
    if sent.status == 200 and service.note_result(org, chassis, sent.payload):
        await service.push(org, chassis)
    return sent


@router.post(
    "/iothubs/{iothubName}/devices/{deviceId}/methods",
    summary="Invoke a direct method on a machine (iothubName = organisation id)",
)
async def invoke_method(
    request: Request, iothubName: str, deviceId: str, body: MethodBody
) -> JSONResponse:
    gw = gateway_of(request)
    await gw.meta.require_org(iothubName)
    await gw.catalog.require_machine(iothubName, deviceId)
    sent = await send_command(
        gw.status,
        iothubName,
        deviceId,
        body.methodName,
        body.payload,
        who=principal_of(request).username,
        response_timeout=body.responseTimeoutInSeconds,
        connect_timeout=body.connectTimeoutInSeconds,
    )
    if sent.outcome == "ok":
        if sent.status == 200:  # a manual Start/Stop: viewers follow it (livedata.follow)
            gw.viewers.manual(iothubName, deviceId, body.methodName)
        return JSONResponse({"status": sent.status, "payload": sent.payload})
    if sent.outcome == DeviceNotConnected.code:
        return _error(404, sent.outcome, sent.message)
    if sent.outcome == DeviceTimeout.code:
        return _error(504, sent.outcome, sent.message)
    return _error(503, "unavailable", sent.message)


@router.get(
    "/iothubs/{iothubName}/devices/{deviceId}/methods",
    summary="The command log of a machine, newest first",
)
async def list_methods(
    request: Request,
    iothubName: str,
    deviceId: str,
    limit: int = Query(50, ge=1, le=MAX_LIST),
) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.meta.require_org(iothubName)
    await gw.catalog.require_machine(iothubName, deviceId)
    rows = await CommandLog(gw.meta).recent(iothubName, deviceId, limit)
    return {"commands": [command_dict(r) for r in rows]}


@router.get(
    "/resources/{orgId}/machines/{chassisId}/status",
    summary="Whether a machine is connected, streams real-time, and when it was last seen",
)
async def machine_status(request: Request, orgId: str, chassisId: str) -> dict[str, Any]:
    gw = gateway_of(request)
    await gw.catalog.require_machine(orgId, chassisId)
    return await gw.status.status(orgId, chassisId)
