"""In-process telemetry store: the embedded shape and the tests run on it.

``memory://`` or ``memory://name``.  Like the memory bus, stores opened with the
same URL in one process share their data (roles wired separately still meet);
the data lives as long as the process, ``close`` does not clear it.

Layout: per (tenant, chassis, msg_type, field) one series of two parallel lists,
timestamps kept sorted and their values, so a query is two bisections and a slice.
Records arriving in time order are appended; late ones (backfill) are inserted at
their place.

Duplicates: a point is identified by (tenant, chassis, msg_type, field, ts).
Writing an existing key again **replaces its value (last write wins)** and stores
one point; within one ``write`` call the later record wins.  The SQLite store
behaves the same (``INSERT OR REPLACE``).

Values: ``int``, ``float`` and ``str`` are stored as they are.  A ``bool`` is stored
as ``int`` (what SQLite does), an ``int`` outside 64 bits as ``float``, subclasses
(``IntEnum``, ``StrEnum``) as their base type.  Values that cannot be stored --
``None``, NaN, lists, objects -- are skipped and not counted in the number
``write`` returns, so one bad value never costs the rest of a batch.

Under stress: everything is in RAM and unbounded; memory grows with the data until
:meth:`MemoryStore.delete_before` (retention) removes old points.  A ``write`` runs
synchronously on the event loop (no awaits inside, so concurrent writers never
interleave inside a batch); 100,000 points take in the order of 50 ms.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from urllib.parse import urlsplit

from livedata.model import Record, Value
from livedata.store.base import (
    LatestWindow,
    Series,
    Store,
    bucket_grid,
    check_replacement,
    extremes,
    kept_field,
    storable,
)
from livedata.store.frames import FrameBlob


class _Series:
    __slots__ = ("ts", "values")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.values: list[Value] = []

    def put(self, ts: int, value: Value) -> None:
        times = self.ts
        if not times or ts > times[-1]:
            times.append(ts)
            self.values.append(value)
            return
        i = bisect_left(times, ts)
        if times[i] == ts:
            self.values[i] = value  # last write wins
        else:
            times.insert(i, ts)
            self.values.insert(i, value)


_Machine = dict[str, _Series]
"""The series of one (tenant, chassis, msg_type), by field."""

_shared: dict[str, dict[tuple[str, str, str], _Machine]] = {}
_shared_frames: dict[str, dict[tuple[str, str], dict[int, FrameBlob]]] = {}


class MemoryStore(Store):
    """In-process store; ``memory://name`` shares data with other stores of that name."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        self._machines = _shared.setdefault(parts.netloc + parts.path, {})
        self._frames = _shared_frames.setdefault(parts.netloc + parts.path, {})
        """Raw frame blobs per (tenant, chassis), by ts."""

    async def write(self, records: Sequence[Record]) -> int:
        machines = self._machines
        written = 0
        for record in records:
            key = (record.tenant, record.chassis, record.msg_type)
            machine = machines.get(key)
            if machine is None:
                machine = machines[key] = {}
            ts = record.ts
            for name, raw in record.values.items():
                value = storable(raw)
                if value is None:
                    continue
                series = machine.get(name)
                if series is None:
                    series = machine[name] = _Series()
                series.put(ts, value)
                written += 1
        return written

    async def query(
        self,
        tenant: str,
        chassis: str,
        msg_type: str,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        limit: int = 100_000,
    ) -> Series:
        machine = self._machines.get((tenant, chassis, msg_type), {})
        result: Series = {}
        for name in fields:
            series = machine.get(name)
            if series is None or limit <= 0:
                result[name] = []
                continue
            lo = bisect_left(series.ts, start_ms)
            hi = bisect_right(series.ts, end_ms)
            lo = max(lo, hi - limit)
            result[name] = list(zip(series.ts[lo:hi], series.values[lo:hi], strict=True))
        return result

    async def downsample(
        self,
        tenant: str,
        chassis: str,
        msg_type: str,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        buckets: int,
    ) -> Series:
        """Min/max per bucket in Python: this is the in-memory backend (one pass per field).

        It keeps no rollups: it computes over raw points on the same grid as the SQL
        stores (:func:`~livedata.store.base.bucket_grid`), so it is their reference.
        """
        grid = bucket_grid(start_ms, end_ms, buckets)
        origin, width = grid.origin, grid.width
        machine = self._machines.get((tenant, chassis, msg_type), {})
        result: Series = {}
        for name in fields:
            out: list[tuple[int, Value]] = []
            result[name] = out
            series = machine.get(name)
            if series is None or start_ms > end_ms:
                continue
            lo = bisect_left(series.ts, start_ms)
            hi = bisect_right(series.ts, end_ms)
            current = -1
            low_ts = high_ts = 0
            low: float | int = 0
            high: float | int = 0
            for ts, value in zip(series.ts[lo:hi], series.values[lo:hi], strict=True):
                if type(value) is str:
                    continue
                assert not isinstance(value, str)
                bucket = (ts - origin) // width
                if bucket != current:
                    if current >= 0:
                        out.extend(extremes(low_ts, low, high_ts, high))
                    current, low_ts, low, high_ts, high = bucket, ts, value, ts, value
                elif value < low:
                    low_ts, low = ts, value
                elif value > high:
                    high_ts, high = ts, value
            if current >= 0:
                out.extend(extremes(low_ts, low, high_ts, high))
        return result

    async def delete_before(self, ts_ms: int) -> int:
        deleted = 0
        for machine in self._machines.values():
            for series in machine.values():
                cut = bisect_left(series.ts, ts_ms)
                if cut:
                    del series.ts[:cut]
                    del series.values[:cut]
                    deleted += cut
        return deleted

    async def latest_ts(self, tenant: str, chassis: str, msg_type: str) -> int | None:
        machine = self._machines.get((tenant, chassis, msg_type), {})
        newest = [series.ts[-1] for series in machine.values() if series.ts]
        return max(newest) if newest else None

    async def _latest_rows(self, tenant: str, chassis: Sequence[str]) -> list[tuple[str, str, int]]:
        wanted = set(chassis)
        rows = []
        for key, machine in self._machines.items():
            if key[0] == tenant and key[1] in wanted:
                newest = [series.ts[-1] for series in machine.values() if series.ts]
                if newest:
                    rows.append((key[1], key[2], max(newest)))
        return rows

    async def _latest_value_rows(
        self, tenant: str, msg_type: str, windows: Sequence[LatestWindow]
    ) -> list[tuple[str, str, Value]]:
        """One bisection per machine and field."""
        rows = []
        for chassis, start_ms, end_ms, fields in windows:
            machine = self._machines.get((tenant, chassis, msg_type), {})
            for name in fields:
                series = machine.get(name)
                if series is None:
                    continue
                i = bisect_right(series.ts, end_ms) - 1
                if i >= 0 and series.ts[i] >= start_ms:
                    rows.append((chassis, name, series.values[i]))
        return rows

    def _streams_of(self, tenant: str, chassis: str) -> list[tuple[str, str, str]]:
        return [key for key in self._machines if key[0] == tenant and key[1] == chassis]

    async def machine_points(self, tenant: str, chassis: str) -> int:
        return sum(
            len(series.ts)
            for key in self._streams_of(tenant, chassis)
            for series in self._machines[key].values()
        )

    async def delete_machine(self, tenant: str, chassis: str) -> int:
        deleted = await self.machine_points(tenant, chassis)
        for key in self._streams_of(tenant, chassis):
            del self._machines[key]
        self._frames.pop((tenant, chassis), None)
        return deleted

    async def write_frames(self, blobs: Sequence[FrameBlob]) -> int:
        for blob in blobs:
            self._frames.setdefault((blob.tenant, blob.chassis), {})[blob.ts] = blob
        return len(blobs)

    async def read_frames(
        self, tenant: str, chassis: str, start_ms: int, end_ms: int, limit: int = 1_000
    ) -> list[FrameBlob]:
        """Sorts the machine's timestamps in the range on each call (the reference, not fast)."""
        blobs = self._frames.get((tenant, chassis), {})
        found = sorted(ts for ts in blobs if start_ms <= ts <= end_ms)
        return [blobs[ts] for ts in found[: max(limit, 0)]]

    async def count_frames(self, tenant: str, chassis: str, start_ms: int, end_ms: int) -> int:
        blobs = self._frames.get((tenant, chassis), {})
        return sum(1 for ts in blobs if start_ms <= ts <= end_ms)

    async def delete_frames_before(self, ts_ms: int) -> int:
        deleted = 0
        for blobs in self._frames.values():
            old = [ts for ts in blobs if ts < ts_ms]
            for ts in old:
                del blobs[ts]
            deleted += len(old)
        return deleted

    async def replace_values(
        self,
        tenant: str,
        chassis: str,
        msg_type: str,
        start_ms: int,
        end_ms: int,
        records: Sequence[Record],
        keep: Sequence[str] = (),
    ) -> int:
        """No awaits inside: readers never see the range half-replaced."""
        check_replacement(tenant, chassis, msg_type, start_ms, end_ms, records)
        for name, series in self._machines.get((tenant, chassis, msg_type), {}).items():
            if kept_field(name, keep):
                continue
            lo = bisect_left(series.ts, start_ms)
            hi = bisect_right(series.ts, end_ms)
            del series.ts[lo:hi]
            del series.values[lo:hi]
        return await self.write(records)
