"""Recovery after a reconnect over real sockets: exactly the missed messages, then live.

The drop tests run against two demo servers of their own, a 1 Hz and a 10 Hz
fleet, whose live channels keep 66 s of history (``--live-history-seconds 66``;
the default is 180 s): a client cut off for 5 s or 60 s recovers exactly, one
cut off for 74 s is beyond the history and is told ``recovered: false``.  The
same boundary at the default history (a 5-minute drop) is covered without
waiting, with a synthetic clock, in ``tests/gateway/test_fanout.py``.  All the
drops run at once, so the module takes about as long as the longest drop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import websockets

from tests.conftest import Server, start_demo, stop
from tests.e2e.test_live import init, next_live

HISTORY_S = 66
DROPS_S = (5, 60, 74)


def since_frame(fields: list[str], last: dict[str, Any]) -> str:
    since = {"epoch": last["epoch"], "seq": last["seq"]}
    return orjson.dumps({"type": "INIT_FIELD_LIST", "payload": fields, "since": since}).decode()


async def test_reconnect_within_the_short_history_recovers_exactly(demo: Server) -> None:
    """A client away for 3 s gets a RECOVERY with every missed seq once, then live continues."""
    url = demo.live_url(demo.machines[0])
    async with websockets.connect(url, additional_headers=demo.headers) as ws:
        await init(ws, ["speed"])
        last = await next_live(ws)
    await asyncio.sleep(3.2)
    async with websockets.connect(url, additional_headers=demo.headers) as ws:
        await ws.send(since_frame(["speed"], last))
        recovery = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        live = [await next_live(ws) for _ in range(2)]
    assert recovery["type"] == "RECOVERY" and recovery["recovered"] is True
    seqs = [m["seq"] for m in recovery["messages"]] + [m["seq"] for m in live]
    assert len(recovery["messages"]) >= 3
    assert seqs == list(range(last["seq"] + 1, last["seq"] + 1 + len(seqs)))
    assert all(set(m["payload"]) == {"speed"} for m in recovery["messages"])


async def test_reconnect_with_an_unknown_epoch_is_not_recovered(demo: Server) -> None:
    """A client whose epoch the server no longer has gets recovered: false, then live."""
    url = demo.live_url(demo.machines[1])
    async with websockets.connect(url, additional_headers=demo.headers) as ws:
        await ws.send(since_frame(["gear"], {"epoch": "x", "seq": 1}))
        recovery = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert recovery == {"type": "RECOVERY", "recovered": False, "epoch": "x", "messages": []}
        await next_live(ws)


# -- network drops --------------------------------------------------------------------------


class Relay:
    """A TCP relay in front of a server whose connections a test can cut like a network failure.

    ``cut()`` aborts the client's side (the client sees its connection die, no
    close frame) and leaves the server's side open and unread, as behind a dead
    network path: the server finds out only by its own pings.
    """

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.pipes: list[asyncio.Task[None]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Relay:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links.append((writer, up_writer))
        self.pipes += [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    def url(self, server: Server, chassis: str) -> str:
        path = urlsplit(server.live_url(chassis))
        return f"ws://127.0.0.1:{self.port}{path.path}?{path.query}"

    def cut(self) -> None:
        for pipe in self.pipes:
            pipe.cancel()
        for client_side, _ in self.links:
            client_side.transport.abort()

    async def close(self) -> None:
        self.cut()
        for _, server_side in self.links:
            server_side.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class Outcome:
    rate: int
    drop: int
    last: dict[str, Any]
    recovery: dict[str, Any]
    live: list[dict[str, Any]]


async def drop_and_reconnect(server: Server, rate: int, chassis: str, drop: int) -> Outcome:
    """Watch ``speed``, lose the connection for ``drop`` s, reconnect with since."""
    relay = await Relay(server.url).start()
    try:
        ws = await websockets.connect(relay.url(server, chassis), additional_headers=server.headers)
        await init(ws, ["speed"])
        for _ in range(3):
            last = await next_live(ws, 5)
        relay.cut()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 2)
        await asyncio.sleep(drop)
        url = server.live_url(chassis)
        async with websockets.connect(url, additional_headers=server.headers) as ws:
            await ws.send(since_frame(["speed"], last))
            recovery = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            live = [await next_live(ws, 5) for _ in range(rate * 2)]
    finally:
        await relay.close()
    return Outcome(rate, drop, last, recovery, live)


@pytest.fixture(scope="module")
def fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Server]]:
    """Two demo servers of their own: a 1 Hz and a 10 Hz fleet, 66 s of live history each."""
    args = ("--machines", "2", "--live-history-seconds", str(HISTORY_S))
    with ThreadPoolExecutor(2) as pool:
        started = {
            rate: pool.submit(
                start_demo,
                tmp_path_factory.mktemp(f"recovery-{rate}hz"),
                *args,
                "--period",
                str(1 / rate),
            )
            for rate in (1, 10)
        }
        servers = {rate: future.result() for rate, future in started.items()}
    yield servers
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(stop, servers.values()))


def stored_between(server: Server, chassis: str, after: int, before: int) -> list[int]:
    """Timestamps of the stored ``speed`` points strictly between two ts."""
    path = f"/api/resources/demo/_common/datasets/{chassis}/history"
    query = {"msgType": "vehicle_can", "fields": "speed", "from": after + 1, "to": before - 1}
    response = httpx.get(server.url + path, params=query, headers=server.headers, timeout=10)
    response.raise_for_status()
    return [p[0] for p in response.json()["series"].get("speed", [])]


async def test_drops_of_5_and_60_s_recover_exactly_and_longer_ones_report_it(
    fleets: dict[int, Server],
) -> None:
    """At 1 and 10 Hz, drops of 5 s and 60 s recover every seq once; 74 s (> history) does not."""
    jobs = [
        drop_and_reconnect(server, rate, server.machines[i % 2], drop)
        for rate, server in fleets.items()
        for i, drop in enumerate(DROPS_S)
    ]
    outcomes = await asyncio.gather(*jobs)
    for o in outcomes:
        what = f"{o.rate} Hz, {o.drop} s"
        assert o.recovery["type"] == "RECOVERY", what
        first_live = o.live[0]["seq"]
        if o.drop < HISTORY_S:
            assert o.recovery["recovered"] is True, what
            missed = o.recovery["messages"]
            seqs = [m["seq"] for m in missed] + [m["seq"] for m in o.live]
            assert seqs == list(range(o.last["seq"] + 1, o.last["seq"] + 1 + len(seqs))), what
            assert len(missed) >= o.drop * o.rate * 0.9, (what, len(missed))
            stamps = [m["ts"] for m in missed]
            assert stamps == sorted(set(stamps)), what
            assert all(set(m["payload"]) == {"speed"} for m in missed), what
        else:
            assert o.recovery["recovered"] is False and o.recovery["messages"] == [], what
            # then what the live history still holds (live goes before storage), then live
            assert o.last["seq"] + 1 < first_live, what
            # what the client must fetch instead is all in the history API
            server = fleets[o.rate]
            chassis = server.machines[DROPS_S.index(o.drop) % 2]
            stored = stored_between(server, chassis, o.last["ts"], o.live[0]["ts"])
            assert len(stored) == first_live - o.last["seq"] - 1, what
        live = [m["seq"] for m in o.live]
        assert live == list(range(first_live, first_live + len(live))), what
