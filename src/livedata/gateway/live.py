"""The live WebSocket of the reference system.

``/api/resources/{orgId}/_common/datasets/{chassisId}/live?msgType={msgType}``

Client → server: ``{"type":"INIT_FIELD_LIST","payload":["speed","engine_rpm"]}``
(send again to replace the list).  Server → client, per record of the machine:
``{"type":"LIVE_DATA","payload":{only the requested fields},"ts":…,"seq":…,"epoch":…}``.

A client that reconnects adds what it saw last:
``{"type":"INIT_FIELD_LIST","payload":[…],"since":{"epoch":"…","seq":41}}`` and first
gets ``{"type":"RECOVERY","recovered":true,"epoch":…,"messages":[LIVE_DATA…]}`` with
exactly the messages it missed, in order, then live data; ``"recovered":false`` (and
no messages) means they are gone and it should fill the gap from the history API.

Rate control: ``"maxRate": 2, "aggregate": "minmax"`` (or ``last``, ``avg``) in
INIT_FIELD_LIST gets at most 2 messages a second, each summing up its interval
(see :mod:`livedata.gateway.rate`); without them the protocol is as above.  A
rate-controlled subscription does not recover after a reconnect (``since`` is
ignored with ``maxRate``).

A client whose socket takes nothing for 30 s (``client_stall_seconds``) is closed
with 1013; dead peers are found by WebSocket pings (every 20 s, 20 s to answer).

Errors are ``{"type":"ERROR","code":…,"message":…}``.  Recoverable ones keep
the connection (the previous field list stays in force); the others close it:

=================  =====================================================  ==========
code               when                                                   close code
=================  =====================================================  ==========
invalid_json       the text is not JSON                                   stays open
unknown_type       not an object with a known ``type``                    stays open
invalid_field_list ``payload`` is not a list of field names               stays open
too_many_fields    more than 500 fields                                   stays open
invalid_since      ``since`` is not ``{"epoch": str, "seq": int}``        stays open
invalid_rate       ``maxRate``/``aggregate`` out of range or unknown      stays open
unknown_fields     fields the machine does not have (the rest are kept)   stays open
message_too_big    a message over 64 KiB                                  1009
unsupported_data   a binary message                                       1003
rate_limited       more than 20 messages in 10 s from the client          1008
(stalled)          the client read nothing for 30 s                       1013
not_found          unknown organisation, machine or message type          4404
=================  =====================================================  ==========

Under stress: see :mod:`livedata.gateway.hub` (bounded queue per client, oldest
dropped, ``missed`` count).  Dead peers are found by the server's WebSocket pings.
A stalled client (its TCP window full, so the 1013 close frame usually cannot get
through either) is dropped from the hub and its connection ended at once; what
stays is the socket's kernel buffer and at most one transport buffer (64 KiB),
freed when the peer reads or goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from livedata import observe
from livedata.errors import NotFound
from livedata.gateway.hub import Hub, LiveClient, Stalled
from livedata.gateway.rate import RateLimiter
from livedata.model import MsgType, live_channel, valid_id

log = logging.getLogger("livedata.gateway.live")

MAX_MESSAGE = 64 * 1024
MAX_FIELDS = 500
RATE_WINDOW = 10.0
RATE_MAX = 20
CLOSE_NOT_FOUND = 4404


def error(code: str, message: str) -> str:
    observe.CLIENT_ERRORS.labels(code).inc()
    return orjson.dumps({"type": "ERROR", "code": code, "message": message}).decode()


class _Fatal(Exception):
    def __init__(self, code: str, message: str, close_code: int) -> None:
        super().__init__(message)
        self.code, self.close_code = code, close_code


def parse_field_list(payload: Any) -> tuple[str, ...]:
    """Validate an INIT_FIELD_LIST payload; raises ``ValueError(code, message)``."""
    if not isinstance(payload, list) or not all(isinstance(f, str) for f in payload):
        raise ValueError("invalid_field_list", "payload must be a list of field names (strings)")
    if len(payload) > MAX_FIELDS:
        raise ValueError("too_many_fields", f"{len(payload)} fields; at most {MAX_FIELDS}")
    bad = [f for f in payload if not valid_id(f)]
    if bad:
        raise ValueError("invalid_field_list", f"invalid field names: {bad[:5]}")
    return tuple(dict.fromkeys(payload))


async def serve_live(
    websocket: WebSocket,
    hub: Hub,
    org_id: str,
    chassis_id: str,
    msg_type: str | None,
    known_fields: Any,
    queue_max: int,
    stall_timeout: float | None = None,
) -> None:
    """Run one live connection; ``known_fields(msg_type)`` checks the machine and lists fields.

    ``stall_timeout`` defaults to the hub's (the ``client_stall_seconds`` setting).
    """
    await websocket.accept()
    observe.WS_CONNECTIONS.inc()
    stall = hub.stall_timeout if stall_timeout is None else stall_timeout
    client = LiveClient(websocket.send_text, queue_max, stall)
    writer = asyncio.create_task(_write(websocket, client))
    receiver: asyncio.Task[None] | None = None
    rated = _Rated(hub, client)
    try:
        if msg_type not in set(MsgType):
            raise _Fatal(
                "not_found",
                f"unknown msgType {msg_type!r}: use one of {', '.join(MsgType)}",
                CLOSE_NOT_FOUND,
            )
        try:
            fields = set(await known_fields(msg_type))
        except NotFound as exc:
            raise _Fatal("not_found", str(exc), CLOSE_NOT_FOUND) from None
        channel = live_channel(org_id, chassis_id, msg_type)
        with observe.log_context(role="gateway", machine=chassis_id):
            receiver = asyncio.create_task(
                _receive_loop(websocket, hub, client, channel, fields, msg_type, rated)
            )
        await _until_done(receiver, writer)
    except _Fatal as exc:
        writer.cancel()
        with contextlib.suppress(Exception):
            await websocket.send_text(error(exc.code, str(exc)))
            await websocket.close(exc.close_code, str(exc)[:120])
    except WebSocketDisconnect:
        pass
    finally:
        writer.cancel()
        if receiver is not None:
            receiver.cancel()
        await rated.stop()
        await hub.leave(client)
        observe.WS_CONNECTIONS.dec()


async def _until_done(receiver: asyncio.Task[None], writer: asyncio.Task[None]) -> None:
    """Wait for the receive loop; a writer that ends first (it gave up a stalled client) ends it.

    A stalled client's socket cannot even take the close frame, so nothing would
    ever arrive to end the receive loop: without this the connection, its task
    and its hub membership would stay until the peer goes away.
    """
    await asyncio.wait({receiver, writer}, return_when=asyncio.FIRST_COMPLETED)
    if receiver.done():
        receiver.result()  # raises _Fatal or WebSocketDisconnect as before
        return
    receiver.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await receiver
    if not writer.cancelled() and writer.exception() is not None:
        log.info("live connection ends: sending failed (%s)", writer.exception())


async def _write(websocket: WebSocket, client: LiveClient) -> None:
    try:
        await client.writer()
    except Stalled as exc:
        observe.STALLED.inc()
        log.info("closing a stalled client: %s", exc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(1013, "too slow: no progress"), 2)


def parse_since(value: Any) -> tuple[str, int] | None:
    """Validate the optional ``since`` of INIT_FIELD_LIST; raises ``ValueError(code, message)``."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("epoch"), str)
        or len(value["epoch"]) > 64
        or not isinstance(value.get("seq"), int)
        or isinstance(value["seq"], bool)
        or value["seq"] < 0
    ):
        raise ValueError("invalid_since", 'since must be {"epoch": "<string>", "seq": <int >= 0>}')
    return value["epoch"], value["seq"]


