"""SSE watch streams written by the server layer itself, over real sockets.

``livedata serve`` serves the app with :func:`~livedata.gateway.server.uvicorn_config`;
there a watch stream's body, once its head is sent, is written by its group straight
to the transport (:meth:`~livedata.gateway.server.LimitedHttp.stream_body`).  The
client side here is h11 (HTTP/1.1 and chunks) and the protocol's own
:class:`~livedata.gateway.protocol.sse.EventParser`: nothing of the server's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import h11
import pytest
import uvicorn

from livedata.auth.credentials import digest
from livedata.gateway.protocol import sse
from livedata.gateway.server import RAW_HTTP, uvicorn_config
from livedata.settings import Settings
from tests.gateway.test_live_server import until
from tests.gateway.test_watch import LocalServer

# --------------------------------------------------------------------------- the hook alone


class Told:
    """A :class:`~livedata.gateway.server.BodyStream` counting how often it is told the end;
    it keeps the transport it was made for."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.ended_calls = 0

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def close(self) -> None:
        self.ended_calls += 1


async def streaming_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/stream``: a chunked body written to the transport itself, then the ASGI end;
    ``/plain``: a Content-Length body (the server refuses to hand that one over)."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    protocol = scope["extensions"][RAW_HTTP]()
    if scope["path"] == "/plain":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
        )
        scope["state"]["handed"] = protocol.stream_body(Told)
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    told = scope["state"]["told"] = protocol.stream_body(Told)
    told.transport.write(sse.chunk(b"hello"))
    told.transport.write(sse.chunk(b", world"))
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture
async def hooked() -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """A server with livedata's limits serving :func:`streaming_app`; (port, its state)."""
    state: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["state"] = state
        await streaming_app(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn_config(app, Settings(max_connections=10))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await until(lambda: server.started)
    yield sock.getsockname()[1], state
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task
    sock.close()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: h11.Connection, path: str
) -> tuple[h11.Response, bytes]:
    """One request on a kept-alive connection: (response head, body) as h11 reads them."""
    writer.write(client.send(h11.Request(method="GET", target=path, headers=[("Host", "t")])))
    writer.write(client.send(h11.EndOfMessage()))
    head: h11.Response | None = None
    body = b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await asyncio.wait_for(reader.read(65536), 10))
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            client.start_next_cycle()
            return head, body


async def test_a_body_the_app_writes_itself_is_one_valid_response(
    hooked: tuple[int, dict[str, Any]],
) -> None:
    """Chunks an app writes to the handed-over transport arrive between the head and its ASGI
    end as one valid chunked response; the stream is told once when the response is complete,
    and the connection serves the next request.  A Content-Length body is not handed over."""
    port, state = hooked
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        client = h11.Connection(h11.CLIENT)
        head, body = await exchange(reader, writer, client, "/stream")
        assert head.status_code == 200
        assert (b"transfer-encoding", b"chunked") in head.headers
        assert body == b"hello, world"
        assert state["told"].ended_calls == 1
        head, body = await exchange(reader, writer, client, "/plain")
        assert (head.status_code, body) == (200, b"ok")
        assert state["handed"] is None
    finally:
        writer.close()


# --------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("watch-served"), limited=True)
    yield server
    server.stop()


class RawStream:
    """A watch stream over a plain socket: its head and events as h11 and EventParser read them."""

    def __init__(self, server: LocalServer, path: str, headers: dict[str, str]) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.client = h11.Connection(h11.CLIENT)
        fields = [("Host", host), *headers.items()]
        self.sock.sendall(self.client.send(h11.Request(method="GET", target=path, headers=fields)))
        self.sock.sendall(self.client.send(h11.EndOfMessage()))
        self.parser = sse.EventParser()
        self.ended = False
        self.head = self._next()
        assert isinstance(self.head, h11.Response)

    def _next(self) -> Any:
        while (event := self.client.next_event()) is h11.NEED_DATA:
            self.client.receive_data(self.sock.recv(65536))
        return event

    def header(self, name: str) -> str:
        return dict(self.head.headers).get(name.encode(), b"").decode()

    def until(self, done: Callable[[list[sse.ParsedEvent]], bool]) -> list[sse.ParsedEvent]:
        """Events (comments counted by the parser) until ``done(events)`` or the body ends."""
        events: list[sse.ParsedEvent] = []
        while not done(events):
            event = self._next()
            if isinstance(event, h11.Data):
                events += self.parser.feed(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.ended = True
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        return events

    def close(self) -> None:
        self.sock.close()


def members(server: LocalServer) -> list[sse.SseFraming]:
    """The framing of every stream that joined a watch group of the server."""

    def look() -> list[sse.SseFraming]:
        return [m.framing for g in server.gateway.watch._groups.values() for m in g.streams]

    result: list[sse.SseFraming] = server.run(look)
    return result


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_stream_is_written_by_its_group_to_the_socket_and_resumes(served: LocalServer) -> None:
    """Served by livedata's server layer, a watch stream has its documented head, is written
    by its group as HTTP chunks straight to the transport, sends rows with resumable ids and
    keep-alives, and a reconnect with Last-Event-ID gets exactly what it missed."""
    path = "/db/watch/commands?period=1s&timeformat=ms&keep-alive=1s"
    stream = RawStream(served, path, served.headers)
    try:
        assert stream.head.status_code == 200
        assert stream.header("content-type").startswith("text/event-stream")
        assert stream.header("cache-control") == "no-cache"
        assert stream.header("x-accel-buffering") == "no"
        assert stream.header("transfer-encoding") == "chunked"
        wait_for(lambda: members(served) == [sse.CHUNKED_SSE], "the stream joined its group")
        t = int(time.time() * 1000)
        served.publish("acme", "commands", [{"TIME": t + i, "COMMAND": f"c{i}"} for i in range(3)])
        rows = stream.until(lambda events: len(events) >= 3)
        assert [json.loads(e.data) for e in rows] == [
            {"TIME": t + i, "COMMAND": f"c{i}"} for i in range(3)
        ]
        assert all(sse.EventId.parse(e.id) is not None for e in rows)
        comments = stream.parser.comments
        stream.until(lambda _: stream.parser.comments > comments)  # a keep-alive, nothing else
        last = stream.parser.last_id
    finally:
        stream.close()
    wait_for(lambda: members(served) == [], "the stream left its group")
    served.publish("acme", "commands", [{"TIME": t + 3, "COMMAND": "c3"}])
    served.publish("acme", "commands", [{"TIME": t + 4, "COMMAND": "c4"}])
    assert last is not None
    again = RawStream(served, path, {**served.headers, "Last-Event-ID": last})
    try:
        missed = again.until(lambda events: len(events) >= 2)
        assert [json.loads(e.data)["COMMAND"] for e in missed] == ["c3", "c4"]
    finally:
        again.close()


def test_a_stream_whose_session_ends_gets_its_last_chunk(served: LocalServer) -> None:
    """When its credential's live connections are ended, a stream written by the server layer
    ends with HTTP's last chunk (a complete response), and its group lets it go."""
    stream = RawStream(served, "/db/watch/alerts?period=1s", served.headers)
    try:
        wait_for(lambda: members(served) == [sse.CHUNKED_SSE], "the stream joined its group")
        credential = digest(served.tokens["acme"])  # as revoking the token does
        assert served.run(lambda: served.gateway.security.end(credential=credential)) == 1
        stream.until(lambda _: False)
        assert stream.ended
        wait_for(lambda: members(served) == [], "the stream left its group")
    finally:
        stream.close()
