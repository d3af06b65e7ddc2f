"""The HTTP server layer: uvicorn with limits on everything a stranger can send.

:func:`uvicorn_config` builds the uvicorn configuration every server subcommand
uses.  Before any route, security check or database read:

- **connections**: at most ``max_connections`` (default: 90 % of the file-descriptor
  limit, which is raised to its hard limit at start); at the limit the longest-idle
  connection gives way, and when every connection is busy the newcomer gets a 503
  and is closed (:class:`~livedata.gateway.connlimits.ConnectionGate`).  ``accept()``
  therefore does not run out of descriptors; if it does anyway (descriptors used
  elsewhere), the failure is logged once per 10 s with a count, not once per attempt;
- **request heads** (request line and headers) larger than ``max_header_bytes`` get
  431 and the connection is closed; a head not complete ``header_timeout`` seconds
  after the connection opened (or after the next request's first byte) is closed
  (slowloris); an idle keep-alive connection is closed after ``keep_alive_timeout``.
  Both clocks are one :class:`~livedata.gateway.sweep.Sweep` per server (a
  connection's deadline in an ordered dictionary, one loop timer for all: up to 10 %
  of the timeout, at most 1 s, late; at most 256 closes per loop turn), not a timer
  per connection (uvicorn arms a ``call_later`` per keep-alive connection and
  response);
- **request bodies** are counted while they stream, declared or chunked: beyond
  ``max_body_bytes`` the request gets 413 and the connection is closed, so at most
  one read buffer (64 KiB) plus that cap is ever held per request; a body that stops
  for ``body_timeout`` seconds gets 408 (:class:`BodyLimit`).

Every refusal is counted in ``livedata_connections_refused_total{reason}``.

:class:`LimitedServer` (uvicorn's server with its own accept loop) reads each
listening socket with ``loop.add_reader`` and accepts at most :data:`ACCEPT_BATCH`
connections per loop turn (:class:`Listener`), so a flood of connects is spread
over many short turns with everyone else's work in between, on uvloop and asyncio
alike (uvloop's own accept loop runs until the queue is empty: 15,000 fast
connects made one turn of 0.2 s).  Each accepted socket becomes a transport
without a task of its own.  ``accept()`` running out of descriptors pauses
accepting for :data:`ACCEPT_RETRY` seconds (the pending connections wait in the
listen queue) and is logged once per 10 s with a count, never once per attempt.
When thousands of clients close at once, the loop reads all their end-of-files in
one turn; the server closes those connections at most :data:`SWEEP_BATCH` per
turn (:class:`CloseSweep`), and its own bookkeeping per closed connection is two
dictionary removals (gate and head deadlines; the ``livedata_connections`` gauge
is read from the gate when scraped).  What remains in that one turn is the loop's
own work per end-of-file.

:func:`event_loop_factory` picks the event loop (setting ``event_loop``): uvloop
when installed.  Under a flood of idle connections the loop's own work per
connection (register, read end-of-file, close) is what delays everyone else;
uvloop does it in C, asyncio in Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
import urllib.parse
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import httptools
import orjson
import uvicorn
from prometheus_client import Counter, Gauge
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import HANDLED_SIGNALS, STARTUP_FAILURE

from livedata.errors import ConfigError
from livedata.gateway.connlimits import (
    ConnectionGate,
    RepeatLog,
    accept_batch,
    default_limit,
    raise_fd_limit,
)
from livedata.gateway.sweep import BATCH, Sweep
from livedata.gateway.wsserver import PING_BATCH, ServerSocket, SocketSettings
from livedata.settings import Settings

if TYPE_CHECKING:
    from livedata.gateway.fanout import Outbox
    from livedata.gateway.wsserver import Endpoint

log = logging.getLogger("livedata.server")

CONNECTIONS = Gauge("livedata_connections", "Open HTTP and WebSocket connections")
REFUSED = Counter(
    "livedata_connections_refused",
    "Connections and requests refused or closed by the server's limits",
    ["reason"],
)

ACCEPT_BATCH = 128
"""The listen backlog, and how many connections :class:`Listener` accepts per loop turn
at most: with 2,048 a flood of 25,000 connections stalled /healthz for 2.4 s, with 128
for 0.7 s (``bench/bench_abuse.py --only idle``)."""

ACCEPT_RETRY = 0.5
"""Seconds :class:`Listener` stops accepting after ``accept()`` ran out of descriptors."""

Scope = MutableMapping[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CLOSE = ((b"connection", b"close"),)
_REASONS = {
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


def error_body(code: str, message: str) -> bytes:
    """The JSON error shape every 4xx/5xx answer of livedata has."""
    return orjson.dumps({"error": {"code": code, "message": message}})


def raw_response(status: int, code: str, message: str) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = error_body(code, message)
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's limits, from the settings."""

    max_connections: int
    max_header_bytes: int
    header_timeout: float
    max_body_bytes: int
    body_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        fd_limit = raise_fd_limit()
        return cls(
            max_connections=settings.max_connections or default_limit(fd_limit),
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            max_body_bytes=settings.max_body_bytes,
            body_timeout=settings.body_timeout,
        )


