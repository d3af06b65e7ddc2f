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
  holds was sent (live goes out before storage, so the newest may not be stored yet).  A reading that arrives while the
  history is read may come twice (the same ``seq``).
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
- ``alert-created`` through :func:`emit_alert` (or :meth:`SocketGateway.emit_alert`).

How it is fed: while an organisation has Socket.IO clients, its feed holds the
organisation in the gateway's shared fleet state (:class:`~livedata.gateway.fleet.Fleet`,
the same the fleet summary reads: one listener per live channel of each machine,
machines re-read every 30 s) and observes its readings; it lets go when the last
client leaves.  The observer only queues; one pump task per organisation emits.

Under stress: at most 5,000 clients per process, 100 subscriptions per client,
500 fields per filter; the feed's queue holds 10,000 readings (oldest dropped,
counted in ``livedata_sio_dropped``).  A slow client never slows the others or
grows the server's memory beyond its bound:

- **Device updates on the fan-out core.**  A client on a WebSocket of livedata's
  server layer (:func:`~livedata.gateway.server.uvicorn_config`; clients that stay
  on long-polling keep the path below) gets an outbox of the fan-out core on its
  transport: each ``device-update`` is encoded and framed once
  (:class:`SioEvent`) for every such subscriber and written straight through; when
  the client falls behind (its transport above the high-water mark) they queue in
  the outbox (at most :data:`CLIENT_QUEUE`; beyond, the oldest is dropped, counted
  in ``livedata_sio_client_drops``, and the next ``device-update`` carries
  ``"missed": n``), and a client whose transport takes nothing for
  ``client_stall_seconds`` is closed (1013) by the outbox's stall clock.
- **Bounded send buffer.**  Each client's outgoing Engine.IO queue holds at most
  :data:`CLIENT_QUEUE` (256) events; when it is full the *oldest* queued event is
  dropped for the new one, so a client that falls behind gets the newest
  readings (counted in ``livedata_sio_client_drops``).  Acknowledgements,
  connect/disconnect and Engine.IO's own packets are not dropped (only beyond
  twice the bound, where the oldest message of any kind goes).  Once its queue
  is back under half full the client gets ``missed`` ``{"missed": n}``: how many
  events it lost.
- **No progress.**  A client whose queue has not moved for
  ``client_stall_seconds`` (default 30 s) -- its socket takes nothing, typically
  because its TCP window is full -- is disconnected (reason ``server
  disconnect``; counted in ``livedata_stalled_clients``), checked every second.
  A WebSocket send that does not complete within the same time is abandoned
  too, which ends the connection's tasks at once; what stays is the socket's
  kernel buffer and at most one transport buffer (64 KiB), freed when the peer
  reads or goes away.
- Dead peers are found by Engine.IO's ping/pong (every 25 s, 20 s to answer).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
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
from livedata.gateway.security import security
from livedata.gateway.server import RAW_WEBSOCKET, LimitedWebSocket
from livedata.gateway.stall import StallClock, Stalled
from livedata.model import MsgType, live_channel, valid_id

if TYPE_CHECKING:
    from livedata.runtime import Runtime

log = logging.getLogger("livedata.gateway.sio")

SENSOR_DATA_MODES = ("on", "throttled", "off")
SENSOR_DATA = "throttled"
"""The default of ``sensor-data``: ``on``, ``throttled`` (≤ 1 per topic per second) or ``off``."""
MAX_CLIENTS = 5_000
MAX_SUBSCRIPTIONS = 100
MAX_FIELDS = 500
TICK_S = 1.0
PENDING_MAX = 10_000

CLIENTS = Gauge("livedata_sio_clients", "Connected Socket.IO clients")
EMITS = Counter("livedata_sio_emits", "Socket.IO events emitted", ["event"])
DROPPED = Counter("livedata_sio_dropped", "Readings dropped before Socket.IO emission (queue full)")
CLIENT_DROPS = Counter(
    "livedata_sio_client_drops", "Socket.IO events dropped for slow clients (send buffer full)"
)

CLIENT_QUEUE = 256
"""Events queued for one Socket.IO client at most; beyond, the oldest are dropped."""
STALL_SECONDS = 30.0
"""A client whose queue did not move for this long is disconnected (``client_stall_seconds``)."""
CLOSE_TIMEOUT_S = 2.0


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


def _is_message(item: Any) -> bool:
    return getattr(item, "packet_type", None) == engineio.packet.MESSAGE


def _is_event(item: Any) -> bool:
    """A Socket.IO EVENT (its encoding starts with ``2``): what may be dropped for a slow client."""
    data = getattr(item, "data", None)
    return _is_message(item) and isinstance(data, str) and data[:1] == "2"


