"""WebSocket connections served by the server layer itself: no ASGI app, no task per connection.

uvicorn's HTTP protocol (:class:`~livedata.gateway.server.LimitedHttp`) hands an
upgrade request whose path an :class:`Endpoint` claims to a :class:`ServerSocket`
instead of uvicorn's WebSocket protocol, on the same port.  The socket drives the
``websockets`` sans-I/O :class:`~websockets.server.ServerProtocol` from asyncio's
callbacks:

1. **Handshake.**  The request is checked by ``websockets`` (a bad one gets its
   4xx, as from uvicorn).  Then the endpoint's ``open`` coroutine runs once (the
   only task of a connection, for its authentication and look-ups); it calls
   :meth:`ServerSocket.accept` (the 101) and returns a :class:`Handler`, or
   refuses (accept, then :meth:`ServerSocket.close` with a code and reason, so the
   client sees why).  Reading is paused meanwhile.
2. **Open.**  Each complete client message goes to the handler's ``on_text`` /
   ``on_binary`` from ``data_received``; pings are answered, the peer's close is
   answered and the transport closed.  The server's frames go out through the
   connection's :class:`~livedata.gateway.fanout.Outbox` (:attr:`ServerSocket.outbox`,
   set by the handler): pre-framed bytes written straight to the transport.  A
   keep-alive ping goes out ``ping_interval`` seconds after the connection opened
   or its last ping was answered; no pong within ``ping_timeout`` closes with 1011.
3. **Close.**  :meth:`ServerSocket.close` sends a close frame and waits up to
   :data:`CLOSE_TIMEOUT` s for the peer's; :meth:`ServerSocket.close_now` (a
   stalled peer) closes the transport behind the close frame at once.  When the
   transport is gone, or at ``close_now``, the handler's ``on_lost`` runs (once).

Timers: none per connection.  The keep-alive, the pong and the close clocks are
deadlines in three :class:`~livedata.gateway.sweep.Sweep` s that all connections
of a server share (:class:`SocketSettings`): one loop timer each, so a ping or a
1011 comes up to 10 % of its interval (1 s at most) late, and a turn sends at most
:data:`PING_BATCH` pings (connections opened together are pinged over many short
turns, with the live messages' writes between them).
Every ping of a server carries the same payload (a server frame is not masked:
the same bytes go to every connection), so a ping is one ``transport.write`` of
a prepared frame; a pong is matched by that payload.

Under stress: an idle open connection holds this object, its sans-I/O protocol,
its handler and outbox and its place in one sweep: no coroutine, task, timer,
queue or buffer of its own.  A client message bigger than ``max_size`` closes the
connection with 1009 (``websockets``); reading pauses while the handshake's
``open`` runs, so a client cannot queue messages before it is accepted.  A peer
that stops reading is the outbox's business (bounded queue, stall clock → 1013).
A server that stops sends 1012 to every open connection (:meth:`shutdown`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol as FrameProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from livedata.gateway.fanout import WS_TEXT
from livedata.gateway.sweep import Sweep

if TYPE_CHECKING:
    from websockets.http11 import Response

    from livedata.gateway.fanout import Outbox

log = logging.getLogger("livedata.gateway.wsserver")

CLOSE_TIMEOUT = 10.0
"""Seconds the peer has to answer our close frame before the transport is closed."""

PING_BATCH = 16
"""Keep-alive pings one loop turn sends at most.  A ping costs its write now and the
reading and parsing of its pong in the next turn, about 20 µs together on uvloop.
Connections opened within the same second are pinged by the same sweep (its 1 s
interval gathers their deadlines): at 256 a turn, 1,000 of them held the loop for
3-4 stretches of 5-19 ms of CPU every 20 s, and every live message due then waited
(``bench_fanout.py --stalls``); 16 a turn keep a turn's ping work near 0.3 ms, with
the live messages' writes between turns (10,000 connections are pinged over 625
turns, within the ping interval's 10 %)."""


