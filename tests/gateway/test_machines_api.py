"""The machine registry API on a running server: create with provisioning, change, disable,
import CSV, delete with and without data; the broker files follow."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from livedata.sim.demo import DBC_PATH
from tests.conftest import Server, start_demo, stop

ORG = "/api/resources/demo"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server with one simulated machine whose settings write broker files."""
    root = tmp_path_factory.mktemp("registry")
    broker = root / "broker"
    broker.mkdir()
    settings = {
        "LIVEDATA_MQTT_PUBLIC_URL": "mqtt://broker.example:1883",
        "LIVEDATA_MQTT_PASSWD_FILE": str(broker / "passwd"),
        "LIVEDATA_MQTT_ACL_FILE": str(broker / "acl"),
        "LIVEDATA_MQTT_RELOAD_COMMAND": f"sh -c 'echo reload >> {broker / 'reloads'}'",
        "LIVEDATA_PUBLIC_URL": "https://livedata.example",
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        server = start_demo(root / "data", "--machines", "1")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield server
    stop(server)


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=20) as client:
        yield client


def broker_dir(server: Server) -> Path:
    return server.data_dir.parent / "broker"


def send(server: Server, chassis: str, secret: str, n: int) -> int:
    """Send ``n`` client_raw_data messages over HTTP ingest; the status of the last one."""
    status = 0
    now = int(time.time() * 1000) - n * 1000
    for i in range(n):
        response = httpx.post(
            f"{server.url}/api/ingest/demo/{chassis}/client_raw_data",
            json={"v": 1, "ts": now + i * 1000, "values": {"cpu_usage": i, "mem_usage": 2 * i}},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=20,
        )
        status = response.status_code
    return status


