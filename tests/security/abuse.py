"""Hostile clients and the monitors that watch a server under them (loopback only).

Used by ``tests/security/test_abuse.py`` (bounded sizes, functional assertions) and
``bench/bench_abuse.py`` (full sizes, figures).  Every attack talks to a livedata
server on 127.0.0.1 and closes what it opens; child processes are ended by PID.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
import psutil
from websockets.sync.client import connect

from tests.conftest import Server


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return ("127.0.0.1" if host == "localhost" else host, int(port))


# --------------------------------------------------------------------------- monitors


@dataclass
class Monitor:
    """/healthz probed every ``period`` s, a live client counting messages, the server's RSS."""

    server: Server
    chassis: str
    period: float = 0.05
    health_ms: list[float] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)
    live_times: list[float] = field(default_factory=list)
    live_errors: list[str] = field(default_factory=list)
    rss_max: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Monitor:
        for target in (self._health, self._live, self._rss):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        time.sleep(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def mark(self) -> tuple[int, int, float]:
        """(health probes, live messages, now) so far, to cut out one phase."""
        return len(self.health_ms), len(self.live_times), time.monotonic()

    def _health(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    status = client.get(f"{self.server.url}/healthz").status_code
                    if status != 200:
                        self.health_failures.append(f"HTTP {status}")
                except httpx.HTTPError as exc:
                    self.health_failures.append(f"{type(exc).__name__}: {exc}")
                self.health_ms.append((time.monotonic() - start) * 1000)
                self._stop.wait(self.period)

    def _live(self) -> None:
        url = self.server.live_url(self.chassis, "client_raw_data")
        try:
            with connect(url, additional_headers=self.server.headers, open_timeout=10) as ws:
                ws.send('{"type":"INIT_FIELD_LIST","payload":["cpu_usage"]}')
                while not self._stop.is_set():
                    try:
                        message = ws.recv(timeout=0.5)
                    except TimeoutError:
                        continue
                    if "LIVE_DATA" in str(message):
                        self.live_times.append(time.monotonic())
        except Exception as exc:  # recorded; the test asserts there is none
            self.live_errors.append(f"{type(exc).__name__}: {exc}")

    def _rss(self) -> None:
        process = psutil.Process(self.server.process.pid)
        while not self._stop.is_set():
            self.rss_max = max(self.rss_max, process.memory_info().rss)
            self._stop.wait(0.1)

    def phase(self, since: tuple[int, int, float]) -> dict[str, float]:
        """Figures of the probes and live messages after ``since`` (from :meth:`mark`)."""
        health = sorted(self.health_ms[since[0] :]) or [0.0]
        live = self.live_times[since[1] :]
        span = max(1e-9, time.monotonic() - since[2])
        edges = [since[2], *live, time.monotonic()]
        return {
            "health_probes": len(health),
            "health_p50_ms": health[len(health) // 2],
            "health_p99_ms": health[len(health) * 99 // 100],
            "health_max_ms": health[-1],
            "live_per_s": len(live) / span,
            "live_max_gap_s": max(b - a for a, b in itertools.pairwise(edges)),
        }


# --------------------------------------------------------------------------- attacks


def chunked_body(server: Server, total: int, path: str = "/api/auth/login") -> tuple[int, bytes]:
    """Stream a chunked body of up to ``total`` bytes; (bytes sent, the answer's first line)."""
    sock = socket.create_connection(address(server))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
    sent = 0
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += 65536
    except OSError:
        pass
    sock.settimeout(10)
    try:
        answer = sock.recv(4096)
    except OSError:
        answer = b""
    sock.close()
    return sent, answer.split(b"\r\n", 1)[0]


_FLOOD_CHILD = """
import socket, sys, time
host, port, count, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
socks, failed = [], 0
for _ in range(count):
    try:
        socks.append(socket.create_connection((host, port), timeout=5))
    except OSError:
        failed += 1
print(len(socks), failed, flush=True)
time.sleep(hold)
"""


def idle_flood(server: Server, total: int, hold: float, per_process: int = 12_500) -> list[str]:
    """Open ``total`` idle connections from child processes (each under its fd limit) and
    hold them ``hold`` s; each child's "opened failed" line.  Children are ended by PID."""
    host, port = address(server)
    children = []
    left = total
    while left > 0:
        count = min(per_process, left)
        left -= count
        children.append(
            subprocess.Popen(
                [sys.executable, "-c", _FLOOD_CHILD, host, str(port), str(count), str(hold)],
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    lines = []
    try:
        for child in children:
            assert child.stdout is not None
            lines.append(child.stdout.readline().strip())
        for child in children:
            child.wait(hold + 60)
    finally:
        for child in children:
            if child.poll() is None:
                os.kill(child.pid, 9)
                child.wait()
    return lines


def slow_headers(server: Server, count: int, seconds: float) -> int:
    """``count`` connections sending one header byte every 0.5 s; how many the server closed."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(address(server))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.setblocking(False)
        socks.append(sock)
    closed: set[int] = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(closed) < count:
        for n, sock in enumerate(socks):
            if n in closed:
                continue
            try:
                sock.send(b"a")
                if sock.recv(4096) == b"":
                    closed.add(n)
            except BlockingIOError:
                pass
            except OSError:
                closed.add(n)
        time.sleep(0.5)
    for sock in socks:
        sock.close()
    return len(closed)


def lockout_attempts(server: Server, username: str, addresses: int, tries: int) -> list[int]:
    """Wrong passwords for ``username`` from 127.0.0.2 … (``addresses`` of them); statuses."""
    statuses = []
    for n in range(addresses):
        transport = httpx.HTTPTransport(local_address=f"127.0.0.{n + 2}")
        with httpx.Client(base_url=server.url, transport=transport, timeout=30) as client:
            for _ in range(tries):
                body = {"username": username, "password": f"wrong-{random.random()}"}
                statuses.append(client.post("/api/auth/login", json=body).status_code)
    return statuses


def big_dbc(signals: int) -> str:
    """A valid DBC with ``signals`` 8-bit signals, 8 per message."""
    lines = ['VERSION ""', "", "NS_ :", "", "BS_:", "", "BU_: ECU", ""]
    for m in range((signals + 7) // 8):
        lines.append(f"BO_ {m + 1} Msg{m}: 8 ECU")
        for s in range(min(8, signals - m * 8)):
            lines.append(f' SG_ sig_{m}_{s} : {s * 8}|8@1+ (0.5,0) [0|127.5] "unit" Vector__XXX')
        lines.append("")
    return "\n".join(lines) + "\n"


def fetch_concurrently(server: Server, path: str, clients: int) -> list[int]:
    """``clients`` simultaneous GETs of ``path``; their statuses."""
    statuses: list[int] = []

    def one() -> None:
        with httpx.Client(timeout=120, headers=server.headers) as client:
            statuses.append(client.get(f"{server.url}{path}").status_code)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    return statuses
