"""Replay over the live protocol (:mod:`livedata.gateway.replay`) from a Python client."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
import websockets

from livedata.gateway.replay import ReplayClock
from tests.conftest import Server

FIELDS = ["speed", "engine_rpm"]


def replay_url(demo: Server, chassis: str, start: int, end: int, speed: float) -> str:
    return (
        f"{demo.ws_url}/api/resources/demo/_common/datasets/{chassis}/replay"
        f"?msgType=vehicle_can&from={start}&to={end}&speed={speed}"
    )


async def receive(ws: websockets.ClientConnection, timeout: float = 5.0) -> dict:
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


def stored(demo: Server, chassis: str, start: int, end: int) -> list[tuple[int, dict]]:
    body = httpx.get(
        f"{demo.url}/api/resources/demo/_common/datasets/{chassis}/history",
        params={"msgType": "vehicle_can", "fields": ",".join(FIELDS), "from": start, "to": end},
        headers=demo.headers,
    ).json()
    rows: dict[int, dict] = {}
    for name, points in body["series"].items():
        for ts, value in points:
            rows.setdefault(ts, {})[name] = value
    return sorted(rows.items())


async def test_replay_at_60x_sends_the_stored_values_in_order(demo: Server) -> None:
    """A live-protocol client replays a stored minute at 60x: every stored timestamp, same values."""
    chassis = demo.machines[0]
    end = int(time.time() * 1000) - 30_000
    start = end - 60_000
    deadline = time.monotonic() + 30
    while len(want := stored(demo, chassis, start, end)) < 55:  # a new demo fills 2 min at start
        assert time.monotonic() < deadline, "the demo stored no history"
        await asyncio.sleep(0.5)
    async with websockets.connect(
        replay_url(demo, chassis, start, end, 60), additional_headers=demo.headers
    ) as ws:
        await ws.send(orjson.dumps({"type": "INIT_FIELD_LIST", "payload": FIELDS}).decode())
        first = await receive(ws)
        assert (
            first["type"] == "REPLAY_STATE" and first["state"] == "playing" and first["speed"] == 60
        )
        got = []
        while True:
            message = await receive(ws)
            if message["type"] == "REPLAY_STATE":
                assert message["state"] == "ended"
                break
            assert message["type"] == "LIVE_DATA" and message["replay"] is True
            got.append((message["ts"], message["payload"]))
    assert got == want


async def test_pause_seek_and_play(demo: Server) -> None:
    """Paused, nothing comes; a seek jumps to the asked time; play goes on from there."""
    chassis = demo.machines[1]
    end = int(time.time() * 1000) - 10_000
    start = end - 100_000
    async with websockets.connect(
        replay_url(demo, chassis, start, end, 2), additional_headers=demo.headers
    ) as ws:
        await ws.send(orjson.dumps({"type": "INIT_FIELD_LIST", "payload": FIELDS}).decode())
        first = await receive(ws)
        assert first.get("state") == "playing", first
        assert (await receive(ws))["type"] == "LIVE_DATA"
        await ws.send(orjson.dumps({"type": "REPLAY_CONTROL", "action": "pause"}).decode())
        message = await receive(ws)
        while message["type"] == "LIVE_DATA":  # one may have been on its way
            message = await receive(ws)
        assert message["state"] == "paused"
        with pytest.raises(TimeoutError):
            await receive(ws, 1.5)
        target = start + 80_000
        await ws.send(
            orjson.dumps({"type": "REPLAY_CONTROL", "action": "seek", "ts": target}).decode()
        )
        state = await receive(ws)
        assert state["state"] == "paused" and state["ts"] == target
        await ws.send(orjson.dumps({"type": "REPLAY_CONTROL", "action": "play"}).decode())
        playing = await receive(ws)
        assert playing.get("state") == "playing", playing
        data = await receive(ws)
        assert data["type"] == "LIVE_DATA" and target <= data["ts"] <= target + 1000
        await ws.send(
            orjson.dumps({"type": "REPLAY_CONTROL", "action": "seek", "ts": end + 1}).decode()
        )
        error = await receive(ws)
        assert error["type"] == "ERROR" and "within the replayed range" in error["message"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("msgType=vehicle_can&speed=5000", 4400),
        ("msgType=nope", 4404),
        ("msgType=vehicle_can&from=9&to=1", 4400),
    ],
)
async def test_bad_replay_request_closes_with_a_reason(demo: Server, query: str, code: int) -> None:
    """A bad speed, message type or range is an ERROR message and a close code."""
    url = f"{demo.ws_url}/api/resources/demo/_common/datasets/{demo.machines[0]}/replay?{query}"
    async with websockets.connect(url, additional_headers=demo.headers) as ws:
        assert (await receive(ws))["type"] == "ERROR"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await receive(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code


def test_replay_clock_follows_speed_pause_and_seek() -> None:
    """The clock runs at speed x wall time, stands still when paused, jumps on seek."""
    clock = ReplayClock(1_000_000, 10, now=100.0)
    assert clock.position(101.0) == 1_010_000
    assert clock.wait(1_020_000, 101.0) == pytest.approx(1.0)
    clock.pause(101.0)
    assert clock.position(500.0) == 1_010_000 and clock.wait(1_020_000, 500.0) is None
    clock.play(500.0)
    clock.set_speed(60, 501.0)
    assert clock.position(502.0) == 1_080_000
    clock.seek(2_000_000, 502.0)
    assert clock.position(502.5) == 2_030_000
