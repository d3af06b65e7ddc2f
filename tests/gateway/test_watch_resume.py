"""An SSE watch stream resumed on another gateway process, from the pub/sub's history.

Two gateway apps share one Redis pub/sub and one data directory: ``a`` runs every role
(ingest publishes there), ``b`` only the gateway.  A client that read a stream on ``a``
reconnects to ``b`` with its ``Last-Event-ID`` and gets exactly what it missed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

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


__all__ = ["Path"]