def test_create_provisions_and_lets_the_machine_in(http: httpx.Client, server: Server) -> None:
    """A new machine gets its secret once with MQTT, HTTP and agent details; HTTP ingest takes
    the secret at once; the password file lists it and the reload command ran."""
    body = {
        "chassisId": "EX-0001",
        "name": "Excavator 1",
        "model": "EX300",
        "tags": ["north", "rental", "north"],
        "location": "Yard 3",
    }
    created = http.post(f"{ORG}/machines", json=body)
    assert created.status_code == 201, created.text
    machine, bundle = created.json()["machine"], created.json()["provisioning"]
    assert machine["tags"] == ["north", "rental"] and machine["hasSecret"] is True
    assert bundle["mqtt"] == {"url": "mqtt://broker.example:1883", "username": "demo/EX-0001"}
    assert bundle["http"]["url"] == ("https://livedata.example/api/ingest/demo/EX-0001/{msgType}")
    secret = bundle["secret"]
    assert f"LIVEDATA_AGENT_SECRET={secret} livedata agent --mqtt" in bundle["agentCommand"]
    assert f'secret = "{secret}"' in bundle["configFile"]["content"]
    assert bundle["broker"]["written"] and bundle["broker"]["reloaded"], bundle["broker"]
    assert "demo/EX-0001:$7$" in (broker_dir(server) / "passwd").read_text()
    assert "pattern write livedata/%u/telemetry/+" in (broker_dir(server) / "acl").read_text()
    assert (broker_dir(server) / "reloads").read_text().count("reload") >= 1
    assert send(server, "EX-0001", secret, 1) == 202
    listed = {m["chassisId"]: m for m in http.get(f"{ORG}/machines").json()["machines"]}
    assert listed["EX-0001"]["location"] == "Yard 3" and listed["EX-0001"]["model"] == "EX300"
    again = http.post(f"{ORG}/machines", json=body)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"chassisId": "bad id!"}, "chassis id"),
        ({"model": "no spaces"}, "model"),
        ({"name": "tab\there"}, "control characters"),
        ({"tags": ["x" * 40]}, "longer than 32"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_machine_is_refused_with_reason(
    http: httpx.Client, change: dict[str, str], reason: str
) -> None:
    """A bad chassis id, model, name, tag or unknown key is a 400 that says what is wrong."""
    body = {"chassisId": "OK-0001", "name": "x", "model": "M1", **change}
    response = http.post(f"{ORG}/machines", json=body)
    assert response.status_code == 400
    assert reason in response.json()["error"]["message"]


def test_disable_refuses_data_and_removes_it_from_the_broker(
    http: httpx.Client, server: Server
) -> None:
    """A disabled machine's secret no longer works and it leaves the password file; enabling
    it again lets it back in; other fields are kept by a partial change."""
    created = http.post(
        f"{ORG}/machines", json={"chassisId": "EX-0002", "name": "E2", "model": "EX300"}
    )
    secret = created.json()["provisioning"]["secret"]
    changed = http.put(f"{ORG}/machines/EX-0002", json={"disabled": True, "tags": ["spare"]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["machine"]["disabled"] is True
    assert changed.json()["machine"]["name"] == "E2"
    assert changed.json()["broker"]["written"]
    assert "demo/EX-0002:" not in (broker_dir(server) / "passwd").read_text()
    assert send(server, "EX-0002", secret, 1) == 401
    http.put(f"{ORG}/machines/EX-0002", json={"disabled": False})
    assert "demo/EX-0002:" in (broker_dir(server) / "passwd").read_text()
    assert send(server, "EX-0002", secret, 1) == 202
    assert http.put(f"{ORG}/machines/NOPE-1", json={"name": "x"}).status_code == 404


CSV = """chassis,name,model,tags,location
CSV-0001,Loader A,WL900,north;rental,Yard 1
CSV-0002,Loader B,WL900,,
bad id!,Broken,WL900,,
CSV-0003,Loader C,bad model,,
CSV-0001,Duplicate,WL900,,
CSV-0004,"Loader, D",WL900,a|b,
"""


def test_csv_import_reports_bad_rows_and_is_idempotent(http: httpx.Client) -> None:
    """Good rows are created, bad ones reported by line with a reason; the same file again
    changes nothing; a changed row updates that machine only; multipart works too."""
    first = http.post(f"{ORG}/machines/import", content=CSV, headers={"Content-Type": "text/csv"})
    assert first.status_code == 200, first.text
    report = first.json()
    assert report["created"] == ["CSV-0001", "CSV-0002", "CSV-0004"]
    assert [(e["line"], e["chassis"]) for e in report["errors"]] == [
        (4, "bad id!"),
        (5, "CSV-0003"),
        (6, "CSV-0001"),
    ]
    assert "model" in report["errors"][1]["error"] and "line 2" in report["errors"][2]["error"]
    machines = {m["chassisId"]: m for m in http.get(f"{ORG}/machines").json()["machines"]}
    assert machines["CSV-0004"]["name"] == "Loader, D" and machines["CSV-0004"]["tags"] == [
        "a",
        "b",
    ]
    again = http.post(f"{ORG}/machines/import", files={"file": ("m.csv", CSV, "text/csv")})
    assert again.json()["created"] == [] and again.json()["updated"] == []
    assert again.json()["unchanged"] == ["CSV-0001", "CSV-0002", "CSV-0004"]
    edited = CSV.replace("Loader B", "Loader Bee")
    third = http.post(f"{ORG}/machines/import", json={"csv": edited}).json()
    assert third["updated"] == ["CSV-0002"]
    bad = http.post(f"{ORG}/machines/import", json={"nope": 1})
    assert bad.status_code == 400


def test_delete_asks_and_keeps_or_deletes_history(http: httpx.Client, server: Server) -> None:
    """Delete says how much is stored and needs data=keep|delete; kept history shows again
    when the id is registered again, deleted history does not."""
    for chassis in ("DEL-KEEP", "DEL-GONE"):
        created = http.post(
            f"{ORG}/machines", json={"chassisId": chassis, "name": chassis, "model": "M"}
        )
        assert send(server, chassis, created.json()["provisioning"]["secret"], 5) == 202
        assert http.get(f"{ORG}/machines/{chassis}/data").json()["points"] == 10
    asked = http.delete(f"{ORG}/machines/DEL-KEEP")
    assert asked.status_code == 400 and "10 stored values" in asked.json()["error"]["message"]
    kept = http.delete(f"{ORG}/machines/DEL-KEEP", params={"data": "keep"}).json()
    assert kept["pointsKept"] == 10 and kept["pointsDeleted"] == 0
    gone = http.delete(f"{ORG}/machines/DEL-GONE", params={"data": "delete"}).json()
    assert gone["pointsDeleted"] == 10
    assert http.get(f"{ORG}/machines/DEL-KEEP").status_code == 404
    assert "demo/DEL-KEEP:" not in (broker_dir(server) / "passwd").read_text()
    for chassis, points in (("DEL-KEEP", 10), ("DEL-GONE", 0)):
        http.post(
            f"{ORG}/machines",
            json={"chassisId": chassis, "name": chassis, "model": "M", "provision": False},
        )
        assert http.get(f"{ORG}/machines/{chassis}/data").json()["points"] == points
    audit = http.get(f"{ORG}/audit").json()["entries"]
    assert any(e["action"] == "machine_deleted" and e["target"] == "DEL-GONE" for e in audit)


DBC = DBC_PATH.read_text()


def test_dbc_upload_as_multipart_and_text_with_errors_in_place(http: httpx.Client) -> None:
    """A DBC is accepted as multipart or plain text; a syntax error names cantools' line
    and reason; a CAN id defined twice is refused."""
    multipart = http.post(f"{ORG}/dbc", files={"file": ("mp.dbc", DBC, "application/octet-stream")})
    assert multipart.status_code == 201, multipart.text
    assert multipart.json()["name"] == "mp.dbc"
    text = http.post(
        f"{ORG}/dbc",
        params={"name": "plain.dbc"},
        content=DBC,
        headers={"Content-Type": "text/plain"},
    )
    assert text.status_code == 201 and text.json()["name"] == "plain.dbc"
    broken = DBC.replace("BO_ 928 ", "BO_ 928 X ", 1)
    bad = http.post(f"{ORG}/dbc", files={"file": ("bad.dbc", broken, "text/plain")})
    assert bad.status_code == 400
    line = DBC[: DBC.index("BO_ 928 ")].count("\n") + 1
    assert f"line {line}" in bad.json()["error"]["message"]
    twice = DBC + '\nBO_ 928 Again: 8 HCU\n SG_ x : 0|8@1+ (1,0) [0|1] "" VCU\n'
    dup = http.post(f"{ORG}/dbc", files={"file": ("dup.dbc", twice, "text/plain")})
    assert dup.status_code == 400 and "0x3A0" in dup.json()["error"]["message"]
    nameless = http.post(f"{ORG}/dbc", content=DBC, headers={"Content-Type": "text/plain"})
    assert nameless.status_code == 400


def test_models_and_searchable_signal_catalog(http: httpx.Client) -> None:
    """A model is created, gets a DBC, lists its machines, and its catalog is searchable with
    id, PGN, unit, range, resolution and comment."""
    assert http.post(f"{ORG}/models", json={"name": "CAT-M1"}).status_code == 201
    assert http.post(f"{ORG}/models", json={"name": "CAT-M1"}).status_code == 409
    dbc = http.post(f"{ORG}/dbc", json={"name": "cat.dbc", "content": DBC}).json()
    http.put(f"{ORG}/models/CAT-M1/dbc", json={"dbcId": dbc["id"]})
    http.post(
        f"{ORG}/machines",
        json={"chassisId": "CAT-1", "name": "c", "model": "CAT-M1", "provision": False},
    )
    models = {m["name"]: m for m in http.get(f"{ORG}/models").json()["models"]}
    assert models["CAT-M1"] == {
        "name": "CAT-M1",
        "dbcId": dbc["id"],
        "dbc": "cat.dbc",
        "machines": ["CAT-1"],
    }
    every = http.get(f"{ORG}/models/CAT-M1/signals").json()
    assert every["dbc"]["name"] == "cat.dbc" and len(every["signals"]) >= 10
    (speed,) = http.get(f"{ORG}/models/CAT-M1/signals", params={"q": "KM/H"}).json()["signals"]
    assert speed["name"] == "speed" and speed["pgn"] == 65265 and speed["id"] == "0x18FEF100"
    assert speed["resolution"] == 0.00390625 and speed["max"] == 60 and "SPN 84" in speed["comment"]
    same = http.get(f"{ORG}/dbc/{dbc['id']}/signals", params={"q": "ccvs1"}).json()["signals"]
    assert [s["name"] for s in same] == ["brake_status", "speed"]
    assert http.get(f"{ORG}/models/NOPE/signals").status_code == 404


def test_http_sender_is_online_without_a_command_channel(
    http: httpx.Client, server: Server
) -> None:
    """A machine sending over HTTP ingest is online while it sends; its status says direct
    methods cannot reach it, and why."""
    created = http.post(f"{ORG}/machines", json={"chassisId": "HTTP-1", "name": "h", "model": "M"})
    silent = http.get(f"{ORG}/machines/HTTP-1/status").json()
    assert silent["online"] is False and silent["commands"] is False
    assert silent["commandsReason"] == "the machine is not connected"
    assert send(server, "HTTP-1", created.json()["provisioning"]["secret"], 1) == 202
    status = http.get(f"{ORG}/machines/HTTP-1/status").json()
    assert status["online"] is True and status["connected"] is False
    assert "HTTP ingest" in status["commandsReason"]
    simulated = http.get(f"{ORG}/machines/{server.machines[0]}/status").json()
    assert simulated["commands"] is True and simulated["commandsReason"] is None


def test_group_belongs_to_a_model(http: httpx.Client) -> None:
    """A line group may name a model (shown for its machines only); a bad model is a 400."""
    body = {"name": "Boom", "msgType": "vehicle_can", "fields": ["boom_angle"], "model": "EX300"}
    made = http.post(f"{ORG}/groups", json=body)
    assert made.status_code == 201 and made.json()["model"] == "EX300"
    everyone = http.put(f"{ORG}/groups/{made.json()['id']}", json={**body, "model": None})
    assert everyone.json()["model"] is None
    bad = http.post(f"{ORG}/groups", json={**body, "model": "no spaces"})
    assert bad.status_code == 400
    http.delete(f"{ORG}/groups/{made.json()['id']}")
