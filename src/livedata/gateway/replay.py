"""Replay: a stored range played back through the live protocol, at a chosen speed.

``/api/resources/{orgId}/_common/datasets/{chassisId}/replay?msgType=…&from=…&to=…&speed=10``
(WebSocket, viewer; ``from`` and ``to`` in ms, ``to`` defaults to now, ``from`` to an
hour before it, at most 31 days apart; ``speed`` 0.1 … 1000, default 1).

It speaks the live protocol, so a client of the live WebSocket replays by changing
the URL: it sends ``{"type":"INIT_FIELD_LIST","payload":["speed","engine_rpm"]}``
and gets, for each stored timestamp of the range in order, at the moment the replay
clock reaches it, ``{"type":"LIVE_DATA","payload":{the fields with a value at that
timestamp},"ts":…,"replay":true}``.  Extra messages:

- ``{"type":"REPLAY_STATE","state":"playing"|"paused"|"ended","ts":…,"speed":…}``
  after the field list and after every change (``ts``: the replay clock);
- client → server ``{"type":"REPLAY_CONTROL","action":"pause"}``, ``"play"``,
  ``{"action":"seek","ts":…}`` (within the range), ``{"action":"speed","speed":60}``.
  After ``ended`` a seek plays again.

Errors are the live socket's ``{"type":"ERROR","code":…,"message":…}``
(``invalid_json``, ``unknown_type``, ``invalid_field_list``, ``invalid_control``;
the connection stays open) or a close with 4404 for an unknown machine or message
type, or 4400 for a bad range or speed.

Under stress: the store is read in the export's chunks (:class:`~livedata.pipeline.export.Export`,
bounded memory whatever the range); messages are sent one at a time and the clock
waits for the socket, so a slow client slows its own replay and nobody else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from livedata.errors import InputError, NotFound
from livedata.gateway.api import time_range
from livedata.gateway.protocol.live import CLOSE_NOT_FOUND, MAX_MESSAGE, error, parse_field_list
from livedata.gateway.state import gateway_of
from livedata.model import MsgType
from livedata.pipeline.export import Export

if TYPE_CHECKING:
    from livedata.store.base import Store

router = APIRouter(prefix="/api")

DEFAULT_SPAN_MS = 3_600_000
MAX_SPAN_MS = 31 * 86_400_000
MIN_SPEED, MAX_SPEED = 0.1, 1000.0
CLOSE_BAD_REQUEST = 4400


class ReplayClock:
    """Where a replay is in data time (ms), given the wall clock (s); sans I/O."""

    def __init__(self, ts: float, speed: float, now: float) -> None:
        self._ts, self._wall, self.speed = ts, now, speed
        self.paused = False

    def position(self, now: float) -> float:
        return self._ts if self.paused else self._ts + (now - self._wall) * 1000.0 * self.speed

    def wait(self, ts: float, now: float) -> float | None:
        """Seconds until the clock reaches ``ts`` (``<= 0``: now); ``None`` while paused."""
        if self.paused:
            return None
        return (ts - self.position(now)) / (1000.0 * self.speed)

    def pause(self, now: float) -> None:
        self._ts, self.paused = self.position(now), True

    def play(self, now: float) -> None:
        self._wall, self.paused = now, False

    def seek(self, ts: float, now: float) -> None:
        self._ts, self._wall = ts, now

    def set_speed(self, speed: float, now: float) -> None:
        self._ts, self._wall, self.speed = self.position(now), now, speed


def check_speed(speed: Any) -> float:
    if not isinstance(speed, int | float) or isinstance(speed, bool):
        raise ValueError("speed must be a number")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ValueError(f"speed must be between {MIN_SPEED:g} and {MAX_SPEED:g}")
    return float(speed)


class _Restart(Exception):
    """A seek or a new field list: read the store again from the clock's position."""


