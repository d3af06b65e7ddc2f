"""The simulated fleet: backfill, real-time ticks, the real-time flag, failing sends."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from itertools import pairwise

import pytest

from livedata.decode.can import CanDecoder, builtin_dbc
from livedata.errors import ConfigError, NotFound
from livedata.model import DeviceMessage, Kind, MsgType
from livedata.sim.fleet import Fleet, default_chassis_ids

NOW = 1_700_000_000_500  # half-way through a second


@pytest.fixture(scope="module")
def decoder() -> CanDecoder:
    return CanDecoder.from_dbc(builtin_dbc())


class Sink:
    """A ``send`` that records every message."""

    def __init__(self) -> None:
        self.messages: list[DeviceMessage] = []

    async def __call__(self, message: DeviceMessage) -> None:
        self.messages.append(message)

    def by(self, chassis: str, msg_type: MsgType) -> list[DeviceMessage]:
        return [m for m in self.messages if m.chassis == chassis and m.msg_type == msg_type]


def test_default_chassis_ids() -> None:
    """Chassis ids are WL-0001, WL-0002, …"""
    assert default_chassis_ids(3) == ["WL-0001", "WL-0002", "WL-0003"]
    assert default_chassis_ids(0) == []


def test_fleet_refuses_bad_ids(decoder: CanDecoder) -> None:
    """Invalid or duplicate chassis ids and a non-positive period are configuration errors."""
    sink = Sink()
    with pytest.raises(ConfigError):
        Fleet("t", ["ok", "not ok"], decoder, sink)
    with pytest.raises(ConfigError):
        Fleet("t", ["WL-1", "WL-1"], decoder, sink)
    with pytest.raises(ConfigError):
        Fleet("t", ["WL-1"], decoder, sink, period=0)


async def test_backfill(decoder: CanDecoder) -> None:
    """backfill sends `seconds` seconds up to now per type and machine, each at its slot's phase."""
    sink = Sink()
    ids = default_chassis_ids(3)
    fleet = Fleet("acme", ids, decoder, sink)
    assert fleet.machine_ids() == ids
    fleet.set_realtime("WL-0002", False)  # history is recorded whatever the flag
    await fleet.backfill(120, NOW)
    assert len(sink.messages) == 3 * 2 * 120
    for chassis, phase in zip(ids, (0, 333, 667), strict=True):  # each machine's slot
        expected_ts = [1_700_000_000_000 - 1000 * i + phase for i in range(119, -1, -1)]
        for msg_type in MsgType:
            messages = sink.by(chassis, msg_type)
            assert [m.ts for m in messages] == expected_ts
            assert all(m.kind is Kind.BACKFILL and m.tenant == "acme" for m in messages)
        can = sink.by(chassis, MsgType.VEHICLE_CAN)
        assert all(len(m.frames) == 12 and not m.values for m in can)
        assert all(f.ts == m.ts for m in can for f in m.frames)
        raw = sink.by(chassis, MsgType.CLIENT_RAW_DATA)
        assert all("gps_lat" in m.values and not m.frames for m in raw)


async def test_backfill_decodes(decoder: CanDecoder) -> None:
    """Backfilled frames decode without errors through the same DBC."""
    sink = Sink()
    await Fleet("acme", ["WL-0001"], decoder, sink).backfill(30, NOW)
    for m in sink.by("WL-0001", MsgType.VEHICLE_CAN):
        result = decoder.decode(m.frames)
        assert result.errors == [] and result.unknown == 0 and len(result.values) == 15


