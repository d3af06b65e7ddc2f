"""The device link over MQTT (aiomqtt, MQTT 5): telemetry in, presence, and the device side.

Topic scheme — everything of one device lives under its own prefix
``livedata/{tenant}/{chassis}/``, so a broker ACL can confine a device to it with one
pattern (Mosquitto: username ``{tenant}/{chassis}`` and
``pattern write livedata/%u/telemetry/+``; see ``docs/device-protocol.md``)::

    livedata/{tenant}/{chassis}/telemetry/{msgType}              device → ingest, QoS 1
    livedata/{tenant}/{chassis}/status                           device → all, QoS 1, retained
    livedata/{tenant}/{chassis}/methods/req/{method}/{requestId} server → device  (reserved)
    livedata/{tenant}/{chassis}/methods/res/{requestId}          device → server  (reserved)

- **telemetry**: ``msgType`` is ``vehicle_can`` or ``client_raw_data``; the payload is
  :mod:`livedata.codec`'s encoding.  The tenant, chassis and message type are taken
  from the topic only, never from the payload, so with the ACL in place a device
  cannot write another machine's data.
- **status** (presence): ``{"online": true, "ts": <ms>}`` published retained by the
  device after each connect; its Last Will, registered at connect, is the retained
  ``{"online": false, "ts": <ms of that connect>, "reason": "lost"}``, so the broker
  announces "offline" the moment it drops the connection (at once for a closed
  socket; after 1.5 × the 30 s keepalive for a silent network).  A clean close publishes
  ``{"online": false, "ts": …, "reason": "closed"}`` first.
- **methods** (direct methods): a request carries its id in the topic, so
  correlation needs neither MQTT 5 properties nor a shared response topic; the
  device subscribes ``livedata/{tenant}/{chassis}/methods/req/+/+`` and answers on
  ``…/methods/res/{requestId}`` with ``{"status": <int>, "payload": <JSON>}``; the
  request payload is the method's JSON payload.  Both at QoS 1, not retained.
  Every server link subscribes ``livedata/+/+/methods/res/+`` *without* a share
  group, so the process that sent a request sees its answer; it matches answers to
  its pending requests by id (32 random hex digits) and ignores the others.  Ids are
  :func:`livedata.model.valid_id` strings, which contain no ``/``, ``+`` or ``#``.
  :meth:`MqttDeviceLink.call` refuses a device whose last status is not ``online``
  (:class:`~livedata.errors.DeviceNotConnected`) and gives up after the response
  timeout (:class:`~livedata.errors.DeviceTimeout`); a late answer is dropped.

Server side, :class:`MqttDeviceLink` — ``mqtt://[user:pass@]host[:port][?options]``:

``group`` (``ingest``)
    the shared-subscription group: the link subscribes
    ``$share/{group}/livedata/+/+/telemetry/+``, so several ingest processes in one
    group split the messages, each message going to one of them.
``shared`` (``on``), ``partition`` (none)
    ``shared=off`` subscribes ``livedata/+/+/telemetry/+`` without a share group.
    Needed for a broker restart on Mosquitto 2.0.x: with ``persistence true`` it
    restores a persistent session's plain subscription at start and queues for it
    what devices publish before ingest is back, but it does not restore a
    ``$share/…`` subscription, so what devices publish between the broker's start
    and ingest's resubscribe is dropped for want of a subscriber (measured on
    2.0.11; EMQX and HiveMQ restore shared subscriptions).  Without a share group
    every ingest process gets every message, so with several give each
    ``partition=i/n`` (``0/2`` and ``1/2``): it takes the machines whose
    ``crc32("{tenant}/{chassis}") % n == i`` and acknowledges the others at once,
    unread (their own process has its own copy).  The cost: each process receives
    all ``n`` shares from the broker, and Mosquitto 2.0.11 pays for it: with 2
    partitions and 2,000 machines at 1 Hz it took 96 % of a core, its queues for
    the links grew and throughput collapsed to 613 of 4,000 records/s, where one
    share group carried the same fleet with the broker at 8 %
    (``bench/bench_cluster.py --fleets 2000 --ingest 2 --split partition|share``).
    Use a share group unless the broker restart case matters more.
``inflight`` (10000)
    MQTT 5 Receive Maximum: the broker sends this link at most this many
    unacknowledged messages and holds the rest — the back-pressure when ingest is
    slow.  Mosquitto 2.0.11 honours it for the first window but (measured) releases
    up to ``inflight`` more queued messages per PUBACK, so what a link may buffer is
    really bounded by the broker's queue for it (``max_queued_messages``, default
    1000 in Mosquitto; raise it for big fleets, the broker drops messages above it,
    after acknowledging them to the device: the link follows Mosquitto's count of
    them, :data:`BROKER_DROPPED_TOPIC`, and warns when it grows).
    It is also the link's :attr:`~livedata.devices.base.DeviceLink.window`: once half
    of it waits for acknowledgement, ingest writes its store batch at once instead of
    waiting out ``store_batch_ms`` for messages that may not come (the other half keeps
    the link receiving meanwhile) -- so half of it should exceed a link's messages/s
    times ``store_batch_ms`` (plus a write), or it, not the store's batching, decides the
    batch size.  The default 10000 leaves room for 5,000 messages/s per link (one of two
    ingest processes at 5,000 machines) against ClickHouse's 1 s; at 1000 a ClickHouse
    insert had 1,000 records several times a second (``bench/bench_cluster.py --machines
    2000 --ingest 2``, 3 rounds: 2,182-2,449 records per insert at 5000 with 1 s,
    ClickHouse's CPU per record 0.56-0.60x; ingest's RSS -20 to +40 MiB).
``client_id``, ``session_expiry`` (3600 when ``client_id`` is given, else 0)
    with a ``client_id`` the link keeps a persistent session (``clean_start`` off);
    see acknowledgement below.
``keepalive`` (30), ``connect_timeout`` (30)
    seconds; ``connect_timeout`` bounds the wait in :meth:`MqttDeviceLink.start`.

Acknowledgement.  aiomqtt 2.5 has no manual-ack API (empicano/aiomqtt#345, open), but
the paho-mqtt 2 client under it does (``manual_ack_set`` / ``ack``); the link turns it
on, so a QoS 1 message is PUBACKed only when ingest awaits the delivery's ``ack`` —
after its record is durable (store or spill journal) and in the log.  PUBACKs go out in
the order the messages were received, as MQTT 5 (4.6) requires: one acknowledged
before an older message (a rejection, or what the link acknowledges itself: presence,
method answers, another partition's machines) waits until that one is acknowledged
too, since Mosquitto pays for a PUBACK out of order with a walk past every older
unacknowledged message (:meth:`MqttDeviceLink._flush_acks`).  The PUBACKs of one
event-loop turn are written together (one paho packet of 4-byte PUBACKs: the
acknowledgements ingest makes after one store write go out in one write).  Until then
the message is in flight and counts against ``inflight``.  What the broker does with unacknowledged messages
when a link dies (measured on Mosquitto 2.0.11):

- without ``client_id`` (clean session): they are **dropped** with the session;
  Mosquitto does not hand them to another member of the share group (the MQTT 5
  spec allows but does not require it; EMQX and HiveMQ do redispatch).  At most
  ``inflight`` messages of the dead process are lost; new messages go to the survivors.
- with ``client_id`` (persistent session): they are **redelivered** when a link with
  the same ``client_id`` reconnects (a restart by systemd or Kubernetes), duplicates
  being harmless because stores write idempotently.  But Mosquitto keeps assigning
  that member its share of new messages while it is away, queued for its return
  (and dropped if ``session_expiry`` passes first).

So: persistent sessions for ingest processes that are always restarted under the
same id, clean sessions where survivors must take over at once.  An acknowledgement
of a message received on a connection that has since been replaced is skipped (its
packet id means nothing on the new connection); the broker redelivers such a message
to a persistent session.

Under stress: the link reconnects with exponential backoff (0.5 s … 2 s, jittered:
it should be back before the devices, which back off up to 30 s) and resubscribes,
which also replays the retained statuses; a broker that stays away is logged once a
minute, with a count (:class:`~livedata.ratelog.Throttled`).  Each undecodable
message becomes a :class:`Rejection` (acknowledged by ingest at once) and nothing
else is affected.  So does telemetry a device published *retained*, when the broker
replays it at a (re)subscribe (a plain subscription, ``shared=off``, gets the retained
message again at every reconnect): it was delivered once, when it was published.  Deliveries decoded but not yet consumed wait in an in-process
queue, bounded by what the broker sends unacknowledged (see ``inflight``).
:attr:`MqttDeviceLink.presence` is the last state the broker told; while the link
itself is disconnected it is stale (check :attr:`MqttDeviceLink.connected`).
aiomqtt errors become :class:`~livedata.errors.BackendError` (broker unreachable or
failing) or :class:`~livedata.errors.ConfigError` (bad URL, credentials refused at
start).

Receiving, the fast path: paho still connects, subscribes, publishes and keeps the
connection alive, but the link reads the socket itself (:class:`_FastReceive`, in
place of paho's ``loop_read``): up to 256 KiB per readable event, split into packets
by the sans-I/O :class:`PacketSplitter`.  The QoS 0/1 PUBLISHes of one read become one
list — no paho or aiomqtt message objects, properties skipped by their length — and
every other packet (CONNACK, SUBACK, PUBACK, PINGRESP, DISCONNECT, QoS 2) goes to
paho's own packet handler, in stream order.  A telemetry topic is checked once and
remembered (tenant, chassis, type, partition), so the next message on it goes
straight to :func:`livedata.codec.decode`; a retained one always takes the full check.
The telemetry of one read reaches the inbox (:meth:`MqttDeviceLink.batches`) with one
wake-up.  The link's own work is about 18 µs of CPU per ``vehicle_can`` message of the
simulated wheel loader, about nine tenths of it :func:`~livedata.codec.decode`
building the frames (``bench/bench_mqtt_link.py``; 34 µs with paho reading the
packets, 220 µs with paho and aiomqtt doing everything); run more ingest processes in
the share group for more.

Device side, :class:`MqttDevice` — one machine's connection, for the simulator and the
edge agent.  Client id and (with per-device credentials) username
``{tenant}/{chassis}``: a second connection of the same device takes the first one over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import aiomqtt
import orjson
import paho.mqtt.client as paho
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from livedata.backends import redact, share_option
from livedata.codec import decode, encode
from livedata.devices.base import (
    Delivery,
    DeviceLink,
    DeviceStatus,
    MethodHandler,
    MethodResult,
    Rejection,
    answer_method,
)
from livedata.errors import (
    BackendError,
    ConfigError,
    DecodeError,
    DeviceNotConnected,
    DeviceTimeout,
)
from livedata.model import DeviceMessage, MsgType, valid_id
from livedata.observe import BROKER_DROPPED
from livedata.ratelog import Throttled
from livedata.retry import backoff

__all__ = [
    "STATUS_FILTER",
    "TELEMETRY_FILTER",
    "MqttDevice",
    "MqttDeviceLink",
    "PacketSplitter",
    "PresenceChange",
    "ProtocolError",
    "method_request_topic",
    "method_response_topic",
    "parse_topic",
    "status_topic",
    "telemetry_topic",
]

log = logging.getLogger("livedata.devices.mqtt")

ROOT = "livedata"
TELEMETRY_FILTER = f"{ROOT}/+/+/telemetry/+"
STATUS_FILTER = f"{ROOT}/+/+/status"
METHOD_RESPONSE_FILTER = f"{ROOT}/+/+/methods/res/+"
BROKER_DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
"""Mosquitto's count of PUBLISHes it dropped since it started (a subscriber's queue
full), republished retained when it changes (every ``sys_interval``, default 10 s)."""
DEFAULT_PORT = 1883
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0
LINK_BACKOFF_MAX = 2.0
"""The server link retries at least this often: it must be subscribed before devices
(which back off up to :data:`BACKOFF_MAX`) publish again after a broker restart."""
_MSG_TYPES = frozenset(t.value for t in MsgType)


def telemetry_topic(tenant: str, chassis: str, msg_type: str) -> str:
    return f"{ROOT}/{tenant}/{chassis}/telemetry/{msg_type}"


def status_topic(tenant: str, chassis: str) -> str:
    return f"{ROOT}/{tenant}/{chassis}/status"


def method_request_topic(tenant: str, chassis: str, method: str, request_id: str) -> str:
    """Direct method request: server → device."""
    return f"{ROOT}/{tenant}/{chassis}/methods/req/{method}/{request_id}"


def method_response_topic(tenant: str, chassis: str, request_id: str) -> str:
    """Direct method response: device → server."""
    return f"{ROOT}/{tenant}/{chassis}/methods/res/{request_id}"


def parse_topic(topic: str) -> tuple[str, str, str, list[str]]:
    """``(tenant, chassis, kind, rest)`` of a ``livedata/…`` topic; :class:`DecodeError` if not one.

    ``kind`` is ``telemetry``, ``status`` or ``methods``; the ids are checked with
    :func:`livedata.model.valid_id`.
    """
    levels = topic.split("/")
    if len(levels) < 4 or levels[0] != ROOT:
        raise DecodeError(f"topic {topic[:200]!r} is not a livedata topic")
    tenant, chassis, kind, rest = levels[1], levels[2], levels[3], levels[4:]
    if not valid_id(tenant) or not valid_id(chassis):
        raise DecodeError(f"topic {topic[:200]!r}: invalid organisation or machine id")
    return tenant, chassis, kind, rest


def _now_ms() -> int:
    return int(time.time() * 1000)


def _status(online: bool, ts: int, reason: str | None = None) -> bytes:
    body: dict[str, Any] = {"online": online, "ts": ts}
    if reason is not None:
        body["reason"] = reason
    return orjson.dumps(body)


# --- URLs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Broker:
    host: str
    port: int
    username: str | None
    password: str | None
    params: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def number(self, name: str, default: float, low: float, high: float) -> float:
        text = self.params.get(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"MQTT URL option {name}={text!r} is not a number") from None
        if not low <= value <= high:
            raise ConfigError(f"MQTT URL option {name}={text!r}: must be {low:g} … {high:g}")
        return value


def _broker(url: str, options: frozenset[str]) -> _Broker:
    """The broker of ``url``; a :class:`ConfigError` for a bad one shows it without its password."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt":
        raise ConfigError(f"MQTT URL {redact(url)!r} must start with mqtt://")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"MQTT URL {redact(url)!r} has an invalid port") from None
    if not parts.hostname:
        raise ConfigError(f"MQTT URL {redact(url)!r} names no host: mqtt://host:port")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - options)
    if unknown:
        raise ConfigError(
            f"MQTT URL option {unknown[0]!r} is not known; use {', '.join(sorted(options))}"
        )
    return _Broker(
        parts.hostname,
        port,
        unquote(parts.username) if parts.username is not None else None,
        unquote(parts.password) if parts.password is not None else None,
        params,
    )


