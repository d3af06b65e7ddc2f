"""Bounds on authenticated and device input: names, DBC files, timestamps, fields, metrics.

One demo server with a field cap of 20 shared by the module; clients on loopback.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from livedata.auth.policy import Access, rule_for
from livedata.decode.can import CanDecoder
from livedata.errors import InputError
from livedata.gateway import models_api
from livedata.model import plain_text, valid_id
from livedata.sim.demo import DBC_PATH
from tests.conftest import Server, start_demo, stop
from tests.security.servers import env

FIELD_CAP = 20
DAY_MS = 86_400_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with env(LIVEDATA_MAX_FIELDS_PER_TYPE=str(FIELD_CAP)):
        demo = start_demo(tmp_path_factory.mktemp("input-limits"), "--machines", "2")
    yield demo
    stop(demo)


@pytest.fixture(scope="module")
def admin(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def secret(server: Server, admin: httpx.Client) -> str:
    response = admin.post(f"/api/resources/demo/machines/{server.machines[1]}/secret")
    assert response.status_code == 200, response.text
    return str(response.json()["secret"])


def _ingest(server: Server, secret: str, ts: int, values: dict[str, float]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/ingest/demo/{server.machines[1]}/client_raw_data",
        json={"v": 1, "ts": ts, "kind": "realTime", "values": values},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


def _write(admin: httpx.Client, table: str, rows: list[list[object]]) -> httpx.Response:
    return admin.post(
        f"/db/write/{table}", params={"timeformat": "ms"}, json={"data": {"rows": rows}}
    )


def test_ids_with_a_trailing_newline_are_refused() -> None:
    """`$` would let "id\\n" through; ids and routes are anchored with \\Z."""
    assert valid_id("WL-0001") and not valid_id("WL-0001\n")
    assert rule_for("GET", "/api/auth/tokens/1\n").access is Access.closed
    assert rule_for("GET", "/api/resources/demo/machines").org == "demo"
    assert rule_for("GET", "/\n").access is Access.public  # not the page rule


def test_control_characters_are_refused_in_names() -> None:
    """NUL, line breaks and escapes are refused; other Unicode is fine."""
    assert plain_text("Hydraulik · Öl 2") == "Hydraulik · Öl 2"
    for bad in ("a\x00b", "line\nbreak", "esc\x1b[31m", "nel\x85", "ls\u2028"):
        with pytest.raises(ValueError):
            plain_text(bad)


def test_group_with_a_nul_in_its_name_is_400(admin: httpx.Client) -> None:
    """A group name with NUL answers 400 in the error shape and creates nothing."""
    before = admin.get("/api/resources/demo/groups").json()["groups"]
    body = {"name": "evil\x00group", "msgType": "client_raw_data", "fields": ["cpu_usage"]}
    response = admin.post("/api/resources/demo/groups", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert admin.get("/api/resources/demo/groups").json()["groups"] == before


def test_dbc_with_duplicate_message_ids_is_refused(admin: httpx.Client) -> None:
    """Two messages with one id: 400 naming the id and both messages."""
    text = DBC_PATH.read_text()
    first = text.index("BO_ ")
    end = text.index("\n\n", first)
    duplicate = text[first:end].replace("BO_ ", "BO_ ", 1)
    name_start = duplicate.index(" ", 4) + 1
    name_end = duplicate.index(":", name_start)
    duplicate = duplicate[:name_start] + "CopyOfIt" + duplicate[name_end:]
    duplicate = "\n".join(
        line.replace(" SG_ ", " SG_ copy_", 1) if line.startswith(" SG_ ") else line
        for line in duplicate.splitlines()
    )
    body = {"name": "dup.dbc", "content": text + "\n" + duplicate + "\n"}
    response = admin.post("/api/resources/demo/dbc", json=body)
    assert response.status_code == 400, response.text
    assert "duplicate message ids" in response.json()["error"]["message"]
    assert "CopyOfIt" in response.json()["error"]["message"]


def test_dbc_signal_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A DBC with more signals than MAX_DBC_SIGNALS is refused before it is stored."""
    decoder = CanDecoder.from_dbc(DBC_PATH.read_text())
    models_api.check_dbc(decoder)
    monkeypatch.setattr(models_api, "MAX_DBC_SIGNALS", len(decoder.signals()) - 1)
    with pytest.raises(InputError, match="signals; at most"):
        models_api.check_dbc(decoder)


