"""The live hub: pub/sub channels in, filtered LIVE_DATA out to WebSocket clients.

* The hub subscribes to a channel only while some client wants it and
  unsubscribes when the last one leaves (no pattern subscription to everything).
* Each message is parsed once and encoded once per distinct field list, not
  once per client; clients with the same fields share the encoded bytes.
* Each client has its own bounded queue and writer task, so one slow socket
  never delays another.  A client whose queue is full loses its oldest queued
  messages (the newest are kept) and its next message says how many it missed
  (``"missed": n``).  A client whose socket accepts nothing for
  ``stall_timeout`` seconds (default 30, the ``client_stall_seconds`` setting)
  is given up: its writer raises :class:`Stalled` and the connection is closed
  with 1013 (try again later).  Sends are awaited directly; the stall clock is one
  timer per connection, not a task and a timer per message (:mod:`~livedata.gateway.stall`).
* Recovery: a client that reconnects with the ``epoch`` and ``seq`` it saw last
  gets one ``RECOVERY`` message holding, in order, exactly the LIVE_DATA it
  missed (``recovered: true``), then live data again; when they are no longer in
  the channel's short history (older than it, or the epoch changed),
  ``recovered: false`` and the client fills the gap from the history API.  The
  history is the pub/sub's (``PubSub.history_seconds``, 180 s by default: the
  ``live_history_seconds`` setting), so a drop of up to that long recovers exactly.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from livedata import observe
from livedata.bus.base import PubSub
from livedata.errors import BusError
from livedata.gateway.stall import StallClock, Stalled

__all__ = ["Hub", "LiveClient", "Stalled"]

log = logging.getLogger("livedata.gateway.hub")

Fields = tuple[str, ...]
Listener = Callable[[dict[str, Any], dict[str, Any]], None]
"""An in-process consumer of a channel: called with (values, head) where head has ts, seq, epoch."""


class LiveClient:
    """One live connection: its channel, its fields and its outgoing queue.

    The writer awaits each send directly: no task, timer or ``wait_for`` per message;
    the stall clock is one timer per connection (:class:`~livedata.gateway.stall.StallClock`).
    """

    def __init__(
        self,
        send: Callable[[str], Awaitable[None]],
        queue_max: int = 64,
        stall_timeout: float = 30.0,
    ) -> None:
        self._send = send
        self.queue_max = queue_max
        self.stall_timeout = stall_timeout
        self.queue: deque[bytes] = deque()
        self.missed = 0
        self.delivered = 0
        self.channel: str | None = None
        self.fields: Fields | None = None
        self._held: list[tuple[int, bytes]] | None = None
        self._ready = asyncio.Event()

    def offer(self, data: bytes, seq: int = 0) -> None:
        """Queue ``data``; drops the oldest queued message when the queue is full."""
        if self._held is not None:
            self._held.append((seq, data))
            return
        if len(self.queue) >= self.queue_max:
            self.queue.popleft()
            self.missed += 1
            observe.DROPS.inc()
        self.queue.append(data)
        self._ready.set()

    def hold(self) -> None:
        """Keep live messages aside (while a recovery is read) instead of queueing them."""
        self._held = []

    def release(self, first: bytes, after_seq: int) -> None:
        """Queue ``first`` (never dropped), then the held messages newer than ``after_seq``."""
        held, self._held = self._held or [], None
        self.queue.clear()
        self.queue.append(first)
        self._ready.set()
        for seq, data in held:
            if seq > after_seq:
                self.offer(data, seq)

    async def writer(self) -> None:
        """Send queued messages until cancelled or the socket fails.

        Raises :class:`Stalled` when one send has made no progress for ``stall_timeout``.
        """
        clock = StallClock(self.stall_timeout)
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self.queue:
                    data = self.queue.popleft()
                    if self.missed:
                        data = data[:-1] + b',"missed":%d}' % self.missed
                        self.missed = 0
                    await clock.send(self._send(data.decode()))
                    self.delivered += 1
                    observe.DELIVERIES.inc()
        finally:
            clock.stop()


class Hub:
    def __init__(self, pubsub: PubSub, stall_timeout: float = 30.0) -> None:
        self.pubsub = pubsub
        self.stall_timeout = stall_timeout
        """Seconds a client's socket may take nothing before the client is given up."""
        self._channels: dict[str, dict[Fields, set[LiveClient]]] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._lock = asyncio.Lock()

    @property
    def channels(self) -> list[str]:
        return sorted(set(self._channels) | set(self._listeners))

    async def _need(self, channel: str) -> None:
        if channel not in self._channels and channel not in self._listeners:
            await self.pubsub.subscribe(channel, self._on_message)

    async def _release(self, channel: str) -> None:
        if channel not in self._channels and channel not in self._listeners:
            await self.pubsub.unsubscribe(channel)
        observe.CHANNELS.set(len(self.channels))

    async def listen(self, channel: str, listener: Listener) -> None:
        """Call ``listener`` (which must not block) for each message on ``channel``."""
        async with self._lock:
            await self._need(channel)
            self._listeners.setdefault(channel, []).append(listener)
            observe.CHANNELS.set(len(self.channels))

    async def unlisten(self, channel: str, listener: Listener) -> None:
        async with self._lock:
            listeners = self._listeners.get(channel, [])
            if listener in listeners:
                listeners.remove(listener)
                if not listeners:
                    del self._listeners[channel]
                    await self._release(channel)

    async def watch(
        self,
        client: LiveClient,
        channel: str,
        fields: Fields,
        since: tuple[str, int] | None = None,
    ) -> None:
        """Deliver ``channel``'s messages to ``client``, picking ``fields``; replaces earlier ones.

        With ``since`` = (epoch, seq), first recover what the client missed after it.
        """
        if since is not None:
            client.hold()
        await self._attach(client, channel, fields)
        if since is not None:
            await self._recover(client, channel, fields, since)

    async def _recover(
        self, client: LiveClient, channel: str, fields: Fields, since: tuple[str, int]
    ) -> None:
        epoch, last = since
        retained = []
        try:
            history = await self.pubsub.history(channel)
        except BusError as exc:
            log.warning("no recovery for %s: %s", channel, exc)
            history = []
        for data in history:
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if message.get("epoch") == epoch:
                retained.append(message)
        recovered = bool(retained) and retained[0]["seq"] <= last + 1
        missed = [m for m in retained if m["seq"] > last] if recovered else []
        frame = {
            "type": "RECOVERY",
            "recovered": recovered,
            "epoch": epoch,
            "messages": [
                {
                    "type": "LIVE_DATA",
                    "payload": _pick(m["values"], fields),
                    "ts": m["ts"],
                    "seq": m["seq"],
                    "epoch": epoch,
                }
                for m in missed
            ],
        }
        newest = missed[-1]["seq"] if missed else last
        client.release(orjson.dumps(frame), newest if recovered else -1)
        observe.RECOVERIES.labels("yes" if recovered else "no").inc()

    async def _attach(self, client: LiveClient, channel: str, fields: Fields) -> None:
        async with self._lock:
            self._detach(client)
            groups = self._channels.get(channel)
            if groups is None:
                await self._need(channel)
                groups = self._channels[channel] = {}
                observe.CHANNELS.set(len(self.channels))
            groups.setdefault(fields, set()).add(client)
            client.channel, client.fields = channel, fields

    async def leave(self, client: LiveClient) -> None:
        """Stop delivering to ``client``; unsubscribes a channel nobody watches any more."""
        async with self._lock:
            channel = self._detach(client)
            if channel is not None and not self._channels[channel]:
                del self._channels[channel]
                await self._release(channel)

    def _detach(self, client: LiveClient) -> str | None:
        channel, fields = client.channel, client.fields
        if channel is None or fields is None:
            return None
        groups = self._channels[channel]
        members = groups[fields]
        members.discard(client)
        if not members:
            del groups[fields]
        client.channel = client.fields = None
        return channel

    def _on_message(self, channel: str, data: bytes) -> None:
        groups = self._channels.get(channel)
        listeners = self._listeners.get(channel)
        if not groups and not listeners:
            return
        try:
            message = orjson.loads(data)
            values = message["values"]
            head = {"ts": message["ts"], "seq": message["seq"], "epoch": message["epoch"]}
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("dropping malformed message on %s: %s", channel, exc)
            return
        for listener in listeners or ():
            try:
                listener(values, head)
            except Exception:
                log.exception("a listener of %s failed", channel)
        seq = head["seq"]
        for fields, clients in (groups or {}).items():
            payload = _pick(values, fields)
            # exact size: orjson's own output holds ~8 KiB whatever its length, and a slow
            # client's queue keeps up to queue_max of these
            encoded = bytes(
                memoryview(orjson.dumps({"type": "LIVE_DATA", "payload": payload, **head}))
            )
            for client in clients:
                client.offer(encoded, seq)


def _pick(values: dict[str, Any], fields: Fields) -> dict[str, Any]:
    return {name: values[name] for name in fields if name in values}
