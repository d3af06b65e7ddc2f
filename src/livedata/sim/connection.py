"""One simulated machine's MQTT connection, lean enough for 10,000 of them in one process.

What a :class:`SimDevice` does on the wire is what :class:`livedata.devices.mqtt.MqttDevice`
does (see ``docs/device-protocol.md``): client id and username ``{tenant}/{chassis}``,
a retained Last Will ``{"online": false, "reason": "lost"}`` on its status topic, the
retained ``online`` status after each connect, telemetry at QoS 1, and direct
methods answered on ``…/methods/res/{requestId}``.  It speaks MQTT 5 through
:mod:`livedata.sim.wire` on an :class:`asyncio.Protocol` instead of a general client,
so a publish costs a few microseconds: :meth:`SimDevice.publish` writes a machine's
messages of one second with one ``write`` and returns; PUBACKs are counted as
they come (``sent``).

Under stress: at most ``inflight`` (10) messages are unacknowledged per connection
— fewer if the broker's Receive Maximum says so — and up to ``spool`` (120) more wait
in order; while connected :attr:`SimDevice.full` tells the fleet to wait
(:meth:`SimDevice.room`) before giving it more (a slow broker slows the fleet).

Like a real device, it keeps what it could not send: when the connection is lost the
telemetry in flight (unacknowledged) goes back to the front of the waiting messages,
in the order sent, and while disconnected (it reconnects with backoff, 0.5 s … 30 s,
jittered) new telemetry joins them; after the reconnect they go out first, oldest
first, before anything newer, paced by the inflight window.  So a broker restart of up
to a minute (``spool`` / 2 messages a second) loses nothing; a message that was in
flight when the connection broke may reach the broker twice (at least once: the
stores keep one).  Beyond ``spool`` the **oldest** are dropped and counted
(``dropped``), as are those still waiting when the device is closed; a real agent
spools to disk (:mod:`livedata.agent.spool`), this one in memory: 10,000 machines with
full spools (1.2 M messages, a minute or more disconnected) took 343 MiB more RSS,
0.29 KB a message.  A disconnected machine is never ``full``: the fleet's ticker does
not wait for it.  Status and method answers are not kept (the status is published
again on each connect).  A PUBACK with a failure reason (say, not authorised) counts as
``refused``.  Keepalive: a PINGREQ every ``keepalive`` / 2 seconds in which the device
published nothing (a timer callback per connection, no task); a broker that sends
nothing for 1.5 × ``keepalive`` is taken as gone.

The CPU is mostly the kernel's: one ``send`` of a machine's second and one ``recv`` of
its PUBACKs, on uvloop (``livedata simulate`` runs on it when installed) 14 µs of CPU
per message at 1 Hz against 16-17 µs on asyncio's loop (3,000 machines against a
Mosquitto of their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson

from livedata.backends import redact
from livedata.devices.base import MethodResult, answer_method
from livedata.errors import BackendError, ConfigError
from livedata.model import valid_id
from livedata.retry import backoff
from livedata.sim import wire

__all__ = ["SimDevice", "device_topics"]

log = logging.getLogger("livedata.sim.connection")

INFLIGHT = 10
SPOOL = 120
"""Telemetry messages a machine keeps beyond those in flight: a minute of a machine at
1 Hz (2 messages a second), more than a broker restart takes."""
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
_OPTIONS = frozenset(("keepalive", "connect_timeout"))

MethodAnswer = Callable[[str, Any], Awaitable[MethodResult]]
_Message = tuple[bytes, bytes, bool]
"""(prepared topic, payload, is telemetry)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _status(online: bool, reason: str | None = None) -> bytes:
    body: dict[str, Any] = {"online": online, "ts": _now_ms()}
    if reason is not None:
        body["reason"] = reason
    return orjson.dumps(body)


def device_topics(tenant: str, chassis: str) -> tuple[bytes, bytes]:
    """The prepared ``vehicle_can`` and ``client_raw_data`` telemetry topics of a machine."""
    prefix = f"livedata/{tenant}/{chassis}/telemetry/"
    return (
        wire.publish_header(prefix + "vehicle_can"),
        wire.publish_header(prefix + "client_raw_data"),
    )


