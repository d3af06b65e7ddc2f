"""One stuck client among many healthy ones: their latency, the server's memory, when it is closed.

One run:

1. start ``livedata demo`` as a subprocess on loopback in a temporary data
   directory with a 10 Hz fleet (``--period 0.1``), a short stall time
   (``--client-stall-seconds``, default 10 s here, 30 s by default in the
   server) and a 30 s live history (``--live-history-seconds``; 180 s by
   default, which at this load keeps growing the server's memory by about
   0.6 MB/s for its first 3 minutes and would hide what the stuck client
   does), and wait until the start-up history is ingested;
2. connect the healthy clients (default 500: 10 per machine on 50 machines),
   WebSocket clients in worker processes that read everything, each asking for
   the demo's 3-field "Drive" group; wait until the live history is full, then
   measure them (**baseline**);
3. connect **one stuck client**: a raw socket with a 4 KiB receive buffer and
   536-byte segments that does the WebSocket handshake, asks for every
   ``vehicle_can`` field of one machine and then never reads again, so its TCP
   window fills; measure the healthy clients from then until the server closes
   the stuck client -- for no progress (``livedata_stalled_clients``) or by the
   WebSocket keepalive (pings unanswered for 20 + 20 s), whichever comes first
   -- the **stuck** window, and for a while after (**after**).

Latency is receipt time minus the record's ``ts`` (the wall-clock time of the
fleet tick that made it), as in ``bench_live.py``.  Every second the script
samples the server's RSS, the bytes the server's kernel holds for the stuck
client (``ss`` Send-Q: it grows until the window is full, then stays), and the
server's counters.  At the end the stuck client reads again and must reach the
end of the stream: the server closed it.

All requests carry an admin API token (``LIVEDATA_ADMIN_TOKEN``, made up per
run); the server allows that one user 2,000 live connections
(``LIVEDATA_LIVE_PER_USER``).  Run: ``python bench/bench_slow_client.py``.
Prints figures only; asserts nothing.  Every process it starts is stopped and
the temporary directory removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from array import array
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil
import websockets

from bench_live import ServerProcess, WorkerProcs, mib, percentile, temp_dir

ORG = "demo"
MSG_TYPE = "vehicle_can"
FIELDS = ("speed", "engine_rpm", "brake_status")  # the demo's "Drive" group
CONNECT_TIMEOUT_S = 90.0


# -- healthy clients (worker processes) -------------------------------------------------------


class Worker:
    """Healthy live clients on one asyncio loop; latencies are kept per window label."""

    def __init__(self, conn: Connection, ws_base: str, headers: dict[str, str], deflate: bool):
        self.conn = conn
        self.ws_base = ws_base
        self.headers = headers
        self.compression = "deflate" if deflate else None
        self.label = "warm-up"
        self.latencies: dict[str, array] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.ready = 0
        self.retries = 0
        self.failed: list[str] = []

    def count(self, name: str, n: int = 1) -> None:
        bucket = self.counts.setdefault(self.label, {"gaps": 0, "missed": 0, "lost": 0})
        bucket[name] += n

    async def run(self, specs: list[str]) -> None:
        loop = asyncio.get_running_loop()
        tasks = [asyncio.create_task(self.client(chassis)) for chassis in specs]
        while True:
            command, arg = await loop.run_in_executor(None, self.conn.recv)
            if command == "quit":
                break
            if command == "ready":
                reply: Any = {
                    "ready": self.ready,
                    "retries": self.retries,
                    "failed": len(self.failed),
                    "error": self.failed[0] if self.failed else None,
                }
            elif command == "label":
                self.label = arg
                reply = None
            elif command == "collect":
                reply = {
                    "latencies": {k: v.tobytes() for k, v in self.latencies.items()},
                    "counts": self.counts,
                }
            else:
                reply = f"unknown command {command!r}"
            self.conn.send(reply)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def client(self, chassis: str) -> None:
        """One healthy client; a refused handshake (HTTP 5xx) is retried, as browsers do."""
        for attempt in range(5):
            try:
                await self.watch(chassis)
                return
            except websockets.InvalidStatus as exc:
                if attempt == 4 or exc.response.status_code < 500:
                    self.failed.append(f"{type(exc).__name__}: {exc}")
                    return
                self.retries += 1
                await asyncio.sleep(1 + attempt)

    async def watch(self, chassis: str) -> None:
        url = (
            f"{self.ws_base}/api/resources/{ORG}/_common/datasets/{chassis}/live?msgType={MSG_TYPE}"
        )
        first = True
        try:
            async with websockets.connect(
                url,
                additional_headers=self.headers,
                compression=self.compression,
                open_timeout=CONNECT_TIMEOUT_S,
                ping_interval=None,
                max_queue=None,
            ) as ws:
                await ws.send(orjson.dumps({"type": "INIT_FIELD_LIST", "payload": FIELDS}).decode())
                last_seq = None
                async for raw in ws:
                    now_ms = time.time() * 1000.0
                    message = orjson.loads(raw)
                    if message.get("type") != "LIVE_DATA":
                        continue
                    if first:
                        first = False
                        self.ready += 1
                    self.latencies.setdefault(self.label, array("d")).append(now_ms - message["ts"])
                    seq = message["seq"]
                    if last_seq is not None and seq > last_seq + 1:
                        self.count("gaps", seq - last_seq - 1)
                    if message.get("missed"):
                        self.count("missed", message["missed"])
                    last_seq = seq
        except (asyncio.CancelledError, websockets.InvalidStatus):
            raise
        except Exception as exc:
            if first:
                self.failed.append(f"{type(exc).__name__}: {exc}")
                return
        self.count("lost")


def worker_main(
    conn: Connection, ws_base: str, headers: dict[str, str], deflate: bool, specs: list[str]
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us with "quit"
    asyncio.run(Worker(conn, ws_base, headers, deflate).run(specs))


class Clients(WorkerProcs):
    """The healthy clients' worker processes, seen from the parent."""

    def __init__(
        self, procs: int, ws_base: str, headers: dict[str, str], deflate: bool, specs: list[str]
    ) -> None:
        super().__init__(
            worker_main, [(ws_base, headers, deflate, specs[i::procs]) for i in range(procs)]
        )

    def call(self, command: str, arg: Any = None, timeout: float = 60) -> list[Any]:
        return self._call(command, [arg] * len(self.conns), timeout)

    def wait_ready(self, total: int) -> tuple[int, int, float]:
        """Wait until every client got its first message or failed: (ready, retries, seconds)."""
        started = time.monotonic()
        while time.monotonic() - started < CONNECT_TIMEOUT_S + 30:
            replies = self.call("ready")
            ready = sum(r["ready"] for r in replies)
            failed = sum(r["failed"] for r in replies)
            if ready + failed >= total:
                if failed:
                    error = next(r["error"] for r in replies if r["error"])
                    print(f"  {failed} clients failed to connect, e.g. {error}")
                retries = sum(r["retries"] for r in replies)
                return ready, retries, time.monotonic() - started
            time.sleep(0.5)
        raise TimeoutError("the healthy clients did not all connect")

    def label(self, name: str) -> None:
        self.call("label", name)

    def collect(self) -> tuple[dict[str, list[float]], dict[str, dict[str, int]]]:
        latencies: dict[str, array] = {}
        counts: dict[str, dict[str, int]] = {}
        for reply in self.call("collect", timeout=120):
            for label, raw in reply["latencies"].items():
                latencies.setdefault(label, array("d")).frombytes(raw)
            for label, bucket in reply["counts"].items():
                into = counts.setdefault(label, {"gaps": 0, "missed": 0, "lost": 0})
                for k, v in bucket.items():
                    into[k] += v
        return {k: sorted(v) for k, v in latencies.items()}, counts


