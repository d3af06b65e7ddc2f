"""Re-decoding over HTTP on a demo server: the DBC re-uploaded with a corrected scale is a new
version (the same text again is not), a range of one machine's history re-decoded with it
through the API with progress, the machine's timeline says which DBC decoded what."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from livedata.sim.demo import DBC_PATH
from tests.conftest import Server, start_demo, stop
from tests.e2e.j1939 import wait_for

ORG = "/api/resources/demo"
DOUBLED = DBC_PATH.read_text().replace(
    "engine_rpm : 24|16@1+ (0.125,0) [0|3000]", "engine_rpm : 24|16@1+ (0.25,0) [0|6000]"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two simulated machines with the default two minutes of history (through ingest)."""
    server = start_demo(tmp_path_factory.mktemp("redecode"), "--machines", "2")
    yield server
    stop(server)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        yield client


def rpm(http: httpx.Client, chassis: str, start: int, end: int) -> list[list[Any]]:
    response = http.get(
        f"{ORG}/_common/datasets/{chassis}/history",
        params={"msgType": "vehicle_can", "fields": "engine_rpm", "from": start, "to": end},
    )
    assert response.status_code == 200, response.text
    series: list[list[Any]] = response.json()["series"]["engine_rpm"]
    return series


def test_dbc_versions(http: httpx.Client) -> None:
    """A changed upload of a name is its next version with the previous one's id; the same
    text again answers the current version (200) and stores nothing."""
    files = http.get(f"{ORG}/dbc").json()["dbc"]
    first = next(d for d in files if d["name"] == "loader.dbc")
    assert (first["version"], first["previousId"]) == (1, None)
    same = http.post(f"{ORG}/dbc", json={"name": "loader.dbc", "content": DBC_PATH.read_text()})
    assert same.status_code == 200 and same.json()["id"] == first["id"]
    new = http.post(f"{ORG}/dbc", json={"name": "loader.dbc", "content": DOUBLED})
    assert new.status_code == 201, new.text
    assert (new.json()["version"], new.json()["previousId"]) == (2, first["id"])
    diff = http.get(f"{ORG}/dbc/{new.json()['id']}/diff").json()
    assert [(c["name"], c["changes"]["scale"]) for c in diff["changed"]] == [
        ("engine_rpm", [0.125, 0.25])
    ]


def test_redecode_a_range_of_one_machine(http: httpx.Client, server: Server) -> None:
    """A minute of machine 1 re-decoded with version 2: its engine_rpm doubles there and
    nowhere else, machine 2 keeps its values; the job reports its progress, is idempotent
    while running and the timeline lists the re-decoded range with the new version."""
    one, two = server.machines
    files = http.get(f"{ORG}/dbc").json()["dbc"]
    v2 = next(d for d in files if d["name"] == "loader.dbc" and d["version"] == 2)
    now = int(time.time() * 1000)
    start, end = now - 100_000, now - 40_000  # the history the demo made at start

    def kept() -> bool:
        ranges = http.get(f"{ORG}/machines/{one}/decoding").json()["ranges"]
        return bool(ranges) and ranges[0]["from"] <= start

    assert wait_for(kept), "the raw frames of the demo's history were not kept"
    before = {c: rpm(http, c, now - 120_000, now - 20_000) for c in (one, two)}
    body = {"machines": [one], "from": start, "to": end, "dbcId": v2["id"]}
    started = http.post(f"{ORG}/redecode", json=body)
    assert started.status_code in (200, 202), started.text
    job = started.json()
    assert job["total"] >= 55 and job["machines"] == [one]

    def finished() -> dict[str, Any] | None:
        current = http.get(f"{ORG}/redecode").json()["job"]
        return current if current["state"] != "running" else None

    done = wait_for(finished, timeout=60)
    assert done is not None and done["state"] == "done", done
    assert done["id"] == job["id"] and done["done"] == done["total"] and done["progress"] == 1.0

    after = rpm(http, one, now - 120_000, now - 20_000)
    assert after == [[ts, v * 2 if start <= ts <= end else v] for ts, v in before[one]]
    assert rpm(http, two, now - 120_000, now - 20_000) == before[two]
    timeline = http.get(f"{ORG}/machines/{one}/decoding").json()
    assert timeline["dbc"] == "loader.dbc"
    redecoded = [r for r in timeline["ranges"] if r["source"] == "redecode"]
    assert len(redecoded) == 1 and redecoded[0]["dbcId"] == v2["id"]
    assert start <= redecoded[0]["from"] <= redecoded[0]["to"] <= end


def test_redecode_refuses_bad_requests(http: httpx.Client, server: Server) -> None:
    """Unknown machine 404, reversed range 400, no machines 400; the job list stays readable."""
    one = server.machines[0]
    body = {"machines": ["nope"], "from": 0, "to": 1}
    assert http.post(f"{ORG}/redecode", json=body).status_code == 404
    body = {"machines": [one], "from": 5, "to": 1}
    assert http.post(f"{ORG}/redecode", json=body).status_code == 400
    assert (
        http.post(f"{ORG}/redecode", json={"machines": [], "from": 0, "to": 1}).status_code == 400
    )
    assert http.get(f"{ORG}/machines/nope/decoding").status_code == 404
