"""The distribute role on a real Redis: CPU per record, this checkout against another tree.

One run starts one ``redis-server`` (``tests/servers``: free loopback port,
temporary directory) and then, for each tree (``--base DIR``: a ``src`` directory
of the code before, e.g. ``git archive 964f4d5 src | tar -x -C /tmp/base``, and
this checkout's ``src``), alternating ``--rounds`` times, a worker process that
runs the real :class:`~livedata.pipeline.distribute.Distribute` between a
``MemoryLog`` and a ``RedisPubSub``, in two phases:

1. **steady**: ``--machines`` (500) machines' ``vehicle_can`` records appended
   to the log at ``--rate`` records/s (5,000) in ticks of 10 ms, for
   ``--seconds`` (8), so distribute sees the batches a live fleet gives it;
2. **flood**: ``--flood`` (50,000) records appended at once; the time until all are
   published is the most one distribute process can do.

For each it prints records/s, the worker's CPU per record (all of its threads;
the log, the encoding, redis-py) and Redis's CPU per record (psutil on the
server).

``--log kafka`` reads the records from a real Kafka-compatible broker instead
(Tansu, ``tests/servers``), as the distributed shape does: before each worker
this process appends ``--flood`` records (``--fields`` values each, ``--orgs``
organisations) to a fresh topic, and the worker's role consumes them from the
start, so the figure includes consuming and decoding the log's batches (the
flood phase only; CPU counted from the first batch handled to the last).
The worker runs the role's ``tune_gc`` (the tree's own thresholds, as ``livedata serve
--role ROLE`` does) and prints, per round, its garbage collection CPU per record
(``livedata_gc_seconds``), the collections by generation and the longest one (wall).
``--role alerts`` runs the alert role on that log instead of distribute
(metadata on a temporary SQLite file, one value rule on ``signal_0`` in the
first organisation, never met, so nothing is stored).  The machine is shared and noisy: compare the two trees' figures of the
same round, and read ratios.  Asserts nothing; stops Redis and removes its
directory at the end, also on Ctrl-C.

    python bench/bench_distribute.py --base /tmp/base17/src
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _values(fields: int) -> dict[str, float]:
    """A record's values: ``fields`` signals with the digits a decoded float has."""
    return {f"signal_{n}": n * 1.37 + 0.123456789 for n in range(fields)}


async def _fill(kafka_url: str, machines: int, orgs: int, fields: int, count: int) -> None:
    """``count`` real-time records of ``machines`` machines in ``orgs`` organisations into the
    topic of ``kafka_url``, in appends of 500 as ingest makes them (this checkout's codec:
    the envelope is the same in both trees)."""
    from livedata.bus.kafka import KafkaLog
    from livedata.model import Kind, Record

    log = KafkaLog(kafka_url)
    await log.start()
    values = _values(fields)
    now = int(time.time() * 1000)
    records = [
        Record(f"o{n % orgs}", f"m{n % machines}", "vehicle_can", now + n, Kind.REALTIME, values)
        for n in range(count)
    ]
    for start in range(0, count, 500):
        await log.append(records[start : start + 500])
    await log.close()


async def _kafka_worker(
    role: str, redis_url: str, kafka_url: str, orgs: int, count: int, tmp: str
) -> dict:
    """The role consuming ``count`` records from the start of the topic; CPU from the end of
    its first batch to the end of the last."""
    import uuid

    from livedata.bus.kafka import KafkaLog
    from livedata.bus.redis import RedisPubSub
    from livedata.cli.common import tune_gc

    log = KafkaLog(kafka_url)
    pubsub = RedisPubSub(f"{redis_url}?prefix=bench{uuid.uuid4().hex[:8]}/")
    await pubsub.start()
    handled = [0]
    marks: list[tuple[int, float, float, float]] = []
    pauses: list[tuple[float, int, float]] = []
    """(end, generation, wall seconds) of each garbage collection."""
    done = asyncio.Event()

    def note(records: int) -> None:
        handled[0] += records
        now = time.perf_counter()
        marks.append((handled[0], time.process_time(), now, _gc_seconds()))
        if handled[0] >= count:
            done.set()

    if role == "alerts":
        from livedata.catalog import Catalog
        from livedata.metadata import Metadata
        from livedata.metadata.alerts import AlertStore, RuleSpec
        from livedata.pipeline.alerts import AlertRole

        meta = Metadata(f"sqlite:///{tmp}/meta.db")
        await meta.start()
        for n in range(orgs):
            await meta.ensure_org(f"o{n}", f"O{n}")
        store = AlertStore(meta)
        rule = RuleSpec(0, "o0", "hot", msg_type="vehicle_can", field="signal_0")
        await store.create_rule(replace(rule, condition=">", threshold=1e12))
        alerts = AlertRole(store, log, pubsub, Catalog(meta))
        await alerts.refresh()

        async def consume() -> None:
            async for batch in log.consume("alerts"):
                await alerts.handle(batch)
                note(len(batch))

        task = asyncio.create_task(consume())
    else:
        from livedata.pipeline.distribute import Distribute

        distribute = Distribute(log, pubsub)
        publish = distribute._publish

        async def counted(messages: list) -> None:  # the role's own step, both trees have it
            await publish(messages)
            note(len(messages))

        distribute._publish = counted  # type: ignore[method-assign]
        task = asyncio.create_task(distribute.run())
    _time_collections(pauses)
    tune_gc((role,))  # as `livedata serve --role ROLE` does once started
    await asyncio.wait_for(done.wait(), 300)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await log.close()
    await pubsub.close()
    first, last = marks[0], marks[-1]
    within = [(g, wall) for end, g, wall in pauses if first[2] < end <= last[2]]
    return {
        "flood": {
            "records": last[0] - first[0],
            "cpu": last[1] - first[1],
            "wall": last[2] - first[2],
            "gc": last[3] - first[3],
            "collections": [sum(1 for g, _ in within if g == n) for n in range(3)],
            "longest": max((wall for _, wall in within), default=0.0),
            "thresholds": gc.get_threshold(),
        }
    }