def _refusal(exc: aiomqtt.MqttError, where: str) -> ConfigError:
    return ConfigError(f"MQTT broker {where} refused the connection: {exc}")


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended.

    Cancels again every second while it runs on: in Python 3.11 ``asyncio.wait_for``
    (which aiomqtt uses for every publish) swallows a cancellation that arrives just
    as the awaited operation completes, and the task would carry on.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r", task.get_name(), task.exception())


# --- server side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A device went online or offline (``since_ms``: when, as well as the link knows)."""

    tenant: str
    chassis: str
    online: bool
    since_ms: int


class _Listener:
    """One :meth:`MqttDeviceLink.presence_changes` iterator: the latest change per device."""

    __slots__ = ("event", "pending")

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], PresenceChange] = {}
        self.event = asyncio.Event()


class _Ack:
    """PUBACKs one message, once, if the connection it came on is still the link's.

    Made for every PUBLISH the link receives, in the order received; one at QoS 1 or 2
    takes its place in the link's delivery order (:meth:`MqttDeviceLink._flush_acks`):
    its PUBACK goes out only after those of every message received before it, as
    MQTT 5 (4.6) requires and as Mosquitto's PUBACK handling is fast with.
    """

    __slots__ = ("_client", "_done", "_link", "_mid", "_qos")

    def __init__(self, link: MqttDeviceLink, client: aiomqtt.Client, mid: int, qos: int) -> None:
        self._link = link
        self._client = client
        self._mid = mid
        self._qos = qos
        self._done = False
        if qos and link._receiving is client:
            link._order.append(self)

    async def __call__(self) -> None:
        self.now()

    def now(self) -> None:
        """Acknowledge without waiting (the link's own messages: presence, method answers)."""
        if self._done or self._qos == 0:
            return
        self._done = True
        self._link._acked(self._client)


