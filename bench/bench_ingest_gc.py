"""Ingest's garbage collection at a steady rate, per collector threshold: CPU, pauses, RSS.

One ingest process's share of a ClickHouse-backed fleet, in one process without servers:
``--machines`` simulated wheel loaders (``sim.fleet``: a ``vehicle_can`` message of 12
frames and a ``client_raw_data`` one per machine and second), encoded as devices send
them, are decoded (``codec.decode``, as the MQTT link does) and handed to
``Ingest.handle_many`` 100 times a second in slices (as a fleet spread over the second
arrives), each delivery with an acknowledgement object, for ``--seconds`` after 5 s of
warm-up.  The store takes writes at no cost but has ClickHouse's ``batch_ms`` (1 s), so
ingest holds a second of records (their queue entries, acknowledgements and raw-frame
blobs) as it does in the distributed shape; the log is a memory log drained by a task.
SQLite metadata, the roles' ``tune_gc``, then the thresholds under test.

Each ``--thresholds`` setting (``gen0,gen1,gen2``; default: the gateway's
``GC_THRESHOLDS`` and ingest's ``INGEST_GC_THRESHOLDS``) runs in a fresh worker process,
the settings taking turns ``--rounds`` times.  Printed per run: process CPU µs per record,
garbage collection CPU µs per record (``livedata_gc_seconds_total``), collections per
second by generation, the longest collection (wall ms), and peak RSS.

Run: ``python bench/bench_ingest_gc.py [--machines 2500 --seconds 20 --rounds 2]``.
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_decodepath import demo_metadata, running_ingest  # noqa: E402
from bench.bench_mqtt_link import run_script  # noqa: E402

WARMUP_S = 5
STEPS = 100
"""Slices handed to ingest per second."""


class _Ack:
    """What an MQTT delivery's acknowledgement keeps alive until ingest awaits it."""

    __slots__ = ("done", "mid")

    def __init__(self, mid: int) -> None:
        self.mid = mid
        self.done = False

    async def __call__(self) -> None:
        self.done = True


async def worker(machines: int, seconds: int, thresholds: tuple[int, int, int]) -> None:
    from prometheus_client import REGISTRY

    from livedata.cli.common import tune_gc
    from livedata.codec import decode, encode
    from livedata.decode.can import CanDecoder
    from livedata.devices.base import Delivery
    from livedata.model import DeviceMessage, Record
    from livedata.sim.demo import DBC_PATH, ORG
    from livedata.sim.fleet import Fleet, default_chassis_ids
    from livedata.store.memory import MemoryStore

    class FreeStore(MemoryStore):
        """Takes every write at no cost, batched as ClickHouse is (1 s)."""

        batch_ms = 1000

        async def write(self, records: Sequence[Record]) -> int:
            return sum(len(r.values) for r in records)

    dbc_text = DBC_PATH.read_text(encoding="utf-8")
    decoder = CanDecoder.from_dbc(dbc_text)
    chassis_ids = default_chassis_ids(machines)
    seconds_made = 8  # distinct seconds, replayed with new timestamps
    wires: list[list[tuple[str, str, str, bytes]]] = [[] for _ in range(seconds_made)]
    tick = 0

    async def collect(message: DeviceMessage) -> None:
        wires[tick].append((message.tenant, message.chassis, message.msg_type, encode(message)))

    fleet = Fleet(ORG, chassis_ids, decoder, collect)
    start = (int(time.time()) - seconds_made) * 1000
    for tick in range(seconds_made):
        await fleet.tick(start + tick * 1000)

    with tempfile.TemporaryDirectory() as tmp:
        meta = await demo_metadata(f"sqlite+aiosqlite:///{tmp}/meta.db", dbc_text, chassis_ids)
        ingest, tasks = await running_ingest(meta, FreeStore("memory://"), linger=1.0)
        ingest.ack_window = 5000  # the MQTT link's default inflight
        longest = 0.0
        started = 0.0

        def pause(phase: str, info: dict[str, int]) -> None:
            nonlocal longest, started
            if phase == "start":
                started = time.perf_counter()
            else:
                longest = max(longest, time.perf_counter() - started)

        async def run(duration: int, first: int) -> int:
            """Hand in ``duration`` seconds of the fleet, paced; the records handed in."""
            count = 0
            t0 = time.monotonic()
            for second in range(duration):
                items = wires[(first + second) % seconds_made]
                step = -(-len(items) // STEPS)
                for n, at in enumerate(range(0, len(items), step)):
                    delay = t0 + second + n / STEPS - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    batch = [
                        Delivery(decode(*w), _Ack(count + i))
                        for i, w in enumerate(items[at : at + step])
                    ]
                    await ingest.handle_many(batch)
                    count += len(batch)
            return count

        async with asyncio.timeout(WARMUP_S + seconds + 120):
            await run(WARMUP_S, 0)
            tune_gc()  # as the roles do once started
            gc.set_threshold(*thresholds)
            gc.callbacks.append(pause)

            def gc_sample(name: str, generation: int) -> float:
                value = REGISTRY.get_sample_value(name, {"generation": str(generation)})
                return value or 0.0

            gc0 = [gc_sample("livedata_gc_seconds_total", g) for g in range(3)]
            n0 = [gc_sample("livedata_gc_collections_total", g) for g in range(3)]
            cpu0, wall0 = time.process_time(), time.monotonic()
            records = await run(seconds, WARMUP_S)
            cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
            gcs = [gc_sample("livedata_gc_seconds_total", g) - gc0[g] for g in range(3)]
            counts = [gc_sample("livedata_gc_collections_total", g) - n0[g] for g in range(3)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await meta.close()
    out: dict[str, Any] = {
        "records": records,
        "cpu_us": cpu / records * 1e6,
        "gc_us": sum(gcs) / records * 1e6,
        "per_s": [c / wall for c in counts],
        "longest_ms": longest * 1e3,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=2500)
    parser.add_argument("--seconds", type=int, default=20, help="seconds measured (5 warm up)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--thresholds",
        nargs="*",
        help="settings to compare, each gen0,gen1,gen2 (default: the gateway's and ingest's)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        thresholds = tuple(int(x) for x in args.worker.split(","))
        asyncio.run(worker(args.machines, args.seconds, thresholds))  # type: ignore[arg-type]
        return
    settings = args.thresholds
    if not settings:
        from livedata.cli.common import GC_THRESHOLDS, INGEST_GC_THRESHOLDS

        settings = [",".join(map(str, t)) for t in (GC_THRESHOLDS, INGEST_GC_THRESHOLDS)]
    print(
        f"{args.machines} machines ({2 * args.machines:,} records/s), {args.seconds} s measured, "
        f"load average {Path('/proc/loadavg').read_text().split()[0]}"
    )
    for _ in range(args.rounds):
        for setting in settings:
            r = run_script(
                __file__,
                ROOT / "src",
                f"--worker={setting}",
                f"--machines={args.machines}",
                f"--seconds={args.seconds}",
            )
            per_s = " / ".join(f"{x:.2f}" for x in r["per_s"])
            print(
                f"thresholds {setting:>14}: CPU {r['cpu_us']:5.1f} µs/record, GC {r['gc_us']:4.1f} "
                f"µs/record, collections/s by generation {per_s}, longest {r['longest_ms']:5.1f} "
                f"ms, peak RSS {r['rss_mib']:.0f} MiB",
                flush=True,
            )


if __name__ == "__main__":
    main()
