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
Then come, as LIVE_DATA (oldest first), the messages the live history still holds:
live goes out before storage, so the newest of them may not be in the history API's
answer yet; the client merges them by ``ts``.

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

The messages are parsed and validated by the sans-I/O
:mod:`livedata.gateway.protocol.live`; this module is the asyncio layer.  Delivery is
the fan-out core's (:mod:`livedata.gateway.fanout`): LIVE_DATA frames are built once
per field list and written straight to the connection's transport (no ASGI ``send``,
task or timer per message); the server layer hands the transport over
(:class:`~livedata.gateway.server.LimitedWebSocket`).

Under stress: while a client's transport buffer is above its high-water mark its
messages wait in a bounded outbox (oldest dropped, ``missed`` count on the next
one); a client whose transport makes no progress for ``client_stall_seconds`` is
given up: a 1013 close frame is put behind what is buffered and the connection is
ended at once; what stays is the socket's kernel buffer and the transport buffer
(about 64 KiB), freed when the peer reads or goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from livedata import observe
from livedata.errors import NotFound
from livedata.gateway.fanout import WS_TEXT, Fanout, Outbox
from livedata.gateway.protocol.live import (
    CLOSE_NOT_FOUND,
    Fatal,
    LiveSession,
    Reply,
    check_msg_type,
)
from livedata.gateway.rate import RateLimiter
from livedata.gateway.server import RAW_WEBSOCKET, LimitedWebSocket
from livedata.model import live_channel

log = logging.getLogger("livedata.gateway.live")


class _Fatal(Exception):
    def __init__(self, fatal: Fatal) -> None:
        super().__init__(fatal.message)
        self.fatal = fatal


async def serve_live(
    websocket: WebSocket,
    hub: Fanout,
    org_id: str,
    chassis_id: str,
    msg_type: str | None,
    known_fields: Any,
    queue_max: int,
    stall_timeout: float | None = None,
) -> None:
    """Run one live connection; ``known_fields(msg_type)`` checks the machine and lists fields.

    ``stall_timeout`` defaults to the fan-out's (the ``client_stall_seconds`` setting).
    Needs livedata's server layer (:func:`~livedata.gateway.server.uvicorn_config`):
    elsewhere the connection is closed with 1011.
    """
    await websocket.accept()
    raw = websocket.scope.get("extensions", {}).get(RAW_WEBSOCKET)
    if not isinstance(raw, LimitedWebSocket):
        await websocket.close(1011, "the live WebSocket needs livedata's server")
        return
    observe.WS_CONNECTIONS.inc()

    def stalled() -> None:
        log.info("closing a stalled client: no progress for %g s", outbox.stall_seconds)
        raw.close_now(1013, "too slow: no progress")

    outbox = Outbox(
        raw.transport,
        WS_TEXT,
        stalled,
        queue_max,
        hub.stall_seconds if stall_timeout is None else stall_timeout,
    )
    raw.attach(outbox)
    rated = _Rated(hub, outbox)
    try:
        fatal = check_msg_type(msg_type)
        if fatal is not None:
            raise _Fatal(fatal)
        assert msg_type is not None
        try:
            fields = await known_fields(msg_type)
        except NotFound as exc:
            raise _Fatal(Fatal("not_found", str(exc), CLOSE_NOT_FOUND)) from None
        channel = live_channel(org_id, chassis_id, msg_type)
        with observe.log_context(role="gateway", machine=chassis_id):
            await _receive_loop(
                websocket, hub, outbox, channel, LiveSession(msg_type, fields), rated
            )
    except _Fatal as exc:
        outbox.send(exc.fatal.text.encode())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                websocket.close(exc.fatal.close_code, exc.fatal.message[:120]), 2
            )
    except WebSocketDisconnect:
        pass
    finally:
        outbox.close()
        await rated.stop()
        await hub.leave(outbox)
        observe.WS_CONNECTIONS.dec()


class _Rated:
    """A rate-controlled subscription: a fan-out listener feeding a limiter, flushed on a timer."""

    def __init__(self, hub: Fanout, outbox: Outbox) -> None:
        self.hub, self.outbox = hub, outbox
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
                self.outbox.send(orjson.dumps(message))

    async def stop(self) -> None:
        if self._current is not None:
            channel, limiter, task = self._current
            self._current = None
            task.cancel()
            await self.hub.unlisten(channel, limiter.add)


async def _receive_loop(
    websocket: WebSocket,
    hub: Fanout,
    outbox: Outbox,
    channel: str,
    session: LiveSession,
    rated: _Rated,
) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        now = time.monotonic()
        if text is None:
            event = session.receive_bytes(message.get("bytes") or b"", now)
        else:
            event = session.receive_text(text, now)
        if isinstance(event, Fatal):
            raise _Fatal(event)
        if isinstance(event, Reply):
            outbox.send(event.text.encode())
            continue
        if event.warning is not None:
            outbox.send(event.warning.encode())
        await rated.stop()
        if event.limiter is None:
            await hub.watch(outbox, channel, event.fields, event.since)
        else:
            await hub.leave(outbox)
            await rated.start(channel, event.limiter)
