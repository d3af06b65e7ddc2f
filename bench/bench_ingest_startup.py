"""A fleet's first second through ingest: what each machine's first message costs.

``Ingest.handle_many`` over the first ``client_raw_data`` of ``--machines`` machines
(batches of ``--batch``), PostgreSQL metadata (the ``livedata serve --seed-demo``
organisation), memory store and log: the wall time ingest is kept from its messages
and its CPU.  Each machine's first message has field names never seen before, so this
is the metadata work of a start-up (issue 17, session 10).  Not heavy (one process
and PostgreSQL, seconds)::

    PYTHONPATH=src:. python bench/bench_ingest_startup.py --machines 5000
    PYTHONPATH=/tmp/base/src:. python bench/bench_ingest_startup.py --machines 5000  # before
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from livedata.bus.memory import MemoryLog
from livedata.catalog import Catalog
from livedata.devices.base import Delivery
from livedata.metadata import Metadata
from livedata.model import DeviceMessage, MsgType
from livedata.pipeline.ingest import Ingest
from livedata.sim import ORG
from livedata.sim.demo import seed_demo
from livedata.store.memory import MemoryStore
from tests.servers.postgres import start_postgres


async def run(machines: int, batch: int) -> None:
    postgres = start_postgres()
    try:
        meta = Metadata(postgres.url())
        await meta.start()
        chassis_ids = [f"WL-{i:05d}" for i in range(machines)]
        await seed_demo(meta, chassis_ids)
        store = MemoryStore("memory://")
        await store.start()
        ingest = Ingest(store, MemoryLog(f"memory://{uuid.uuid4().hex}"), Catalog(meta), linger=0)
        task = asyncio.create_task(ingest.run())
        ts = int(time.time() * 1000)
        values = {"cpu_usage": 1, "mem_usage": 2, "a": 3, "b": 4, "c": 5, "d": 6}
        first = [
            Delivery(DeviceMessage(ORG, c, MsgType.CLIENT_RAW_DATA, ts, values=values))
            for c in chassis_ids
        ]
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(0, machines, batch):
            await ingest.handle_many(first[i : i + batch])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            f"{machines:,} machines' first client_raw_data in batches of {batch}: "
            f"wall {wall:.2f} s, ingest CPU {cpu:.2f} s"
        )
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await meta.close()
    finally:
        postgres.stop(remove=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500, help="messages per handle_many (500)")
    args = parser.parse_args()
    asyncio.run(run(args.machines, args.batch))


if __name__ == "__main__":
    main()
