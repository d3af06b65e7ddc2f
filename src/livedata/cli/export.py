"""``livedata export ORG CHASSIS``: a range of a machine's history to a CSV or Parquet file.

Reads the store the server uses (``--data-dir``, ``--store``, ``--metadata`` or
``--config``) in constant memory (:mod:`livedata.pipeline.export`, the same code as
the HTTP export), with a progress line (values, rows, values/s, time left).  The
file is written as ``FILE.part`` and renamed when complete, so a file with the
final name is never a cut-short export.

::

    livedata export demo loader-001 --from 2026-01-15T10:00Z --to 2026-01-15T11:00Z \\
        --fields engine_rpm,speed --format parquet -o run.parquet
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from livedata.catalog import Catalog, MachineInfo
from livedata.cli.import_ import data_flags, time_arg, with_machine
from livedata.cli.progress import ProgressBar
from livedata.errors import InputError
from livedata.model import MsgType, valid_id
from livedata.pipeline.export import FORMATS, Export
from livedata.settings import Settings
from livedata.store import Store

DEFAULT_SPAN_MS = 3_600_000


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "export",
        parents=[data_flags()],
        help="export a range of a machine's history to CSV or Parquet",
        description=(
            "Write the history of machine CHASSIS of organisation ORG to a file: one row per "
            "timestamp, one column per field (units in the CSV header, typed Parquet columns)."
        ),
    )
    parser.add_argument("org", metavar="ORG", help="organisation id")
    parser.add_argument("chassis", metavar="CHASSIS", help="machine (chassis) id")
    parser.add_argument(
        "--msg-type", default=MsgType.VEHICLE_CAN.value, choices=[t.value for t in MsgType]
    )
    parser.add_argument("--fields", help="comma-separated field names (default all)")
    parser.add_argument("--from", dest="start", type=time_arg, help="ISO 8601 or ms (to - 1 h)")
    parser.add_argument("--to", dest="end", type=time_arg, help="ISO 8601 or ms (default now)")
    parser.add_argument("--format", choices=FORMATS, help="csv or parquet (default: -o's suffix)")
    parser.add_argument(
        "--max-points", type=int, help="downsample to at most this many points per field"
    )
    parser.add_argument(
        "-o", "--output", type=Path, help="file to write (default a name of the range)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None:
        suffix = args.output.suffix.lstrip(".").lower() if args.output else ""
        fmt = suffix if suffix in FORMATS else "csv"
    if args.max_points is not None and args.max_points < 2:
        raise InputError("--max-points must be at least 2")
    end = args.end if args.end is not None else int(time.time() * 1000)
    start = args.start if args.start is not None else end - DEFAULT_SPAN_MS
    if start > end:
        raise InputError("--from is after --to")

    async def work(_: Settings, store: Store, catalog: Catalog, info: MachineInfo) -> int:
        units = {f["name"]: f["unit"] or "" for f in await catalog.fields(info, args.msg_type)}
        names = (
            list(units)
            if args.fields is None
            else [f.strip() for f in args.fields.split(",") if f.strip()]
        )
        bad = [f for f in names if not valid_id(f)]
        if bad or not names:
            raise InputError(f"invalid or no field names: {bad[:5] or args.fields!r}")
        job = Export(
            store,
            info.tenant,
            info.chassis,
            args.msg_type,
            names,
            units,
            start,
            end,
            args.max_points,
        )
        output: Path = args.output or Path(job.filename(fmt))
        part = output.with_name(output.name + ".part")
        bar = ProgressBar(output.name, "values")
        started = time.monotonic()
        try:
            with part.open("wb") as out:
                async for block in job.encode(fmt):
                    out.write(block)
                    elapsed = time.monotonic() - started
                    bar.update(
                        job.values, job.rows, job.reached - start + 1, end - start + 1, elapsed
                    )
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        part.replace(output)
        bar.update(job.values, job.rows, 1, 1, time.monotonic() - started, final=True)
        print(
            f"{output}: {job.rows:,} rows, {job.values:,} values, {len(names)} fields", flush=True
        )
        return 0

    return with_machine(args, work)
