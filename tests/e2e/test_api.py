"""The HTTP API of a running demo: machines, groups, DBC files, decoding counters, health, metrics."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import httpx
import pytest

from livedata.sim.demo import DBC_PATH
from tests.conftest import Server, start_demo, stop


@pytest.fixture
def http(demo: Server) -> httpx.Client:
    with httpx.Client(base_url=demo.url, headers=demo.headers, timeout=10) as client:
        yield client


def test_machines_list_message_types_and_fields(http: httpx.Client, demo: Server) -> None:
    """The machines API lists the demo machines with their decodable fields, units and value
    tables, and the DTC summary fields of the J1939 DBC."""
    body = http.get("/api/resources/demo/machines").json()
    machines = {m["chassisId"]: m for m in body["machines"]}
    assert sorted(machines) == sorted(demo.machines)
    can = {f["name"]: f for f in machines[demo.machines[0]]["msgTypes"]["vehicle_can"]["fields"]}
    assert {
        "speed",
        "engine_rpm",
        "brake_status",
        "coolant_temp",
        "fuel_level",
        "hydraulic_pressure",
        "gear",
    } <= set(can)
    assert can["speed"]["unit"] == "km/h"
    assert can["speed"]["choices"] is None
    assert can["gear"]["choices"] == {
        "-1": "R",
        "0": "N",
        "1": "F1",
        "2": "F2",
        "3": "F3",
        "4": "F4",
    }
    assert can["dtc_active"]["min"] == 0
    assert can["lamp_amber_warning"]["choices"] == {"0": "off", "1": "on"}
    deadline = time.monotonic() + 10
    while True:  # client_raw_data fields are known once the machine has sent some
        body = http.get(f"/api/resources/demo/machines/{demo.machines[0]}").json()
        raw = {f["name"] for f in body["msgTypes"]["client_raw_data"]["fields"]}
        if {"gps_lat", "gps_lng", "cpu_usage"} <= raw or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {"gps_lat", "gps_lng", "cpu_usage"} <= raw


def test_unknown_org_is_404(http: httpx.Client) -> None:
    """An organisation that does not exist (or is not the caller's) is 404 with an error body."""
    response = http.get("/api/resources/nope/machines")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_group_crud(http: httpx.Client) -> None:
    """Groups are created, changed, listed and deleted through the API."""
    body = {"name": "Fuel", "msgType": "vehicle_can", "fields": ["fuel_level"], "unit": "%"}
    created = http.post("/api/resources/demo/groups", json=body)
    assert created.status_code == 201, created.text
    group = created.json()
    assert group["name"] == "Fuel" and group["fields"] == ["fuel_level"]
    changed = http.put(
        f"/api/resources/demo/groups/{group['id']}", json={**body, "fields": ["fuel_level", "gear"]}
    )
    assert changed.json()["fields"] == ["fuel_level", "gear"]
    listed = http.get("/api/resources/demo/groups").json()["groups"]
    assert any(g["id"] == group["id"] and g["fields"] == ["fuel_level", "gear"] for g in listed)
    assert http.delete(f"/api/resources/demo/groups/{group['id']}").status_code == 204
    assert http.delete(f"/api/resources/demo/groups/{group['id']}").status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "msgType": "vehicle_can", "fields": ["speed"], "unit": ""},
        {"name": "x", "msgType": "bogus", "fields": ["speed"], "unit": ""},
        {"name": "x", "msgType": "vehicle_can", "fields": [], "unit": ""},
        {"name": "x", "msgType": "vehicle_can", "fields": ["bad name!"], "unit": ""},
        {"name": "x", "msgType": "vehicle_can", "fields": "speed", "unit": ""},
    ],
)
def test_invalid_groups_are_refused(http: httpx.Client, body: dict) -> None:
    """An invalid group gets 400 with a message."""
    response = http.post("/api/resources/demo/groups", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"]


def test_dbc_upload_list_and_assign(http: httpx.Client, demo: Server) -> None:
    """A DBC file is uploaded, its signals listed with unit/min/max, and assigned to a machine."""
    uploaded = http.post(
        "/api/resources/demo/dbc", json={"name": "copy.dbc", "content": DBC_PATH.read_text()}
    )
    assert uploaded.status_code == 201, uploaded.text
    dbc = uploaded.json()
    signals = {s["name"]: s for s in dbc["signals"]}
    assert signals["engine_rpm"]["unit"] == "rpm"
    assert signals["speed"]["max"] is not None
    listed = http.get("/api/resources/demo/dbc").json()["dbc"]
    assert any(d["id"] == dbc["id"] for d in listed)
    assigned = http.put(
        f"/api/resources/demo/machines/{demo.machines[2]}/dbc", json={"dbcId": dbc["id"]}
    )
    assert assigned.status_code == 200
    assert assigned.json()["dbc"] == "copy.dbc"
    assert (
        http.put(
            f"/api/resources/demo/machines/{demo.machines[2]}/dbc", json={"dbcId": 99999}
        ).status_code
        == 404
    )


def test_invalid_dbc_is_refused(http: httpx.Client) -> None:
    """Uploading something that is not a DBC file gets 400 saying so."""
    response = http.post("/api/resources/demo/dbc", json={"name": "x", "content": "BO_ garbage"})
    assert response.status_code == 400
    assert "DBC" in response.json()["error"]["message"]


def test_machine_shows_decoding_counters(http: httpx.Client, demo: Server) -> None:
    """A machine's decoding counters are visible in the API."""
    body = http.get(f"/api/resources/demo/machines/{demo.machines[0]}").json()
    decoding = body["decoding"]
    assert decoding["messages"] > 0 and decoding["frames"] > 0 and decoding["points"] > 0
    assert {"unknownIds", "malformed", "rejected", "lastErrors"} <= set(decoding)


def test_health_metrics_and_openapi(http: httpx.Client) -> None:
    """/healthz is ok, /metrics (admin) has the pipeline counters, /docs and the OpenAPI schema
    are served."""
    health = http.get("/healthz")
    assert health.status_code == 200 and health.json()["ok"] is True
    metrics = http.get("/metrics").text
    for name in (
        "livedata_records_in_total",
        "livedata_decode_errors_total",
        "livedata_store_batches_total",
        "livedata_store_lag_seconds",
        "livedata_ws_connections",
        "livedata_deliveries_total",
        "livedata_drops_total",
    ):
        assert name in metrics
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    assert "/api/resources/{orgId}/_common/datasets/{chassisId}/history" in paths


def test_groups_and_data_survive_a_restart(tmp_path: Path) -> None:
    """Groups and stored history are kept when the demo restarts on the same data directory."""
    server = start_demo(tmp_path, "--machines", "1")
    try:
        with httpx.Client(base_url=server.url, headers=server.headers) as http:
            group = http.post(
                "/api/resources/demo/groups",
                json={"name": "Kept", "msgType": "vehicle_can", "fields": ["gear"], "unit": ""},
            ).json()
    finally:
        stop(server)
    server = start_demo(tmp_path, "--machines", "1")
    try:
        with httpx.Client(base_url=server.url, headers=server.headers) as http:
            groups = http.get("/api/resources/demo/groups").json()["groups"]
            history = http.get(
                f"/api/resources/demo/_common/datasets/{server.machines[0]}/history",
                params={"msgType": "vehicle_can", "fields": "gear"},
            ).json()
    finally:
        stop(server)
    assert [g["name"] for g in groups].count("Kept") == 1
    assert any(g["id"] == group["id"] for g in groups)
    stamps = [ts for ts, _ in history["series"]["gear"]]
    # the newest seconds may still be on their way to the store on a loaded machine
    assert len(stamps) >= 100, "the two minutes before the restart are still there"
    assert all(b - a == 1000 for a, b in itertools.pairwise(stamps)), "and the gap was filled"
