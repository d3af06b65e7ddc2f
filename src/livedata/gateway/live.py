"""The live WebSocket of the reference system.

``/api/resources/{orgId}/_common/datasets/{chassisId}/live?msgType={msgType}``

Client → server: ``{"type":"INIT_FIELD_LIST","payload":["speed","engine_rpm"]}``
(send again to replace the list).  Server → client, per record of the machine:
``{"type":"LIVE_DATA","payload":{only the requested fields},"ts":…,"seq":…,"epoch":…}``.

A client that reconnects adds what it saw last:
``{"type":"INIT_FIELD_LIST","payload":[…],"since":{"epoch":"…","seq":41}}`` and first
gets ``{"type":"RECOVERY","recovered":true,"epoch":…,"messages":[LIVE_DATA…]}`` with
exactly the messages it missed, in order, then live data; ``"recovered":false`` (and
no messages) means they are gone and it should fill the gap from the history API.
Then come, as LIVE_DATA (oldest first), the messages the live history still holds:
live goes out before storage, so the newest of them may not be in the history API's
answer yet; the client merges them by ``ts``.

Rate control: ``"maxRate": 2, "aggregate": "minmax"`` (or ``last``, ``avg``) in
INIT_FIELD_LIST gets at most 2 messages a second, each summing up its interval
(see :mod:`livedata.gateway.rate`); without them the protocol is as above.  A
rate-controlled subscription does not recover after a reconnect (``since`` is
ignored with ``maxRate``).

A client whose socket takes nothing for 30 s (``client_stall_seconds``) is closed
with 1013; dead peers are found by WebSocket pings (every 20 s, 20 s to answer).

Errors are ``{"type":"ERROR","code":…,"message":…}``.  Recoverable ones keep
the connection (the previous field list stays in force); the others close it:

=================  =====================================================  ==========
code               when                                                   close code
=================  =====================================================  ==========
invalid_json       the text is not JSON                                   stays open
unknown_type       not an object with a known ``type``                    stays open
invalid_field_list ``payload`` is not a list of field names               stays open
too_many_fields    more than 500 fields                                   stays open
invalid_since      ``since`` is not ``{"epoch": str, "seq": int}``        stays open
invalid_rate       ``maxRate``/``aggregate`` out of range or unknown      stays open
unknown_fields     fields the machine does not have (the rest are kept)   stays open
message_too_big    a message over 64 KiB                                  1009
unsupported_data   a binary message                                       1003
rate_limited       more than 20 messages in 10 s from the client          1008
(stalled)          the client read nothing for 30 s                       1013
not_found          unknown organisation, machine or message type          4404
=================  =====================================================  ==========

The messages are parsed and validated by the sans-I/O
:mod:`livedata.gateway.protocol.live`; this module is the asyncio layer
(:class:`LiveEndpoint`).  The connection is served by the server layer's own
WebSocket protocol (:mod:`livedata.gateway.wsserver`, on the same port): the
upgrade is authenticated by :meth:`~livedata.gateway.security.Security.admit_websocket`
(the same checks and refusals as every other request), client messages arrive in
``data_received`` callbacks, and delivery is the fan-out core's
(:mod:`livedata.gateway.fanout`): LIVE_DATA frames are built once per field list and
written straight to the connection's transport.  An open connection has no
coroutine or task: a task runs only while a subscription is being changed (the
fan-out's ``watch``, a recovery read) and while a closed connection leaves the
fan-out; a rate-controlled subscription is flushed by one loop timer.

Under stress: while a client's transport buffer is above its high-water mark its
messages wait in a bounded outbox (oldest dropped, ``missed`` count on the next
one); a client whose transport makes no progress for ``client_stall_seconds`` is
given up: a 1013 close frame is put behind what is buffered and the connection is
ended at once; what stays is the socket's kernel buffer and the transport buffer
(about 64 KiB), freed when the peer reads or goes away.  While a subscription is
being changed the connection is not read (what the client sends waits in its socket,
TCP holds the client back); what was read already is handled in order after it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol
from urllib.parse import parse_qs, unquote

import orjson
from websockets.http11 import Request

from livedata import observe
from livedata.errors import NotFound
from livedata.gateway.fanout import WS_TEXT, Fanout, Outbox
from livedata.gateway.protocol.live import (
    CLOSE_NOT_FOUND,
    Fatal,
    LiveSession,
    Reply,
    Subscribe,
    check_msg_type,
)
from livedata.gateway.rate import RateLimiter
from livedata.gateway.security import CLOSE_POLICY, Refusal
from livedata.gateway.wsserver import ServerSocket
from livedata.model import live_channel

log = logging.getLogger("livedata.gateway.live")

PATH = "/api/resources/{orgId}/_common/datasets/{chassisId}/live"
"""The live WebSocket's route (served by the server layer, so not one of the app's)."""
ROUTE = re.compile(re.sub(r"\{\w+\}", "([^/]+)", PATH))
"""The route's pattern for a percent-decoded path: organisation and machine."""

