"""How the Kafka log's cost grows with a run's length on the bench's broker (Tansu, memory://).

Tansu 0.6's storage engine keeps each produced record batch as one object and lists
every object of a partition on each fetch (``dynostore.rs`` ``fetch``), so the broker's
CPU per fetch grows with the number of batches written since it started, and its fetch
loop sleeps up to half of the consumer's ``fetch_max_wait_ms`` before answering.  This
bench shows it without the rest of the cluster: per variant a fresh Tansu, ``--producers``
:class:`~livedata.bus.kafka.KafkaLog` producers appending ``--rate`` records/s between
them (what ingest does, a batch per ``linger_ms``), two consumers of group ``distribute``
and one of ``alerts``; every ``--step`` seconds it prints Tansu's CPU and RSS and the
produce → consume latency p50/p99.  Variants: ``--lingers 10,50`` (``linger_ms`` of the
log URL) times ``--fetch-waits 100,500`` (``fetch_wait_ms``).

    python bench/bench_tansu_growth.py --seconds 150 --lingers 10,50

Prints figures only; every process it starts is stopped and its directory removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livedata.bus.kafka import KafkaLog
from livedata.model import Kind, Record
from tests.servers.kafka import start_kafka

VALUES = {f"signal_{i}": float(i) * 1.5 for i in range(13)}


def pct(values: list[float], q: float) -> str:
    if not values:
        return "–"
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(q * len(values)))]:.0f}"


async def variant(args: argparse.Namespace, linger: float, wait: int, directory: Path) -> None:
    server = start_kafka(directory)
    tansu = psutil.Process(server.process.pid)  # type: ignore[union-attr]
    url = f"{server.url}/growth?partitions={args.partitions}&linger_ms={linger:g}&fetch_wait_ms={wait}"
    logs = [KafkaLog(url) for _ in range(args.producers + 3)]
    latencies: list[float] = []
    consumed = [0]
    try:
        for log in logs:
            await log.start()

        async def produce(log: KafkaLog, index: int) -> None:
            per = args.rate / args.producers * max(linger, 1.0) / 1000
            machines = args.machines // args.producers
            sent = 0.0
            start = time.monotonic()
            while True:
                due = (time.monotonic() - start) * args.rate / args.producers
                count = int(due - sent)
                if count:
                    now = int(time.time() * 1000)
                    batch = [
                        Record(
                            "acme",
                            f"m{index}-{(int(sent) + i) % machines}",
                            "vehicle_can",
                            now,
                            Kind.REALTIME,
                            VALUES,
                        )
                        for i in range(count)
                    ]
                    sent += count
                    await log.append(batch)
                await asyncio.sleep(max(linger, 1.0) / 1000 if per >= 1 else 0.001)

        async def consume(log: KafkaLog, group: str) -> None:
            async for batch in log.consume(group):
                now = time.time() * 1000
                if group == "distribute":
                    consumed[0] += len(batch)
                    latencies.extend(now - r.ts for r in batch[:: max(1, len(batch) // 20)])

        tasks = [
            asyncio.create_task(produce(log, i)) for i, log in enumerate(logs[: args.producers])
        ]
        tasks += [
            asyncio.create_task(consume(log, group))
            for log, group in zip(
                logs[args.producers :], ("distribute", "distribute", "alerts"), strict=True
            )
        ]
        print(
            f"linger_ms {linger:g}, fetch_wait_ms {wait}: step, Tansu CPU %, RSS MiB, records/s consumed, "
            "produce → consume p50 / p99 ms (distribute)",
            flush=True,
        )
        cpu0 = sum(tansu.cpu_times()[:2])
        seen0 = 0
        start = time.monotonic()
        step = 0
        cpus = []
        while time.monotonic() - start < args.seconds:
            await asyncio.sleep(args.step)
            step += 1
            cpu = sum(tansu.cpu_times()[:2])
            lat, latencies[:] = list(latencies), []
            share = (cpu - cpu0) / args.step * 100
            cpus.append(share)
            print(
                f"  {step * args.step:4.0f} s  {share:5.1f} %  {tansu.memory_info().rss >> 20:5d}"
                f"  {(consumed[0] - seen0) / args.step:8.0f}"
                f"  {pct(lat, 0.5):>6} / {pct(lat, 0.99):>6}",
                flush=True,
            )
            cpu0, seen0 = cpu, consumed[0]
        half = len(cpus) // 2
        print(
            f"  Tansu CPU %: first half {sum(cpus[:half]) / max(1, half):.1f}, "
            f"second half {sum(cpus[half:]) / max(1, len(cpus) - half):.1f}",
            flush=True,
        )
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
    finally:
        for log in logs:
            with contextlib.suppress(Exception):
                await log.close()
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=150.0, help="per variant (150)")
    parser.add_argument("--step", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=10_000, help="records/s produced (10,000)")
    parser.add_argument("--machines", type=int, default=5_000)
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--lingers", default="10,50", help="linger_ms variants (10,50)")
    parser.add_argument(
        "--fetch-waits", default="100", help="fetch_wait_ms variants, each with every linger (100)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.CRITICAL
    )  # aiokafka's noise at close and refused InitProducerId
    for wait in (int(v) for v in args.fetch_waits.split(",")):
        for linger in (float(v) for v in args.lingers.split(",")):
            with tempfile.TemporaryDirectory(prefix="livedata-tansu-") as tmp:
                asyncio.run(variant(args, linger, wait, Path(tmp)))


if __name__ == "__main__":
    main()
