"""The Foxglove WebSocket protocol (``foxglove.websocket.v1``): open a fleet in Foxglove or PlotJuggler.

``ws://HOST/api/resources/{orgId}/foxglove`` (viewer; a browser tool passes its API
token as ``?access_token=…``).  The client must offer the ``foxglove.websocket.v1``
subprotocol.  The server sends ``serverInfo``, then ``advertise`` with one channel
per machine and message type of the organisation: topic ``/{chassisId}/{msgType}``,
encoding ``json``, schema ``livedata.{msgType}`` as a JSON schema of the machine's
fields (with ``ts``, ms since the epoch).  A client ``subscribe``s to channels by id;
each live record of a subscribed channel is sent as a binary ``messageData`` frame
(opcode 1, subscription id, receive time in ns, JSON ``{"ts":…, field: value, …}``
of every field of the record: the values the live WebSocket sends).
``unsubscribe`` stops a subscription.  Live only; replay is on the replay socket.

Under stress: at most :data:`MAX_SUBSCRIPTIONS` subscriptions per connection; a
client that reads too slowly loses the oldest queued messages (at most
:data:`QUEUE_MAX` wait), and is told once per second how many it lost with a
``status`` warning.  Bad client messages get a ``status`` error and change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from livedata.model import MsgType, live_channel

if TYPE_CHECKING:
    from livedata.runtime import Runtime

router = APIRouter(prefix="/api")

SUBPROTOCOL = "foxglove.websocket.v1"
MAX_SUBSCRIPTIONS = 200
QUEUE_MAX = 1000
MAX_MESSAGE = 64 * 1024
_HEADER = struct.Struct("<BIQ")
_INFO, _WARNING, _ERROR = 0, 1, 2


def message_data(subscription: int, received_ns: int, payload: bytes) -> bytes:
    """A binary ``messageData`` frame."""
    return _HEADER.pack(1, subscription, received_ns) + payload


async def channels(rt: Runtime, org: str) -> list[dict[str, Any]]:
    """One channel per machine and message type, with a JSON schema of its fields."""
    out: list[dict[str, Any]] = []
    for machine in await rt.meta.list_machines(org):
        info = await rt.require_machine(org, machine.chassis_id)
        for msg_type in MsgType:
            properties: dict[str, Any] = {
                "ts": {"type": "integer", "description": "ms since epoch"}
            }
            for f in await rt.catalog.fields(info, msg_type.value):
                kind = "number" if msg_type == MsgType.VEHICLE_CAN else ["number", "string"]
                properties[f["name"]] = {"type": kind, "description": f["unit"] or ""}
            schema = {"type": "object", "properties": properties}
            out.append(
                {
                    "id": len(out) + 1,
                    "topic": f"/{machine.chassis_id}/{msg_type.value}",
                    "encoding": "json",
                    "schemaName": f"livedata.{msg_type.value}",
                    "schema": orjson.dumps(schema).decode(),
                    "schemaEncoding": "jsonschema",
                    "live_channel": live_channel(org, machine.chassis_id, msg_type.value),
                }
            )
    return out


class _Connection:
    def __init__(self, websocket: WebSocket, rt: Runtime, advertised: list[dict[str, Any]]) -> None:
        self.ws, self.rt = websocket, rt
        self.channels = {c["id"]: c for c in advertised}
        self.subscriptions: dict[int, tuple[str, Any]] = {}
        self.queue: deque[bytes | str] = deque()
        self.ready = asyncio.Event()
        self.lost = 0

    def offer(self, frame: bytes | str) -> None:
        if len(self.queue) >= QUEUE_MAX:
            self.queue.popleft()
            self.lost += 1
        self.queue.append(frame)
        self.ready.set()

    def status(self, level: int, message: str) -> None:
        self.offer(orjson.dumps({"op": "status", "level": level, "message": message}).decode())

    async def writer(self) -> None:
        told = time.monotonic()
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.queue:
                frame = self.queue.popleft()
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_text(frame)
            if self.lost and time.monotonic() - told >= 1.0:
                told = time.monotonic()
                lost, self.lost = self.lost, 0
                self.status(_WARNING, f"{lost} messages dropped: the client reads too slowly")

    async def subscribe(self, items: Any) -> None:
        if not isinstance(items, list):
            raise ValueError("subscriptions must be a list")
        for item in items:
            sub_id = item.get("id") if isinstance(item, dict) else None
            channel = self.channels.get(item.get("channelId")) if isinstance(item, dict) else None
            if not isinstance(sub_id, int) or channel is None:
                raise ValueError(
                    "each subscription needs an integer id and an advertised channelId"
                )
            if sub_id in self.subscriptions:
                raise ValueError(f"subscription {sub_id} exists already")
            if len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
                raise ValueError(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")

            def listener(values: dict[str, Any], head: dict[str, Any], sub: int = sub_id) -> None:
                body = orjson.dumps({"ts": head.get("ts"), **values})
                self.offer(message_data(sub, time.time_ns(), body))

            self.subscriptions[sub_id] = (channel["live_channel"], listener)
            await self.rt.hub.listen(channel["live_channel"], listener)

    async def unsubscribe(self, ids: Any) -> None:
        if not isinstance(ids, list):
            raise ValueError("subscriptionIds must be a list")
        for sub_id in ids:
            found = self.subscriptions.pop(sub_id, None) if isinstance(sub_id, int) else None
            if found is not None:
                await self.rt.hub.unlisten(*found)

    async def receive(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            try:
                if text is None or len(text) > MAX_MESSAGE:
                    raise ValueError("send JSON text messages of at most 64 KiB")
                data = orjson.loads(text)
                op = data.get("op") if isinstance(data, dict) else None
                if op == "subscribe":
                    await self.subscribe(data.get("subscriptions"))
                elif op == "unsubscribe":
                    await self.unsubscribe(data.get("subscriptionIds"))
                else:
                    raise ValueError(f"unsupported op {op!r}: subscribe or unsubscribe")
            except (ValueError, orjson.JSONDecodeError) as exc:
                self.status(_ERROR, str(exc))

    async def close(self) -> None:
        for channel, listener in self.subscriptions.values():
            await self.rt.hub.unlisten(channel, listener)
        self.subscriptions.clear()


@router.websocket("/resources/{orgId}/foxglove")
async def foxglove(websocket: WebSocket, orgId: str) -> None:
    rt: Runtime = websocket.app.state.runtime
    offered = websocket.scope.get("subprotocols") or []
    if SUBPROTOCOL not in offered:
        await websocket.accept()  # closed with a reason (before accepting it would be a bare 403)
        await websocket.close(1002, f"offer the {SUBPROTOCOL} subprotocol")
        return
    await websocket.accept(subprotocol=SUBPROTOCOL)
    advertised = await channels(rt, orgId)
    conn = _Connection(websocket, rt, advertised)
    info = {
        "op": "serverInfo",
        "name": "livedata",
        "capabilities": [],
        "supportedEncodings": [],
        "metadata": {"organisation": orgId},
        "sessionId": uuid.uuid4().hex,
    }
    public = [{k: v for k, v in c.items() if k != "live_channel"} for c in advertised]
    conn.offer(orjson.dumps(info).decode())
    conn.offer(orjson.dumps({"op": "advertise", "channels": public}).decode())
    writer = asyncio.create_task(conn.writer())
    receiver = asyncio.create_task(conn.receive())
    try:
        await asyncio.wait({writer, receiver}, return_when=asyncio.FIRST_COMPLETED)
    except WebSocketDisconnect:
        pass
    finally:
        writer.cancel()
        receiver.cancel()
        for task in (writer, receiver):
            with contextlib.suppress(BaseException):
                await task
        await conn.close()