KnownFields = Callable[[str, str, str], Awaitable[list[str]]]
"""``known_fields(org, chassis, msg_type)``: the machine's fields; raises NotFound."""


Admit = Callable[
    [str, Mapping[str, str], Mapping[str, str], Callable[[str], None]], Awaitable[int | Refusal]
]
"""``admit(path, query, headers, close)``: a live-connection handle or the refusal
(:meth:`~livedata.gateway.security.Security.admit_websocket`)."""


class Viewers(Protocol):
    """Who watches which machine (:class:`~livedata.gateway.viewers.ViewerFollower`)."""

    def joined(self, org: str, chassis: str) -> None: ...

    def left(self, org: str, chassis: str) -> None: ...


class LiveEndpoint:
    """The live WebSocket route of one gateway (a :class:`~livedata.gateway.wsserver.Endpoint`)."""

    path = PATH

    def __init__(
        self,
        admit: Admit,
        release: Callable[[int], None],
        hub: Fanout,
        known_fields: KnownFields,
        viewers: Viewers | None = None,
    ) -> None:
        self.admit = admit
        self.release = release
        """Gives an admitted connection's handle back (it ended)."""
        self.hub = hub
        self.known_fields = known_fields
        self.viewers = viewers
        self.leaving: set[asyncio.Task[None]] = set()
        """Closed connections leaving the fan-out (held until done)."""
        self.known: dict[tuple[str, str, str], frozenset[str]] = {}
        """Per machine and message type: its fields as the sessions hold them (one set
        shared by the machine's connections, not 2 KB each for 50 fields)."""

    def match(self, path: str) -> tuple[str, ...] | None:
        m = ROUTE.fullmatch(path)
        return m.groups() if m else None

    async def open(
        self, socket: ServerSocket, params: tuple[str, ...], request: Request
    ) -> LiveConnection | None:
        org, chassis = map(sys.intern, params)  # shared by the machine's connections
        path, _, query_string = request.path.partition("?")
        query = {k: v[0] for k, v in parse_qs(query_string).items()}
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        connection = LiveConnection(self, socket, org, chassis)
        admitted = await self.admit(unquote(path), query, headers, connection.end)
        if isinstance(admitted, Refusal):
            socket.accept()
            socket.close(CLOSE_POLICY, admitted.message)
            return None
        try:
            msg_type = query.get("msgType")
            fatal = check_msg_type(msg_type)
            fields: list[str] = []
            if fatal is None:
                assert msg_type is not None
                try:
                    fields = await self.known_fields(org, chassis, msg_type)
                except NotFound as exc:
                    fatal = Fatal("not_found", str(exc), CLOSE_NOT_FOUND)
        except BaseException:
            self.release(admitted)
            raise
        socket.accept()
        if fatal is not None or not socket.is_open:
            self.release(admitted)
            if fatal is not None:
                socket.send(fatal.text.encode())
                socket.close(fatal.close_code, fatal.message[:120])
            return None
        assert msg_type is not None and socket.transport is not None
        connection.handle = admitted
        connection.channel = sys.intern(live_channel(org, chassis, msg_type))
        connection.session = LiveSession(msg_type, self._known(org, chassis, msg_type, fields))
        connection.outbox = socket.outbox = self.hub.outbox(
            socket.transport, WS_TEXT, connection.stalled
        )
        observe.WS_CONNECTIONS.inc()
        if self.viewers is not None:  # real-time follows viewers
            self.viewers.joined(org, chassis)
        return connection

    def _known(self, org: str, chassis: str, msg_type: str, fields: list[str]) -> frozenset[str]:
        known = frozenset(fields)
        key = (org, chassis, msg_type)
        shared = self.known.get(key)
        if shared == known:
            return shared
        self.known[key] = known
        return known

    def leave(self, connection: LiveConnection) -> None:
        task = asyncio.get_running_loop().create_task(connection.leave())
        self.leaving.add(task)
        task.add_done_callback(self.leaving.discard)


_Pending = tuple[str | bytes, float]