_PUBACK = int(paho.PUBACK)
_PUBACK_PACKET = struct.Struct("!BBH")
_READ_SIZE = 256 * 1024
"""Bytes asked of the socket per readable event: a burst of PUBLISHes in one read."""

Packet = tuple[int, bytes | None, bytes, int]
"""``(first byte, topic, payload, packet id)`` of a QoS 0/1 PUBLISH (packet id 0 at QoS 0),
or ``(first byte, None, body, 0)`` of any other packet."""


class ProtocolError(Exception):
    """The broker sent bytes that are not MQTT 5 (a malformed length or PUBLISH)."""


def _varint_rest(buf: bytes, at: int, end: int, first: int, what: str) -> tuple[int, int]:
    """``(value, offset after it)`` of the variable byte integer whose first byte ``first``
    (high bit set) came just before ``at``; ``(-1, at)`` if ``end`` cuts it short."""
    value = first & 0x7F
    shift = 7
    while at < end:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 21:
            raise ProtocolError(f"malformed {what}")
    return -1, at


class PacketSplitter:
    """Sans-I/O: the bytes a broker sends, split into MQTT 5 packets; a PUBLISH at QoS 0/1
    parsed on the way (:data:`Packet`), its properties skipped.

    Bytes of an incomplete packet are kept for the next :meth:`feed`.  Any other packet,
    a QoS 2 PUBLISH included, comes whole for someone else to read (paho, in the link).
    """

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[Packet]:
        """The packets ``data`` completes, in order; :class:`ProtocolError` for a malformed one."""
        buf = self._rest + data if self._rest else data
        out: list[Packet] = []
        append = out.append
        at = 0
        end = len(buf)
        while end - at >= 2:
            first = buf[at]
            length = buf[at + 1]
            i = at + 2
            if length & 0x80:  # a remaining length of more than one byte
                length, i = _varint_rest(buf, i, end, length, "remaining length")
                if length < 0:
                    break
            stop = i + length
            if stop > end:
                break
            if first & 0xF4 == 0x30:  # PUBLISH at QoS 0 or 1
                if length < 3:
                    raise ProtocolError("PUBLISH shorter than its topic and properties")
                topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
                body = topic_end
                mid = 0
                if first & 0x02:
                    body += 2
                    if body > stop:
                        raise ProtocolError("PUBLISH shorter than its topic and packet id")
                    mid = (buf[topic_end] << 8) | buf[topic_end + 1]
                if body >= stop:
                    raise ProtocolError("PUBLISH shorter than its topic and properties")
                props = buf[body]
                body += 1
                if props & 0x80:
                    props, body = _varint_rest(buf, body, stop, props, "PUBLISH properties length")
                    if props < 0:
                        raise ProtocolError("malformed PUBLISH properties length")
                body += props
                if body > stop:
                    raise ProtocolError("PUBLISH properties longer than the packet")
                append((first, buf[i + 2 : topic_end], buf[body:stop], mid))
            else:
                append((first, None, buf[i:stop], 0))
            at = stop
        self._rest = buf[at:] if at < end else b""
        return out


