"""Limits of the HTTP server against strangers: bodies, heads, slow clients, connection floods.

One demo server with small limits (40 connections, 1 s head and body timeouts) shared
by the module; every client is on loopback.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.sync.client import connect

from tests.conftest import Server, start_demo, stop
from tests.security.abuse import address
from tests.security.servers import env

MAX_CONNECTIONS = 40
RSS_BOUND = 400 * 2**20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    limits = {
        "LIVEDATA_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "LIVEDATA_HEADER_TIMEOUT": "1",
        "LIVEDATA_BODY_TIMEOUT": "1",
    }
    with env(**limits):
        demo = start_demo(tmp_path_factory.mktemp("limits"), "--machines", "1")
    yield demo
    stop(demo)


def _read_response(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def _rss(server: Server) -> int:
    return int(psutil.Process(server.process.pid).memory_info().rss)


def _stream(server: Server, head: bytes, piece: bytes, total: int) -> tuple[int, bytes]:
    """Send ``head`` then ``piece`` until ``total`` bytes or the server closes; (sent, answer)."""
    sock = socket.create_connection(address(server))
    sent = 0
    try:
        sock.sendall(head)
        while sent < total:
            sock.sendall(piece)
            sent += len(piece)
    except (ConnectionResetError, BrokenPipeError):
        pass
    response = _read_response(sock)
    sock.close()
    return sent, response


def test_chunked_body_is_refused_while_streaming(server: Server) -> None:
    """A chunked body without Content-Length gets 413 at the cap, not after buffering it all."""
    head = (
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
    sent, response = _stream(server, head, chunk, 256 * 2**20)
    assert sent < 256 * 2**20
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"code":"too_large"' in response
    assert _rss(server) < RSS_BOUND


@pytest.mark.parametrize("path", ["/api/auth/login", "/api/resources/demo/groups", "/socket.io/"])
def test_declared_body_over_cap_is_refused_on_every_route(server: Server, path: str) -> None:
    """A Content-Length over 8 MiB gets 413 on public, protected and Socket.IO routes alike."""
    sock = socket.create_connection(address(server))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n\r\n".encode())
    response = _read_response(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"error"' in response


def test_huge_header_is_refused(server: Server) -> None:
    """An 8 MB header gets 431 and the connection is closed before it is all read."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    sent, response = _stream(server, head, b"a" * 65536, 8 * 2**20)
    assert sent < 8 * 2**20
    assert response.startswith(b"HTTP/1.1 431"), response[:200]
    assert b'"code":"header_too_large"' in response


def test_slow_request_head_is_timed_out(server: Server) -> None:
    """A head that does not complete within header_timeout gets 408 and is closed."""
    sock = socket.create_connection(address(server))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    response = _read_response(sock)
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert _closed(sock)
    sock.close()


def _responses(sock: socket.socket, count: int) -> list[bytes]:
    """Read ``count`` complete responses (with Content-Length) from ``sock``."""
    sock.settimeout(10)
    data, out = b"", []
    while len(out) < count:
        if b"\r\n\r\n" in data:
            head, rest = data.split(b"\r\n\r\n", 1)
            length = int(
                next(
                    h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")
                ).split(b":")[1]
            )
            if len(rest) >= length:
                out.append(head + b"\r\n\r\n" + rest[:length])
                data = rest[length:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(out)} responses"
        data += chunk
    return out


def test_keep_alive_connection_serves_requests_in_a_row(server: Server) -> None:
    """One connection: a GET, a POST with a body, two pipelined GETs, then a next head
    that stalls gets 408 (its clock starts at its first byte)."""
    sock = socket.create_connection(address(server))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _responses(sock, 1)[0].startswith(b"HTTP/1.1 200")
    body = b'{"username": "nobody", "password": "wrong"}'
    sock.sendall(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert _responses(sock, 1)[0].startswith(b"HTTP/1.1 401")
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
    assert [r[:12] for r in _responses(sock, 2)] == [b"HTTP/1.1 200"] * 2
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert _read_response(sock).startswith(b"HTTP/1.1 408")
    sock.close()


def test_idle_keep_alive_connection_is_closed(server: Server) -> None:
    """A keep-alive connection with no next request is closed by the server after
    keep_alive_timeout (the head clock does not run between requests)."""
    sock = socket.create_connection(address(server))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _responses(sock, 1)[0].startswith(b"HTTP/1.1 200")
    sock.settimeout(30)
    assert sock.recv(65536) == b""  # EOF (a TimeoutError if it were kept open)
    sock.close()


def test_silent_connection_is_closed(server: Server) -> None:
    """A connection that sends nothing is closed after header_timeout."""
    sock = socket.create_connection(address(server))
    assert _read_response(sock) == b""
    sock.close()


def test_body_that_stops_gets_408(server: Server) -> None:
    """A body that stops arriving for body_timeout gets 408."""
    sock = socket.create_connection(address(server))
    sock.sendall(
        b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    response = _read_response(sock)
    sock.close()
    assert response.startswith(b"HTTP/1.1 408"), response[:200]
    assert b'"code":"timeout"' in response


def test_idle_flood_does_not_lock_out_healthz(server: Server) -> None:
    """Three times the connection limit of idle sockets: /healthz still answers each time."""
    flood = [socket.create_connection(address(server)) for _ in range(3 * MAX_CONNECTIONS)]
    try:
        for _ in range(5):
            assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
            flood.append(socket.create_connection(address(server)))
    finally:
        for sock in flood:
            sock.close()


def test_busy_connections_are_kept_and_the_newcomer_refused(server: Server) -> None:
    """With every place taken by live WebSockets, a newcomer gets 503; the live ones stay."""
    url = server.live_url(server.machines[0], "client_raw_data")
    headers = server.headers
    with ExitStack() as stack:
        sockets = [
            stack.enter_context(connect(url, additional_headers=headers, open_timeout=10))
            for _ in range(MAX_CONNECTIONS)
        ]
        time.sleep(0.2)
        sock = socket.create_connection(address(server))
        response = _read_response(sock)
        sock.close()
        assert response.startswith(b"HTTP/1.1 503"), response[:200]
        sockets[0].send('{"type":"INIT_FIELD_LIST","payload":["cpu_usage"]}')
        assert "LIVE_DATA" in str(sockets[0].recv(timeout=10))
    time.sleep(0.5)
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert "connection limit" in server.log()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("GET", "/no/such/page", None, 404, "not_found"),
        ("PUT", "/healthz", None, 405, "method_not_allowed"),
        ("POST", "/api/resources/demo/groups", b"{not json", 400, "bad_request"),
        ("POST", "/api/resources/demo/groups", b'{"name": 1}', 400, "bad_request"),
    ],
)
def test_every_error_has_the_documented_shape(
    server: Server, method: str, path: str, body: bytes | None, status: int, code: str
) -> None:
    """FastAPI's own 404, 405 and body errors answer {"error": {"code", "message"}}."""
    response = httpx.request(
        method,
        f"{server.url}{path}",
        content=body,
        headers={**server.headers, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == status
    assert set(response.json()) == {"error"}
    assert response.json()["error"]["code"] == code
    assert isinstance(response.json()["error"]["message"], str)


def test_server_log_has_no_tracebacks(server: Server) -> None:
    """All of the above leaves no traceback in the server's log."""
    assert "Traceback" not in Path(server.log_path).read_text()
