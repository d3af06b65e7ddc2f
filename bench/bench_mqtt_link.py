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


async def worker(url: str, count: int) -> None:
    from livedata.devices.mqtt import MqttDeviceLink

    cpu0, wall0 = time.process_time(), time.perf_counter()
    link = MqttDeviceLink(url)
    await link.start()
    got = 0
    if hasattr(link, "batches"):
        async for batch in link.batches(5_000):
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
    await asyncio.sleep(0.5)  # let the last PUBACKs go out
    await link.close()
    print(json.dumps({"messages": got, "cpu": cpu, "wall": wall}))


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
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(worker(args.worker, args.messages))
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
                    for name, _ in codes
                }
                for url in urls.values():
                    asyncio.run(register(url))
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
            print(f"{name:7} {run['messages'] / run['wall']:9,.0f} msg/s  {us:6.1f} µs CPU/msg")
    if "before" in best:
        print(
            f"CPU per message, best of {args.rounds}: after/before = {best['after'] / best['before']:.2f}"
        )


if __name__ == "__main__":
    main()