class LiveConnection:
    """One open live connection (a :class:`~livedata.gateway.wsserver.Handler`)."""

    __slots__ = (
        "_gone",
        "_task",
        "_todo",
        "channel",
        "chassis",
        "endpoint",
        "handle",
        "org",
        "outbox",
        "rated",
        "session",
        "socket",
    )

    def __init__(self, endpoint: LiveEndpoint, socket: ServerSocket, org: str, chassis: str):
        self.endpoint = endpoint
        self.socket = socket
        self.org = org
        self.chassis = chassis
        self.handle = -1
        self.channel = ""
        self.session: LiveSession | None = None
        self.outbox: Outbox | None = None
        self.rated: _Rated | None = None
        self._todo: list[_Pending] | None = None
        """Client messages that arrived while a subscription is being changed (at most
        what one read of the socket held: reading pauses meanwhile)."""
        self._task: asyncio.Task[None] | None = None
        self._gone = False

    def end(self, reason: str) -> None:
        """The credential ended (logout, revoked): close with 1008 and ``reason``."""
        self.socket.close(CLOSE_POLICY, reason)

    def stalled(self) -> None:
        assert self.outbox is not None
        log.info("closing a stalled client: no progress for %g s", self.outbox.stall_seconds)
        self.socket.close_now(1013, "too slow: no progress")

    def on_text(self, text: str) -> None:
        self._receive(text, time.monotonic())

    def on_binary(self, data: bytes) -> None:
        self._receive(data, time.monotonic())

    def on_lost(self) -> None:
        self._gone = True
        observe.WS_CONNECTIONS.dec()
        endpoint = self.endpoint
        endpoint.release(self.handle)
        if endpoint.viewers is not None:
            endpoint.viewers.left(self.org, self.chassis)
        if self._task is None and (self.rated is not None or self.channel_watched):
            endpoint.leave(self)  # else the running subscription task leaves when done

    @property
    def channel_watched(self) -> bool:
        return self.outbox is not None and self.outbox.channel is not None

    def _receive(self, data: str | bytes, now: float) -> None:
        if self._todo is not None:
            self._todo.append((data, now))
            return
        subscribe = self._handle(data, now)
        if subscribe is not None:
            self._todo = []
            self._reading(False)
            self._task = asyncio.get_running_loop().create_task(self._subscribe(subscribe))

    def _reading(self, on: bool) -> None:
        """Pause reading while a subscription changes (what the client sends meanwhile
        waits in the socket), resume after."""
        transport = self.socket.transport
        if transport is not None and not transport.is_closing():
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _handle(self, data: str | bytes, now: float) -> Subscribe | None:
        """Answer one client message; a valid subscription is returned to be applied."""
        session, socket = self.session, self.socket
        assert session is not None
        if isinstance(data, str):
            event = session.receive_text(data, now)
        else:
            event = session.receive_bytes(data, now)
        if isinstance(event, Fatal):
            socket.send(event.text.encode())
            socket.close(event.close_code, event.message[:120])
            return None
        if isinstance(event, Reply):
            socket.send(event.text.encode())
            return None
        if event.warning is not None:
            socket.send(event.warning.encode())
        return event

    async def _subscribe(self, subscribe: Subscribe | None) -> None:
        """Apply ``subscribe``, then the client messages that came meanwhile, in order."""
        try:
            with observe.log_context(role="gateway", machine=self.chassis):
                while subscribe is not None and not self._gone:
                    await self._apply(subscribe)
                    subscribe = None
                    todo = self._todo
                    while todo and subscribe is None and self.socket.is_open:
                        subscribe = self._handle(*todo.pop(0))
        except Exception:
            log.exception("changing a live subscription failed")
            self.socket.close(1011, "internal error")
        finally:
            self._todo = self._task = None
            self._reading(True)
            if self._gone:
                await self.leave()

    async def _apply(self, subscribe: Subscribe) -> None:
        hub, outbox = self.endpoint.hub, self.outbox
        assert outbox is not None
        if self.rated is not None:
            rated, self.rated = self.rated, None
            await rated.stop()
        if subscribe.limiter is None:
            await hub.watch(outbox, self.channel, subscribe.fields, subscribe.since)
        else:
            await hub.leave(outbox)
            self.rated = _Rated(hub, outbox, self.channel, subscribe.limiter)
            await self.rated.start()

    async def leave(self) -> None:
        """The connection is gone: stop its deliveries."""
        if self.rated is not None:
            rated, self.rated = self.rated, None
            await rated.stop()
        if self.outbox is not None:
            await self.endpoint.hub.leave(self.outbox)


class _Rated:
    """A rate-controlled subscription: a fan-out listener feeding a limiter, flushed by a
    loop timer every ``limiter.interval`` seconds."""

    __slots__ = ("channel", "hub", "limiter", "outbox", "timer")

    def __init__(self, hub: Fanout, outbox: Outbox, channel: str, limiter: RateLimiter) -> None:
        self.hub, self.outbox, self.channel, self.limiter = hub, outbox, channel, limiter
        self.timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        self._schedule()
        await self.hub.listen(self.channel, self.limiter.add)

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.limiter.interval, self._flush)

    def _flush(self) -> None:
        message = self.limiter.flush()
        if message is not None:
            self.outbox.send(orjson.dumps(message))
        if self.outbox.closed:
            self.timer = None
        else:
            self._schedule()

    async def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        await self.hub.unlisten(self.channel, self.limiter.add)