class Handler(Protocol):
    """One open connection's application side."""

    def on_text(self, text: str) -> None: ...

    def on_binary(self, data: bytes) -> None: ...

    def on_lost(self) -> None:
        """The connection is gone (called once, whatever ended it)."""
        ...


class Endpoint(Protocol):
    """The WebSocket routes served by :class:`ServerSocket` (one object per app)."""

    def match(self, path: str) -> tuple[str, ...] | None:
        """The path parameters when ``path`` (percent-decoded) is one of these routes."""
        ...

    async def open(
        self, socket: ServerSocket, params: tuple[str, ...], request: Request
    ) -> Handler | None:
        """Authenticate and set up; call ``socket.accept()`` and return a handler, or
        accept and close (a refusal) and return None."""
        ...


class ServerSocket(asyncio.Protocol):
    """One WebSocket connection driven from asyncio callbacks (see the module doc)."""

    __slots__ = (
        "_opening",
        "_parts",
        "_response",
        "_tail",
        "conn",
        "connections",
        "endpoint",
        "handler",
        "outbox",
        "params",
        "settings",
        "transport",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        params: tuple[str, ...],
        settings: SocketSettings,
        connections: set[ServerSocket],
    ) -> None:
        self.endpoint = endpoint
        self.params = params
        self.settings = settings
        self.connections = connections
        """The server's open connections (it calls :meth:`shutdown` of each when it stops)."""
        connections.add(self)
        self.conn = ServerProtocol(max_size=settings.max_size, logger=log)
        self.transport: asyncio.Transport | None = None
        self.handler: Handler | None = None
        self.outbox: Outbox | None = None
        self._response: Response | None = None
        self._opening: asyncio.Task[None] | None = None
        self._parts: tuple[Opcode, list[bytes | bytearray | memoryview]] | None = None
        """A fragmented message: its opcode and the fragments so far."""
        self._tail: bytes | None = b""
        """Until the request head is complete: its last bytes so far (None after)."""

    # asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        tail = self._tail
        if tail is None:
            self._receive(data)
            return
        # The request head is fed alone, so that websockets' handshake parser ends at
        # a clean boundary (see _frames_only); what follows it is fed after.
        seen = tail + data
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._tail = seen[-3:]
            self._receive(data)
            return
        self._tail = None
        cut = end + 4 - len(tail)
        self._receive(data[:cut])
        if cut < len(data) and self.transport is not None and not self.transport.is_closing():
            self._receive(data[cut:])

    def _receive(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        if conn.handshake_exc is not None and conn.state is State.CONNECTING:
            # websockets queued a 414/431 for a head over its limits, else only an EOF
            out = (
                b"".join(conn.data_to_send())
                or conn.reject(
                    400, "Failed to open a WebSocket connection: invalid request.\n"
                ).serialize()
            )
            self._write(out)
            self._abort()
            return
        for event in conn.events_received():
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Request):
                self._request(event)
        self._flush()
        if conn.parser_exc is not None:  # a protocol error: websockets sent its close frame
            self._abort()

    def eof_received(self) -> bool | None:
        self.conn.receive_eof()
        self._flush()
        return None

    def pause_writing(self) -> None:
        if self.outbox is not None:
            self.outbox.pause_writing()

    def resume_writing(self) -> None:
        if self.outbox is not None:
            self.outbox.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clocks()
        if self.outbox is not None:
            self.outbox.close()
        if self._opening is not None:
            self._opening.cancel()
        try:
            self._end_handler()
        finally:
            self.connections.discard(self)
            if self.transport is not None:
                self.settings.on_gone(self.transport)

    # the application's side ------------------------------------------------------------

    def accept(self) -> None:
        """Send the 101 response: the connection is open."""
        response, self._response = self._response, None
        assert response is not None and self.transport is not None
        if self.transport.is_closing():
            return
        if "Server" in response.headers:  # no versions to strangers
            del response.headers["Server"]
        self.conn.send_response(response)
        self._flush()
        self._schedule_ping()

    def send(self, payload: bytes) -> None:
        """Send one text message (``payload``: UTF-8) through the outbox, or straight
        to the transport when there is none."""
        if self.outbox is not None:
            self.outbox.send(payload)
        elif self.is_open:
            assert self.transport is not None
            self.transport.write(WS_TEXT.frame(payload))

    @property
    def is_open(self) -> bool:
        """Accepted, no close frame sent or received, transport not closing."""
        transport = self.transport
        return (
            self.conn.state is State.OPEN and transport is not None and not transport.is_closing()
        )

    def close(self, code: int, reason: str = "") -> None:
        """Begin the closing handshake (no data frame after this)."""
        if self.outbox is not None:
            self.outbox.close()
        if not self.is_open:
            return
        self.conn.send_close(code, reason)
        self._flush()
        self._stop_clocks()
        if self.transport is not None and not self.transport.is_closing():
            self.settings.closing.start(self, asyncio.get_running_loop())

    def close_now(self, code: int, reason: str) -> None:
        """Put a close frame behind what is buffered and close the transport at once (a
        stalled peer could not answer).  The handler's ``on_lost`` runs now: the
        transport may wait long for a peer that reads nothing before it is lost."""
        if self.outbox is not None:
            self.outbox.close()
        if self.is_open:
            self.conn.send_close(code, reason)
            self._flush()
        self._abort()
        self._end_handler()

    def _end_handler(self) -> None:
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.on_lost()

    def shutdown(self) -> None:
        """The server stops: 1012 to an open connection; a handshake is dropped."""
        if self.is_open:
            self.close_now(1012, "")
        else:
            self._abort()

    # internals ---------------------------------------------------------------------------

    def _request(self, request: Request) -> None:
        response = self.conn.accept(request)
        if response.status_code != 101:
            self.conn.send_response(response)
            self._flush()
            self._abort()
            return
        self._response = response
        _frames_only(self.conn)
        assert self.transport is not None
        self.transport.pause_reading()
        self._opening = asyncio.get_running_loop().create_task(self._open(request))

    async def _open(self, request: Request) -> None:
        try:
            params, self.params = self.params, ()  # the endpoint keeps what it needs
            self.handler = await self.endpoint.open(self, params, request)
        except Exception:
            log.exception("opening a WebSocket connection failed")
            if self._response is not None and self.is_handshaking:
                self.conn.send_response(self.conn.reject(500, "Internal Server Error\n"))
                self._flush()
                self._abort()
            else:
                self.close(1011, "internal error")
            return
        finally:
            self._opening = None
        if self._response is not None:  # the endpoint neither accepted nor refused
            self._abort()
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    @property
    def is_handshaking(self) -> bool:
        return self.conn.state is State.CONNECTING and self.transport is not None

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._parts = (opcode, [frame.data])
                return
            self._message(opcode, frame.data)
        elif opcode is Opcode.CONT:
            if self._parts is None:
                return
            first, parts = self._parts
            parts.append(frame.data)
            if frame.fin:
                self._parts = None
                self._message(first, b"".join(parts))
        elif opcode is Opcode.PONG:
            settings = self.settings
            if self in settings.pongs and frame.data == settings.ping and self.is_open:
                settings.pongs.stop(self)
                settings.pings.start(self, asyncio.get_running_loop())
        elif opcode is Opcode.CLOSE:
            self._flush()  # the reply websockets queued
            self._abort()

    def _message(self, opcode: Opcode, data: bytes | bytearray | memoryview) -> None:
        handler = self.handler
        if handler is None or self.conn.state is not State.OPEN:
            return  # a message after our close frame is discarded
        if opcode is Opcode.BINARY:
            handler.on_binary(bytes(data))
            return
        try:
            text = bytes(data).decode()
        except UnicodeDecodeError:
            self.conn.fail(1007, "invalid UTF-8")
            self._flush()
            self._abort()
            return
        handler.on_text(text)

    def _flush(self) -> None:
        """Write what ``websockets`` queued (handshake, pongs, close frames); close the
        transport once both close frames went (the server closes TCP first)."""
        out = self.conn.data_to_send()
        if out:
            self._write(b"".join(out))
        if self.conn.state is State.CLOSED:
            self._abort()

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def _abort(self) -> None:
        self._stop_clocks()
        if self.transport is not None:
            self.transport.close()

    def _stop_clocks(self) -> None:
        settings = self.settings
        settings.pings.stop(self)
        settings.pongs.stop(self)
        settings.closing.stop(self)

    def _schedule_ping(self) -> None:
        if self.settings.ping_interval:
            self.settings.pings.start(self, asyncio.get_running_loop())

    def _send_ping(self) -> None:
        """The keep-alive clock ran out: ping, and start the pong clock."""
        if not self.is_open:
            return
        assert self.transport is not None
        self.transport.write(self.settings.ping_frame)
        self.settings.pongs.start(self, asyncio.get_running_loop())

    def _no_pong(self) -> None:
        if self.is_open:
            self.conn.fail(1011, "keepalive ping timeout")
            self._flush()
        self._abort()


