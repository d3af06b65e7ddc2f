"""What an SSE watch or Socket.IO client costs next to a live WebSocket client.

The setup of :mod:`bench_fanout` (a Redis publisher → the gateway role alone, pinned to
one core → lean clients in other processes on the other core), run once per
``--transports`` entry against each ``--targets`` gateway (``livedata``: this checkout;
``before``: the code of ``--before DIR``, e.g. ``git archive main | tar -x -C DIR``):

- ``ws``: the live WebSocket, each client asking 3 fields of one machine (as
  :mod:`bench_fanout`);
- ``sse``: ``GET /db/watch/vehicle_can?tag=WL-….speed&tag=….engine_rpm&tag=….brake_status
  &period=1s`` over a raw socket: per period, the newest value of each of the 3 tags;
- ``sio``: an Engine.IO v4 WebSocket client (picows, no polling) sending
  ``subscribe-device {deviceId, fields: [the 3]}``: one ``device-update`` per field per
  reading.  Every Socket.IO client of the organisation also gets ``sensor-data`` (one
  per machine per second, the server's default) and ``dashboard:update`` (every
  machine, every second): counted under "other".

Printed per target and transport: deliveries/s (WebSocket messages, SSE events,
``device-update`` events), lost (WebSocket and Socket.IO: of the window's expected;
SSE: expected events are 3 per client per period), latency p50/p99 (receipt minus the
publisher's time; for SSE that includes the wait for the period, up to 1 s by design),
server CPU %, RSS, KB per idle connection, bytes/s received, and each transport's
ratios to ``ws`` of the same target (CPU per delivery, KB per connection).

    python bench/bench_transports.py                      # 500 clients, 20 machines × 10 Hz
    python bench/bench_transports.py --before /tmp/main --targets before,livedata

Prints figures only; asserts nothing.  Every process it starts is stopped and the
temporary directory removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from array import array
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import orjson
import picows

import bench_fanout as bf
from livedata.gateway.protocol.sse import EventParser

TAGS = bf.CLIENT_FIELDS


def sse_path(chassis_id: str) -> str:
    query = urlencode(
        [("tag", f"{chassis_id}.{f}") for f in TAGS] + [("period", "1s"), ("timeformat", "ms")]
    )
    return f"/db/watch/{bf.MSG_TYPE}?{query}"


def sio_path() -> str:
    return "/socket.io/?EIO=4&transport=websocket"


class _Stats:
    def __init__(self, clients: int) -> None:
        self.lat = array("d")
        self.window = [0.0, 0.0]
        self.stats = Counter[str]()
        self.clients = clients
        self.settled = asyncio.Event()

    def note(self, what: str) -> None:
        """Count a connection's outcome; ``settled`` once every client has one."""
        self.stats[what] += 1
        if self.stats["connected"] + self.stats["other:refused"] >= self.clients:
            self.settled.set()

    async def wait_settled(self, conn: Connection) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), 30)
        conn.send(("connected", self.stats["connected"]))

    def got(self, ts_s: float, now: float) -> None:
        if self.window[0] <= ts_s < self.window[1]:
            self.stats["received"] += 1
            self.lat.append(now - ts_s)


async def _run_clients(connect: Any, targets: list[str], st: _Stats, conn: Connection) -> None:
    """``await connect(chassis_id)`` for each target (in bursts of 50), report how many
    connected, then answer the orchestrator's commands."""
    for i, chassis_id in enumerate(targets):
        await connect(chassis_id)
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    await st.wait_settled(conn)
    await _serve_commands(conn, st)


async def _serve_commands(conn: Connection, st: _Stats) -> None:
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command[0] == "window":
            st.window[0], st.window[1] = command[1], command[2]
            del st.lat[:]
            st.stats.pop("received", None)
            st.stats.pop("bytes", None)
        elif command[0] == "report":
            conn.send((dict(st.stats), st.lat.tobytes()))
        else:
            return


