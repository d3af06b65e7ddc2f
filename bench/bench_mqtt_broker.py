"""Mosquitto's CPU per message while an MQTT device link takes what devices publish live.

Mosquitto is started as the tests start it (``max_queued_messages 1000000``).  For each
code under test (``--before TREE``: a checkout of the code before; and this checkout)
and round, a worker process starts an :class:`MqttDeviceLink` in a share group (clean
session, default ``inflight`` 1000) and plays ingest: it takes what the link has
(``batches``), "stores" it, taking ``--store-us`` µs per message (a sleep: the broker
sees a slow consumer, not a busy CPU), then acknowledges the batch in order.  Meanwhile
a publisher process plays ``--devices`` devices, publishing ``vehicle_can`` messages
(pre-encoded, 20 devices per connection, QoS 1) at ``--rate`` messages/s for
``--seconds``.  With ``--store-us`` above ``1e6 / --rate`` the link falls behind and a
backlog builds in the broker (``backlog`` rows); with 0 it keeps up (``live`` rows).
Printed per scenario, code and round: Mosquitto's process CPU (user + system, from
``/proc``) from the first publish until the worker has acknowledged everything, in µs
per message; the link's messages/s over the same span; and the after/before ratio of the
best rounds.

Run: ``python bench/bench_mqtt_broker.py --before /tmp/base [--rate 3000 --seconds 8
--store-us 500 --rounds 2]``.  Prints figures only; asserts nothing; stops the broker
and its processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


async def consumer(url: str, count: int, store_us: float, early: int) -> None:
    from livedata.devices.mqtt import MqttDeviceLink

    link = MqttDeviceLink(url)
    await link.start()
    print("ready", flush=True)
    got = 0
    async for batch in link.batches(5_000):
        if early:  # ingest acknowledges a rejected message at once, before older ones
            await ack_each(batch[::early])
        await asyncio.sleep(len(batch) * store_us / 1e6)
        await ack_each(batch)
        got += len(batch)
        if got >= count:
            break
    await asyncio.sleep(0.5)  # let the last PUBACKs go out
    await link.close()
    print(json.dumps({"messages": got}), flush=True)


async def ack_each(items: list[Any]) -> None:
    for item in items:
        if item.ack is not None:
            await item.ack()


async def publisher(port: int, count: int, rate: float, devices: int) -> None:
    import aiomqtt

    from bench_mqtt_link import payloads

    messages = payloads(max(devices, 100))[:devices]
    clients = [
        aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5)
        for _ in range(max(1, devices // 20))
    ]
    for client in clients:
        await client.__aenter__()
    start = time.perf_counter()
    sent = 0
    tick = 0.02
    while sent < count:
        due = min(count, int((time.perf_counter() - start) * rate) + 1)
        await asyncio.gather(
            *(
                clients[n % len(clients)].publish(*messages[n % len(messages)], qos=1)
                for n in range(sent, due)
            )
        )
        sent = due
        await asyncio.sleep(tick)
    for client in clients:
        await client.__aexit__(None, None, None)


def broker_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(src: Path, port: int, url: str, pid: int, args: argparse.Namespace, store_us: float):
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    count = int(args.rate * args.seconds)
    worker = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--consume",
            url,
            f"--count={count}",
            f"--store-us={store_us}",
            f"--early={args.early}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "ready"
        cpu0, wall0 = broker_cpu(pid), time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--publish",
                str(port),
                f"--count={count}",
                f"--rate={args.rate}",
                f"--devices={args.devices}",
            ],
            env=env,
            check=True,
        )
        out = worker.stdout.readline()
        cpu, wall = broker_cpu(pid) - cpu0, time.perf_counter() - wall0
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    got = json.loads(out)["messages"]
    return cpu / got * 1e6, got / wall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, metavar="TREE", help="a checkout of the code before")
    parser.add_argument("--rate", type=float, default=3000, help="messages/s the devices publish")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--store-us", type=float, default=500, help="backlog: µs per message")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--early",
        type=int,
        default=0,
        metavar="N",
        help="acknowledge every Nth message on receipt, as ingest does a rejected one",
    )
    parser.add_argument("--consume", help=argparse.SUPPRESS)
    parser.add_argument("--publish", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.consume:
        asyncio.run(consumer(args.consume, args.count, args.store_us, args.early))
        return
    if args.publish:
        asyncio.run(publisher(args.publish, args.count, args.rate, args.devices))
        return
    from tests.servers.mosquitto import start_mosquitto

    codes = [("before", args.before / "src")] if args.before else []
    codes.append(("after", ROOT / "src"))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_mosquitto(Path(tmp), "max_queued_messages 1000000")
        try:
            for _ in range(args.rounds):
                for scenario, store_us in (("live", 0.0), ("backlog", args.store_us)):
                    for name, src in codes:
                        figures = run(
                            src, broker.port, broker.url, broker.process.pid, args, store_us
                        )
                        results.setdefault((scenario, name), []).append(figures)
        finally:
            broker.stop()
    print(
        f"{int(args.rate * args.seconds)} messages at {args.rate:g}/s from {args.devices} devices"
    )
    for (scenario, name), runs in results.items():
        cells = "  ".join(f"{us:5.1f} µs {rate:7,.0f}/s" for us, rate in runs)
        print(f"{scenario:8} {name:7} broker CPU/msg, link msg/s: {cells}")
    for scenario in ("live", "backlog"):
        if (scenario, "before") in results:
            after = min(us for us, _ in results[(scenario, "after")])
            before = min(us for us, _ in results[(scenario, "before")])
            print(
                f"{scenario}: broker CPU per message, best rounds: after/before = {after / before:.2f}"
            )


if __name__ == "__main__":
    main()
