"""Upload of a CAN log and export of a range over the HTTP API of a running demo."""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest

from livedata.gateway.transfer import Busy, Transfers
from tests.conftest import Server

LOGS = Path(__file__).resolve().parent.parent / "files" / "logs"
START = (int(time.time()) - 3600) * 1000
"""The hand-written log is shifted to an hour ago (inside the demo's retention)."""


@pytest.fixture
def http(demo: Server) -> httpx.Client:
    with httpx.Client(base_url=demo.url, headers=demo.headers, timeout=30) as client:
        yield client


def upload(
    http: httpx.Client, chassis: str, name: str, body: bytes, **params: object
) -> httpx.Response:
    return http.post(
        f"/api/resources/demo/machines/{chassis}/import",
        params={"filename": name, **params},
        content=body,
    )


def test_uploaded_log_is_decoded_into_history_and_exported(
    http: httpx.Client, demo: Server
) -> None:
    """An uploaded candump log lands in history; CSV and Parquet exports carry its values and units."""
    chassis = demo.machines[2]
    response = upload(
        http, chassis, "field-test.log", (LOGS / "handwritten.log").read_bytes(), start=START
    )
    assert response.status_code == 200, response.text
    summary = response.json()
    assert summary["file"] == "field-test.log"
    assert (summary["frames"], summary["decoded"], summary["unknownIds"], summary["errors"]) == (
        7,
        5,
        1,
        1,
    )
    assert (summary["from"], summary["to"]) == (START, START + 1000)

    url = f"/api/resources/demo/_common/datasets/{chassis}/export"
    params = {
        "msgType": "vehicle_can",
        "fields": "engine_rpm,coolant_temp,bucket_angle",
        "from": START,
        "to": START + 1000,
    }
    csv = http.get(url, params=params)
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    assert "attachment" in csv.headers["content-disposition"]
    frame = pd.read_csv(io.BytesIO(csv.content))
    assert list(frame.columns) == [
        "time",
        "engine_rpm [rpm]",
        "coolant_temp [degC]",
        "bucket_angle [deg]",
    ]
    assert (
        frame["engine_rpm [rpm]"].iloc[0] == 1600.0 and frame["coolant_temp [degC]"].iloc[0] == 50
    )
    assert frame["bucket_angle [deg]"].iloc[1] == -90

    parquet = http.get(url, params={**params, "format": "parquet"})
    assert parquet.status_code == 200
    table = pq.read_table(io.BytesIO(parquet.content)).to_pydict()
    assert table["engine_rpm"] == [1600.0, None] and table["bucket_angle"] == [None, -90.0]


@pytest.mark.parametrize(
    ("name", "body", "status", "needle"),
    [
        ("bad.log", (LOGS / "corrupt.log").read_bytes(), 400, "bad.log line 4"),
        ("notes.txt", b"hello", 400, "unknown log format '.txt'"),
        ("empty.log", b"", 400, "the body is empty"),
    ],
)
def test_bad_upload_is_a_clear_error(
    http: httpx.Client, demo: Server, name: str, body: bytes, status: int, needle: str
) -> None:
    """A corrupt, unsupported or empty upload is refused with a message naming the problem."""
    response = upload(http, demo.machines[2], name, body)
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"format": "xlsx"}, "unknown format 'xlsx'"),
        ({"fields": ",".join(f"f{i}" for i in range(201))}, "at most 200"),
        ({"from": 0, "to": 40 * 86_400_000}, "the time range is longer than 31 days"),
        ({"from": 10, "to": 5}, "after"),
        ({"maxPoints": 1}, "maxPoints"),
        ({"msgType": "nope"}, "unknown msgType"),
    ],
)
def test_export_limits_are_clear_errors(
    http: httpx.Client, demo: Server, params: dict[str, object], needle: str
) -> None:
    """Each export limit is a 400 that says which limit."""
    url = f"/api/resources/demo/_common/datasets/{demo.machines[0]}/export"
    response = http.get(url, params={"msgType": "vehicle_can", **params})
    assert response.status_code == 400
    assert needle in response.json()["error"]["message"]


def test_export_without_credentials_is_refused(demo: Server) -> None:
    """The export, like history, needs a user of the organisation."""
    url = f"{demo.url}/api/resources/demo/_common/datasets/{demo.machines[0]}/export?msgType=vehicle_can"
    assert httpx.get(url).status_code == 401


def test_per_user_slots_refuse_beyond_the_limit() -> None:
    """A user at the limit gets Busy; another user is not affected; a release frees the slot once."""
    transfers = Transfers()
    release = transfers.acquire("export", 1, 1)
    with pytest.raises(Busy, match="at most 1 exports at a time"):
        transfers.acquire("export", 1, 1)
    transfers.acquire("export", 2, 1)
    release()
    release()
    transfers.acquire("export", 1, 1)
    with pytest.raises(Busy):
        transfers.acquire("export", 1, 1)
