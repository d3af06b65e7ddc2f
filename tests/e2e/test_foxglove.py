"""The Foxglove WebSocket protocol from a client written from its specification."""

from __future__ import annotations

import asyncio
import struct
import time

import httpx
import orjson
import pytest
import websockets
from websockets.typing import Subprotocol

from tests.conftest import Server

FOXGLOVE = Subprotocol("foxglove.websocket.v1")


def url(demo: Server) -> str:
    return f"{demo.ws_url}/api/resources/demo/foxglove"


async def test_subscribed_channel_carries_the_live_values(demo: Server) -> None:
    """serverInfo, one advertised channel per machine and type; messages equal the live socket's."""
    chassis = demo.machines[0]
    async with (
        websockets.connect(
            url(demo), subprotocols=[FOXGLOVE], additional_headers=demo.headers
        ) as fox,
        websockets.connect(demo.live_url(chassis), additional_headers=demo.headers) as live,
    ):
        assert fox.subprotocol == FOXGLOVE
        info = orjson.loads(await fox.recv())
        assert info["op"] == "serverInfo" and info["name"] == "livedata"
        advertise = orjson.loads(await fox.recv())
        assert advertise["op"] == "advertise"
        topics = {c["topic"]: c for c in advertise["channels"]}
        assert {
            f"/{m}/{t}" for m in demo.machines for t in ("vehicle_can", "client_raw_data")
        } <= set(topics)
        channel = topics[f"/{chassis}/vehicle_can"]
        assert channel["encoding"] == "json" and channel["schemaEncoding"] == "jsonschema"
        schema = orjson.loads(channel["schema"])
        assert schema["properties"]["speed"] == {"type": "number", "description": "km/h"}

        await fox.send(
            orjson.dumps(
                {"op": "subscribe", "subscriptions": [{"id": 7, "channelId": channel["id"]}]}
            ).decode()
        )
        await live.send(
            orjson.dumps(
                {"type": "INIT_FIELD_LIST", "payload": list(schema["properties"])[1:]}
            ).decode()
        )
        from_fox: dict[int, dict] = {}
        from_live: dict[int, dict] = {}

        async def read_fox() -> None:
            while True:
                frame = await fox.recv()
                assert isinstance(frame, bytes)
                opcode, sub, received = struct.unpack_from("<BIQ", frame)
                assert (opcode, sub) == (1, 7) and received > 0
                body = orjson.loads(frame[13:])
                from_fox[body.pop("ts")] = body

        async def read_live() -> None:
            while True:
                message = orjson.loads(await live.recv())
                if message["type"] == "LIVE_DATA":
                    from_live[message["ts"]] = message["payload"]

        readers = [asyncio.create_task(read_fox()), asyncio.create_task(read_live())]
        try:
            for _ in range(100):
                common = set(from_fox) & set(from_live)
                if len(common) >= 3:
                    break
                await asyncio.sleep(0.1)
        finally:
            for task in readers:
                task.cancel()
        assert len(common) >= 3
        for ts in common:
            assert from_fox[ts] == from_live[ts]

        await fox.send(orjson.dumps({"op": "unsubscribe", "subscriptionIds": [7]}).decode())
        await fox.send(b"not json".decode())
        status = orjson.loads(await asyncio.wait_for(next_text(fox), 5))
        assert status["op"] == "status" and status["level"] == 2


async def next_text(ws: websockets.ClientConnection) -> str:
    """The next text frame (binary messages still in flight are skipped)."""
    while True:
        frame = await ws.recv()
        if isinstance(frame, str):
            return frame


async def test_without_the_subprotocol_the_connection_is_refused(demo: Server) -> None:
    """A client that does not offer foxglove.websocket.v1 is closed with 1002."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with websockets.connect(url(demo), additional_headers=demo.headers) as ws:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1002


async def test_bad_subscription_is_a_status_error(demo: Server) -> None:
    """A subscription to a channel that was not advertised gets a status error."""
    async with websockets.connect(
        url(demo), subprotocols=[FOXGLOVE], additional_headers=demo.headers
    ) as fox:
        await fox.recv()
        await fox.recv()
        await fox.send(
            orjson.dumps(
                {"op": "subscribe", "subscriptions": [{"id": 1, "channelId": 99999}]}
            ).decode()
        )
        status = orjson.loads(await fox.recv())
        assert status["level"] == 2 and "advertised channelId" in status["message"]


async def test_replay_mode_plays_the_stored_range_with_data_time(demo: Server) -> None:
    """With from/to/speed a subscription replays the stored range: data time stamps, stored values."""
    chassis = demo.machines[0]
    end = int(time.time() * 1000) - 20_000
    start = end - 30_000
    async with httpx.AsyncClient(headers=demo.headers) as http:
        response = await http.get(
            f"{demo.url}/api/resources/demo/_common/datasets/{chassis}/history",
            params={
                "msgType": "vehicle_can",
                "fields": "speed,engine_rpm",
                "from": start,
                "to": end,
            },
            headers=demo.headers,
        )
    body = response.json()
    stored = {ts: value for ts, value in body["series"]["engine_rpm"]}
    assert len(stored) >= 25
    replay = f"{url(demo)}?from={start}&to={end}&speed=100"
    async with websockets.connect(
        replay, subprotocols=[FOXGLOVE], additional_headers=demo.headers
    ) as fox:
        info = orjson.loads(await fox.recv())
        assert info["metadata"]["mode"] == "replay"
        topics = {c["topic"]: c for c in orjson.loads(await fox.recv())["channels"]}
        channel = topics[f"/{chassis}/vehicle_can"]
        await fox.send(
            orjson.dumps(
                {"op": "subscribe", "subscriptions": [{"id": 1, "channelId": channel["id"]}]}
            ).decode()
        )
        got = {}
        while True:
            frame = await asyncio.wait_for(fox.recv(), 10)
            if isinstance(frame, str):
                assert "ended" in orjson.loads(frame)["message"]
                break
            _, _, log_time = struct.unpack_from("<BIQ", frame)
            message = orjson.loads(frame[13:])
            assert log_time == message["ts"] * 1_000_000
            got[message["ts"]] = message["engine_rpm"]
    assert got == stored
