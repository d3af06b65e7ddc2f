"""Pre-encoded payloads of a large simulated fleet: what they send is what a machine sends."""

from __future__ import annotations

from livedata.codec import decode, encode
from livedata.decode.can import CanDecoder
from livedata.model import DeviceMessage, Kind, MsgType
from livedata.sim.demo import DBC_PATH
from livedata.sim.fleet import default_chassis_ids
from livedata.sim.machine import Machine
from livedata.sim.ring import PayloadRing

TS = 1_700_000_000_000


def decoder() -> CanDecoder:
    return CanDecoder.from_dbc(DBC_PATH.read_text())


def test_own_template_sends_byte_for_byte_what_the_machine_encodes() -> None:
    """With machines ≤ templates each machine's payloads equal codec.encode of its own steps."""
    ids = default_chassis_ids(3)
    dec = decoder()
    ring = PayloadRing(ids, dec, seed=0, templates=5)
    machines = {c: Machine(c, dec, 0) for c in ids}
    for second in range(5):
        ts = TS + second * 1000
        kind = Kind.BACKFILL if second == 2 else Kind.REALTIME
        for chassis, machine in machines.items():
            frames, values = machine.step(ts)
            can, raw = ring.payloads(chassis, ts, kind)
            assert can == encode(
                DeviceMessage("t", chassis, MsgType.VEHICLE_CAN, ts, kind, frames=tuple(frames))
            )
            assert raw == encode(
                DeviceMessage("t", chassis, MsgType.CLIENT_RAW_DATA, ts, kind, values=values)
            )
        ring.advance()


def test_replaying_machines_send_valid_payloads_apart_from_their_template() -> None:
    """Machines beyond the templates send decodable CAN (with the DM1) and metrics, not in step."""
    ids = default_chassis_ids(12)
    dec = decoder()
    ring = PayloadRing(ids, dec, seed=0, templates=4, spread=10)
    assert ring.templates == 4
    can0, raw0 = ring.payloads(ids[0], TS)
    can4, raw4 = ring.payloads(ids[4], TS + 1000)
    assert raw0 != raw4 and can0[10:] != can4[10:]  # WL-0005 is seconds ahead of WL-0001
    message = decode("demo", ids[4], "vehicle_can", can4)
    assert message.ts == TS + 1000 and message.kind is Kind.REALTIME
    assert {f.ts for f in message.frames} == {TS + 1000}
    assert 0x18FECA00 in {f.arbitration_id for f in message.frames}  # the DM1
    assert set(dec.decode(list(message.frames)).values) >= {"engine_rpm", "speed"}
    values = decode("demo", ids[4], "client_raw_data", raw4)
    assert values.ts == TS + 1000 and "gps_lat" in values.values
    # a replaying machine sends now what its template sends some seconds later
    ahead = raw4.split(b'"values":')[1]
    later = []
    for _ in range(10):
        ring.advance()
        later.append(ring.payloads(ids[0], TS)[1].split(b'"values":')[1])
    assert ahead in later[:-1]
