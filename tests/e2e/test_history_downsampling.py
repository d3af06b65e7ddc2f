"""The history API's ``maxPoints`` budget on a running demo: raw when it fits, else min/max downsampled."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.conftest import Server

FIELDS = "speed,engine_rpm,coolant_temp"


def history(demo: Server, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{demo.url}/api/resources/demo/_common/datasets/{demo.machines[1]}/history",
        params={"msgType": "vehicle_can", "fields": FIELDS, **params},
        headers=demo.headers,
        timeout=10,
    )


@pytest.fixture
def window(demo: Server) -> tuple[int, int]:
    """A past 2-minute range full of 1 Hz data (so raw and downsampled see the same points)."""
    end = int(time.time() * 1000) - 3000
    deadline = time.monotonic() + 20
    while len(history(demo, **{"from": end - 120_000, "to": end}).json()["series"]["speed"]) < 115:
        assert time.monotonic() < deadline, "the demo has not stored 2 minutes yet"
        time.sleep(1)
        end = int(time.time() * 1000) - 3000
    return end - 120_000, end


def test_budget_larger_than_the_data_returns_raw(demo: Server, window: tuple[int, int]) -> None:
    """With more budget than points the answer is the raw series and downsampled is false."""
    start, end = window
    raw = history(demo, **{"from": start, "to": end}).json()
    budget = history(demo, **{"from": start, "to": end, "maxPoints": 1000}).json()
    assert budget["downsampled"] is False and raw["downsampled"] is False
    assert budget["series"] == raw["series"]


def test_small_budget_downsamples_and_keeps_extremes(demo: Server, window: tuple[int, int]) -> None:
    """maxPoints=20 over ~120 points: at most 20 real points per field, global min and max kept."""
    start, end = window
    raw = history(demo, **{"from": start, "to": end}).json()["series"]
    body = history(demo, **{"from": start, "to": end, "maxPoints": 20}).json()
    assert body["downsampled"] is True
    for name, points in body["series"].items():
        exact = {ts: value for ts, value in raw[name]}
        assert 0 < len(points) <= 20
        assert all(exact[ts] == value for ts, value in points)
        stamps = [ts for ts, _ in points]
        assert stamps == sorted(set(stamps))
        values = [value for _, value in points]
        assert (min(values), max(values)) == (min(exact.values()), max(exact.values()))


@pytest.mark.parametrize("max_points", [0, 1, 10_001, "many"])
def test_bad_budget_is_400(demo: Server, max_points: object) -> None:
    """maxPoints outside 2..10,000 is refused with 400 naming the parameter."""
    response = history(demo, maxPoints=max_points)
    assert response.status_code == 400
    assert "maxPoints" in response.text