def _gc_seconds() -> float:
    """Garbage collection CPU seconds of this process so far (``livedata_gc_seconds``)."""
    from livedata import observe

    return sum(child._value.get() for child in observe.GC_SECONDS._metrics.values())


def _time_collections(pauses: list[tuple[float, int, float]]) -> None:
    """Append (end, generation, wall seconds) of every later collection to ``pauses``."""
    started = [0.0]

    def timer(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            end = time.perf_counter()
            pauses.append((end, info["generation"], end - started[0]))

    gc.callbacks.append(timer)


async def _worker(
    url: str, machines: int, rate: int, seconds: float, flood: int, fields: int
) -> dict:
    """Runs in the worker process, with the tree under test first on ``sys.path``."""
    import uuid

    from livedata import observe
    from livedata.bus.memory import MemoryLog
    from livedata.bus.redis import RedisPubSub
    from livedata.model import Kind, Record
    from livedata.pipeline.distribute import Distribute

    def published() -> float:
        return observe.PUBLISHED._value.get()  # type: ignore[attr-defined]

    values = _values(fields)
    log = MemoryLog(f"memory://{uuid.uuid4().hex}?capacity=1000000")
    pubsub = RedisPubSub(f"{url}?prefix=bench{uuid.uuid4().hex[:8]}/")
    await pubsub.start()
    distribute = Distribute(log, pubsub)
    task = asyncio.create_task(distribute.run())
    await asyncio.sleep(0.05)
    ts = [1_700_000_000_000]

    def tick(count: int) -> list[Record]:
        ts[0] += 1
        return [
            Record("t", f"m{n % machines}", "vehicle_can", ts[0], Kind.REALTIME, values)
            for n in range(count)
        ]

    async def until(total: float) -> None:
        # a counter both trees have; an Event would need a hook in the code under test
        while published() < total:  # noqa: ASYNC110
            await asyncio.sleep(0.001)

    result = {}
    # steady: rate records/s in 10 ms ticks
    per_tick = max(1, rate // 100)
    ticks = int(seconds * 100)
    start_pub, cpu0, wall0 = published(), time.process_time(), time.perf_counter()
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    for _ in range(ticks):
        await log.append(tick(per_tick))
        next_at += 0.01
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    await until(start_pub + ticks * per_tick)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    count = ticks * per_tick
    result["steady"] = {"records": count, "wall": wall, "cpu": cpu}
    # flood
    records = tick(flood)
    start_pub, cpu0, wall0 = published(), time.process_time(), time.perf_counter()
    await log.append(records)
    await until(start_pub + flood)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    result["flood"] = {"records": flood, "wall": wall, "cpu": cpu}
    task.cancel()
    await pubsub.close()
    return result


def run_worker(
    src: Path, args: argparse.Namespace, url: str, redis_pid: int, kafka_url: str = ""
) -> dict:
    import psutil

    redis = psutil.Process(redis_pid)
    before = redis.cpu_times()
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    options = ("machines", "rate", "seconds", "flood", "fields", "orgs", "role")
    out = subprocess.run(
        [sys.executable, __file__, "--worker", url, f"--kafka-topic={kafka_url}"]
        + [f"--{k}={getattr(args, k)}" for k in options],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    after = redis.cpu_times()
    result = json.loads(out.strip().splitlines()[-1])
    result["redis_cpu"] = (after.user + after.system) - (before.user + before.system)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="src directory of the code before")
    parser.add_argument("--machines", type=int, default=500)
    parser.add_argument("--rate", type=int, default=5_000, help="records/s in the steady phase")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--flood", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fields", type=int, default=10, help="values per record")
    parser.add_argument("--log", choices=("memory", "kafka"), default="memory")
    parser.add_argument("--role", choices=("distribute", "alerts"), default="distribute")
    parser.add_argument("--orgs", type=int, default=10, help="organisations (--log kafka)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--kafka-topic", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "alerts" and args.log != "kafka" and not args.worker:
        parser.error("--role alerts needs --log kafka")
    if args.worker:
        if args.kafka_topic:
            with tempfile.TemporaryDirectory(prefix="bench-distribute-worker-") as tmp:
                result = asyncio.run(
                    _kafka_worker(
                        args.role, args.worker, args.kafka_topic, args.orgs, args.flood, tmp
                    )
                )
        else:
            result = asyncio.run(
                _worker(
                    args.worker, args.machines, args.rate, args.seconds, args.flood, args.fields
                )
            )
        print(json.dumps(result))
        return

    sys.path.insert(0, str(ROOT))
    from tests.servers.kafka import start_kafka
    from tests.servers.redis import start_redis

    trees = [("this", ROOT / "src")]
    if args.base:
        trees.insert(0, ("base", args.base.resolve()))
    phases = ("flood",) if args.log == "kafka" else ("steady", "flood")
    print(
        f"bench_distribute: {args.role} on a {args.log} log, {args.machines} machines, "
        f"{args.fields} values per record, steady {args.rate} records/s for {args.seconds} s, "
        f"flood {args.flood} records; load average {os.getloadavg()[0]:.1f}"
    )
    results: dict[str, list[dict]] = {name: [] for name, _ in trees}
    with tempfile.TemporaryDirectory(prefix="bench-distribute-") as tmp:
        server = start_redis(Path(tmp))
        kafka = start_kafka(Path(tmp)) if args.log == "kafka" else None
        try:
            assert server.process is not None
            for round_ in range(args.rounds):
                for name, src in trees:
                    topic = ""
                    if kafka is not None:
                        topic = f"{kafka.url}/bench{round_}{name}?partitions=4"
                        asyncio.run(_fill(topic, args.machines, args.orgs, args.fields, args.flood))
                    result = run_worker(src, args, server.url, server.process.pid, topic)
                    results[name].append(result)
                    print(f"  round {round_ + 1} {name}: done", flush=True)
        finally:
            if kafka is not None:
                kafka.stop()
            server.stop()
    print()
    print(f"| tree | phase | records/s | {args.role} CPU µs/record | Redis CPU µs/record |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        for phase in phases:
            rates = [r[phase]["records"] / r[phase]["wall"] for r in runs]
            cpus = [1e6 * r[phase]["cpu"] / r[phase]["records"] for r in runs]
            span = f"{min(rates):,.0f}–{max(rates):,.0f}"
            cpu = f"{min(cpus):.1f}–{max(cpus):.1f}"
            redis = "" if phase == "flood" else _redis_per_record(runs)
            print(f"| {name} | {phase} | {span} | {cpu} | {redis} |")
    if args.log == "kafka":
        _print_gc(results)
    if args.base:
        print()
        for phase in phases:
            ratios = [
                (b[phase]["cpu"] / b[phase]["records"]) / (t[phase]["cpu"] / t[phase]["records"])
                for b, t in zip(results["base"], results["this"], strict=True)
            ]
            print(
                f"{phase}: base/this CPU per record "
                + ", ".join(f"{r:.1f}x" for r in ratios)
                + " (per round)"
            )


def _print_gc(results: dict[str, list[dict]]) -> None:
    """Per tree and round: the role's thresholds (its ``tune_gc``), garbage collection CPU
    per record, collections by generation and the longest one (wall ms)."""
    print()
    print("| tree | thresholds | GC CPU µs/record | collections gen 0/1/2 | longest (wall) |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in results.items():
        for r in runs:
            f = r["flood"]
            counts = "/".join(str(c) for c in f["collections"])
            print(
                f"| {name} | {tuple(f['thresholds'])} | {1e6 * f['gc'] / f['records']:.2f}"
                f" | {counts} | {1e3 * f['longest']:.1f} ms |"
            )


def _redis_per_record(runs: list[dict]) -> str:
    """Redis's CPU over the whole worker (both phases) per record of both phases."""
    per = [1e6 * r["redis_cpu"] / (r["steady"]["records"] + r["flood"]["records"]) for r in runs]
    return f"{min(per):.1f}–{max(per):.1f} (both phases)"


if __name__ == "__main__":
    main()
