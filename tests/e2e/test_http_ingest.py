"""HTTP ingest on a running demo server: accepted payloads reach history, bad ones get 4xx and are counted.

Records are sent as backfill, hours in the past, on the demo's last machine, so they
are stored but never pushed to the live clients of other tests.  Ingest requests carry
that machine's own secret (``ingest`` client); reads use the admin's token (``http``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from livedata.codec import MAX_PAYLOAD, encode
from livedata.decode.can import CanDecoder
from livedata.model import DeviceMessage, Kind, MsgType
from livedata.sim.demo import DBC_PATH
from tests.conftest import Server

DECODER = CanDecoder.from_dbc(DBC_PATH.read_text())
_offsets = itertools.count()
OCTETS = {"content-type": "application/octet-stream"}


@pytest.fixture
def http(demo: Server) -> Iterator[httpx.Client]:
    """The demo organisation's admin."""
    with httpx.Client(base_url=demo.url, headers=demo.headers, timeout=30) as client:
        yield client


@pytest.fixture
def chassis(demo: Server) -> str:
    return demo.machines[-1]


@pytest.fixture(scope="module")
def secret(demo: Server) -> str:
    """A new secret of the demo's last machine, given by the admin."""
    response = httpx.post(
        f"{demo.url}/api/resources/demo/machines/{demo.machines[-1]}/secret",
        headers=demo.headers,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["secret"]


@pytest.fixture
def ingest(demo: Server, secret: str) -> Iterator[httpx.Client]:
    """The demo's last machine, sending with its own secret."""
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=demo.url, headers=headers, timeout=30) as client:
        yield client


def past_ts() -> int:
    """A distinct timestamp three hours ago, off the second grid the fleet uses."""
    return (int(time.time()) - 3 * 3600) * 1000 + 137 + next(_offsets) * 1000


def url(chassis: str, msg_type: str, org: str = "demo") -> str:
    return f"/api/ingest/{org}/{chassis}/{msg_type}"


def history(http: httpx.Client, chassis: str, msg_type: str, fields: str, ts: int) -> dict:
    response = http.get(
        f"/api/resources/demo/_common/datasets/{chassis}/history",
        params={"msgType": msg_type, "fields": fields, "from": ts, "to": ts},
    )
    assert response.status_code == 200, response.text
    return response.json()["series"]


def decoding(http: httpx.Client, chassis: str) -> dict:
    response = http.get(f"/api/resources/demo/machines/{chassis}")
    assert response.status_code == 200, response.text
    return response.json()["decoding"]


def test_vehicle_can_batch_is_stored(
    http: httpx.Client, ingest: httpx.Client, chassis: str
) -> None:
    """A binary vehicle_can batch is answered 202 with its point count and its values are in history."""
    ts = past_ts()
    frames = DECODER.encode({"speed": 37.5, "engine_rpm": 1234, "coolant_temp": 88}, ts)
    expected = DECODER.decode(frames).values
    message = DeviceMessage("x", "y", MsgType.VEHICLE_CAN, ts, Kind.BACKFILL, frames=tuple(frames))
    response = ingest.post(url(chassis, "vehicle_can"), content=encode(message), headers=OCTETS)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": True, "points": len(expected)}
    series = history(http, chassis, "vehicle_can", "speed,engine_rpm,coolant_temp", ts)
    for name in ("speed", "engine_rpm", "coolant_temp"):
        assert series[name] == [[ts, pytest.approx(expected[name])]], name
    assert expected["speed"] == pytest.approx(37.5, abs=0.5)


def test_client_raw_data_json_is_stored(
    http: httpx.Client, ingest: httpx.Client, chassis: str
) -> None:
    """A client_raw_data JSON body is answered 202 and its values are in history."""
    ts = past_ts()
    body = {"v": 1, "ts": ts, "kind": "backfill", "values": {"cpu_usage": 12.5, "http_probe": 7}}
    response = ingest.post(url(chassis, "client_raw_data"), json=body)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": True, "points": 2}
    series = history(http, chassis, "client_raw_data", "cpu_usage,http_probe", ts)
    assert series == {"cpu_usage": [[ts, 12.5]], "http_probe": [[ts, 7]]}


