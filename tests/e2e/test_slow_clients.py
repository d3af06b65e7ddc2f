"""Clients that stop reading, over real sockets: bounded, disconnected after the stall time.

The server runs a fast fleet (one machine at 100 Hz, ``--period 0.01``) so a
stuck client's TCP window fills within seconds, and gives up a client after 2 s
without progress (``--client-stall-seconds 2``; the default is 30 s).  The stuck
client is a raw socket with a 4 KiB receive buffer and small segments, which
sends its request and then reads nothing.  For WebSocket, Socket.IO and SSE the
test checks that the server gave it up (``livedata_stalled_clients``), closed
the connection (the client, reading again, gets to the end of the stream), and
that a healthy client beside it kept getting everything.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import orjson
import pytest
import socketio
import websockets

from tests.conftest import Server, start_demo, stop
from tests.e2e.test_live import init

FIELDS = ["speed", "engine_rpm", "brake_status", "coolant_temp", "hydraulic_pressure", "gear"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server of its own: one machine at 100 Hz, clients given up after 2 s."""
    demo = start_demo(
        tmp_path_factory.mktemp("slow-clients"),
        *("--machines", "1", "--period", "0.01", "--client-stall-seconds", "2"),
    )
    yield demo
    stop(demo)


class Stuck:
    """A raw TCP client that sends its request and then reads nothing: its window fills.

    With ``then``, it reads the response head (a WebSocket handshake) first and
    sends ``then`` (its first frames) after it.
    """

    def __init__(self, server: Server, request: bytes, then: bytes = b"") -> None:
        port = urlsplit(server.url).port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # small segments keep the server's kernel send buffer small too (it scales with them)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(request)
        if then:
            self.sock.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = self.sock.recv(1)
                assert chunk, "the server closed the connection during the handshake"
                head += chunk
            assert head.startswith(b"HTTP/1.1 101"), head
            self.sock.sendall(then)

    def read_to_end(self, timeout: float) -> bool:
        """Read what the server had sent; True if it closed the connection."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            pass
        finally:
            self.sock.close()
        return True


def upgrade(server: Server, path: str) -> bytes:
    """A WebSocket upgrade request for ``path``, authenticated as the demo's admin."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {urlsplit(server.url).netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in server.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def text_frame(text: str) -> bytes:
    """One masked WebSocket text frame, as a client sends it."""
    payload, mask = text.encode(), os.urandom(4)
    size = len(payload)
    head = (
        bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + size.to_bytes(2, "big")
    )
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def metric(server: Server, name: str) -> float:
    """A counter or gauge of the server's /metrics (labelled series summed)."""
    async with httpx.AsyncClient(headers=server.headers, timeout=10) as http:
        text = (await http.get(f"{server.url}/metrics")).text
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return sum(float(v) for v in values)


async def wait_until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.3)


async def stalled_more_than(server: Server, before: float) -> bool:
    return await metric(server, "livedata_stalled_clients_total") > before


def metric_is(server: Server, name: str, value: float) -> Callable[[], Any]:
    async def check() -> bool:
        return await metric(server, name) == value

    return check


async def test_a_websocket_client_that_stops_reading_is_closed_and_others_miss_nothing(
    server: Server,
) -> None:
    """A stuck live WebSocket is closed after the stall time; a healthy one gets every seq."""
    before = await metric(server, "livedata_stalled_clients_total")
    url = server.live_url(server.machines[0])
    seqs: list[int] = []
    missed: list[int] = []

    async def read(ws: websockets.ClientConnection) -> None:
        async for raw in ws:
            message = orjson.loads(raw)
            if message["type"] == "LIVE_DATA":
                seqs.append(message["seq"])
                missed.append(message.get("missed", 0))

    async with websockets.connect(url, additional_headers=server.headers) as healthy:
        await init(healthy, FIELDS)
        reader = asyncio.create_task(read(healthy))
        path = urlsplit(url)
        request = upgrade(server, f"{path.path}?{path.query}")
        init_frame = orjson.dumps({"type": "INIT_FIELD_LIST", "payload": FIELDS}).decode()
        stuck = await asyncio.to_thread(Stuck, server, request, text_frame(init_frame))
        await wait_until(lambda: stalled_more_than(server, before), 60, "the stuck client closed")
        await wait_until(
            metric_is(server, "livedata_ws_connections", 1), 10, "its connection ended"
        )
        at_stall = len(seqs)
        assert await asyncio.to_thread(stuck.read_to_end, 10), "the server closed the connection"
        await asyncio.sleep(1)
        reader.cancel()
    assert len(seqs) > at_stall > 100
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "the healthy client lost messages"
    assert not any(missed)


