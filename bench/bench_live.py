"""Live fan-out end to end: the real server, many WebSocket clients, latency and cost.

One run, for one fleet rate:

1. start ``livedata demo --period 1/RATE`` as a subprocess on loopback in a
   temporary data directory, through ``_hops.py`` (timestamps along the live path),
   wait until the start-up history is ingested, and measure it idle (no clients);
2. connect one client per machine, each sending ``INIT_FIELD_LIST`` with 3
   fields, and measure (the baseline);
3. connect nine more per machine (ten per machine, 1,000 for 100 machines) and
   measure again, so the cost of an extra client is the difference;
4. optionally (``--profile S``) sample the server with ``py-spy record`` for S
   seconds while every client is connected, and print the top frames.

With ``--before DIR`` the same is first done with the livedata of ``DIR/src`` (a
worktree of main), so before and after are measured in one invocation.

Clients are lean (picows, a frame is timed as it is parsed) in a few worker processes
(``--client-procs``), so the clients' own queueing stays small: a browser has a CPU
of its own, the bench's clients share two with the server.  (The ``websockets``
library's clients this bench used before added 100-300 ms at 1,000 clients on a busy
machine.)  Latency is receipt time minus the record's ``ts`` (the wall-clock time at
which the simulated machine sampled it), so it includes the simulation of that
machine, ingest, distribute, the fan-out and the socket; the store write is not on
the live path.  Then, for each tree, the same time is printed at each point of the
path that ``_hops.py`` notes, with the server's GC pauses of 1 ms or more.

The server, the clients and anything else on the machine share its CPUs; the
output says how much CPU each of them used in every window, and the load average.

Run: ``python bench/bench_live.py --rate 1 --before /tmp/main`` and
``--rate 10 --profile 10``.  Prints figures only; asserts nothing.  Every process it
starts is stopped and the temporary directory removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import picows
import psutil

import _hops

BENCH = Path(__file__).resolve().parent
ORG = "demo"
BENCH_TOKEN = "ld_bench_admin_token_loopback_only_000000"
"""The admin API token the bench's servers are started with (``LIVEDATA_ADMIN_TOKEN``)."""
AUTH = {"Authorization": f"Bearer {BENCH_TOKEN}"}
MSG_TYPE = "vehicle_can"
FIELD_LISTS = (
    ("speed", "engine_rpm", "brake_status"),  # the demo's "Drive" group
    ("coolant_temp", "ambient_temp", "oil_temp_hydraulic"),
    ("hydraulic_pressure", "boom_angle", "bucket_angle"),
    ("fuel_level", "engine_torque", "gear"),
    ("oil_pressure", "battery_voltage", "engine_hours"),
)
START_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 90.0


# -- client side (runs in worker processes) -------------------------------------------------


class LiveClient(picows.WSListener):
    """One live client: asks its fields, then times each LIVE_DATA as the frame is parsed."""

    def __init__(self, worker: ClientWorker, fields: tuple[str, ...], first: asyncio.Future[None]):
        self.worker = worker
        self.fields = fields
        self.first = first
        self.last_seq: int | None = None

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        payload = orjson.dumps({"type": "INIT_FIELD_LIST", "payload": self.fields})
        transport.send(picows.WSMsgType.TEXT, payload)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        now_ms = time.time() * 1000.0
        if frame.msg_type == picows.WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
            return
        if frame.msg_type != picows.WSMsgType.TEXT:
            return
        message = orjson.loads(frame.get_payload_as_bytes())
        worker = self.worker
        if message.get("type") != "LIVE_DATA":
            worker.other += 1
            return
        if not self.first.done():
            self.first.set_result(None)
        seq = message["seq"]
        if worker.measuring:
            worker.deliveries += 1
            worker.latencies.append(now_ms - message["ts"])
            worker.missed += message.get("missed", 0)
            if self.last_seq is not None and seq > self.last_seq + 1:
                worker.gaps += seq - self.last_seq - 1
        self.last_seq = seq

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        if self.first.done():
            self.worker.lost_connections += 1
        else:  # refused or broken before its first LIVE_DATA: not connected
            self.first.cancel()


