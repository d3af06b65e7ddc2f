"""Live fan-out alone: Redis publisher → one server process on one core → many lean clients.

One run, for each target in turn (``--targets``, default ``livedata,baseline``):

1. a ``redis-server`` on a free loopback port (as the tests start it);
2. the target server, pinned to core 0 with ``taskset`` when there is one:

   - ``livedata``: ``livedata serve --role gateway --seed-demo M --pubsub redis://…``
     (the gateway role alone, SQLite metadata in a temporary directory, an admin API
     token every client sends as ``Authorization: Bearer``);
   - ``baseline``: a minimal picows + orjson server in this file
     (``--serve-baseline``): it subscribes to the channels its clients need, parses
     each message once, encodes ``LIVE_DATA`` once per distinct field list and sends
     the same bytes to every client of that list.  The floor any Python server can
     reach;

3. ``--clients`` WebSocket clients (in ``--client-procs`` processes on the other core),
   spread evenly over ``--machines`` machines, each asking 3 of the message's 53 fields
   (the 15 ``vehicle_can`` fields of the demo and 38 more).  ``--client-kind lean`` (the
   default): raw sockets that count frames in C and time the first frame of each read
   (:func:`lean_client_worker`), so the clients sharing one core are not what limits a
   ceiling run; ``picows``: picows clients that parse every frame;
4. a publisher process (other core) that publishes each machine's message at
   ``--rate`` Hz on its live channel (``live-stream/demo/consumer-WL-0001/vehicle_can``,
   the distribute role's message shape: ``ts``, ``seq``, ``epoch``, ``values``), the
   machines spread evenly over the period; after ``--warmup`` seconds, ``--window``
   seconds are measured.

Printed per target: deliveries/s (expected: published messages × clients of that
machine), lost (expected minus received, for messages published in the window, 2 s
of grace after it), latency p50/p99/max (client receipt minus the publisher's ``ts``),
server CPU % (of one core; and per delivery, which stays comparable when a busy machine starves
the clients), the client processes' CPU % and the load average (a busy machine makes
latencies noisy: compare within a run), and RSS, KB per connected idle client (RSS with clients
and no traffic minus RSS before them), GC pauses of the server (``gc.callbacks``,
CPU time of each collection: count and longest per generation, total) and the ratios to the baseline.

``--profile S`` runs ``py-spy record`` on the livedata gateway for S seconds in the
window and prints the top self and inclusive frames.

    python bench/bench_fanout.py                                  # 1,000 clients, 10k/s, ~1 min
    python bench/bench_fanout.py --clients 5000 --machines 50 --rate 20   # 100k/s
    python bench/bench_fanout.py --clients 5000 --machines 50 --rate 50   # the ceiling: 250k/s
    python bench/bench_fanout.py --profile 10 --targets livedata
    python bench/bench_fanout.py --before /tmp/main --targets before,livedata,baseline

Prints figures only; asserts nothing.  Every process it starts is stopped and the
temporary directory removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# measure the code of this checkout (and its tests.servers), whatever `pip install -e` points at;
# the `before` target's gateway runs the code of --before (BENCH_SRC)
sys.path.insert(
    0, os.environ.get("BENCH_SRC") or str(Path(__file__).resolve().parent.parent / "src")
)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import picows
import psutil

ROOT = Path(__file__).resolve().parent.parent

BENCH_TOKEN = "ld_bench_admin_token_loopback_only_000000"
ORG = "demo"
MSG_TYPE = "vehicle_can"
DEMO_FIELDS = (
    "speed",
    "engine_rpm",
    "brake_status",
    "coolant_temp",
    "ambient_temp",
    "oil_temp_hydraulic",
    "hydraulic_pressure",
    "boom_angle",
    "bucket_angle",
    "fuel_level",
    "engine_torque",
    "gear",
    "oil_pressure",
    "battery_voltage",
    "engine_hours",
)
ALL_FIELDS = DEMO_FIELDS + tuple(f"extra_{i:02d}" for i in range(53 - len(DEMO_FIELDS)))
CLIENT_FIELDS = ("speed", "engine_rpm", "brake_status")
GRACE_S = 2.0


def chassis(i: int) -> str:
    return f"WL-{i + 1:04d}"


def channel(chassis_id: str) -> str:
    return f"live-stream/{ORG}/consumer-{chassis_id}/{MSG_TYPE}"


def live_path(chassis_id: str) -> str:
    return f"/api/resources/{ORG}/_common/datasets/{chassis_id}/live?msgType={MSG_TYPE}"


# -- GC pauses, recorded inside a server process -------------------------------------------


def record_gc_pauses(path: str) -> None:
    """Append ``time generation cpu-seconds`` for each collection of 1 ms of CPU or more to ``path``.

    CPU time of the thread, not wall time: on a shared machine a collection's wall time
    includes the time the process waited for a core.
    """
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.thread_time()
            return
        took = time.thread_time() - started[0]
        if took >= 0.001:
            out.write(f"{time.time():.3f} {info['generation']} {took:.6f}\n")
        if info["generation"] == 2 and os.environ.get("BENCH_GC_COUNT"):
            out.write(f"# gen2 {len(gc.get_objects(2))} walked, {gc.get_freeze_count()} frozen\n")

    gc.callbacks.append(callback)


def run_gateway_with_gc_log() -> None:
    """``python bench_fanout.py --gateway ARGS…``: the livedata CLI with GC pauses recorded."""
    record_gc_pauses(os.environ["BENCH_GC_LOG"])
    if os.environ.get("BENCH_WS_PING"):  # bench_idle.py: keep-alive pings more often
        from livedata.gateway import server as layer

        layer.WS_PING_INTERVAL = layer.WS_PING_TIMEOUT = float(os.environ["BENCH_WS_PING"])
    if os.environ.get("BENCH_RECHECK"):  # bench_idle.py: re-check credentials more often
        from livedata.gateway import security

        security.RECHECK_S = float(os.environ["BENCH_RECHECK"])
    if os.environ.get("BENCH_GC_THRESHOLD"):
        thresholds = tuple(int(n) for n in os.environ["BENCH_GC_THRESHOLD"].split(","))
        gc.set_threshold(*thresholds)
        from livedata.cli import common  # serve sets them again after start-up: these instead

        common.GC_THRESHOLDS = thresholds  # type: ignore[assignment]
    from livedata.cli.main import main

    sys.exit(main(sys.argv[2:]))


def text_of(transport: Any, frame: Any) -> bytes | None:
    """A picows frame's text; answers a ping, ignores the rest."""
    if frame.msg_type == picows.WSMsgType.PING:
        transport.send_pong(frame.get_payload_as_bytes())
        return None
    if frame.msg_type != picows.WSMsgType.TEXT:
        return None
    return bytes(frame.get_payload_as_bytes())


