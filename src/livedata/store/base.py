"""The store interface; its contract is tested by ``tests/store/contract.py`` on every backend.

The store keeps values in a narrow shape, one row per
(tenant, chassis, msg_type, field, ts).  Writing the same key twice keeps one row
(writes are idempotent, so a record delivered twice is stored once).
"""

from __future__ import annotations

import abc
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from livedata.model import Record, Value
from livedata.store.frames import FrameBlob

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

Series = dict[str, list[tuple[int, Value]]]
"""Per field, ``[ts_ms, value]`` pairs in time order: what an ECharts time axis takes."""

LATEST_MANY_MAX = 500
"""Machines :meth:`Store.latest_many` and :meth:`Store.latest_values_many` ask the engine
about in one read at most (bounds the size of a query's machine list)."""


class LatestWindow(NamedTuple):
    """One machine's part of a :meth:`Store.latest_values_many` read: the fields whose
    latest value in ``start_ms <= ts <= end_ms`` is wanted (names distinct, never empty)."""

    chassis: str
    start_ms: int
    end_ms: int
    fields: tuple[str, ...]


MINUTE_MS = 60_000
ROLLUP_LEVELS_MS = (10_000, MINUTE_MS)
"""The rollup steps of the SQL stores, finest first: per series and step-long bucket
(``ts // step``) the minimum and the maximum point (ClickHouse keeps the minute only).
Each step divides the next and the minute, so a store can (re)compute every step of a
minute from that minute's raw points at once."""
SNAP_SLACK = 1.25
"""A grid may round its bucket width up to whole rollup steps when the result is at
most this much wider than asked (at most 20 % fewer buckets)."""
SETTLE_LAG_MS = (5_000, 55_000)
"""A stream's minute is *settled* (its rollups computed) once the stream's newest point
is this far into a later minute: from 5 s up to 60 s depending on the stream, so that a
fleet's streams, which all cross a minute together, settle their minutes at spread out
moments instead of in one write."""