_OTHER_PARTITION = object()
"""The route of a telemetry topic of a machine of another partition."""
_ROUTES_MAX = 200_000
"""Telemetry topics whose route the link remembers (two per machine)."""


class _FastReceive:
    """The link's receive path on one paho client: paho's ``loop_read`` replaced by one
    socket read of up to 256 KiB, split by :class:`PacketSplitter`, the QoS 0/1 PUBLISHes
    of the read handed to ``handler`` as one list; every other packet (CONNACK, SUBACK,
    PUBACK, PINGRESP, DISCONNECT, QoS 2) goes to paho's own ``_packet_handle`` as if paho
    had read it, in order.

    paho reads a packet with three ``recv`` calls (command byte, length, body) through
    a per-packet state machine, and every PUBLISH builds a ``Properties`` object, a
    ``MQTTMessage`` and, in aiomqtt, a ``Message``, a ``Topic`` and a task.  Installed on
    the paho client under aiomqtt (as ``manual_ack_set`` is).  The link asks for no
    properties (no topic aliases: the broker may not send them) and reads none.  Relies
    on paho-mqtt 2's internals (``loop_read``, ``_sock``, ``_in_packet``,
    ``_packet_handle``, ``_loop_rc_handle``, ``_last_bytes_received``), pinned in
    ``pyproject.toml``; ``tests/devices/test_mqtt.py`` checks it is in use.
    """

    __slots__ = ("_handler", "_paho", "_splitter", "packets", "reads")

    def __init__(self, client: paho.Client, handler: Callable[[list[Packet]], None]) -> None:
        self._paho = client
        self._handler = handler
        self._splitter = PacketSplitter()
        self.packets = 0
        """PUBLISH packets handled by this fast path."""
        self.reads = 0
        """Socket reads (readable events) of this fast path."""
        client.loop_read = self._read  # type: ignore[method-assign]

    def _read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        client = self._paho
        sock = client._sock
        if sock is None:
            return paho.MQTT_ERR_NO_CONN
        self.reads += 1
        try:
            data = sock.recv(_READ_SIZE)
        except BlockingIOError:
            return paho.MQTT_ERR_SUCCESS
        except OSError as exc:
            log.info("MQTT link: receiving failed: %s", exc)
            data = b""
        if not data:
            return client._loop_rc_handle(paho.MQTT_ERR_CONN_LOST)
        client._last_bytes_received = paho.time_func()  # the keepalive's clock, as paho's
        try:
            packets = self._splitter.feed(data)
        except ProtocolError as exc:
            log.warning("MQTT link: the broker sent a malformed packet: %s", exc)
            return client._loop_rc_handle(paho.MQTT_ERR_PROTOCOL)
        publishes: list[Packet] = []
        for packet in packets:
            if packet[1] is not None:
                publishes.append(packet)
                continue
            if publishes:
                self._deliver(publishes)
                publishes = []
            rc = self._paho_packet(packet[0], packet[2])
            if rc != paho.MQTT_ERR_SUCCESS:
                return client._loop_rc_handle(rc)
            if client._sock is None:
                return paho.MQTT_ERR_NO_CONN
        if publishes:
            self._deliver(publishes)
        return paho.MQTT_ERR_SUCCESS

    def _deliver(self, publishes: list[Packet]) -> None:
        self.packets += len(publishes)
        self._handler(publishes)

    def _paho_packet(self, first: int, body: bytes) -> paho.MQTTErrorCode:
        """Let paho handle one packet as though its own read had completed it."""
        client = self._paho
        client._in_packet = {
            "command": first,
            "have_remaining": 1,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": len(body),
            "packet": bytearray(body),
            "to_process": 0,
            "pos": 0,
        }
        try:
            rc: paho.MQTTErrorCode = client._packet_handle()
        except MalformedPacket as exc:
            log.warning("MQTT link: the broker sent a malformed packet: %s", exc)
            rc = paho.MQTT_ERR_PROTOCOL
        client._in_packet = {
            "command": 0,
            "have_remaining": 0,
            "remaining_count": [],
            "remaining_mult": 1,
            "remaining_length": 0,
            "packet": bytearray(),
            "to_process": 0,
            "pos": 0,
        }
        return rc