# -- the baseline server: picows + orjson, encode once per field list -----------------------


def serve_baseline(port: int, redis_url: str) -> None:
    """The floor: one process, picows, orjson, one encoding per field list per message."""
    import redis.asyncio as aioredis

    record_gc_pauses(os.environ["BENCH_GC_LOG"])
    groups: dict[str, dict[tuple[str, ...], set[Any]]] = {}

    async def main() -> None:
        r = aioredis.from_url(redis_url)
        ps = r.pubsub(ignore_subscribe_messages=True)
        await ps.subscribe("_bench_none")
        tasks: set[asyncio.Task[None]] = set()

        def need(ch: str) -> None:
            task = asyncio.create_task(ps.subscribe(ch))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        class Listener(picows.WSListener):
            def __init__(self, ch: str) -> None:
                self.ch = ch
                self.key: tuple[str, ...] | None = None
                self.transport: Any = None

            def on_ws_connected(self, transport: Any) -> None:
                self.transport = transport

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                text = text_of(transport, frame)
                if text is None:
                    return
                data = orjson.loads(text)
                self.leave()
                self.key = tuple(data["payload"])
                if self.ch not in groups:
                    groups[self.ch] = {}
                    need(self.ch)
                groups[self.ch].setdefault(self.key, set()).add(self)

            def leave(self) -> None:
                if self.key is not None:
                    groups[self.ch][self.key].discard(self)
                    self.key = None

            def on_ws_disconnected(self, transport: Any) -> None:
                self.leave()

        def factory(request: Any) -> Any:
            query = parse_qs(urlsplit(request.path.decode()).query)
            parts = unquote(urlsplit(request.path.decode()).path).split("/")
            return Listener(channel(parts[6]) if query.get("msgType") else "")

        server = await picows.ws_create_server(factory, "127.0.0.1", port)
        print(f"baseline serving on http://127.0.0.1:{port}", flush=True)
        text = picows.WSMsgType.TEXT
        async for msg in ps.listen():
            message = orjson.loads(msg["data"])
            values = message["values"]
            head = {"ts": message["ts"], "seq": message["seq"], "epoch": message["epoch"]}
            for key, members in groups.get(msg["channel"].decode(), {}).items():
                out = orjson.dumps(
                    {"type": "LIVE_DATA", "payload": {k: values[k] for k in key}, **head}
                )
                for member in members:
                    member.transport.send(text, out)
        server.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