# -- the stuck client -----------------------------------------------------------------------


class StuckClient:
    """A raw WebSocket client that does the handshake, subscribes, then never reads."""

    def __init__(self, port: int, token: str, chassis: str, fields: list[str]) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # small segments keep the server's kernel send buffer small too (it scales with them)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        self.sock.connect(("127.0.0.1", port))
        self.local_port = self.sock.getsockname()[1]
        key = base64.b64encode(os.urandom(16)).decode()
        path = f"/api/resources/{ORG}/_common/datasets/{chassis}/live?msgType={MSG_TYPE}"
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.sock.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise RuntimeError("the server closed the stuck client during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head.decode(errors='replace')[:200]}")
        payload = orjson.dumps({"type": "INIT_FIELD_LIST", "payload": fields})
        mask = os.urandom(4)
        frame = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask
        self.sock.sendall(frame + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        # from here on: nothing is read

    def read_to_end(self, timeout: float) -> tuple[int, bool]:
        """Read what is there; (bytes, True if the server closed the connection)."""
        total = 0
        self.sock.settimeout(timeout)
        try:
            while chunk := self.sock.recv(65536):
                total += len(chunk)
        except TimeoutError:
            return total, False
        except ConnectionResetError:
            pass
        return total, True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def send_q(server_port: int, client_port: int) -> int | None:
    """Bytes the server's kernel holds for the connection to ``client_port`` (``ss``)."""
    if shutil.which("ss") is None:
        return None
    out = subprocess.run(
        [
            "ss",
            "-tnH",
            "state",
            "established",
            f"( sport = :{server_port} and dport = :{client_port} )",
        ],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.split()]
    return int(rows[0][1]) if rows else None


# -- the server -----------------------------------------------------------------------------


class Server(ServerProcess):
    """``livedata demo`` as a subprocess, its output in ``tmp``."""

    def __init__(
        self, tmp: Path, machines: int, period: float, stall: float, history: float, token: str
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "livedata",
            "demo",
            "--port",
            "0",
            "--data-dir",
            str(tmp / "data"),
            "--machines",
            str(machines),
            "--period",
            str(period),
            "--client-stall-seconds",
            str(stall),
            "--live-history-seconds",
            str(history),
            "--log-level",
            "info",
        ]
        env = {
            **os.environ,
            "LIVEDATA_ADMIN_TOKEN": token,
            "LIVEDATA_LIVE_PER_USER": "2000",
            "PYTHONUNBUFFERED": "1",
        }
        headers = {"Authorization": f"Bearer {token}"}
        super().__init__(cmd, tmp, env=env, headers=headers, timeout=30)
        self.port = urlsplit(self.url).port or 80

    def counters(self) -> dict[str, float]:
        return self.metrics(
            (
                "stalled_clients_total",
                "drops_total",
                "deliveries_total",
                "ws_connections",
                "published_total",
            )
        )

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)