class MqttDeviceLink(DeviceLink):
    """Telemetry from devices through an MQTT 5 broker's shared subscription; presence."""

    OPTIONS = frozenset(
        (
            "group",
            "shared",
            "partition",
            "inflight",
            "client_id",
            "session_expiry",
            "keepalive",
            "connect_timeout",
        )
    )

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._broker = _broker(url, self.OPTIONS)
        params = self._broker.params
        self.group = params.get("group", "ingest")
        if not valid_id(self.group):
            raise ConfigError(f"MQTT share group {self.group!r} is not a valid name")
        self.client_id = params.get("client_id") or None
        if self.client_id is not None and any(c in self.client_id for c in "+#/"):
            raise ConfigError(f"MQTT client_id {self.client_id!r} must not contain / + #")
        shared = params.get("shared", "on").lower()
        if shared not in ("on", "off"):
            raise ConfigError(f"MQTT URL option shared={shared!r}: use on or off")
        self.shared = shared == "on"
        self.partition = share_option("MQTT URL option partition", params.get("partition"))
        if self.partition is not None and self.shared:
            raise ConfigError("MQTT URL option partition needs shared=off")
        self.partitioned_out = 0
        """Messages of machines of another partition, acknowledged unread."""
        self.inflight = int(self._broker.number("inflight", 10000, 1, 65535))
        self.window = self.inflight  # the broker sends no more unacknowledged
        expiry_default = 3600 if self.client_id else 0
        self.session_expiry = int(
            self._broker.number("session_expiry", expiry_default, 0, 0xFFFFFFFF)
        )
        self.keepalive = int(self._broker.number("keepalive", 30, 5, 3600))
        self.connect_timeout = self._broker.number("connect_timeout", 30.0, 0.1, 3600)
        self.presence: dict[tuple[str, str], tuple[bool, int]] = {}
        """``(tenant, chassis) → (online, since_ms)`` for every device that has a status."""
        self.counters = {"messages": 0, "rejected": 0, "connects": 0}
        self.stale_acks = 0
        """Acknowledgements skipped because their connection had been replaced."""
        self.broker_dropped: int | None = None
        """The broker's count of messages it dropped (:data:`BROKER_DROPPED_TOPIC`), None
        until it told one (only Mosquitto does, and only if the link may read ``$SYS``)."""
        self._inbox: deque[Delivery | Rejection] = deque()
        self._inbox_ready = asyncio.Event()
        self._order: deque[_Ack] = deque()
        """The QoS 1/2 messages of the connection being read whose PUBACK has not been
        written, in the order received (:meth:`_flush_acks`)."""
        self._ack_scheduled = False
        self._subscribing = False
        """Between a connection's CONNACK and its last SUBACK: no PUBACK is written
        (:meth:`_flush_acks`)."""
        self._fast: _FastReceive | None = None
        self._routes: dict[bytes, Any] = {}
        """Telemetry topic → ``(tenant, chassis, msgType)`` (or :data:`_OTHER_PARTITION`),
        checked once (:meth:`_receive`), so the next message on it is decoded at once."""
        self._receiving: aiomqtt.Client | None = None
        """The connection being read (set before connecting: a persistent session's
        messages may come in the CONNACK's read, retained ones at once)."""
        self._listeners: set[_Listener] = set()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._ready: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error = "no attempt yet"
        self._pending: dict[str, asyncio.Future[MethodResult]] = {}
        self._failures = Throttled(log)

    @property
    def share_filter(self) -> str:
        """The telemetry subscription: in the share group, or plain with ``shared=off``."""
        return f"$share/{self.group}/{TELEMETRY_FILTER}" if self.shared else TELEMETRY_FILTER

    def _other_partition(self, topic: str) -> bool:
        if self.partition is None:
            return False
        index, count = self.partition
        levels = topic.split("/", 3)
        return zlib.crc32(f"{levels[1]}/{levels[2]}".encode()) % count != index

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        """Connect and subscribe; :class:`BackendError` if the broker is unreachable in time."""
        if self._task is not None:
            return
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name="mqtt-device-link")
        await _first_connection(
            self._ready,
            self.connect_timeout,
            self.close,
            f"MQTT broker {self._broker.where}",
            lambda: self._last_error,
        )

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        self._client = None
        self._read_from(None)
        self._connected.clear()

    def _make_client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = self.inflight
        props.SessionExpiryInterval = self.session_expiry
        client = aiomqtt.Client(
            self._broker.host,
            self._broker.port,
            username=self._broker.username,
            password=self._broker.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            properties=props,
            clean_start=self.client_id is None,
            keepalive=self.keepalive,
            logger=log,
        )
        # aiomqtt has no manual-ack API yet (empicano/aiomqtt#345); paho under it has.
        client._client.manual_ack_set(True)
        self._fast = _FastReceive(
            client._client, lambda packets: self._receive_many(client, packets)
        )
        return client

    @property
    def fast_packets(self) -> int:
        """PUBLISH packets the current connection took through the fast receive path."""
        return 0 if self._fast is None else self._fast.packets

    async def _run(self) -> None:
        delays = backoff(BACKOFF_MIN, LINK_BACKOFF_MAX, jitter=0.2)
        while True:
            client = self._make_client()
            # read from before the CONNACK: a persistent session's messages may come with it
            self._read_from(client)
            self._subscribing = True  # acknowledgements wait: see _flush_acks
            try:
                async with client:
                    if self.receive_telemetry:
                        await client.subscribe(self.share_filter, qos=1)
                    await client.subscribe(STATUS_FILTER, qos=1)
                    await client.subscribe(METHOD_RESPONSE_FILTER, qos=1)
                    if self.receive_telemetry:  # a broker without it grants but sends nothing
                        await client.subscribe(BROKER_DROPPED_TOPIC, qos=0)
                    self._subscribing = False
                    self._flush_acks()
                    self._client = client
                    self._connected.set()
                    self.counters["connects"] += 1
                    self._failures.recovered("broker", "MQTT broker %s is back", self._broker.where)
                    log.info(
                        "device link connected to MQTT broker %s (%s, subscribed to %s, "
                        "inflight %d, %s session)",
                        self._broker.where,
                        client.identifier or "broker-assigned id",
                        self.share_filter if self.receive_telemetry else "status and methods",
                        self.inflight,
                        "persistent" if self.client_id else "clean",
                    )
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(None)
                    delays = backoff(BACKOFF_MIN, LINK_BACKOFF_MAX, jitter=0.2)
                    # PUBLISHes go through _FastReceive; only QoS 2 would come this way
                    async for message in client.messages:
                        self._receive_many(
                            client,
                            [
                                (
                                    0x30 | message.qos << 1 | message.retain,
                                    message.topic.value.encode(),
                                    message.payload if isinstance(message.payload, bytes) else b"",
                                    message.mid,
                                )
                            ],
                        )
            except MqttConnectError as exc:
                self._last_error = str(exc)
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(_refusal(exc, self._broker.where))
                    return
            except aiomqtt.MqttError as exc:
                self._last_error = str(exc) or type(exc).__name__
            finally:
                if self._receiving is client:
                    self._read_from(None)
                if self._client is client:
                    self._client = None
                    self._connected.clear()
            self._failures.failed(
                "broker",
                "MQTT broker %s: %s; reconnecting every %g s at most",
                self._broker.where,
                self._last_error,
                LINK_BACKOFF_MAX,
            )
            await asyncio.sleep(next(delays))

    def _receive_many(self, client: aiomqtt.Client, packets: list[Packet]) -> None:
        """The PUBLISHes of one socket read, from paho's read callback: telemetry for the
        inbox (one append and one wake-up per read), presence, method answers.  Never
        raises (that would end the connection)."""
        routes = self._routes
        items: list[Delivery | Rejection] = []
        rejected = 0
        for first, raw, payload, mid in packets:
            ack = _Ack(self, client, mid, (first >> 1) & 3)
            route = routes.get(raw) if not first & 0x01 else None  # type: ignore[arg-type]
            if route is None:  # not a telemetry topic seen before, or retained
                item = self._receive(raw or b"", payload, ack, first)
                if item is None:
                    continue
            elif route is _OTHER_PARTITION:
                self.partitioned_out += 1
                ack.now()
                continue
            else:
                tenant, chassis, msg_type = route
                try:
                    item = Delivery(decode(tenant, chassis, msg_type, payload), ack)
                except DecodeError as exc:
                    item = Rejection(tenant, chassis, str(exc), ack)
                except Exception:  # a bug here must not stop the link nor hold the message
                    log.exception("decoding MQTT telemetry of %s/%s failed", tenant, chassis)
                    ack.now()
                    continue
            if item.__class__ is Rejection:
                rejected += 1
            items.append(item)
        if items:
            self.counters["messages"] += len(items)
            self.counters["rejected"] += rejected
            self._inbox.extend(items)
            self._inbox_ready.set()

    def _receive(
        self, raw: bytes, payload: bytes, ack: _Ack, first: int
    ) -> Delivery | Rejection | None:
        """One PUBLISH whose topic is not a known telemetry topic (or that is retained):
        presence, a method answer, or telemetry (then its topic is remembered)."""
        retain = bool(first & 0x01)
        topic = raw.decode("utf-8", "replace")
        try:
            if topic == BROKER_DROPPED_TOPIC:
                self._broker_drops(payload)
                ack.now()
                return None
            if topic.count("/") == 3 and topic.endswith("/status"):
                self._presence(topic, payload, retain)
                ack.now()
                return None
            if "/methods/" in topic:
                self._method_response(topic, payload)
                ack.now()
                return None
            if self._other_partition(topic):
                self.partitioned_out += 1
                self._remember(raw, _OTHER_PARTITION)
                ack.now()
                return None
            item = self._telemetry(topic, payload, ack, retained=retain)
        except Exception:  # a bug here must not stop the link; do not hold the message forever
            log.exception("handling MQTT message on %r failed", topic[:200])
            ack.now()
            return None
        if isinstance(item, Delivery):
            message = item.message
            self._remember(raw, (message.tenant, message.chassis, message.msg_type))
        return item

    def _broker_drops(self, payload: bytes) -> None:
        """The broker's dropped-messages counter: the ``livedata_broker_dropped`` gauge,
        and a warning each time it grew (the broker republishes it at most once per
        ``sys_interval``) or, at the link's start, if it is not 0.  Mosquitto drops a QoS 1
        message it has acknowledged to the device when the queue of the subscriber it
        picked is full (``max_queued_messages``, ``max_queued_bytes``): in a share group it
        picks the members in turn, so an ingest process behind by more than its queue
        loses its share of what arrives beyond it, and nothing else tells."""
        try:
            count = int(payload)
        except ValueError:
            return
        BROKER_DROPPED.set(count)
        last, self.broker_dropped = self.broker_dropped, count
        if last is not None and count < last:
            last = 0  # the broker restarted: its count too
        if count > (last or 0):
            log.warning(
                "MQTT broker %s dropped %d messages %s (%d since it started): acknowledged to "
                "their devices, never delivered -- a subscriber's queue was full, e.g. an "
                "ingest process behind by more than the broker's max_queued_messages",
                self._broker.where,
                count - (last or 0),
                "before this link connected" if last is None else "since it last said",
                count,
            )

    def _remember(self, raw: bytes, route: tuple[str, str, str] | object) -> None:
        """Remember what a topic is, for the next message on it (bounded: at most
        :data:`_ROUTES_MAX` topics, forgotten all at once beyond)."""
        if len(self._routes) >= _ROUTES_MAX:
            self._routes.clear()
        self._routes[raw] = route

    def _read_from(self, client: aiomqtt.Client | None) -> None:
        """Make ``client`` the connection being read, with an empty delivery order
        (acknowledgements still waiting on the one before count as stale)."""
        self.stale_acks += sum(1 for ack in self._order if ack._done)
        self._order = deque()
        self._receiving = client

    def _acked(self, client: aiomqtt.Client) -> None:
        """A message of ``client`` was acknowledged: flush at the end of this event-loop turn."""
        if self._receiving is not client:
            self.stale_acks += 1  # that connection is gone: nothing to acknowledge on
            return
        if not self._ack_scheduled:
            self._ack_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        """Queue to paho, as one write (4 bytes each), the PUBACKs of the acknowledged
        messages at the head of the delivery order: a message acknowledged before one
        received earlier waits for it.

        Why the order matters to the broker: Mosquitto 2.0 keeps a client's unacknowledged
        messages in one list in the order sent and looks a PUBACK's id up from the head
        (``db__message_delete_outgoing``), so a PUBACK out of order walks past every
        older unacknowledged message -- with a backlog, thousands of them, as 2.0.11
        moves up to ``inflight`` queued messages into that list per PUBACK.  In order
        each lookup ends at the head.  Ingest acknowledges in arrival order; what it
        acknowledges early (a rejected message) and what the link acknowledges itself
        (presence, method answers, another partition's machines) waits here instead,
        at most until the older messages are acknowledged.

        Nothing is written while the connection subscribes (:attr:`_subscribing`): each
        PUBACK would release up to ``inflight`` more of a persistent session's backlog,
        and the broker sends its SUBACKs behind them.  Measured (``bench_cluster.py
        --machines 5000 --faults --split partition``): an ingest restarted with a backlog
        acknowledged the other partition's messages at once while subscribing, its
        subscribe timed out (10 s) at every attempt, it gave up after 60 s and the broker
        dropped a million messages beyond its queue (732,033 records lost); held, the
        broker sends the first window (``inflight``), then the SUBACKs, and the same run
        stored every record once."""
        self._ack_scheduled = False
        client = self._receiving
        order = self._order
        if client is None or self._subscribing or not order or not order[0]._done:
            return
        popleft = order.popleft
        mids = []
        while order and order[0]._done:
            mids.append(popleft()._mid)
        packet = b"".join(_PUBACK_PACKET.pack(_PUBACK, 2, mid) for mid in mids)
        rc = client._client._packet_queue(_PUBACK, packet, 0, 0)
        if rc != paho.MQTT_ERR_SUCCESS:  # the connection is going: the broker redelivers
            log.info("MQTT acknowledgement failed: %s", paho.error_string(rc))

    def _telemetry(
        self, topic: str, payload: Any, ack: _Ack, *, retained: bool = False
    ) -> Delivery | Rejection:
        levels = topic.split("/")
        tenant = levels[1] if len(levels) > 1 and valid_id(levels[1]) else ""
        chassis = levels[2] if len(levels) > 2 and valid_id(levels[2]) else ""
        try:
            _, _, kind, rest = parse_topic(topic)
            if kind != "telemetry" or len(rest) != 1:
                raise DecodeError(f"topic {topic[:200]!r} is not a telemetry topic")
            if rest[0] not in _MSG_TYPES:
                raise DecodeError(
                    f"unknown msgType {rest[0][:64]!r} in the topic: use one of "
                    f"{', '.join(MsgType)}"
                )
            if not isinstance(payload, bytes | bytearray):
                raise DecodeError("empty payload")
            if retained:  # a replay at subscribe time: it was delivered when published
                raise DecodeError(
                    "retained telemetry replayed by the broker at subscribe time (delivered "
                    "once when published); devices must publish telemetry without retain"
                )
            message = decode(tenant, chassis, rest[0], bytes(payload))
        except DecodeError as exc:
            return Rejection(tenant, chassis, str(exc), ack)
        return Delivery(message, ack)

    def _presence(self, topic: str, payload: Any, retained: bool) -> None:
        try:
            tenant, chassis, _, rest = parse_topic(topic)
        except DecodeError as exc:
            log.info("ignoring status: %s", exc)
            return
        if rest:
            return
        key = (tenant, chassis)
        if not payload:  # a cleared retained status: nothing known
            self.presence.pop(key, None)
            return
        try:
            body = orjson.loads(payload)
            online = body["online"]
            if not isinstance(online, bool):
                raise TypeError("online is not a boolean")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.info("ignoring status of %s/%s: %s", tenant, chassis, exc)
            return
        ts = body.get("ts")
        # a live status is as old as its arrival (a Last Will carries its connect time);
        # a retained one replayed at subscribe time is as old as it says
        since = ts if retained and isinstance(ts, int) and not isinstance(ts, bool) else _now_ms()
        old = self.presence.get(key)
        if old is not None and old[0] == online:
            return
        self.presence[key] = (online, since)
        change = PresenceChange(tenant, chassis, online, since)
        for listener in self._listeners:
            listener.pending.pop(key, None)
            listener.pending[key] = change
            listener.event.set()

    def _method_response(self, topic: str, payload: Any) -> None:
        levels = topic.split("/")
        if len(levels) != 6 or levels[4] != "res":
            return
        future = self._pending.get(levels[5])
        if future is None or future.done():
            return  # another process's request, or too late
        try:
            body = orjson.loads(payload or b"null")
            status = body["status"]
            if not isinstance(status, int) or isinstance(status, bool):
                raise TypeError("status is not an integer")
            result = MethodResult(status, body.get("payload"))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            result = MethodResult(502, {"error": f"the device sent an unreadable answer: {exc}"})
        future.set_result(result)

    def status(self, tenant: str, chassis: str) -> DeviceStatus:
        known = self.presence.get((tenant, chassis))
        if known is None:
            return DeviceStatus(False, None)
        return DeviceStatus(known[0], known[1])

    async def call(
        self,
        tenant: str,
        chassis: str,
        method: str,
        payload: Any,
        *,
        response_timeout: float,
        connect_timeout: float = 0.0,
    ) -> MethodResult:
        """Publish the request at QoS 1 and wait for the device's answer (see the module doc)."""
        if not valid_id(method):
            raise DecodeError(f"method name {method[:64]!r} is not valid")
        deadline = time.monotonic() + connect_timeout
        while not (self.connected and self.status(tenant, chassis).connected):
            if time.monotonic() >= deadline:
                raise DeviceNotConnected(f"machine {chassis!r} of {tenant!r} is not connected")
            await asyncio.sleep(0.1)
        client = self._client
        if client is None:
            raise BackendError(f"MQTT broker {self._broker.where} not connected")
        request_id = uuid.uuid4().hex
        future: asyncio.Future[MethodResult] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            async with asyncio.timeout(response_timeout):
                try:
                    await client.publish(
                        method_request_topic(tenant, chassis, method, request_id),
                        orjson.dumps(payload),
                        qos=1,
                    )
                except aiomqtt.MqttError as exc:
                    raise BackendError(
                        f"MQTT publish to {self._broker.where} failed: {exc}"
                    ) from exc
                return await future
        except TimeoutError:
            raise DeviceTimeout(
                f"machine {chassis!r} did not answer {method!r} in {response_timeout:g} s"
            ) from None
        finally:
            self._pending.pop(request_id, None)

    def presence_changes(self) -> AsyncIterator[PresenceChange]:
        """Presence changes from the moment of this call on, until the consumer stops.

        The listener is registered by the call itself, not at the first ``anext``, so a
        change right after the call is not missed.  A slow consumer gets the latest
        change of each device, never a backlog: memory is bounded by the number of
        devices.  Read :attr:`presence` after the call for the state to apply them to.
        """
        listener = _Listener()
        self._listeners.add(listener)
        return self._changes(listener)

    async def _changes(self, listener: _Listener) -> AsyncIterator[PresenceChange]:
        try:
            while True:
                await listener.event.wait()
                listener.event.clear()
                pending, listener.pending = listener.pending, {}
                for change in pending.values():
                    yield change
        finally:
            self._listeners.discard(listener)

    async def inbound(self) -> AsyncIterator[Delivery | Rejection]:
        async for batch in self.batches(1):
            yield batch[0]

    async def batches(self, max_items: int) -> AsyncIterator[list[Delivery | Rejection]]:
        """What paho's read callbacks have put in the inbox, up to ``max_items`` at a time
        (at most ``inflight`` wait there: the broker sends no more unacknowledged)."""
        inbox = self._inbox
        while True:
            while not inbox:
                self._inbox_ready.clear()
                await self._inbox_ready.wait()
            yield [inbox.popleft() for _ in range(min(len(inbox), max_items))]

    def depth(self) -> int:
        return len(self._inbox)

    async def send(self, message: DeviceMessage) -> None:
        """Publish ``message`` on its machine's telemetry topic over the link's connection."""
        try:
            await asyncio.wait_for(self._connected.wait(), self.connect_timeout)
        except TimeoutError:
            raise BackendError(
                f"MQTT broker {self._broker.where} not connected: {self._last_error}"
            ) from None
        client = self._client
        if client is None:
            raise BackendError(f"MQTT broker {self._broker.where} not connected")
        topic = telemetry_topic(message.tenant, message.chassis, message.msg_type)
        try:
            await client.publish(topic, encode(message), qos=1)
        except aiomqtt.MqttError as exc:
            raise BackendError(f"MQTT publish to {self._broker.where} failed: {exc}") from exc