class _Session:
    def __init__(
        self, websocket: WebSocket, store: Store, org: str, chassis: str, msg_type: str
    ) -> None:
        self.ws, self.store, self.org, self.chassis, self.msg_type = (
            websocket,
            store,
            org,
            chassis,
            msg_type,
        )
        self.known: set[str] = set()
        self.fields: tuple[str, ...] = ()
        self.start = self.end = 0
        self.clock = ReplayClock(0, 1.0, time.monotonic())
        self.changed = asyncio.Event()
        self.restart = False
        self.ended = False
        self.started = asyncio.Event()
        self._sending = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._sending:  # the player and the receiver both send
            await self.ws.send_text(orjson.dumps(message).decode())

    async def state(self) -> None:
        """Tell the client where the replay is (after each change, and at the end)."""
        state = "ended" if self.ended else "paused" if self.clock.paused else "playing"
        ts = min(max(self.clock.position(time.monotonic()), self.start), self.end)
        await self.send(
            {"type": "REPLAY_STATE", "state": state, "ts": int(ts), "speed": self.clock.speed}
        )

    async def receive(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            text = message.get("text")
            if text is None or len(text) > MAX_MESSAGE:
                await self.send_error("invalid_json", "send JSON text up to 64 KiB")
                continue
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError:
                await self.send_error("invalid_json", "the message is not JSON")
                continue
            kind = data.get("type") if isinstance(data, dict) else None
            try:
                if kind == "INIT_FIELD_LIST":
                    fields = parse_field_list(data.get("payload"))
                    self.fields = tuple(f for f in fields if f in self.known)
                    if not self.started.is_set():  # the clock starts with the first list
                        self.clock.seek(self.start, time.monotonic())
                        self.started.set()
                    self.restart = True
                elif kind == "REPLAY_CONTROL":
                    self.control(data)
                else:
                    raise ValueError(
                        "unknown_type", "type must be INIT_FIELD_LIST or REPLAY_CONTROL"
                    )
            except ValueError as exc:
                code, text = exc.args if len(exc.args) == 2 else ("invalid_control", str(exc))
                await self.send_error(code, text)
                continue
            if self.restart:
                self.ended = False
            await self.state()
            self.changed.set()

    async def send_error(self, code: str, message: str) -> None:
        async with self._sending:
            await self.ws.send_text(error(code, message))

    def control(self, data: dict[str, Any]) -> None:
        now = time.monotonic()
        action = data.get("action")
        if action == "pause":
            self.clock.pause(now)
        elif action == "play":
            self.clock.play(now)
        elif action == "seek":
            ts = data.get("ts")
            if not isinstance(ts, int) or isinstance(ts, bool) or not self.start <= ts <= self.end:
                raise ValueError("seek ts must be a time in ms within the replayed range")
            self.clock.seek(ts, now)
            self.restart = True
        elif action == "speed":
            self.clock.set_speed(check_speed(data.get("speed")), now)
        else:
            raise ValueError("action must be pause, play, seek or speed")

    async def wait_until(self, ts: int) -> None:
        """Wait until the clock reaches ``ts``; raise :class:`_Restart` on a seek or new list."""
        while True:
            if self.restart:
                raise _Restart
            delay = self.clock.wait(ts, time.monotonic())
            if delay is not None and delay <= 0:
                return
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), delay)

    async def play(self) -> None:
        await self.started.wait()
        while True:
            self.restart = False
            now = time.monotonic()
            begin = int(min(max(self.clock.position(now), self.start), self.end))
            try:
                if self.fields:
                    reader = Export(
                        self.store,
                        self.org,
                        self.chassis,
                        self.msg_type,
                        self.fields,
                        {},
                        begin,
                        self.end,
                    )
                    async for rows in reader.row_chunks():
                        for ts, values in rows:
                            await self.wait_until(ts)
                            payload = {
                                name: value
                                for name, value in zip(self.fields, values, strict=True)
                                if value is not None
                            }
                            await self.send(
                                {"type": "LIVE_DATA", "payload": payload, "ts": ts, "replay": True}
                            )
                await self.wait_until(self.end)
                self.ended = True
                await self.state()
                while not self.restart:
                    self.changed.clear()
                    await self.changed.wait()
            except _Restart:
                continue


@router.websocket("/resources/{orgId}/_common/datasets/{chassisId}/replay")
async def replay(websocket: WebSocket, orgId: str, chassisId: str) -> None:
    gw = gateway_of(websocket)
    await websocket.accept()
    query = websocket.query_params
    msg_type = query.get("msgType")
    session = _Session(websocket, gw.store, orgId, chassisId, msg_type or "")
    try:
        if msg_type not in set(MsgType):
            await _close(websocket, "not_found", f"unknown msgType {msg_type!r}", CLOSE_NOT_FOUND)
            return
        try:
            info = await gw.catalog.require_machine(orgId, chassisId)
        except NotFound as exc:
            await _close(websocket, "not_found", str(exc), CLOSE_NOT_FOUND)
            return
        try:
            start, end = time_range(
                _int(query.get("from")), _int(query.get("to")), DEFAULT_SPAN_MS, MAX_SPAN_MS
            )
            speed = check_speed(float(query.get("speed", "1")))
        except (InputError, ValueError) as exc:
            await _close(websocket, "invalid_request", str(exc), CLOSE_BAD_REQUEST)
            return
        session.known = {f["name"] for f in await gw.catalog.fields(info, msg_type)}
        session.start, session.end = start, end
        session.clock = ReplayClock(start, speed, time.monotonic())
        receiver = asyncio.create_task(session.receive())
        player = asyncio.create_task(session.play())
        try:
            done, _ = await asyncio.wait({receiver, player}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            receiver.cancel()
            player.cancel()
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away (RuntimeError: sending on a closed socket)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{value!r} is not a time in ms") from None


async def _close(websocket: WebSocket, code: str, message: str, close_code: int) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(error(code, message))
        await websocket.close(close_code, message[:120])