class Store(abc.ABC):
    """Where every record is kept.

    Under stress: ``write`` raises :class:`~livedata.errors.StoreError` when the
    engine fails; nothing is half-written in a way that a retry of the same batch
    would duplicate.  ``query`` never returns more than ``limit`` points per field
    (the oldest are dropped first, so a chart keeps its newest data).
    """

    url: str

    batch_max: int = 5_000
    """Records ingest gathers into one :meth:`write` at most, for this backend (the
    ``store_batch_max`` setting overrides it)."""
    batch_ms: float = 50.0
    """How long ingest lets a batch gather after its oldest record, in ms, for this backend
    (the ``store_batch_ms`` setting overrides it): short where a write is cheap (SQLite,
    memory), longer where the engine prefers fewer, larger inserts (ClickHouse).  It
    delays storing, not live data; acknowledgements wait for it only until the device
    link's window of unacknowledged messages is full (see ``Ingest``)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and create the schema if needed."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release connections."""

    @abc.abstractmethod
    async def write(self, records: Sequence[Record]) -> int:
        """Store ``records``; return the number of values (points) written."""

    async def write_normalised(self, records: Sequence[Record]) -> int:
        """:meth:`write` of records whose values are as :func:`normalised` leaves them (the
        caller checked them, as ingest does when it decodes): a store may skip its own check
        of every value (ClickHouse, PostgreSQL), the others store them as :meth:`write`.
        Only for values so checked: a store that skips the check may store another value
        as it is or fail on it."""
        return await self.write(records)

    @abc.abstractmethod
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
        """Values of ``fields`` with ``start_ms <= ts <= end_ms``; every asked field is a key."""

    @abc.abstractmethod
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
        """Min/max downsampling of ``fields`` over ``start_ms <= ts <= end_ms``, in the store.

        The range is cut into at most ``buckets`` time buckets by :func:`bucket_grid`:
        bucket ``k`` holds ``origin + k * width <= ts < origin + (k + 1) * width``
        (clipped to the range).  For a short range (buckets narrower than 8 s) that is
        ``buckets`` equal buckets from ``start_ms`` (``origin = start_ms``, ``width`` from
        :func:`bucket_width`); for a longer one the width is rounded up to whole rollup
        steps (:data:`ROLLUP_LEVELS_MS`, 10 s or 1 min) and the origin down to one, so
        that the SQL stores can answer from their rollups -- at most 20 % fewer buckets
        than asked.  For each field and non-empty bucket the result holds the bucket's
        minimum and its maximum as two points at the timestamps where they occur -- one
        point when both are the same point (a bucket of one point, or of equal values at
        one ts) -- in time order, so a line chart of the result keeps every spike.  When
        a minimum or maximum occurs more than once in a bucket, any of its points may be
        chosen.  At most ``2 * buckets`` points per field.  The result is what this
        computation over the stored raw points gives, whether a backend reads raw points
        or its rollups.

        Numeric values only: string values are left out (a field of text alone comes
        back ``[]``); ints and floats keep their type.  Every asked field is a key,
        ``[]`` when it has no numeric data in the range; a reversed range gives ``[]``
        for every field.  ``buckets < 1`` raises :class:`ValueError`.  Unlike
        :meth:`query` there is no ``limit``: the result is bounded by ``buckets``.
        Backends compute it with SQL aggregation, never over raw rows in Python
        (except the in-memory store).
        """

    @abc.abstractmethod
    async def delete_before(self, ts_ms: int) -> int:
        """Retention: delete values older than ``ts_ms``; return how many were deleted."""

    @abc.abstractmethod
    async def latest_ts(self, tenant: str, chassis: str, msg_type: str) -> int | None:
        """Timestamp of the newest stored value of a machine and message type."""

    async def latest_many(self, tenant: str, chassis: Iterable[str]) -> dict[str, dict[str, int]]:
        """The newest timestamp per message type of each of ``chassis``: what :meth:`latest_ts`
        gives, for many machines at once (a fleet view seeding its machines, nodata checks).

        Every asked machine is a key; its dict holds the message types it has stored values
        of (``{}`` for none).  Under stress: one read per :data:`LATEST_MANY_MAX` machines
        (not one per machine and message type), so a burst of thousands of machines costs
        the engine a handful of queries; duplicates are asked once.
        """
        wanted = list(dict.fromkeys(chassis))
        newest: dict[str, dict[str, int]] = {c: {} for c in wanted}
        for start in range(0, len(wanted), LATEST_MANY_MAX):
            for machine, msg_type, ts in await self._latest_rows(
                tenant, wanted[start : start + LATEST_MANY_MAX]
            ):
                newest[machine][msg_type] = int(ts)
        return newest

    @abc.abstractmethod
    async def _latest_rows(
        self, tenant: str, chassis: Sequence[str]
    ) -> Iterable[tuple[str, str, int]]:
        """For :meth:`latest_many`: ``(chassis, msg_type, newest ts)`` of every stream of the
        machines (at most :data:`LATEST_MANY_MAX`) with stored values, in one read."""

    async def latest_values_many(
        self,
        tenant: str,
        msg_type: str,
        wanted: Mapping[str, tuple[int, Sequence[str]]],
        window_ms: int,
    ) -> dict[str, dict[str, Value]]:
        """The latest value of each given field of many machines' ``msg_type`` streams.

        ``wanted`` maps a chassis to ``(newest_ts, fields)``; per field the result holds
        its value at its newest timestamp in ``newest_ts - window_ms <= ts <= newest_ts``:
        the last point of what :meth:`query` of that range gives, for many machines at
        once (a fleet view seeding the machines it meets, ``newest_ts`` from
        :meth:`latest_many`).  Every asked machine is a key; its dict holds the asked fields
        with a value in its window (``{}`` for none, for no fields, for no data).

        Under stress: one read per :data:`LATEST_MANY_MAX` machines with fields (not one
        per machine), each reading only the machines' windows, so seeding thousands of
        machines costs the engine a handful of queries; keep the window short (seconds):
        its points are read to find each field's newest.
        """
        latest: dict[str, dict[str, Value]] = {chassis: {} for chassis in wanted}
        windows = [
            LatestWindow(chassis, newest - window_ms, newest, tuple(dict.fromkeys(fields)))
            for chassis, (newest, fields) in wanted.items()
            if fields and window_ms >= 0
        ]
        for start in range(0, len(windows), LATEST_MANY_MAX):
            chunk = windows[start : start + LATEST_MANY_MAX]
            asked = {window.chassis: set(window.fields) for window in chunk}
            for chassis, name, value in await self._latest_value_rows(tenant, msg_type, chunk):
                if name in asked[chassis]:
                    latest[chassis][name] = value
        return latest

    @abc.abstractmethod
    async def _latest_value_rows(
        self, tenant: str, msg_type: str, windows: Sequence[LatestWindow]
    ) -> Iterable[tuple[str, str, Value]]:
        """For :meth:`latest_values_many`: ``(chassis, field, value)`` of the newest point of
        each window's fields in its range (deduplicated as :meth:`query` does), of at most
        :data:`LATEST_MANY_MAX` windows of distinct machines, in one read.  Rows of fields
        not asked of a machine may come too (a backend may read the union of the
        windows' fields); they are dropped."""

    @abc.abstractmethod
    async def machine_points(self, tenant: str, chassis: str) -> int:
        """How many values of a machine are stored (every message type and field).

        For the machine registry's "delete this machine and its data?" question: it
        counts the machine's rows, which may read all of them (an admin action).
        """

    @abc.abstractmethod
    async def delete_machine(self, tenant: str, chassis: str) -> int:
        """Delete every stored value of a machine (and its rollups); return how many.

        Afterwards :meth:`query`, :meth:`downsample` and :meth:`latest_ts` know nothing
        of it; values written later for the same ids are stored as new.  Its raw
        frames (:meth:`read_frames`) are deleted too.
        """

    # -- raw frames, for re-decoding -------------------------------------------------

    @abc.abstractmethod
    async def write_frames(self, blobs: Sequence[FrameBlob]) -> int:
        """Keep raw frame blobs; return how many.

        A blob is identified by (tenant, chassis, ts): writing it again replaces it
        (last write wins), so a redelivered message is kept once.  Raw frames have a
        retention of their own (:meth:`delete_frames_before`).
        """

    @abc.abstractmethod
    async def read_frames(
        self, tenant: str, chassis: str, start_ms: int, end_ms: int, limit: int = 1_000
    ) -> list[FrameBlob]:
        """The oldest ``limit`` blobs of a machine with ``start_ms <= ts <= end_ms``, in
        time order (page on with ``start_ms`` = the last ts + 1)."""

    @abc.abstractmethod
    async def count_frames(self, tenant: str, chassis: str, start_ms: int, end_ms: int) -> int:
        """How many blobs :meth:`read_frames` would return over the range without a limit."""

    @abc.abstractmethod
    async def delete_frames_before(self, ts_ms: int) -> int:
        """Retention of raw frames: delete the blobs older than ``ts_ms``; how many."""

    @abc.abstractmethod
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
        """Re-decoding: the stream's values with ``start_ms <= ts <= end_ms`` become ``records``.

        Every value of (tenant, chassis, msg_type) in the range is deleted -- except
        those of fields whose name starts with one of ``keep`` -- and ``records`` (all
        of that stream, inside the range, else :class:`ValueError`) are written; the
        number of values written is returned.  Afterwards :meth:`query` and
        :meth:`downsample` give exactly what writing the remaining and the new values
        gives; nothing outside the range, stream or kept fields changes.  Whether
        readers can see the range half-replaced meanwhile is the backend's to say.
        """