# -- clients (worker processes) --------------------------------------------------------------


async def serve_commands(
    conn: Connection, window: list[float], lat: array[float], stats: Counter[str]
) -> None:
    """A client worker's side of the pipe: ``window`` (start counting), ``report``, stop."""
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command[0] == "window":
            window[0], window[1] = command[1], command[2]
            del lat[:]
            stats.pop("received", None)
        elif command[0] == "report":
            conn.send((dict(stats), lat.tobytes()))
        else:
            return


def client_worker(url: str, targets: list[str], conn: Connection) -> None:
    """Connect one client per entry of ``targets`` (chassis ids); count and time what arrives."""
    lat = array("d")
    window = [0.0, 0.0]
    stats = Counter[str]()

    class Client(picows.WSListener):
        def on_ws_connected(self, transport: Any) -> None:
            transport.send(
                picows.WSMsgType.TEXT,
                orjson.dumps({"type": "INIT_FIELD_LIST", "payload": list(CLIENT_FIELDS)}),
            )
            stats["connected"] += 1

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            now = time.time()
            text = text_of(transport, frame)
            if text is None:
                return
            message = orjson.loads(text)
            if message.get("type") != "LIVE_DATA":
                stats[f"other:{message.get('type')}:{message.get('code')}"] += 1
                return
            if "missed" in message:
                stats["missed"] += message["missed"]
            ts = message["ts"]
            if window[0] <= ts < window[1]:
                stats["received"] += 1
                lat.append(now - ts)

        def on_ws_disconnected(self, transport: Any) -> None:
            stats["disconnected"] += 1

    async def main() -> None:
        headers = {"Authorization": f"Bearer {BENCH_TOKEN}"}
        for i, chassis_id in enumerate(targets):
            await picows.ws_connect(  # a loaded shared machine can take more than picows' 5 s
                Client,
                url + live_path(chassis_id),
                extra_headers=headers,
                websocket_handshake_timeout=60,
            )
            if i % 50 == 49:
                await asyncio.sleep(0)
        conn.send(("connected", stats["connected"]))
        await serve_commands(conn, window, lat, stats)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