class _Limited:
    """What the HTTP and WebSocket protocols of one server share."""

    gate: ClassVar[ConnectionGate]
    limits: ClassVar[Limits]
    sockets: ClassVar[Endpoint | None] = None
    """The WebSocket routes the server layer serves itself (:mod:`livedata.gateway.wsserver`)."""
    socket_settings: ClassVar[SocketSettings]
    full_log: ClassVar[RepeatLog]
    heads: ClassVar[Sweep]
    """Request heads that must complete within ``header_timeout``."""
    idle: ClassVar[Sweep]
    """Keep-alive connections between two requests (``keep_alive_timeout``)."""
    closing: ClassVar[CloseSweep]
    ws_pings: ClassVar[Sweep]
    """uvicorn WebSockets (Socket.IO) whose next keep-alive ping is due (``WS_PING_INTERVAL``)."""
    ws_pongs: ClassVar[Sweep]
    """uvicorn WebSockets whose ping waits for its pong (``WS_PING_TIMEOUT``)."""


SWEEP_BATCH = BATCH
"""Connections a :class:`~livedata.gateway.sweep.Sweep` and :class:`CloseSweep` close per loop
turn at most."""


class CloseSweep:
    """Connections whose client has closed its side, closed by the server a batch per turn.

    When thousands of clients close at once, the event loop reads all their
    end-of-files in one turn; closing each transport there and running each
    ``connection_lost`` would make that one long turn.  Instead they are closed
    at most :data:`SWEEP_BATCH` per loop turn, in the order the clients closed,
    and the rest wait (holding their place in the connection gate) for the next.
    """

    def __init__(self) -> None:
        self._queue: deque[asyncio.BaseTransport] = deque()
        self._timer: asyncio.Handle | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, transport: asyncio.BaseTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._queue.append(transport)
        if self._timer is None:
            self._timer = loop.call_soon(self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        queue = self._queue
        for _ in range(min(SWEEP_BATCH, len(queue))):
            queue.popleft().close()
        if queue:
            self._timer = loop.call_soon(self._sweep, loop)


RAW_HTTP = "livedata.http"
"""The ASGI scope extension (a weak reference to the request's :class:`LimitedHttp`)
through which an endpoint writes a streamed response body to the transport itself
(:meth:`LimitedHttp.stream_body`: the SSE watch)."""


class BodyStream(Protocol):
    """A response body written straight to the transport (see :meth:`LimitedHttp.stream_body`;
    a :class:`~livedata.gateway.fanout.Outbox` is one)."""

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def close(self) -> None:
        """The response is complete or the connection gone: write nothing more."""
        ...


_Stream = TypeVar("_Stream", bound=BodyStream)


class LimitedHttp(HttpToolsProtocol, _Limited):
    """uvicorn's httptools protocol with the connection gate, head size and head time caps.

    An idle connection holds as little as uvicorn allows: the request parser is made
    when the first bytes of a request arrive (not for connections that never send
    any) and dropped with the request's scope and cycle once the response is sent
    (keep-alive), and the head and keep-alive timeouts are deadlines in the server's
    :class:`~livedata.gateway.sweep.Sweep` s (:attr:`heads`, :attr:`idle`), not timers.
    """

    _refused = False
    _in_head = True
    _head_bytes = 0
    body_stream: BodyStream | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parser = None  # type: ignore[assignment]  # made by data_received

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        admission = self.gate.opened(transport)
        if not admission.admit:
            self._refused = True
            REFUSED.labels("full").inc()
            self.full_log.event(f"{self.limits.max_connections} connections, all busy")
            transport.write(
                raw_response(503, "unavailable", "the server is at its connection limit")
            )
            transport.close()
            return
        if admission.evict is not None:
            REFUSED.labels("idle_evicted").inc()
            admission.evict.close()  # type: ignore[attr-defined]
        super().connection_made(transport)
        self.heads.start(self, self.loop)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._end_body_stream()
        self.heads.stop(self)
        self.idle.stop(self)
        if self.transport is not None:
            self.gate.closed(self.transport)
        super().connection_lost(exc)

    def eof_received(self) -> bool:  # type: ignore[override]
        """The client closed its side: the server closes the connection in its
        :class:`CloseSweep` (a batch per loop turn), not in this turn."""
        self.closing.add(self.transport, self.loop)
        return True

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self.parser is None:
            self.parser = httptools.HttpRequestParser(self)
            with contextlib.suppress(AttributeError):  # httptools < 0.6.3, as uvicorn does
                self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        counted = self._in_head
        if counted:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and not counted:  # these bytes began the next request's head
            self._head_bytes += len(data)
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._close_with(431, "header_too_large", "request line and headers are too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self not in self.heads:
            self.heads.start(self, self.loop)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self.heads.stop(self)
        self.gate.busy(self.transport)
        self.scope["extensions"] = {RAW_HTTP: weakref.ref(self)}  # type: ignore[dict-item]
        super().on_headers_complete()

    def _unset_keepalive_if_required(self) -> None:
        """uvicorn's hook (new data, connection lost): the keep-alive clock stops."""
        self.idle.stop(self)

    def on_response_complete(self) -> None:
        """uvicorn's when a pipelined request is next (it starts it) or the connection
        closes; else uvicorn's (count, resume reading, keep-alive clock) with the clock
        in :attr:`idle` instead of a ``call_later``; then, between two requests, the
        connection is idle and keeps nothing.  A body stream handed to the server layer
        ends first."""
        self._end_body_stream()
        self._head_bytes = 0
        if self.pipeline or self.transport.is_closing():
            super().on_response_complete()  # arms no keep-alive timer in these cases
            return
        self.server_state.total_requests += 1
        self.flow.resume_reading()
        self.idle.start(self, self.loop)
        cycle = self.cycle
        if cycle is None or not cycle.response_complete:
            return
        self.gate.idle(self.transport)
        if not self._in_head and not cycle.more_body:
            # Between two requests (this one read whole, the next not begun): keep nothing
            # of it.  The request's task holds what it still uses; the next request makes
            # a new parser, scope and cycle.
            self.parser = self.cycle = self.scope = self.headers = None  # type: ignore[assignment]
            self.url = b""

    def stream_body(self, make: Callable[[asyncio.Transport], _Stream]) -> _Stream | None:
        """Let ``make(transport)`` (a :class:`BodyStream`) write the body of the response in
        progress (its head sent, ``Transfer-Encoding: chunked``) to the transport itself, as
        whole chunks; the final chunk stays the ASGI app's (``more_body`` false).  The
        transport's ``pause_writing`` / ``resume_writing`` reach the stream, and its
        ``close()`` is called when the response completes or the connection is lost.
        ``None`` (the app keeps writing through ASGI) when the response is not such a body
        in progress or another request is pipelined behind it."""
        cycle = self.cycle
        if (
            cycle is None
            or not cycle.response_started
            or cycle.response_complete
            or not cycle.chunked_encoding
            or self.pipeline
            or self.transport.is_closing()
        ):
            return None
        stream = self.body_stream = make(self.transport)
        if self.flow.write_paused:
            stream.pause_writing()
        return stream

    def _end_body_stream(self) -> None:
        stream = self.body_stream
        if stream is not None:
            self.body_stream = None
            stream.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.body_stream is not None:
            self.body_stream.pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.body_stream is not None:
            self.body_stream.resume_writing()

    def handle_websocket_upgrade(self) -> None:
        """An upgrade to a path of :attr:`sockets` is served by a
        :class:`~livedata.gateway.wsserver.ServerSocket`, the others by uvicorn."""
        endpoint = self.sockets
        params = None
        if endpoint is not None:
            path = httptools.parse_url(self.url).path.decode("ascii")
            params = endpoint.match(urllib.parse.unquote(path) if "%" in path else path)
        if params is None:
            super().handle_websocket_upgrade()
            return
        assert endpoint is not None
        self.connections.discard(self)
        head = [self.scope["method"].encode(), b" ", self.url, b" HTTP/1.1\r\n"]
        for name, value in self.scope["headers"]:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        connections: Any = self.connections  # shutdown() of each when the server stops
        served = ServerSocket(endpoint, params, self.socket_settings, connections)
        served.connection_made(self.transport)
        self.transport.set_protocol(served)
        served.data_received(b"".join(head))

    def _idle_timeout(self) -> None:
        """``keep_alive_timeout`` passed with no new request (uvicorn's handler)."""
        self.timeout_keep_alive_handler()

    def _head_timeout(self) -> None:
        if self._in_head and not self.transport.is_closing():
            if self._head_bytes:
                self._close_with(408, "header_timeout", "the request head took too long")
            else:
                REFUSED.labels("idle_timeout").inc()
                self.transport.close()

    def _close_with(self, status: int, reason: str, message: str) -> None:
        REFUSED.labels(reason).inc()
        self._in_head = False
        self.heads.stop(self)
        if not self.transport.is_closing():
            self.transport.write(raw_response(status, reason, message))
            self.transport.close()


RAW_WEBSOCKET = "livedata.websocket"
"""The ASGI scope extension under which an accepted WebSocket's :class:`LimitedWebSocket`
is found: an endpoint that writes pre-framed bytes itself (Socket.IO; the live
WebSocket is served without the app: :mod:`livedata.gateway.wsserver`)."""


class LimitedWebSocket(WebSocketsSansIOProtocol, _Limited):
    """uvicorn's WebSocket protocol that leaves the connection gate when it closes, and
    hands its transport to an endpoint that wants it.

    After the handshake the ASGI scope holds this protocol as the extension
    :data:`RAW_WEBSOCKET`.  An endpoint may then, instead of one ASGI ``send`` per
    message, set :attr:`outbox` (a :class:`~livedata.gateway.fanout.Outbox` whose
    sink is this protocol): :meth:`write` puts server frames (unmasked, built once
    for many clients) straight on the transport, ``pause_writing`` /
    ``resume_writing`` reach the outbox, and :meth:`close_now` ends a stalled
    connection without waiting for the peer.  The handshake, pings, the client's
    messages and the closing handshake stay uvicorn's (ASGI ``receive`` and
    ``websocket.close``).

    uvicorn's keep-alive (a ping every ``WS_PING_INTERVAL`` s, 1011 without its pong
    within ``WS_PING_TIMEOUT`` s) runs on the server's two
    :class:`~livedata.gateway.sweep.Sweep` s (:attr:`ws_pings`, :attr:`ws_pongs`)
    instead of a ``call_later`` per connection and ping: one loop timer each for all
    connections, up to 1 s late; every ping carries the same payload (:data:`PING`).
    """

    outbox: Outbox | None = None
    _close_sent = False

    @property
    def close_sent(self) -> bool:
        return self._close_sent

    @close_sent.setter
    def close_sent(self, value: bool) -> None:
        # every way to begin the closing handshake sets this: no data frame after it
        self._close_sent = value
        if value and self.outbox is not None:
            self.outbox.close()

    def schedule_ping(self) -> None:
        self.ws_pings.start(self, self.loop)

    def send_keepalive_ping(self) -> None:
        """The ping is due (uvicorn's, with the pong's deadline in :attr:`ws_pongs`)."""
        if self.close_sent or self.transport.is_closing():
            return
        self.pending_ping_payload = PING
        self.conn.send_ping(PING)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.ws_pings.stop(self)  # the next one is due after the pong
        self.ws_pongs.start(self, self.loop)

    def handle_pong(self, event: Any) -> None:
        if self.pending_ping_payload is None or bytes(event.data) != self.pending_ping_payload:
            return
        self.pending_ping_payload = None
        self.ws_pongs.stop(self)
        self.schedule_ping()

    def stop_keepalive(self) -> None:
        self.ws_pings.stop(self)
        self.ws_pongs.stop(self)
        self.pending_ping_payload = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if not self.close_sent:  # an upgrade the app will see (not a refused handshake)
            self.scope["extensions"][RAW_WEBSOCKET] = self  # type: ignore[assignment]

    def attach(self, outbox: Outbox) -> None:
        """Let ``outbox`` write to this connection's transport (see the class doc)."""
        self.outbox = outbox
        if self.close_sent or self.transport.is_closing():
            outbox.close()

    def handle_close(self, event: Any) -> None:
        if self.outbox is not None:  # the peer closes: no data frame after our answer
            self.outbox.close()
        super().handle_close(event)

    def shutdown(self) -> None:
        if self.outbox is not None:  # the server stops: no data frame after its 1012
            self.outbox.close()
        super().shutdown()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.outbox is not None:
            self.outbox.pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.outbox is not None:
            self.outbox.resume_writing()

    def close_now(self, code: int, reason: str) -> None:
        """Send a close frame behind what is buffered and close the transport at once (a
        stalled peer could not answer); the app's ``receive`` gets the disconnect."""
        if self.outbox is not None:
            self.outbox.close()
        if self.close_sent or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.outbox is not None:
            self.outbox.close()
        self.gate.closed(self.transport)
        super().connection_lost(exc)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a request body passes the cap (an ``HTTPException``,
    so FastAPI's body parsing passes it on instead of calling it a parse error)."""

    code = "too_large"

    def __init__(self, message: str) -> None:
        super().__init__(413, message, {"connection": "close"})


class BodyTimeout(HTTPException):
    """Raised from ``receive`` when a request body stops arriving."""

    code = "timeout"

    def __init__(self, message: str) -> None:
        super().__init__(408, message, {"connection": "close"})


class BodyLimit:
    """ASGI middleware: caps every request body while it streams (declared or chunked)
    and times out a body that stops arriving; the app sees the error as an exception
    from ``receive`` (FastAPI answers it through its handlers, anything else here)."""

    def __init__(self, app: Any, max_bytes: int, timeout: float) -> None:
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await send_error(send, 413, "too_large", self._too_large(), _CLOSE)
        received = 0
        more = True
        started = False

        async def limited_receive() -> Message:
            nonlocal received, more
            if not more:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                REFUSED.labels("body_timeout").inc()
                raise BodyTimeout(f"no request body for {self.timeout:g} s") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                more = message.get("more_body", False)
                if received > self.max_bytes:
                    REFUSED.labels("body_too_large").inc()
                    raise BodyTooLarge(self._too_large())
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except (BodyTooLarge, BodyTimeout) as exc:
            if not started:
                await send_error(send, exc.status_code, exc.code, exc.detail, _CLOSE)

    def _too_large(self) -> str:
        return f"the body is larger than {self.max_bytes} bytes"


async def send_error(
    send: Send, status: int, code: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer an ASGI HTTP request with the error shape (the caller's extra headers)."""
    body = error_body(code, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Listener:
    """Accepts connections from one listening socket, at most ``batch`` per loop turn.

    The socket is read with ``loop.add_reader``: each turn in which it is readable,
    :func:`~livedata.gateway.connlimits.accept_batch` takes up to ``batch``
    connections and the rest wait in the listen queue for the next turn, after the
    other ready callbacks (a ``/healthz`` request, a live write) have run.  Each
    accepted socket is handed to a new protocol through
    ``loop.connect_accepted_socket``, whose coroutine is driven by a callback on its
    one future instead of a task.  Out of descriptors or memory, accepting pauses
    for ``retry`` s (logged once per 10 s with a count).  It has the two methods of
    an asyncio server that uvicorn's shutdown calls: :meth:`close` stops accepting
    (the socket itself is closed by its owner) and :meth:`wait_closed`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        batch: int = ACCEPT_BATCH,
        retry: float = ACCEPT_RETRY,
    ) -> None:
        self.loop, self.sock, self.protocol_factory = loop, sock, protocol_factory
        self.batch, self.retry = batch, retry
        self.accepted = 0
        self.failures = RepeatLog(log, "accept() failed: out of file descriptors or memory")
        self._paused: asyncio.TimerHandle | None = None
        self._reading = False
        sock.setblocking(False)
        self._start()

    def _start(self) -> None:
        self._paused = None
        self.loop.add_reader(self.sock.fileno(), self._accept)
        self._reading = True

    def _accept(self) -> None:
        accepted, error = accept_batch(self.sock.accept, self.batch)
        self.accepted += len(accepted)
        for conn, _address in accepted:
            self._connect(conn)
        if error is not None:
            REFUSED.labels("accept_failed").inc()
            self.failures.event(str(error))
            self.close()
            self._paused = self.loop.call_later(self.retry, self._start)

    def _connect(self, conn: socket.socket) -> None:
        coro = self.loop.connect_accepted_socket(self.protocol_factory, conn)
        try:
            waiter = coro.send(None)  # made the transport; waits for connection_made
        except StopIteration:
            return
        except OSError:  # the connection is gone already
            conn.close()
            return
        waiter.add_done_callback(partial(_finish, coro))

    def close(self) -> None:
        """Stop accepting (now, and after a pause)."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        if self._reading:
            self.loop.remove_reader(self.sock.fileno())
            self._reading = False

    async def wait_closed(self) -> None:
        """Nothing to wait for: uvicorn waits for the connections itself."""


def _finish(coro: Coroutine[Any, Any, Any], _waiter: asyncio.Future[None]) -> None:
    """Run ``connect_accepted_socket``'s coroutine to its end once its future is done (a
    failure there was reported by the loop and closed the transport)."""
    with contextlib.suppress(Exception, asyncio.CancelledError):  # StopIteration: done
        coro.send(None)


class LimitedServer(uvicorn.Server):
    """uvicorn's server with :class:`Listener` as its accept loop (see the module doc).

    Serves the sockets passed to :meth:`serve`, or one it binds from the config's host
    and port; lifespan, graceful shutdown and signals are uvicorn's.  ``on_listening()``
    is called once it accepts connections, so after uvicorn's signal handlers are in
    place: an interrupt sent as soon as it is told is a graceful shutdown.

    Unlike uvicorn's, its signal handlers do not send the signal again once it has
    stopped: that cancelled the runtime's stop after it (SIGINT, through
    :class:`asyncio.Runner`'s handler) or killed the process before it (SIGTERM), so
    the engines were never closed.  The caller stops the runtime and exits with
    status 0; a second signal during that stop is the runner's again (it cuts the stop
    short)."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None] = lambda: None):
        super().__init__(config)
        self.on_listening = on_listening

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        before = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=loop,
            )

        listening = sockets if sockets is not None else [config.bind_socket()]
        self.servers = [Listener(loop, sock, protocol) for sock in listening]  # type: ignore[misc]
        self.started = True
        self.on_listening()


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop for ``choice`` (``auto``: uvloop when installed, else asyncio)."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError("event_loop = uvloop, but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


WS_MAX_SIZE = 1024 * 1024
"""Bytes of one client WebSocket message at most (more: close 1009)."""
WS_PING_INTERVAL = WS_PING_TIMEOUT = 20.0
"""Seconds between keep-alive pings, and for the pong (none: close 1011)."""
PING = b"ldka"
"""The payload of every keep-alive ping of uvicorn's WebSockets (a pong is matched by it)."""


def uvicorn_config(app: Any, settings: Settings, sockets: Endpoint | None = None) -> uvicorn.Config:
    """The uvicorn configuration of a livedata server: ``app`` behind the limits above
    (served by :class:`LimitedServer`, which accepts connections a batch per turn);
    WebSocket upgrades to the routes of ``sockets`` are served without the app
    (:mod:`livedata.gateway.wsserver`), on the same port."""
    limits = Limits.from_settings(settings)
    gate = ConnectionGate(limits.max_connections)
    CONNECTIONS.set_function(gate.__len__)

    shared = {
        "sockets": sockets,
        "socket_settings": SocketSettings(
            WS_MAX_SIZE, WS_PING_INTERVAL, WS_PING_TIMEOUT, gate.closed
        ),
        "gate": gate,
        "limits": limits,
        "full_log": RepeatLog(log, "new connections refused: at the connection limit"),
        "heads": Sweep(limits.header_timeout, LimitedHttp._head_timeout),
        "idle": Sweep(settings.keep_alive_timeout, LimitedHttp._idle_timeout),
        "closing": CloseSweep(),
        "ws_pings": Sweep(WS_PING_INTERVAL, LimitedWebSocket.send_keepalive_ping, PING_BATCH),
        "ws_pongs": Sweep(WS_PING_TIMEOUT, LimitedWebSocket.keepalive_timeout),
    }
    http = type("LimitedHttp", (LimitedHttp,), shared)
    ws = type("LimitedWebSocket", (LimitedWebSocket,), shared)
    return uvicorn.Config(
        BodyLimit(app, limits.max_body_bytes, limits.body_timeout),
        http=http,
        ws=ws,
        log_config=None,
        timeout_keep_alive=settings.keep_alive_timeout,
        ws_max_size=WS_MAX_SIZE,
        ws_per_message_deflate=False,  # ~100-byte messages: compression costs CPU and memory only
        ws_ping_interval=WS_PING_INTERVAL,
        ws_ping_timeout=WS_PING_TIMEOUT,
        timeout_graceful_shutdown=3,
        backlog=ACCEPT_BATCH,
    )