class _ClientQueue(asyncio.Queue[Any]):
    """One client's outgoing Engine.IO packets, bounded (see "Under stress" above).

    Engine.IO puts every packet for the client here and its writer (WebSocket) or
    the next poll (long-polling) takes them.  ``progress_at`` is when the queue
    last moved: something was taken, or the first packet arrived in an empty queue.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        """Events dropped since the client was last told (``missed``)."""
        self.progress_at = time.monotonic()
        super().__init__()

    def _init(self, maxsize: int) -> None:
        self._items: deque[Any] = deque()
        self._queue = self._items  # where asyncio.Queue's qsize() and empty() look

    def _put(self, item: Any) -> None:
        items = self._items
        if not items:
            self.progress_at = time.monotonic()
        elif len(items) >= self.limit and _is_event(item):
            if not self._drop(_is_event):
                self._drop(_is_message, 2 * self.limit)
        elif len(items) >= 2 * self.limit:
            self._drop(_is_message)
        items.append(item)

    def _drop(self, which: Callable[[Any], bool], at_least: int = 0) -> bool:
        """Drop the oldest queued packet that ``which`` accepts (when ``at_least`` are queued)."""
        if len(self._items) < at_least:
            return False
        for index, old in enumerate(self._items):
            if which(old):
                del self._items[index]
                self.task_done()  # it will never be taken: keep join() and the count right
                self.dropped += 1
                CLIENT_DROPS.inc()
                return True
        return False

    def _get(self) -> Any:
        self.progress_at = time.monotonic()
        return self._items.popleft()

    def stalled(self, now: float, seconds: float) -> bool:
        """Something is waiting and nothing was taken for ``seconds``."""
        return bool(self._items) and now - self.progress_at > seconds


def _guarded(receive: Any, send: Any, seconds: float) -> tuple[Any, Any]:
    """ASGI ``receive``/``send`` for a Socket.IO WebSocket that give up on a stalled client.

    A send that makes no progress for ``seconds`` raises ``OSError`` (Engine.IO's
    writer then stops), and from then on ``receive`` reports a disconnect, so
    Engine.IO's reader stops too and the connection ends without waiting for
    the client, which sends nothing either.
    """
    gave_up = asyncio.Event()
    gone = {"type": "websocket.disconnect", "code": 1006}
    clock = StallClock(seconds)  # one timer per connection, not one per packet

    async def guarded_send(message: Any) -> None:
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "websocket.send":
            try:
                await clock.send(send(message))
            except Stalled:
                gave_up.set()
                raise OSError(f"Socket.IO client took nothing for {seconds:g} s") from None
        elif kind == "websocket.close":
            clock.stop()
            await asyncio.wait_for(send(message), CLOSE_TIMEOUT_S)
        else:
            await send(message)

    async def guarded_receive() -> Any:
        if gave_up.is_set():
            return gone
        receiving = asyncio.ensure_future(receive())
        giving_up = asyncio.ensure_future(gave_up.wait())
        try:
            await asyncio.wait({receiving, giving_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            giving_up.cancel()
            if not receiving.done():
                receiving.cancel()
        return receiving.result() if receiving.done() and not receiving.cancelled() else gone

    return guarded_receive, guarded_send


class _EngineServer(engineio.AsyncServer):
    """Engine.IO with a bounded queue per client and WebSocket sends that give up."""

    client_queue = CLIENT_QUEUE
    stall_seconds = STALL_SECONDS

    def create_queue(self, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:  # not a client's packet queue
            return super().create_queue(*args, **kwargs)
        return _ClientQueue(self.client_queue)

    async def handle_request(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 3 and isinstance(args[0], dict) and args[0].get("type") == "websocket":
            scope, receive, send = args
            args = (scope, *_guarded(receive, send, self.stall_seconds))
        return await super().handle_request(*args, **kwargs)


class SioEvent:
    """A Socket.IO EVENT of one name (default namespace) in a server WebSocket text frame.

    The fan-out core's :class:`~livedata.gateway.fanout.Framing` for Socket.IO: Engine.IO
    v4 carries one packet per frame, ``42["name",data]``; the frame is unmasked, so one
    bytes object goes to every client that gets the event.
    """

    __slots__ = ("prefix",)

    def __init__(self, name: str) -> None:
        self.prefix = b'42["' + name.encode() + b'",'

    def frame(self, payload: bytes, head: dict[str, Any] | None = None) -> bytes:
        return WS_TEXT.frame(self.prefix + payload + b"]")


DEVICE_UPDATE = SioEvent("device-update")


class _Outbox(Outbox):
    """The fan-out core's outbox, its drops also counted as Socket.IO client drops."""

    __slots__ = ()

    def offer(self, payload: bytes, wire: bytes | None, head: dict[str, Any] | None) -> bool:
        missed = self.missed
        written = super().offer(payload, wire, head)
        if self.missed > missed:
            CLIENT_DROPS.inc(self.missed - missed)
        return written


