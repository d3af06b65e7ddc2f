"""The store contract, run on every backend.

Subclass :class:`StoreContract` as ``Test<Backend>Store`` and implement
:meth:`StoreContract.make_url` to return the URL of a fresh, empty store; every
test gets the ``store`` fixture opened from it with :func:`open_store` and started,
and a tenant of its own (``tenant``), so backends shared between tests still keep
tests apart.
"""

from __future__ import annotations

import abc
import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import cast

import pytest

from livedata.model import Kind, Record, Value
from livedata.store import Store, open_store
from livedata.store.base import LATEST_MANY_MAX, ROLLUP_LEVELS_MS, LatestWindow, bucket_grid
from livedata.store.frames import FrameBlob

T0 = 1_700_000_000_000
"""A timestamp in milliseconds (November 2023) that the tests count from."""


def unique_id(prefix: str = "t") -> str:
    """A fresh name that is a valid tenant, machine, message type or field id."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


HOURS = 4
"""Length of the long-range data set: long enough for every rollup step to be used."""


def long_values(second: int) -> dict[str, Value]:
    """Field values of the long data set at ``second``: no two equal within a field, so
    that every bucket has exactly one minimum and one maximum point."""
    values: dict[str, Value] = {
        "a": (second * 104_729 % 1_000_003) / 7 - 70_000.5,  # floats
        "b": second * 7_919 % 100_003 - 50_000,  # ints
    }
    if second % 50 == 0:
        values["m"] = f"text {second}"  # a mixed field: text, ints and floats
    elif second % 3 == 0:
        values["m"] = second * 31 % 10_007
    else:
        values["m"] = second * 17 % 10_009 + 0.25
    return values


def long_records(tenant: str, seconds: int = HOURS * 3_600) -> list[Record]:
    return [rec(tenant, T0 + s * 1000, long_values(s)) for s in range(seconds)]


async def write_shuffled(store: Store, records: list[Record], seed: int) -> None:
    """Write ``records`` in batches of random sizes, in a shuffled order (late data), and
    some of them twice (redelivery); then the newest minutes again in time order."""
    rng = random.Random(seed)
    batches, i = [], 0
    while i < len(records):
        size = rng.choice([1, 7, 60, 333, 1_000, 2_500])
        batches.append(records[i : i + size])
        i += size
    rng.shuffle(batches)
    for batch in batches + batches[:: max(len(batches) // 5, 1)]:
        await store.write(batch)
    await store.write(records[-180:])


def expected_extremes(
    written: dict[int, Value], start: int, end: int, buckets: int
) -> dict[int, tuple[Value, Value]]:
    """Per bucket of the downsampling grid: (min, max) of the numeric points in range."""
    grid = bucket_grid(start, end, buckets)
    found: dict[int, tuple[Value, Value]] = {}
    for ts, value in written.items():
        if not start <= ts <= end or isinstance(value, str):
            continue
        k = grid.bucket(ts)
        if k in found:
            low, high = found[k]
            assert not isinstance(low, str) and not isinstance(high, str)
            found[k] = (min(low, value), max(high, value))
        else:
            found[k] = (value, value)
    return found


def assert_downsampled(
    got: list[tuple[int, Value]], written: dict[int, Value], start: int, end: int, buckets: int
) -> None:
    """``got`` is exactly the min/max downsampling of the ``written`` points (ts -> value)."""
    expected = expected_extremes(written, start, end, buckets)
    grid = bucket_grid(start, end, buckets)
    stamps = [ts for ts, _ in got]
    assert stamps == sorted(set(stamps)), "points in strict time order"
    by_bucket: dict[int, list[Value]] = {}
    for ts, value in got:
        assert start <= ts <= end
        assert ts in written and written[ts] == value and type(written[ts]) is type(value)
        by_bucket.setdefault(grid.bucket(ts), []).append(value)
    assert sorted(by_bucket) == sorted(expected)
    for k, (low, high) in expected.items():
        values = by_bucket[k]
        assert len(values) == (1 if low == high else 2)
        assert min(values) == low and max(values) == high  # type: ignore[type-var]
    assert len(got) <= 2 * buckets
    numbers = [v for ts, v in written.items() if start <= ts <= end and not isinstance(v, str)]
    if numbers:  # the extremes of the whole range are in the result
        values = [v for _, v in got]
        assert min(numbers) in values and max(numbers) in values  # type: ignore[type-var]


LONG_QUERIES = [
    (0, HOURS * 3_600_000 - 1000, buckets) for buckets in (1, 3, 50, 200, 500, 1_000, 5_000)
] + [
    (12_345, HOURS * 3_600_000 - 6_789, 37),
    (59_999, 2 * 3_600_000 + 1, 100),
    (3_600_000 - 7, HOURS * 3_600_000 + 10**7, 400),  # beyond the newest point
    (HOURS * 3_600_000 - 900_000, HOURS * 3_600_000, 30),  # the newest 15 minutes
    (-(10**9), 10_000_999, 10),
]
"""(start - T0, end - T0, buckets) of the long-range checks: each rollup step, raw
grids, unaligned ends, the open minutes at the end, ranges beyond the data."""


def typed(values: dict[str, Value]) -> dict[str, tuple[type, Value]]:
    """``values`` with each value's type, so that 1 and 1.0 differ."""
    return {name: (type(value), value) for name, value in values.items()}


