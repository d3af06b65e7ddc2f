"""J1939 end to end over HTTP ingest: a DBC uploaded through the API, frames from other
source addresses, a multi-packet message split over two requests, a DM1 over BAM.

A demo server of its own (one simulated machine) whose machine is switched to the
test's J1939 DBC; the frames are sent as real-time records with the machine's own
secret, at timestamps off the simulator's second grid, so the history at exactly those
timestamps holds only what the test sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import socketio

from livedata.codec import encode
from tests.conftest import Server, start_demo, stop
from tests.e2e.j1939 import (
    FILES,
    ORG,
    bam,
    can_message,
    dtc,
    dtcs,
    stored,
    use_j1939_dbc,
    wait_for,
)

OCTETS = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_demo(tmp_path_factory.mktemp("j1939"), "--machines", "1")
    yield server
    stop(server)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def chassis(server: Server, http: httpx.Client) -> str:
    """The machine, decoded with tests/files/can/j1939.dbc uploaded through the API."""
    return use_j1939_dbc(http, server.machines[0])


@pytest.fixture(scope="module")
def ingest(server: Server, http: httpx.Client, chassis: str) -> Iterator[httpx.Client]:
    """The machine, sending with its own secret."""
    response = http.post(f"/api/resources/{ORG}/machines/{chassis}/secret")
    assert response.status_code == 200, response.text
    headers = {"Authorization": f"Bearer {response.json()['secret']}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        yield client


def send(ingest: httpx.Client, chassis: str, ts: int, frames: list[tuple[int, int, bytes]]) -> None:
    message = can_message(chassis, ts, frames)
    response = ingest.post(
        f"/api/ingest/{ORG}/{chassis}/vehicle_can", content=encode(message), headers=OCTETS
    )
    assert response.status_code == 202, response.text


def test_j1939_frames_dm1_and_alert(http: httpx.Client, ingest: httpx.Client, chassis: str) -> None:
    """Other source addresses and priorities decode, a BAM split over two requests is
    reassembled, a DM1 of 3 DTCs is in the DTC API with SPN names and raises a dtc_active
    alert and a one-code alert; a later empty DM1 clears the codes and the alerts."""
    rule = {
        "name": "DTC active",
        "scope": "machine",
        "scopeValue": chassis,
        "msgType": "vehicle_can",
        "field": "dtc_active",
        "condition": ">",
        "threshold": 2,
        "severity": "warning",
    }
    created = http.post(f"/api/resources/{ORG}/alert-rules", json=rule)
    assert created.status_code == 201, created.text
    rule_id = created.json()["id"]
    one_code = {**rule, "name": "Oil pressure DTC", "field": "dtc.100.1", "threshold": 0}
    created = http.post(f"/api/resources/{ORG}/alert-rules", json=one_code)
    assert created.status_code == 201, created.text
    code_rule_id = created.json()["id"]

    t1 = (int(time.time()) * 1000) + 137
    eec1_sa5 = (t1, 0x18F00405, bytes.fromhex("FFFF824038FFFFFF"))  # priority 6, SA 0x05
    tsc1_da3 = (t1, 0x0C000327, bytes.fromhex("FE0019FFFFFFFFFF"))  # PDU1 to another DA
    body = bytearray(b"\xff" * 20)
    body[0:2], body[10:12], body[16:20] = (
        (500).to_bytes(2, "little"),
        b"\x04\x00",
        (12345678).to_bytes(4, "little"),
    )
    body_frames = bam(0x21, 0xFF10, bytes(body), t1 + 10)
    dm1 = bytes([0x04, 0xFF]) + dtc(110, 16, 3) + dtc(100, 1, 1) + dtc(190, 0, 7)
    dm1_frames = bam(0x17, 0xFECA, dm1, t1 + 20)
    send(ingest, chassis, t1, [eec1_sa5, tsc1_da3, *body_frames[:2], *dm1_frames[:2]])
    t2 = t1 + 1000
    send(ingest, chassis, t2, [*body_frames[2:], *dm1_frames[2:]])

    series = stored(http, chassis, "engine_speed,engine_torque,requested_speed,override_mode", t1)
    assert series == {
        "engine_speed": [[t1, 1800.0]],
        "engine_torque": [[t1, 5]],
        "requested_speed": [[t1, 800.0]],
        "override_mode": [[t1, 2]],
    }
    later = stored(
        http, chassis, "body_voltage,door_count,odometer,dtc_active,lamp_amber_warning", t2
    )
    assert later["body_voltage"] == [[t2, 25.0]] and later["door_count"] == [[t2, 4]]
    assert later["odometer"] == [[t2, 12345.678]]
    assert later["dtc_active"][0][1] >= 3 and later["lamp_amber_warning"] == [[t2, 1]]

    listing = dtcs(http, chassis)
    mine = sorted((d for d in listing["active"] if d["sa"] == 0x17), key=lambda d: d["spn"])
    assert [(d["spn"], d["fmi"], d["oc"]) for d in mine] == [(100, 1, 1), (110, 16, 3), (190, 0, 7)]
    assert [d["name"] for d in mine] == [
        "Engine oil pressure",
        "Engine coolant temperature",
        "Engine speed",
    ]
    assert all(d["since"] == dm1_frames[-1][0] and d["clearedAt"] is None for d in mine)
    assert (
        mine[1]["lamp"]["amber_warning"] == 1
        and mine[1]["fmiText"] == "above normal (moderately severe)"
    )

    def active_alerts() -> dict[int, list[dict[str, Any]]]:
        alerts = http.get(f"/api/resources/{ORG}/alerts", params={"state": "active"}).json()
        return {
            rid: [a for a in alerts["alerts"] if a["ruleId"] == rid]
            for rid in (rule_id, code_rule_id)
        }

    alerts = wait_for(lambda: (found := active_alerts()) and all(found.values()) and found)
    assert alerts, "no alert for dtc_active and dtc.100.1"
    assert [a["chassisId"] for a in alerts[rule_id] + alerts[code_rule_id]] == [chassis, chassis]

    t3 = t2 + 1000
    send(ingest, chassis, t3, [(t3, 0x18FECA17, bytes([0x00, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF]))])

    def cleared_listing() -> dict[str, Any] | None:
        listing = dtcs(http, chassis)
        return None if any(d["sa"] == 0x17 for d in listing["active"]) else listing

    listing = wait_for(cleared_listing)
    assert listing is not None, "the empty DM1 did not clear the codes"
    cleared = [d for d in listing["recent"] if d["sa"] == 0x17]
    assert sorted(d["spn"] for d in cleared) == [100, 110, 190]
    assert all(d["clearedAt"] == t3 and not d["active"] for d in cleared)
    assert stored(http, chassis, "dtc.100.1", t3)["dtc.100.1"] == [[t3, 0]]
    gone = wait_for(lambda: not any(active_alerts().values()))
    assert gone, "the alerts did not clear with the codes"


async def test_dtc_changes_reach_socketio(
    server: Server, ingest: httpx.Client, chassis: str
) -> None:
    """A subscribed Socket.IO client gets a device-update with each DTC change of its machine."""
    client = socketio.AsyncClient(reconnection=False)
    got: list[dict[str, Any]] = []
    client.on("device-update", got.append)
    await client.connect(server.url, auth={"token": server.token, "org": ORG}, wait_timeout=10)
    try:
        ack = await client.call("subscribe-device", {"deviceId": chassis}, timeout=5)
        assert ack["ok"] is True
        t = int(time.time()) * 1000 + 337
        frame = (t, 0x18FECA18, bytes([0x04, 0xFF]) + dtc(3226, 2, 1) + b"\xff\xff")
        await asyncio.to_thread(send, ingest, chassis, t, [frame])
        deadline = time.monotonic() + 15
        while not [e for e in got if e.get("dtc", {}).get("SPN") == 3226]:
            assert time.monotonic() < deadline, "no device-update with the DTC"
            await asyncio.sleep(0.1)
    finally:
        await client.disconnect()
    (event,) = [e for e in got if e.get("dtc", {}).get("SPN") == 3226]
    assert event["deviceId"] == chassis
    assert {k: event["dtc"][k] for k in ("EVENT", "SA", "FMI", "OC", "TIME")} == {
        "EVENT": "active",
        "SA": 0x18,
        "FMI": 2,
        "OC": 1,
        "TIME": t,
    }


def test_dtcs_api_scoped(http: httpx.Client, chassis: str) -> None:
    """The DTC API answers 404 for an unknown machine or another organisation."""
    assert http.get(f"/api/resources/{ORG}/machines/nope/dtcs").status_code == 404
    assert http.get(f"/api/resources/other/machines/{chassis}/dtcs").status_code == 404


def test_dbc_options_through_the_api(
    http: httpx.Client, ingest: httpx.Client, chassis: str
) -> None:
    """A DBC uploaded with j1939=false matches exact ids; with separateSources another
    source address gets its own fields (runs last: it reassigns the machine's DBC); the
    diff of two uploads of one text is empty, against an unknown file 404."""
    text = (FILES / "j1939.dbc").read_text()
    plain = http.post(
        f"/api/resources/{ORG}/dbc", json={"name": "plain", "content": text, "j1939": False}
    ).json()
    assert (plain["j1939"], plain["protocol"], plain["separateSources"]) == (False, "can", False)
    apart = http.post(
        f"/api/resources/{ORG}/dbc",
        json={"name": "apart", "content": text, "separateSources": True},
    ).json()
    assert (apart["j1939"], apart["protocol"], apart["separateSources"]) == (None, "j1939", True)
    diff = http.get(f"/api/resources/{ORG}/dbc/{apart['id']}/diff", params={"against": plain["id"]})
    assert diff.status_code == 200, diff.text
    assert diff.json() == {
        "from": plain["id"],
        "to": apart["id"],
        "added": [],
        "removed": [],
        "changed": [],
    }
    missing = http.get(f"/api/resources/{ORG}/dbc/{apart['id']}/diff", params={"against": 99999})
    assert missing.status_code == 404
    renamed = text.replace('(0.125,0) [0|8031.875] "rpm" VCU', '(0.25,0) [0|8031.875] "rpm" VCU', 1)
    v2 = http.post(f"/api/resources/{ORG}/dbc", json={"name": "plain", "content": renamed}).json()
    versions = http.get(f"/api/resources/{ORG}/dbc/{v2['id']}/diff").json()
    assert versions["from"] == plain["id"]  # the previous upload of the same name
    assert [(c["name"], c["changes"]) for c in versions["changed"]] == [
        ("engine_speed", {"scale": [0.125, 0.25]})
    ]
    first = http.get(f"/api/resources/{ORG}/dbc/{plain['id']}/diff").json()
    assert first["from"] is None and len(first["added"]) == 9 and first["removed"] == []
    listed = {d["id"]: d for d in http.get(f"/api/resources/{ORG}/dbc").json()["dbc"]}
    assert listed[apart["id"]]["separateSources"] is True and listed[plain["id"]]["j1939"] is False

    assigned = http.put(f"/api/resources/{ORG}/machines/{chassis}/dbc", json={"dbcId": apart["id"]})
    assert assigned.status_code == 200, assigned.text
    ts = int(time.time()) * 1000 + 537
    send(ingest, chassis, ts, [(ts, 0x18F00405, bytes.fromhex("FFFF824038FFFFFF"))])
    series = stored(http, chassis, "engine_speed.0x05,engine_torque.0x05", ts)
    assert series == {"engine_speed.0x05": [[ts, 1800.0]], "engine_torque.0x05": [[ts, 5]]}
