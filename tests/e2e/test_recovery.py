"""Recovery after a reconnect over real sockets: exactly the missed messages, then live."""

from __future__ import annotations

import asyncio

import orjson
import websockets

from tests.conftest import Server
from tests.e2e.test_live import init, next_live


async def test_reconnect_within_the_short_history_recovers_exactly(demo: Server) -> None:
    """A client away for 3 s gets a RECOVERY with every missed seq once, then live continues."""
    url = demo.live_url(demo.machines[0])
    async with websockets.connect(url) as ws:
        await init(ws, ["speed"])
        last = await next_live(ws)
    await asyncio.sleep(3.2)
    async with websockets.connect(url) as ws:
        since = {"epoch": last["epoch"], "seq": last["seq"]}
        await ws.send(
            orjson.dumps({"type": "INIT_FIELD_LIST", "payload": ["speed"], "since": since}).decode()
        )
        recovery = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        live = [await next_live(ws) for _ in range(2)]
    assert recovery["type"] == "RECOVERY" and recovery["recovered"] is True
    seqs = [m["seq"] for m in recovery["messages"]] + [m["seq"] for m in live]
    assert len(recovery["messages"]) >= 3
    assert seqs == list(range(last["seq"] + 1, last["seq"] + 1 + len(seqs)))
    assert all(set(m["payload"]) == {"speed"} for m in recovery["messages"])


async def test_reconnect_with_an_unknown_epoch_is_not_recovered(demo: Server) -> None:
    """A client whose epoch the server no longer has gets recovered: false, then live."""
    async with websockets.connect(demo.live_url(demo.machines[1])) as ws:
        await ws.send(
            orjson.dumps(
                {"type": "INIT_FIELD_LIST", "payload": ["gear"], "since": {"epoch": "x", "seq": 1}}
            ).decode()
        )
        recovery = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert recovery == {"type": "RECOVERY", "recovered": False, "epoch": "x", "messages": []}
        await next_live(ws)