def sse_worker(url: str, targets: list[str], conn: Connection) -> None:
    """One SSE stream per entry of ``targets``: events counted and timed from their TIME
    (the record's, ms) to receipt, which includes waiting for the period (up to 1 s)."""
    st = _Stats(len(targets))
    host, port = urlsplit(url).hostname or "", urlsplit(url).port or 80

    class Stream(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = EventParser()
            self.head = True
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            now = time.time()
            st.stats["bytes"] += len(data)
            if self.head:
                self.buffer += data
                if b"\r\n\r\n" not in self.buffer:
                    return
                head, _, data = self.buffer.partition(b"\r\n\r\n")
                self.head = False
                if not head.startswith(b"HTTP/1.1 200"):
                    st.note("other:refused")
                    return
                st.note("connected")
            for event in self.parser.feed(_dechunk(data)):
                if event.event != "message":
                    st.stats[f"other:{event.event}"] += 1
                    continue
                st.got(orjson.loads(event.data)["TIME"] / 1000, now)

        def connection_lost(self, exc: Exception | None) -> None:
            st.stats["disconnected"] += 1

    async def connect(chassis_id: str) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(Stream, host, port)
        transport.write(
            f"GET {sse_path(chassis_id)} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {bf.BENCH_TOKEN}\r\n\r\n".encode()
        )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_clients(connect, targets, st, conn))


def _dechunk(data: bytes) -> bytes:
    """The payload of HTTP/1.1 chunks, assuming each ``data_received`` holds whole chunks
    (uvicorn writes one chunk per write; a split chunk only loses timing of one event)."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        try:
            size = int(data[pos:end], 16)
        except ValueError:
            return bytes(data)  # not at a chunk boundary: take it as payload
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


def sio_worker(url: str, targets: list[str], conn: Connection) -> None:
    """One Engine.IO v4 WebSocket (Socket.IO) client per entry of ``targets``."""
    st = _Stats(len(targets))
    text = picows.WSMsgType.TEXT

    class Client(picows.WSListener):
        def __init__(self, chassis_id: str) -> None:
            self.chassis_id = chassis_id

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            now = time.time()
            data = bf.text_of(transport, frame)
            if data is None:
                return
            st.stats["bytes"] += len(data)
            if data[:1] == b"0":  # Engine.IO open: connect the default namespace
                transport.send(text, b"40")
            elif data == b"2":  # ping
                transport.send(text, b"3")
            elif data[:2] == b"40":
                st.note("connected")
                request = {"deviceId": self.chassis_id, "fields": list(TAGS)}
                transport.send(text, b"420" + orjson.dumps(["subscribe-device", request]))
            elif data[:2] == b"42":
                name, body = orjson.loads(data[2:])[:2]
                if name == "device-update" and "sensorType" in body:
                    st.got(body["timestamp"] / 1000, now)
                else:
                    st.stats[f"other:{name}"] += 1
            elif data[:2] == b"44":
                st.note("other:refused")

        def on_ws_disconnected(self, transport: Any) -> None:
            st.stats["disconnected"] += 1

    async def connect(chassis_id: str) -> None:
        headers = {"Authorization": f"Bearer {bf.BENCH_TOKEN}"}
        await picows.ws_connect(lambda: Client(chassis_id), url + sio_path(), extra_headers=headers)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_clients(connect, targets, st, conn))


WORKERS = {"ws": bf.client_worker, "sse": sse_worker, "sio": sio_worker}


def publisher_ms(
    redis_url: str, machines: int, rate: float, seconds: float, conn: Connection
) -> None:
    """:func:`bench_fanout.publisher` with ``ts`` in milliseconds, as the distribute role
    stamps records: SSE's TIME and Socket.IO's ``timestamp`` are whole milliseconds of it
    (``ts`` in seconds would be cut to whole seconds)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    published: list[tuple[str, float]] = []
    seq = [0] * machines
    start = time.time()
    for tick in range(int(seconds * rate)):
        for m in range(machines):
            at = start + (tick + m / machines) / rate
            if (delay := at - time.time()) > 0:
                time.sleep(delay)
            seq[m] += 1
            now = time.time()
            values = {n: (seq[m] * 7 + j) % 1000 / 10 for j, n in enumerate(bf.ALL_FIELDS)}
            message = {"ts": int(now * 1000), "seq": seq[m], "epoch": "bench", "values": values}
            r.publish(bf.channel(bf.chassis(m)), orjson.dumps(message))
            published.append((bf.chassis(m), int(now * 1000) / 1000))
    conn.send(published)