async def run_for(fleet: Fleet, seconds: float) -> None:
    task = asyncio.create_task(fleet.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_sends_realtime_per_period(decoder: CanDecoder) -> None:
    """run() sends one message per type and machine each period, each machine in its own
    slot of the period (the two machines 25 ms apart), on the same slot every period."""
    sink = Sink()
    ids = default_chassis_ids(2)
    fleet = Fleet("acme", ids, decoder, sink, period=0.05)
    assert fleet.slots() == [["WL-0001"], ["WL-0002"]]
    await run_for(fleet, 0.6)
    for offset, chassis in zip((0, 25), ids, strict=True):
        for msg_type in MsgType:
            messages = sink.by(chassis, msg_type)
            assert 6 <= len(messages) <= 13, len(messages)
            assert all(m.kind is Kind.REALTIME for m in messages)
            stamps = [m.ts for m in messages]
            assert all(ts % 50 == offset for ts in stamps)
            gaps = [b - a for a, b in pairwise(stamps)]
            assert all(g > 0 and g % 50 == 0 for g in gaps)
            assert gaps.count(50) >= len(gaps) - 1  # at most one late slot skipped
    # per stamp: the two messages (both types) of one machine
    per_ts: dict[int, list[str]] = defaultdict(list)
    for m in sink.messages:
        per_ts[m.ts].append(m.chassis)
    assert all(len(machines) == 2 and len(set(machines)) == 1 for machines in per_ts.values())


def test_slots_are_at_least_min_slot_apart(decoder: CanDecoder) -> None:
    """A fleet with more machines than slots fit in its period shares slots evenly."""
    fleet = Fleet("acme", default_chassis_ids(100), decoder, Sink(), period=0.1)
    slots = fleet.slots()
    assert len(slots) == 5 and all(len(machines) == 20 for machines in slots)
    assert sorted(c for machines in slots for c in machines) == default_chassis_ids(100)


async def test_realtime_off_silences_a_machine(decoder: CanDecoder) -> None:
    """A machine whose real-time flag is off sends nothing from run(); the others do."""
    sink = Sink()
    fleet = Fleet("acme", default_chassis_ids(2), decoder, sink, period=0.05)
    assert fleet.is_realtime("WL-0001")
    fleet.set_realtime("WL-0001", False)
    assert not fleet.is_realtime("WL-0001")
    await run_for(fleet, 0.3)
    assert not [m for m in sink.messages if m.chassis == "WL-0001"]
    assert sink.by("WL-0002", MsgType.VEHICLE_CAN)
    fleet.set_realtime("WL-0001", True)
    await run_for(fleet, 0.2)
    assert sink.by("WL-0001", MsgType.CLIENT_RAW_DATA)


def test_unknown_machine(decoder: CanDecoder) -> None:
    """The real-time flag of a machine not in the fleet is NotFound."""
    fleet = Fleet("acme", ["WL-0001"], decoder, Sink())
    with pytest.raises(NotFound):
        fleet.set_realtime("WL-9999", True)
    with pytest.raises(NotFound):
        fleet.is_realtime("WL-9999")


async def test_failing_send_does_not_stop_the_fleet(decoder: CanDecoder) -> None:
    """A send that raises loses only that message; other machines and ticks carry on."""
    delivered: list[DeviceMessage] = []

    async def send(message: DeviceMessage) -> None:
        if message.chassis == "WL-0001":
            raise RuntimeError("link down")
        delivered.append(message)

    fleet = Fleet("acme", default_chassis_ids(2), decoder, send, period=0.05)
    await fleet.backfill(5, NOW)
    await run_for(fleet, 0.3)
    assert len([m for m in delivered if m.kind is Kind.BACKFILL]) == 10
    assert len([m for m in delivered if m.kind is Kind.REALTIME]) >= 6
    assert all(m.chassis == "WL-0002" for m in delivered)


async def test_realtime_continues_after_backfill(decoder: CanDecoder) -> None:
    """The real-time stream continues the backfilled machine state (uptime keeps counting)."""
    sink = Sink()
    fleet = Fleet("acme", ["WL-0001"], decoder, sink, period=0.05)
    await fleet.backfill(10, NOW)
    await run_for(fleet, 0.2)
    uptimes = [m.values["app_uptime_s"] for m in sink.by("WL-0001", MsgType.CLIENT_RAW_DATA)]
    assert len(uptimes) > 10
    assert uptimes == list(range(uptimes[0], uptimes[0] + len(uptimes)))


async def test_run_fills_the_seconds_lost_while_backfilling(decoder: CanDecoder) -> None:
    """Seconds between the end of backfill and the first tick are sent as backfill: no hole."""
    sink = Sink()
    fleet = Fleet("acme", ["WL-0001"], decoder, sink, period=0.05)
    now_ms = int(time.time() * 1000) - 3000  # as if the backfill had taken three seconds
    await fleet.backfill(5, now_ms)
    await run_for(fleet, 0.3)
    messages = sink.by("WL-0001", MsgType.VEHICLE_CAN)
    backfill = [m.ts for m in messages if m.kind is Kind.BACKFILL]
    realtime = [m.ts for m in messages if m.kind is Kind.REALTIME]
    assert len(backfill) >= 5 + 3
    assert all(b - a == 1000 for a, b in pairwise(backfill))
    assert realtime and 0 < realtime[0] - backfill[-1] <= 1000
