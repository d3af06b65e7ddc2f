"""One simulated wheel loader: a duty-cycle state machine producing plausible signals.

The loader repeats the classic load-and-carry cycle::

    idle ─► travel (empty) ─► dig ─► travel (loaded: back out, then forward) ─► dump ─┐
     ▲                         ▲                                                      │
     └──── (operator break) ◄──┴─────────────── travel (empty: back out, forward) ◄───┘

with random durations.  Every second it updates continuous, correlated signals:
engine speed follows the state (about 800 rpm idle, 1400-1900 travelling, 2000-2300
digging) with smoothing; wheel speed follows the travel legs and is 0 while digging;
hydraulic pressure spikes while digging; boom and bucket move through the dig and
dump motions; coolant warms towards about 88 °C; fuel slowly goes down (and is
refilled when nearly empty); gear follows speed and direction; the brake is on while
stopping and when standing in idle or dump.  The position moves along a closed path
around a quarry near 51.0 N 7.0 E (each machine has its own loop, driven by its wheel
speed), and app metrics (CPU, memory, uptime, signal strength) wander plausibly.
With a J1939 DBC the engine also sends its DM1 every second: now and then a
diagnostic trouble code becomes active (amber lamp on) and clears minutes later.

Everything is drawn from one :class:`random.Random` seeded with the seed and the
chassis id, so a machine is deterministic: the same seed and chassis give the same
sequence of values, whatever the timestamps.  The CAN frames are produced by
:meth:`~livedata.decode.can.CanDecoder.encode`, i.e. through the same DBC that
ingest decodes them with.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from livedata.model import Frame

if TYPE_CHECKING:  # imported where used: cantools is slow to import
    from livedata.decode.can import CanDecoder

__all__ = ["SITE_LAT", "SITE_LNG", "Machine", "State"]

SITE_LAT = 51.0
"""Latitude of the simulated quarry."""
SITE_LNG = 7.0
"""Longitude of the simulated quarry."""

_M_PER_DEG_LAT = 111_320.0

ACCEL = 2.5
"""Wheel speed gain limit, km/h per second."""
DECEL = 4.0
"""Wheel speed loss limit while braking, km/h per second."""


DTC_CHANCE = 1 / 600
"""Chance per second that a machine without an active DTC raises one (about every 10 min)."""
DTCS = [(110, 16), (100, 18), (168, 4), (3031, 2), (175, 15)]
"""(SPN, FMI) a simulated loader reports: coolant hot, oil pressure low, battery low,
DEF tank temperature erratic, engine oil warm."""


class State(enum.StrEnum):
    """The duty-cycle states of a wheel loader."""

    IDLE = "idle"
    TRAVEL = "travel"
    DIG = "dig"
    DUMP = "dump"


@dataclass(slots=True)
class _Leg:
    """One straight run of a travel: direction (+1 forward, -1 reverse), time, speed."""

    direction: int
    seconds: int
    speed: float


def _approach(value: float, target: float, up: float, down: float) -> float:
    """Move ``value`` towards ``target`` by at most ``up`` (rising) or ``down`` (falling)."""
    if target > value:
        return min(target, value + up)
    return max(target, value - down)


def _clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


class Machine:
    """A simulated wheel loader; :meth:`step` advances it by one second.

    ``decoder`` must know the loader's signals (``livedata/dbc/loader.dbc``); signals
    the DBC lacks are simply not sent, values outside a signal's range are clamped by
    the encoder.
    """

    def __init__(self, chassis: str, decoder: CanDecoder, seed: int) -> None:
        self.chassis = chassis
        self._decoder = decoder
        rng = self._rng = random.Random(f"{seed}:{chassis}")

        # duty cycle
        self._state = State.IDLE
        self._elapsed = 0
        self._duration = rng.randint(5, 15)
        self._loaded = False
        self._legs: list[_Leg] = []
        self._dig_rpm = 2150.0
        self._visited: set[State] = {State.IDLE}

        # motion and engine
        self._speed = 0.0
        self._direction = 1
        self._braking = False
        self._accel = 0.0
        self._rpm = 800.0
        self._torque = 10.0
        self._pressure = 22.0
        self._boom = -35.0
        self._bucket = 0.0

        # slow quantities
        self._ambient_base = rng.uniform(8.0, 22.0)
        self._ambient = self._ambient_base
        self._coolant = rng.uniform(self._ambient_base + 5.0, 65.0)
        self._oil_temp = self._coolant - rng.uniform(0.0, 5.0)
        self._fuel = rng.uniform(45.0, 95.0)
        self._hours = round(rng.uniform(800.0, 12_000.0), 2)
        self._battery = 27.8
        self._t = 0

        # position: an elliptic loop around this machine's own spot in the quarry
        self._center_lat = SITE_LAT + rng.uniform(-0.004, 0.004)
        self._center_lng = SITE_LNG + rng.uniform(-0.006, 0.006)
        self._axis_n = rng.uniform(120.0, 220.0)  # metres
        self._axis_e = rng.uniform(180.0, 300.0)
        a, b = self._axis_n, self._axis_e
        h = ((a - b) / (a + b)) ** 2
        self._perimeter = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
        self._path_pos = rng.uniform(0.0, self._perimeter)

        # app metrics
        self._uptime = rng.randint(600, 86_400)
        self._mem = rng.uniform(35.0, 55.0)
        self._rssi = rng.uniform(-85.0, -65.0)

        self._signals: dict[str, float] = {}
        self._values: dict[str, float] = {}

        # diagnostic trouble codes: their own generator, so the signals stay as they were
        self._dtc_rng = random.Random(f"{seed}:{chassis}:dtc")
        self._dtc: tuple[int, int] | None = None
        self._dtc_left = 0
        self._occurrences: dict[tuple[int, int], int] = {}

    # -- read-only views ------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current duty-cycle state."""
        return self._state

    @property
    def visited(self) -> frozenset[State]:
        """Every state the machine has been in since it was created."""
        return frozenset(self._visited)

    @property
    def signals(self) -> dict[str, float]:
        """The CAN signal values of the last step, before encoding (a copy)."""
        return dict(self._signals)

    @property
    def values(self) -> dict[str, float]:
        """The ``client_raw_data`` values of the last step (a copy)."""
        return dict(self._values)

    # -- simulation -----------------------------------------------------------------

    def step(self, ts_ms: int) -> tuple[list[Frame], dict[str, float]]:
        """Advance one second; return this second's CAN frames and client_raw_data values.

        ``ts_ms`` only stamps the frames; the simulation always advances exactly one
        second, so the values do not depend on it.
        """
        self._t += 1
        self._advance_state()
        self._move()
        self._engine()
        self._hydraulics()
        self._slow()
        self._signals = {
            "speed": round(self._speed, 3),
            "engine_rpm": round(self._rpm, 1),
            "brake_status": 1 if self._braking else 0,
            "coolant_temp": round(self._coolant, 1),
            "fuel_level": round(self._fuel, 2),
            "hydraulic_pressure": round(self._pressure, 1),
            "gear": self._gear(),
            "engine_torque": round(self._torque, 1),
            "oil_pressure": round(self._oil_pressure(), 1),
            "boom_angle": round(self._boom, 2),
            "bucket_angle": round(self._bucket, 1),
            "ambient_temp": round(self._ambient, 2),
            "battery_voltage": round(self._battery, 2),
            "engine_hours": round(self._hours, 4),
            "oil_temp_hydraulic": round(self._oil_temp, 1),
        }
        self._values = self._metrics()
        frames = self._decoder.encode(self._signals, ts_ms)
        if self._decoder.j1939:
            frames.append(self._dm1(ts_ms))
        return frames, dict(self._values)

    def _dm1(self, ts_ms: int) -> Frame:
        """This second's DM1 from the engine (SA 0x00), as J1939-73 asks: sent every second.

        Now and then (:data:`DTC_CHANCE` per second) a DTC of :data:`DTCS` becomes
        active, with the amber warning lamp on; it clears after 1-4 minutes.
        """
        rng = self._dtc_rng
        if self._dtc is None and rng.random() < DTC_CHANCE:
            self._dtc = rng.choice(DTCS)
            self._dtc_left = rng.randint(60, 240)
            self._occurrences[self._dtc] = min(126, self._occurrences.get(self._dtc, 0) + 1)
        elif self._dtc is not None:
            self._dtc_left -= 1
            if self._dtc_left <= 0:
                self._dtc = None
        if self._dtc is None:
            data = bytes([0x00, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF])
        else:
            spn, fmi = self._dtc
            oc = self._occurrences[self._dtc]
            dtc = bytes([spn & 0xFF, (spn >> 8) & 0xFF, ((spn >> 16) & 7) << 5 | fmi, oc])
            data = bytes([0x04, 0xFF]) + dtc + b"\xff\xff"  # amber warning lamp on
        return Frame(ts_ms, 0x18FECA00, True, data)

    def _enter(self, state: State, duration: int) -> None:
        self._state = state
        self._elapsed = 0
        self._duration = duration
        self._visited.add(state)

    def _travel_legs(self, back_out: bool) -> list[_Leg]:
        rng = self._rng
        legs = []
        if back_out:
            legs.append(_Leg(-1, rng.randint(6, 10), rng.uniform(5.0, 8.0)))
        legs.append(_Leg(1, rng.randint(14, 32), rng.uniform(12.0, 26.0)))
        return legs

    def _advance_state(self) -> None:
        rng = self._rng
        self._elapsed += 1
        if self._state is State.TRAVEL:
            leg = self._legs[0]
            leg.seconds -= 1
            if leg.seconds > 0 or self._speed > 0.3:
                return
            self._legs.pop(0)
            if self._legs:
                return
            if self._loaded:
                self._enter(State.DUMP, rng.randint(8, 12))
            else:
                self._dig_rpm = rng.uniform(2000.0, 2300.0)
                self._enter(State.DIG, rng.randint(8, 16))
            return
        if self._elapsed < self._duration:
            return
        if self._state is State.IDLE:
            self._legs = self._travel_legs(back_out=False)
            self._enter(State.TRAVEL, 0)
        elif self._state is State.DIG:
            self._loaded = True
            self._legs = self._travel_legs(back_out=True)
            self._enter(State.TRAVEL, 0)
        else:  # DUMP
            self._loaded = False
            if rng.random() < 0.15:
                self._enter(State.IDLE, rng.randint(15, 45))
            else:
                self._legs = self._travel_legs(back_out=True)
                self._enter(State.TRAVEL, 0)

    def _move(self) -> None:
        target = 0.0
        if self._state is State.TRAVEL and self._legs:
            leg = self._legs[0]
            stopping = math.ceil(self._speed / DECEL) + 1
            if self._speed > 0.3 and leg.direction != self._direction:
                target = 0.0  # still rolling the other way: stop first
            elif leg.seconds > stopping:
                self._direction = leg.direction
                target = leg.speed + 1.2 * math.sin(self._t / 7.0)  # gentle throttle wobble
        before = self._speed
        self._speed = _clamp(_approach(self._speed, target, ACCEL, DECEL), 0.0, 40.0)
        if self._speed < 0.3 and target == 0.0:
            self._speed = 0.0
        self._braking = before - self._speed > 1.0 or (
            self._speed == 0.0 and self._state in (State.IDLE, State.DUMP)
        )
        self._accel = self._speed - before
        # position along the loop; reverse drives it backwards
        self._path_pos = (self._path_pos + self._direction * self._speed / 3.6) % self._perimeter

    def _engine(self) -> None:
        rng = self._rng
        state = self._state
        accel = self._accel
        if state is State.IDLE:
            rpm_target, torque_target = 800.0, 9.0
        elif state is State.TRAVEL:
            rpm_target = 1400.0 + 500.0 * min(1.0, self._speed / 25.0)
            if accel > 0.3:
                rpm_target += 120.0
                torque_target = 55.0 + 10.0 * self._loaded
            elif accel < -1.0:
                torque_target = -12.0  # engine braking
            else:
                torque_target = 30.0 + 12.0 * self._loaded
        elif state is State.DIG:
            rpm_target, torque_target = self._dig_rpm, rng.uniform(75.0, 95.0)
        else:  # DUMP
            rpm_target, torque_target = 1700.0, 45.0
        self._rpm = _clamp(
            self._rpm + 0.45 * (rpm_target - self._rpm) + rng.gauss(0.0, 12.0), 650.0, 2400.0
        )
        self._torque = _clamp(
            self._torque + 0.6 * (torque_target - self._torque) + rng.gauss(0.0, 2.0),
            -30.0,
            100.0,
        )

    def _hydraulics(self) -> None:
        rng = self._rng
        state = self._state
        phase = self._elapsed / max(1, self._duration)
        if state is State.IDLE:
            pressure, boom, bucket = 22.0, -35.0, 0.0
        elif state is State.TRAVEL:
            if self._loaded:
                pressure, boom, bucket = 55.0, -5.0, 40.0
            else:
                pressure, boom, bucket = 35.0, -20.0, 5.0
        elif state is State.DIG:
            spike = rng.random() < 0.35
            pressure = rng.uniform(330.0, 390.0) if spike else rng.uniform(230.0, 300.0)
            if phase < 0.35:
                boom, bucket = -34.0, -3.0  # bucket flat, pushing into the pile
            elif phase < 0.75:
                boom, bucket = -25.0, 25.0  # crowd and curl
            else:
                boom, bucket = 5.0, 45.0  # break out and lift
        else:  # DUMP
            pressure = rng.uniform(170.0, 220.0)
            boom, bucket = (52.0, 40.0) if phase < 0.55 else (52.0, -40.0)
        keep = 0.4 if state is State.DIG else 0.6
        self._pressure = _clamp(
            keep * self._pressure + (1 - keep) * pressure + rng.gauss(0.0, 3.0), 0.0, 400.0
        )
        # boom: about 5 s from carry to full height; bucket: about 3 s to dump
        self._boom = _clamp(_approach(self._boom, boom, 12.0, 10.0) + rng.gauss(0.0, 0.2), -45, 60)
        self._bucket = _clamp(
            _approach(self._bucket, bucket, 30.0, 30.0) + rng.gauss(0.0, 0.3), -90, 90
        )

    def _slow(self) -> None:
        rng = self._rng
        state = self._state
        self._ambient = (
            self._ambient_base
            + 1.5 * math.sin(2 * math.pi * self._t / 3600.0)
            + rng.gauss(0.0, 0.05)
        )
        bias = {State.IDLE: -3.0, State.TRAVEL: 0.0, State.DIG: 4.0, State.DUMP: 1.0}[state]
        self._coolant += (88.0 + bias - self._coolant) * 0.004 + rng.gauss(0.0, 0.05)
        oil_target = 55.0 + (10.0 if state is State.DIG else 0.0)
        self._oil_temp += (oil_target - self._oil_temp) * 0.003 + rng.gauss(0.0, 0.05)
        load = max(self._torque, 0.0) / 100.0 * self._rpm / 2000.0
        self._fuel -= 0.0015 + 0.006 * load
        if (self._fuel < 8.0 and state is State.IDLE) or self._fuel < 3.0:
            self._fuel = rng.uniform(92.0, 98.0)  # the fuel bowser came by
        self._fuel = _clamp(self._fuel, 0.0, 100.0)
        self._hours += 1.0 / 3600.0
        charging = 28.0 if self._rpm > 1000 else 27.6
        self._battery = _clamp(
            self._battery + 0.3 * (charging - self._battery) + rng.gauss(0.0, 0.03), 22.0, 29.0
        )

    def _gear(self) -> int:
        if self._speed < 0.3:
            return 1 if self._state is State.DIG else 0  # F1 while crowding the pile
        if self._direction < 0:
            return -1
        if self._speed < 7.0:
            return 1
        if self._speed < 13.0:
            return 2
        if self._speed < 22.0:
            return 3
        return 4

    def _oil_pressure(self) -> float:
        hot = max(0.0, self._coolant - 40.0) * 0.5
        return _clamp(120.0 + 0.17 * self._rpm - hot + self._rng.gauss(0.0, 4.0), 0.0, 1000.0)

    def _metrics(self) -> dict[str, float]:
        rng = self._rng
        theta = 2 * math.pi * self._path_pos / self._perimeter
        north = self._axis_n * math.sin(theta) + rng.gauss(0.0, 0.8)
        east = self._axis_e * math.cos(theta) + rng.gauss(0.0, 0.8)
        lat = self._center_lat + north / _M_PER_DEG_LAT
        lng = self._center_lng + east / (_M_PER_DEG_LAT * math.cos(math.radians(SITE_LAT)))
        self._uptime += 1
        self._mem = _clamp(self._mem + rng.gauss(0.0, 0.3), 30.0, 65.0)
        self._rssi = _clamp(self._rssi + rng.gauss(0.0, 1.0), -105.0, -55.0)
        busy = {State.IDLE: 0.0, State.TRAVEL: 6.0, State.DIG: 10.0, State.DUMP: 8.0}[self._state]
        spike = rng.uniform(20.0, 45.0) if rng.random() < 0.02 else 0.0
        cpu = 9.0 + busy + rng.gauss(0.0, 2.5) + spike
        return {
            "gps_lat": round(lat, 6),
            "gps_lng": round(lng, 6),
            "cpu_usage": round(_clamp(cpu, 1.0, 100.0), 1),
            "mem_usage": round(self._mem, 1),
            "app_uptime_s": self._uptime,
            "signal_strength_dbm": round(self._rssi),
        }
