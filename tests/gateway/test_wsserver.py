"""The server layer's WebSocket connection (``gateway/wsserver.py``): keep-alive, close
clock and the handshake parser, against a raw client on a loopback socket.

The server is a :class:`ServerSocket` per connection with short clocks (pings every
0.2 s); the client speaks the protocol byte by byte, so it can leave a ping or a
close frame unanswered, or send bytes right behind its request head.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from livedata.gateway.wsserver import ServerSocket, SocketSettings, _frames_only

HEAD = (
    b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Echo:
    """Echoes text; ``bye`` makes the server begin the closing handshake (1000)."""

    def __init__(self, socket: ServerSocket) -> None:
        self.socket = socket

    def on_text(self, text: str) -> None:
        if text == "bye":
            self.socket.close(1000, "bye")
        else:
            self.socket.send(text.encode())

    def on_binary(self, data: bytes) -> None:
        pass

    def on_lost(self) -> None:
        pass


class Endpoint:
    def match(self, path: str) -> tuple[str, ...] | None:
        return () if path == "/echo" else None

    async def open(
        self, socket: ServerSocket, params: tuple[str, ...], request: Request
    ) -> Echo | None:
        socket.accept()
        return Echo(socket)


@dataclass
class Served:
    port: int
    settings: SocketSettings
    connections: set[ServerSocket] = field(default_factory=set)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    settings = SocketSettings(1 << 20, 0.2, 0.2, lambda transport: None, close_timeout=0.2)
    connections: set[ServerSocket] = set()
    endpoint = Endpoint()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ServerSocket(endpoint, (), settings, connections), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    yield Served(port, settings, connections)
    for conn in list(connections):
        conn.shutdown()
    server.close()
    await server.wait_closed()


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (FIN, masked), payload under 126 bytes."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


async def connect(
    port: int, extra: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD + extra)
    response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101 ")
    return reader, writer


async def frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame: (opcode, payload)."""
    first, second = await reader.readexactly(2)
    assert not second & 0x80  # a server frame is not masked
    size = second & 0x7F
    if size == 126:
        (size,) = struct.unpack("!H", await reader.readexactly(2))
    elif size == 127:
        (size,) = struct.unpack("!Q", await reader.readexactly(8))
    return first & 0x0F, await reader.readexactly(size)


async def test_answered_pings_keep_the_connection_open(served: Served) -> None:
    """Each ping carries the server's payload; answered, more follow and the
    connection keeps serving messages."""
    reader, writer = await connect(served.port)
    for _ in range(3):
        opcode, payload = await frame(reader)
        assert (opcode, payload) == (Opcode.PING.value, served.settings.ping)
        writer.write(masked(Opcode.PONG.value, payload))
    writer.write(masked(Opcode.TEXT.value, b"still here"))
    while (got := await frame(reader))[0] == Opcode.PING.value:
        writer.write(masked(Opcode.PONG.value, got[1]))
    assert got == (Opcode.TEXT.value, b"still here")
    writer.close()


@pytest.mark.parametrize("answer", [None, b"nope"], ids=["no pong", "wrong payload"])
async def test_an_unanswered_ping_closes_with_1011(served: Served, answer: bytes | None) -> None:
    """No pong (or a pong with another payload) within the timeout: close frame 1011
    ``keepalive ping timeout``, then the server closes TCP and forgets the connection."""
    reader, writer = await connect(served.port)
    opcode, _ = await frame(reader)
    assert opcode == Opcode.PING.value
    if answer is not None:
        writer.write(masked(Opcode.PONG.value, answer))
    opcode, payload = await frame(reader)
    assert opcode == Opcode.CLOSE.value
    assert payload == struct.pack("!H", 1011) + b"keepalive ping timeout"
    assert await reader.read() == b""  # EOF: the server closed the connection
    for _ in range(100):
        if not served.connections:
            break
        await asyncio.sleep(0.01)
    assert not served.connections
    settings = served.settings
    assert len(settings.pings) == len(settings.pongs) == len(settings.closing) == 0
    writer.close()


async def test_a_peer_that_does_not_answer_the_close_frame_is_cut_off(served: Served) -> None:
    """After the server's close frame the peer has the close timeout to answer; it does
    not, so the server closes the connection."""
    reader, writer = await connect(served.port)
    writer.write(masked(Opcode.TEXT.value, b"bye"))
    while (got := await frame(reader))[0] == Opcode.PING.value:
        pass  # never answered: the close frame comes first or right after
    assert got == (Opcode.CLOSE.value, struct.pack("!H", 1000) + b"bye")
    assert await reader.read() == b""
    writer.close()


async def test_bytes_right_behind_the_request_head(served: Served) -> None:
    """A message sent in the same packet as the request head (before the 101) is
    dropped; half a frame sent that way is completed after the 101 and read in step."""
    whole = masked(Opcode.TEXT.value, b"too early")
    early = masked(Opcode.TEXT.value, b"one")
    reader, writer = await connect(served.port, whole + early[:3])
    writer.write(early[3:] + masked(Opcode.TEXT.value, b"two"))
    got = []
    while len(got) < 2:
        opcode, payload = await frame(reader)
        if opcode == Opcode.TEXT.value:
            got.append(payload)
    assert got == [b"one", b"two"]
    writer.close()


def test_the_handshake_parser_is_dropped_only_at_a_frame_boundary() -> None:
    """On the installed websockets the handshake's parser (which keeps the request) is
    replaced by the frame parser when it waits at a frame's start, and kept when it
    has read part of a frame; the replaced one parses frames as before."""
    conn = ServerProtocol()
    conn.receive_data(HEAD)
    assert isinstance(conn.events_received()[0], Request)
    assert _frames_only(conn)
    conn.receive_data(masked(Opcode.TEXT.value, b"hello"))
    (event,) = conn.events_received()
    assert isinstance(event, Frame) and event.data == b"hello"

    partial = ServerProtocol()
    partial.receive_data(HEAD + masked(Opcode.TEXT.value, b"hello")[:3])
    partial.events_received()
    assert not _frames_only(partial)