async def test_a_socketio_client_that_stops_reading_is_bounded_then_disconnected(
    server: Server,
) -> None:
    """A stuck Socket.IO client loses its oldest events, then is disconnected; a healthy one is not."""
    before = await metric(server, "livedata_stalled_clients_total")
    drops_before = await metric(server, "livedata_sio_client_drops_total")
    machine = server.machines[0]
    healthy = socketio.AsyncClient(reconnection=False)
    updates: list[dict[str, Any]] = []
    missed: list[Any] = []
    healthy.on("device-update", updates.append)
    healthy.on("missed", missed.append)
    await healthy.connect(
        server.url, headers=server.headers, transports=["websocket"], wait_timeout=10
    )
    try:
        ack = await healthy.call("subscribe-device", {"deviceId": machine, "fields": ["speed"]})
        assert ack["ok"] is True, ack
        request = upgrade(server, "/socket.io/?EIO=4&transport=websocket")
        frames = text_frame("40") + text_frame(f'42["subscribe-device","{machine}"]')
        stuck = await asyncio.to_thread(Stuck, server, request, frames)
        await wait_until(lambda: stalled_more_than(server, before), 60, "the stuck client closed")
        assert await metric(server, "livedata_sio_client_drops_total") > drops_before
        await wait_until(metric_is(server, "livedata_sio_clients", 1), 10, "its session ended")
        at_stall = len(updates)
        assert await asyncio.to_thread(stuck.read_to_end, 10), "the server closed the connection"
        await asyncio.sleep(1)
        assert len(updates) > at_stall
        assert healthy.connected and missed == []
    finally:
        await healthy.disconnect()


async def test_an_sse_client_that_stops_reading_is_given_up(server: Server) -> None:
    """A stuck SSE watch ends after the stall time and frees its stream slot."""
    before = await metric(server, "livedata_stalled_clients_total")
    tags = [f"t{i:03d}" for i in range(100)]

    async def write(http: httpx.AsyncClient) -> None:
        """Keep writing 100 tags of 250-character strings: big periods, a window full soon."""
        while True:
            now = int(time.time() * 1000)
            rows = [[tag, now, f"{tag}:" + "x" * 245] for tag in tags]
            response = await http.post(
                f"{server.url}/db/write/bulk",
                params={"timeformat": "ms"},
                json={"data": {"rows": rows}},
            )
            assert response.status_code == 200, response.text
            await asyncio.sleep(0.3)

    async with httpx.AsyncClient(headers=server.headers, timeout=10) as http:
        writer = asyncio.create_task(write(http))
        try:
            await asyncio.sleep(0.5)  # the table exists once written
            query = urlencode([("tag", t) for t in tags] + [("period", "1s")])
            lines = [
                f"GET /db/watch/bulk?{query} HTTP/1.1",
                f"Host: {urlsplit(server.url).netloc}",
                *(f"{k}: {v}" for k, v in server.headers.items()),
            ]
            request = ("\r\n".join(lines) + "\r\n\r\n").encode()
            stuck = await asyncio.to_thread(Stuck, server, request)

            streams = "livedata_watch_streams"
            await wait_until(metric_is(server, streams, 1), 10, "the watch stream open")
            await wait_until(lambda: stalled_more_than(server, before), 60, "the stream given up")
            await wait_until(metric_is(server, streams, 0), 10, "its stream slot freed")
            assert await asyncio.to_thread(stuck.read_to_end, 10), "the server closed the stream"
        finally:
            writer.cancel()
