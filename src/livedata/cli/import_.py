"""``livedata import ORG CHASSIS FILE…``: recorded CAN logs into a machine's history.

Reads candump ``.log``, Vector ``.asc`` / ``.blf``, PEAK ``.trc``, python-can ``.csv``
and ASAM ``.mf4`` files (:mod:`livedata.pipeline.backfill`), decodes them with the
DBC assigned to the machine and writes the values to the store the server uses
(``--data-dir``, ``--store``, ``--metadata`` or ``--config``, as for ``livedata
serve``) as backfill: stored for history, never pushed live.  A progress line shows
frames, rows, frames/s and the time left; a summary per file follows.

Interrupted imports resume: a checkpoint per machine and file is kept in
``DATA_DIR/imports/`` after every stored batch, and running the same command again
continues after the last stored batch (``--restart`` starts over; either way no
value is stored twice).  Files are imported one after the other; the first file
that cannot be read stops the command with ``error: FILE line N: …`` after
everything before that line was stored.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from livedata.catalog import Catalog, MachineInfo
from livedata.cli.progress import ProgressBar
from livedata.cli.users import db_flags
from livedata.errors import ConfigError, InputError, NotFound
from livedata.metadata import Metadata
from livedata.pipeline.backfill import (
    BATCH_RECORDS,
    FORMATS,
    Checkpoint,
    ImportSummary,
    Progress,
    import_log,
)
from livedata.pipeline.export import iso_ms
from livedata.settings import Settings, load_settings
from livedata.store import Store, open_store

T = TypeVar("T")


def data_flags() -> argparse.ArgumentParser:
    """The flags that find the server's databases (a parent parser for import and export)."""
    parent = db_flags()
    parent.add_argument("--store", help="telemetry store URL: sqlite:///path, postgresql://…")
    return parent


def with_machine(
    args: argparse.Namespace,
    work: Callable[[Settings, Store, Catalog, MachineInfo], Awaitable[T]],
) -> T:
    """Run ``work`` with the store, catalog and machine ``args.org`` / ``args.chassis`` of the
    server's databases."""

    async def machine_work(settings: Settings, store: Store, catalog: Catalog) -> T:
        info = await catalog.machine(args.org, args.chassis)
        if info is None:
            raise NotFound(f"machine {args.chassis!r} not found in organisation {args.org!r}")
        return await work(settings, store, catalog, info)

    return with_databases(args, machine_work)


def with_databases(
    args: argparse.Namespace, work: Callable[[Settings, Store, Catalog], Awaitable[T]]
) -> T:
    """Run ``work`` with the store and catalog of the server's databases (:func:`data_flags`)."""
    settings = load_settings(
        {"data_dir": args.data_dir, "metadata": args.metadata, "store": args.store}, args.config
    )
    for url in (settings.metadata, settings.store):
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            raise ConfigError(
                f"no database at {url.removeprefix('sqlite:///')}: give the server's "
                "--data-dir, --store, --metadata or --config"
            )

    async def main() -> T:
        meta = Metadata(settings.metadata)
        store = open_store(settings.store)
        try:
            await meta.start()
            await store.start()
            return await work(settings, store, Catalog(meta))
        finally:
            await store.close()
            await meta.close()

    return asyncio.run(main())


def parse_time(text: str) -> int:
    """Milliseconds since the epoch from ``1768471200000`` or ISO 8601 (naive = UTC)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{text!r} is not a time: give ms since the epoch or ISO 8601 (2026-01-15T10:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def time_arg(text: str) -> int:
    """:func:`parse_time` for argparse (its error becomes a one-line usage error)."""
    try:
        return parse_time(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def iso(ts: int | None) -> str:
    return "-" if ts is None else iso_ms(ts)


def describe(summary: ImportSummary) -> str:
    """The summary of one file, as printed."""
    s = summary
    lines = [
        f"{Path(s.file).name}: {s.messages:,} messages, {s.frames:,} frames: {s.decoded:,} decoded, "
        f"{s.unknown:,} unknown ids, {s.errors:,} errors, {s.skipped:,} error/remote frames skipped",
        f"  stored {s.records:,} rows ({s.points:,} values) from {iso(s.first_ts)} to "
        f"{iso(s.last_ts)}"
        + (f" (resumed after message {s.resumed_at:,})" if s.resumed_at else ""),
    ]
    lines += [f"  {sample}" for sample in s.error_samples]
    return "\n".join(lines)


def checkpoint_for(settings: Settings, info: MachineInfo, path: Path) -> Checkpoint:
    key = f"{info.tenant}\0{info.chassis}\0{path.resolve()}".encode()
    name = hashlib.sha256(key).hexdigest()[:24]
    return Checkpoint(settings.data_dir / "imports" / f"{name}.json")


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "import",
        parents=[data_flags()],
        help="import recorded CAN logs into a machine's history",
        description=(
            f"Decode CAN log files ({', '.join(FORMATS)}) with the DBC assigned to machine "
            "CHASSIS of organisation ORG and store them as history (backfill: never pushed "
            "live). Resumes an interrupted import of the same file; importing a file twice "
            "stores every value once."
        ),
    )
    parser.add_argument("org", metavar="ORG", help="organisation id")
    parser.add_argument("chassis", metavar="CHASSIS", help="machine (chassis) id")
    parser.add_argument("files", metavar="FILE", nargs="+", type=Path, help="log files")
    parser.add_argument(
        "--start",
        type=time_arg,
        help="the recording's start time (ISO 8601 or ms) for logs with relative timestamps",
    )
    parser.add_argument(
        "--restart", action="store_true", help="ignore checkpoints and import from the start"
    )
    parser.add_argument(
        "--batch", type=int, default=BATCH_RECORDS, help=f"rows per store write ({BATCH_RECORDS})"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise InputError("--batch must be at least 1")

    async def work(settings: Settings, store: Store, _: Catalog, info: MachineInfo) -> int:
        if info.decoder is None:
            raise InputError(f"no DBC file assigned to machine {info.chassis!r}: assign one first")
        for path in args.files:
            checkpoint = checkpoint_for(settings, info, path)
            if args.restart:
                checkpoint.clear()
            bar = ProgressBar(path.name, "frames")
            started = time.monotonic()

            def show(p: Progress, bar: ProgressBar = bar) -> None:
                bar.update(p.messages, p.records, p.done, p.total, p.elapsed)

            summary = await import_log(
                store,
                info.decoder,
                info.tenant,
                info.chassis,
                path,
                start_ms=args.start,
                checkpoint=checkpoint,
                progress=show,
                batch_records=args.batch,
            )
            elapsed = time.monotonic() - started
            bar.update(summary.messages, summary.records, 1, 1, elapsed, final=True)
            print(describe(summary), flush=True)
        return 0

    return with_machine(args, work)
