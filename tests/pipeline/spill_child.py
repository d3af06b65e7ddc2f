"""Child process of the kill tests: ingest with the store (or the log) down, printing each
acknowledgement.

``python -m tests.pipeline.spill_child DIR COUNT [store|log]``: metadata, store and
journals in DIR; COUNT messages handled as fast as ingest takes them; ``acked CHASSIS TS``
printed for each acknowledged one.  ``store`` (the default): the store is down, records go
to the spill journal.  ``log``: the log is down, the store up, and ``queue_max`` is 1,000,
so records beyond 500 go to the log journal; once they have and all are acknowledged,
``done JOURNALLED UNLOGGED`` (records in the log journal, records waiting in memory).  Then it waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

from livedata.bus.memory import MemoryLog
from livedata.catalog import Catalog
from livedata.metadata import Metadata
from livedata.pipeline.ingest import Ingest
from livedata.pipeline.spill import LOG, SpillJournal
from livedata.store.sqlite import SQLiteStore
from tests.pipeline.faults import FlakyLog, FlakyStore
from tests.pipeline.test_backpressure import message, seed, until


async def main(directory: Path, count: int, down: str) -> None:
    meta = Metadata(f"sqlite:///{directory}/meta.db")
    await meta.start()
    await seed(meta)
    store = FlakyStore(SQLiteStore(f"sqlite:///{directory}/telemetry.db"), down=down == "store")
    await store.start()
    log = FlakyLog(MemoryLog(f"memory://{uuid.uuid4().hex}"))
    log.down = down == "log"
    ingest = Ingest(
        store,
        log,
        Catalog(meta),
        linger=0.01,
        queue_max=1_000 if down == "log" else 20_000,
        spill=SpillJournal(directory / "spill", 2**26),
        log_journal=SpillJournal(directory / "spill", 2**26, LOG),
    )
    writer = asyncio.create_task(ingest.run())
    acked = [0]
    for n in range(count):
        msg = message(n)

        async def ack(chassis: str = msg.chassis, ts: int = msg.ts) -> None:
            acked[0] += 1
            print(f"acked {chassis} {ts}", flush=True)

        await ingest.handle(msg, ack)
    if down == "log":
        await until(
            lambda: acked[0] == count and ingest.unlogged <= ingest.log_memory_max, 60, "acks"
        )
        assert ingest.log_journal is not None
        print(f"done {ingest.log_journal.records} {ingest.unlogged}", flush=True)
    else:
        print("done", flush=True)
    await writer


if __name__ == "__main__":
    down = sys.argv[3] if len(sys.argv) > 3 else "store"
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), down))
