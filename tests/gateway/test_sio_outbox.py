"""Socket.IO long-polling clients on the fan-out core's outbox, over real HTTP.

A long-polling client's events wait in Engine.IO's queue until its next poll; while
more than ``QUEUE_HIGH`` bytes wait there its outbox counts as paused: it keeps at most
``client_queue`` events (oldest dropped, ``"missed": n`` on the next one) and gives the
client up after ``client_stall_seconds`` without a poll.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import socketio

from livedata.bus.base import LiveMessage
from livedata.gateway.sio import QUEUE_HIGH, SIO_QUEUED, SIO_WEBSOCKET
from livedata.model import live_channel
from tests.gateway.test_watch import LocalServer

CHANNEL = live_channel("acme", "AC-1", "client_raw_data")
BIG = "x" * 2_000
"""A value that makes one sensor-data event about 2 KB."""


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A gateway sending every reading as sensor-data, 4 events per slow client, 2 s stall."""
    server = LocalServer(
        tmp_path_factory.mktemp("sio-outbox"), sensor_data="on", client_queue=4, stall_seconds=2
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A gateway served by livedata's server layer, as ``livedata serve`` does."""
    server = LocalServer(tmp_path_factory.mktemp("sio-limited"), limited=True)
    yield server
    server.stop()


def publish(server: LocalServer, first_seq: int, count: int) -> None:
    """``count`` readings of AC-1 (``n`` = their seq, ``big`` = 2 KB) on its live channel."""

    async def go() -> None:
        for seq in range(first_seq, first_seq + count):
            values = {"n": seq, "big": BIG}
            await server.rt.pubsub.publish(CHANNEL, LiveMessage(seq, seq, "e1", values))

    server.run(go)


class Poller:
    """An Engine.IO v4 long-polling client by hand: it polls only when told to."""

    def __init__(self, server: LocalServer) -> None:
        self.url = f"{server.url}/socket.io/"
        self.http = requests.Session()
        opened = self.http.get(self.url, params={"EIO": "4", "transport": "polling"}, timeout=5)
        self.sid = json.loads(opened.text[1:])["sid"]
        self.post("40" + json.dumps({"token": server.tokens["acme"]}))
        assert self.poll()[0].startswith("40"), "connected"

    def post(self, packet: str) -> None:
        params = {"EIO": "4", "transport": "polling", "sid": self.sid}
        answer = self.http.post(self.url, params=params, data=packet.encode(), timeout=5)
        assert answer.text == "OK", answer.text

    def poll(self) -> list[str]:
        """One GET: the Engine.IO packets that were waiting."""
        params = {"EIO": "4", "transport": "polling", "sid": self.sid}
        return self.http.get(self.url, params=params, timeout=60).text.split("\x1e")

    def events(self, name: str) -> list[Any]:
        """The data of every ``name`` event of one poll."""
        prefix = f'42["{name}",'
        return [json.loads(p[2:])[1] for p in self.poll() if p.startswith(prefix)]


async def test_a_polling_only_client_gets_its_events_through_its_outbox(
    local: LocalServer,
) -> None:
    """A client that never upgrades gets device-update and sensor-data from its outbox."""
    client = socketio.AsyncClient(reconnection=False)
    got: list[tuple[str, Any]] = []
    client.on("device-update", lambda data: got.append(("device-update", data)))
    client.on("sensor-data", lambda data: got.append(("sensor-data", data)))
    await client.connect(
        local.url, auth={"token": local.tokens["acme"]}, transports=["polling"], wait_timeout=10
    )
    try:
        gateway = local.gateway.socket
        assert client.get_sid() is not None
        assert [o.framing for o in gateway.outboxes.values()] == [SIO_QUEUED]
        ack = await client.call("subscribe-device", {"deviceId": "AC-1", "fields": ["n"]})
        assert ack["ok"] is True, ack
        await asyncio.to_thread(publish, local, 1, 1)
        deadline = time.monotonic() + 10
        while len([g for g in got if "sensorType" in g[1] or g[0] == "sensor-data"]) < 2:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
    finally:
        await client.disconnect()
    reading = [d for e, d in got if e == "device-update" and "sensorType" in d]
    assert reading == [{"deviceId": "AC-1", "sensorType": "n", "value": 1, "timestamp": 1}]
    assert [d["data"]["n"] for e, d in got if e == "sensor-data"] == [1]


def test_a_client_that_stops_polling_is_bounded_told_what_it_missed_then_given_up(
    local: LocalServer,
) -> None:
    """Beyond QUEUE_HIGH waiting bytes it keeps the newest 4 events, the first of them
    carrying missed; then, without polls for the stall time, its session is closed."""
    gateway = local.gateway.socket
    poller = Poller(local)
    (outbox,) = gateway.outboxes.values()
    total = QUEUE_HIGH // 2_000 + 10  # pauses the outbox, then overflows its queue
    publish(local, 1, total)
    first = [d["data"]["n"] for d in poller.events("sensor-data")]
    written = len(first)
    assert first == list(range(1, written + 1)) and written < total - 4
    after = [json.loads(p[2:]) for p in poller.poll() if p.startswith("42[")]
    assert after[0][1]["missed"] >= total - written - 4
    assert all("missed" not in data for _, data in after[1:])
    newest = [data["data"]["n"] for name, data in after if name == "sensor-data"]
    assert newest == list(range(total - len(newest) + 1, total + 1)) and newest
    publish(local, 1_000, total)  # paused again, and no poll comes
    deadline = time.monotonic() + 30
    while outbox in list(gateway.outboxes.values()):
        assert time.monotonic() < deadline, "the client was not given up"
        time.sleep(0.1)
    assert outbox.closed


async def test_a_websocket_clients_keepalive_runs_on_the_servers_shared_sweeps(
    limited: LocalServer,
) -> None:
    """A Socket.IO WebSocket's keep-alive ping is a deadline in the server's shared ping
    sweep, not a timer of its own; a ping goes out with its pong deadline in the shared
    pong sweep, and the client's pong puts it back in the ping sweep."""
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(
        limited.url,
        auth={"token": limited.tokens["acme"]},
        transports=["websocket"],
        wait_timeout=10,
    )
    try:
        (outbox,) = limited.gateway.socket.outboxes.values()
        assert outbox.framing is SIO_WEBSOCKET  # written straight to the transport
        ws = outbox.sink.get_protocol()  # type: ignore[attr-defined]
        pings, pongs = ws.ws_pings, ws.ws_pongs
        assert ws in pings and ws not in pongs and ws.ping_timer is None

        async def ping() -> bool:
            ws.send_keepalive_ping()
            return ws in pongs and ws not in pings

        assert limited.loop is not None
        assert asyncio.run_coroutine_threadsafe(ping(), limited.loop).result(5)
        deadline = time.monotonic() + 10
        while ws in pongs or ws not in pings:
            assert time.monotonic() < deadline, "no pong"
            await asyncio.sleep(0.05)
        assert ws.pending_ping_payload is None and client.connected
    finally:
        await client.disconnect()