MARK = b'{"type":"LIVE_DATA"'
HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    f"Authorization: Bearer {BENCH_TOKEN}\r\n\r\n"
)


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (FIN, mask key 0: the payload goes as it is), payload < 126 bytes."""
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def lean_client_worker(url: str, targets: list[str], conn: Connection) -> None:
    """Like :func:`client_worker`, for the ceiling: raw sockets, no per-frame Python.

    Each read is scanned in C: LIVE_DATA frames are counted with ``bytes.count``, and one
    latency is taken per read, of its first frame (the oldest in it: an upper bound of
    the read's frames).  A read counts in the window when that frame's ``ts`` is in it;
    a ``ts`` split between reads reuses the last one parsed.  Pings are answered (a
    ``0x89`` byte followed by a short payload; a stray match sends an unsolicited pong,
    which a server ignores).
    """
    lat = array("d")
    window = [0.0, 0.0]
    stats = Counter[str]()
    parts = urlsplit(url)
    keep = len(MARK) - 1
    init = masked_frame(
        1, orjson.dumps({"type": "INIT_FIELD_LIST", "payload": list(CLIENT_FIELDS)})
    )

    class Lean(asyncio.Protocol):
        def __init__(self, path: str, opened: asyncio.Future[None]) -> None:
            self.path, self.opened = path, opened
            self.head = b""
            self.tail = b""
            self.ts = 0.0

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.write(HANDSHAKE.format(path=self.path, host=parts.netloc).encode())

        def data_received(self, data: bytes) -> None:
            if self.opened is not None:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                if not self.head.startswith(b"HTTP/1.1 101"):
                    stats["other:handshake:" + self.head.split(b"\r\n")[0].decode()] += 1
                    self.opened.set_result(None)
                    self.transport.close()
                    return
                data, self.head = self.head[end + 4 :], b""
                self.transport.write(init)
                stats["connected"] += 1
                self.opened.set_result(None)
                self.opened = None
            now = time.time()
            n = (self.tail + data).count(MARK)
            self.tail = data[-keep:]
            if n:
                i = data.find(b'"ts":')
                j = data.find(b",", i)
                if i >= 0 and j > 0:
                    with contextlib.suppress(ValueError):
                        self.ts = float(data[i + 5 : j])
                        if window[0] <= self.ts < window[1]:
                            lat.append(now - self.ts)
                if window[0] <= self.ts < window[1]:
                    stats["received"] += n
                if b'"missed"' in data:
                    stats["missed"] += sum(int(m) for m in re.findall(rb'"missed":(\d+)', data))
            elif MARK not in data and b'"type":"' in data:
                stats[
                    "other:" + data[data.find(b'"type":"') + 8 :][:20].decode("ascii", "replace")
                ] += 1
            ping = data.find(b"\x89")
            if 0 <= ping < len(data) - 1 and data[ping + 1] < 126:
                self.transport.write(masked_frame(0xA, data[ping + 2 : ping + 2 + data[ping + 1]]))

        def connection_lost(self, exc: Exception | None) -> None:
            stats["disconnected"] += 1
            if self.opened is not None and not self.opened.done():  # closed before its 101
                stats["other:closed before the handshake"] += 1
                self.opened.set_result(None)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        for start in range(0, len(targets), 100):
            opened = []
            for chassis_id in targets[start : start + 100]:
                future: asyncio.Future[None] = loop.create_future()
                opened.append(future)
                await loop.create_connection(
                    lambda c=chassis_id, f=future: Lean(live_path(c), f), host, port
                )
            await asyncio.gather(*opened)
        conn.send(("connected", stats["connected"]))
        await serve_commands(conn, window, lat, stats)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


# -- the publisher -------------------------------------------------------------------------------


def publisher(redis_url: str, machines: int, rate: float, seconds: float, conn: Connection) -> None:
    """Publish each machine's 53-field message ``rate`` times a second, spread over the period."""
    import redis

    r = redis.Redis.from_url(redis_url)
    period = 1.0 / rate
    slices = max(1, min(machines, 10))
    per_slice = [list(range(machines))[k::slices] for k in range(slices)]
    published: list[tuple[str, float]] = []  # (chassis, ts)
    seq = [0] * machines
    start = time.time()
    tick = 0
    while True:
        t0 = start + tick * period
        if t0 - start >= seconds:
            break
        for k, members in enumerate(per_slice):
            at = t0 + k * period / slices
            delay = at - time.time()
            if delay > 0:
                time.sleep(delay)
            pipe = r.pipeline(transaction=False)
            now = time.time()
            for m in members:
                seq[m] += 1
                values = {name: (seq[m] * 7 + j) % 1000 / 10 for j, name in enumerate(ALL_FIELDS)}
                data = orjson.dumps({"ts": now, "seq": seq[m], "epoch": "bench", "values": values})
                pipe.publish(channel(chassis(m)), data)
                published.append((chassis(m), now))
            pipe.execute()
        tick += 1
    conn.send(published)


# -- orchestration -------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    deliveries: float = 0.0
    expected: float = 0.0
    lost: int = 0
    missed: int = 0
    lat: list[float] = field(default_factory=list)
    cpu: float = 0.0
    rss: int = 0
    kb_per_conn: float = 0.0
    gc: list[tuple[float, int, float]] = field(default_factory=list)
    load: float = 0.0
    client_cpu: float = 0.0
    other: dict[str, int] = field(default_factory=dict)


def gc_summary(pauses: list[float]) -> str:
    return f"{len(pauses)}, {max(pauses) * 1000:.1f}" if pauses else "0"


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def pinned(cmd: list[str], core: int) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(core), *cmd] if taskset and os.cpu_count() != 1 else cmd


