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

3. ``--clients`` WebSocket clients on the other core, spread evenly over ``--machines``
   machines, each asking 3 of the message's 53 fields (the 15 ``vehicle_can`` fields of
   the demo and 38 more).  ``--client-kind c`` (the default): ``bench/fanout_client.c``,
   compiled with the system ``cc`` into the temporary directory, all clients in one
   epoll process (:class:`CClients`; ``--client-procs`` for more): every frame parsed
   and timed against the socket's kernel receive timestamp (``SO_TIMESTAMPNS``), so the
   clients' own CPU and scheduling stay out of the latency; ``lean``: Python raw sockets
   that count frames with ``bytes.count`` and time the first frame of each read
   (:func:`lean_client_worker`); ``picows``: picows clients that parse every frame;
4. a publisher process (other core) that publishes each machine's message at
   ``--rate`` Hz on its live channel (``live-stream/demo/consumer-WL-0001/vehicle_can``,
   the distribute role's message shape: ``ts``, ``seq``, ``epoch``, ``values``), the
   machines spread evenly over the period (10 pipelines per period); after ``--warmup``
   seconds, ``--window`` seconds are measured.

Printed per target: deliveries/s (expected: published messages × clients of that
machine), lost (expected minus received, for messages published in the window, 2 s
of grace after it), latency p50/p99/p99.9/max from the publisher's ``ts`` (its
``time.time()``, CLOCK_REALTIME) to the socket's receive timestamp (C clients; also
to the client's read) or to the client's parse (Python clients); the server's own hops
(``received``: parsed from Redis, ``written``: its loop turn's writes done); how long
the server, clients, publisher and Redis waited for a core (``/proc/…/schedstat``);
server CPU % (of one core, user+system; and per delivery), the client processes' CPU %
and frames per read, the load average, the clock check (C clients: Python's
``time.time()`` sent down a pipe against the C process's CLOCK_REALTIME on receipt, and
CLOCK_REALTIME's drift against CLOCK_MONOTONIC over the window), RSS, KB per connected
idle client (RSS with clients and no traffic minus RSS before them), GC pauses of the
server (``gc.callbacks``, CPU time of each collection: count and longest per
generation, total) and the ratios to the baseline.

On a machine shared with other work the latencies are mostly waits for a core:
``--nice -20`` runs everything of the measurement at that niceness, and its sessions'
autogroups too (as root); ``--rt`` runs the servers, publisher and Redis SCHED_FIFO
(short runs only: a saturated server leaves other work 5 % of its core) and the clients
at niceness -20; ``--client-spin`` makes the C clients poll instead of sleeping, so the
server's writes never pay for waking them (on loopback the writer does; a whole core).

``--profile S`` runs ``py-spy record`` on the livedata gateway for S seconds in the
window and prints the top self and inclusive frames.

    python bench/bench_fanout.py                                  # 1,000 clients, 10k/s, ~1 min
    python bench/bench_fanout.py --clients 5000 --machines 50 --rate 20   # 100k/s
    python bench/bench_fanout.py --clients 5000 --machines 50 --rate 50   # the ceiling: 250k/s
    python bench/bench_fanout.py --clients 10000 --rate 1 --window 5      # idle KB/conn
    python bench/bench_fanout.py --rt --client-spin …   # the goals, on a shared machine
    python bench/bench_fanout.py --profile 10 --targets livedata
    python bench/bench_fanout.py --before /tmp/main --targets before,livedata,baseline

Prints figures only; asserts nothing.  Every process it starts is stopped and the
temporary directory removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import gc
import math
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


class HopLog:
    """``hop ts lag`` lines (seconds) of one server process, to ``BENCH_HOPS``: when each
    channel message got to ``received`` (parsed by the server: the publisher, Redis and the
    server's wait to read it) and ``written`` (written to every client socket)."""

    def __init__(self) -> None:
        self.out = open(os.environ["BENCH_HOPS"], "w", buffering=1 << 16)  # noqa: SIM115
        self.turn: list[float] = []

    def note(self, hop: str, ts: float) -> None:
        self.out.write(f"{hop} {ts!r} {time.time() - ts:.6f}\n")


def install_gateway_hops() -> None:
    """Wrap the gateway's fan-out (:mod:`livedata.gateway.fanout`) to note its hops: a
    message is ``received`` when ``_parse`` returns it and ``written`` when the loop turn
    that delivered it has written what it gathered (``Fanout._end_turn`` returned; the
    first frame of each client in a turn goes out before).  A tree without these
    functions is measured without hops."""
    try:
        from livedata.gateway import fanout
    except ImportError:
        return
    if not hasattr(fanout, "_parse") or not hasattr(fanout.Fanout, "_end_turn"):
        return
    hops = HopLog()
    parse, end_turn = fanout._parse, fanout.Fanout._end_turn

    def noted_parse(data: Any) -> Any:
        parsed = parse(data)
        if parsed is not None and isinstance(ts := parsed[1].get("ts"), float):
            hops.note("received", ts)
            hops.turn.append(ts)
        return parsed

    def noted_end_turn(self: Any) -> None:
        end_turn(self)
        turn, hops.turn = hops.turn, []
        for ts in turn:
            hops.note("written", ts)

    fanout._parse = noted_parse
    fanout.Fanout._end_turn = noted_end_turn
    atexit.register(hops.out.close)


def run_gateway_with_gc_log() -> None:
    """``python bench_fanout.py --gateway ARGS…``: the livedata CLI with GC pauses and
    hops (:func:`install_gateway_hops`) recorded."""
    record_gc_pauses(os.environ["BENCH_GC_LOG"])
    install_gateway_hops()
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
        hops = HopLog()
        async for msg in ps.listen():
            message = orjson.loads(msg["data"])
            hops.note("received", message["ts"])
            values = message["values"]
            head = {"ts": message["ts"], "seq": message["seq"], "epoch": message["epoch"]}
            for key, members in groups.get(msg["channel"].decode(), {}).items():
                out = orjson.dumps(
                    {"type": "LIVE_DATA", "payload": {k: values[k] for k in key}, **head}
                )
                for member in members:
                    member.transport.send(text, out)
            hops.note("written", message["ts"])
        hops.out.close()
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


# -- the C clients (bench/fanout_client.c) ----------------------------------------------------------

C_SOURCE = Path(__file__).resolve().parent / "fanout_client.c"
FINE_BINS, COARSE_BINS = 100_000, 99_000  # as in fanout_client.c
NBINS = FINE_BINS + COARSE_BINS + 1


def build_c_client(tmp: Path) -> Path:
    """Compile ``fanout_client.c`` with the system C compiler into ``tmp``."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("no C compiler (cc/gcc) for --client-kind c: use --client-kind lean")
    binary = tmp / "fanout_client"
    subprocess.run([cc, "-O2", "-o", str(binary), str(C_SOURCE)], check=True)
    return binary


def merged(total: array[int] | None, hist: array[int]) -> array[int]:
    return hist if total is None else array("I", map(sum, zip(total, hist, strict=True)))


def bin_us(i: int) -> float:
    """The middle of histogram bin ``i`` of ``fanout_client.c``, in µs."""
    if i < FINE_BINS:
        return i + 0.5
    return FINE_BINS + (i - FINE_BINS) * 100 + 50.0


class CClients:
    """One ``fanout_client`` process with its share of the clients, pinned to ``core``.

    Seen by :func:`run_target` as a client worker's pipe (``send``/``recv`` of the same
    commands and answers) and process (``pid``, ``join``, ``kill``, ``is_alive``)."""

    def __init__(
        self, binary: Path, url: str, targets: list[str], tmp: Path, core: int, spin: bool
    ) -> None:
        parts = urlsplit(url)
        init = orjson.dumps({"type": "INIT_FIELD_LIST", "payload": list(CLIENT_FIELDS)}).decode()
        self.proc = subprocess.Popen(
            pinned(
                [str(binary), parts.hostname or "127.0.0.1", str(parts.port), BENCH_TOKEN, init]
                + (["spin"] if spin else []),
                core,
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        renice(self.pid, session=True)
        self.report_path = tmp / f"hist-{self.pid}"
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.stdin.write("".join(f"path {live_path(c)}\n" for c in targets) + "go\n")
        self.stdin.flush()

    def _ask(self, line: str) -> str:
        self.stdin.write(line + "\n")
        self.stdin.flush()
        return self.stdout.readline().strip()

    def clock_offsets(self, n: int = 50) -> list[float]:
        """``n`` × (this process's CLOCK_REALTIME on receipt minus Python's ``time.time()``
        just before writing it to the pipe), seconds: the timestamp method's floor."""
        return [float(self._ask(f"clock {time.time():.9f}").split()[1]) for _ in range(n)]

    def send(self, command: tuple[Any, ...]) -> None:
        if command[0] == "window":
            self.stdin.write(f"window {command[1]:.6f} {command[2]:.6f}\n")
        elif command[0] == "report":
            self.stdin.write(f"report {self.report_path}\n")
        else:
            self.stdin.write("stop\n")
        self.stdin.flush()

    def recv(self) -> tuple[Any, ...]:
        line = self.stdout.readline().split()
        if not line:
            raise RuntimeError(f"fanout_client exited ({self.proc.poll()})")
        if line[0] == "connected":
            if int(line[3]):
                print(f"  {line[3]} clients failed to connect: {' '.join(line[4:])}", flush=True)
            return ("connected", int(line[1]))
        stats: dict[str, Any] = {}
        for item in line[1:]:
            key, _, value = item.rpartition("=")
            stats[key] = float(value) if key == "drift_us" else int(value)
        both = array("I", self.report_path.read_bytes())
        stats["hist"], stats["hist_read"] = both[:NBINS], both[NBINS:]
        return stats, b""

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()


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
            values = []
            for m in members:  # made before the timestamp: only encoding and sending follow it
                seq[m] += 1
                values.append(
                    {name: (seq[m] * 7 + j) % 1000 / 10 for j, name in enumerate(ALL_FIELDS)}
                )
            now = time.time()
            for m, vals in zip(members, values, strict=True):
                data = orjson.dumps({"ts": now, "seq": seq[m], "epoch": "bench", "values": vals})
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
    client_user: float = 0.0
    cpu_user: float = 0.0
    write_calls: int = 0  # the server's write system calls in the window
    waits: dict[str, float] = field(default_factory=dict)  # run-queue wait, ms per s
    other: dict[str, int] = field(default_factory=dict)
    # the C clients' latency histograms (else ``lat``): to the socket's receive timestamp,
    # and to the time the client read it
    hist: array[int] | None = None
    hist_read: array[int] | None = None
    max_us: int = 0
    max_read_us: int = 0
    no_stamp: int = 0
    frames: int = 0  # WebSocket text frames the C clients got in the window, in ``reads``
    reads: int = 0
    drift_us: float = 0.0
    clock_us: list[float] = field(default_factory=list)
    hops: dict[str, list[float]] = field(default_factory=dict)  # hop: sorted lags (s)

    def ms(self, q: float, read: bool = False) -> float:
        """Latency quantile ``q`` (1.0: the maximum), ms; ``read``: at the client's read
        (the C clients; the others time at read anyway)."""
        hist = self.hist_read if read else self.hist
        if hist is None:
            return self.lat[-1] * 1000 if q >= 1 and self.lat else pct(self.lat, q)
        if q >= 1:
            return (self.max_read_us if read else self.max_us) / 1000 if sum(hist) else math.nan
        rank = int(q * sum(hist))
        seen = 0
        for i, n in enumerate(hist):
            seen += n
            if seen > rank:
                return bin_us(i) / 1000
        return math.nan


def gc_summary(pauses: list[float]) -> str:
    return f"{len(pauses)}, {max(pauses) * 1000:.1f}" if pauses else "0"


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


NICE = [0]  # --nice: the niceness of every process of the measurement
RT = [False]  # --rt: SCHED_FIFO instead
REDIS_PID = [0]


def pinned(cmd: list[str], core: int) -> list[str]:
    """``cmd`` on ``core`` (taskset) at the bench's niceness (``--nice``)."""
    taskset = shutil.which("taskset")
    if taskset and os.cpu_count() != 1:
        cmd = [taskset, "-c", str(core), *cmd]
    if RT[0] and core == 0:
        return ["chrt", "-f", "1", *cmd]
    return ["nice", "-n", str(NICE[0]), *cmd] if NICE[0] else cmd


def run_delay(pid: int) -> float:
    """Seconds the threads of ``pid`` have waited on a run queue (``/proc/…/schedstat``):
    time it was ready to run and a core was busy with something else."""
    total = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
    return total / 1e9


def write_calls(pid: int) -> int:
    """The write system calls ``pid`` made so far (``syscw`` of ``/proc/…/io``)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        lines = Path(f"/proc/{pid}/io").read_text().splitlines()
        return int(next(line for line in lines if line.startswith("syscw:")).split()[1])
    return 0


def renice(pid: int, session: bool = False, rt: bool = False) -> None:
    """Every thread of ``pid`` at the bench's niceness (on Linux niceness is per thread);
    ``session``: its session's autogroup too (``pid`` leads a session of its own).

    With ``kernel.sched_autogroup_enabled`` the scheduler first shares a core between
    sessions and only then by niceness within one, so a niceness alone does not help
    against other sessions' work.  ``rt`` with ``--rt``: every thread SCHED_FIFO
    priority 1 instead."""
    if rt and RT[0]:
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setscheduler(int(task), os.SCHED_FIFO, os.sched_param(1))
        return
    if not NICE[0]:
        return
    if session:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(NICE[0]))
    threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")] if os.path.isdir("/proc") else [pid]
    for tid in threads:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, NICE[0])


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
        "BENCH_HOPS": str(tmp / f"{target}.hops"),
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
    renice(proc.pid, session=True, rt=True)
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
        renice(w.pid or 0)
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
        kind = getattr(args, "client_kind", "picows")
        procs = args.client_procs or (1 if kind == "c" and worker is None else 2)
        if worker is None and kind == "c":
            pipes: list[Any] = []
            workers: list[Any] = []
            for k in range(procs):
                c_clients = CClients(
                    args.c_binary,
                    url,
                    targets[k::procs],
                    tmp,
                    1 % (os.cpu_count() or 1),
                    args.client_spin,
                )
                pipes.append(c_clients)
                workers.append(c_clients)
        else:
            pipes, workers = start_clients(
                worker or (lean_client_worker if kind == "lean" else client_worker),
                url.replace("ws://", "http://") if http else url,
                targets,
                procs,
            )
        try:
            connected = sum(p.recv()[1] for p in pipes)
            time.sleep(1.0)
            result.kb_per_conn = (ps.memory_info().rss - rss_idle) / 1024 / max(1, connected)
            print(f"  {result.name}: {connected} clients connected", flush=True)
            for c_clients in pipes:
                if isinstance(c_clients, CClients):
                    result.clock_us.extend(1e6 * d for d in c_clients.clock_offsets())
            pub_parent, pub_child = ctx.Pipe()
            seconds = args.warmup + args.window
            pub = ctx.Process(
                target=publish or publisher,
                args=(redis_url, args.machines, args.rate, seconds, pub_child),
            )
            pub.start()
            with contextlib.suppress(OSError, AttributeError):
                os.sched_setaffinity(pub.pid, {1 % (os.cpu_count() or 1)})
            renice(pub.pid or 0, rt=True)
            time.sleep(args.warmup)
            w0 = time.time()
            w1 = w0 + args.window
            for p in pipes:
                p.send(("window", w0, w1))
            cpu0 = ps.cpu_times()
            syscw0 = write_calls(ps.pid)
            waited = {
                "server": [ps.pid],
                "clients": [w.pid for w in workers],
                "publisher": [pub.pid],
                "redis": [REDIS_PID[0]],
            }
            wait0 = {k: sum(run_delay(p) for p in pids) for k, pids in waited.items()}
            client_ps = [psutil.Process(w.pid) for w in workers]
            client_times0 = [c.cpu_times() for c in client_ps]
            client_cpu0 = [sum(t[:2]) for t in client_times0]
            client_user0 = [t.user for t in client_times0]
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
            result.write_calls = write_calls(ps.pid) - syscw0
            result.waits = {
                k: 1000 * (sum(run_delay(p) for p in pids) - wait0[k]) / args.window
                for k, pids in waited.items()
            }
            client_cpu1 = [c.cpu_times() for c in client_ps]
            result.client_cpu = (
                100
                * sum(sum(c[:2]) - t for c, t in zip(client_cpu1, client_cpu0, strict=True))
                / args.window
            )
            result.client_user = (
                100
                * sum(c.user - t for c, t in zip(client_cpu1, client_user0, strict=True))
                / args.window
            )
            result.load = os.getloadavg()[0]
            result.cpu = 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / args.window
            result.cpu_user = 100 * (cpu1.user - cpu0.user) / args.window
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
                if "hist" in stats:
                    result.hist = merged(result.hist, stats.pop("hist"))
                    result.hist_read = merged(result.hist_read, stats.pop("hist_read"))
                    result.max_us = max(result.max_us, stats.pop("max_us"))
                    result.max_read_us = max(result.max_read_us, stats.pop("max_read_us"))
                    result.no_stamp += stats.pop("no_stamp")
                    result.drift_us = max(result.drift_us, stats.pop("drift_us"), key=abs)
                    result.frames += stats.pop("frames")
                    result.reads += stats.pop("reads")
                received += stats.pop("received", len(raw))
                if "bytes" in stats:
                    result.other["bytes/s"] = result.other.get("bytes/s", 0) + int(
                        stats.pop("bytes") / args.window
                    )
                result.missed += stats.pop("missed", 0)
                for k, v in stats.items():
                    if k.startswith(("other", "disconnected")) and v:
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
    hop_log = tmp / f"{target}.hops"  # complete once the server stopped
    if hop_log.exists():
        for line in hop_log.read_text().splitlines():
            hop, ts, lag = line.split()
            if w0 <= float(ts) < w1:
                result.hops.setdefault(hop, []).append(float(lag))
        for lags in result.hops.values():
            lags.sort()
        hop_log.unlink()
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
    kernel = any(r.hist is not None for r in results)
    at = " (to socket receive)" if kernel else ""
    row(f"latency p50 ms{at}", lambda r: f"{r.ms(0.50):.2f}")
    row(f"latency p99 ms{at}", lambda r: f"{r.ms(0.99):.2f}")
    row(f"latency p99.9 ms{at}", lambda r: f"{r.ms(0.999):.2f}")
    row(f"latency max ms{at}", lambda r: f"{r.ms(1.0):.2f}")
    if kernel:
        row("latency p50 ms at the client's read", lambda r: f"{r.ms(0.5, read=True):.2f}")
        row("latency p99 ms at the client's read", lambda r: f"{r.ms(0.99, read=True):.2f}")
        row("latency max ms at the client's read", lambda r: f"{r.ms(1.0, read=True):.2f}")
    for hop in ("received", "written"):
        if any(hop in r.hops for r in results):
            row(
                f"server: {hop} p50/p99/max ms after ts",
                lambda r, hop=hop: (
                    "/".join(
                        f"{pct(r.hops[hop], q) if q < 1 else r.hops[hop][-1] * 1000:.2f}"
                        for q in (0.5, 0.99, 1.0)
                    )
                    if r.hops.get(hop)
                    else ""
                ),
                ratio=False,
            )
    if any(r.waits for r in results):
        row(
            "waited for a core, ms per s: server/clients/publisher/redis",
            lambda r: "/".join(
                f"{r.waits.get(k, math.nan):.0f}"
                for k in ("server", "clients", "publisher", "redis")
            ),
            ratio=False,
        )
    row("server CPU % (one core)", lambda r: f"{r.cpu:.1f}")
    # per delivery: comparable when a busy machine starves the clients and not all is delivered
    row(
        "server CPU % user+system",
        lambda r: f"{r.cpu_user:.1f}+{r.cpu - r.cpu_user:.1f}",
        ratio=False,
    )
    row(  # send(2) (picows) is not counted in syscw: only write(2) (uvloop's transports)
        "server write(2) calls per delivery",
        lambda r: (
            f"{r.write_calls / (r.deliveries * args.window):.3f}"
            if r.deliveries and r.write_calls
            else "(send)"
        ),
        ratio=False,
    )
    row("server CPU µs per delivery", lambda r: f"{r.cpu * 1e4 / max(r.deliveries, 1):.2f}")
    if any(r.reads for r in results):
        row(
            "clients: frames per read",
            lambda r: f"{r.frames / r.reads:.2f}" if r.reads else "",
            ratio=False,
        )
    row(
        "client processes CPU % (sum: user+system)",
        lambda r: f"{r.client_cpu:.1f}: {r.client_user:.1f}+{r.client_cpu - r.client_user:.1f}",
        ratio=False,
    )
    row("load average (1 min) at window end", lambda r: f"{r.load:.2f}", ratio=False)
    if any(r.clock_us for r in results):
        row(
            "clock floor µs: pipe time.time() → C, min/p50",
            lambda r: (
                f"{min(r.clock_us):.0f}/{sorted(r.clock_us)[len(r.clock_us) // 2]:.0f}"
                if r.clock_us
                else ""
            ),
            ratio=False,
        )
        row(
            "clock drift µs in window (REALTIME−MONOTONIC)",
            lambda r: f"{r.drift_us:.1f}",
            ratio=False,
        )
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
        if r.no_stamp:
            print(f"  {r.name}: {r.no_stamp} reads without a kernel timestamp (timed at read)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per machine per second")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument(
        "--client-procs", type=int, default=0, help="client processes (default: 1 for c, else 2)"
    )
    parser.add_argument(
        "--client-kind",
        choices=("c", "lean", "picows"),
        default="c",
        help="c: bench/fanout_client.c (compiled at run time with cc), epoll, every frame "
        "parsed and timed; lean: Python raw sockets that count frames with bytes.count and time "
        "the first frame of each read; picows: picows clients that parse every frame",
    )
    parser.add_argument("--targets", default="livedata,baseline")
    parser.add_argument(
        "--client-spin",
        action="store_true",
        help="the C clients poll instead of sleeping, so the server's writes never wake them "
        "(on loopback the writer pays the wake-up): a whole core",
    )
    parser.add_argument(
        "--rt",
        action="store_true",
        help="run the servers, publisher and Redis SCHED_FIFO (priority 1, as root), ahead of "
        "all other work of the machine, and the clients at --nice (default -20 then): short "
        "runs only, a saturated server then leaves others 5 %% of its core",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="run the servers, clients, publisher and Redis at niceness N (e.g. -20, as root): "
        "on a machine shared with other work, so what is measured is the server rather than "
        "its wait for a core",
    )
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
    if (args.rt or args.nice < 0) and os.geteuid() != 0:
        parser.error("--rt and a negative --nice need root")
    from tests.servers.redis import start_redis

    tmp = Path(tempfile.mkdtemp(prefix="bench_fanout_"))
    redis = None
    own_autogroup = None
    try:
        redis = start_redis(tmp / "redis")
        REDIS_PID[0] = redis.process.pid if redis.process is not None else 0
        RT[0] = args.rt
        NICE[0] = args.nice or (-20 if args.rt else 0)
        if NICE[0]:  # this process's session (publisher, Python clients) too
            with contextlib.suppress(OSError):
                own_autogroup = Path("/proc/self/autogroup").read_text().split()[-1]
                Path("/proc/self/autogroup").write_text(str(NICE[0]))
        renice(REDIS_PID[0], rt=True)
        if args.client_kind == "c":
            args.c_binary = build_c_client(tmp)
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
        if own_autogroup is not None:  # the session outlives the bench (a shell's)
            with contextlib.suppress(OSError):
                Path("/proc/self/autogroup").write_text(own_autogroup)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--gateway":
        run_gateway_with_gc_log()
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-baseline":
        serve_baseline(int(sys.argv[2]), sys.argv[3])
    else:
        main()