def parse_rate(fields: tuple[str, ...], data: dict[str, Any]) -> RateLimiter | None:
    """The rate control an INIT_FIELD_LIST asks for (``maxRate``, ``aggregate``), if any."""
    max_rate, mode = data.get("maxRate"), data.get("aggregate", "last")
    if max_rate is None:
        if "aggregate" in data:
            raise ValueError("invalid_rate", "aggregate needs maxRate")
        return None
    if not isinstance(max_rate, int | float) or isinstance(max_rate, bool):
        raise ValueError("invalid_rate", "maxRate must be a number of messages per second")
    try:
        return RateLimiter(fields, float(max_rate), str(mode))
    except ValueError as exc:
        raise ValueError("invalid_rate", str(exc)) from None


class _Rated:
    """A rate-controlled subscription: a hub listener feeding a limiter, flushed on a timer."""

    def __init__(self, hub: Hub, client: LiveClient) -> None:
        self.hub, self.client = hub, client
        self._current: tuple[str, RateLimiter, asyncio.Task[None]] | None = None

    async def start(self, channel: str, limiter: RateLimiter) -> None:
        task = asyncio.create_task(self._flush(limiter))
        self._current = (channel, limiter, task)
        await self.hub.listen(channel, limiter.add)

    async def _flush(self, limiter: RateLimiter) -> None:
        while True:
            await asyncio.sleep(limiter.interval)
            message = limiter.flush()
            if message is not None:
                self.client.offer(orjson.dumps(message), message.get("seq", 0))

    async def stop(self) -> None:
        if self._current is not None:
            channel, limiter, task = self._current
            self._current = None
            task.cancel()
            await self.hub.unlisten(channel, limiter.add)


async def _receive_loop(
    websocket: WebSocket,
    hub: Hub,
    client: LiveClient,
    channel: str,
    known: set[str],
    msg_type: str,
    rated: _Rated,
) -> None:
    recent: deque[float] = deque()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        now = time.monotonic()
        recent.append(now)
        while recent and now - recent[0] > RATE_WINDOW:
            recent.popleft()
        if len(recent) > RATE_MAX:
            raise _Fatal("rate_limited", f"more than {RATE_MAX} messages in 10 s", 1008)
        text = message.get("text")
        if text is None:
            raise _Fatal("unsupported_data", "binary messages are not supported", 1003)
        if len(text) > MAX_MESSAGE or len(text.encode()) > MAX_MESSAGE:
            raise _Fatal("message_too_big", f"messages are limited to {MAX_MESSAGE} bytes", 1009)
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            client.offer(error("invalid_json", "message is not valid JSON").encode())
            continue
        if not isinstance(data, dict) or data.get("type") != "INIT_FIELD_LIST":
            kind = data.get("type") if isinstance(data, dict) else None
            client.offer(
                error(
                    "unknown_type", f"unknown message type {kind!r}; expected INIT_FIELD_LIST"
                ).encode()
            )
            continue
        try:
            fields = parse_field_list(data.get("payload"))
            since = parse_since(data.get("since"))
            limiter = parse_rate(fields, data)
        except ValueError as exc:
            code, text = exc.args
            client.offer(error(code, text).encode())
            continue
        unknown = [f for f in fields if f not in known]
        if unknown:
            client.offer(
                error("unknown_fields", f"{msg_type} has no fields {unknown[:20]}").encode()
            )
        await rated.stop()
        if limiter is None:
            await hub.watch(client, channel, fields, since)
        else:
            await hub.leave(client)
            await rated.start(channel, limiter)
