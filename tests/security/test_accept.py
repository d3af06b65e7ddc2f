"""livedata's own accept loop over real loopback sockets, on uvloop and asyncio: the server
keeps answering while connections flood in, refuses cleanly at its cap, and stops
accepting when uvicorn shuts it down.

Each test runs :class:`~livedata.gateway.server.LimitedServer` with a two-route app in a
thread of this process, on an event loop of the kind under test.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from livedata.gateway.server import ACCEPT_BATCH, LimitedServer, event_loop_factory, uvicorn_config
from livedata.settings import Settings

LOOPS = ["uvloop", "asyncio"]


@dataclass
class Served:
    """A running server: its URL and address, and the requests held open by ``/hold``."""

    url: str
    address: tuple[str, int]
    server: LimitedServer
    loop: asyncio.AbstractEventLoop
    held: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def let_go(self) -> None:
        """Let every held request answer."""
        self.loop.call_soon_threadsafe(self.release.set)


@contextmanager
def serving(event_loop: str, max_connections: int) -> Iterator[Served]:
    """LimitedServer on a free loopback port, on ``event_loop``, in a thread; stopped after."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(ACCEPT_BATCH)
    loop = event_loop_factory(event_loop)()
    served: Served

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def hold(_request: Request) -> JSONResponse:
        served.held += 1
        await served.release.wait()
        return JSONResponse({"held": True})

    app = Starlette(routes=[Route("/healthz", healthz), Route("/hold", hold)])
    settings = Settings(max_connections=max_connections, event_loop=event_loop)
    server = LimitedServer(uvicorn_config(app, settings))
    port = sock.getsockname()[1]
    served = Served(f"http://127.0.0.1:{port}", ("127.0.0.1", port), server, loop)
    thread = threading.Thread(
        target=loop.run_until_complete, args=(server.serve(sockets=[sock]),), daemon=True
    )
    thread.start()
    try:
        _wait(lambda: server.started)
        yield served
    finally:
        server.should_exit = True
        served.let_go()
        thread.join(30)
        loop.close()
        sock.close()


def _wait(condition: object) -> None:
    """Wait until ``condition()`` holds (at most about 30 s, then fail)."""
    stop = threading.Event()
    for _ in range(3_000):
        if condition():  # type: ignore[operator]
            return
        stop.wait(0.01)
    raise AssertionError("the condition never held")


@pytest.mark.parametrize("event_loop", LOOPS)
def test_healthz_answers_while_a_flood_of_connections_arrives(event_loop: str) -> None:
    """1,000 idle connects against a cap of 200: every connect succeeds, /healthz answers
    200 between them, the oldest idle ones give way and no connection is refused."""
    with serving(event_loop, 200) as served, ExitStack() as stack:
        flood: list[socket.socket] = []

        def connect_all() -> None:
            for _ in range(1_000):
                flood.append(stack.enter_context(socket.create_connection(served.address)))

        flooder = threading.Thread(target=connect_all)
        flooder.start()
        statuses = []
        # a new connection per probe: an idle keep-alive one may be the longest idle, and
        # that one gives way at the cap by design
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:

            def probe() -> int:
                try:
                    return client.get(f"{served.url}/healthz").status_code
                except httpx.ReadError:
                    # on a loaded machine 200 flood connects can land between the probe's
                    # connect and its request: then it is the oldest idle one and gives
                    # way, as a device's would; its retry must be answered
                    return client.get(f"{served.url}/healthz").status_code

            while flooder.is_alive():
                statuses.append(probe())
            flooder.join()
            statuses.append(probe())
        listener = served.server.servers[0]
        _wait(lambda: listener.accepted >= 1_000)
        assert len(flood) == 1_000
        assert set(statuses) == {200}
        assert b"503" not in _first_bytes(served.address)


@pytest.mark.parametrize("event_loop", LOOPS)
def test_cap_refuses_a_newcomer_cleanly_when_every_connection_is_busy(event_loop: str) -> None:
    """With every place taken by requests in progress, a newcomer gets 503 in the error shape
    and is closed; the held requests then complete and the server serves again."""
    cap = 20
    with serving(event_loop, cap) as served:
        results: list[int] = []

        def one() -> None:
            with httpx.Client(timeout=30) as client:
                results.append(client.get(f"{served.url}/hold").status_code)

        holders = [threading.Thread(target=one) for _ in range(cap)]
        for thread in holders:
            thread.start()
        _wait(lambda: served.held == cap)
        answer = _first_bytes(served.address)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        assert b'"code":"unavailable"' in answer
        served.let_go()
        for thread in holders:
            thread.join(30)
        assert results == [200] * cap
        assert httpx.get(f"{served.url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("event_loop", LOOPS)
def test_clients_closing_together_are_all_closed_and_leave_the_gate(event_loop: str) -> None:
    """600 idle clients close at once: the server closes every connection (a batch per loop
    turn), the gate is empty again and /healthz answers."""
    with serving(event_loop, 1_000) as served:
        gate = served.server.config.http_protocol_class.gate
        flood = [socket.create_connection(served.address) for _ in range(600)]
        _wait(lambda: len(gate) == 600)
        for sock in flood:
            sock.close()
        _wait(lambda: len(gate) == 0)
        assert httpx.get(f"{served.url}/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("event_loop", LOOPS)
def test_shutdown_stops_accepting(event_loop: str) -> None:
    """uvicorn's graceful shutdown stops the listener and closes the socket: a connect after
    it is refused."""
    with serving(event_loop, 50) as served:
        assert httpx.get(f"{served.url}/healthz", timeout=10).status_code == 200
        listener = served.server.servers[0]
        served.server.should_exit = True
        _wait(lambda: listener.sock.fileno() == -1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(served.address, timeout=5)


_EMFILE_CHILD = """
import logging, os, resource, socket, sys, time
import httpx
sys.path.insert(0, sys.argv[1])
from tests.security.test_accept import serving
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s %(message)s")
with serving(sys.argv[2], 10_000) as served:
    flood = [socket.socket() for _ in range(60)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    # the server runs out of descriptors (10 left) long before its connection cap
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 11, hard))
    for sock in flood:
        sock.connect(served.address)
    time.sleep(2.0)
    for sock in flood:
        sock.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print("healthz", httpx.get(f"{served.url}/healthz", timeout=10).status_code, flush=True)
"""


@pytest.mark.parametrize("event_loop", LOOPS)
def test_out_of_descriptors_pauses_accepting_and_logs_once(event_loop: str) -> None:
    """A server out of file descriptors logs accept() failing once (with a count), does not
    spin, and serves again once descriptors are free."""
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", _EMFILE_CHILD, root, event_loop],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if "accept() failed" in line]
    assert len(lines) == 1, done.stdout + done.stderr
    assert "healthz 200" in done.stdout, done.stdout + done.stderr


def _first_bytes(address: tuple[str, int]) -> bytes:
    """Connect, and read what the server sends on its own before closing (at most 1 s)."""
    with socket.create_connection(address) as sock:
        sock.settimeout(1.0)
        try:
            return sock.recv(4096)
        except TimeoutError:
            return b""
