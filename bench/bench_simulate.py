"""How many messages a second ``livedata simulate`` can publish from one process.

Starts Mosquitto on a free loopback port (killed at the end), connects ``--machines``
(1,000) simulated machines, and sends ``--ticks`` (10) seconds of the whole fleet
back to back — as fast as the sender can, not at 1 Hz — waiting at the end until
the broker has acknowledged every message.  Prints messages/s (acknowledged / wall
time) and this process's CPU per message, for:

- **before**: what ``livedata simulate`` did until now: one :class:`Machine` step
  per machine and second, :func:`livedata.codec.encode`, and one aiomqtt
  ``publish`` per message (:class:`livedata.devices.mqtt.MqttDevice`) from a
  queue and sender task per machine;
- **after**: what it does now: :class:`livedata.sim.ring.PayloadRing` (100 simulated
  templates, pre-encoded seconds, the timestamp patched in) and
  :class:`livedata.sim.connection.SimDevice` (MQTT 5 on an ``asyncio.Protocol``,
  one ``write`` per machine and second), on the event loop ``livedata simulate`` runs
  on (uvloop when installed).

Both use one MQTT connection per machine with QoS 1, as real machines do; nobody
subscribes, so the broker only acknowledges.  The broker shares the 2 cores, so
compare the two lines of one run; CPU/message is the steadier figure.

    python bench/bench_simulate.py
    python bench/bench_simulate.py --machines 5000 --ticks 4 --skip-before
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livedata.cli.simulate import loop_factory
from livedata.decode.can import CanDecoder
from livedata.devices.mqtt import MqttDevice, cancel_and_wait
from livedata.model import DeviceMessage, Kind
from livedata.sim.connection import SimDevice
from livedata.sim.demo import DBC_PATH
from livedata.sim.fleet import Fleet, default_chassis_ids
from livedata.sim.ring import PayloadRing
from tests.servers.mosquitto import start_mosquitto

TS0 = 1_700_000_000_000
CONNECT_CONCURRENCY = 50


async def _connect_all(connect: list, gate: int = CONNECT_CONCURRENCY) -> None:
    sem = asyncio.Semaphore(gate)

    async def one(fn) -> None:  # type: ignore[no-untyped-def]
        async with sem:
            await fn()

    await asyncio.gather(*(one(fn) for fn in connect))


async def _until(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def before(url: str, chassis: list[str], ticks: int) -> tuple[int, float, float]:
    """The old path: Fleet + MqttDevice (aiomqtt), a queue and sender task per machine."""
    devices = {c: MqttDevice(url, "demo", c) for c in chassis}
    await _connect_all([d.connect for d in devices.values()])
    queues: dict[str, asyncio.Queue[DeviceMessage]] = {c: asyncio.Queue(100) for c in chassis}
    sent = 0

    async def sender(c: str) -> None:
        nonlocal sent
        while True:
            message = await queues[c].get()
            await devices[c].send(message)
            sent += 1

    async def put(message: DeviceMessage) -> None:
        await queues[message.chassis].put(message)

    fleet = Fleet("demo", chassis, CanDecoder.from_dbc(DBC_PATH.read_text()), put)
    tasks = [asyncio.create_task(sender(c)) for c in chassis]
    wall, cpu = time.perf_counter(), time.process_time()
    for t in range(ticks):
        await fleet.tick(TS0 + t * 1000)
    await _until(lambda: sent >= 2 * len(chassis) * ticks, 300)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await asyncio.gather(*map(cancel_and_wait, tasks))
    await _connect_all([d.close for d in devices.values()])
    return sent, wall, cpu


async def after(url: str, chassis: list[str], ticks: int) -> tuple[int, float, float]:
    """The new path: PayloadRing + SimDevice, one write per machine and second."""
    devices = [SimDevice(url, "demo", c) for c in chassis]
    await _connect_all([d.connect for d in devices])
    started = time.perf_counter()
    ring = PayloadRing(chassis, CanDecoder.from_dbc(DBC_PATH.read_text()), 0)
    print(f"(the ring of {ring.templates} templates took {time.perf_counter() - started:.1f} s)")
    wall, cpu = time.perf_counter(), time.process_time()
    for t in range(ticks):
        ts = TS0 + t * 1000
        for d in devices:
            if d.full:
                await d.room()
            can, raw = ring.payloads(d.chassis, ts, Kind.REALTIME)
            d.publish([(d.topics[0], can), (d.topics[1], raw)])
        ring.advance()
        await asyncio.sleep(0)
    await _until(lambda: sum(d.sent for d in devices) >= 2 * len(chassis) * ticks, 300)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sent = sum(d.sent for d in devices)
    await _connect_all([d.close for d in devices])
    return sent, wall, cpu


def line(name: str, sent: int, wall: float, cpu: float) -> str:
    return (
        f"{name:<8} {sent:>8,} msgs acknowledged in {wall:6.2f} s: {sent / wall:>9,.0f} msgs/s, "
        f"{cpu / max(sent, 1) * 1e6:6.1f} µs CPU/msg (this process)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--skip-before", action="store_true", help="only the new path")
    args = parser.parse_args(argv)
    chassis = default_chassis_ids(args.machines)
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        broker = start_mosquitto(Path(tmp), "max_connections -1\nconnection_messages false\n")
        try:
            print(
                f"bench_simulate: {args.machines:,} machines × {args.ticks} s × 2 messages, "
                f"QoS 1, Mosquitto on 127.0.0.1:{broker.port}",
                flush=True,
            )
            if not args.skip_before:
                print(line("before", *asyncio.run(before(broker.url, chassis, args.ticks))))
            with asyncio.Runner(loop_factory=loop_factory()) as runner:  # simulate's loop
                print(line("after", *runner.run(after(broker.url, chassis, args.ticks))))
        finally:
            broker.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
