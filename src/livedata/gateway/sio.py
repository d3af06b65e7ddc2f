"""Socket.IO for the existing dashboards: python-socketio on the same ASGI server.

Mounted at ``/socket.io/`` beside the HTTP API (:func:`with_socketio`).  A client
belongs to the organisation of the user it authenticates as, before any data
flows: the auth payload ``{auth: {token}}`` (an API token or a 60 s live token),
an ``Authorization: Bearer`` header, the browser's session cookie, or
``?access_token=``.  No or bad credentials refuse the connection (``connect_error``
with ``{"message":"authentication required","data":{"code":"unauthenticated"}}``:
``err.message`` and ``err.data`` in socket.io-client); so does a browser
``Origin`` other than the server's own or an allowed one (``forbidden``), an
``org`` (query or auth payload) other than the user's (``not_found``, as for an
unknown organisation) and more than ``live_per_user`` live connections
(``too_many_connections``).  Logging out or revoking the token disconnects it.

Client → server (each answers through the Socket.IO acknowledgement with
``{"ok":true,…}`` or ``{"ok":false,"error":{"code","message"}}``, the error shape of
every other surface):

- ``subscribe-device`` with a device (chassis) id, or ``{deviceId, fields:[…]}``
  to get only those fields: joins the room ``device:{org}:{deviceId}`` and gets
  the device's current status at once.  Subscribing again replaces the field
  filter.  An unknown device, or another organisation's, gets an ``error`` event
  ``{"error":{"code":"not_found","message":…},"deviceId":…}`` and no join; so does a 101st
  subscription (``too_many_subscriptions``) or a malformed payload (``bad_request``).
  With ``since`` (``{deviceId, fields, since: {msgType: {epoch, seq}}}``, ``{}`` at
  first) the client's readings carry their channel position (``msgType``, ``seq``,
  ``epoch``) and, on a reconnect, the readings after each given position are sent
  first from the pub/sub's history, shared by every gateway (``live_history_seconds``),
  so a client that comes back to another gateway process recovers; the
  acknowledgement says ``recovered: true``, or ``false`` when some were no longer in the
  history (fill the gap from the history API): then every reading the history still
  holds was sent (live goes out before storage, so the newest may not be stored
  yet).  A reading that arrives while the history is read may come twice (the same
  ``seq``).
- ``unsubscribe-device`` with the same forms: leaves the room.

Server → client:

- ``device-update`` to the device's room: one per reading
  ``{deviceId, sensorType, value, timestamp}`` (sensorType = field name,
  timestamp = the record's time in ms), and on status changes
  ``{deviceId, status: "online"|"offline", lastSeen}``.  Status comes from data
  arrival for now: a machine is online while real-time data arrived in the last
  5 s (backfill is stored, not pushed, so it does not count).  A J1939 machine's DTC changes come as ``{deviceId, dtc: {TIME, EVENT, SA, SPN,
  FMI, OC, NAME, MACHINE}}`` (``EVENT``: ``active``, ``oc`` or ``cleared``; the rows
  of the SSE log table ``dtcs``, in the process that runs ingest).
- ``sensor-data`` ``{topic, data, timestamp}`` to every client of the organisation,
  topic = the live channel (``live-stream/{org}/consumer-{chassisId}/{msgType}``),
  data = the record's values.  ``sensor_data`` chooses: ``"on"`` (every record),
  ``"throttled"`` (default: at most one per topic -- machine and message type --
  per second of the records' time, the first of each second: a 1 Hz machine
  passes unchanged, a 10 Hz one is sampled) or ``"off"``.
- ``dashboard:data`` once on connect, then ``dashboard:update`` every second:
  ``{org, machines:[{deviceId, name, model, status, lastSeen, values:{msgType:{field:value}}}],
  online, total, timestamp}``.
- ``alert-created`` and ``alert-updated`` to every client of the organisation
  (:meth:`SocketGateway.push_org`).

How it is fed: while an organisation has Socket.IO clients, its feed holds the
organisation in the gateway's shared fleet state (:class:`~livedata.gateway.fleet.Fleet`,
the same the fleet summary reads: one listener per live channel of each machine,
machines re-read every 30 s) and observes its readings; it lets go when the last
client leaves.  The observer writes each reading's ``device-update`` and
``sensor-data`` to the clients' outboxes at once (no queue, task or ``await`` per
reading); one timer task per organisation sends ``dashboard:update`` and offline
statuses every second.  Alerts and status changes come from the pub/sub relays
(:mod:`livedata.gateway.relay`), in-process listeners of the fan-out core.

Under stress: at most 5,000 clients per process, 100 subscriptions per client,
500 fields per filter.  A slow client never slows the others or grows the
server's memory beyond its bound:

- **One outbox per client, the fan-out core's** (:class:`~livedata.gateway.fanout.Outbox`).
  Every pushed event (``device-update``, ``sensor-data``, ``dashboard:update``,
  ``alert-created``, ``alert-updated``) is encoded once for all its clients and framed
  once per kind of outbox (:class:`SioEvent`): a client on a WebSocket of livedata's
  server layer (:func:`~livedata.gateway.server.uvicorn_config`) gets unmasked text
  frames written straight to its transport; any other client (long-polling, or a
  WebSocket outside the server layer) gets packets put in Engine.IO's queue, which
  its next poll takes (:class:`_QueueSink`; it counts as paused beyond
  :data:`QUEUE_HIGH` bytes not taken).  Answers to the client's own requests
  (acknowledgements, ``error``, ``dashboard:data``, the status on subscribing) go
  through python-socketio as before.
- **Bounded.**  While a client takes nothing more (its transport above the high-water
  mark, its polls not coming) its events wait in the outbox: at most
  :data:`CLIENT_QUEUE` (256); beyond, the oldest is dropped (counted in
  ``livedata_sio_client_drops``) and the next event it gets carries ``"missed": n``
  in its data.
- **No progress.**  A client whose transport (or queue) takes nothing for
  ``client_stall_seconds`` (default 30 s) is given up by the outbox's stall clock
  (a deadline in the fan-out core's stall clock of that time, which the live
  WebSocket and the SSE watch share: no timer per client; counted in
  ``livedata_stalled_clients``): a WebSocket is
  closed with 1013 at once, what stays is the socket's kernel buffer and at most
  one transport buffer (64 KiB), freed when the peer reads or goes away; a polling
  client's session is closed (reason ``server disconnect``).
- Dead peers are found by Engine.IO's ping/pong (every 25 s, 20 s to answer) and, on
  a WebSocket of the server layer, by its WebSocket keep-alive (a ping every 20 s, 1011
  without the pong within 20 s), whose clocks are two shared
  :class:`~livedata.gateway.sweep.Sweep` s (no timer per client:
  :class:`~livedata.gateway.server.LimitedWebSocket`).  Engine.IO's ping stays
  python-engineio's: a task per client that sleeps until its next ping (about 1.6 KB
  and one loop timer per idle client, measured with tracemalloc), started by
  engineio's private connect and pong handling with no hook to move it onto a sweep.

What an idle client costs (tracemalloc, 500 idle WebSocket clients: ~43 KB each of
Python heap) is mostly python-engineio's and uvicorn's per connection: the ASGI task
and its coroutine chain, engineio's writer task and its reader's ``wait_for`` (each a
task and a timer), the ping task, two ``asyncio.Queue`` s (engineio's packet queue,
uvicorn's message queue: ~2.3 KB each), the handshake's headers three times (uvicorn's
scope, ``websockets``' request, engineio's WSGI environ).  The live WebSocket, served
by the server layer without ASGI (:mod:`livedata.gateway.wsserver`), costs ~6 KB.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import engineio
import orjson
import socketio
from prometheus_client import Counter, Gauge

from livedata import observe
from livedata.auth import Principal
from livedata.gateway.fanout import WS_TEXT, Outbox
from livedata.gateway.fleet import Fleet, FleetMachine, OrgFleet
from livedata.gateway.server import RAW_WEBSOCKET, LimitedWebSocket
from livedata.model import MsgType, live_channel, valid_id

if TYPE_CHECKING:
    from livedata.catalog import Catalog
    from livedata.gateway.fanout import Fanout
    from livedata.gateway.gateway import Gateway
    from livedata.gateway.security import Security
    from livedata.gateway.viewers import ViewerFollower

log = logging.getLogger("livedata.gateway.sio")

SENSOR_DATA_MODES = ("on", "throttled", "off")
SENSOR_DATA = "throttled"
"""The default of ``sensor-data``: ``on``, ``throttled`` (≤ 1 per topic per second) or ``off``."""
MAX_CLIENTS = 5_000
MAX_SUBSCRIPTIONS = 100
MAX_FIELDS = 500
TICK_S = 1.0

CLIENTS = Gauge("livedata_sio_clients", "Connected Socket.IO clients")
EMITS = Counter("livedata_sio_emits", "Socket.IO events emitted", ["event"])
CLIENT_DROPS = Counter(
    "livedata_sio_client_drops", "Socket.IO events dropped for slow clients (send buffer full)"
)

CLIENT_QUEUE = 256
"""Events queued for one Socket.IO client at most; beyond, the oldest are dropped."""
STALL_SECONDS = 30.0
"""A client whose queue did not move for this long is disconnected (``client_stall_seconds``)."""


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _status(machine: FleetMachine, online: bool) -> dict[str, Any]:
    return {
        "deviceId": machine.chassis,
        "status": "online" if online else "offline",
        "lastSeen": machine.last_seen,
    }


@dataclass(slots=True)
class _Client:
    org: str
    subscriptions: dict[str, frozenset[str] | None] = field(default_factory=dict)


class SioEvent:
    """A Socket.IO EVENT of one name (default namespace): ``2["name",data]``.

    ``frame`` puts it in a server WebSocket text frame (Engine.IO v4 carries one packet
    per frame; the frame is unmasked, so one bytes object goes to every client of a
    group); ``head`` is what an outbox passes to the framings below.
    """

    __slots__ = ("head", "name", "prefix")

    def __init__(self, name: str) -> None:
        self.name = name
        self.prefix = b'2["' + name.encode() + b'",'
        self.head: dict[str, Any] = {"event": self}

    def packet(self, payload: bytes) -> bytes:
        """The Engine.IO MESSAGE packet (``4`` + the Socket.IO packet) of ``payload``."""
        return b"4" + self.prefix + payload + b"]"

    def frame(self, payload: bytes, head: dict[str, Any] | None = None) -> bytes:
        return WS_TEXT.frame(self.packet(payload))


class _SioWebSocket:
    """The fan-out framing of Socket.IO on a WebSocket: the event (``head["event"]``) in a
    text frame, written straight to the transport."""

    __slots__ = ()

    def frame(self, payload: bytes, head: dict[str, Any] | None) -> bytes:
        assert head is not None
        event: SioEvent = head["event"]
        return event.frame(payload)


class _SioQueued:
    """The fan-out framing of Socket.IO through Engine.IO's own packet queue (long-polling,
    or a WebSocket outside livedata's server layer): record-separated packets, which
    :class:`_QueueSink` hands to Engine.IO one by one."""

    __slots__ = ()

    def frame(self, payload: bytes, head: dict[str, Any] | None) -> bytes:
        assert head is not None
        event: SioEvent = head["event"]
        return b"\x1e" + event.packet(payload)


SIO_WEBSOCKET = _SioWebSocket()
SIO_QUEUED = _SioQueued()

DEVICE_UPDATE = SioEvent("device-update")
SENSOR_DATA_EVENT = SioEvent("sensor-data")
DASHBOARD_UPDATE = SioEvent("dashboard:update")
ALERT_CREATED = SioEvent("alert-created")
ALERT_UPDATED = SioEvent("alert-updated")

QUEUE_HIGH = 64 * 1024
"""Bytes of a client's packets that Engine.IO's queue may hold before its outbox pauses
(as a transport's high-water mark)."""


class _Out(engineio.packet.Packet):
    """A packet of an outbox in Engine.IO's queue: counted as taken when it is encoded
    (the long-polling GET or the WebSocket writer sends it)."""

    def __init__(self, sink: _QueueSink, data: str) -> None:
        super().__init__(engineio.packet.MESSAGE, data)
        self.sink = sink

    def encode(self, b64: bool = False) -> Any:
        self.sink.taken(len(self.data))
        return super().encode(b64)


class _QueueSink:
    """An outbox's sink that puts packets in the client's Engine.IO queue (what the
    long-polling GET drains): paused while more than :data:`QUEUE_HIGH` bytes wait there,
    resumed when they were taken; the outbox's stall clock runs meanwhile."""

    __slots__ = ("outbox", "queue", "queued")

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self.queue = queue
        self.queued = 0
        self.outbox: Outbox | None = None

    def write(self, data: bytes) -> None:
        for part in data.split(b"\x1e")[1:]:  # JSON escapes \x1e: it only separates packets
            text = part[1:].decode()
            self.queued += len(text)
            self.queue.put_nowait(_Out(self, text))
        outbox = self.outbox
        if self.queued > QUEUE_HIGH and outbox is not None and not outbox.paused:
            outbox.pause_writing()

    def taken(self, size: int) -> None:
        self.queued -= size
        outbox = self.outbox
        if self.queued <= QUEUE_HIGH // 4 and outbox is not None and outbox.paused:
            outbox.resume_writing()

    def get_write_buffer_size(self) -> int:
        return self.queued


class _Outbox(Outbox):
    """The fan-out core's outbox, its drops also counted as Socket.IO client drops."""

    __slots__ = ()

    def offer(self, payload: bytes, wire: bytes | None, head: dict[str, Any] | None) -> bool:
        missed = self.missed
        written = super().offer(payload, wire, head)
        if self.missed > missed:
            CLIENT_DROPS.inc(self.missed - missed)
        return written


class _OrgFeed:
    """What Socket.IO sends to one organisation while it has clients, from the fleet state."""

    def __init__(self, gateway: SocketGateway, org: str) -> None:
        self.gw = gateway
        self.org = org
        self.clients: set[str] = set()
        self.state: OrgFleet | None = None
        self.online: set[str] = set()
        """Machines announced online to the clients (an offline status is due when one is not)."""
        self.subscribers: dict[str, dict[str, frozenset[str] | None]] = {}
        self.positions: set[str] = set()
        """Clients whose device updates carry their channel position (they asked ``since``)."""
        self.last_second: dict[str, int] = {}
        self.ticker: asyncio.Task[None] | None = None

    @property
    def room(self) -> str:
        return org_room(self.org)

    @property
    def machines(self) -> dict[str, FleetMachine]:
        return self.state.machines if self.state is not None else {}

    def device_room(self, chassis: str) -> str:
        return device_room(self.org, chassis)

    async def start(self) -> None:
        self.state = state = await self.gw.fleet.acquire(self.org)
        now = time.monotonic()
        self.online = {m.chassis for m in state.machines.values() if m.online(now)}
        state.observers.append(self._observe)
        self.ticker = asyncio.create_task(self._tick(), name=f"sio-tick-{self.org}")

    async def stop(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            await asyncio.gather(self.ticker, return_exceptions=True)
        state, self.state = self.state, None
        if state is not None:
            state.observers.remove(self._observe)
            await self.gw.fleet.release(state)

    def _observe(
        self, machine: FleetMachine, msg_type: str, values: dict[str, Any], head: dict[str, Any]
    ) -> None:
        """A reading: its device updates and ``sensor-data`` go straight to the clients'
        outboxes (no task, queue or await per message)."""
        chassis = machine.chassis
        push = self.gw.push
        subscribers = self.subscribers.get(chassis)
        if chassis not in self.online:
            self.online.add(chassis)
            if subscribers:
                push(DEVICE_UPDATE, subscribers, _status(machine, True))
        if subscribers:
            for sids, data in self._updates(chassis, msg_type, values, head, subscribers):
                push(DEVICE_UPDATE, sids, data)
        mode = self.gw.sensor_data
        if mode == "off":
            return
        ts = int(head["ts"])
        topic = live_channel(self.org, chassis, msg_type)
        if mode == "throttled":
            second = ts // 1000
            if self.last_second.get(topic, -1) >= second:
                return
            self.last_second[topic] = second
        push(SENSOR_DATA_EVENT, self.clients, {"topic": topic, "data": values, "timestamp": ts})

    def _updates(
        self,
        chassis: str,
        msg_type: str,
        values: dict[str, Any],
        head: dict[str, Any],
        subscribers: dict[str, frozenset[str] | None],
    ) -> Iterator[tuple[list[str], dict[str, Any]]]:
        """(sids, data) of each ``device-update`` of a reading: one per field to the
        ``subscribers`` that want it; clients in :attr:`positions` also get the reading's
        ``msgType``, ``seq`` and ``epoch``."""
        ts = int(head["ts"])
        where = {"msgType": msg_type, "seq": head["seq"], "epoch": head["epoch"]}
        positions = self.positions
        for name, value in values.items():
            sids = [sid for sid, f in subscribers.items() if f is None or name in f]
            if not sids:
                continue
            data = {"deviceId": chassis, "sensorType": name, "value": value, "timestamp": ts}
            if not positions:
                yield sids, data
                continue
            plain = [sid for sid in sids if sid not in positions]
            if plain:
                yield plain, data
            if len(plain) < len(sids):
                yield [sid for sid in sids if sid in positions], {**data, **where}

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self._tick_once()
            except Exception:
                log.exception("Socket.IO tick of %s failed", self.org)

    async def _tick_once(self) -> None:
        now = time.monotonic()
        machines = self.machines
        for chassis in list(self.online):
            machine = machines.get(chassis)
            if machine is None or not machine.online(now):
                self.online.discard(chassis)
                subscribers = self.subscribers.get(chassis)
                if machine is not None and subscribers:
                    self.gw.push(DEVICE_UPDATE, subscribers, _status(machine, False))
        self.gw.push(DASHBOARD_UPDATE, self.clients, self.summary())
        if self.state is not None:
            await self.state.ensure()  # the machine list, re-read every 30 s

    def summary(self) -> dict[str, Any]:
        machines = [
            {
                "deviceId": m.chassis,
                "name": m.name,
                "model": m.model,
                "status": "online" if m.chassis in self.online else "offline",
                "lastSeen": m.last_seen,
                "values": m.values,
            }
            for m in sorted(self.machines.values(), key=lambda m: m.chassis)
        ]
        return {
            "org": self.org,
            "machines": machines,
            "online": sum(1 for m in self.machines.values() if m.chassis in self.online),
            "total": len(machines),
            "timestamp": int(time.time() * 1000),
        }


_NOT_CONNECTED = {"ok": False, "error": {"code": "not_connected", "message": "not connected"}}


def _device_request(data: Any) -> tuple[str, frozenset[str] | None]:
    """``"WL-0001"`` or ``{"deviceId": "WL-0001", "fields": [...]}``; raises _Refused."""
    fields: frozenset[str] | None = None
    if isinstance(data, dict):
        device = data.get("deviceId", data.get("device_id", data.get("id")))
        raw = data.get("fields")
        if raw is not None:
            if not isinstance(raw, list) or not all(isinstance(f, str) for f in raw):
                raise _Refused("bad_request", "fields must be a list of field names")
            if len(raw) > MAX_FIELDS:
                raise _Refused("bad_request", f"{len(raw)} fields; at most {MAX_FIELDS}")
            fields = frozenset(raw)
    else:
        device = data
    if not isinstance(device, str) or not device:
        raise _Refused("bad_request", "give a device id, or {deviceId, fields}")
    return device, fields


Since = dict[str, tuple[str, int]]
"""Message type → (epoch, seq) of the last reading a client got from that channel."""


def _since(data: Any) -> Since | None:
    """The ``since`` of a subscription (``None`` when not asked); raises _Refused."""
    raw = data.get("since") if isinstance(data, dict) else None
    if raw is None:
        return None
    kinds = {t.value for t in MsgType}
    if not isinstance(raw, dict) or not set(raw) <= kinds:
        raise _Refused(
            "bad_request", f"since must map message types ({sorted(kinds)}) to positions"
        )
    since: Since = {}
    for msg_type, pos in raw.items():
        epoch = pos.get("epoch") if isinstance(pos, dict) else None
        seq = pos.get("seq") if isinstance(pos, dict) else None
        if (
            not isinstance(epoch, str)
            or not 0 < len(epoch) <= 64
            or not isinstance(seq, int)
            or isinstance(seq, bool)
            or seq < 0
        ):
            raise _Refused("bad_request", 'a position is {"epoch": "…", "seq": n}')
        since[msg_type] = (epoch, seq)
    return since


class SocketGateway:
    """The Socket.IO server of one gateway; ``asgi(app)`` mounts it beside ``app``."""

    def __init__(
        self,
        security: Security,
        viewers: ViewerFollower,
        catalog: Catalog,
        hub: Fanout,
        fleet: Fleet,
        *,
        sensor_data: str = SENSOR_DATA,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        client_queue: int = CLIENT_QUEUE,
        stall_seconds: float | None = None,
    ) -> None:
        if sensor_data not in SENSOR_DATA_MODES:
            raise ValueError(f"sensor_data must be one of {SENSOR_DATA_MODES}")
        self.security, self.viewers, self.catalog, self.hub = security, viewers, catalog, hub
        self.fleet = fleet
        """The gateway's shared fleet state (the fleet summary reads the same)."""
        self.sensor_data = sensor_data
        self.max_subscriptions = max_subscriptions
        self.sio = socketio.AsyncServer(
            async_mode="asgi",
            logger=False,
            engineio_logger=False,
            max_http_buffer_size=65_536,
            # the same Origin rule as the WebSocket: own origin or allowed_origins
            cors_allowed_origins=self._origin_allowed,
        )
        if stall_seconds is None:
            stall_seconds = STALL_SECONDS
        self.client_queue = client_queue
        """Events an outbox holds while its client takes nothing more."""
        self.stall_seconds = stall_seconds
        """Seconds a client may take nothing before it is disconnected."""
        self._closing: set[asyncio.Task[None]] = set()
        self._clients: dict[str, _Client] = {}
        self._feeds: dict[str, _OrgFeed] = {}
        self._live: dict[str, int] = {}
        """Socket.IO session id → its handle in the security service's live registry."""
        self.outboxes: dict[str, Outbox] = {}
        """Socket.IO session id → its fan-out outbox."""
        self._lock = asyncio.Lock()
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self.sio.on("subscribe-device", self._subscribe)
        self.sio.on("unsubscribe-device", self._unsubscribe)

    def asgi(self, app: Any) -> socketio.ASGIApp:
        return socketio.ASGIApp(self.sio, other_asgi_app=app)

    async def emit(self, event: str, data: Any, **kwargs: Any) -> None:
        await self.sio.emit(event, data, **kwargs)
        EMITS.labels(event).inc()

    def push(self, event: SioEvent, sids: Iterable[str], data: Any) -> None:
        """Send ``event`` with ``data`` to the clients ``sids`` through their outboxes:
        encoded once, framed once per kind of outbox (see "Under stress")."""
        payload = orjson.dumps(data)
        head = event.head
        frames: dict[Any, bytes] = {}
        outboxes = self.outboxes
        for sid in sids:
            outbox = outboxes.get(sid)
            if outbox is None:
                continue
            wire = frames.get(outbox.framing)
            if wire is None:
                wire = frames[outbox.framing] = outbox.framing.frame(payload, head)
            outbox.offer(payload, wire, head)
        if frames:
            EMITS.labels(event.name).inc()

    def push_org(self, org: str, event: SioEvent, data: Any) -> None:
        """Send ``event`` to every client of ``org`` in this process."""
        feed = self._feeds.get(org)
        if feed is not None:
            self.push(event, feed.clients, data)

    def push_device(self, org: str, chassis: str, data: dict[str, Any]) -> None:
        """Send ``device-update`` to the clients subscribed to one device."""
        feed = self._feeds.get(org)
        subscribers = feed.subscribers.get(chassis) if feed is not None else None
        if subscribers:
            self.push(DEVICE_UPDATE, subscribers, data)

    # slow clients -----------------------------------------------------------

    def _attach(self, sid: str, environ: dict[str, Any]) -> None:
        """Give the client its outbox of the fan-out core (see "Under stress"): on a
        WebSocket of the server layer it writes straight to the transport; otherwise it
        feeds Engine.IO's packet queue, which the long-polling GET drains."""
        scope = environ.get("asgi.scope") or {}
        raw = (
            scope.get("extensions", {}).get(RAW_WEBSOCKET)
            if scope.get("type") == "websocket"
            else None
        )
        stall = self.stall_seconds
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        socket = self.sio.eio.sockets[eio_sid]

        def given_up() -> None:
            log.info("disconnecting a Socket.IO client that took nothing for %g s", stall)
            if isinstance(raw, LimitedWebSocket):
                raw.close_now(1013, "client too slow")
            # the session ends now: no CLOSE packet (it could not get through), no waiting
            # for the queue or for Engine.IO's writer, which may wait on the dead transport
            closing = socket.close(
                wait=False, abort=True, reason=self.sio.eio.reason.SERVER_DISCONNECT
            )
            task = asyncio.create_task(closing)
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

        stalls = self.hub.stall_clock(stall)
        if isinstance(raw, LimitedWebSocket):
            outbox = _Outbox(raw.transport, SIO_WEBSOCKET, given_up, stalls, self.client_queue)
            raw.attach(outbox)
        else:
            sink = _QueueSink(socket.queue)
            outbox = sink.outbox = _Outbox(sink, SIO_QUEUED, given_up, stalls, self.client_queue)
        self.outboxes[sid] = outbox

    # connections ------------------------------------------------------------

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        if len(self._clients) >= MAX_CLIENTS:
            raise socketio.exceptions.ConnectionRefusedError(
                "this server has too many clients", {"code": "too_many_clients"}
            )
        principal = await self._authenticate(environ, auth)
        # python-socketio keeps the Engine.IO handshake's environ while the client is
        # connected; its body reader (a class engineio's ASGI driver makes per request:
        # 2.7 KB of the ~43 KB of an idle client) is of no use once it has connected
        environ.pop("wsgi.input", None)
        handle = self.security.open_live(
            principal, lambda _why: self.sio.start_background_task(self.sio.disconnect, sid)
        )
        if handle is None:
            raise socketio.exceptions.ConnectionRefusedError(
                "too many live connections", {"code": "too_many_connections"}
            )
        self._live[sid] = handle
        self._attach(sid, environ)
        org = principal.org
        async with self._lock:
            feed = self._feeds.get(org)
            if feed is None:
                feed = _OrgFeed(self, org)
                await feed.start()
                self._feeds[org] = feed
            feed.clients.add(sid)
            self._clients[sid] = _Client(org)
        CLIENTS.set(len(self._clients))
        await self.sio.enter_room(sid, feed.room)
        self.sio.start_background_task(self._welcome, sid, feed)

    def _origin_allowed(self, origin: str | None, environ: dict[str, Any]) -> bool:
        headers = {"host": environ.get("HTTP_HOST", "")}
        if origin is not None:
            headers["origin"] = origin
        return self.security.origin_ok(headers)

    async def _authenticate(self, environ: dict[str, Any], auth: Any) -> Principal:
        """The caller, from the auth payload ``{token}``, a header, the cookie or the query."""
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        given = auth if isinstance(auth, dict) else {}
        if isinstance(given.get("token"), str):
            query["access_token"] = given["token"]
        sec = self.security
        principal = await sec.authenticate(headers, query, live=True)
        if principal is None:
            observe.AUTH_REFUSED.labels("unauthenticated").inc()
            raise socketio.exceptions.ConnectionRefusedError(
                "authentication required", {"code": "unauthenticated"}
            )
        if not sec.origin_ok(headers):
            observe.AUTH_REFUSED.labels("origin").inc()
            raise socketio.exceptions.ConnectionRefusedError(
                "origin not allowed", {"code": "forbidden"}
            )
        org = given.get("org") or query.get("org")
        if org is not None and org != principal.org:
            observe.AUTH_REFUSED.labels("other_org").inc()
            raise socketio.exceptions.ConnectionRefusedError(
                f"organisation {org!r} not found", {"code": "not_found"}
            )
        return principal

    async def _welcome(self, sid: str, feed: _OrgFeed) -> None:
        for _ in range(50):  # the CONNECT packet goes out once the connect handler returned
            if self.sio.manager.is_connected(sid, "/"):
                break
            await asyncio.sleep(0.01)
        await self.emit("dashboard:data", feed.summary(), to=sid)

    async def _disconnect(self, sid: str, reason: Any = None) -> None:
        outbox = self.outboxes.pop(sid, None)
        if outbox is not None:
            outbox.close()
        for each in self._feeds.values():
            each.positions.discard(sid)
        handle = self._live.pop(sid, None)
        if handle is not None:
            self.security.close_live(handle)
        async with self._lock:
            client = self._clients.pop(sid, None)
            if client is None:
                return
            for device in client.subscriptions:
                self.viewers.left(client.org, device)  # real-time follows viewers
            feed = self._feeds.get(client.org)
            if feed is None:
                return
            feed.clients.discard(sid)
            for device in client.subscriptions:
                subscribers = feed.subscribers.get(device)
                if subscribers is not None:
                    subscribers.pop(sid, None)
                    if not subscribers:
                        del feed.subscribers[device]
            if not feed.clients:
                del self._feeds[client.org]
                await feed.stop()
        CLIENTS.set(len(self._clients))

    # subscriptions ----------------------------------------------------------

    async def _refuse(self, sid: str, code: str, message: str, device: Any) -> dict[str, Any]:
        observe.CLIENT_ERRORS.labels(code).inc()
        body = {"error": {"code": code, "message": message}, "deviceId": device}
        await self.emit("error", body, to=sid)
        return {"ok": False, **body}

    async def _subscribe(self, sid: str, data: Any = None) -> dict[str, Any]:
        client = self._clients.get(sid)
        if client is None:
            return _NOT_CONNECTED
        device: Any = data.get("deviceId") if isinstance(data, dict) else data
        try:
            device, fields = _device_request(data)
            since = _since(data)
        except _Refused as exc:
            return await self._refuse(sid, exc.code, str(exc), device)
        org = client.org
        if not valid_id(device) or await self.catalog.machine(org, device) is None:
            return await self._refuse(
                sid, "not_found", f"device {device[:80]!r} not found", device[:80]
            )
        if device not in client.subscriptions and len(client.subscriptions) >= (
            self.max_subscriptions
        ):
            return await self._refuse(
                sid,
                "too_many_subscriptions",
                f"at most {self.max_subscriptions} devices per client",
                device,
            )
        feed = self._feeds.get(org)
        if feed is None:
            return _NOT_CONNECTED
        if device not in client.subscriptions:
            self.viewers.joined(org, device)  # real-time follows viewers
        client.subscriptions[device] = fields
        feed.subscribers.setdefault(device, {})[sid] = fields
        room = feed.device_room(device)
        await self.sio.enter_room(sid, room)
        machine = feed.machines.get(device)
        if machine is not None:
            await self.emit("device-update", _status(machine, device in feed.online), to=sid)
        answer = {
            "ok": True,
            "deviceId": device,
            "room": room,
            "fields": sorted(fields) if fields is not None else None,
        }
        if since is not None:
            feed.positions.add(sid)
            answer["recovered"] = await self._recover(feed, sid, device, fields, since)
        return answer

    async def _recover(
        self,
        feed: _OrgFeed,
        sid: str,
        device: str,
        fields: frozenset[str] | None,
        since: Since,
    ) -> bool:
        """Send ``sid`` the readings of ``device`` after ``since`` from the pub/sub's history
        (any gateway's: the history is shared); whether all of them were still there."""
        recovered = True
        for msg_type, position in since.items():
            channel = live_channel(feed.org, device, msg_type)
            complete, missed = await self.hub.missed_since(channel, position)
            recovered = recovered and complete
            for values, head in missed:
                for sids, data in feed._updates(device, msg_type, values, head, {sid: fields}):
                    self.push(DEVICE_UPDATE, sids, data)
        return recovered

    async def _unsubscribe(self, sid: str, data: Any = None) -> dict[str, Any]:
        client = self._clients.get(sid)
        if client is None:
            return _NOT_CONNECTED
        device: Any = data.get("deviceId") if isinstance(data, dict) else data
        try:
            device, _ = _device_request(data)
        except _Refused as exc:
            return await self._refuse(sid, exc.code, str(exc), device)
        if device not in client.subscriptions:
            return {"ok": True, "deviceId": device, "subscribed": False}
        del client.subscriptions[device]
        self.viewers.left(client.org, device)  # real-time follows viewers
        feed = self._feeds.get(client.org)
        if feed is not None:
            subscribers = feed.subscribers.get(device)
            if subscribers is not None:
                subscribers.pop(sid, None)
                if not subscribers:
                    del feed.subscribers[device]
            await self.sio.leave_room(sid, feed.device_room(device))
        return {"ok": True, "deviceId": device, "subscribed": False}


def org_room(org: str) -> str:
    """The room of every client of an organisation."""
    return f"org:{org}"


def device_room(org: str, chassis: str) -> str:
    """The room of the clients subscribed to one device."""
    return f"device:{org}:{chassis}"


def with_socketio(app: Any) -> socketio.ASGIApp:
    """``app`` (made by :func:`~livedata.gateway.app.create_app`) with its gateway's
    Socket.IO mounted at ``/socket.io/`` (lifespan and the rest go to ``app``)."""
    gateway: Gateway = app.state.gateway
    return gateway.socket.asgi(app)


__all__ = [
    "SENSOR_DATA",
    "SENSOR_DATA_MODES",
    "SocketGateway",
    "with_socketio",
]
