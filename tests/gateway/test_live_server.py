"""The live WebSocket on livedata's server layer, in process over a real socket: the server
layer serves the upgrade itself and the fan-out writes pre-framed bytes to its transport."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette

from livedata.bus.base import LiveMessage
from livedata.bus.memory import MemoryPubSub
from livedata.errors import NotFound
from livedata.gateway.fanout import Fanout
from livedata.gateway.live import LiveEndpoint
from livedata.gateway.server import uvicorn_config
from livedata.model import live_channel
from livedata.settings import Settings

CHANNEL = live_channel("acme", "m1", "vehicle_can")
Served = tuple[str, MemoryPubSub, Fanout, uvicorn.Server]


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (at most about 30 s, then fail)."""
    for _ in range(3_000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def admit(*_: object) -> int:
    """Every connection is admitted here (authentication: tests/security)."""
    return 0


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A uvicorn server with livedata's limits serving the live endpoint (no app routes)."""
    url = f"memory://{uuid.uuid4().hex}"
    fanout = Fanout(MemoryPubSub(url), queue_max=8)

    async def known_fields(org: str, chassis: str, msg_type: str) -> list[str]:
        if chassis != "m1":
            raise NotFound(f"no machine {chassis}")
        return ["speed", "gear"]

    endpoint = LiveEndpoint(admit, lambda _handle: None, fanout, known_fields)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(Starlette(), Settings(max_connections=100), sockets=endpoint)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await until(lambda: server.started)
    base = f"ws://127.0.0.1:{port}/api/resources/acme/_common/datasets"
    yield base, MemoryPubSub(url), fanout, server
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task
    sock.close()


async def test_live_data_and_errors_arrive_as_frames_written_by_the_fan_out(
    served: Served,
) -> None:
    """A subscribed client gets its fields as LIVE_DATA; a bad message gets an ERROR, stays open."""
    base, publisher, fanout, _ = served
    async with asyncio.timeout(30), websockets.connect(f"{base}/m1/live?msgType=vehicle_can") as ws:
        await ws.send('{"type":"INIT_FIELD_LIST","payload":["speed"]}')
        await until(lambda: CHANNEL in fanout.channels)
        await publisher.publish(CHANNEL, LiveMessage(1_000, 1, "e1", {"speed": 5.0, "gear": 2}))
        assert orjson.loads(await ws.recv()) == {
            "type": "LIVE_DATA",
            "payload": {"speed": 5.0},
            "ts": 1_000,
            "seq": 1,
            "epoch": "e1",
        }
        await ws.send("{not json")
        assert orjson.loads(await ws.recv())["code"] == "invalid_json"
        await publisher.publish(CHANNEL, LiveMessage(2_000, 2, "e1", {"speed": 6.0}))
        assert orjson.loads(await ws.recv())["seq"] == 2
    await until(lambda: CHANNEL not in fanout.channels)  # it left the fan-out when it closed


async def test_unknown_machine_gets_not_found_and_close_4404(
    served: Served,
) -> None:
    """An unknown machine gets the not_found ERROR, then the close code 4404."""
    base, _, _, _ = served
    async with (
        asyncio.timeout(30),
        websockets.connect(f"{base}/nope/live?msgType=vehicle_can") as ws,
    ):
        assert orjson.loads(await ws.recv())["code"] == "not_found"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404


async def test_open_connections_hold_no_task(
    served: Served,
) -> None:
    """Subscribed, idle live connections add no task to the server's event loop."""
    base, _, fanout, _ = served
    url = f"{base}/m1/live?msgType=vehicle_can"
    before = len(asyncio.all_tasks())
    async with asyncio.timeout(30), contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(websockets.connect(url)) for _ in range(20)]
        for ws in clients:
            await ws.send('{"type":"INIT_FIELD_LIST","payload":["speed"]}')
        await until(lambda: CHANNEL in fanout.channels)
        # each client runs a task of its own here (websockets' reader): count only the server's
        await until(lambda: len(asyncio.all_tasks()) <= before + len(clients))
        assert len(asyncio.all_tasks()) == before + len(clients)


async def test_server_shutdown_closes_live_connections_with_1012(
    served: Served,
) -> None:
    """A server that stops sends close code 1012 (service restart) to open live connections."""
    base, _, _, server = served
    async with asyncio.timeout(30), websockets.connect(f"{base}/m1/live?msgType=vehicle_can") as ws:
        server.should_exit = True
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012


async def test_bad_upgrade_request_gets_400(served: Served) -> None:
    """An upgrade to the live path without a Sec-WebSocket-Key gets HTTP 400 and is closed."""
    base, _, _, _ = served
    host, _, _ = base.removeprefix("ws://").partition("/")
    ip, port = host.split(":")
    reader, writer = await asyncio.open_connection(ip, int(port))
    writer.write(
        b"GET /api/resources/acme/_common/datasets/m1/live?msgType=vehicle_can HTTP/1.1\r\n"
        b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    async with asyncio.timeout(30):
        response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 400 ")


def test_connections_of_one_machine_share_its_known_fields() -> None:
    """The sessions of one machine's connections hold one set of its fields (a new one
    when the machine's fields change)."""

    async def known_fields(org: str, chassis: str, msg_type: str) -> list[str]:
        return []

    fanout = Fanout(MemoryPubSub(f"memory://{uuid.uuid4().hex}"))
    endpoint = LiveEndpoint(admit, lambda _handle: None, fanout, known_fields)
    first = endpoint._known("acme", "m1", "vehicle_can", ["speed", "gear"])
    assert endpoint._known("acme", "m1", "vehicle_can", ["gear", "speed"]) is first
    changed = endpoint._known("acme", "m1", "vehicle_can", ["speed"])
    assert changed == {"speed"} and first == {"speed", "gear"}
    assert endpoint._known("acme", "m1", "vehicle_can", ["speed"]) is changed
    assert endpoint._known("acme", "m2", "vehicle_can", ["speed"]) is not changed
