"""Export a range of a machine's history as CSV or Parquet, streamed in constant memory.

One row per timestamp, one column per field (empty where a field has no value at
that timestamp); the first column is ``time``.

- **CSV**: ``time`` in ISO 8601 UTC with milliseconds (``2026-01-15T10:00:00.000Z``),
  headers ``field [unit]`` (``speed [km/h]``; no brackets without a unit), numbers
  written so they read back to the stored value exactly (``repr`` of floats), text
  quoted when needed.
- **Parquet**: ``time`` is ``timestamp[ms, UTC]``; a field is ``string`` when the first
  chunk that has values of it holds text, else ``double``; the unit is the field's
  metadata (``unit``).  Doubles hold every stored integer below 2**53 exactly.  A
  later value that does not fit its column (text in a number column) is left empty
  and counted in :attr:`Export.dropped`.

Raw export reads the store in time chunks of at most :data:`CHUNK_POINTS` points
per field: a chunk that comes back full (denser data than expected) is halved and
read again, one that comes back sparse makes the next one longer, so memory holds
one chunk (``fields × CHUNK_POINTS`` values) and one encoded block whatever the
range.  Downsampled export (``max_points``) asks the store for the min/max of
``max_points // 2`` buckets per field (:meth:`~livedata.store.base.Store.downsample`):
at most ``max_points`` points per field, numbers only.

Under stress: a store error in the middle of an export propagates out of the
iterator (:class:`~livedata.errors.StoreError`); over HTTP the response is then
cut short (its status line has been sent), which clients see as an incomplete
download, never as a complete file with missing rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from livedata.errors import ConfigError, InputError
from livedata.model import Value
from livedata.store.base import Series, Store

FORMATS = ("csv", "parquet")
CHUNK_POINTS = 20_000
"""Points per field read from the store at once (raw export)."""
FIRST_CHUNK_MS = 3_600_000
MAX_CHUNK_MS = 7 * 86_400_000
ROW_GROUP = 16_384
"""Rows per Parquet row group (buffered before they are written out)."""

Row = tuple[int, list[Value | None]]


@dataclass
class Export:
    """One export: what to read, and counters of what was written."""

    store: Store
    tenant: str
    chassis: str
    msg_type: str
    fields: Sequence[str]
    units: dict[str, str]
    start_ms: int
    end_ms: int
    max_points: int | None = None
    rows: int = 0
    values: int = 0
    dropped: int = 0
    chunks: int = field(default=0, repr=False)
    reached: int = field(default=0, repr=False)
    """The end of the part of the range read so far (for progress)."""

    def __post_init__(self) -> None:
        self.reached = self.start_ms - 1

    async def row_chunks(self) -> AsyncIterator[list[Row]]:
        """Rows in time order, a chunk at a time."""
        if self.max_points is not None:
            series = await self.store.downsample(
                self.tenant,
                self.chassis,
                self.msg_type,
                self.fields,
                self.start_ms,
                self.end_ms,
                max(1, self.max_points // 2),
            )
            rows = self._merge(series)
            self.reached = self.end_ms
            for i in range(0, len(rows), ROW_GROUP):
                yield rows[i : i + ROW_GROUP]
            return
        lo, span = self.start_ms, FIRST_CHUNK_MS
        while lo <= self.end_ms:
            hi = min(self.end_ms, lo + span - 1)
            series = await self.store.query(
                self.tenant, self.chassis, self.msg_type, self.fields, lo, hi, limit=CHUNK_POINTS
            )
            densest = max((len(points) for points in series.values()), default=0)
            if densest >= CHUNK_POINTS and hi > lo:
                span = max(1, (hi - lo + 1) // 2)  # maybe cut short: read less at once
                continue
            self.chunks += 1
            self.reached = hi
            rows = self._merge(series)
            if rows:
                yield rows
            lo = hi + 1
            if densest < CHUNK_POINTS // 4:
                span = min(MAX_CHUNK_MS, span * 2)

    def _merge(self, series: Series) -> list[Row]:
        width = len(self.fields)
        by_ts: dict[int, list[Value | None]] = {}
        for col, name in enumerate(self.fields):
            for ts, value in series.get(name, ()):
                row = by_ts.get(ts)
                if row is None:
                    row = by_ts[ts] = [None] * width
                row[col] = value
                self.values += 1
        self.rows += len(by_ts)
        return sorted(by_ts.items())

    def filename(self, fmt: str) -> str:
        def stamp(ts: int) -> str:
            return datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y%m%dT%H%M%SZ")

        return f"{self.chassis}_{self.msg_type}_{stamp(self.start_ms)}_{stamp(self.end_ms)}.{fmt}"

    def encode(self, fmt: str) -> AsyncIterator[bytes]:
        """The file, as blocks of bytes (one or a few per chunk)."""
        if fmt == "csv":
            return self._csv()
        if fmt == "parquet":
            return self._parquet()
        raise InputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")

    async def _csv(self) -> AsyncIterator[bytes]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            ["time", *(_header(name, self.units.get(name, "")) for name in self.fields)]
        )
        yield buffer.getvalue().encode()
        async for rows in self.row_chunks():
            buffer.seek(0)
            buffer.truncate()
            writer.writerows([iso_ms(ts), *map(_cell, values)] for ts, values in rows)
            yield buffer.getvalue().encode()

    async def _parquet(self) -> AsyncIterator[bytes]:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(
                "Parquet export needs pyarrow: pip install 'livedata[parquet]'"
            ) from None
        chunks = self.row_chunks()
        pending: list[Row] = []
        kinds: dict[str, bool] = {}  # field -> is text, decided by its first values
        async for rows in chunks:
            pending.extend(rows)
            _learn_kinds(kinds, self.fields, rows)
            if len(kinds) == len(self.fields) or len(pending) >= ROW_GROUP:
                break
        schema = pa.schema(
            [pa.field("time", pa.timestamp("ms", tz="UTC"))]
            + [
                pa.field(
                    name,
                    pa.string() if kinds.get(name) else pa.float64(),
                    metadata={"unit": self.units.get(name, "")},
                )
                for name in self.fields
            ]
        )
        sink = _Sink()
        writer = pq.ParquetWriter(sink, schema, compression="zstd")
        text = [kinds.get(name, False) for name in self.fields]

        def write(rows: list[Row]) -> None:
            columns: list[Any] = [pa.array([ts for ts, _ in rows], pa.timestamp("ms", tz="UTC"))]
            for col, is_text in enumerate(text):
                cells = [values[col] for _, values in rows]
                columns.append(self._column(pa, cells, is_text))
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))

        try:
            if pending:
                write(pending)
                pending = []
                yield sink.take()
            async for rows in chunks:
                pending.extend(rows)
                if len(pending) >= ROW_GROUP:
                    write(pending)
                    pending = []
                    yield sink.take()
            if pending:
                write(pending)
        finally:
            writer.close()
        yield sink.take()

    def _column(self, pa: Any, cells: list[Value | None], is_text: bool) -> Any:
        if is_text:
            return pa.array([None if v is None else str(v) for v in cells], pa.string())
        clean: list[float | None] = []
        for v in cells:
            if v is None or isinstance(v, str):
                if v is not None:
                    self.dropped += 1
                clean.append(None)
            else:
                clean.append(float(v))
        return pa.array(clean, pa.float64())


class _Sink:
    """A write-only file for pyarrow whose bytes are taken out as they come."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._size += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def _learn_kinds(kinds: dict[str, bool], fields: Sequence[str], rows: list[Row]) -> None:
    for col, name in enumerate(fields):
        if name in kinds:
            continue
        seen = [values[col] for _, values in rows if values[col] is not None]
        if seen:
            kinds[name] = any(isinstance(v, str) for v in seen)


def _header(name: str, unit: str) -> str:
    return f"{name} [{unit}]" if unit else name


def _cell(value: Value | None) -> Value | str:
    if value is None:
        return ""
    if type(value) is float:
        return repr(value)
    return value


def iso_ms(ts: int) -> str:
    """``2026-01-15T10:00:00.000Z``."""
    return datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