def test_dbc_is_served_from_the_cache(admin: httpx.Client) -> None:
    """GET of a DBC answers the same signals every time (parsed once)."""
    dbc_id = admin.get("/api/resources/demo/dbc").json()["dbc"][0]["id"]
    first = admin.get(f"/api/resources/demo/dbc/{dbc_id}")
    second = admin.get(f"/api/resources/demo/dbc/{dbc_id}")
    assert first.status_code == 200 and first.json() == second.json()
    assert len(first.json()["signals"]) > 5


def test_device_clock_a_day_ahead_is_refused(server: Server, secret: str) -> None:
    """HTTP ingest: a timestamp 24 h ahead is 400 naming the skew; one 1 min ahead is fine."""
    now = int(time.time() * 1000)
    ahead = _ingest(server, secret, now + DAY_MS, {"cpu_usage": 1.0})
    assert ahead.status_code == 400, ahead.text
    assert "ahead of the server's clock" in ahead.json()["error"]["message"]
    assert _ingest(server, secret, now + 60_000, {"cpu_usage": 1.0}).status_code == 202


@pytest.mark.parametrize("year_ts", [32_503_680_000_000, 0])
def test_db_write_refuses_the_year_3000_and_1970(
    server: Server, admin: httpx.Client, year_ts: int
) -> None:
    """/db/write: a row in the year 3000 or 1970 is 400 and no row of the request is stored."""
    now = int(time.time() * 1000)
    tag = f"{server.machines[0]}.cpu_usage"
    response = _write(admin, "client_raw_data", [[tag, now, 1.0], [tag, year_ts, 2.0]])
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("row 2:")
    user = _write(admin, "skewtable", [["probe", now, 1.0], ["probe", year_ts, 2.0]])
    assert user.status_code == 400, user.text


def test_field_flood_is_capped_with_a_clear_error(server: Server, secret: str) -> None:
    """New fields beyond the cap are refused whole; known fields keep flowing."""
    now = int(time.time() * 1000)
    flood = {f"flood_{n:03d}": float(n) for n in range(FIELD_CAP + 5)}
    response = _ingest(server, secret, now, flood)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert f"at most {FIELD_CAP} are allowed" in message and "DELETE /api/resources/" in message
    assert _ingest(server, secret, now, {"cpu_usage": 3.0}).status_code == 202


def test_deleting_a_field_makes_room(server: Server, secret: str, admin: httpx.Client) -> None:
    """DELETE …/fields/{msgType}/{field} frees a place under the cap; unknown ones are 404."""
    chassis = server.machines[1]
    now = int(time.time() * 1000)
    n = 0
    while _ingest(server, secret, now, {f"fill_{n:03d}": 1.0}).status_code == 202:
        n += 1
        assert n <= FIELD_CAP
    base = f"/api/resources/demo/machines/{chassis}/fields/client_raw_data"
    assert admin.delete(f"{base}/fill_000").status_code == 204
    assert admin.delete(f"{base}/fill_000").status_code == 404
    assert _ingest(server, secret, now, {"fill_new": 1.0}).status_code == 202
    fields = admin.get(f"/api/resources/demo/machines/{chassis}").json()
    assert "fill_000" not in str(fields)


def test_db_write_user_table_field_cap(admin: httpx.Client) -> None:
    """A /db/write user table gets the same cap."""
    now = int(time.time() * 1000)
    rows: list[list[object]] = [[f"tag{n}", now, 1.0] for n in range(FIELD_CAP + 1)]
    response = _write(admin, "floodtable", rows)
    assert response.status_code == 400, response.text
    assert "at most" in response.json()["error"]["message"]


def test_metrics_carry_no_user_table_names(admin: httpx.Client) -> None:
    """After a write to an organisation's own table, /metrics does not name it."""
    now = int(time.time() * 1000)
    assert _write(admin, "secretplant", [["probe", now, 1.0]]).status_code == 200
    metrics = admin.get("/metrics")
    assert metrics.status_code == 200
    assert "secretplant" not in metrics.text
    assert 'msg_type="user_table"' in metrics.text


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379/", "http://169.254.169.254/latest", "http://localhost:22/"]
)
def test_rule_with_an_internal_webhook_is_refused(admin: httpx.Client, url: str) -> None:
    """An alert rule whose webhook names an internal address is 400 (nothing is sent)."""
    body = {
        "name": "ssrf probe",
        "kind": "value",
        "msgType": "client_raw_data",
        "field": "cpu_usage",
        "condition": ">",
        "threshold": 1e9,
        "notify": {"webhook": {"url": url}},
    }
    response = admin.post("/api/resources/demo/alert-rules", json=body)
    assert response.status_code == 400, response.text
    assert "webhook URL points to a" in response.json()["error"]["message"]
