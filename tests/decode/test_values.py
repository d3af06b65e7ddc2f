"""Validation of client_raw_data values."""

from __future__ import annotations

import math

import pytest

from livedata.decode.values import decode_values
from livedata.errors import DecodeError


def test_accepts_flat_values() -> None:
    """Numbers and short strings pass unchanged, bools become 0/1, None is dropped."""
    values, errors = decode_values(
        {
            "gps_lat": 51.0012,
            "app_uptime_s": 3600,
            "fw": "1.4.2",
            "charging": True,
            "door_open": False,
            "missing": None,
        }
    )
    assert errors == []
    assert values == {
        "gps_lat": 51.0012,
        "app_uptime_s": 3600,
        "fw": "1.4.2",
        "charging": 1,
        "door_open": 0,
    }
    assert type(values["charging"]) is int


@pytest.mark.parametrize("obj", [[1, 2], "text", 3, None, b"{}"])
def test_rejects_non_object(obj: object) -> None:
    """A payload that is not a JSON object raises DecodeError."""
    with pytest.raises(DecodeError, match="JSON object"):
        decode_values(obj)


def test_field_limit() -> None:
    """More than max_fields keys raises DecodeError; exactly max_fields passes."""
    ok = {f"f{i}": i for i in range(10)}
    assert len(decode_values(ok, max_fields=10)[0]) == 10
    with pytest.raises(DecodeError, match="11 fields, at most 10"):
        decode_values({**ok, "one_more": 1}, max_fields=10)


def test_bad_values_are_skipped_and_reported() -> None:
    """Each bad value is reported on its own line and the good ones are kept."""
    values, errors = decode_values(
        {
            "ok": 1.5,
            "nan": math.nan,
            "inf": -math.inf,
            "nested": {"a": 1},
            "array": [1, 2],
            "long": "x" * 11,
            "huge": 1 << 70,
            "bytes": b"raw",
        },
        max_str=10,
    )
    assert values == {"ok": 1.5}
    assert len(errors) == 7
    text = "\n".join(errors)
    for key in ("nan", "inf", "nested", "array", "long", "huge", "bytes"):
        assert f"field '{key}'" in text
    assert "nested object" in text and "nested array" in text
    assert "string of 11 characters, at most 10" in text


def test_string_at_limit_passes() -> None:
    """A string of exactly max_str characters is kept."""
    assert decode_values({"s": "y" * 10}, max_str=10) == ({"s": "y" * 10}, [])


@pytest.mark.parametrize("key", ["", "_hidden", "a b", "x" * 65, "ümlaut", 7, "a/b"])
def test_bad_keys_are_skipped(key: object) -> None:
    """Keys that are not valid ids are reported and skipped; the rest is kept."""
    values, errors = decode_values({key: 1, "good": 2})
    assert values == {"good": 2}
    assert len(errors) == 1 and "invalid name" in errors[0]


def test_error_lines_stay_short_for_huge_keys() -> None:
    """An enormous bad key is shortened in its error line."""
    _, errors = decode_values({"k" * 100_000: 1})
    assert len(errors) == 1 and len(errors[0]) < 200


def test_a_name_seen_before_is_judged_the_same() -> None:
    """A payload decodes the same the second time (names accepted before are remembered),
    and a non-string key equal in text to an accepted name is still refused."""
    payload = {"7": 1.5, "speed": float("nan"), "on": True, "n": 3, 7: 1, "bad name": 2}
    first = decode_values(payload)
    assert decode_values(payload) == first
    values, errors = first
    assert values == {"7": 1.5, "on": 1, "n": 3}
    assert len(errors) == 3 and "invalid name" in errors[1] and "invalid name" in errors[2]
