"""The ingest role's own decoding work per message, piece by piece, against the code before.

On ``--seconds`` simulated seconds of ``--machines`` wheel loaders (``sim.fleet``: a
``vehicle_can`` message of 12 frames with a DM1, and a ``client_raw_data`` one, per
machine and second), encoded as devices send them.  For each code under test
(``--before TREE``: a checkout of the code before; and this checkout) a worker process
measures, ``--rounds`` times with the codes taking turns (load from other processes
falls on both alike), the best of ``--repeat`` passes of each piece in CPU µs per
message:

* ``codec.decode`` of the ``vehicle_can`` and the ``client_raw_data`` payloads;
* ``CanDecoder.decode`` of the frames (the machine's bus state kept), DM1 parsing in it;
* ``pack_frames`` (the raw frame keeper's blob of a message);
* the values check ingest makes on decoded CAN values (``normalised``; nothing when
  the decoder says its values are storable as decoded);
* ``DtcService.observe_many`` in batches of 200 on the fleet's latest second again and
  again: the steady state, each ECU repeating its DM1 (some machines with a DTC active);
* the whole path: ``codec.decode`` and ``Ingest.handle_many`` of batches of 200 (SQLite
  metadata, memory log, a store that takes writes at no cost), per record, on the
  event-loop thread (the log appender and store writer tasks included); the seconds
  after the 4 of warm-up, pushed ``--repeat`` / 2 times (so their DM1s are late from the
  second time on);
* the ClickHouse store's own work on its writer thread per record of ingest's store
  batches (the records of that path, in batches of ``2 x --machines`` records: a second
  of the fleet): ``ClickHouseStore._write_batch``
  as ingest calls it (``write_normalised``'s, where the code has it) with its client
  replaced by one that encodes the insert block into a socket writer of a null socket
  and answers every query with no rows (no server: the Python work, which holds the GIL
  against ingest's event loop); each batch written again and again, so the streams'
  open minutes are cached as in a live fleet.

The garbage collector runs as in the ingest role (``tune_gc``).  Printed: each piece's best
round per code, and the ratio.

Run: ``python bench/bench_decodepath.py --before /tmp/base [--machines 1000 --rounds 3]``.
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_codec import best_rounds  # noqa: E402
from bench.bench_mqtt_link import run_script  # noqa: E402

BATCH = 200
"""Messages per ``handle_many`` / ``observe_many`` call."""


def best_of(repeat: int, count: int, run: Callable[[], object]) -> float:
    """The best of ``repeat`` runs of ``run`` in CPU µs per item (``count`` items a run)."""
    times = []
    for _ in range(repeat):
        cpu0 = time.thread_time()
        run()
        times.append(time.thread_time() - cpu0)
    return min(times) / count * 1e6


def read_text(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8")


async def demo_metadata(url: str, dbc_text: str, chassis_ids: Sequence[str]) -> Any:
    """Started metadata at ``url`` seeded as the demo is: its organisation, the wheel-loader
    DBC assigned to its model, and a machine per chassis id."""
    from livedata.metadata import Metadata
    from livedata.sim.demo import MODEL, ORG

    meta = Metadata(url)
    await meta.start()
    await meta.ensure_org(ORG, "Demo fleet")
    dbc = await meta.add_dbc(ORG, "loader.dbc", dbc_text)
    await meta.assign_model_dbc(ORG, MODEL, dbc.id)
    for n, chassis in enumerate(chassis_ids, 1):
        await meta.upsert_machine(ORG, chassis, f"Wheel loader {n}", MODEL)
    return meta


async def running_ingest(meta: Any, store: Any, **options: Any) -> tuple[Any, list[Any]]:
    """An :class:`Ingest` on ``store`` (started here) and a memory log drained by a task,
    running; with its tasks (``run`` and the drain) to cancel at the end."""
    from livedata.bus.memory import MemoryLog
    from livedata.catalog import Catalog
    from livedata.pipeline.ingest import Ingest

    log = MemoryLog(f"memory://bench-{uuid.uuid4().hex}")
    await store.start()
    await log.start()
    ingest = Ingest(store, log, Catalog(meta), **options)

    async def drain() -> None:
        async for _ in log.consume("bench"):
            pass

    return ingest, [asyncio.create_task(ingest.run()), asyncio.create_task(drain())]


async def worker(machines: int, seconds: int, repeat: int) -> None:
    from livedata.cli.common import tune_gc
    from livedata.codec import decode, encode
    from livedata.decode.can import BusState, CanDecoder
    from livedata.devices.base import Delivery
    from livedata.model import DeviceMessage, MsgType, Record
    from livedata.pipeline.dtcs import DtcService
    from livedata.sim.demo import DBC_PATH, ORG
    from livedata.sim.fleet import Fleet, default_chassis_ids
    from livedata.store.base import normalised
    from livedata.store.frames import pack_frames
    from livedata.store.memory import MemoryStore

    written: list[Record] = []

    class FreeStore(MemoryStore):
        """Takes every write at no cost (keeping the records for the ClickHouse piece)."""

        async def write(self, records: Sequence[Record]) -> int:
            written.extend(records)
            return sum(len(r.values) for r in records)

    dbc_text = read_text(DBC_PATH)
    decoder = CanDecoder.from_dbc(dbc_text)
    chassis_ids = default_chassis_ids(machines)
    wires: list[tuple[str, str, str, bytes]] = []

    async def collect(message: DeviceMessage) -> None:
        wires.append((message.tenant, message.chassis, message.msg_type, encode(message)))

    fleet = Fleet(ORG, chassis_ids, decoder, collect)
    start = (int(time.time()) - seconds) * 1000
    for i in range(seconds):
        await fleet.tick(start + i * 1000)
    can = [w for w in wires if w[2] == MsgType.VEHICLE_CAN]
    raw = [w for w in wires if w[2] != MsgType.VEHICLE_CAN]
    messages = [decode(*w) for w in can]
    buses = {chassis: BusState() for chassis in chassis_ids}

    with tempfile.TemporaryDirectory() as tmp:
        meta = await demo_metadata(f"sqlite+aiosqlite:///{tmp}/meta.db", dbc_text, chassis_ids)

        # the whole path first, as ingest runs it (its warm-up loads the catalog)
        ingest, tasks = await running_ingest(meta, FreeStore("memory://"))

        async def push(items: list[tuple[str, str, str, bytes]]) -> None:
            for at in range(0, len(items), BATCH):
                batch = [Delivery(decode(*w), None) for w in items[at : at + BATCH]]
                await ingest.handle_many(batch)
                await asyncio.sleep(0)

        await push(wires[: 4 * machines])
        try:  # as the ingest role does once started: the set-up frozen, collections rarer
            tune_gc({"ingest"})
        except TypeError:  # code from before tune_gc took the roles
            tune_gc()
        timed = wires[4 * machines :]
        path = []
        async with asyncio.timeout(300):  # fail rather than hold the shared lock if stuck
            for _ in range(max(1, repeat // 2)):
                cpu0 = time.thread_time()
                await push(timed)
                path.append((time.thread_time() - cpu0) / len(timed) * 1e6)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        out: dict[str, float] = {}
        out["codec.decode vehicle_can"] = best_of(
            repeat, len(can), lambda: [decode(*w) for w in can]
        )
        out["codec.decode client_raw_data"] = best_of(
            repeat, len(raw), lambda: [decode(*w) for w in raw]
        )
        out["CanDecoder.decode"] = best_of(
            repeat,
            len(messages),
            lambda: [decoder.decode(m.frames, buses[m.chassis]) for m in messages],
        )
        out["pack_frames"] = best_of(
            repeat, len(messages), lambda: [pack_frames(m, m.ts) for m in messages]
        )
        values = [decoder.decode(m.frames, buses[m.chassis]).values for m in messages]
        storable = getattr(decoder, "storable", False)
        out["values check (normalised)"] = best_of(
            repeat, len(values), lambda: [v if storable else normalised(v) for v in values]
        )
        dm1s = [
            (m.tenant, m.chassis, decoder.decode(m.frames, buses[m.chassis]).dm1)
            for m in messages[-machines:]
        ]
        service = DtcService(meta)
        batches = [dm1s[at : at + BATCH] for at in range(0, len(dm1s), BATCH)]
        for batch in batches:  # loads the machines, applies the changes once
            await service.observe_many(batch)
        steady = []
        for _ in range(repeat):
            cpu0 = time.thread_time()
            for batch in batches:
                await service.observe_many(batch)
            steady.append((time.thread_time() - cpu0) / len(dm1s) * 1e6)
        out["DtcService.observe_many, repeated DM1s"] = min(steady)
        out["codec.decode + Ingest.handle_many, per record"] = min(path)
        out["ClickHouseStore._write_batch, per record"] = clickhouse_write(
            written[-2 * machines * 4 :], 2 * machines, repeat
        )
        active: Any = sum(1 for s in service._machines.values() if s.active)
        out["machines with a DTC active"] = active
        await meta.close()
    print(json.dumps(out))


def clickhouse_write(records: list[Any], batch: int, repeat: int) -> float:
    """CPU µs per record of ``ClickHouseStore._write_batch`` on ``records`` in batches of
    ``batch``, as ingest calls it, without a server (see the module docstring)."""
    import inspect

    from clickhouse_driver.bufferedwriter import BufferedSocketWriter

    from livedata.store.clickhouse import ClickHouseStore

    class NullSocket:
        def sendall(self, data: bytes) -> None:
            pass

    class Sink:
        def execute(self, query: str, data: Any = None, **kwargs: Any) -> list[Any]:
            if hasattr(data, "write"):  # the insert's block, encoded as the server gets it
                out = BufferedSocketWriter(NullSocket(), 1 << 20)
                data.write(out, 54_460)  # a current server's protocol revision
                out.flush()
            return []

    store = ClickHouseStore("clickhouse://localhost/bench")
    sink = Sink()
    store._client = lambda: sink
    checked = "checked" in inspect.signature(store._write_batch).parameters
    options = {"checked": True} if checked else {}
    batches = [records[at : at + batch] for at in range(0, len(records), batch)]
    for part in batches:  # the streams' open minutes cached, as in a running ingest
        store._write_batch(part, 1, **options)

    def run() -> None:
        for part in batches:
            store._write_batch(part, 1, **options)

    return best_of(repeat, len(records), run)


def run_worker(src: Path, machines: int, seconds: int, repeat: int) -> dict[str, float]:
    result: dict[str, float] = run_script(
        __file__,
        src,
        "--worker",
        f"--machines={machines}",
        f"--seconds={seconds}",
        f"--repeat={repeat}",
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the code before")
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=8, help="simulated seconds (4 warm up)")
    parser.add_argument("--repeat", type=int, default=7, help="passes per piece and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(worker(args.machines, args.seconds, args.repeat))
        return
    codes, best = best_rounds(
        args.rounds,
        args.before,
        lambda src: run_worker(src, args.machines, args.seconds, args.repeat),
    )
    print(
        f"load average {os.getloadavg()[0]:.1f}; {args.machines} machines, {args.seconds} "
        f"simulated s, best of {args.rounds} rounds x {args.repeat} passes"
    )
    for piece in best["after"]:
        unit = "" if piece.startswith("machines") else " µs"
        line = [f"{piece:46}"]
        for name in codes:
            line.append(f"{name} {best[name][piece]:7.2f}{unit}")
        if "before" in best and unit and best["after"][piece]:
            line.append(f"ratio {best['before'][piece] / best['after'][piece]:.2f}x")
        print("  ".join(line))


if __name__ == "__main__":
    main()
