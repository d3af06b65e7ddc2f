"""Real-time that follows the viewers, end to end on a demo server: live WebSocket, SSE watch and
Socket.IO viewers start a machine's stream, it stops a grace time after they left, a manual
Stop is not overridden; the organisation's settings through the API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import socketio
import websockets

from tests.conftest import Server, start_demo, stop

ORG = "demo"
WAIT_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server of its own (its machines' streams are switched on and off here)."""
    srv = start_demo(tmp_path_factory.mktemp("follow"), "--machines", "2")
    yield srv
    stop(srv)


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=15) as client:
        yield client


def commands(http: httpx.Client, chassis: str) -> list[dict[str, Any]]:
    """The machine's command log, oldest first."""
    response = http.get(f"/api/iothubs/{ORG}/devices/{chassis}/methods", params={"limit": 100})
    assert response.status_code == 200, response.text
    return list(reversed(response.json()["commands"]))


def by_viewers(http: httpx.Client, chassis: str) -> list[str]:
    return [c["methodName"] for c in commands(http, chassis) if c["reason"] == "viewers"]


async def wait_viewer_commands(http: httpx.Client, chassis: str, expected: list[str]) -> None:
    """Wait until the methods sent for the viewers are ``expected`` (fails after WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while (got := await asyncio.to_thread(by_viewers, http, chassis)) != expected:
        assert len(got) <= len(expected) and got == expected[: len(got)], got
        assert time.monotonic() < deadline, f"viewer commands {got}, expected {expected}"
        await asyncio.sleep(0.2)


def realtime(http: httpx.Client, chassis: str) -> str:
    response = http.get(f"/api/resources/{ORG}/machines/{chassis}/status")
    assert response.status_code == 200, response.text
    return str(response.json()["realtime"])


def short_grace(http: httpx.Client) -> None:
    """One second from the last viewer leaving to the stop."""
    response = http.put(f"/api/resources/{ORG}", json={"viewerGraceSeconds": 1})
    assert response.status_code == 200, response.text


def manual(http: httpx.Client, chassis: str, method: str) -> None:
    response = http.post(
        f"/api/iothubs/{ORG}/devices/{chassis}/methods", json={"methodName": method}
    )
    assert response.status_code == 200 and response.json()["status"] == 200, response.text


async def open_live(server: Server, chassis: str) -> websockets.ClientConnection:
    ws = await websockets.connect(server.live_url(chassis), additional_headers=server.headers)
    await ws.send(orjson.dumps({"type": "INIT_FIELD_LIST", "payload": ["speed"]}).decode())
    return ws


def test_organisation_settings_through_the_api(http: httpx.Client) -> None:
    """The demo follows viewers by default; the settings change, are checked and are shown."""
    (org,) = http.get("/api/orgs").json()["orgs"]
    assert org["followViewers"] is True and org["viewerGraceSeconds"] == 300
    assert org["timezone"] is None
    changed = http.put(
        f"/api/resources/{ORG}", json={"timezone": "Europe/Berlin", "viewerGraceSeconds": 1}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json() == {
        "id": ORG,
        "name": org["name"],
        "timezone": "Europe/Berlin",
        "followViewers": True,
        "viewerGraceSeconds": 1,
    }
    bad = http.put(f"/api/resources/{ORG}", json={"timezone": "Mars/Olympus"})
    assert bad.status_code == 400 and "IANA" in bad.json()["error"]["message"]
    bad = http.put(f"/api/resources/{ORG}", json={"viewerGraceSeconds": 0})
    assert bad.status_code == 400
    assert http.get("/api/orgs").json()["orgs"][0]["timezone"] == "Europe/Berlin"


async def test_live_viewer_starts_and_leaving_stops_after_grace(
    server: Server, http: httpx.Client
) -> None:
    """A manual Stop holds; a manual Start hands over; a live viewer starts it, leaving stops it."""
    chassis = server.machines[0]
    short_grace(http)
    manual(http, chassis, "endMs")
    ws = await open_live(server, chassis)
    await ws.close()
    assert realtime(http, chassis) == "off", "a viewer overrode a manual Stop"
    manual(http, chassis, "startMs")  # releases the hold; nobody watches: runs out
    await wait_viewer_commands(http, chassis, ["endMs"])
    assert realtime(http, chassis) == "off"
    ws = await open_live(server, chassis)
    await wait_viewer_commands(http, chassis, ["endMs", "startMs"])
    assert realtime(http, chassis) == "on"
    await ws.close()
    await wait_viewer_commands(http, chassis, ["endMs", "startMs", "endMs"])
    assert realtime(http, chassis) == "off"
    row = commands(http, chassis)[-1]
    assert (row["requestedBy"], row["outcome"], row["status"]) == ("livedata", "ok", 200)


async def test_sse_and_socketio_viewers_count_too(server: Server, http: httpx.Client) -> None:
    """An SSE watch of a machine's tag and a Socket.IO subscription are viewers as well."""
    chassis = server.machines[1]
    short_grace(http)
    manual(http, chassis, "endMs")
    manual(http, chassis, "startMs")
    await wait_viewer_commands(http, chassis, ["endMs"])
    async with (
        httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=30) as sse,
        sse.stream("GET", "/db/watch/vehicle_can", params={"tag": f"{chassis}.speed"}) as stream,
    ):
        assert stream.status_code == 200
        await wait_viewer_commands(http, chassis, ["endMs", "startMs"])
    await wait_viewer_commands(http, chassis, ["endMs", "startMs", "endMs"])
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(server.url, auth={"token": server.token, "org": ORG}, wait_timeout=10)
    try:
        ack = await client.call("subscribe-device", {"deviceId": chassis}, timeout=5)
        assert ack["ok"] is True
        await wait_viewer_commands(http, chassis, ["endMs", "startMs", "endMs", "startMs"])
    finally:
        await client.disconnect()
    await wait_viewer_commands(http, chassis, ["endMs", "startMs", "endMs", "startMs", "endMs"])
