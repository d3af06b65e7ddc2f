"""The simulated wheel loader: determinism, ranges, duty cycle, correlations, GPS, DBC."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from itertools import pairwise

import pytest

from livedata.decode.can import CanDecoder, builtin_dbc
from livedata.model import Frame
from livedata.sim.machine import SITE_LAT, SITE_LNG, Machine, State

SECONDS = 600
SEEDS = [0, 1, 2, 3, 4]


@dataclass
class Step:
    state: State
    frames: list[Frame]
    signals: dict[str, float]
    values: dict[str, float]


@pytest.fixture(scope="module")
def decoder() -> CanDecoder:
    return CanDecoder.from_dbc(builtin_dbc())


def run(decoder: CanDecoder, seed: int, seconds: int = SECONDS, chassis: str = "WL-0001"):
    machine = Machine(chassis, decoder, seed)
    steps = []
    for i in range(seconds):
        frames, values = machine.step(1_700_000_000_000 + i * 1000)
        steps.append(Step(machine.state, frames, machine.signals, values))
    return machine, steps


@pytest.fixture(scope="module")
def runs(decoder: CanDecoder) -> dict[int, tuple[Machine, list[Step]]]:
    return {seed: run(decoder, seed) for seed in SEEDS}


def metres(lat: float, lng: float) -> float:
    """Distance from the quarry centre, in metres."""
    north = (lat - SITE_LAT) * 111_320
    east = (lng - SITE_LNG) * 111_320 * math.cos(math.radians(SITE_LAT))
    return math.hypot(north, east)


def distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Approximate distance between two (lat, lng) points, in metres."""
    north = (a[0] - b[0]) * 111_320
    east = (a[1] - b[1]) * 111_320 * math.cos(math.radians(SITE_LAT))
    return math.hypot(north, east)


def test_deterministic(decoder: CanDecoder) -> None:
    """The same seed and chassis give the same frames and values; another seed does not."""
    _, a = run(decoder, 42, 200)
    _, b = run(decoder, 42, 200)
    assert [(s.frames, s.values) for s in a] == [(s.frames, s.values) for s in b]
    _, c = run(decoder, 43, 200)
    assert [s.values for s in a] != [s.values for s in c]
    _, d = run(decoder, 42, 200, chassis="WL-0002")
    assert [s.values for s in a] != [s.values for s in d]


def test_signals_within_dbc_range(decoder: CanDecoder, runs) -> None:
    """Over 600 s every CAN signal stays within its DBC min/max."""
    infos = {s.name: s for s in decoder.signals()}
    for _, steps in runs.values():
        for step in steps:
            assert set(step.signals) == set(infos)
            for name, value in step.signals.items():
                info = infos[name]
                assert info.minimum is not None and info.maximum is not None
                assert info.minimum <= value <= info.maximum, (name, value)


def test_duty_cycle_visits_all_states(runs) -> None:
    """Within 600 s each machine passes through idle, travel, dig and dump, in cycles."""
    for machine, steps in runs.values():
        assert machine.visited == set(State)
        states = [s.state for s in steps]
        assert states[0] is State.IDLE
        digs = sum(1 for a, b in pairwise(states) if b is State.DIG != a)
        assert digs >= 3


def test_rpm_and_speed_plausible(runs) -> None:
    """rpm is ~800 idle, 1400-1900 travelling, 2000-2300 digging; speed follows travel."""
    for _, steps in runs.values():
        idle = [s.signals["engine_rpm"] for s in steps if s.state is State.IDLE]
        dig = [
            s.signals["engine_rpm"]
            for prev, s in zip(steps, steps[3:], strict=False)
            if s.state is State.DIG and prev.state is State.DIG  # past the ramp-up
        ]
        cruise = [
            s.signals["engine_rpm"]
            for s in steps
            if s.state is State.TRAVEL and s.signals["speed"] > 10
        ]
        assert 750 < statistics.median(idle) < 900
        assert 1950 < statistics.median(dig) < 2350
        assert all(1350 < rpm < 2100 for rpm in cruise)
        assert all(s.signals["speed"] == 0 for s in steps if s.state is not State.TRAVEL)
        travel = [s for s in steps if s.state is State.TRAVEL]
        assert max(s.signals["speed"] for s in travel) > 10
        corr = statistics.correlation(
            [s.signals["speed"] for s in travel], [s.signals["engine_rpm"] for s in travel]
        )
        assert corr > 0.6


def test_hydraulics_follow_the_work(runs) -> None:
    """Pressure peaks while digging; the boom is raised to dump and lowered when idle."""
    for _, steps in runs.values():
        dig = [s.signals["hydraulic_pressure"] for s in steps if s.state is State.DIG]
        other = [s.signals["hydraulic_pressure"] for s in steps if s.state is not State.DIG]
        assert max(dig) > 320
        assert statistics.median(dig) > 3 * statistics.median(other)
        dump_boom = max(s.signals["boom_angle"] for s in steps if s.state is State.DUMP)
        assert dump_boom > 40
        assert min(s.signals["bucket_angle"] for s in steps if s.state is State.DUMP) < -30
        idle_boom = [s.signals["boom_angle"] for s in steps if s.state is State.IDLE]
        assert statistics.median(idle_boom) < -20  # lowered to the ground