def wait_serving(proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        for line in text.splitlines():
            if "serving on http://" in line:
                return line.split("serving on ")[1].split()[0].replace("localhost", "127.0.0.1")
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"the server did not start; its output:\n{log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def server(target: str, args: argparse.Namespace, redis_url: str, tmp: Path) -> Iterator[Any]:
    log_path = tmp / f"{target}.log"
    gc_log = tmp / f"{target}.gc"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "PYTHONUNBUFFERED": "1",
        "BENCH_GC_LOG": str(gc_log),
        "LIVEDATA_ADMIN_TOKEN": BENCH_TOKEN,
        "LIVEDATA_LIVE_PER_USER": str(args.clients + 100),
        "BENCH_GC_THRESHOLD": args.gc_threshold or "",
    }
    if target == "before":
        env["PYTHONPATH"] = env["BENCH_SRC"] = str(Path(args.before).resolve() / "src")
    if target in ("livedata", "before"):
        cmd = [
            sys.executable,
            __file__,
            "--gateway",
            "serve",
            "--role",
            "gateway",
            "--port",
            "0",
            "--pubsub",
            redis_url,
            "--data-dir",
            str(tmp / "data"),
            "--seed-demo",
            str(args.machines),
            "--log-level",
            "warning",
        ]
    else:
        from tests.servers import free_port

        cmd = [sys.executable, __file__, "--serve-baseline", str(free_port()), redis_url]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            pinned(cmd, 0), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        url = wait_serving(proc, log_path)
        yield proc, url.replace("http://", "ws://"), gc_log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def start_clients(
    worker: Any, url: str, targets: list[str], procs: int
) -> tuple[list[Connection], list[Any]]:
    """``procs`` processes of ``worker`` on the clients' core, sharing ``targets``: the
    pipes to them (each first sends ``("connected", n)``) and the processes."""
    ctx = mp.get_context("spawn")
    pipes, workers = [], []
    for k in range(procs):
        parent, child = ctx.Pipe()
        w = ctx.Process(target=worker, args=(url, targets[k::procs], child))
        w.start()
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setaffinity(w.pid, {1 % (os.cpu_count() or 1)})
        pipes.append(parent)
        workers.append(w)
    return pipes, workers


def stop_clients(pipes: list[Connection], workers: list[Any]) -> None:
    for p in pipes:
        with contextlib.suppress(OSError, BrokenPipeError):
            p.send(("stop",))
    for w in workers:
        w.join(5)
        if w.is_alive():
            w.kill()
            w.join()