_FRAME_PARSE = FrameProtocol.parse
_WAITING: list[object] = [
    getattr(f, "__code__", f)
    for f in (ServerProtocol.parse, FrameProtocol.parse, StreamReader.at_eof)
]
"""The code of websockets' parser generators when the handshake parser waits for a frame."""


def _frames_only(conn: ServerProtocol) -> bool:
    """Replace ``conn``'s parser by the frame parser alone, when that is safe.

    websockets' server parser (``ServerProtocol.parse``, a generator) reads the request
    head and then continues as the frame parser (``yield from Protocol.parse()``) with
    the request and its headers still in its frame, for the life of the connection
    (about 2.5 KB).  Right after it produced the request, and when nothing of the
    stream after the head was fed to it (:meth:`ServerSocket.data_received` feeds
    the head alone), it waits in the frame parser for a frame's first byte with
    nothing consumed, so a fresh frame parser on the same reader is exactly
    equivalent (websockets itself swaps ``parser`` the same way, for ``discard()``).
    That is checked on the generators themselves, not assumed from a version: the
    parser is the handshake's, suspended in ``Protocol.parse``, suspended in
    ``StreamReader.at_eof`` (nothing of a frame read), with an empty buffer.
    Anything else keeps websockets' parser: correct, only bigger.  Returns whether
    it replaced it.
    """
    parser = getattr(conn, "parser", None)
    chain: list[object] = []
    while parser is not None and len(chain) < 3:
        chain.append(getattr(parser, "gi_code", None))
        parser = getattr(parser, "gi_yieldfrom", None)
    if chain != _WAITING or conn.reader.buffer:
        return False
    conn.parser = _FRAME_PARSE(conn)
    next(conn.parser)
    return True


class SocketSettings:
    """What every :class:`ServerSocket` of one server shares."""

    __slots__ = (
        "closing",
        "max_size",
        "on_gone",
        "ping",
        "ping_frame",
        "ping_interval",
        "ping_timeout",
        "pings",
        "pongs",
    )

    def __init__(
        self,
        max_size: int,
        ping_interval: float,
        ping_timeout: float,
        on_gone: Callable[[asyncio.Transport], None],
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self.on_gone = on_gone
        """Called with the transport of each connection that ends (the server's books)."""
        self.max_size = max_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.ping = os.urandom(4)
        """The payload of every keep-alive ping of this server (a pong must echo it)."""
        self.ping_frame = b"\x89\x04" + self.ping
        """The ping as an unmasked frame (FIN, opcode 9, 4 bytes)."""
        self.pings = Sweep(ping_interval or 1.0, ServerSocket._send_ping, PING_BATCH)
        """Open connections, until their next keep-alive ping."""
        self.pongs = Sweep(ping_timeout, ServerSocket._no_pong)
        """Pinged connections, until their pong (or 1011)."""
        self.closing = Sweep(close_timeout, ServerSocket._abort)
        """Connections that sent their close frame, until the peer's (or the transport
        is closed)."""
