"""The live hub: pub/sub channels in, filtered LIVE_DATA out to WebSocket clients.

* The hub subscribes to a channel only while some client wants it and
  unsubscribes when the last one leaves (no pattern subscription to everything).
* Each message is parsed once and encoded once per distinct field list, not
  once per client; clients with the same fields share the encoded bytes.
* Each client has its own bounded queue and writer task, so one slow socket
  never delays another.  A client whose queue is full loses its oldest queued
  messages (the newest are kept) and its next message says how many it missed
  (``"missed": n``).
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

log = logging.getLogger("livedata.gateway.hub")

Fields = tuple[str, ...]
Listener = Callable[[dict[str, Any], dict[str, Any]], None]
"""An in-process consumer of a channel: called with (values, head) where head has ts, seq, epoch."""


class LiveClient:
    """One live connection: its channel, its fields and its outgoing queue."""

    def __init__(self, send: Callable[[str], Awaitable[None]], queue_max: int = 64) -> None:
        self._send = send
        self.queue_max = queue_max
        self.queue: deque[bytes] = deque()
        self.missed = 0
        self.delivered = 0
        self.channel: str | None = None
        self.fields: Fields | None = None
        self._ready = asyncio.Event()

    def offer(self, data: bytes) -> None:
        """Queue ``data``; drops the oldest queued message when the queue is full."""
        if len(self.queue) >= self.queue_max:
            self.queue.popleft()
            self.missed += 1
            observe.DROPS.inc()
        self.queue.append(data)
        self._ready.set()

    async def writer(self) -> None:
        """Send queued messages until cancelled or the socket fails."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self.queue:
                data = self.queue.popleft()
                if self.missed:
                    data = data[:-1] + b',"missed":%d}' % self.missed
                    self.missed = 0
                await self._send(data.decode())
                self.delivered += 1
                observe.DELIVERIES.inc()


class Hub:
    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub
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

    async def watch(self, client: LiveClient, channel: str, fields: Fields) -> None:
        """Deliver ``channel``'s messages to ``client``, picking ``fields``; replaces earlier ones."""
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
        for fields, clients in (groups or {}).items():
            payload = {name: values[name] for name in fields if name in values}
            encoded = orjson.dumps({"type": "LIVE_DATA", "payload": payload, **head})
            for client in clients:
                client.offer(encoded)