def test_gear_and_brake_follow_motion(runs) -> None:
    """Gear is -1 only when reversing, forward gears rise with speed, braking when slowing."""
    for _, steps in runs.values():
        for prev, s in pairwise(steps):
            gear, speed = s.signals["gear"], s.signals["speed"]
            if speed == 0:
                assert gear in (0, 1)
            if gear == -1:
                assert 0 < speed < 10
            if gear >= 3:
                assert speed >= 13
            if prev.signals["speed"] - speed > 1.5:
                assert s.signals["brake_status"] == 1
            if speed > prev.signals["speed"]:
                assert s.signals["brake_status"] == 0
        assert any(s.signals["gear"] == -1 for s in steps)
        assert any(s.signals["gear"] >= 3 for s in steps)


def test_slow_quantities(runs) -> None:
    """Coolant warms towards ~88 °C and fuel goes down."""
    for _, steps in runs.values():
        first, last = steps[0].signals, steps[-1].signals
        assert last["coolant_temp"] > first["coolant_temp"] + 10
        assert 70 < last["coolant_temp"] < 95
        assert last["fuel_level"] < first["fuel_level"]
        hours = last["engine_hours"] - first["engine_hours"]
        assert math.isclose(hours, (SECONDS - 1) / 3600, abs_tol=1e-3)


def test_gps_moves_near_the_site(runs) -> None:
    """The position moves along the machine's loop and stays within 2 km of the quarry."""
    for _, steps in runs.values():
        points = [(s.values["gps_lat"], s.values["gps_lng"]) for s in steps]
        assert all(metres(lat, lng) < 2000 for lat, lng in points)
        assert len(set(points)) > SECONDS // 2
        start = points[0]
        assert max(distance(start, p) for p in points) > 100
        for prev, s in pairwise(steps):
            moved = distance(
                (prev.values["gps_lat"], prev.values["gps_lng"]),
                (s.values["gps_lat"], s.values["gps_lng"]),
            )
            # one second at that speed (x1.5: the loop is an ellipse), plus GPS jitter
            assert moved < 1.5 * s.signals["speed"] / 3.6 + 8


def test_client_values(runs) -> None:
    """client_raw_data carries GPS and app metrics with plausible values."""
    for _, steps in runs.values():
        for prev, s in pairwise(steps):
            v = s.values
            assert set(v) == {
                "gps_lat",
                "gps_lng",
                "cpu_usage",
                "mem_usage",
                "app_uptime_s",
                "signal_strength_dbm",
            }
            assert 0 < v["cpu_usage"] <= 100 and 0 < v["mem_usage"] <= 100
            assert -120 < v["signal_strength_dbm"] < -40
            assert v["app_uptime_s"] == prev.values["app_uptime_s"] + 1


def test_frames_decode_back_to_the_signals(decoder: CanDecoder, runs) -> None:
    """The frames of each step decode through the DBC to the machine's own values."""
    scales = {
        s.name: float(s.conversion.scale) for m in decoder.database.messages for s in m.signals
    }
    for _, steps in runs.values():
        for step in steps:
            result = decoder.decode(step.frames)
            assert result.errors == [] and result.unknown == 0
            assert result.frames == len(step.frames) == 12
            assert set(result.values) == set(step.signals)
            for name, value in step.signals.items():
                tolerance = scales[name] / 2 + 1e-9
                assert math.isclose(result.values[name], value, abs_tol=tolerance), name
            assert all(f.ts == step.frames[0].ts for f in step.frames)


def test_dtcs_become_active_and_clear(decoder: CanDecoder) -> None:
    """The engine sends a DM1 every second; over hours DTCs become active, then clear."""
    machine = Machine("WL-0001", decoder, 0)
    active: list[tuple[int, int] | None] = []
    for i in range(3 * 3600):
        frames, _ = machine.step(1_700_000_000_000 + i * 1000)
        (dm1,) = decoder.decode(frames).dm1
        assert dm1.sa == 0 and len(dm1.dtcs) <= 1
        assert dm1.lamps.amber_warning == (1 if dm1.dtcs else 0)
        active.append((dm1.dtcs[0].spn, dm1.dtcs[0].fmi) if dm1.dtcs else None)
    raised = [b for a, b in pairwise(active) if a is None and b is not None]
    cleared = [a for a, b in pairwise(active) if a is not None and b is None]
    assert len(raised) >= 3 and len(cleared) >= 3
    spells = [s for s in "".join("1" if a else "0" for a in active).split("0") if s]
    complete = spells[:-1] if active[-1] else spells
    assert all(60 <= len(s) <= 241 for s in complete)  # each lasts 1-4 minutes
