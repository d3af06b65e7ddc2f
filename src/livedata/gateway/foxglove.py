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
``unsubscribe`` stops a subscription.

Replay: with ``?from=…&to=…&speed=…`` (ms, as the replay socket) the same channels
are advertised and each subscription plays the stored range from its start at
``speed`` × real time, with the data's time as the message time; a ``status``
info says when a channel's replay ended.  A bad range or speed closes with 4400.

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

from livedata.errors import InputError
from livedata.gateway.api import time_range
from livedata.gateway.replay import CLOSE_BAD_REQUEST, MAX_SPAN_MS, ReplayClock, check_speed
from livedata.gateway.state import gateway_of
from livedata.model import MsgType, live_channel
from livedata.pipeline.export import Export

if TYPE_CHECKING:
    from livedata.catalog import Catalog
    from livedata.gateway.fanout import Fanout
    from livedata.metadata import Metadata
    from livedata.store.base import Store

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


async def channels(meta: Metadata, catalog: Catalog, org: str) -> list[dict[str, Any]]:
    """One channel per machine and message type, with a JSON schema of its fields."""
    out: list[dict[str, Any]] = []
    for machine in await meta.list_machines(org):
        info = await catalog.require_machine(org, machine.chassis_id)
        for msg_type in MsgType:
            properties: dict[str, Any] = {
                "ts": {"type": "integer", "description": "ms since epoch"}
            }
            for f in await catalog.fields(info, msg_type.value):
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
                    "_live": live_channel(org, machine.chassis_id, msg_type.value),
                    "_source": (machine.chassis_id, msg_type.value, list(properties)[1:]),
                }
            )
    return out


class _Connection:
    def __init__(
        self,
        websocket: WebSocket,
        hub: Fanout,
        store: Store,
        org: str,
        advertised: list[dict[str, Any]],
        replay: tuple[int, int, float] | None,
    ) -> None:
        self.ws, self.hub, self.store = websocket, hub, store
        self.org, self.replay = org, replay
        self.channels = {c["id"]: c for c in advertised}
        self.subscriptions: dict[int, tuple[str, Any]] = {}
        self.players: dict[int, asyncio.Task[None]] = {}
        self.queue: deque[bytes | str] = deque()
        self.ready = asyncio.Event()
        self.drained = asyncio.Event()
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
            self.drained.set()
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
            if sub_id in self.subscriptions or sub_id in self.players:
                raise ValueError(f"subscription {sub_id} exists already")
            if len(self.subscriptions) + len(self.players) >= MAX_SUBSCRIPTIONS:
                raise ValueError(f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection")

            if self.replay is not None:
                self.players[sub_id] = asyncio.create_task(self.play(sub_id, channel))
                continue

            def listener(values: dict[str, Any], head: dict[str, Any], sub: int = sub_id) -> None:
                body = orjson.dumps({"ts": head.get("ts"), **values})
                self.offer(message_data(sub, time.time_ns(), body))

            self.subscriptions[sub_id] = (channel["_live"], listener)
            await self.hub.listen(channel["_live"], listener)

    async def play(self, sub_id: int, channel: dict[str, Any]) -> None:
        """Replay one subscribed channel from the range's start; the log time is the data time."""
        assert self.replay is not None
        start, end, speed = self.replay
        chassis, msg_type, fields = channel["_source"]
        clock = ReplayClock(start, speed, time.monotonic())
        reader = Export(self.store, self.org, chassis, msg_type, fields, {}, start, end)
        async for rows in reader.row_chunks():
            for ts, values in rows:
                delay = clock.wait(ts, time.monotonic())
                if delay is not None and delay > 0:
                    await asyncio.sleep(delay)
                while len(self.queue) > QUEUE_MAX // 2:  # wait for a slow client, drop nothing
                    self.drained.clear()
                    await self.drained.wait()
                body = {
                    "ts": ts,
                    **{f: v for f, v in zip(fields, values, strict=True) if v is not None},
                }
                self.offer(message_data(sub_id, ts * 1_000_000, orjson.dumps(body)))
        self.status(_INFO, f"replay of {channel['topic']} ended")

    async def unsubscribe(self, ids: Any) -> None:
        if not isinstance(ids, list):
            raise ValueError("subscriptionIds must be a list")
        for sub_id in ids:
            found = self.subscriptions.pop(sub_id, None) if isinstance(sub_id, int) else None
            if found is not None:
                await self.hub.unlisten(*found)
            player = self.players.pop(sub_id, None) if isinstance(sub_id, int) else None
            if player is not None:
                player.cancel()

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
            await self.hub.unlisten(channel, listener)
        self.subscriptions.clear()
        for player in self.players.values():
            player.cancel()


@router.websocket("/resources/{orgId}/foxglove")
async def foxglove(websocket: WebSocket, orgId: str) -> None:
    gw = gateway_of(websocket)
    offered = websocket.scope.get("subprotocols") or []
    if SUBPROTOCOL not in offered:
        await websocket.accept()  # closed with a reason (before accepting it would be a bare 403)
        await websocket.close(1002, f"offer the {SUBPROTOCOL} subprotocol")
        return
    await websocket.accept(subprotocol=SUBPROTOCOL)
    query = websocket.query_params
    replay: tuple[int, int, float] | None = None
    metadata = {"organisation": orgId, "mode": "live"}
    if "from" in query:
        try:
            start, end = time_range(
                int(query["from"]), _opt_int(query.get("to")), MAX_SPAN_MS, MAX_SPAN_MS
            )
            replay = (start, end, check_speed(float(query.get("speed", "1"))))
        except (InputError, ValueError) as exc:
            await websocket.close(CLOSE_BAD_REQUEST, str(exc)[:120])
            return
        metadata.update(mode="replay", **{"from": str(start), "to": str(end)}, speed=str(replay[2]))
    advertised = await channels(gw.meta, gw.catalog, orgId)
    conn = _Connection(websocket, gw.hub, gw.store, orgId, advertised, replay)
    info = {
        "op": "serverInfo",
        "name": "livedata",
        "capabilities": [],
        "supportedEncodings": [],
        "metadata": metadata,
        "sessionId": uuid.uuid4().hex,
    }
    public = [{k: v for k, v in c.items() if not k.startswith("_")} for c in advertised]
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


def _opt_int(value: str | None) -> int | None:
    return None if value is None else int(value)
