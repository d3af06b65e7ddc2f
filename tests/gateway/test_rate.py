"""Rate control without sockets: thinning, averaging and min/max that keeps every spike."""

from __future__ import annotations

import math

import pytest

from livedata.gateway.rate import RateLimiter


def head(seq: int) -> dict:
    return {"ts": seq * 10, "seq": seq, "epoch": "e"}


def test_a_100hz_signal_watched_at_2hz_with_minmax_keeps_every_spike() -> None:
    """Over 10 s of 100 Hz data with random spikes, every spike is in some 2 Hz message."""
    limiter = RateLimiter(("v",), max_rate=2, mode="minmax")
    spikes = {137: 95.0, 402: -80.0, 403: 99.0, 777: 120.0}
    flushed = []
    for n in range(1000):
        value = spikes.get(n, math.sin(n / 50))
        limiter.add({"v": value, "other": 1}, head(n))
        if (n + 1) % 50 == 0:  # 50 messages = 0.5 s at 100 Hz
            flushed.append(limiter.flush())
    assert len(flushed) == 20
    highs = {m["payload"]["v"]["max"] for m in flushed}
    lows = {m["payload"]["v"]["min"] for m in flushed}
    assert {95.0, 99.0, 120.0} <= highs and -80.0 in lows
    assert all(m["count"] == 50 and set(m["payload"]) == {"v"} for m in flushed)
    assert flushed[-1]["seq"] == 999


def test_last_and_avg() -> None:
    """last keeps the newest value, avg the mean of numbers (strings: the newest)."""
    for mode, expected in (("last", {"v": 3.0, "s": "c"}), ("avg", {"v": 2.0, "s": "c"})):
        limiter = RateLimiter(("v", "s"), max_rate=1, mode=mode)
        for n, (v, s) in enumerate(((1.0, "a"), (2.0, "b"), (3.0, "c"))):
            limiter.add({"v": v, "s": s}, head(n))
        assert limiter.flush()["payload"] == expected
        assert limiter.flush() is None, "an empty interval sends nothing"


@pytest.mark.parametrize(
    ("rate", "mode"),
    [
        (0, "last"),
        (1e-308, "last"),
        (0.009, "avg"),
        (float("nan"), "last"),
        (101, "last"),
        (2, "median"),
    ],
)
def test_bad_options_are_refused(rate: float, mode: str) -> None:
    """maxRate outside [0.01, 100] (a tiny rate would silence it) and unknown aggregates
    are refused."""
    with pytest.raises(ValueError):
        RateLimiter(("v",), rate, mode)