class _Protocol(asyncio.Protocol):
    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self.reader = wire.PacketReader()
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[tuple[int, dict[int, int]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.heard = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self.published = False
        """Whether telemetry went out since the last keepalive tick (then no PINGREQ is due)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def keepalive(self, ping: float, silent: float) -> None:
        """A PINGREQ every ``ping`` seconds unless telemetry went out meanwhile (MQTT asks for
        one only when nothing else was sent); abort once nothing was heard for ``silent``.

        A timer callback, not a task: 10,000 devices' keepalives waking a coroutine with a
        ``wait_for`` each were a tenth of the simulator's CPU."""
        loop = asyncio.get_running_loop()

        def tick() -> None:
            transport = self.transport
            if transport is None or self.lost.done():
                return
            if time.monotonic() - self.heard > silent:
                self.device.last_error = "broker silent for 1.5 × keepalive"
                transport.abort()
                return
            if self.published:
                self.published = False
            else:
                transport.write(wire.PINGREQ_PACKET)
            self._timer = loop.call_later(ping, tick)

        self._timer = loop.call_later(ping, tick)

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        try:
            packets = self.reader.feed(data)
        except wire.ProtocolError as exc:
            self.device.last_error = f"protocol error: {exc}"
            if self.transport is not None:
                self.transport.abort()
            return
        for kind, flags, body in packets:
            try:
                self.device._packet(self, kind, flags, body)
            except wire.ProtocolError as exc:
                self.device.last_error = f"protocol error: {exc}"
                if self.transport is not None:
                    self.transport.abort()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.connack.done():
            self.connack.set_exception(
                ConnectionError(str(exc) if exc else "closed before CONNACK")
            )
        if not self.lost.done():
            self.lost.set_result(None)
        self.device._lost(self, exc)


class SimDevice:
    """One simulated machine's connection to the broker (see the module doc)."""

    def __init__(
        self,
        url: str,
        tenant: str,
        chassis: str,
        on_method: MethodAnswer | None = None,
        *,
        inflight: int = INFLIGHT,
        spool: int = SPOOL,
    ) -> None:
        if not valid_id(tenant) or not valid_id(chassis):
            raise ConfigError(f"invalid organisation or machine id: {tenant!r}/{chassis!r}")
        shown = redact(url)
        parts = urlsplit(url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ConfigError(f"MQTT URL {shown!r} must be mqtt://[user:pass@]host[:port]")
        params = dict(parse_qsl(parts.query))
        unknown = sorted(set(params) - _OPTIONS)
        if unknown:
            raise ConfigError(
                f"MQTT URL option {unknown[0]!r} is not known; use keepalive, connect_timeout"
            )
        try:
            self.port = parts.port or 1883
            self.keepalive = int(params.get("keepalive", "30"))
            self.connect_timeout = float(params.get("connect_timeout", "10"))
        except ValueError as exc:
            raise ConfigError(f"MQTT URL {shown!r}: {exc}") from None
        if not (5 <= self.keepalive <= 3600 and 0.1 <= self.connect_timeout <= 3600):
            raise ConfigError(
                f"MQTT URL {shown!r}: keepalive must be 5 … 3600, connect_timeout 0.1 … 3600"
            )
        self.host = parts.hostname
        self.username = unquote(parts.username) if parts.username is not None else None
        self.password = unquote(parts.password) if parts.password is not None else None
        self.tenant = tenant
        self.chassis = chassis
        self.client_id = f"{tenant}/{chassis}"
        self.on_method = on_method
        self.status_topic = f"livedata/{tenant}/{chassis}/status"
        self._status_header = wire.publish_header(self.status_topic)
        self.topics = device_topics(tenant, chassis)
        self.max_inflight = inflight
        self.spool = spool
        self.sent = 0
        """Telemetry messages the broker acknowledged."""
        self.dropped = 0
        """Telemetry messages never acknowledged and given up: the oldest beyond ``spool``,
        and those still waiting at :meth:`close`."""
        self.refused = 0
        """Telemetry messages the broker acknowledged with a failure reason."""
        self.connects = 0
        self.last_error = "no attempt yet"
        self._proto: _Protocol | None = None
        self._window = inflight
        self._inflight: dict[int, _Message] = {}  # packet id → message, in the order sent
        self._waiting: deque[_Message] = deque()
        """Not sent yet, oldest first: beyond the window while connected, all while not."""
        self._next_id = 0
        self._room = asyncio.Event()
        self._room.set()
        self._settled = asyncio.Event()
        """Set while nothing is in flight or waiting, or while disconnected."""
        self._settled.set()
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        return self._proto is not None

    @property
    def full(self) -> bool:
        """Whether :meth:`publish` should wait for :meth:`room` first: connected and
        ``spool`` messages waiting (disconnected, the oldest make room)."""
        return self._proto is not None and len(self._waiting) >= self.spool

    @property
    def spooled(self) -> int:
        """Messages waiting to be sent."""
        return len(self._waiting)

    async def room(self) -> None:
        """Wait until fewer than ``spool`` messages wait (or the connection is gone)."""
        await self._room.wait()

    def _update_room(self) -> None:
        if self.full:
            self._room.clear()
        else:
            self._room.set()

    # -- connecting -------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect once (:class:`BackendError`, or :class:`ConfigError` if refused), then stay so."""
        if self._task is not None:
            return
        self._stopping = False
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"sim-device-{self.client_id}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self.connect_timeout)
        except TimeoutError:
            await self._stop()
            raise BackendError(
                f"device {self.client_id}: MQTT broker {self.host}:{self.port} not reachable "
                f"after {self.connect_timeout:g} s: {self.last_error}"
            ) from None
        except ConfigError:
            await self._stop()
            raise

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: _Protocol(self), self.host, self.port)
        assert proto.transport is not None
        proto.transport.write(
            wire.connect(
                self.client_id,
                keepalive=self.keepalive,
                will_topic=self.status_topic,
                will_payload=_status(False, "lost"),
                username=self.username,
                password=self.password,
            )
        )
        try:
            reason, props = await asyncio.wait_for(proto.connack, self.connect_timeout)
        except BaseException:
            proto.transport.abort()
            raise
        if reason != 0:
            proto.transport.abort()
            raise ConfigError(
                f"device {self.client_id}: MQTT broker {self.host}:{self.port} refused the "
                f"connection (reason 0x{reason:02X})"
            )
        self._window = min(self.max_inflight, props.get(wire.RECEIVE_MAXIMUM, 65535))
        self._proto = proto
        self.connects += 1
        proto.transport.write(
            wire.subscribe(
                self._packet_id(), f"livedata/{self.tenant}/{self.chassis}/methods/req/+/+"
            )
        )
        self._write(self._status_header, _status(True), retain=True)
        self._release(proto)  # what was kept while disconnected, oldest first
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        proto.keepalive(self.keepalive / 2, 1.5 * self.keepalive)
        await asyncio.shield(proto.lost)

    async def _run(self) -> None:
        delays = backoff(BACKOFF_MIN, BACKOFF_MAX, jitter=0.2)
        while not self._stopping:
            try:
                await self._session()
                delays = backoff(BACKOFF_MIN, BACKOFF_MAX, jitter=0.2)
            except ConfigError as exc:
                self.last_error = str(exc)
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(exc)
                    return
            except (OSError, TimeoutError) as exc:
                self.last_error = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug must not end the machine's reconnecting
                log.exception("device %s: connection failed", self.client_id)
                self.last_error = repr(exc)
            if self._stopping:
                return
            await asyncio.sleep(next(delays))

    def _lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if self._proto is not proto:
            return
        self._proto = None
        if exc is not None:
            self.last_error = str(exc) or type(exc).__name__
        # telemetry in flight may have reached the broker or not: sent again (at least once)
        kept = [m for m in self._inflight.values() if m[2]]
        kept += [m for m in self._waiting if m[2]]
        self._inflight.clear()
        self._waiting = deque(kept)
        self._trim()
        self._room.set()
        self._settled.set()

    def _trim(self) -> None:
        """Drop (and count) the oldest waiting messages beyond ``spool``."""
        waiting = self._waiting
        for _ in range(len(waiting) - self.spool):
            waiting.popleft()
            self.dropped += 1

    # -- publishing -------------------------------------------------------------------

    def _packet_id(self) -> int:
        pid = self._next_id
        while True:
            pid = pid % 0xFFFF + 1
            if pid not in self._inflight:
                self._next_id = pid
                return pid

    def _write(self, topic: bytes, payload: bytes, *, retain: bool = False) -> None:
        """Publish a status or method answer (dropped while disconnected: no longer true)."""
        proto = self._proto
        if proto is None or proto.transport is None:
            return
        message = (topic, payload, False)
        if len(self._inflight) >= self._window:
            self._waiting.append(message)
            self._update_room()
            return
        pid = self._packet_id()
        self._inflight[pid] = message
        self._settled.clear()
        proto.transport.write(wire.publish(topic, pid, payload, retain=retain))

    def publish(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Publish ``(topic, payload)`` pairs at QoS 1 with one ``write``; returns at once.

        ``topic`` comes from :func:`device_topics` (this machine's own). While
        disconnected the messages are kept (the oldest beyond ``spool`` dropped and
        counted) and sent after the reconnect.
        """
        proto = self._proto
        waiting = self._waiting
        if proto is None or proto.transport is None:
            waiting.extend((topic, payload, True) for topic, payload in messages)
            self._trim()
            return
        packets = []
        inflight = self._inflight
        for topic, payload in messages:
            if len(inflight) >= self._window or waiting:
                waiting.append((topic, payload, True))
                continue
            pid = self._packet_id()
            inflight[pid] = (topic, payload, True)
            packets.append(wire.publish(topic, pid, payload))
        if packets:
            self._settled.clear()
            proto.transport.write(b"".join(packets))
            proto.published = True
        if self.full:
            self._room.clear()

    def _packet(self, proto: _Protocol, kind: int, flags: int, body: bytes) -> None:
        if kind == wire.PUBACK:
            pid, reason = wire.puback_reason(body)
            message = self._inflight.pop(pid, None)
            if message is not None and message[2]:
                if reason >= 0x80:
                    self.refused += 1
                else:
                    self.sent += 1
            self._release(proto)
            if not self._inflight:
                self._settled.set()
        elif kind == wire.CONNACK:
            if not proto.connack.done():
                proto.connack.set_result(wire.connack(body))
        elif kind == wire.PUBLISH:
            topic, pid, payload = wire.read_publish(flags, body)
            if pid and proto.transport is not None:
                proto.transport.write(wire.puback(pid))
            task = asyncio.create_task(self._answer(topic, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif kind == wire.SUBACK:
            codes = wire.suback_codes(body)
            if any(code >= 0x80 for code in codes):
                log.warning(
                    "device %s: the broker refused the methods subscription", self.client_id
                )
        elif kind == wire.DISCONNECT:
            self.last_error = f"the broker disconnected (reason {body[0] if body else 0})"

    def _release(self, proto: _Protocol) -> None:
        """Send what waits while the window has room."""
        waiting = self._waiting
        if not waiting or proto.transport is None:
            return
        packets = []
        while waiting and len(self._inflight) < self._window:
            message = waiting.popleft()
            pid = self._packet_id()
            self._inflight[pid] = message
            packets.append(wire.publish(message[0], pid, message[1]))
        if packets:
            self._settled.clear()
            proto.transport.write(b"".join(packets))
            proto.published = True
        self._update_room()

    async def _answer(self, topic: str, raw: bytes) -> None:
        """Run the handler for one method request and publish its answer."""
        levels = topic.split("/")
        if len(levels) != 7 or levels[4] != "req":
            return
        method, request_id = levels[5], levels[6]
        body = await answer_method(self.on_method, method, raw, self.client_id)
        res = f"livedata/{self.tenant}/{self.chassis}/methods/res/{request_id}"
        self._write(wire.publish_header(res), body)

    # -- stopping ---------------------------------------------------------------------

    async def close(self) -> None:
        """Publish the retained ``offline`` status and disconnect cleanly (no Last Will)."""
        with contextlib.suppress(TimeoutError):  # let what is in flight be acknowledged
            await asyncio.wait_for(self._settled.wait(), 2)
        proto = self._proto
        if proto is not None and proto.transport is not None:
            pid = self._packet_id()
            proto.transport.write(
                wire.publish(self._status_header, pid, _status(False, "closed"), retain=True)
                + wire.DISCONNECT_PACKET
            )
            proto.transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proto.lost), 2)
        await self._stop()

    async def abort(self) -> None:
        """Drop the connection without DISCONNECT (the broker publishes the Last Will)."""
        self._stopping = True
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        await self._stop()

    async def _stop(self) -> None:
        self._stopping = True
        self.dropped += sum(1 for m in self._waiting if m[2])  # never sent: given up
        self._waiting.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        for pending in list(self._tasks):
            pending.cancel()
