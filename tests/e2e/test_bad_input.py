"""Bad input from live clients and API callers: a clear error each, and everyone else keeps being served."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import Server
from tests.e2e.test_live import connect, init, next_live


async def error_of(ws: websockets.ClientConnection) -> dict:
    """The next ERROR message, skipping LIVE_DATA."""
    while True:
        message = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        if message["type"] == "ERROR":
            return message


RECOVERABLE = [
    ("not json {", "invalid_json"),
    ('{"type":"SUBSCRIBE","payload":[]}', "unknown_type"),
    ("[1, 2, 3]", "unknown_type"),
    ('{"type":"INIT_FIELD_LIST","payload":"speed"}', "invalid_field_list"),
    ('{"type":"INIT_FIELD_LIST","payload":["speed", 7]}', "invalid_field_list"),
    (
        orjson.dumps(
            {"type": "INIT_FIELD_LIST", "payload": [f"f{i}" for i in range(501)]}
        ).decode(),
        "too_many_fields",
    ),
    ('{"type":"INIT_FIELD_LIST","payload":["speed","no_such_field"]}', "unknown_fields"),
    ('{"type":"INIT_FIELD_LIST","payload":["speed"],"since":{"seq":"x"}}', "invalid_since"),
    ('{"type":"INIT_FIELD_LIST","payload":["speed"],"maxRate":1000}', "invalid_rate"),
    (
        '{"type":"INIT_FIELD_LIST","payload":["speed"],"maxRate":1,"aggregate":"p99"}',
        "invalid_rate",
    ),
]


@pytest.mark.parametrize(("text", "code"), RECOVERABLE)
async def test_recoverable_errors_keep_the_connection(demo: Server, text: str, code: str) -> None:
    """Each recoverable mistake gets its ERROR code and the connection keeps delivering."""
    async with connect(demo, demo.live_url(demo.machines[0])) as ws:
        await init(ws, ["speed"])
        await next_live(ws)
        await ws.send(text)
        error = await error_of(ws)
        assert error["code"] == code
        assert error["message"]
        message = await next_live(ws)
        assert "speed" in message["payload"]


FATAL = [
    ("x" * (64 * 1024 + 1), "message_too_big", 1009),
    (b"\x00\x01binary", "unsupported_data", 1003),
]


@pytest.mark.parametrize(("data", "code", "close_code"), FATAL)
async def test_fatal_errors_close_with_a_fitting_code(
    demo: Server, data: str | bytes, code: str, close_code: int
) -> None:
    """Oversized and binary messages get an ERROR, then a close with the documented code."""
    async with connect(demo, demo.live_url(demo.machines[0])) as healthy:
        await init(healthy, ["speed"])
        async with connect(demo, demo.live_url(demo.machines[0])) as ws:
            await ws.send(data)
            error = await error_of(ws)
            assert error["code"] == code
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == close_code
        await next_live(healthy)


@pytest.mark.parametrize(
    "path",
    [
        "/api/resources/demo/_common/datasets/NO-SUCH/live?msgType=vehicle_can",
        "/api/resources/demo/_common/datasets/{m}/live?msgType=engine_oil",
        "/api/resources/demo/_common/datasets/{m}/live",
    ],
)
async def test_unknown_machine_or_type_is_refused(demo: Server, path: str) -> None:
    """An unknown machine or message type gets not_found and close 4404."""
    async with connect(demo, demo.ws_url + path.format(m=demo.machines[0])) as ws:
        error = await error_of(ws)
        assert error["code"] == "not_found"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


async def test_other_organisation_is_refused(demo: Server) -> None:
    """An organisation that is not the caller's (unknown or not) is refused before any data:
    close 1008 with the reason "not found"."""
    path = f"/api/resources/other-org/_common/datasets/{demo.machines[0]}/live?msgType=vehicle_can"
    async with connect(demo, demo.ws_url + path) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "not found" in closed.value.rcvd.reason


async def test_flooding_client_is_closed_and_others_unaffected(demo: Server) -> None:
    """A client sending more than 20 messages in 10 s is closed with 1008; others keep receiving."""
    async with connect(demo, demo.live_url(demo.machines[1])) as healthy:
        await init(healthy, ["engine_rpm"])
        async with connect(demo, demo.live_url(demo.machines[1])) as ws:
            for _ in range(25):
                await init(ws, ["speed"])
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        await next_live(healthy)


@pytest.mark.parametrize(
    ("query", "status", "needle"),
    [
        ({"msgType": "nope"}, 400, "msgType"),
        ({}, 400, "msgType"),
        ({"msgType": "vehicle_can", "from": "yesterday"}, 400, "from"),
        ({"msgType": "vehicle_can", "from": 2000, "to": 1000}, 400, "after"),
        ({"msgType": "vehicle_can", "fields": ",,"}, 400, "fields"),
        ({"msgType": "vehicle_can", "from": 0, "to": 30 * 86_400_000}, 400, "7 days"),
    ],
)
async def test_history_parameters_are_checked(
    demo: Server, query: dict, status: int, needle: str
) -> None:
    """Wrong history parameters get 4xx with a message naming the problem."""
    async with httpx.AsyncClient(base_url=demo.url, headers=demo.headers) as http:
        response = await http.get(
            f"/api/resources/demo/_common/datasets/{demo.machines[0]}/history", params=query
        )
    assert response.status_code == status
    assert needle in response.json()["error"]["message"]


async def test_history_of_unknown_machine_is_404(demo: Server) -> None:
    """History of a machine that is not in the organisation is 404."""
    async with httpx.AsyncClient(base_url=demo.url, headers=demo.headers) as http:
        response = await http.get(
            "/api/resources/demo/_common/datasets/NO-SUCH/history",
            params={"msgType": "vehicle_can"},
        )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
