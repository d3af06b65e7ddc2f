"""SSE watch streams and Socket.IO subscriptions resumed on another gateway process,
from the pub/sub's history.

Two gateway apps share one Redis pub/sub and one data directory: ``a`` runs every role
(ingest publishes there), ``b`` only the gateway.  A client that read on ``a``
reconnects to ``b`` (SSE: with its ``Last-Event-ID``; Socket.IO: ``subscribe-device``
with ``since``) and gets exactly what it missed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import socketio

from tests.gateway.test_watch import LocalServer, Stream, new_table, now_ms, write
from tests.servers.redis import start_redis


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalServer, LocalServer]]:
    """Gateway ``a`` (every role) and gateway ``b`` (gateway only) on one Redis pub/sub."""
    base = tmp_path_factory.mktemp("watch-resume")
    redis = start_redis(base / "redis")
    data = base / "data"
    data.mkdir()
    pubsub = f"{redis.url}?prefix=watchresume"
    a = LocalServer(data, {"pubsub": pubsub})
    b = LocalServer(data, {"pubsub": pubsub, "roles": "gateway"}, tokens=a.tokens)
    try:
        yield a, b
    finally:
        b.stop()
        a.stop()
        redis.stop()


def test_a_stream_resumes_on_another_gateway(gateways: tuple[LocalServer, LocalServer]) -> None:
    """Last-Event-ID from gateway a, given to gateway b: the values missed in between, in
    order, then live values; none twice."""
    a, b = gateways
    table = new_table()
    params = {"tag": "v", "period": "1s", "timeformat": "ms"}
    write(a, table, [["v", now_ms(), 1]], timeformat="ms")
    first = Stream(a, table, params)
    try:
        assert first.next_data()["VALUE"] == 1  # the current value
        write(a, table, [["v", now_ms(), 2]], timeformat="ms")
        assert first.next_data()["VALUE"] == 2  # live: its id names the channel's position
        last_id = first.last_id
    finally:
        first.close()
    write(a, table, [["v", now_ms(), 3]], timeformat="ms")
    write(a, table, [["v", now_ms() + 1500, 4]], timeformat="ms")  # a later period
    resumed = Stream(b, table, params, {"Last-Event-ID": last_id or ""})
    try:
        assert [e["VALUE"] for e in resumed.take(2)] == [3, 4]
        write(a, table, [["v", now_ms() + 3000, 5]], timeformat="ms")
        assert resumed.next_data()["VALUE"] == 5
    finally:
        resumed.close()


def test_a_stream_from_another_gateway_without_history_gets_a_gap(
    gateways: tuple[LocalServer, LocalServer],
) -> None:
    """A position the pub/sub's history no longer holds (another epoch) is a gap, then live."""
    a, b = gateways
    table = new_table()
    write(a, table, [["v", now_ms(), 1]], timeformat="ms")
    stream = Stream(b, table, {"tag": "v"}, {"Last-Event-ID": "feed-1-2-0-0ld~5~6"})
    try:
        gap = stream.next()
        assert gap.event == "gap" and json.loads(gap.data)["lastEventId"] == "feed-1-2-0-0ld~5~6"
        assert stream.next_data()["VALUE"] == 1  # then the current value
    finally:
        stream.close()


async def _readings(got: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while len([g for g in got if "sensorType" in g]) < count:
        assert time.monotonic() < deadline, f"fewer than {count} readings: {got}"
        await asyncio.sleep(0.05)
    return [g for g in got if "sensorType" in g]


async def test_a_socketio_subscription_resumes_on_another_gateway(
    gateways: tuple[LocalServer, LocalServer],
) -> None:
    """subscribe-device with since (the position of the last reading, which a since-client
    gets with each reading): on gateway b, the readings missed since, then live ones."""
    a, b = gateways
    fields = ["cpu_usage"]

    def post(value: int) -> None:
        write(a, "client_raw_data", [["AC-1.cpu_usage", now_ms(), value]], timeformat="ms")

    first = socketio.AsyncClient(reconnection=False)
    got_a: list[dict[str, Any]] = []
    first.on("device-update", got_a.append)
    await first.connect(a.url, auth={"token": a.tokens["acme"]}, wait_timeout=10)
    try:
        request = {"deviceId": "AC-1", "fields": fields, "since": {}}
        ack = await first.call("subscribe-device", request, timeout=5)
        assert ack["ok"] is True and ack["recovered"] is True, ack
        await asyncio.to_thread(post, 1)
        (last,) = [r for r in await _readings(got_a, 1) if r["value"] == 1]
        assert last["msgType"] == "client_raw_data" and last["seq"] >= 1 and last["epoch"]
    finally:
        await first.disconnect()
    await asyncio.to_thread(post, 2)
    await asyncio.to_thread(post, 3)
    second = socketio.AsyncClient(reconnection=False)
    got_b: list[dict[str, Any]] = []
    second.on("device-update", got_b.append)
    await second.connect(b.url, auth={"token": a.tokens["acme"]}, wait_timeout=10)
    try:
        since = {"client_raw_data": {"epoch": last["epoch"], "seq": last["seq"]}}
        request = {"deviceId": "AC-1", "fields": fields, "since": since}
        ack = await second.call("subscribe-device", request, timeout=5)
        assert ack["ok"] is True and ack["recovered"] is True, ack
        assert [r["value"] for r in await _readings(got_b, 2)] == [2, 3]
        await asyncio.to_thread(post, 4)
        assert [r["value"] for r in await _readings(got_b, 3)] == [2, 3, 4]
        assert [r["seq"] for r in got_b if "sensorType" in r] == [
            last["seq"] + 1,
            last["seq"] + 2,
            last["seq"] + 3,
        ]
    finally:
        await second.disconnect()