def run(target: str, transport: str, args: argparse.Namespace, redis_url: str, tmp: Path) -> Any:
    """One gateway, one kind of client (:func:`bench_fanout.run_target`)."""

    def expected(published: Any, per_machine: Counter[str], w0: float, w1: float) -> float:
        if transport == "sse":  # 3 events per client per 1 s period
            return 3 * args.clients * args.window
        factor = 3 if transport == "sio" else 1
        return factor * sum(per_machine[c] for c, ts in published if w0 <= ts < w1)

    result = bf.run_target(
        target,
        args,
        redis_url,
        tmp,
        name=f"{target}:{transport}",
        worker=WORKERS[transport],
        http=transport == "sse",
        publish=bf.publisher if transport == "ws" else publisher_ms,
        expected=expected,
    )
    result.other.setdefault("bytes/s", 0)
    return result


def report(results: list[Any]) -> None:
    by_name = {r.name: r for r in results}
    print()
    header = (
        f"{'target:transport':<18}{'deliv/s':>10}{'lost':>16}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'CPU %':>8}{'RSS MiB':>9}{'KB/conn':>9}{'KB/s out':>10}"
        f"{'CPU/deliv ×ws':>15}{'KB/conn ×ws':>13}"
    )
    print(header)
    for r in results:
        target = r.name.split(":")[0]
        ws = by_name.get(f"{target}:ws")
        per = r.cpu / r.deliveries if r.deliveries else float("nan")
        ws_per = ws.cpu / ws.deliveries if ws is not None and ws.deliveries else float("nan")
        print(
            f"{r.name:<18}{r.deliveries:>10,.0f}{f'{r.lost:,}/{r.expected:,.0f}':>16}"
            f"{bf.pct(r.lat, 0.5):>10.1f}{bf.pct(r.lat, 0.99):>10.1f}{r.cpu:>8.1f}"
            f"{r.rss / 2**20:>9.1f}{r.kb_per_conn:>9.1f}{r.other['bytes/s'] / 1024:>10.0f}"
            f"{per / ws_per if ws is not None else float('nan'):>15.2f}"
            f"{r.kb_per_conn / ws.kb_per_conn if ws is not None and ws.kb_per_conn else float('nan'):>13.2f}"
        )
    for r in results:
        extra = {k: v for k, v in r.other.items() if k != "bytes/s"}
        if extra:
            print(f"  {r.name}: other events/messages: {extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--machines", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per machine per second")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--targets", default="livedata")
    parser.add_argument("--transports", default="ws,sse,sio")
    parser.add_argument(
        "--before", metavar="DIR", help="a checkout of earlier code (target before)"
    )
    parser.add_argument(
        "--profile", type=float, default=0.0, metavar="S", help="py-spy the gateway for S s"
    )
    args = parser.parse_args()
    args.gc_threshold = None  # bench_fanout.server reads it
    from tests.servers.redis import start_redis

    tmp = Path(tempfile.mkdtemp(prefix="bench_transports_"))
    redis = None
    try:
        redis = start_redis(tmp / "redis")
        print(
            f"{args.clients} clients on {args.machines} machines at {args.rate:g} Hz, "
            f"{args.window:g} s window; gateway on core 0, clients and publisher on core 1",
            flush=True,
        )
        results = [
            run(target, transport, args, redis.url, tmp)
            for target in args.targets.split(",")
            for transport in args.transports.split(",")
        ]
        report(results)
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