def rec(
    tenant: str,
    ts: int,
    values: dict[str, Value],
    chassis: str = "machine-1",
    msg_type: str = "vehicle_can",
) -> Record:
    return Record(tenant, chassis, msg_type, ts, Kind.REALTIME, values)


class StoreContract(abc.ABC):
    """What every :class:`~livedata.store.base.Store` does; subclassed per backend."""

    @abc.abstractmethod
    def make_url(self, tmp_path: Path) -> str:
        """The URL of a fresh store (``tmp_path`` is the test's own directory)."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        store = open_store(self.make_url(tmp_path))
        await store.start()
        try:
            yield store
        finally:
            await store.close()

    @pytest.fixture
    def tenant(self) -> str:
        return unique_id()

    async def test_write_query_round_trip(self, store: Store, tenant: str) -> None:
        """Values come back exactly as written, in time order, whatever the write order."""
        times = [T0 + 3000, T0, T0 + 2000, T0 + 1000]
        records = [rec(tenant, ts, {"speed": (ts - T0) / 7, "rpm": ts - T0}) for ts in times]
        assert await store.write(records) == 8
        got = await store.query(tenant, "machine-1", "vehicle_can", ["speed", "rpm"], T0, T0 + 3000)
        ordered = sorted(times)
        assert got == {
            "speed": [(ts, (ts - T0) / 7) for ts in ordered],
            "rpm": [(ts, ts - T0) for ts in ordered],
        }

    async def test_int_and_float_keep_their_type(self, store: Store, tenant: str) -> None:
        """An int comes back as int and a whole float as float (no affinity conversion)."""
        await store.write([rec(tenant, T0, {"i": 1, "f": 1.0, "big": 2**53 + 1, "neg": -0.5})])
        got = await store.query(
            tenant, "machine-1", "vehicle_can", ["i", "f", "big", "neg"], T0, T0
        )
        values = {name: points[0][1] for name, points in got.items()}
        assert values == {"i": 1, "f": 1.0, "big": 2**53 + 1, "neg": -0.5}
        assert [type(v) for v in values.values()] == [int, float, int, float]

    async def test_query_returns_exactly_the_asked_fields(self, store: Store, tenant: str) -> None:
        """Only asked fields are returned, and every asked field is a key, empty if no data."""
        await store.write([rec(tenant, T0, {"a": 1, "b": 2, "c": 3})])
        got = await store.query(tenant, "machine-1", "vehicle_can", ["a", "missing"], T0, T0)
        assert got == {"a": [(T0, 1)], "missing": []}
        nothing = await store.query(tenant, "machine-9", "vehicle_can", ["a", "b"], T0, T0)
        assert nothing == {"a": [], "b": []}

    async def test_time_range_bounds_are_inclusive(self, store: Store, tenant: str) -> None:
        """``start_ms <= ts <= end_ms``: both ends included, outside points excluded."""
        await store.write([rec(tenant, T0 + i * 1000, {"x": i}) for i in range(5)])
        got = await store.query(tenant, "machine-1", "vehicle_can", ["x"], T0 + 1000, T0 + 3000)
        assert got["x"] == [(T0 + 1000, 1), (T0 + 2000, 2), (T0 + 3000, 3)]
        one = await store.query(tenant, "machine-1", "vehicle_can", ["x"], T0 + 4000, T0 + 4000)
        assert one["x"] == [(T0 + 4000, 4)]
        between = await store.query(tenant, "machine-1", "vehicle_can", ["x"], T0 + 1, T0 + 999)
        assert between["x"] == []

    async def test_duplicate_write_is_stored_once_last_wins(
        self, store: Store, tenant: str
    ) -> None:
        """The same key written twice is one point; the later value replaces the earlier."""
        await store.write([rec(tenant, T0, {"x": 1.5})])
        await store.write([rec(tenant, T0, {"x": 1.5})])
        got = await store.query(tenant, "machine-1", "vehicle_can", ["x"], T0 - 10, T0 + 10)
        assert got["x"] == [(T0, 1.5)]
        await store.write([rec(tenant, T0, {"x": 2.5}), rec(tenant, T0, {"x": 3.5})])
        got = await store.query(tenant, "machine-1", "vehicle_can", ["x"], T0 - 10, T0 + 10)
        assert got["x"] == [(T0, 3.5)]

    async def test_other_tenant_chassis_msg_type_never_leak(
        self, store: Store, tenant: str
    ) -> None:
        """A query sees only its own (tenant, chassis, msg_type), though field names are shared."""
        other = unique_id()
        keys = [
            (tenant, "m1", "vehicle_can"),
            (tenant, "m2", "vehicle_can"),
            (tenant, "m1", "client_raw_data"),
            (other, "m1", "vehicle_can"),
        ]
        for n, (t, chassis, msg_type) in enumerate(keys):
            await store.write([Record(t, chassis, msg_type, T0 + n, Kind.REALTIME, {"x": n})])
        for n, (t, chassis, msg_type) in enumerate(keys):
            got = await store.query(t, chassis, msg_type, ["x"], T0 - 1000, T0 + 1000)
            assert got == {"x": [(T0 + n, n)]}
            assert await store.latest_ts(t, chassis, msg_type) == T0 + n

    async def test_limit_keeps_the_newest_points(self, store: Store, tenant: str) -> None:
        """With more points than ``limit``, the newest ``limit`` are returned, in time order."""
        await store.write([rec(tenant, T0 + i, {"x": i, "y": -i}) for i in range(10)])
        got = await store.query(tenant, "machine-1", "vehicle_can", ["x", "y"], T0, T0 + 9, 3)
        assert got == {
            "x": [(T0 + 7, 7), (T0 + 8, 8), (T0 + 9, 9)],
            "y": [(T0 + 7, -7), (T0 + 8, -8), (T0 + 9, -9)],
        }
        inside = await store.query(tenant, "machine-1", "vehicle_can", ["x"], T0, T0 + 5, limit=2)
        assert inside["x"] == [(T0 + 4, 4), (T0 + 5, 5)]
        spread = [T0 + 100_000 + s * 1000 for s in range(0, 600, 25)]  # ten minutes
        await store.write([rec(tenant, ts, {"z": ts}) for ts in spread])
        got = await store.query(tenant, "machine-1", "vehicle_can", ["z"], 0, spread[-2], 5)
        assert got["z"] == [(ts, ts) for ts in spread[-6:-1]]

    async def test_delete_before_removes_only_older(self, store: Store, tenant: str) -> None:
        """Retention deletes points with ``ts < cutoff``, keeps the rest, and counts the deleted."""
        await store.write([rec(tenant, T0 + i * 1000, {"x": i, "y": i}) for i in range(5)])
        await store.write([rec(tenant, T0, {"z": 0}, chassis="machine-2")])
        assert await store.delete_before(T0 + 2000) == 5
        got = await store.query(tenant, "machine-1", "vehicle_can", ["x", "y"], 0, T0 * 2)
        kept = [(T0 + i * 1000, i) for i in (2, 3, 4)]
        assert got == {"x": kept, "y": kept}
        assert (await store.query(tenant, "machine-2", "vehicle_can", ["z"], 0, T0 * 2))["z"] == []
        assert await store.delete_before(T0 + 2000) == 0

    async def test_delete_before_over_many_minutes(self, store: Store, tenant: str) -> None:
        """Retention over an hour of data cuts exactly at the cutoff, mid-minute, on every series."""
        records = [rec(tenant, T0 + s * 1000, {"a": s, "b": -s}) for s in range(0, 3600, 7)]
        await store.write(records)
        await store.write([rec(tenant, T0 + 10, {"c": 1}, chassis="gone")])
        cutoff = T0 + 1_234_567
        older = sum(2 for r in records if r.ts < cutoff) + 1
        assert await store.delete_before(cutoff) == older
        got = await store.query(tenant, "machine-1", "vehicle_can", ["a", "b"], 0, T0 * 2)
        assert got["a"] == [(r.ts, r.values["a"]) for r in records if r.ts >= cutoff]
        assert got["b"] == [(r.ts, r.values["b"]) for r in records if r.ts >= cutoff]
        assert await store.latest_ts(tenant, "gone", "vehicle_can") is None
        assert await store.latest_ts(tenant, "machine-1", "vehicle_can") == records[-1].ts

    async def test_latest_ts(self, store: Store, tenant: str) -> None:
        """The newest timestamp over all fields of a machine; None before any data."""
        assert await store.latest_ts(tenant, "machine-1", "vehicle_can") is None
        await store.write([rec(tenant, T0 + 5000, {"a": 1}), rec(tenant, T0 + 9000, {"b": 2})])
        await store.write([rec(tenant, T0 + 1000, {"a": 0, "b": 0})])  # late backfill
        assert await store.latest_ts(tenant, "machine-1", "vehicle_can") == T0 + 9000
        assert await store.latest_ts(tenant, "machine-1", "client_raw_data") is None

    async def test_latest_many_is_latest_ts_of_many_machines(
        self, store: Store, tenant: str
    ) -> None:
        """latest_many gives each asked machine's latest_ts per message type it has values of
        ({} for none), across more machines than one read takes and after retention."""
        machines = [f"m-{i:04d}" for i in range(LATEST_MANY_MAX + 7)]
        await store.write(
            [rec(tenant, T0 + i, {"a": i}, chassis=c) for i, c in enumerate(machines)]
            + [rec(tenant, T0 + 1, {"b": 1}, chassis="m-0003", msg_type="client_raw_data")]
            + [rec(tenant, T0 + 1, {"a": 1}, chassis="m-0003")]  # late: not the newest
            + [rec("other", T0 + 9, {"a": 1}, chassis="m-0004")]
        )
        asked = [*reversed(machines), "never", "m-0005"]
        got = await store.latest_many(tenant, asked)
        assert list(got) == list(dict.fromkeys(asked))
        assert got["never"] == {}
        assert got["m-0003"] == {"vehicle_can": T0 + 3, "client_raw_data": T0 + 1}
        for chassis in machines:
            for msg_type in ("vehicle_can", "client_raw_data"):
                newest = await store.latest_ts(tenant, chassis, msg_type)
                assert got[chassis].get(msg_type) == newest, (chassis, msg_type)
        await store.delete_before(T0 + 5)
        after = await store.latest_many(tenant, ["m-0003", "m-0006"])
        assert after == {"m-0003": {}, "m-0006": {"vehicle_can": T0 + 6}}

    async def test_latest_values_many_is_the_newest_point_of_query_per_machine(
        self, store: Store, tenant: str
    ) -> None:
        """latest_values_many gives, per asked machine and field, the last point of query over
        its window (bounds included, corrections and partial records as query merges them),
        for several message types, in one read per 500 machines with fields."""
        machines = [f"m-{i:04d}" for i in range(LATEST_MANY_MAX + 9)]
        records = []
        for i, chassis in enumerate(machines):
            for s in range(6):
                values: dict[str, Value] = {"a": i * 10 + s, "f": s + 0.5}
                if s % 2 == 0:
                    values["b"] = -i - s  # missing in every other record
                if s % 3 == 0:
                    values["t"] = f"text {i} {s}"
                if s == 0:
                    values["old"] = 1  # before every window
                records.append(rec(tenant, T0 + s * 1000 + i, values, chassis=chassis))
            if i % 3 == 0:
                raw = {"x": i, "y": float(i)} if i % 2 else {"x": i}
                records.append(
                    rec(tenant, T0 + i, raw, chassis=chassis, msg_type="client_raw_data")
                )
        await store.write(records)
        await store.write(
            [
                rec(tenant, T0 + 5_001, {"a": -1, "f": 9.5}, chassis="m-0001"),  # corrected
                rec(tenant, T0 + 5_001, {"d": "partial"}, chassis="m-0001"),  # other fields
                rec("other", T0 + 4_500, {"b": 99}, chassis="m-0002"),  # another tenant
            ]
        )
        newest = await store.latest_many(tenant, [*machines, "never"])
        reads: list[int] = []
        rows = store._latest_value_rows

        async def counted(
            tenant: str, msg_type: str, windows: Sequence[LatestWindow]
        ) -> Iterable[tuple[str, str, Value]]:
            reads.append(len(windows))
            return await rows(tenant, msg_type, windows)

        store._latest_value_rows = counted  # type: ignore[method-assign]
        for msg_type, fields in (
            ("vehicle_can", ["a", "b", "t", "f", "old", "d", "zz"]),
            ("client_raw_data", ["x", "y"]),
        ):
            wanted: dict[str, tuple[int, list[str]]] = {"never": (T0 + 5_000, fields)}
            for i, chassis in enumerate(machines):
                latest = newest[chassis].get(msg_type)
                if latest is None:
                    continue
                end = latest - 1_000 if i % 7 == 0 else latest  # points after the window
                wanted[chassis] = (end, fields[:1] if i % 5 == 0 else fields)
            wanted[machines[4]] = (newest[machines[4]]["vehicle_can"], [])
            reads.clear()
            got = await store.latest_values_many(tenant, msg_type, wanted, 2_000)
            with_fields = sum(1 for _, names in wanted.values() if names)
            assert reads == [
                min(n, LATEST_MANY_MAX) for n in (with_fields, with_fields - 500) if n > 0
            ]
            assert list(got) == list(wanted)
            assert got["never"] == {} and got[machines[4]] == {}
            for chassis, (end, names) in wanted.items():
                series = await store.query(tenant, chassis, msg_type, names, end - 2_000, end, 10)
                expected = {name: points[-1][1] for name, points in series.items() if points}
                assert typed(got[chassis]) == typed(expected), (msg_type, chassis)
        assert got["m-0006"] == {"x": 6}
        other_type = {"m-0006": (T0 + 5_006, ["x"])}
        assert await store.latest_values_many(tenant, "vehicle_can", other_type, 2_000) == {
            "m-0006": {}
        }
        can = await store.latest_values_many(
            tenant, "vehicle_can", {"m-0001": (T0 + 5_001, ["a", "f", "d", "b", "t"])}, 2_000
        )
        assert can == {"m-0001": {"a": -1, "f": 9.5, "d": "partial", "b": -5, "t": "text 1 3"}}

    async def test_delete_machine_removes_only_that_machine(
        self, store: Store, tenant: str
    ) -> None:
        """A machine's values of every message type are counted, then deleted; others stay."""
        await store.write(
            [
                rec(tenant, T0 + s * 1000, {"a": s, "b": s * 2}, chassis=c, msg_type=t)
                for s in range(90)
                for c in ("gone", "kept")
                for t in ("vehicle_can", "client_raw_data")
            ]
        )
        assert await store.machine_points(tenant, "gone") == 360
        assert await store.machine_points(tenant, "never") == 0
        assert await store.delete_machine(tenant, "gone") == 360
        assert await store.machine_points(tenant, "gone") == 0
        assert await store.latest_ts(tenant, "gone", "vehicle_can") is None
        got = await store.query(tenant, "gone", "vehicle_can", ["a"], T0, T0 + 90_000)
        assert got == {"a": []}
        low = await store.downsample(tenant, "gone", "vehicle_can", ["a"], T0, T0 + 90_000, 4)
        assert low == {"a": []}
        assert await store.machine_points(tenant, "kept") == 360
        await store.write([rec(tenant, T0, {"a": 7}, chassis="gone")])
        assert await store.query(tenant, "gone", "vehicle_can", ["a"], T0, T0) == {"a": [(T0, 7)]}

    async def test_string_values_round_trip(self, store: Store, tenant: str) -> None:
        """Strings, including empty, unicode and number-like ones, come back as the same str."""
        texts = ["", "007", "1.5", "1e3", "Grüße, 東京 🚜", "a'b\"c;--", "x" * 10_000]
        await store.write([rec(tenant, T0 + i, {"s": text}) for i, text in enumerate(texts)])
        await store.write([rec(tenant, T0 + 100, {"s": 42})])  # mixed types in one field
        got = await store.query(tenant, "machine-1", "vehicle_can", ["s"], T0, T0 + 100)
        assert got["s"] == [(T0 + i, text) for i, text in enumerate(texts)] + [(T0 + 100, 42)]
        assert all(type(value) is str for _, value in got["s"][:-1])

    async def test_unstorable_values_are_skipped(self, store: Store, tenant: str) -> None:
        """None, NaN and objects are skipped and not counted; a bool is stored as int."""
        values: dict[str, object] = {
            "ok": 1.25,
            "none": None,
            "nan": float("nan"),
            "obj": [1, 2],
            "flag": True,
        }
        unchecked = cast(dict[str, Value], values)  # what a careless decoder could pass
        record = Record(tenant, "machine-1", "vehicle_can", T0, Kind.REALTIME, unchecked)
        assert await store.write([record]) == 2
        got = await store.query(tenant, "machine-1", "vehicle_can", list(values), T0, T0)
        assert got == {"ok": [(T0, 1.25)], "none": [], "nan": [], "obj": [], "flag": [(T0, 1)]}
        assert type(got["flag"][0][1]) is int

    async def test_write_normalised_stores_what_write_stores(
        self, store: Store, tenant: str
    ) -> None:
        """``write_normalised`` of normalised values (floats, 64-bit int limits, strings, a
        field of several kinds, a key twice in the batch) stores and counts what ``write``
        does."""
        shapes: list[dict[str, Value]] = [
            {"f": 1.5, "i": 2**63 - 1, "s": "Grüße", "m": 3},
            {"f": -0.0, "i": -(2**63), "s": "", "m": "text"},
            {"f": float("inf"), "i": 0, "s": "x" * 300, "m": 2.25},
        ]

        def batch(chassis: str) -> list[Record]:
            records = [rec(tenant, T0 + n * 1000, shapes[n % 3], chassis) for n in range(30)]
            return [*records, rec(tenant, T0, {"f": 9.5, "m": 1}, chassis)]  # T0 again: wins

        assert await store.write(batch("plain")) == await store.write_normalised(batch("checked"))
        fields = list(shapes[0])
        plain = await store.query(tenant, "plain", "vehicle_can", fields, T0, T0 + 30_000)
        checked = await store.query(tenant, "checked", "vehicle_can", fields, T0, T0 + 30_000)
        assert checked == plain
        assert plain["f"][0] == (T0, 9.5) and len(plain["s"]) == 30

    async def test_large_batch_round_trips(self, store: Store, tenant: str) -> None:
        """10,000 records of 10 fields in one write all come back, exact and in order."""
        fields = [f"f{i}" for i in range(10)]
        records = [
            rec(tenant, T0 + n * 1000, {f: n * 10 + i + 0.5 for i, f in enumerate(fields)})
            for n in range(10_000)
        ]
        assert await store.write(records) == 100_000
        got = await store.query(tenant, "machine-1", "vehicle_can", fields, T0, T0 + 10_000_000)
        for i, f in enumerate(fields):
            assert got[f] == [(T0 + n * 1000, n * 10 + i + 0.5) for n in range(10_000)]

    async def test_concurrent_writes_all_land(self, store: Store, tenant: str) -> None:
        """Batches written concurrently by several tasks are all stored, none lost."""

        async def writer(chassis: str) -> None:
            for batch in range(20):
                ts = [T0 + (batch * 25 + i) * 1000 for i in range(25)]
                random.shuffle(ts)
                await store.write([rec(tenant, t, {"v": t, "w": -t}, chassis=chassis) for t in ts])
                await asyncio.sleep(0)

        machines = [f"m{n}" for n in range(8)]
        await asyncio.gather(*(writer(m) for m in machines))
        for m in machines:
            got = await store.query(tenant, m, "vehicle_can", ["v", "w"], T0, T0 + 10**9)
            expected = [T0 + i * 1000 for i in range(500)]
            assert [ts for ts, _ in got["v"]] == expected
            assert got["w"] == [(ts, -ts) for ts in expected]

    async def test_empty_and_degenerate_calls(self, store: Store, tenant: str) -> None:
        """An empty write stores nothing; no fields, a reversed range or limit 0 give no points."""
        assert await store.write([]) == 0
        await store.write([rec(tenant, T0, {"x": 1})])
        assert await store.query(tenant, "machine-1", "vehicle_can", [], T0, T0) == {}
        assert await store.query(tenant, "machine-1", "vehicle_can", ["x"], T0 + 1, T0 - 1) == {
            "x": []
        }
        assert await store.query(tenant, "machine-1", "vehicle_can", ["x"], T0, T0, 0) == {"x": []}

    async def test_downsample_keeps_a_single_spike(self, store: Store, tenant: str) -> None:
        """One spike up and one down among 10,000 flat points survive downsampling to 50 buckets."""
        records = [rec(tenant, T0 + n * 1000, {"x": 1.0, "i": 5}) for n in range(10_000)]
        records[3_333].values["x"] = 99.5
        records[7_777].values["x"] = -42.25
        records[5_000].values["i"] = 6
        await store.write(records)
        end = T0 + 9_999_000
        got = await store.downsample(tenant, "machine-1", "vehicle_can", ["x", "i"], T0, end, 50)
        assert (T0 + 3_333_000, 99.5) in got["x"]
        assert (T0 + 7_777_000, -42.25) in got["x"]
        assert (T0 + 5_000_000, 6) in got["i"]
        assert max(v for _, v in got["x"]) == 99.5 and min(v for _, v in got["x"]) == -42.25
        assert all(type(v) is int for _, v in got["i"])
        assert all(type(v) is float for _, v in got["x"])

    async def test_downsample_bounds_and_orders_points(self, store: Store, tenant: str) -> None:
        """At most 2 x buckets points per field, in time order, each an existing point."""
        written = {T0 + n * 997: (n * 7919) % 1000 - 500 for n in range(5_000)}
        await store.write([rec(tenant, ts, {"x": value}) for ts, value in written.items()])
        start, end = T0 + 123, T0 + 4_000_000
        for buckets in (1, 7, 100, 1_000, 10_000):
            got = await store.downsample(
                tenant, "machine-1", "vehicle_can", ["x"], start, end, buckets
            )
            points = got["x"]
            assert 0 < len(points) <= 2 * buckets
            stamps = [ts for ts, _ in points]
            assert stamps == sorted(set(stamps))
            assert all(start <= ts <= end and written[ts] == v for ts, v in points)
        inside = [v for ts, v in written.items() if start <= ts <= end]
        one = await store.downsample(tenant, "machine-1", "vehicle_can", ["x"], start, end, 1)
        assert sorted(v for _, v in one["x"]) == [min(inside), max(inside)]

    async def test_downsample_min_max_per_bucket(self, store: Store, tenant: str) -> None:
        """Each bucket gives its min and max at their timestamps, one point when they coincide."""
        values = [3, 1, 4, 1.5, 9, 2, 6, 5]  # two per bucket of 2 s, then one alone
        await store.write([rec(tenant, T0 + n * 1000, {"x": v}) for n, v in enumerate(values)])
        await store.write([rec(tenant, T0 + 8000, {"x": 7})])
        got = await store.downsample(tenant, "machine-1", "vehicle_can", ["x"], T0, T0 + 9999, 5)
        assert got["x"] == [
            (T0, 3), (T0 + 1000, 1), (T0 + 2000, 4), (T0 + 3000, 1.5),
            (T0 + 4000, 9), (T0 + 5000, 2), (T0 + 6000, 6), (T0 + 7000, 5), (T0 + 8000, 7),
        ]  # fmt: skip

    async def test_downsample_empty_and_missing(self, store: Store, tenant: str) -> None:
        """Empty range, unknown fields, text-only fields and reversed ranges give [] per field."""
        await store.write([rec(tenant, T0 + n * 1000, {"x": n, "s": f"v{n}"}) for n in range(10)])
        await store.write([rec(tenant, T0 + 20_000, {"s": 3, "x": "text"})])  # mixed types
        fields = ["x", "s", "missing"]
        got = await store.downsample(tenant, "machine-1", "vehicle_can", fields, T0, T0 + 20_000, 4)
        assert got["x"] == [(T0, 0), (T0 + 5000, 5), (T0 + 6000, 6), (T0 + 9000, 9)]
        assert got["s"] == [(T0 + 20_000, 3)] and got["missing"] == []
        empty = await store.downsample(tenant, "machine-1", "vehicle_can", fields, 0, T0 - 1, 10)
        assert empty == {"x": [], "s": [], "missing": []}
        reverse = await store.downsample(tenant, "machine-1", "vehicle_can", ["x"], T0 + 9, T0, 10)
        assert reverse == {"x": []}
        other = await store.downsample(tenant, "machine-9", "vehicle_can", ["x"], T0, T0 + 1, 10)
        assert other == {"x": []}
        with pytest.raises(ValueError):
            await store.downsample(tenant, "machine-1", "vehicle_can", ["x"], T0, T0 + 1, 0)

    rollups_follow_corrections = True
    """Whether ``downsample`` forgets a value that a later write of the same key replaced
    (ClickHouse keeps counting it, see its store)."""

    def test_long_queries_use_every_grid(self) -> None:
        """The long-range checks below cover raw grids and grids of every rollup step."""
        steps = {bucket_grid(T0 + a, T0 + b, n).step for a, b, n in LONG_QUERIES}
        assert steps == {1, *ROLLUP_LEVELS_MS}

    async def test_downsample_long_range_equals_raw_computation(
        self, store: Store, tenant: str
    ) -> None:
        """Hours of 1 Hz data written out of order and redelivered downsample exactly as the raw points do."""
        records = long_records(tenant)
        await write_shuffled(store, records, seed=7)
        fields = ["a", "b", "m"]
        written = {name: {r.ts: r.values[name] for r in records} for name in fields}
        for lo, hi, buckets in LONG_QUERIES:
            start, end = T0 + lo, T0 + hi
            got = await store.downsample(
                tenant, "machine-1", "vehicle_can", fields, start, end, buckets
            )
            for name in fields:
                assert_downsampled(got[name], written[name], start, end, buckets)

    async def test_rewriting_same_records_changes_no_downsampling(
        self, store: Store, tenant: str
    ) -> None:
        """Writing the same records again, in other batches, gives the very same downsampled points."""
        records = long_records(tenant, seconds=3 * 3_600)
        for first in range(0, len(records), 600):
            await store.write(records[first : first + 600])
        end = T0 + 3 * 3_600_000
        queries = [(T0, end, n) for n in (1, 90, 300, 1_000)]
        before = [
            await store.downsample(tenant, "machine-1", "vehicle_can", ["a", "b"], *q)
            for q in queries
        ]
        await write_shuffled(store, records, seed=11)
        await store.write(records)
        after = [
            await store.downsample(tenant, "machine-1", "vehicle_can", ["a", "b"], *q)
            for q in queries
        ]
        assert after == before

    async def test_downsample_after_corrections_and_retention(
        self, store: Store, tenant: str
    ) -> None:
        """Replaced values (extremes raised, lowered, turned to text) and retention mid-minute are reflected exactly."""
        records = long_records(tenant, seconds=2 * 3_600)
        await store.write(records)
        written = {r.ts: r.values["a"] for r in records}
        lows = sorted(written, key=lambda ts: written[ts])  # type: ignore[arg-type, return-value]
        changes: dict[int, Value] = {lows[0]: 0.5, lows[-1]: "gone", lows[-2]: -1.0e9}
        changes[T0 + 7_000_000] = 1.0e9  # in the newest (open) minutes
        if self.rollups_follow_corrections:
            await store.write([rec(tenant, ts, {"a": v}) for ts, v in changes.items()])
            written.update(changes)
        cutoff = T0 + 1_234_567
        await store.delete_before(cutoff)
        kept = {ts: v for ts, v in written.items() if ts >= cutoff}
        for buckets in (1, 100, 400, 2_000):
            start, end = T0, T0 + 2 * 3_600_000
            got = await store.downsample(
                tenant, "machine-1", "vehicle_can", ["a"], start, end, buckets
            )
            assert_downsampled(got["a"], kept, start, end, buckets)

    # -- raw frames and re-decoding ----------------------------------------------------

    async def test_frames_round_trip_page_and_count(self, store: Store, tenant: str) -> None:
        """Blobs come back in time order per machine, paged by limit, counted; a rewrite replaces."""
        blobs = [FrameBlob(tenant, "m1", T0 + s * 1000, s % 5, bytes([s]) * s) for s in range(30)]
        other = [FrameBlob(tenant, "m2", T0 + s * 1000, 1, b"x") for s in range(30)]
        assert await store.write_frames(list(reversed(blobs)) + other) == 60
        assert await store.write_frames([FrameBlob(tenant, "m1", T0, 9, b"\x00\xff")]) == 1
        first = await store.read_frames(tenant, "m1", T0, T0 + 60_000, limit=10)
        assert first == [FrameBlob(tenant, "m1", T0, 9, b"\x00\xff"), *blobs[1:10]]
        rest = await store.read_frames(tenant, "m1", first[-1].ts + 1, T0 + 19_000, limit=100)
        assert rest == blobs[10:20]
        assert await store.count_frames(tenant, "m1", T0 + 5_000, T0 + 9_000) == 5
        assert await store.count_frames(tenant, "m3", T0, T0 + 60_000) == 0
        assert await store.read_frames(tenant, "m3", T0, T0 + 60_000) == []

    async def test_frames_retention_and_machine_deletion(self, store: Store, tenant: str) -> None:
        """delete_frames_before drops older blobs of every machine; delete_machine drops its blobs."""
        await store.write_frames(
            [FrameBlob(tenant, c, T0 + s * 60_000, 1, b"f") for s in range(30) for c in "ab"]
        )
        assert await store.delete_frames_before(T0 + 10 * 60_000) == 20
        assert await store.count_frames(tenant, "a", T0, T0 + 3_600_000) == 20
        assert (await store.read_frames(tenant, "b", T0, T0 + 3_600_000, 1))[0].ts == T0 + 600_000
        await store.write([rec(tenant, T0, {"x": 1}, chassis="a")])
        await store.delete_machine(tenant, "a")
        assert await store.count_frames(tenant, "a", T0, T0 + 3_600_000) == 0
        assert await store.count_frames(tenant, "b", T0, T0 + 3_600_000) == 20

    async def test_replace_values_changes_only_the_range(self, store: Store, tenant: str) -> None:
        """One hour of one machine replaced: new values there, removed fields gone, kept
        fields, other hours, machines and message types untouched; downsampling agrees."""
        hours = 3

        def values(s: int, scale: float) -> dict[str, Value]:
            return {"v": s * scale, "old": s, "dtc_active": s % 3, "t": f"s{s}"}

        records = [
            rec(tenant, T0 + s * 1000, values(s, 1.0), chassis=c, msg_type=m)
            for s in range(hours * 3_600)
            for c in ("m1", "m2")
            for m in ("vehicle_can", "client_raw_data")
        ]
        await store.write(records)
        start, end = T0 + 3_600_000, T0 + 2 * 3_600_000 - 1
        new = [
            rec(tenant, T0 + s * 1000, {"v": s * 2.0, "added": -s}, chassis="m1")
            for s in range(3_600, 7_200)
            if s % 10  # some seconds without a record: their old values go anyway
        ]
        assert await store.replace_values(
            tenant, "m1", "vehicle_can", start, end, new, keep=("dtc_",)
        ) == 2 * len(new)
        fields = ["v", "old", "dtc_active", "t", "added"]
        end_all = T0 + hours * 3_600_000
        got = await store.query(tenant, "m1", "vehicle_can", fields, T0, end_all)
        expect: dict[str, dict[int, Value]] = {f: {} for f in fields}
        for s in range(hours * 3_600):
            ts = T0 + s * 1000
            inside = start <= ts <= end
            if inside:
                if s % 10:
                    expect["v"][ts] = s * 2.0
                    expect["added"][ts] = -s
            else:
                expect["v"][ts], expect["old"][ts], expect["t"][ts] = s * 1.0, s, f"s{s}"
            expect["dtc_active"][ts] = s % 3
        assert got == {f: sorted(expect[f].items()) for f in fields}
        for buckets in (1, 7, 90, 400):
            low = await store.downsample(tenant, "m1", "vehicle_can", ["v"], T0, end_all, buckets)
            assert_downsampled(low["v"], expect["v"], T0, end_all, buckets)
        for c, m in (("m2", "vehicle_can"), ("m1", "client_raw_data")):
            untouched = await store.query(tenant, c, m, ["v", "old"], T0, end_all)
            assert untouched["v"] == [(T0 + s * 1000, s * 1.0) for s in range(hours * 3_600)]
            assert len(untouched["old"]) == hours * 3_600
        with pytest.raises(ValueError):
            await store.replace_values(
                tenant, "m1", "vehicle_can", start, end, [rec(tenant, T0, {})]
            )