@pytest.mark.parametrize(
    ("msg_type", "body", "headers", "needle"),
    [
        ("vehicle_can", b"\x01\x00\x00", OCTETS, "truncated"),
        ("vehicle_can", b'{"v":1,"ts":1,"values":{}}', OCTETS, "looks like JSON"),
        ("vehicle_can", b"\x07" + bytes(11), OCTETS, "version 7"),
        ("client_raw_data", b"{not json", {"content-type": "application/json"}, "not valid"),
        ("client_raw_data", b'{"v":1,"ts":1}', {"content-type": "application/json"}, "values"),
    ],
)
def test_malformed_payload_is_400_and_counted(
    http: httpx.Client,
    ingest: httpx.Client,
    chassis: str,
    msg_type: str,
    body: bytes,
    headers: dict,
    needle: str,
) -> None:
    """An undecodable body gets 400 naming the problem and counts as rejected for the machine."""
    before = decoding(http, chassis)["rejected"]
    response = ingest.post(url(chassis, msg_type), content=body, headers=headers)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "decode_error" and needle in error["message"]
    after = decoding(http, chassis)
    assert after["rejected"] == before + 1
    assert needle in after["lastErrors"][-1]


@pytest.mark.parametrize(
    "path", ["/api/ingest/demo/NO-SUCH/vehicle_can", "/api/ingest/other-org/{m}/vehicle_can"]
)
def test_unknown_machine_is_401(ingest: httpx.Client, chassis: str, path: str) -> None:
    """A machine or organisation that does not exist has no secret to match: 401
    unauthenticated, even with another machine's valid secret."""
    response = ingest.post(path.format(m=chassis), content=b"\x01", headers=OCTETS)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-secret", "ADMIN"])
def test_missing_or_wrong_secret_is_401(
    demo: Server, chassis: str, authorization: str | None
) -> None:
    """Without the machine's own secret (none, a wrong one, or a user's API token) ingest is
    401 unauthenticated and nothing is stored."""
    headers = {"content-type": "application/json"}
    if authorization == "ADMIN":
        headers.update(demo.headers)
    elif authorization is not None:
        headers["Authorization"] = authorization
    ts = past_ts()
    body = orjson.dumps({"v": 1, "ts": ts, "kind": "backfill", "values": {"cpu_usage": 3.5}})
    response = httpx.post(
        f"{demo.url}{url(chassis, 'client_raw_data')}",
        content=body,
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthenticated"
    with httpx.Client(base_url=demo.url, headers=demo.headers, timeout=30) as http:
        assert history(http, chassis, "client_raw_data", "cpu_usage", ts) == {"cpu_usage": []}


def test_unknown_msg_type_is_400(ingest: httpx.Client, chassis: str) -> None:
    """A message type other than vehicle_can or client_raw_data gets 400."""
    response = ingest.post(url(chassis, "engine_oil"), content=b"{}")
    assert response.status_code == 400
    assert "engine_oil" in response.json()["error"]["message"]


def test_wrong_content_type_is_415(ingest: httpx.Client, chassis: str) -> None:
    """JSON declared for vehicle_can (or a form for client_raw_data) gets 415 naming the right type."""
    response = ingest.post(url(chassis, "vehicle_can"), json={"v": 1})
    assert response.status_code == 415
    assert "application/octet-stream" in response.json()["error"]["message"]
    response = ingest.post(url(chassis, "client_raw_data"), data={"v": "1"})
    assert response.status_code == 415


def test_oversized_body_is_413(ingest: httpx.Client, chassis: str) -> None:
    """A body over 1 MiB gets 413, whether announced by Content-Length or streamed chunked."""
    big = b"\x01" + bytes(MAX_PAYLOAD)
    response = ingest.post(url(chassis, "vehicle_can"), content=big, headers=OCTETS)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield bytes(64 * 1024)

    response = ingest.post(url(chassis, "vehicle_can"), content=chunks(), headers=OCTETS)
    assert response.status_code == 413
    # the server keeps serving
    ts = past_ts()
    body = orjson.dumps({"v": 1, "ts": ts, "kind": "backfill", "values": {"cpu_usage": 1.5}})
    response = ingest.post(
        url(chassis, "client_raw_data"), content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 202, response.text
