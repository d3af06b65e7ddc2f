"""``livedata redecode ORG --machines … --from … --to … [--dbc ID]``: history decoded again.

Decodes the raw frames kept for the machines over the range with DBC file ``ID``
(default: each machine's current DBC) and replaces their ``vehicle_can`` values
there (:mod:`livedata.pipeline.redecode`, the same code as ``POST …/redecode``),
with a progress line (blobs, values, blobs/s, time left).  Runs in this process
against the server's databases (``--data-dir``, ``--store``, ``--metadata`` or
``--config``); the server may keep running.  Running it again gives the same history.

::

    livedata redecode demo --machines loader-001,loader-002 \\
        --from 2026-01-15T10:00Z --to 2026-01-15T11:00Z --dbc 7
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from livedata.catalog import Catalog
from livedata.cli.import_ import data_flags, time_arg, with_databases
from livedata.cli.progress import ProgressBar
from livedata.errors import BackendError
from livedata.pipeline.redecode import Redecoder
from livedata.settings import Settings
from livedata.store import Store

POLL_S = 0.2


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "redecode",
        parents=[data_flags()],
        help="decode a range of machines' history again from their kept raw frames",
        description=(
            "Decode the raw CAN frames kept for machines of organisation ORG over a time range "
            "again, with DBC file --dbc (default: each machine's current one), and replace "
            "their decoded history there. Raw frames are kept for frames_retention_days."
        ),
    )
    parser.add_argument("org", metavar="ORG", help="organisation id")
    parser.add_argument("--machines", required=True, help="comma-separated machine (chassis) ids")
    parser.add_argument("--from", dest="start", type=time_arg, required=True, help="ISO 8601 or ms")
    parser.add_argument("--to", dest="end", type=time_arg, required=True, help="ISO 8601 or ms")
    parser.add_argument("--dbc", type=int, help="DBC file id (default: each machine's own)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    machines = [m.strip() for m in args.machines.split(",") if m.strip()]

    async def work(_: Settings, store: Store, catalog: Catalog) -> int:
        redecoder = Redecoder(store, catalog)
        job, _started = await redecoder.start(args.org, machines, args.start, args.end, args.dbc)
        bar = ProgressBar("redecode", "values")
        started = time.monotonic()
        waiting = asyncio.ensure_future(redecoder.wait(args.org))
        try:
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=POLL_S)
                elapsed = time.monotonic() - started
                bar.update(job.values, job.done, job.done, job.total, elapsed)
        finally:
            await redecoder.close()
        bar.update(job.values, job.done, 1, 1, time.monotonic() - started, final=True)
        if job.state != "done":
            raise BackendError(f"re-decoding {job.state}: {job.error}")
        print(
            f"{len(job.machines)} machines: {job.done:,} seconds of raw frames re-decoded, "
            f"{job.values:,} values, {job.errors:,} frame errors",
            flush=True,
        )
        return 0

    return with_databases(args, work)