# -- measurement ----------------------------------------------------------------------------


class Sampler:
    """One sample a second: server RSS, the stuck client's Send-Q, counters."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.t0 = time.monotonic()
        self.rows: list[tuple[float, str, int, int | None, float, float]] = []
        self.stuck_port: int | None = None
        self.window_rss: dict[str, list[int]] = {}
        self.window_cpu: dict[str, tuple[float, float]] = {}

    def sample(self, label: str) -> dict[str, float]:
        rss = self.server.rss()
        counters = self.server.counters()
        q = send_q(self.server.port, self.stuck_port) if self.stuck_port else None
        t = time.monotonic() - self.t0
        self.rows.append(
            (t, label, rss, q, counters["stalled_clients_total"], counters["drops_total"])
        )
        self.window_rss.setdefault(label, []).append(rss)
        return counters

    def run_for(self, label: str, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample(label)
            time.sleep(max(0.0, min(1.0, end - time.monotonic())))


def run(args: argparse.Namespace) -> None:
    token = "ld_bench_" + secrets.token_urlsafe(24)
    print(
        f"bench_slow_client: {args.clients} healthy clients on {args.machines} machines at "
        f"{1 / args.period:g} Hz, 1 stuck client, stall time {args.stall:g} s, live history "
        f"{args.history:g} s, "
        f"compression={'deflate' if args.deflate else 'none'}, {args.client_procs} client "
        f"processes, {psutil.cpu_count()} CPUs shared by everything; load average before "
        f"{os.getloadavg()[0]:.1f}"
    )
    t_start = time.monotonic()
    with temp_dir("livedata-bench-slow-") as tmp:
        server = Server(tmp, args.machines, args.period, args.stall, args.history, token)
        clients: Clients | None = None
        stuck: StuckClient | None = None
        try:
            settled = server.wait_settled()
            print(
                f"server pid {server.proc.pid} at {server.url}; history ingested in {settled:.1f} s"
            )
            machines = [f"WL-{m:04d}" for m in range(1, args.machines + 1)]
            fields = [
                f["name"]
                for m in orjson.loads(server.get(f"/api/resources/{ORG}/machines"))["machines"]
                if m["chassisId"] == machines[0]
                for f in m["msgTypes"][MSG_TYPE]["fields"]
            ]
            specs = [machines[i % len(machines)] for i in range(args.clients)]
            headers = {"Authorization": f"Bearer {token}"}
            clients = live = Clients(
                args.client_procs, server.ws_base, headers, args.deflate, specs
            )
            ready, retries, took = clients.wait_ready(len(specs))
            print(
                f"{ready} healthy clients connected in {took:.1f} s "
                f"({retries} handshakes refused with HTTP 5xx and retried)"
            )
            sampler = Sampler(server)
            # until the live history is full: from then on the server's memory is steady
            sampler.run_for("warm-up", args.history + 5)

            windows: list[
                tuple[str, float, float, float]
            ] = []  # label, seconds, server CPU, clients CPU

            def window(label: str, body: Any) -> None:
                live.label(label)
                cpu0, ccpu0, w0 = server.cpu_seconds(), live.cpu_seconds(), time.monotonic()
                body()
                windows.append(
                    (
                        label,
                        time.monotonic() - w0,
                        server.cpu_seconds() - cpu0,
                        live.cpu_seconds() - ccpu0,
                    )
                )

            window("baseline", lambda: sampler.run_for("baseline", args.baseline))

            before = server.counters()
            events: dict[str, float] = {}

            def stuck_phase() -> None:
                nonlocal stuck
                stuck = StuckClient(server.port, token, machines[0], fields)
                sampler.stuck_port = stuck.local_port
                events["connected"] = time.monotonic()
                deadline = time.monotonic() + args.max_stuck
                while time.monotonic() < deadline:
                    counters = sampler.sample("stuck")
                    stalled = counters["stalled_clients_total"] > before["stalled_clients_total"]
                    if stalled or counters["ws_connections"] <= before["ws_connections"]:
                        # given up for no progress, or its connection ended otherwise
                        # (the WebSocket keepalive: pings unanswered for 20 + 20 s)
                        events["closed"] = time.monotonic()
                        events["by_stall"] = float(stalled)
                        return
                    time.sleep(1.0)

            window("stuck", stuck_phase)
            window("after", lambda: sampler.run_for("after", args.after))
            assert stuck is not None
            read, closed = stuck.read_to_end(10)
            latencies, counts = clients.collect()
        except BaseException:
            with contextlib.suppress(Exception):
                print(f"server output:\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            if stuck is not None:
                stuck.close()
            if clients is not None:
                clients.close()
            server.stop()

    # -- report --
    print()
    connected = events["connected"] - sampler.t0
    print(f"stuck client: {len(fields)} fields of {machines[0]} at {1 / args.period:g} Hz")
    queued = [(t, q) for t, label, _, q, _, _ in sampler.rows if q is not None]
    if queued:
        top = max(q for _, q in queued)
        full = next(t for t, q in queued if q >= 0.95 * top)
        print(
            f"  the server's kernel held up to {top:,} bytes for it (ss Send-Q), reached "
            f"{full - connected:.0f} s after it connected: its window was full from then on"
        )
    if "closed" in events:
        how = (
            f"for no progress (stall time {args.stall:g} s)"
            if events["by_stall"]
            else "by the WebSocket keepalive (its pings unanswered for 20 + 20 s)"
        )
        print(
            f"  closed by the server {how} {events['closed'] - events['connected']:.0f} s after "
            f"it connected; reading again it got {read:,} more bytes and "
            f"{'then the end of the stream' if closed else 'NO end of stream'}"
        )
    else:
        print(f"  NOT closed within {args.max_stuck:g} s")
    print()
    cols = ["baseline", "stuck", "after"]
    cpu = {label: (secs, s_cpu, c_cpu) for label, secs, s_cpu, c_cpu in windows}
    rows: list[tuple[str, list[str]]] = [
        ("window", [f"{cpu[c][0]:.0f} s" for c in cols]),
        ("deliveries (healthy)", [f"{len(latencies.get(c, [])):,}" for c in cols]),
        ("deliveries/s", [f"{len(latencies.get(c, [])) / cpu[c][0]:,.0f}" for c in cols]),
        ("latency p50", [f"{percentile(latencies.get(c, []), 0.50):.0f} ms" for c in cols]),
        ("latency p99", [f"{percentile(latencies.get(c, []), 0.99):.0f} ms" for c in cols]),
        ("latency max", [f"{(latencies.get(c) or [float('nan')])[-1]:.0f} ms" for c in cols]),
        (
            "seq gaps / missed (healthy)",
            [
                f"{counts.get(c, {}).get('gaps', 0)} / {counts.get(c, {}).get('missed', 0)}"
                for c in cols
            ],
        ),
        ("healthy connections lost", [f"{counts.get(c, {}).get('lost', 0)}" for c in cols]),
        (
            "server RSS min / max",
            [
                f"{mib(min(sampler.window_rss[c]))} / {mib(max(sampler.window_rss[c]))}"
                for c in cols
            ],
        ),
        ("server CPU", [f"{cpu[c][1] / cpu[c][0] * 100:.0f} %" for c in cols]),
        ("client procs CPU", [f"{cpu[c][2] / cpu[c][0] * 100:.0f} %" for c in cols]),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'':{width}}  " + "  ".join(f"{c:>16}" for c in cols))
    for name, values in rows:
        print(f"{name:{width}}  " + "  ".join(f"{v:>16}" for v in values))
    print()
    print(
        "timeline (every 5th sample): t, window, server RSS, stuck client's Send-Q, stalled, drops"
    )
    for i, (t, label, rss, q, stalled, drops) in enumerate(sampler.rows):
        if i % 5 == 0 or (label == "stuck" and sampler.rows[i - 1][1] != "stuck"):
            q_text = "-" if q is None else f"{q:,}"
            print(
                f"  {t:6.0f} s  {label:8}  {mib(rss):>8}  {q_text:>9}  {stalled:.0f}  {drops:,.0f}"
            )
    print(f"load average after {os.getloadavg()[0]:.1f}; total {time.monotonic() - t_start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=50)
    parser.add_argument("--clients", type=int, default=500, help="healthy clients")
    parser.add_argument("--period", type=float, default=0.1, help="fleet period (0.1 = 10 Hz)")
    parser.add_argument(
        "--stall", type=float, default=10.0, help="client_stall_seconds of the server"
    )
    parser.add_argument(
        "--baseline", type=float, default=30.0, help="seconds without the stuck client"
    )
    parser.add_argument(
        "--after", type=float, default=15.0, help="seconds measured after its close"
    )
    parser.add_argument(
        "--max-stuck", type=float, default=120.0, help="give up waiting for the close after this"
    )
    parser.add_argument(
        "--history",
        type=float,
        default=30.0,
        help="live_history_seconds of the server (its default is 180; see bench/README.md)",
    )
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--no-deflate",
        dest="deflate",
        action="store_false",
        help="healthy clients do not offer permessage-deflate (browsers do)",
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