class ClientWorker:
    """Many live clients on one asyncio loop, driven by commands over a pipe."""

    def __init__(self, conn: Connection, ws_base: str) -> None:
        self.conn = conn
        self.ws_base = ws_base
        self.transports: list[picows.WSTransport] = []
        self.measuring = False
        self.lost_connections = 0
        self.reset()

    def reset(self) -> None:
        self.latencies = array("d")
        self.deliveries = 0
        self.missed = 0
        self.gaps = 0
        self.other = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, arg = await loop.run_in_executor(None, self.conn.recv)
            if command == "quit":
                break
            if command == "connect":
                reply: Any = await self.connect(arg)
            elif command == "start":
                self.reset()
                self.measuring = True
                reply = None
            elif command == "stop":
                self.measuring = False
                reply = {
                    "latencies": self.latencies.tobytes(),
                    "deliveries": self.deliveries,
                    "missed": self.missed,
                    "gaps": self.gaps,
                    "other": self.other,
                    "lost": self.lost_connections,
                }
            else:
                reply = f"unknown command {command!r}"
            self.conn.send(reply)
        for transport in self.transports:
            transport.disconnect()

    async def connect(self, specs: list[tuple[str, tuple[str, ...]]]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        ready = [loop.create_future() for _ in specs]
        errors: list[str] = []
        for (chassis, fields), first in zip(specs, ready, strict=True):
            url = (
                f"{self.ws_base}/api/resources/{ORG}/_common/datasets/{chassis}/live"
                f"?msgType={MSG_TYPE}"
            )
            try:
                transport, _ = await picows.ws_connect(
                    lambda *_, fields=fields, first=first: LiveClient(self, fields, first),
                    url,
                    extra_headers=AUTH,
                )
            except (OSError, picows.WSError) as exc:
                errors.append(str(exc))
                first.cancel()
                continue
            self.transports.append(transport)
        done, _ = await asyncio.wait(ready, timeout=CONNECT_TIMEOUT_S)
        ok = sum(1 for f in done if not f.cancelled())
        return {
            "ok": ok,
            "failed": len(specs) - ok,
            "first_error": errors[0] if errors else None,
            "seconds": time.perf_counter() - started,
        }


def worker_main(conn: Connection, ws_base: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us with "quit"
    asyncio.run(ClientWorker(conn, ws_base).run())


class WorkerProcs:
    """Client worker processes driven over pipes, seen from the parent.

    One process per entry of ``args``, running ``target(conn, *entry)``; each answers
    every ``(command, arg)`` sent over ``conn`` and ends on ``("quit", None)``.
    """

    def __init__(self, target: Callable[..., None], args: list[tuple[Any, ...]]) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for entry in args:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child, *entry), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)
        self.ps = [psutil.Process(p.pid) for p in self.procs]

    def _call(self, command: str, args: list[Any], timeout: float) -> list[Any]:
        for conn, arg in zip(self.conns, args, strict=True):
            conn.send((command, arg))
        replies = []
        for conn in self.conns:
            if not conn.poll(timeout):
                raise TimeoutError(f"client worker did not answer {command!r} in {timeout:.0f} s")
            replies.append(conn.recv())
        return replies

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.ps:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("quit", None))
        for proc in self.procs:
            proc.join(15)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        for conn in self.conns:
            conn.close()