def kept_field(name: str, keep: Sequence[str]) -> bool:
    """Whether :meth:`Store.replace_values` keeps field ``name`` (it starts with one of ``keep``)."""
    return any(name.startswith(prefix) for prefix in keep)


def check_replacement(
    tenant: str, chassis: str, msg_type: str, start_ms: int, end_ms: int, records: Sequence[Record]
) -> None:
    """:class:`ValueError` unless every record is of the stream and inside the range."""
    for record in records:
        if (record.tenant, record.chassis, record.msg_type) != (tenant, chassis, msg_type):
            raise ValueError(f"a record of {record.chassis}/{record.msg_type} in a replacement")
        if not start_ms <= record.ts <= end_ms:
            raise ValueError(f"a record at {record.ts}, outside [{start_ms}, {end_ms}]")


def bucket_width(start_ms: int, end_ms: int, buckets: int) -> int:
    """The width in ms of each of ``buckets`` equal buckets covering ``[start_ms, end_ms]``.

    Rounded up (at least 1 ms), so ``(ts - start_ms) // width < buckets`` for every ts in
    the range: never more than ``buckets`` buckets.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, not {buckets}")
    span = max(end_ms - start_ms + 1, 1)
    return max(1, -(-span // buckets))


@dataclass(frozen=True)
class Grid:
    """Downsampling buckets: bucket ``k`` is ``origin + k * width <= ts < origin + (k + 1) * width``."""

    origin: int
    width: int
    step: int
    """The coarsest rollup step (one of :data:`ROLLUP_LEVELS_MS`) that tiles the grid: origin and
    width are multiples of it; ``1`` when the grid is for raw points only."""

    def bucket(self, ts: int) -> int:
        """The bucket index of ``ts`` (``ts >= origin``)."""
        return (ts - self.origin) // self.width


def bucket_grid(start_ms: int, end_ms: int, buckets: int) -> Grid:
    """The buckets of :meth:`Store.downsample`: at most ``buckets`` of them cover the range.

    The plain grid is :func:`bucket_width` from ``start_ms``.  When that width is at least
    8 s, the coarsest rollup step whose rounding costs at most :data:`SNAP_SLACK` is taken
    instead: origin rounded down and width rounded up to whole steps.  Every backend uses
    this grid, so results agree whether computed from raw points or from rollups.
    """
    width = bucket_width(start_ms, end_ms, buckets)
    for step in reversed(ROLLUP_LEVELS_MS):
        origin = start_ms - start_ms % step
        needed = -(-(end_ms - origin + 1) // buckets)
        snapped = -(-needed // step) * step
        if snapped <= width * SNAP_SLACK:
            return Grid(origin, snapped, step)
    return Grid(start_ms, width, 1)


def settle_lag(key: int) -> int:
    """The settle lag (:data:`SETTLE_LAG_MS`) of the stream numbered ``key``."""
    low, spread = SETTLE_LAG_MS
    return low + (key * 7_919) % spread // 1_000 * 1_000


GROUP_LAG_STEP_MS = 10_000
"""With groups of minutes (``span`` > 1), a stream's settle lag is :func:`settle_lag`
rounded down to the lowest lag plus a multiple of this (5, 15, ... 55 s): the fleet's
streams settle in cohorts (10 offsets of a 10-minute span times 6 lags: one cohort
every 10 s) instead of a few streams every second, so a store settles each cohort in
one write (one roll-up statement) instead of in nearly every write."""

GROUP_DELAY_MS = 180_000
"""With groups of minutes (``span`` > 1), added to every stream's lag (185, 195, ... 235 s):
a store that reads a group back to roll it up (ClickHouse) reads whole index granules,
and a part of the newest seconds holds thousands of streams per granule, so a cohort's
read back took most of every granule of the newest parts; minutes later they are merged
into larger parts (read back per record written: 7.9 at 5-55 s, 5.0 at 185-235 s,
``bench/bench_clickhouse_growth.py``, ``bench/README.md``)."""


def first_open_minute(last_ts: int, key: int, span: int = 1) -> int:
    """The oldest minute not yet settled when the newest point of ``key`` is at ``last_ts``.

    Minutes before it have exact rollups; it and the minutes up to ``last_ts // MINUTE_MS``
    (one or two; up to ``span + 1``) may not, and are read raw.  ``span``: minutes settle
    in groups of that many (spread over the streams by ``key``), so that a store which
    reads whole blocks of a stream's points to roll up reads each block once per group;
    their lags are whole :data:`GROUP_LAG_STEP_MS` past :data:`GROUP_DELAY_MS` and the lowest.
    """
    if span == 1:
        return (last_ts - settle_lag(key)) // MINUTE_MS
    offset, steps = settle_cohort(key, span)
    lag = GROUP_DELAY_MS + SETTLE_LAG_MS[0] + steps * GROUP_LAG_STEP_MS
    minute = (last_ts - lag) // MINUTE_MS
    return (minute - offset) // span * span + offset


def settle_cohort(key: int, span: int) -> tuple[int, int]:
    """The cohort of the stream numbered ``key`` with groups of ``span`` minutes: its
    offset in the span and its lag in :data:`GROUP_LAG_STEP_MS` past the lowest.  The
    streams of a cohort move their first open minute at the same moments, to the same
    minute (:func:`first_open_minute`)."""
    return key % span, (settle_lag(key) - SETTLE_LAG_MS[0]) // GROUP_LAG_STEP_MS


def open_until(open_minute: int, key: int, span: int = 1) -> int:
    """The newest timestamp of ``key`` whose :func:`first_open_minute` is ``open_minute`` or
    older: a write whose newest point is at most this, into minutes from ``open_minute`` on,
    settles nothing (:func:`settle_streams` gives nothing for it), so a store that caches it
    per stream tells such a write with one comparison.

    Found by bisection over :func:`first_open_minute` (which never decreases with time),
    so it follows whatever lag that gives: about 25 calls, once per stream and settle."""
    low = open_minute * MINUTE_MS  # at most open_minute there: the lag is never negative
    step = MINUTE_MS
    while first_open_minute(low + step, key, span) <= open_minute:
        low, step = low + step, step * 2
    high = low + step  # past open_minute
    while high - low > 1:
        middle = (low + high) // 2
        if first_open_minute(middle, key, span) <= open_minute:
            low = middle
        else:
            high = middle
    return low


def minutes_to_settle(
    touched: Iterable[int], old_last: int | None, new_last: int, key: int
) -> set[int]:
    """The minutes whose rollups a write must (re)compute, in the write's transaction.

    ``touched``: the minutes the write stored points in; ``old_last`` and ``new_last``:
    the newest timestamp of ``key`` before and after it.
    """
    old_open = None if old_last is None else first_open_minute(old_last, key)
    return settle_minutes(touched, old_open, first_open_minute(new_last, key))


StreamId = tuple[str, str, str]
"""(tenant, chassis, msg_type)."""


def stream_key(stream: StreamId) -> int:
    """A stable number for a stream, for its settle lag (the same in every process)."""
    return zlib.crc32("\x00".join(stream).encode())


def settle_streams(
    streams: Iterable[StreamId],
    touched: Mapping[StreamId, set[int]],
    newest: Mapping[StreamId, int],
    opened: Mapping[StreamId, int | None],
    span: int = 1,
) -> tuple[list[tuple[StreamId, int]], list[tuple[StreamId, int]]]:
    """What a write of ``streams`` settles (the stores that share a database between
    processes, where a stream's settle lag comes from :func:`stream_key`): ``(moved, pairs)``.

    ``touched``: per stream the minutes the write stored points in, ``newest`` its newest
    timestamp in the write, ``opened`` its first open minute before the write (missing or
    ``None``: nothing settled yet), ``span`` as in :func:`first_open_minute`.  ``moved``: ``(stream, new first open minute)`` of the
    streams whose open minute moves; ``pairs``: ``(stream, minute)`` whose rollups to
    (re)compute, in stream order.  The usual live write (every touched minute still open,
    the open minute where it was) gives nothing.
    """
    moved: list[tuple[StreamId, int]] = []
    pairs: list[tuple[StreamId, int]] = []
    lowest_lag = SETTLE_LAG_MS[0] + (GROUP_DELAY_MS if span > 1 else 0)
    for stream in streams:
        old = opened.get(stream)
        last = newest[stream]
        if old is not None and min(touched[stream]) >= old >= (last - lowest_lag) // MINUTE_MS:
            continue  # the usual live write, told without the stream's own lag
        new = first_open_minute(last, stream_key(stream), span)
        if old is not None and old >= new:
            if min(touched[stream]) >= old:
                continue
            new = old
        else:
            moved.append((stream, new))
        pairs.extend(
            (stream, minute) for minute in sorted(settle_minutes(touched[stream], old, new, span))
        )
    return moved, pairs


def settle_minutes(
    touched: Iterable[int], old_open: int | None, new_open: int, span: int = 1
) -> set[int]:
    """The minutes to (re)compute when the first open minute moves from ``old_open`` to
    ``new_open`` (``None``: nothing was open): every touched minute already settled, and
    the minutes that were open before and are settled now.  The open minutes are always
    ``open`` to ``open + span`` at most (plus :data:`GROUP_DELAY_MS` in minutes, rounded up,
    when ``span`` > 1), since the newest point is less than a minute past the lag
    (:func:`first_open_minute`)."""
    result = {minute for minute in touched if minute < new_open}
    if old_open is not None:
        newest = old_open + span + (-(-GROUP_DELAY_MS // MINUTE_MS) if span > 1 else 0)
        result.update(range(old_open, min(new_open, newest + 1)))
    return result


@dataclass
class Plan:
    """Where a downsampling reads each part of its range: rollup buckets or raw points."""

    rollups: list[tuple[int, int, int]] = field(default_factory=list)
    """``(step, first, last)``: rollup buckets ``first..last`` of that step (inclusive)."""
    raw: list[tuple[int, int]] = field(default_factory=list)
    """``(first_ts, last_ts)``: raw points in these inclusive ranges, in time order."""

    def raw_minutes(self) -> list[tuple[int, int]]:
        """The minutes (``ts // MINUTE_MS``) that :attr:`raw` spans, as inclusive ranges."""
        return [(lo // MINUTE_MS, hi // MINUTE_MS) for lo, hi in self.raw]


def rollup_plan(
    start_ms: int,
    end_ms: int,
    grid: Grid,
    open_minutes: Iterable[int] = (),
    steps: Sequence[int] = ROLLUP_LEVELS_MS,
) -> Plan:
    """Cover ``[start_ms, end_ms]`` with the coarsest rollup buckets that fit ``grid``.

    Rollup buckets of ``grid.step`` for the interior, finer steps toward the ends, raw
    points for what no whole rollup bucket covers: a partial finest bucket at each
    end, and ``open_minutes`` (minutes whose rollups may be stale) entirely.  Every
    rollup bucket used lies inside the range and inside one grid bucket.  ``steps``:
    the rollup steps the store keeps (some of :data:`ROLLUP_LEVELS_MS`); with none
    that fits the grid, all of it is raw.
    """
    plan = Plan()
    steps = [step for step in sorted(steps, reverse=True) if step <= grid.step]

    def cover(lo: int, hi: int, level: int) -> None:
        if level == len(steps):
            if plan.raw and plan.raw[-1][1] + 1 == lo:
                plan.raw[-1] = (plan.raw[-1][0], hi)
            else:
                plan.raw.append((lo, hi))
            return
        step = steps[level]
        first, last = -(-lo // step), (hi + 1) // step - 1
        if first > last:
            cover(lo, hi, level + 1)
            return
        if lo < first * step:
            cover(lo, first * step - 1, level + 1)
        plan.rollups.append((step, first, last))
        if (last + 1) * step <= hi:
            cover((last + 1) * step, hi, level + 1)

    lo = start_ms
    for minute in sorted(set(open_minutes)):
        m_lo, m_hi = minute * MINUTE_MS, (minute + 1) * MINUTE_MS - 1
        if m_hi < lo or m_lo > end_ms:
            continue
        if lo < m_lo:
            cover(lo, m_lo - 1, 0)
        cover(max(lo, m_lo), min(m_hi, end_ms), len(steps))
        lo = m_hi + 1
    if lo <= end_ms:
        cover(lo, end_ms, 0)
    return plan


def extremes(low_ts: int, low: Value, high_ts: int, high: Value) -> list[tuple[int, Value]]:
    """The points of one bucket's minimum and maximum, in time order, one if they coincide."""
    if low_ts == high_ts:
        return [(low_ts, low)]
    if low_ts < high_ts:
        return [(low_ts, low), (high_ts, high)]
    return [(high_ts, high), (low_ts, low)]


def storable(value: object) -> Value | None:
    """``value`` as every store keeps it, or ``None`` when it is skipped.

    Floats stay floats (NaN is skipped), ints stay ints unless wider than 64 bits
    (then floats), bools become ints, strings stay strings, anything else is
    skipped -- so one bad value never costs the rest of a batch, and every backend
    returns the same types.
    """
    if type(value) is float:
        return None if value != value else value
    if type(value) is int:
        return value if INT64_MIN <= value <= INT64_MAX else float(value)
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return storable(int(value))
    if isinstance(value, float):
        return storable(float(value))
    if isinstance(value, str):
        return str(value)
    return None


def normalised(values: dict[str, Any]) -> dict[str, Value]:
    """``values`` as the stores keep them (:func:`storable_values`): the same dict when it is
    already so (the usual case, as ingest normalises: one pass of type checks), else a
    cleaned copy.  Callers must not change the dict they get."""
    for value in values.values():
        kind = type(value)
        if kind is float:
            if value != value:
                break
        elif kind is int:
            if not INT64_MIN <= value <= INT64_MAX:
                break
        elif kind is not str:
            break
    else:
        return values
    return storable_values(values)


def storable_values(values: Mapping[str, Value]) -> dict[str, Value]:
    """The values of a record that :func:`storable` keeps."""
    clean: dict[str, Value] = {}
    for name, value in values.items():
        kept = storable(value)
        if kept is not None:
            clean[name] = kept
    return clean
