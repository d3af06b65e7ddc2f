"""Timestamp skew and field-count bounds of every write path, sans I/O."""

from __future__ import annotations

import pytest

from livedata.errors import DecodeError
from livedata.pipeline.limits import EARLIEST_TS, TimestampPolicy, check_field_count

NOW = 1_800_000_000_000


def test_timestamps_within_the_skew_pass_unchanged() -> None:
    """Past times since 2000 and up to the skew ahead are kept as sent."""
    policy = TimestampPolicy(300.0)
    for ts in (EARLIEST_TS, NOW - 86_400_000, NOW, NOW + 300_000):
        assert policy.check(ts, NOW) == ts


@pytest.mark.parametrize("mode", ["refuse", "clamp"])
def test_timestamps_before_2000_are_refused(mode: str) -> None:
    """1970 (or ts in seconds) is a clock or unit error in both modes."""
    with pytest.raises(DecodeError, match="before 2000"):
        TimestampPolicy(300.0, mode).check(1_000, NOW)


def test_future_timestamps_are_refused_with_the_skew_named() -> None:
    """A clock 24 h ahead is refused with how far ahead it is and what is allowed."""
    with pytest.raises(DecodeError, match=r"86400 s ahead .*at most 300 s"):
        TimestampPolicy(300.0).check(NOW + 86_400_000, NOW)
    with pytest.raises(DecodeError):
        TimestampPolicy(300.0).check(32_503_680_000_000, NOW)  # the year 3000


def test_future_timestamps_are_clamped_to_now_in_clamp_mode() -> None:
    """In clamp mode the value is kept at the server's time."""
    assert TimestampPolicy(60.0, "clamp").check(NOW + 61_000, NOW) == NOW
    assert TimestampPolicy(60.0, "clamp").check(NOW + 60_000, NOW) == NOW + 60_000


def test_unknown_mode_is_a_configuration_error() -> None:
    """Only refuse and clamp exist."""
    with pytest.raises(ValueError):
        TimestampPolicy(1.0, "drop")


def test_field_cap_refuses_only_what_would_pass_it() -> None:
    """Known fields never count as new; the error names the cap and the way out."""
    check_field_count("m", "client_raw_data", 999, {"a"}, 1000)
    check_field_count("m", "client_raw_data", 1000, set(), 1000)
    with pytest.raises(DecodeError) as info:
        check_field_count("'M1'", "client_raw_data", 999, {f"f{n}" for n in range(500)}, 1000)
    message = str(info.value)
    assert "at most 1000" in message and "500 new fields" in message
    assert "f0, f1, f10" in message and "DELETE /api/resources/" in message
