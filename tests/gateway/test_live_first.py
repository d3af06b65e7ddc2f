"""Live goes out before storage: a client that joins with history still gets every record.

A record is published live (on the pub/sub, into its history) and never reaches the store
here, as when the store write lands after the client read its history.  Then a client
joins with history: a live WebSocket told ``recovered: false``, a new SSE watch stream
(its first values are read from the store) and a Socket.IO subscription whose ``since``
cannot be recovered.  Each gets the record from the pub/sub's history.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import socketio
import websockets

from livedata.bus.base import LiveMessage
from livedata.model import live_channel
from tests.gateway.test_live_server import CHANNEL, Served
from tests.gateway.test_live_server import served as served  # a fixture
from tests.gateway.test_watch import LocalServer, Stream

MACHINE_CHANNEL = live_channel("acme", "AC-1", "client_raw_data")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A gateway (every role, memory pub/sub) whose store never gets the published records."""
    server = LocalServer(tmp_path_factory.mktemp("live-first"))
    yield server
    server.stop()


def publish_only(server: LocalServer, message: LiveMessage) -> None:
    """Publish ``message`` on AC-1's client_raw_data channel, bypassing ingest and the store."""
    server.run(lambda: server.rt.pubsub.publish(MACHINE_CHANNEL, message))


async def test_websocket_not_recovered_gets_what_went_live_before_it_joined(
    served: Served,
) -> None:
    """recovered: false is followed by the retained messages, oldest first, then live; none twice."""
    url, publisher, _fanout, _server = served
    for seq in (1, 2):
        await publisher.publish(CHANNEL, LiveMessage(1_000 * seq, seq, "e1", {"speed": seq}))
    async with websockets.connect(f"{url}/m1/live?msgType=vehicle_can") as ws:
        since = {"epoch": "gone", "seq": 7}
        await ws.send(
            orjson.dumps({"type": "INIT_FIELD_LIST", "payload": ["speed"], "since": since}).decode()
        )
        recovery = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert recovery == {"type": "RECOVERY", "recovered": False, "epoch": "gone", "messages": []}
        await publisher.publish(CHANNEL, LiveMessage(3_000, 3, "e1", {"speed": 3}))
        frames = [orjson.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(3)]
    assert [(f["type"], f["seq"], f["payload"]) for f in frames] == [
        ("LIVE_DATA", seq, {"speed": seq}) for seq in (1, 2, 3)
    ]


def test_a_new_sse_stream_starts_with_a_value_not_stored_yet(local: LocalServer) -> None:
    """A tag's value that went out live before the stream opened, not in the store, is its first."""
    now = int(time.time() * 1000)
    publish_only(local, LiveMessage(now, 1, "e-sse", {"cpu_usage": 41.5}))
    stream = Stream(local, "client_raw_data", {"tag": "AC-1.cpu_usage", "timeformat": "ms"})
    try:
        first = stream.next_data()
    finally:
        stream.close()
    assert first == {"NAME": "AC-1.cpu_usage", "TIME": now, "VALUE": 41.5}


async def test_socketio_not_recovered_gets_what_went_live_before_it_joined(
    local: LocalServer,
) -> None:
    """subscribe-device with a since that cannot be recovered: the readings the history holds."""
    now = int(time.time() * 1000)
    await asyncio.to_thread(publish_only, local, LiveMessage(now, 5, "e-sio", {"cpu_usage": 7.25}))
    client = socketio.AsyncClient(reconnection=False)
    got: list[dict[str, Any]] = []
    client.on("device-update", got.append)
    await client.connect(local.url, auth={"token": local.tokens["acme"]}, wait_timeout=10)
    try:
        since = {"client_raw_data": {"epoch": "gone", "seq": 1}}
        request = {"deviceId": "AC-1", "fields": ["cpu_usage"], "since": since}
        ack = await client.call("subscribe-device", request, timeout=5)
        assert ack["ok"] is True and ack["recovered"] is False, ack
        for _ in range(500):
            if any("sensorType" in g for g in got):
                break
            await asyncio.sleep(0.02)
    finally:
        await client.disconnect()
    readings = [g for g in got if "sensorType" in g and g["epoch"] == "e-sio"]
    assert [(r["value"], r["timestamp"], r["seq"]) for r in readings] == [(7.25, now, 5)]