def run_target(
    target: str,
    args: argparse.Namespace,
    redis_url: str,
    tmp: Path,
    *,
    name: str | None = None,
    worker: Any = None,
    http: bool = False,
    publish: Any = None,
    expected: Any = None,
) -> Result:
    """One server under load: ``worker`` clients (default :func:`client_worker`; ``http``:
    they take an http:// URL), ``publish`` (default :func:`publisher`) feeding Redis;
    ``expected(published, per_machine, w0, w1)`` is how many deliveries the window should
    have (default: one per published message per client of its machine).  A worker's
    report may count ``received`` (else each latency is one) and ``bytes``."""
    result = Result(name or target)
    with server(target, args, redis_url, tmp) as (proc, url, gc_log):
        ps = psutil.Process(proc.pid)
        if target in ("livedata", "before"):  # the python process under taskset
            ps = next((c for c in [ps, *ps.children(recursive=True)] if "python" in c.name()), ps)
        time.sleep(1.0)
        rss_idle = ps.memory_info().rss
        targets = [chassis(i % args.machines) for i in range(args.clients)]
        ctx = mp.get_context("spawn")
        pipes, workers = start_clients(
            worker or (lean_client_worker if args.client_kind == "lean" else client_worker),
            url.replace("ws://", "http://") if http else url,
            targets,
            args.client_procs,
        )
        try:
            connected = sum(p.recv()[1] for p in pipes)
            time.sleep(1.0)
            result.kb_per_conn = (ps.memory_info().rss - rss_idle) / 1024 / max(1, connected)
            print(f"  {result.name}: {connected} clients connected", flush=True)
            pub_parent, pub_child = ctx.Pipe()
            seconds = args.warmup + args.window
            pub = ctx.Process(
                target=publish or publisher,
                args=(redis_url, args.machines, args.rate, seconds, pub_child),
            )
            pub.start()
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setaffinity(pub.pid, {1 % (os.cpu_count() or 1)})
            time.sleep(args.warmup)
            w0 = time.time()
            w1 = w0 + args.window
            for p in pipes:
                p.send(("window", w0, w1))
            cpu0 = ps.cpu_times()
            client_ps = [psutil.Process(w.pid) for w in workers]
            client_cpu0 = [sum(c.cpu_times()[:2]) for c in client_ps]
            spy = None
            if getattr(args, "profile", 0) and target in ("livedata", "before"):
                from bench_cluster import start_profile  # the same sampling and summary

                spy = start_profile(ps.pid, min(args.profile, args.window), tmp / "profile.txt")
                if spy is None:
                    print("  (py-spy not installed: no profile)")
            rss_max = 0
            while time.time() < w1:
                rss_max = max(rss_max, ps.memory_info().rss)
                time.sleep(0.5)
            cpu1 = ps.cpu_times()
            result.client_cpu = (
                100
                * sum(
                    sum(c.cpu_times()[:2]) - t for c, t in zip(client_ps, client_cpu0, strict=True)
                )
                / args.window
            )
            result.load = os.getloadavg()[0]
            result.cpu = 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / args.window
            result.rss = rss_max
            published: list[tuple[str, float]] = pub_parent.recv()
            pub.join(10)
            time.sleep(GRACE_S)
            per_machine = Counter(targets)
            if expected is None:
                result.expected = sum(per_machine[c] for c, ts in published if w0 <= ts < w1)
            else:
                result.expected = expected(published, per_machine, w0, w1)
            lat: list[float] = []
            received = 0
            for p in pipes:
                p.send(("report",))
                stats, raw = p.recv()
                lat.extend(array("d", raw))
                received += stats.pop("received", len(raw))
                if "bytes" in stats:
                    result.other["bytes/s"] = result.other.get("bytes/s", 0) + int(
                        stats.pop("bytes") / args.window
                    )
                result.missed += stats.pop("missed", 0)
                for k, v in stats.items():
                    if k.startswith(("other", "disconnected")):
                        result.other[k] = result.other.get(k, 0) + v
            lat.sort()
            result.lat = lat
            result.deliveries = received / args.window
            result.lost = max(0, int(result.expected) - received)
            if spy is not None:
                from bench_cluster import summarise_profile

                spy.wait(args.profile + 30)
                print("\n".join(summarise_profile(target, tmp / "profile.txt", args.profile)))
        finally:
            stop_clients(pipes, workers)
        if gc_log.exists():
            for line in gc_log.read_text().splitlines():
                if line.startswith("#"):
                    print(f"  {target}: {line[2:]}")
                    continue
                at, gen, took = line.split()
                if w0 <= float(at) <= w1:
                    result.gc.append((float(at), int(gen), float(took)))
    return result


