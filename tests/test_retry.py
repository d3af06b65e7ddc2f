"""The one backoff schedule of every retry loop."""

from __future__ import annotations

from itertools import islice

import pytest

from livedata.retry import backoff


def test_delays_double_up_to_the_cap_and_stay_there() -> None:
    """Without jitter: first, doubling, then the cap for ever."""
    assert list(islice(backoff(0.5, 5.0), 7)) == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_a_cap_below_the_first_delay_wins() -> None:
    """A cap smaller than the first delay (a test's quick retries) is every delay."""
    assert list(islice(backoff(0.5, 0.2), 3)) == [0.2, 0.2, 0.2]


def test_jitter_only_shortens_and_by_at_most_its_fraction() -> None:
    """With jitter 0.2 each delay lies in [0.8 × d, d] of the plain schedule, and they differ."""
    plain = list(islice(backoff(1.0, 8.0), 6))
    for _ in range(50):
        jittered = list(islice(backoff(1.0, 8.0, jitter=0.2), 6))
        assert all(0.8 * d <= j <= d for j, d in zip(jittered, plain, strict=True))
    assert len({next(backoff(1.0, 8.0, jitter=0.2)) for _ in range(20)}) > 1


@pytest.mark.parametrize(("first", "most", "jitter"), [(0, 1, 0), (1, -1, 0), (1, 2, 1.0)])
def test_nonsense_schedules_are_refused(first: float, most: float, jitter: float) -> None:
    """Non-positive delays or a jitter outside [0, 1) raise ValueError on the first delay."""
    with pytest.raises(ValueError):
        next(backoff(first, most, jitter=jitter))
