"""The MQTT device link's receive path alone: CPU per message from Mosquitto to an ack.

Mosquitto is started as the tests start it (``max_queued_messages 1000000``).  For each
code under test (``--base SRC``: the ``src`` directory of the code before, e.g.
``git archive <commit> src | tar -x -C /tmp/base``; and this checkout) a persistent
session (``client_id``, ``shared=off``) is registered, then ``--messages`` ``vehicle_can``
messages of the simulated wheel loader (100 machines, pre-encoded as devices send them)
are published once at QoS 1, so every session has them queued.  Then each code runs in
a worker process of its own: it starts an :class:`MqttDeviceLink` on its session (default
``inflight`` 1000), takes the deliveries as ingest does (``batches`` where the link has
it, else ``inbound``) and acknowledges each at once, until it has them all.  Printed per
code and round: messages/s and process CPU µs per message (link start included), and the
ratio to the code before.  What ingest does with a message (the signals decoded from
the frames, the store) is not in it: this is the link's share, reading the payload into
frames (:func:`livedata.codec.decode`, which the link calls) included.

Run: ``python bench/bench_mqtt_link.py --before /work/main [--messages 20000 --rounds 2]``
(``--before TREE`` is ``--base TREE/src``).
Prints figures only; asserts nothing; stops the broker and its workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def worker(url: str, count: int, paced: bool = False) -> None:
    from livedata.devices.mqtt import MqttDeviceLink

    cpu0, wall0 = time.process_time(), time.perf_counter()
    link = MqttDeviceLink(url)
    await link.start()
    got = 0
    batches = 0
    if paced:  # measured from the first message on; the publisher starts once this is read
        print("ready", flush=True)
    if hasattr(link, "batches"):
        async for batch in link.batches(5_000):
            if paced and not got:
                cpu0, wall0 = time.process_time(), time.perf_counter()
            batches += 1
            for item in batch:
                if item.ack is not None:
                    await item.ack()
            got += len(batch)
            if got >= count:
                break
    else:
        async for item in link.inbound():
            if item.ack is not None:
                await item.ack()
            got += 1
            if got >= count:
                break
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    fast = getattr(link, "_fast", None)
    reads = getattr(fast, "reads", None)
    await asyncio.sleep(0.5)  # let the last PUBACKs go out
    await link.close()
    print(
        json.dumps({"messages": got, "cpu": cpu, "wall": wall, "batches": batches, "reads": reads})
    )


def payloads(count: int) -> list[tuple[str, bytes]]:
    from livedata.codec import encode
    from livedata.decode.can import CanDecoder
    from livedata.devices.mqtt import telemetry_topic
    from livedata.model import DeviceMessage, MsgType
    from livedata.sim.demo import DBC_PATH
    from livedata.sim.machine import Machine

    decoder = CanDecoder.from_dbc(DBC_PATH.read_text())
    machines = [Machine(f"M{n:03d}", decoder, seed=n) for n in range(100)]
    out: list[tuple[str, bytes]] = []
    ts = int(time.time() * 1000)
    while len(out) < count:
        ts += 1000
        for machine in machines:
            frames, _ = machine.step(ts)
            message = DeviceMessage(
                "bench", machine.chassis, MsgType.VEHICLE_CAN, ts, frames=tuple(frames)
            )
            out.append((telemetry_topic("bench", machine.chassis, "vehicle_can"), encode(message)))
    return out[:count]


async def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    import aiomqtt

    quiet = logging.getLogger("bench.publisher")  # not "N pending publish calls" each chunk
    quiet.setLevel(logging.ERROR)
    async with aiomqtt.Client(
        "127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5, logger=quiet
    ) as client:
        for start in range(0, len(messages), 500):
            await asyncio.gather(
                *(client.publish(t, p, qos=1) for t, p in messages[start : start + 500])
            )


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _varint(len(body)) + body


def publish_paced(port: int, messages: list[tuple[str, bytes]], rate: float) -> None:
    """Publish ``messages`` at QoS 1, ``rate`` a second in 10 ms steps (as a fleet spread
    over the second sends them), from one MQTT 5 connection written by hand: packets made
    up front, PUBACKs read and dropped, so the publisher keeps the rate at little CPU."""
    import socket

    sock = socket.create_connection(("127.0.0.1", port))
    name = f"bench-pub-{uuid.uuid4().hex[:6]}".encode()
    connect = b"\x00\x04MQTT\x05\x02\x00\x3c\x00" + len(name).to_bytes(2, "big") + name
    sock.sendall(_packet(0x10, connect))
    if sock.recv(64)[:1] != b"\x20":
        raise RuntimeError("no CONNACK from the broker")
    packets = []
    for n, (topic, payload) in enumerate(messages):
        raw = topic.encode()
        mid = n % 65535 + 1
        body = len(raw).to_bytes(2, "big") + raw + mid.to_bytes(2, "big") + b"\x00" + payload
        packets.append(_packet(0x32, body))
    sock.setblocking(False)
    step = max(1, round(rate / 100))
    start = time.monotonic()
    try:
        for n, at in enumerate(range(0, len(packets), step)):
            delay = start + n * step / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            data = b"".join(packets[at : at + step])
            while data:
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    time.sleep(0.001)
                    sent = 0
                data = data[sent:]
                try:
                    while sock.recv(65536):
                        pass
                except BlockingIOError:
                    pass
        time.sleep(0.5)
    finally:
        sock.close()


def run_paced(
    src: Path, url: str, port: int, messages: list[tuple[str, bytes]], rate: float
) -> dict:
    """A worker on ``src`` reading ``messages`` live while they are published at ``rate``."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", url, f"--messages={len(messages)}", "--paced"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the worker did not start")
        publish_paced(port, messages, rate)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return json.loads(out.strip().splitlines()[-1])