class Clients(WorkerProcs):
    """The live clients' worker processes, seen from the parent."""

    def __init__(self, procs: int, ws_base: str) -> None:
        super().__init__(worker_main, [(ws_base,)] * procs)
        self.count = 0

    def connect(self, specs: list[tuple[str, tuple[str, ...]]]) -> dict[str, Any]:
        share = [specs[i :: len(self.conns)] for i in range(len(self.conns))]
        replies = self._call("connect", share, CONNECT_TIMEOUT_S + 30)
        self.count += sum(r["ok"] for r in replies)
        errors = [r["first_error"] for r in replies if r["first_error"]]
        return {
            "ok": sum(r["ok"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "first_error": errors[0] if errors else None,
            "seconds": max(r["seconds"] for r in replies),
        }

    def start(self) -> None:
        self._call("start", [None] * len(self.conns), 30)

    def stop(self) -> dict[str, Any]:
        replies = self._call("stop", [None] * len(self.conns), 60)
        latencies = array("d")
        for r in replies:
            latencies.frombytes(r["latencies"])
        merged = {
            k: sum(r[k] for r in replies) for k in ("deliveries", "missed", "gaps", "other", "lost")
        }
        merged["latencies"] = latencies
        return merged


# -- server side ---------------------------------------------------------------------------


class ServerProcess:
    """A server started by ``cmd`` (it prints ``open URL``), its output in ``tmp``.

    ``get`` sends ``headers`` with every request and waits ``timeout`` seconds at most.
    """

    def __init__(
        self,
        cmd: list[str],
        tmp: Path,
        *,
        env: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> None:
        self.cmd = cmd
        self.headers = headers or {}
        self.timeout = timeout
        self.out_path = tmp / "server.out"
        self._out = self.out_path.open("w")
        self.proc = subprocess.Popen(
            cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.ps = psutil.Process(self.proc.pid)
        self.url = self._wait_url()
        self.ws_base = self.url.replace("http://", "ws://", 1)

    def _wait_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = re.search(r"open (http://\S+)", self.out_path.read_text())
            if match:
                return match.group(1).replace("localhost", "127.0.0.1")
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"server did not start; its output:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.out_path.read_text().splitlines()[-lines:])

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(self.url + path, headers=self.headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            body: bytes = response.read()
            return body

    def wait_settled(self) -> float:
        """Wait until the start-up history is ingested; returns seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < START_TIMEOUT_S:
            with contextlib.suppress(OSError, ValueError):
                health = orjson.loads(self.get("/healthz"))
                if health.get("ok") and health.get("ingestQueue") == 0:
                    return time.monotonic() - started
            time.sleep(0.5)
        raise RuntimeError("server did not settle (ingest queue never empty)")

    def metrics(self, names: tuple[str, ...]) -> dict[str, float]:
        """The server's /metrics ``livedata_NAME`` for each name (labelled series summed)."""
        text = self.get("/metrics").decode()
        out = {}
        for name in names:
            values = re.findall(rf"^livedata_{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
            out[name] = sum(float(v) for v in values) if values else float("nan")
        return out

    def cpu_seconds(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:  # a clean stop writes _hops.py's notes; on a busy machine it takes long
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()


class Server(ServerProcess):
    """``livedata demo`` of the tree ``src`` as a subprocess (through ``_hops.py``, which
    notes the time of each hop to ``tmp/hops.json`` at exit), its output in ``tmp``."""

    def __init__(self, rate: float, machines: int, tmp: Path, loop: str, src: Path) -> None:
        data = tmp / "data"
        self.hops_path = tmp / "hops.json"
        cmd = [
            sys.executable,
            str(BENCH / "_hops.py"),
            str(self.hops_path),
            "demo",
            "--port",
            "0",
            "--data-dir",
            str(data),
            "--machines",
            str(machines),
            "--period",
            str(1 / rate),
            "--log-level",
            "warning",
        ]
        env = {
            **os.environ,
            "PYTHONPATH": str(src),
            "LIVEDATA_EVENT_LOOP": loop,
            "LIVEDATA_ADMIN_TOKEN": BENCH_TOKEN,
            # every client uses the one admin token: lift the per-user cap of live connections
            "LIVEDATA_LIVE_PER_USER": str(20 * machines + 100),
        }
        super().__init__(cmd, tmp, env=env, headers=AUTH)

    def hops(self) -> dict[str, Any]:
        """What ``_hops.py`` noted (after :meth:`stop`; empty when it wrote nothing)."""
        try:
            data: dict[str, Any] = orjson.loads(self.hops_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return data

    def counters(self) -> dict[str, float]:
        """Counters of the server's /metrics (labelled series summed)."""
        names = ("deliveries", "drops", "published", "records_in", "store_batches")
        totals = self.metrics(tuple(f"{name}_total" for name in names))
        return {name: totals[f"{name}_total"] for name in names}

    def io_write_bytes(self) -> int:
        """Bytes the server passed to write() calls (SQLite WAL and database, sockets excluded)."""
        return int(self.ps.io_counters().write_chars)


# -- measurement -----------------------------------------------------------------------------


@dataclass
class Window:
    label: str
    clients: int
    seconds: float
    server_cpu: float  # seconds
    server_rss_end: int
    server_rss_max: int
    clients_cpu: float
    system_busy: float  # CPU-seconds used by everything on the machine
    server_written: int = 0
    deliveries: int = 0
    server_deliveries: float = 0.0
    server_drops: float = 0.0
    published: float = 0.0
    records_in: float = 0.0
    store_batches: float = 0.0
    latencies: array | None = None
    missed: int = 0
    gaps: int = 0
    lost: int = 0
    started: float = 0.0  # wall clock (time.time()), to pick this window's hop notes
    ended: float = 0.0

    @property
    def others_cpu(self) -> float:
        return max(0.0, self.system_busy - self.server_cpu - self.clients_cpu)


def system_busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def measure(label: str, server: Server, clients: Clients | None, seconds: float) -> Window:
    before = server.counters()
    if clients is not None:
        clients.start()
    cpu0, sys0, io0 = server.cpu_seconds(), system_busy_seconds(), server.io_write_bytes()
    ccpu0 = clients.cpu_seconds() if clients else 0.0
    started = time.time()
    t0 = time.perf_counter()
    rss_max = 0
    while (elapsed := time.perf_counter() - t0) < seconds:
        rss_max = max(rss_max, server.ps.memory_info().rss)
        time.sleep(min(1.0, seconds - elapsed))
    wall = time.perf_counter() - t0
    window = Window(
        label=label,
        clients=clients.count if clients else 0,
        seconds=wall,
        server_cpu=server.cpu_seconds() - cpu0,
        server_rss_end=server.ps.memory_info().rss,
        server_rss_max=rss_max,
        clients_cpu=(clients.cpu_seconds() - ccpu0) if clients else 0.0,
        system_busy=system_busy_seconds() - sys0,
        server_written=server.io_write_bytes() - io0,
        started=started,
        ended=time.time(),
    )
    after = server.counters()
    delta = {k: after[k] - before[k] for k in after}
    window.server_deliveries, window.server_drops = delta["deliveries"], delta["drops"]
    window.published, window.records_in = delta["published"], delta["records_in"]
    window.store_batches = delta["store_batches"]
    if clients is not None:
        stats = clients.stop()
        window.deliveries = stats["deliveries"]
        window.latencies = stats["latencies"]
        window.missed, window.gaps, window.lost = stats["missed"], stats["gaps"], stats["lost"]
    return window


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def report(windows: list[Window], rate: float, machines: int) -> None:
    cols = [w.label for w in windows]
    rows: list[tuple[str, list[str]]] = []

    def row(name: str, fn: Any) -> None:
        rows.append((name, [fn(w) for w in windows]))

    lat = {w.label: sorted(w.latencies) if w.latencies else [] for w in windows}
    row("clients", lambda w: f"{w.clients:,}")
    row("window", lambda w: f"{w.seconds:.0f} s")
    row("expected records/s", lambda w: f"{machines * 2 * rate:,.0f}")
    row("records in/s (server)", lambda w: f"{w.records_in / w.seconds:,.0f}")
    row("published/s (server)", lambda w: f"{w.published / w.seconds:,.0f}")
    row("records per store batch", lambda w: f"{w.records_in / max(1, w.store_batches):,.0f}")
    row("store write() MB/s", lambda w: f"{w.server_written / w.seconds / 1e6:,.1f}")
    row("expected deliveries/s", lambda w: f"{w.clients * rate:,.0f}")
    row("deliveries/s (clients)", lambda w: f"{w.deliveries / w.seconds:,.0f}")
    row("deliveries/s (server)", lambda w: f"{w.server_deliveries / w.seconds:,.0f}")
    row("latency p50", lambda w: f"{percentile(lat[w.label], 0.50):.0f} ms")
    row("latency p90", lambda w: f"{percentile(lat[w.label], 0.90):.0f} ms")
    row("latency p99", lambda w: f"{percentile(lat[w.label], 0.99):.0f} ms")
    row("latency max", lambda w: f"{lat[w.label][-1]:.0f} ms" if lat[w.label] else "nan ms")
    row("seq gaps (lost msgs)", lambda w: f"{w.gaps:,}")
    row("server drops (slow)", lambda w: f"{w.server_drops:,.0f}")
    row("connections lost", lambda w: f"{w.lost:,}")
    row("server CPU", lambda w: f"{w.server_cpu / w.seconds * 100:.0f} %")
    row("server RSS end / max", lambda w: f"{mib(w.server_rss_end)} / {mib(w.server_rss_max)}")
    row("client procs CPU", lambda w: f"{w.clients_cpu / w.seconds * 100:.0f} %")
    row("other processes CPU", lambda w: f"{w.others_cpu / w.seconds * 100:.0f} %")
    width = max(len(name) for name, _ in rows)
    cw = max(14, *(len(c) for c in cols))
    print(f"{'':{width}}  " + "  ".join(f"{c:>{cw}}" for c in cols))
    for name, values in rows:
        print(f"{name:{width}}  " + "  ".join(f"{v:>{cw}}" for v in values))
    print(
        "(CPU in % of one core; the machine has "
        f"{psutil.cpu_count()} cores, shared by the server, the client processes and others)"
    )

    idle, one, ten = windows
    kib = 1024
    if one.clients:
        per_client = (one.server_rss_end - idle.server_rss_end) / one.clients / kib
        print(f"RSS per client, idle → 1/machine:        {per_client:,.0f} KiB")
    extra = ten.clients - one.clients
    if extra > 0:
        per_extra = (ten.server_rss_end - one.server_rss_end) / extra / kib
        cpu_delta = ten.server_cpu / ten.seconds - one.server_cpu / one.seconds
        rate_delta = ten.deliveries / ten.seconds - one.deliveries / one.seconds
        print(f"RSS per extra client, 1 → 10/machine:    {per_extra:,.0f} KiB")
        if rate_delta > 0:
            print(
                f"server CPU per extra delivery:            {cpu_delta / rate_delta * 1e6:,.0f} µs"
            )
    idle_cpu = idle.server_cpu / idle.seconds * 100
    print(
        f"server CPU with no clients: {idle_cpu:.0f} % ({machines} machines at {rate:g} Hz: "
        "simulation, ingest, SQLite, distribute)"
    )


# -- profiling -------------------------------------------------------------------------------

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3", "src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    path = re.sub(r"^\.?\d*/", "", path)
    return f"{match.group('func')} ({path})"


def area(frame: str) -> str:
    for name in (
        "livedata",
        "websockets",
        "uvicorn",
        "starlette",
        "fastapi",
        "cantools",
        "sqlalchemy",
        "aiosqlite",
        "prometheus_client",
        "asyncio",
        "sqlite3",
        "concurrent",
        "threading",
        "uvloop",
        "selectors",
    ):
        if f"{name}/" in frame or f"{name}." in frame:
            return name
    return "other"


WAITING = ("select (selectors", "EpollSelector.select", "wait (threading", "_worker (concurrent")
"""Leaf frames of a thread that waits (py-spy --nonblocking may sample them as active)."""
GENERIC = (
    "run_forever",
    "_run_once",
    "_run (asyncio",
    "<module>",
    "runpy",
    "run (asyncio",
    "main (",
    "run (livedata/cli",
    "serve (livedata/cli",
    "_bootstrap",
    "run (threading",
    "run (concurrent",
    "run_until_complete",
    "Runtime.spawn",
)
"""Frames on (nearly) every stack, left out of the inclusive list."""


def profile(server: Server, seconds: float, tmp: Path) -> None:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("py-spy is not installed (pip install py-spy); no profile")
        return
    out = tmp / "profile.txt"
    cmd = [
        py_spy,
        "record",
        "--pid",
        str(server.proc.pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "100",
        "--format",
        "raw",
        "--threads",
        "--nonblocking",
        "--output",
        str(out),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if result.returncode != 0 or not out.exists():
        print(f"py-spy failed: {result.stderr.strip()[-500:]}")
        return
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = busy = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        frames = [short(f) for f in frames]
        if not frames:
            continue
        total += count
        name = re.sub(r"^thread \(\w+\):? ?|_?\d+|-\d+", "", thread).strip() or thread
        if any(w in frames[-1] for w in WAITING):
            threads[f"{name} (waiting)"] += count
            continue
        busy += count
        threads[name] += count
        self_counts[frames[-1]] += count
        areas[area(frames[-1])] += count
        for frame in set(frames):
            incl_counts[frame] += count
    if not busy:
        print("py-spy: no busy samples")
        return
    print(
        f"py-spy: {total:,} samples in {seconds:.0f} s at 100 Hz, {busy:,} of them busy "
        f"(= {busy / seconds:.0f} % of one core); shares below are of the busy samples"
    )
    print("  by thread: " + ", ".join(f"{k} {v / busy:.0%}" for k, v in threads.most_common(8)))
    print(
        "  self time by package: "
        + ", ".join(f"{k} {v / busy:.0%}" for k, v in areas.most_common(10))
    )
    print("  top self frames:")
    for frame, count in self_counts.most_common(20):
        print(f"    {count / busy:6.1%}  {frame}")
    print("  top inclusive frames:")
    shown = 0
    for frame, count in incl_counts.most_common():
        if any(s in frame for s in GENERIC):
            continue
        print(f"    {count / busy:6.1%}  {frame}")
        shown += 1
        if shown == 30:
            break


# -- main ------------------------------------------------------------------------------------


def specs(
    machines: int, per_machine: range, distinct_lists: int
) -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for i in per_machine:
        for m in range(1, machines + 1):
            out.append((f"WL-{m:04d}", FIELD_LISTS[i % distinct_lists]))
    return out


@contextlib.contextmanager
def temp_dir(prefix: str = "livedata-bench-live-") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def breakdown(window: Window, hops: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(point, p50, p99) of the time since the sample at each point of the live path, for
    the real-time records sampled in ``window``, then the clients' receipt."""
    t0, t1 = window.started * 1000, window.ended * 1000
    rows = []
    for hop, flat in hops.get("hops", {}).items():
        lags = sorted(lag for ts, lag in zip(flat[::2], flat[1::2], strict=True) if t0 <= ts < t1)
        if lags:
            rows.append((hop, percentile(lags, 0.5), percentile(lags, 0.99)))
    received = sorted(window.latencies or ())
    rows.append(("received", percentile(received, 0.5), percentile(received, 0.99)))
    return rows


def gc_pauses(window: Window, hops: dict[str, Any]) -> str:
    pauses = [s for end, _gen, s in hops.get("gc", ()) if window.started <= end < window.ended]
    if not pauses:
        return "no GC pause >= 1 ms"
    return f"{len(pauses)} GC pauses >= 1 ms, longest {max(pauses) * 1000:.0f} ms"


def loop_stalls(window: Window, hops: dict[str, Any]) -> list[str]:
    """The server loop's stalls in ``window`` (see ``_hops.py``): a summary line and the
    most sampled stacks."""
    stalls = [s for s in hops.get("stalls", ()) if window.started <= s[0] < window.ended]
    if not stalls:
        return [f"no event loop stall >= {_hops.STALL_S * 1000:.0f} ms"]
    stacks: Counter[str] = Counter()
    for _end, _seconds, top in stalls:
        for stack, samples in top:
            stacks[stack] += samples
    total = sum(s[1] for s in stalls)
    lines = [
        f"{len(stalls)} event loop stalls >= {_hops.STALL_S * 1000:.0f} ms, "
        f"{total:.1f} s in all ({total / window.seconds:.0%} of the window), "
        f"longest {max(s[1] for s in stalls) * 1000:.0f} ms; most sampled stacks in them:"
    ]
    lines += [f"    {count:4}  {stack}" for stack, count in stacks.most_common(5)]
    return lines


@dataclass
class Run:
    """One tree measured: its windows and what ``_hops.py`` noted."""

    label: str
    windows: list[Window]
    hops: dict[str, Any]
    load: tuple[float, float]  # 1-minute load average before and after


def run_tree(args: argparse.Namespace, label: str, src: Path) -> Run:
    """Start ``livedata demo`` of ``src``, measure idle, 1 and N clients per machine."""
    rate, machines = args.rate, args.machines
    load_before = os.getloadavg()[0]
    print(f"-- {label}: {src} (load average {load_before:.1f})")
    with temp_dir() as tmp:
        t0 = time.monotonic()
        server = Server(rate, machines, tmp, args.server_loop, src)
        clients: Clients | None = None
        try:
            settled = server.wait_settled()
            print(
                f"server pid {server.proc.pid} at {server.url}: up in "
                f"{time.monotonic() - t0 - settled:.1f} s, history ingested {settled:.1f} s later"
            )
            time.sleep(3)
            windows = [measure("idle", server, None, args.idle)]
            clients = Clients(args.client_procs, server.ws_base)
            for window_label, span in (
                ("1/machine", range(1)),
                (f"{args.per_machine}/machine", range(1, args.per_machine)),
            ):
                result = clients.connect(specs(machines, span, args.distinct_lists))
                print(
                    f"connected {result['ok']:,} clients in {result['seconds']:.1f} s "
                    f"(until each had its first LIVE_DATA); failed {result['failed']}"
                    + (f": {result['first_error']}" if result["first_error"] else "")
                )
                time.sleep(2)
                seconds = args.window if span.stop > 1 else args.window / 2
                windows.append(measure(window_label, server, clients, seconds))
            print()
            report(windows, rate, machines)
            if args.profile:
                print()
                profile(server, args.profile, tmp)
        except BaseException:
            with contextlib.suppress(Exception):
                print(f"server output:\n{server.tail()}", file=sys.stderr)
            raise
        finally:
            if clients is not None:
                clients.close()
            server.stop()
        hops = server.hops()
    if hops.get("missing"):
        print(f"points not in this tree: {', '.join(hops['missing'])}")
    print(f"-- {label} done in {time.monotonic() - t0:.0f} s\n")
    return Run(label, windows, hops, (load_before, os.getloadavg()[0]))


def report_hops(runs: list[Run]) -> None:
    """Per run, the time since the sample at each point, with every client connected."""
    print(
        "Live path with every client connected: time since the sample (ms), "
        "p50 / p99, at each point"
    )
    tables = [
        dict((hop, (p50, p99)) for hop, p50, p99 in breakdown(r.windows[-1], r.hops)) for r in runs
    ]
    points = list(dict.fromkeys(hop for table in tables for hop in table))
    cw = 17
    print(f"{'':10}" + "".join(f"{r.label:>{cw}}" for r in runs))
    for hop in points:
        cells = []
        for table in tables:
            p50, p99 = table.get(hop, (float("nan"), float("nan")))
            cells.append(f"{p50:7.1f} / {p99:6.1f}")
        print(f"{hop:10}" + "".join(f"{c:>{cw}}" for c in cells))
    for r in runs:
        print(
            f"{r.label}: {gc_pauses(r.windows[-1], r.hops)}; load average "
            f"{r.load[0]:.1f} before, {r.load[1]:.1f} after"
        )
        print("  " + "\n  ".join(loop_stalls(r.windows[-1], r.hops)))
    if len(runs) == 2:
        (_, b50, b99), (_, a50, a99) = (breakdown(r.windows[-1], r.hops)[-1] for r in runs)
        print(f"received after / before: p50 {a50 / b50:.2f}x, p99 {a99 / b99:.2f}x")


def run(args: argparse.Namespace) -> None:
    rate, machines = args.rate, args.machines
    print(
        f"bench_live: {machines} machines at {rate:g} Hz, clients 1 then {args.per_machine} "
        f"per machine, {args.distinct_lists} distinct 3-field list(s) per machine, "
        f"server loop {args.server_loop}, "
        f"{args.client_procs} client processes, "
        f"{psutil.cpu_count()} CPUs shared by server and clients; load average before "
        f"{os.getloadavg()[0]:.1f}"
    )
    t0 = time.monotonic()
    trees = [("after", BENCH.parent / "src")]
    if args.before:
        trees.insert(0, ("before", args.before.resolve() / "src"))
    runs = [run_tree(args, label, src) for label, src in trees]
    report_hops(runs)
    print(f"load average after {os.getloadavg()[0]:.1f}; total {time.monotonic() - t0:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1, help="fleet rate in Hz (1 or 10)")
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument(
        "--per-machine", type=int, default=10, help="clients per machine at the end"
    )
    parser.add_argument(
        "--distinct-lists",
        type=int,
        default=1,
        choices=range(1, len(FIELD_LISTS) + 1),
        help="different 3-field lists among the clients of one machine",
    )
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--server-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the server's event_loop setting (auto, the default: uvloop when installed)",
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="first measure the livedata of DIR/src (e.g. a worktree of main) the same way",
    )
    parser.add_argument("--idle", type=float, default=5.0, help="seconds measured without clients")
    parser.add_argument(
        "--window",
        type=float,
        default=30.0,
        help="seconds measured with every client (half that with one per machine)",
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="S",
        help="py-spy the server for S seconds at the end",
    )
    run(parser.parse_args())


if __name__ == "__main__":
    main()
