"""End to end over real sockets: the demo server, the `websockets` client, the reference protocol."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import orjson
import pytest
import websockets

from tests.conftest import Server

FIELDS = ["speed", "engine_rpm", "brake_status"]


def connect(demo: Server, url: str) -> websockets.connect:
    """A live connection to ``url`` authenticated as the demo organisation's admin."""
    return websockets.connect(url, additional_headers=demo.headers)


async def next_live(ws: websockets.ClientConnection, timeout: float = 3.0) -> dict:
    """The next LIVE_DATA message (skipping nothing else: any other type fails the test)."""
    message = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert message["type"] == "LIVE_DATA", message
    return message


async def init(ws: websockets.ClientConnection, fields: list[str]) -> None:
    await ws.send(orjson.dumps({"type": "INIT_FIELD_LIST", "payload": fields}).decode())


async def test_live_data_has_exactly_the_requested_fields_at_1hz(demo: Server) -> None:
    """A reference client gets LIVE_DATA with exactly its fields within 3 s, once a second."""
    async with connect(demo, demo.live_url(demo.machines[0])) as ws:
        await init(ws, FIELDS)
        started = time.monotonic()
        first = await next_live(ws, 3.0)
        assert time.monotonic() - started < 3.0
        messages = [first] + [await next_live(ws) for _ in range(4)]
    for message in messages:
        assert set(message["payload"]) == set(FIELDS)
        assert all(isinstance(v, int | float) for v in message["payload"].values())
    stamps = [m["ts"] for m in messages]
    assert [b - a for a, b in itertools.pairwise(stamps)] == [1000] * 4
    seqs = [m["seq"] for m in messages]
    assert seqs == list(range(seqs[0], seqs[0] + 5))
    assert abs(messages[-1]["ts"] / 1000 - time.time()) < 3


async def test_two_clients_of_one_machine_get_their_own_fields(demo: Server) -> None:
    """Two clients of one machine with different field lists each get only their fields."""
    url = demo.live_url(demo.machines[0])
    async with connect(demo, url) as a, connect(demo, url) as b:
        await init(a, ["speed"])
        await init(b, ["coolant_temp", "fuel_level"])
        got_a, got_b = await next_live(a), await next_live(b)
        assert set(got_a["payload"]) == {"speed"}
        assert set(got_b["payload"]) == {"coolant_temp", "fuel_level"}


async def test_field_list_can_be_replaced(demo: Server) -> None:
    """Sending INIT_FIELD_LIST again replaces the fields of the following messages."""
    async with connect(demo, demo.live_url(demo.machines[1])) as ws:
        await init(ws, ["speed"])
        await next_live(ws)
        await init(ws, ["gear", "fuel_level"])
        for _ in range(3):
            message = await next_live(ws)
            if set(message["payload"]) == {"gear", "fuel_level"}:
                return
        pytest.fail("the new field list never took effect")


async def test_client_of_another_machine_gets_only_its_machine(demo: Server) -> None:
    """A client of machine B receives B's values (as stored), never machine A's."""
    a, b = demo.machines[0], demo.machines[1]
    async with connect(demo, demo.live_url(b)) as ws:
        await init(ws, ["engine_rpm", "coolant_temp", "fuel_level"])
        received = [await next_live(ws) for _ in range(3)]
    await asyncio.sleep(1.5)
    async with httpx.AsyncClient(base_url=demo.url, headers=demo.headers) as http:
        fields = "engine_rpm,coolant_temp,fuel_level"
        start, end = received[0]["ts"], received[-1]["ts"]
        query = f"msgType=vehicle_can&fields={fields}&from={start}&to={end}"
        hist_b = (
            await http.get(f"/api/resources/demo/_common/datasets/{b}/history?{query}")
        ).json()
        hist_a = (
            await http.get(f"/api/resources/demo/_common/datasets/{a}/history?{query}")
        ).json()
    for message in received:
        for name, value in message["payload"].items():
            at_b = dict(map(tuple, hist_b["series"][name]))
            assert at_b[message["ts"]] == value
    differs = 0
    for message in received:
        at_a = {name: dict(map(tuple, pts)) for name, pts in hist_a["series"].items()}
        differs += any(at_a[n].get(message["ts"]) != v for n, v in message["payload"].items())
    assert differs == len(received)


async def test_history_has_the_last_two_minutes_without_holes(demo: Server) -> None:
    """The default history is the last 120 s, one point per second, no holes."""
    async with httpx.AsyncClient(base_url=demo.url, headers=demo.headers) as http:
        response = await http.get(
            f"/api/resources/demo/_common/datasets/{demo.machines[2]}/history",
            params={"msgType": "vehicle_can", "fields": "speed,engine_rpm"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["to"] - body["from"] == 120_000
    for name in ("speed", "engine_rpm"):
        stamps = [ts for ts, _ in body["series"][name]]
        assert len(stamps) >= 118
        assert all(b - a == 1000 for a, b in itertools.pairwise(stamps))
        assert stamps[0] - body["from"] <= 2000
        assert body["to"] - stamps[-1] <= 3000


async def test_history_meets_live_without_gap(demo: Server) -> None:
    """The first live point follows the newest history point by one second (no gap, no jump)."""
    chassis = demo.machines[0]
    async with connect(demo, demo.live_url(chassis)) as ws:
        await init(ws, ["engine_rpm"])
        async with httpx.AsyncClient(base_url=demo.url, headers=demo.headers) as http:
            body = (
                await http.get(
                    f"/api/resources/demo/_common/datasets/{chassis}/history",
                    params={"msgType": "vehicle_can", "fields": "engine_rpm"},
                )
            ).json()
        last = body["series"]["engine_rpm"][-1][0]
        live = [await next_live(ws) for _ in range(2)]
    stamps = sorted({last, *(m["ts"] for m in live)})
    assert all(b - a == 1000 for a, b in itertools.pairwise(stamps))


async def test_rate_control_sums_up_intervals(demo: Server) -> None:
    """maxRate 0.5 with minmax sends one message per 2 s holding min and max of the interval."""
    async with connect(demo, demo.live_url(demo.machines[2])) as ws:
        await ws.send(
            orjson.dumps(
                {
                    "type": "INIT_FIELD_LIST",
                    "payload": ["engine_rpm"],
                    "maxRate": 0.5,
                    "aggregate": "minmax",
                }
            ).decode()
        )
        first = await next_live(ws, 5)
        second = await next_live(ws, 5)
    for message in (first, second):
        rpm = message["payload"]["engine_rpm"]
        assert set(rpm) == {"min", "max"} and rpm["min"] <= rpm["max"]
    assert second["count"] == 2 and second["seq"] - first["seq"] == 2