class _Server(socketio.AsyncServer):
    def _engineio_server_class(self) -> type[_EngineServer]:
        return _EngineServer


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
        self.pending: deque[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = deque()
        self.positions: set[str] = set()
        """Clients whose device updates carry their channel position (they asked ``since``)."""
        self.wake = asyncio.Event()
        self.last_second: dict[str, int] = {}
        self.tasks: list[asyncio.Task[None]] = []

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
        self.tasks = [
            asyncio.create_task(self._pump(), name=f"sio-pump-{self.org}"),
            asyncio.create_task(self._tick(), name=f"sio-tick-{self.org}"),
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        state, self.state = self.state, None
        if state is not None:
            state.observers.remove(self._observe)
            await self.gw.fleet.release(state)

    def _observe(
        self, machine: FleetMachine, msg_type: str, values: dict[str, Any], head: dict[str, Any]
    ) -> None:
        """A reading: written at once to the subscribers on the fan-out core (no task,
        queue or await per message), queued for the pump for everything else."""
        chassis = machine.chassis
        subscribers = self.subscribers.get(chassis)
        if chassis not in self.online:
            self.online.add(chassis)
            if subscribers:
                self._direct(list(subscribers), _status(machine, True))
            self._queue(("status", chassis, msg_type, {}, head))
        if subscribers:
            for sids, data in self._updates(chassis, msg_type, values, head, subscribers):
                self._direct(sids, data)
        self._queue(("reading", chassis, msg_type, values, head))

    def _queue(self, item: tuple[str, str, str, dict[str, Any], dict[str, Any]]) -> None:
        if len(self.pending) >= PENDING_MAX:
            self.pending.popleft()
            DROPPED.inc()
        self.pending.append(item)
        self.wake.set()

    async def _pump(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                kind, chassis, msg_type, values, head = self.pending.popleft()
                try:
                    if kind == "status":
                        await self._emit_status(chassis, direct=False)
                    else:
                        await self._emit_reading(chassis, msg_type, values, head)
                except Exception:
                    log.exception("Socket.IO emission for %s/%s failed", self.org, chassis)

    async def _emit_status(self, chassis: str, direct: bool = True) -> None:
        machine = self.machines.get(chassis)
        subscribers = self.subscribers.get(chassis)
        if machine is not None and subscribers:
            status = _status(machine, chassis in self.online)
            await self._device_update(chassis, list(subscribers), status, direct)

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

    def _direct(self, sids: list[str], data: dict[str, Any]) -> None:
        """``device-update`` to those of ``sids`` on the fan-out core: encoded and framed once."""
        outboxes = self.gw.outboxes
        direct = [outboxes[sid] for sid in sids if sid in outboxes]
        if direct:
            payload = orjson.dumps(data)
            wire = DEVICE_UPDATE.frame(payload)
            for outbox in direct:
                outbox.offer(payload, wire, None)
            EMITS.labels("device-update").inc()

    async def _device_update(
        self, chassis: str, sids: list[str], data: dict[str, Any], direct: bool = True
    ) -> None:
        """``device-update`` to ``sids`` of the device's room: to the clients on the fan-out
        core when ``direct`` (else they had it), python-socketio's emit for the others."""
        outboxes = self.gw.outboxes
        if direct:
            self._direct(sids, data)
        if any(sid not in outboxes for sid in sids):
            room = self.device_room(chassis)
            skip = [sid for sid in self.subscribers.get(chassis, {}) if sid not in sids]
            skip += [sid for sid in sids if sid in outboxes]
            await self.gw.emit("device-update", data, to=room, skip_sid=skip or None)

    async def _emit_reading(
        self, chassis: str, msg_type: str, values: dict[str, Any], head: dict[str, Any]
    ) -> None:
        """What :meth:`_observe` left to the pump: device updates to clients that are not
        on the fan-out core, and ``sensor-data``."""
        ts = int(head["ts"])
        subscribers = self.subscribers.get(chassis)
        outboxes = self.gw.outboxes
        if subscribers and any(sid not in outboxes for sid in subscribers):
            for sids, data in self._updates(chassis, msg_type, values, head, subscribers):
                await self._device_update(chassis, sids, data, direct=False)
        mode = self.gw.sensor_data
        if mode == "off":
            return
        topic = live_channel(self.org, chassis, msg_type)
        second = ts // 1000
        if mode == "throttled":
            if self.last_second.get(topic, -1) >= second:
                return
            self.last_second[topic] = second
        await self.gw.emit(
            "sensor-data", {"topic": topic, "data": values, "timestamp": ts}, to=self.room
        )

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
                if machine is not None:
                    await self._emit_status(chassis)
        await self.gw.emit("dashboard:update", self.summary(), to=self.room)
        await self.gw.check_clients(self.clients)
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
    """The Socket.IO server of one runtime; ``asgi(app)`` mounts it beside ``app``."""

    def __init__(
        self,
        rt: Runtime,
        *,
        sensor_data: str = SENSOR_DATA,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        client_queue: int = CLIENT_QUEUE,
        stall_seconds: float | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        if sensor_data not in SENSOR_DATA_MODES:
            raise ValueError(f"sensor_data must be one of {SENSOR_DATA_MODES}")
        self.rt = rt
        self.fleet = fleet if fleet is not None else Fleet(rt)
        """The gateway's shared fleet state (the app's, when mounted on it)."""
        self.sensor_data = sensor_data
        self.max_subscriptions = max_subscriptions
        self.sio = _Server(
            async_mode="asgi",
            logger=False,
            engineio_logger=False,
            max_http_buffer_size=65_536,
            # the same Origin rule as the WebSocket: own origin or allowed_origins
            cors_allowed_origins=self._origin_allowed,
        )
        if stall_seconds is None:
            stall_seconds = getattr(rt.settings, "client_stall_seconds", STALL_SECONDS)
        self.sio.eio.client_queue = client_queue
        self.sio.eio.stall_seconds = stall_seconds
        self._closing: set[asyncio.Task[None]] = set()
        self._clients: dict[str, _Client] = {}
        self._feeds: dict[str, _OrgFeed] = {}
        self._live: dict[str, int] = {}
        """Socket.IO session id → its handle in the security service's live registry."""
        self.outboxes: dict[str, Outbox] = {}
        """Socket.IO session id → its fan-out outbox (WebSocket clients of the server layer)."""
        self._lock = asyncio.Lock()
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self.sio.on("subscribe-device", self._subscribe)
        self.sio.on("unsubscribe-device", self._unsubscribe)
        _GATEWAYS.add(self)

    def asgi(self, app: Any) -> socketio.ASGIApp:
        return socketio.ASGIApp(self.sio, other_asgi_app=app)

    async def emit(self, event: str, data: Any, **kwargs: Any) -> None:
        await self.sio.emit(event, data, **kwargs)
        EMITS.labels(event).inc()

    async def emit_alert(self, org: str, alert: dict[str, Any]) -> None:
        """Send ``alert-created`` with ``alert`` to every client of ``org``."""
        if org in self._feeds:
            await self.emit("alert-created", alert, to=org_room(org))

    # slow clients -----------------------------------------------------------

    def _queue_of(self, sid: str) -> tuple[str, _ClientQueue] | None:
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        socket = self.sio.eio.sockets.get(eio_sid) if eio_sid is not None else None
        queue = getattr(socket, "queue", None)
        return (eio_sid, queue) if isinstance(queue, _ClientQueue) else None

    async def check_clients(self, sids: Iterable[str]) -> None:
        """Disconnect clients that made no progress; tell the others what they missed."""
        now = time.monotonic()
        stall = self.sio.eio.stall_seconds
        for sid in list(sids):
            found = self._queue_of(sid)
            if found is None:
                continue
            eio_sid, queue = found
            if queue.stalled(now, stall):
                if not any(t.get_name() == f"sio-stalled-{eio_sid}" for t in self._closing):
                    task = asyncio.create_task(self._close_stalled(eio_sid, stall))
                    task.set_name(f"sio-stalled-{eio_sid}")
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)
            elif queue.dropped and queue.qsize() <= queue.limit // 2:
                missed, queue.dropped = queue.dropped, 0
                await self.emit("missed", {"missed": missed}, to=sid)

    async def _close_stalled(self, eio_sid: str, stall: float) -> None:
        socket = self.sio.eio.sockets.get(eio_sid)
        if socket is None or socket.closed or socket.closing:
            return
        observe.STALLED.inc()
        log.info("disconnecting a Socket.IO client that took nothing for %g s", stall)
        try:
            # no CLOSE packet (it could not get through) and no waiting for the queue
            await socket.close(wait=False, abort=True, reason=self.sio.eio.reason.SERVER_DISCONNECT)
        except Exception:
            log.exception("closing a stalled Socket.IO client failed")

    # connections ------------------------------------------------------------

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        if len(self._clients) >= MAX_CLIENTS:
            raise socketio.exceptions.ConnectionRefusedError(
                "this server has too many clients", {"code": "too_many_clients"}
            )
        principal = await self._authenticate(environ, auth)
        handle = security(self.rt).open_live(
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

    def _attach(self, sid: str, environ: dict[str, Any]) -> None:
        """Give a client on a WebSocket of the server layer an outbox of the fan-out core:
        its device updates are written straight to its transport (see "Under stress")."""
        scope = environ.get("asgi.scope") or {}
        raw = (
            scope.get("extensions", {}).get(RAW_WEBSOCKET)
            if scope.get("type") == "websocket"
            else None
        )
        if not isinstance(raw, LimitedWebSocket):
            return

        def stalled() -> None:
            log.info("disconnecting a Socket.IO client that took nothing for %g s", stall)
            raw.close_now(1013, "client too slow")

        stall = self.sio.eio.stall_seconds
        outbox = _Outbox(raw.transport, DEVICE_UPDATE, stalled, self.sio.eio.client_queue, stall)
        raw.attach(outbox)
        self.outboxes[sid] = outbox

    def _origin_allowed(self, origin: str | None, environ: dict[str, Any]) -> bool:
        headers = {"host": environ.get("HTTP_HOST", "")}
        if origin is not None:
            headers["origin"] = origin
        return security(self.rt).origin_ok(headers)

    async def _authenticate(self, environ: dict[str, Any], auth: Any) -> Principal:
        """The caller, from the auth payload ``{token}``, a header, the cookie or the query."""
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        given = auth if isinstance(auth, dict) else {}
        if isinstance(given.get("token"), str):
            query["access_token"] = given["token"]
        sec = security(self.rt)
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
            security(self.rt).close_live(handle)
        async with self._lock:
            client = self._clients.pop(sid, None)
            if client is None:
                return
            for device in client.subscriptions:
                self.rt.viewers.left(client.org, device)  # real-time follows viewers
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
        if not valid_id(device) or await self.rt.catalog.machine(org, device) is None:
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
            self.rt.viewers.joined(org, device)  # real-time follows viewers
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
            complete, missed = await self.rt.hub.missed_since(channel, position)
            recovered = recovered and complete
            for values, head in missed:
                for sids, data in feed._updates(device, msg_type, values, head, {sid: fields}):
                    await feed._device_update(device, sids, data)
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
        self.rt.viewers.left(client.org, device)  # real-time follows viewers
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


_GATEWAYS: weakref.WeakSet[SocketGateway] = weakref.WeakSet()
_BY_RUNTIME: weakref.WeakKeyDictionary[Runtime, SocketGateway] = weakref.WeakKeyDictionary()


def socket_gateway(rt: Runtime, **options: Any) -> SocketGateway:
    """The Socket.IO gateway of ``rt`` (created on first use with ``options``)."""
    gateway = _BY_RUNTIME.get(rt)
    if gateway is None:
        gateway = _BY_RUNTIME[rt] = SocketGateway(rt, **options)
    return gateway


def with_socketio(app: Any, rt: Runtime, **options: Any) -> socketio.ASGIApp:
    """``app`` with Socket.IO mounted at ``/socket.io/`` (lifespan and the rest go to ``app``).

    Socket.IO shares ``app``'s fleet state (``app.state.fleet``, made by ``create_app``)."""
    state = getattr(app, "state", None)
    fleet = getattr(state, "fleet", None) if state is not None else None
    if fleet is not None:
        options.setdefault("fleet", fleet)
    return socket_gateway(rt, **options).asgi(app)


async def emit_device_update(rt: Runtime, org: str, chassis: str, update: dict[str, Any]) -> None:
    """Send ``device-update`` to the room of one device, when ``rt`` serves Socket.IO."""
    gateway = _BY_RUNTIME.get(rt)
    if gateway is not None:
        await gateway.emit("device-update", update, to=device_room(org, chassis))


async def emit_alert(org: str, alert: dict[str, Any]) -> None:
    """Send ``alert-created`` to the Socket.IO clients of ``org`` in this process."""
    for gateway in list(_GATEWAYS):
        try:
            await gateway.emit_alert(org, alert)
        except Exception:
            log.exception("alert-created to %s failed", org)


__all__ = [
    "SENSOR_DATA",
    "SENSOR_DATA_MODES",
    "SocketGateway",
    "emit_alert",
    "socket_gateway",
    "with_socketio",
]
