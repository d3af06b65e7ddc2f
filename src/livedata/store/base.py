"""The store interface; its contract is tested by ``tests/store/contract.py`` on every backend.

The store keeps values in a narrow shape, one row per
(tenant, chassis, msg_type, field, ts).  Writing the same key twice keeps one row
(writes are idempotent, so a record delivered twice is stored once).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from livedata.model import Record, Value

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

Series = dict[str, list[tuple[int, Value]]]
"""Per field, ``[ts_ms, value]`` pairs in time order: what an ECharts time axis takes."""


class Store(abc.ABC):
    """Where every record is kept.

    Under stress: ``write`` raises :class:`~livedata.errors.StoreError` when the
    engine fails; nothing is half-written in a way that a retry of the same batch
    would duplicate.  ``query`` never returns more than ``limit`` points per field
    (the oldest are dropped first, so a chart keeps its newest data).
    """

    url: str

    def __init__(self, url: str) -> None:
        self.url = url

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and create the schema if needed."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release connections."""

    @abc.abstractmethod
    async def write(self, records: Sequence[Record]) -> int:
        """Store ``records``; return the number of values (points) written."""

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

        The range is cut into ``buckets`` equal time buckets (see :func:`bucket_width`;
        bucket ``i`` holds ``start_ms + i * width <= ts < start_ms + (i + 1) * width``).
        For each field and non-empty bucket the result holds the bucket's minimum and
        its maximum as two points at the timestamps where they occur -- one point when
        both are the same point (a bucket of one point, or of equal values at one ts) --
        in time order, so a line chart of the result keeps every spike.  When a
        minimum or maximum occurs more than once in a bucket, any of its points may be
        chosen.  At most ``2 * buckets`` points per field.

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


def bucket_width(start_ms: int, end_ms: int, buckets: int) -> int:
    """The width in ms of each of ``buckets`` equal buckets covering ``[start_ms, end_ms]``.

    Rounded up (at least 1 ms), so ``(ts - start_ms) // width < buckets`` for every ts in
    the range: never more than ``buckets`` buckets.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, not {buckets}")
    span = max(end_ms - start_ms + 1, 1)
    return max(1, -(-span // buckets))


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


def storable_values(values: dict[str, Value]) -> dict[str, Value]:
    """The values of a record that :func:`storable` keeps."""
    clean: dict[str, Value] = {}
    for name, value in values.items():
        kept = storable(value)
        if kept is not None:
            clean[name] = kept
    return clean
