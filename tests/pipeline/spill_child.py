"""Child process of the kill test: ingest with the store down, printing each acknowledgement.

``python -m tests.pipeline.spill_child DIR COUNT``: metadata, store and spill journal in
DIR; COUNT messages handled as fast as ingest takes them; ``acked CHASSIS TS`` printed
for each acknowledged one; then it waits to be killed.
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
from livedata.pipeline.spill import SpillJournal
from livedata.store.sqlite import SQLiteStore
from tests.pipeline.faults import FlakyStore
from tests.pipeline.test_backpressure import message, seed


async def main(directory: Path, count: int) -> None:
    meta = Metadata(f"sqlite:///{directory}/meta.db")
    await meta.start()
    await seed(meta)
    store = FlakyStore(SQLiteStore(f"sqlite:///{directory}/telemetry.db"), down=True)
    await store.start()
    log = MemoryLog(f"memory://{uuid.uuid4().hex}")
    ingest = Ingest(
        store, log, Catalog(meta), linger=0.01, spill=SpillJournal(directory / "spill", 2**26)
    )
    writer = asyncio.create_task(ingest.run())
    for n in range(count):
        msg = message(n)

        async def ack(chassis: str = msg.chassis, ts: int = msg.ts) -> None:
            print(f"acked {chassis} {ts}", flush=True)

        await ingest.handle(msg, ack)
    print("done", flush=True)
    await writer


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