def report(results: list[Result], args: argparse.Namespace) -> None:
    base = next((r for r in results if r.name == "baseline"), None)
    cols = [r.name for r in results] + (
        [f"{r.name}/baseline" for r in results if r is not base] if base else []
    )
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Any, ratio: bool = True) -> None:
        cells = [fn(r) for r in results]
        if base is not None:
            for r in results:
                if r is base:
                    continue
                try:
                    num = float(fn(r).split()[0].replace(",", ""))
                    den = float(fn(base).split()[0].replace(",", ""))
                    cells.append(f"{num / den:.2f}×" if ratio and den else "")
                except ValueError:
                    cells.append("")
        rows.append((label, cells))

    expected_rate = args.clients * args.rate
    row(f"deliveries/s (expected {expected_rate:,.0f})", lambda r: f"{r.deliveries:,.0f}")
    row("lost (of window's expected)", lambda r: f"{r.lost:,} of {r.expected:,.0f}", ratio=False)
    row("missed (server drops)", lambda r: f"{r.missed:,}", ratio=False)
    row("latency p50 ms", lambda r: f"{pct(r.lat, 0.50):.2f}")
    row("latency p99 ms", lambda r: f"{pct(r.lat, 0.99):.2f}")
    row("latency max ms", lambda r: f"{(r.lat[-1] * 1000 if r.lat else float('nan')):.2f}")
    row("server CPU % (one core)", lambda r: f"{r.cpu:.1f}")
    # per delivery: comparable when a busy machine starves the clients and not all is delivered
    row("server CPU µs per delivery", lambda r: f"{r.cpu * 1e4 / max(r.deliveries, 1):.2f}")
    row("client processes CPU % (sum)", lambda r: f"{r.client_cpu:.1f}", ratio=False)
    row("load average (1 min) at window end", lambda r: f"{r.load:.2f}", ratio=False)
    row("server RSS MiB (max)", lambda r: f"{r.rss / 2**20:.1f}")
    row("KB per idle connection", lambda r: f"{r.kb_per_conn:.1f}")
    for gen in (0, 1, 2):
        row(
            f"GC gen {gen} pauses >= 1 ms CPU: count, max ms",
            lambda r, gen=gen: gc_summary([g[2] for g in r.gc if g[1] == gen]),
            ratio=False,
        )
    row("GC total CPU ms in window", lambda r: f"{sum(g[2] for g in r.gc) * 1000:.1f}", ratio=False)
    width = max(len(label) for label, _ in rows)
    widths = [max(len(c), *(len(cells[i]) for _, cells in rows)) for i, c in enumerate(cols)]
    print()
    print(" " * width + "  " + "  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True)))
    for label, cells in rows:
        print(
            label.ljust(width)
            + "  "
            + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        )
    for r in results:
        if r.other:
            print(f"  {r.name}: other messages/events: {r.other}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per machine per second")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--client-kind",
        choices=("lean", "picows"),
        default="lean",
        help="lean: raw sockets that count frames in C and time the first frame of each read "
        "(for the ceiling); picows: a picows client that parses every frame",
    )
    parser.add_argument("--targets", default="livedata,baseline")
    parser.add_argument("--profile", type=float, default=0.0, metavar="S")
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="a checkout of earlier code (e.g. `git archive main | tar -x -C DIR`): the target "
        "`before` runs its gateway, for before/after in one run",
    )
    parser.add_argument(
        "--gc-threshold",
        metavar="G0,G1,G2",
        help="gc.set_threshold for the livedata gateway (experiment; default: the server's)",
    )
    args = parser.parse_args()
    from tests.servers.redis import start_redis

    tmp = Path(tempfile.mkdtemp(prefix="bench_fanout_"))
    redis = None
    try:
        redis = start_redis(tmp / "redis")
        print(
            f"{args.clients} clients on {args.machines} machines at {args.rate:g} Hz "
            f"({args.clients * args.rate:,.0f} deliveries/s expected), {args.window:g} s window, "
            f"53 fields per message, 3 per client; servers on core 0, clients and publisher on core 1",
            flush=True,
        )
        results = [run_target(t, args, redis.url, tmp) for t in args.targets.split(",")]
        report(results, args)
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--gateway":
        run_gateway_with_gc_log()
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-baseline":
        serve_baseline(int(sys.argv[2]), sys.argv[3])
    else:
        main()
