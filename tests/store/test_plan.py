"""The downsampling grid and the rollup plan of ``livedata.store.base``, on random ranges."""

from __future__ import annotations

import itertools
import random

import pytest

from livedata.store.base import (
    GROUP_DELAY_MS,
    MINUTE_MS,
    ROLLUP_LEVELS_MS,
    SNAP_SLACK,
    bucket_grid,
    bucket_width,
    first_open_minute,
    open_until,
    rollup_plan,
    settle_minutes,
    settle_streams,
)

T0 = 1_700_000_000_000


def random_ranges(seed: int, count: int = 300) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    ranges = []
    for _ in range(count):
        start = T0 + rng.randrange(-(10**9), 10**9)
        span = rng.choice([1, 999, 59_999, 3_600_000, 86_400_000, 604_800_000])
        span += rng.randrange(0, 100_000)
        ranges.append((start, start + span, rng.choice([1, 2, 7, 100, 1_000, 5_000])))
    return ranges


@pytest.mark.parametrize("seed", range(3))
def test_grid_has_at_most_the_asked_buckets_and_snaps_to_rollup_steps(seed: int) -> None:
    """At most ``buckets`` buckets, widths within the slack, origin and width on the step."""
    for start, end, buckets in random_ranges(seed):
        grid = bucket_grid(start, end, buckets)
        assert grid.origin <= start and grid.bucket(end) < buckets
        assert grid.width <= bucket_width(start, end, buckets) * SNAP_SLACK
        if grid.step == 1:
            assert (grid.origin, grid.width) == (start, bucket_width(start, end, buckets))
        else:
            assert grid.step in ROLLUP_LEVELS_MS
            assert grid.origin % grid.step == 0 and grid.width % grid.step == 0


@pytest.mark.parametrize("seed", range(3))
def test_plan_covers_the_range_once_with_buckets_inside_grid_buckets(seed: int) -> None:
    """Rollup buckets and raw ranges tile the range exactly; open minutes are only raw."""
    rng = random.Random(seed)
    for start, end, buckets in random_ranges(seed, count=100):
        grid = bucket_grid(start, end, buckets)
        open_minutes = {end // MINUTE_MS - rng.randrange(0, 3) for _ in range(2)}
        plan = rollup_plan(start, end, grid, open_minutes)
        pieces = [(lo, hi, "raw") for lo, hi in plan.raw]
        for step, first, last in plan.rollups:
            assert step <= grid.step
            for b in (first, last):  # a bucket lies in one grid bucket and no open minute
                assert grid.bucket(b * step) == grid.bucket((b + 1) * step - 1)
            pieces.append((first * step, (last + 1) * step - 1, "rollup"))
            inside = range(first * step // MINUTE_MS, ((last + 1) * step - 1) // MINUTE_MS + 1)
            assert not open_minutes & set(inside)
        pieces.sort()
        assert pieces[0][0] == start and pieces[-1][1] == end
        for (_, hi, _), (lo, _, _) in itertools.pairwise(pieces):
            assert lo == hi + 1
        if grid.step == 1:
            assert plan.rollups == []


def test_settle_minutes() -> None:
    """Touched minutes before the open one, and the minutes no longer open, are settled."""
    assert settle_minutes({10, 11}, 10, 10) == set()  # a live write inside the open minutes
    assert settle_minutes({11}, 10, 11) == {10}  # the stream moved on: minute 10 settles
    assert settle_minutes({3, 11}, 10, 10) == {3}  # late data in a settled minute
    assert settle_minutes({500}, 10, 499) == {10, 11}  # a jump: only the old open minutes
    assert settle_minutes({5, 6}, None, 6) == {5}  # nothing was open before
    # groups of 10: the points up to the group delay past the group may be open too
    assert settle_minutes({500}, 10, 499, 10) == set(
        range(10, 21 + -(-GROUP_DELAY_MS // MINUTE_MS))
    )


@pytest.mark.parametrize("span", [1, 2, 10])
def test_open_until_is_the_last_timestamp_before_the_open_minute_moves(span: int) -> None:
    """``open_until`` of an open minute is the newest timestamp whose first open minute is at
    most that one: one millisecond later it moves past it (also for minutes the stream's
    lag and span never give)."""
    rng = random.Random(span)
    for _ in range(20_000):
        key, old = rng.getrandbits(32), rng.randrange(-(10**8), 10**8)
        until = open_until(old, key, span)
        assert first_open_minute(until, key, span) <= old < first_open_minute(until + 1, key, span)


def test_a_fleet_settles_groups_of_minutes_in_cohorts() -> None:
    """With groups of 10 minutes, 1,000 live streams written every 0.5 s settle in at most one
    write per 10 s, each stream once per group, its newest point at least 185 s past it (the
    lowest lag and the group delay)."""
    streams = [("demo", f"m{n}", t) for n in range(500) for t in ("vehicle_can", "raw")]
    opened: dict[tuple[str, str, str], int | None] = {}
    settling: list[int] = []
    moves = {stream: 0 for stream in streams}
    start = T0 - T0 % (10 * MINUTE_MS)
    for step in range(1, 2 * 1_200 + 1):  # 20 minutes of writes
        now = start + step * 500
        minute = now // MINUTE_MS
        touched = {stream: {minute} for stream in streams}
        moved, pairs = settle_streams(streams, touched, dict.fromkeys(streams, now), opened, 10)
        if moved and step > 1:  # the first write settles every stream
            settling.append(now)
            for stream, open_minute in moved:
                moves[stream] += 1
                assert open_minute * MINUTE_MS <= now - 5_000 - GROUP_DELAY_MS
                assert open_minute > (opened[stream] or 0)
            assert {m for _, m in pairs} <= set(range(minute - 14, minute - 3))
        opened.update(moved)
    assert all(b - a >= 10_000 for a, b in itertools.pairwise(settling))
    assert set(moves.values()) == {2}  # 20 minutes: each stream settled two groups
