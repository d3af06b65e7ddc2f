"""The gateway's status pushes while a whole fleet connects: CPU, store reads, pushes.

What the gateway role does when ``--machines`` machines come online on the MQTT device
link at once (as at the start of ``bench_cluster.py``, a broker restart or a link
restart): per machine a presence change, a ``getStatus`` probe and status pushes, each
push reading the machine's newest record time from the store.  A ``clickhouse-server``
(the store) is started once; per run a fresh Mosquitto, a child process with the
gateway's :class:`~livedata.gateway.commands.StatusService` on a real
:class:`~livedata.devices.mqtt.MqttDeviceLink` and :class:`ClickHouseStore` (the memory
pub/sub and fan-out deliver its pushes), then ``livedata simulate --machines N`` (this
checkout's simulator, which answers ``getStatus``).  The child counts, until every
machine was pushed online with its real-time state known and 2 s more passed: its CPU
(all threads, from the link's start), the store's reads (``latest_ts`` calls and
``latest_many`` queries), the pushes and the seconds.  ``--base DIR`` runs ``DIR/src``'s gateway the same way, alternating
with this checkout's, ``--rounds`` times; ratios per round.

    python bench/bench_status.py --base /tmp/base --machines 1000 --rounds 2

Prints figures only; asserts nothing.  Every server and process it starts is stopped
and its directories removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUIET_S = 2.0
"""Seconds after the last machine was pushed during which later pushes are still counted."""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def child(broker: str, store_url: str, machines: int, timeout: float) -> dict[str, Any]:
    """The gateway's status service until every machine was pushed online and known."""
    import uuid

    from livedata.bus.memory import MemoryPubSub
    from livedata.devices.mqtt import MqttDeviceLink
    from livedata.gateway.commands import StatusService
    from livedata.gateway.fanout import Fanout
    from livedata.metadata import Metadata
    from livedata.store import open_store

    store = open_store(store_url)
    await store.start()
    reads = [0]
    latest = store.latest_ts

    async def counted(tenant: str, chassis: str, msg_type: str) -> int | None:
        reads[0] += 1
        return await latest(tenant, chassis, msg_type)

    store.latest_ts = counted  # type: ignore[method-assign]
    rows = store._latest_rows  # one query of latest_many (up to 500 machines)

    async def counted_rows(tenant: str, chassis: Any) -> Any:
        reads[0] += 1
        return await rows(tenant, chassis)

    store._latest_rows = counted_rows  # type: ignore[method-assign]
    pubsub = MemoryPubSub(f"memory://{uuid.uuid4().hex}")
    await pubsub.start()
    known: set[str] = set()
    pushes = [0]
    done = asyncio.Event()

    def update(org: str, chassis: str, data: dict[str, Any]) -> None:
        pushes[0] += 1
        if data.get("status") == "online" and data.get("realtime") in ("on", "off"):
            known.add(chassis)
            if len(known) >= machines:
                done.set()

    link = MqttDeviceLink(f"{broker}?group=status")
    link.receive_telemetry = False
    meta = Metadata(f"sqlite:///{tempfile.mkdtemp(prefix='bench-status-')}/meta.db")
    service = StatusService(Fanout(pubsub), store, meta, link, pubsub, lambda *row: None, update)
    cpu0 = cpu_seconds()
    await link.start()
    feed = asyncio.create_task(service.presence_feed())
    print("ready", flush=True)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(done.wait(), timeout)
        seconds = time.monotonic() - t0
    except TimeoutError:
        seconds = float("nan")
    await asyncio.sleep(QUIET_S)
    cpu = cpu_seconds() - cpu0
    feed.cancel()
    await asyncio.gather(feed, return_exceptions=True)
    await link.close()
    await pubsub.close()
    await store.close()
    return {
        "cpu_s": cpu,
        "reads": reads[0],
        "pushes": pushes[0],
        "known": len(known),
        "seconds": seconds,
    }


def run_one(tree: Path, store_url: str, machines: int, timeout: float, tmp: Path) -> dict[str, Any]:
    """A fresh Mosquitto, the child on ``tree``'s src, the simulator; the child's figures."""
    from tests.servers import stop_process
    from tests.servers.mosquitto import start_mosquitto

    broker = start_mosquitto(Path(tempfile.mkdtemp(dir=tmp)))
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    procs: list[subprocess.Popen[str]] = []
    try:
        gateway = subprocess.Popen(
            [sys.executable, __file__, "--child", broker.url, store_url, str(machines)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(gateway)
        assert gateway.stdout is not None
        if gateway.stdout.readline().strip() != "ready":
            raise RuntimeError("the gateway child did not start")
        sim_env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        procs.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "livedata", "simulate", "--mqtt", broker.url),
                    *("--machines", str(machines), "--log-level", "warning"),
                ],
                env=sim_env,
                stdout=subprocess.DEVNULL,
            )
        )
        out, _ = gateway.communicate(timeout=timeout + 60)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        broker.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import logging

        import uvloop

        logging.disable(logging.WARNING)  # paho's "pending publish calls" of the probes

        broker, store_url, machines = sys.argv[2], sys.argv[3], int(sys.argv[4])
        result = uvloop.run(child(broker, store_url, machines, 120.0))
        print(json.dumps(result), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=1000, help="machines connecting (1000)")
    parser.add_argument("--base", type=Path, metavar="DIR", help="DIR/src's gateway first")
    parser.add_argument("--rounds", type=int, default=2, help="runs per tree, alternating (2)")
    args = parser.parse_args()
    from tests.servers.clickhouse import start_clickhouse

    trees = [("base", args.base)] if args.base else []
    trees.append(("this", ROOT))
    print(
        f"bench_status: {args.machines} machines connecting; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp_name:
        tmp = Path(tmp_name)
        clickhouse = start_clickhouse(tmp / "clickhouse")
        try:
            results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in trees}
            for round_ in range(args.rounds):
                for name, tree in trees:
                    url = clickhouse.url(f"status_{name}_{round_}")
                    r = run_one(tree, url, args.machines, 120.0, tmp)
                    results[name].append(r)
                    print(
                        f"  round {round_ + 1} {name}: gateway CPU {r['cpu_s']:.2f} s "
                        f"({1e3 * r['cpu_s'] / args.machines:.2f} ms per machine), "
                        f"{r['reads']} store reads, {r['pushes']} pushes, "
                        f"{r['known']} machines known online after {r['seconds']:.1f} s",
                        flush=True,
                    )
        finally:
            clickhouse.stop()
    if args.base:
        ratios = [
            f"{b['cpu_s'] / t['cpu_s']:.1f}x"
            for b, t in zip(results["base"], results["this"], strict=True)
            if t["cpu_s"]
        ]
        print("gateway CPU base/this per round: " + ", ".join(ratios))
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