async def _first_connection(
    ready: asyncio.Future[None],
    within: float,
    stop: Callable[[], Awaitable[None]],
    subject: str,
    last_error: Callable[[], object],
) -> None:
    """Wait until the connection task resolves ``ready``; on failure ``stop`` it and raise.

    :class:`BackendError` when nothing connected within ``within`` seconds,
    :class:`ConfigError` as is (e.g. credentials refused).
    """
    try:
        await asyncio.wait_for(asyncio.shield(ready), within)
    except TimeoutError:
        await stop()
        raise BackendError(f"{subject} not reachable after {within:g} s: {last_error()}") from None
    except ConfigError:
        await stop()
        raise


# --- device side ----------------------------------------------------------------------


class MqttDevice:
    """One machine's MQTT connection: presence with a Last Will, telemetry at QoS 1.

    ``url`` is ``mqtt://[user:pass@]host[:port][?keepalive=30&connect_timeout=10]``.
    After :meth:`connect` the device stays connected: when the broker goes away it
    reconnects with backoff (0.5 s … 30 s) and announces itself ``online`` again.
    :meth:`send` does not wait for a connection: while disconnected it raises
    :class:`BackendError` at once and the caller decides (the simulator drops the
    message; the agent spools it).
    """

    OPTIONS = frozenset(("keepalive", "connect_timeout"))

    def __init__(
        self, url: str, tenant: str, chassis: str, on_method: MethodHandler | None = None
    ) -> None:
        if not valid_id(tenant) or not valid_id(chassis):
            raise ConfigError(f"invalid organisation or machine id: {tenant!r}/{chassis!r}")
        self._broker = _broker(url, self.OPTIONS)
        self.tenant = tenant
        self.chassis = chassis
        self.client_id = f"{tenant}/{chassis}"
        self.status_topic = status_topic(tenant, chassis)
        self.keepalive = int(self._broker.number("keepalive", 30, 5, 3600))
        self.connect_timeout = self._broker.number("connect_timeout", 10.0, 0.1, 3600)
        self.connects = 0
        """Successful connections so far (1 + reconnects)."""
        self.on_method = on_method
        """Answers direct methods (``None``: every method gets 501)."""
        self.methods_topic = f"{ROOT}/{tenant}/{chassis}/methods/req/+/+"
        self._method_tasks: set[asyncio.Task[None]] = set()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._stopping = False
        self._last_error = "no attempt yet"

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def __aenter__(self) -> MqttDevice:
        await self.connect()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect (Last Will set, ``online`` published); :class:`BackendError` if not in time."""
        if self._task is not None:
            return
        self._stopping = False
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"mqtt-device-{self.client_id}")
        await _first_connection(
            self._ready,
            self.connect_timeout,
            self._stop,
            f"device {self.client_id}: MQTT broker {self._broker.where}",
            lambda: self._last_error,
        )

    async def _run(self) -> None:
        delays = backoff(BACKOFF_MIN, BACKOFF_MAX, jitter=0.2)
        while not self._stopping:
            will = aiomqtt.Will(
                self.status_topic, _status(False, _now_ms(), "lost"), qos=1, retain=True
            )
            client = aiomqtt.Client(
                self._broker.host,
                self._broker.port,
                username=self._broker.username,
                password=self._broker.password,
                identifier=self.client_id,
                protocol=aiomqtt.ProtocolVersion.V5,
                will=will,
                keepalive=self.keepalive,
                logger=log,
            )
            try:
                async with client:
                    await client.subscribe(self.methods_topic, qos=1)
                    await client.publish(
                        self.status_topic, _status(True, _now_ms()), qos=1, retain=True
                    )
                    self._client = client
                    self.connects += 1
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(None)
                    delays = backoff(BACKOFF_MIN, BACKOFF_MAX, jitter=0.2)
                    async for message in client.messages:
                        task = asyncio.create_task(self._answer(client, message))
                        self._method_tasks.add(task)
                        task.add_done_callback(self._method_tasks.discard)
            except MqttConnectError as exc:
                self._last_error = str(exc)
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(_refusal(exc, self._broker.where))
                    return
            except aiomqtt.MqttError as exc:
                self._last_error = str(exc) or type(exc).__name__
            finally:
                if self._client is client:
                    self._client = None
            if self._stopping:
                return
            delay = next(delays)
            log.info(
                "device %s: MQTT broker %s: %s; reconnecting in %.1f s",
                self.client_id,
                self._broker.where,
                self._last_error,
                delay,
            )
            await asyncio.sleep(delay)

    async def _answer(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        """Run the handler for one method request and publish its answer."""
        levels = message.topic.value.split("/")
        if len(levels) != 7 or levels[4] != "req":
            return
        method, request_id = levels[5], levels[6]
        raw = message.payload
        body = await answer_method(
            self.on_method,
            method,
            raw if isinstance(raw, bytes | bytearray) else b"",
            self.client_id,
        )
        topic = method_response_topic(self.tenant, self.chassis, request_id)
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(topic, body, qos=1)

    async def send(self, message: DeviceMessage) -> None:
        """Publish one message of this device at QoS 1 and wait for the broker's PUBACK."""
        if (message.tenant, message.chassis) != (self.tenant, self.chassis):
            raise ValueError(
                f"device {self.client_id} cannot send for {message.tenant}/{message.chassis}"
            )
        client = self._client
        if client is None:
            raise BackendError(f"device {self.client_id} is not connected to the MQTT broker")
        topic = telemetry_topic(self.tenant, self.chassis, message.msg_type)
        try:
            await client.publish(topic, encode(message), qos=1)
        except aiomqtt.MqttError as exc:
            raise BackendError(f"device {self.client_id}: MQTT publish failed: {exc}") from exc

    async def close(self) -> None:
        """Publish the retained ``offline`` status and disconnect cleanly (no Last Will)."""
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(
                    self.status_topic,
                    _status(False, _now_ms(), "closed"),
                    qos=1,
                    retain=True,
                    timeout=2,
                )
        await self._stop()

    async def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a crash or a lost network would.

        The broker then publishes the Last Will (``offline``); the device does not
        reconnect.  For tests, and for a device that must stop at once.
        """
        self._stopping = True
        client = self._client
        if client is not None:
            sock = client._client.socket()
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        task = self._task
        if task is not None:  # let it see the connection end rather than cancel it mid-way
            await asyncio.wait({task}, timeout=2)
        await self._stop()

    async def _stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        self._client = None
