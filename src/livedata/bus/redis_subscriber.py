"""The pub/sub connection to Redis as an asyncio protocol: bytes in, handler calls out.

:class:`~livedata.bus.redis.RedisPubSub` reads its one subscribed connection with
this instead of redis-py's ``PubSub.get_message``.  redis-py spends, per message, a
coroutine, an ``asyncio.timeout``, a retry wrapper and a dict; here each chunk the
socket delivers is fed to a hiredis reader (RESP parsing in C) and every message in
it goes straight to its channel's handler inside ``data_received``: no task, timer
or await per message, and a burst read in one go is handled in one loop turn (so
the fan-out core coalesces it, see ``gateway/fanout.py``).  The chunk is parsed
whole before its messages are dispatched, so that while a message is handled
:attr:`Subscriber.follows` tells whether the same channel has another message later
in the chunk (:meth:`~livedata.bus.base.PubSub.follows`).

Commands (``AUTH``, ``CLIENT SETNAME``, ``SUBSCRIBE``, ``UNSUBSCRIBE``, ``PING``)
are written as RESP arrays; the replies of the ones sent before subscribing are
awaited (:meth:`Subscriber.command`), the others arrive as pushes (``subscribe``,
``unsubscribe``, ``pong``) and are handled where they land.

Under stress: a handler that raises is logged and the chunk's other messages are
still delivered.  Bytes Redis sends that are not RESP (a broken peer) close the
connection (:attr:`Subscriber.lost` is then done, and the owner reconnects).  What
the process has not read yet waits in the socket and in Redis's output buffer for
the connection (see ``bus/redis.py``, *A slow reader*).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

log = logging.getLogger("livedata.bus.redis")

Dispatch = Callable[[bytes, bytes], None]
"""Called with (channel as on the wire, message) for each published message."""


def command(*args: bytes | str) -> bytes:
    """One RESP array of bulk strings: how a client sends a command."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class Subscriber(asyncio.Protocol):
    """One subscribed connection: ``message`` pushes go to ``dispatch``, ``subscribe``
    confirmations to ``confirm``; :attr:`heard` is the monotonic time of the last bytes
    received and :attr:`lost` is done once the connection is gone."""

    def __init__(self, dispatch: Dispatch, confirm: Callable[[bytes], None]) -> None:
        self.dispatch = dispatch
        self.confirm = confirm
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.heard = time.monotonic()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self.follows = False
        """While ``dispatch`` runs: another message of the same channel follows in this
        read (the fan-out then gathers this one, see ``gateway/fanout.py``)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, *args: bytes | str) -> None:
        """Write one command whose reply is a push (or none is awaited)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(command(*args))

    async def command(self, *args: bytes | str) -> Any:
        """Send one command and return its (non-push) reply; a Redis error raises
        ``hiredis.ReplyError``, a lost connection ``ConnectionError``."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self.send(*args)
        reply = await waiter
        if isinstance(reply, hiredis.ReplyError):
            raise reply
        return reply

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        reader = self.reader
        reader.feed(data)
        items = []
        broken = None
        while True:
            try:
                item = reader.gets()
            except hiredis.ProtocolError as exc:
                broken = exc
                break
            if item is False:
                break
            items.append(item)
        if len(items) > 1:
            # The index of each channel's last message in this read (see ``follows``).
            last = {
                item[1]: index
                for index, item in enumerate(items)
                if type(item) is list and len(item) == 3 and item[0] == b"message"
            }
        else:
            last = None
        dispatch = self.dispatch
        for index, item in enumerate(items):
            if type(item) is list and len(item) == 3:
                kind = item[0]
                if kind == b"message":
                    self.follows = last is not None and last[item[1]] != index
                    try:
                        dispatch(item[1], item[2])
                    except Exception:
                        log.exception("a subscriber of %r failed", item[1])
                    continue
                if kind == b"subscribe":
                    self.confirm(item[1])
                    continue
                if kind == b"unsubscribe":
                    continue
            if type(item) is list and item and item[0] == b"pong":
                continue
            if self._waiting:
                waiter = self._waiting.popleft()
                if not waiter.done():
                    waiter.set_result(item)
        self.follows = False
        if broken is not None:
            log.warning("closing the pub/sub connection: not RESP (%s)", broken)
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for waiter in self._waiting:
            if not waiter.done():
                waiter.set_exception(ConnectionError("the pub/sub connection was lost"))
        self._waiting.clear()
        if not self.lost.done():
            self.lost.set_result(None)


async def open_subscriber(
    url: str, dispatch: Dispatch, confirm: Callable[[bytes], None], client_name: str
) -> Subscriber:
    """Connect to the Redis of ``url`` (``redis://``, ``rediss://`` or ``unix://``, with
    user and password), authenticate and name the connection; raises ``OSError`` /
    ``ConnectionError`` / ``hiredis.ReplyError`` when that fails (the caller bounds the
    time)."""
    params = parse_url(url)
    loop = asyncio.get_running_loop()

    def factory() -> Subscriber:
        return Subscriber(dispatch, confirm)

    kind = params.get("connection_class")
    protocol: Subscriber
    if kind is UnixDomainSocketConnection:
        _, protocol = await loop.create_unix_connection(factory, params["path"])
    else:
        context = ssl.create_default_context() if kind is SSLConnection else None
        _, protocol = await loop.create_connection(
            factory, params.get("host", "localhost"), params.get("port", 6379), ssl=context
        )
    try:
        password = params.get("password")
        if password:
            user = params.get("username")
            await protocol.command("AUTH", *([user] if user else []), password)
        await protocol.command("CLIENT", "SETNAME", client_name)
    except BaseException:
        protocol.close()
        raise
    return protocol