async def register(url: str) -> None:
    from livedata.devices.mqtt import MqttDeviceLink

    link = MqttDeviceLink(url)
    await link.start()
    await link.close()


def run_script(script: str, src: Path, *args: str) -> Any:
    """Run ``script args`` with ``src`` first on the path; the JSON of its last output line."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, script, *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_worker(src: Path, url: str, count: int) -> dict:
    return run_script(__file__, src, "--worker", url, f"--messages={count}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="src directory of the code before")
    parser.add_argument(
        "--before", type=Path, metavar="TREE", help="a checkout of the code before (its src/)"
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--rate",
        type=float,
        default=0,
        help="messages/s published while the link reads (0: all queued before it starts)",
    )
    parser.add_argument(
        "--options", default="", help="URL options of the code after only (e.g. inflight=1000)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--paced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        try:  # the event loop the roles run on by default (event_loop = auto)
            import uvloop
        except ImportError:
            asyncio.run(worker(args.worker, args.messages, args.paced))
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(worker(args.worker, args.messages, args.paced))
        return
    from tests.servers.mosquitto import start_mosquitto

    base = args.before / "src" if args.before else args.base
    codes = [("before", base)] if base else []
    codes.append(("after", ROOT / "src"))
    messages = payloads(args.messages)
    print(
        f"{len(messages)} vehicle_can messages, {sum(len(p) for _, p in messages) / len(messages):.0f} B each"
    )
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_mosquitto(Path(tmp), "max_queued_messages 1000000")
        try:
            results: dict[str, list[dict]] = {name: [] for name, _ in codes}
            for _ in range(args.rounds):
                urls = {
                    name: f"{broker.url}?shared=off&client_id=bench-{name}-{uuid.uuid4().hex[:6]}"
                    + (f"&{args.options}" if args.options and name == "after" else "")
                    for name, _ in codes
                }
                for url in urls.values():
                    if not args.rate:
                        asyncio.run(register(url))
                if args.rate:  # clean sessions, each subscribed while its messages come
                    for name, src in codes:
                        url = f"{broker.url}?shared=off" + (
                            f"&{args.options}" if args.options and name == "after" else ""
                        )
                        results[name].append(run_paced(src, url, broker.port, messages, args.rate))
                    continue
                asyncio.run(publish(broker.port, messages))
                for name, src in codes:
                    results[name].append(run_worker(src, urls[name], len(messages)))
        finally:
            broker.stop()
    best: dict[str, float] = {}
    for name, runs in results.items():
        for run in runs:
            us = run["cpu"] / run["messages"] * 1e6
            best[name] = min(best.get(name, us), us)
            reads = f"  {run['messages'] / run['reads']:5.1f} msg/read" if run.get("reads") else ""
            per = run["messages"] / run["batches"] if run.get("batches") else 0
            print(
                f"{name:7} {run['messages'] / run['wall']:9,.0f} msg/s  {us:6.1f} µs CPU/msg"
                f"  {per:5.1f} msg/batch{reads}"
            )
    if "before" in best:
        print(
            f"CPU per message, best of {args.rounds}: after/before = {best['after'] / best['before']:.2f}"
        )


if __name__ == "__main__":
    main()
