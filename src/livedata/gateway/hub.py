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

import orjson

from livedata import observe
from livedata.bus.base import PubSub

log = logging.getLogger("livedata.gateway.hub")

Fields = tuple[str, ...]


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
        self._lock = asyncio.Lock()

    @property
    def channels(self) -> list[str]:
        return list(self._channels)

    async def watch(self, client: LiveClient, channel: str, fields: Fields) -> None:
        """Deliver ``channel``'s messages to ``client``, picking ``fields``; replaces earlier ones."""
        async with self._lock:
            self._detach(client)
            groups = self._channels.get(channel)
            if groups is None:
                groups = self._channels[channel] = {}
                await self.pubsub.subscribe(channel, self._on_message)
                observe.CHANNELS.set(len(self._channels))
            groups.setdefault(fields, set()).add(client)
            client.channel, client.fields = channel, fields

    async def leave(self, client: LiveClient) -> None:
        """Stop delivering to ``client``; unsubscribes a channel nobody watches any more."""
        async with self._lock:
            channel = self._detach(client)
            if channel is not None and not self._channels[channel]:
                del self._channels[channel]
                await self.pubsub.unsubscribe(channel)
                observe.CHANNELS.set(len(self._channels))

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
        if not groups:
            return
        try:
            message = orjson.loads(data)
            values = message["values"]
            head = {"ts": message["ts"], "seq": message["seq"], "epoch": message["epoch"]}
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            log.warning("dropping malformed message on %s: %s", channel, exc)
            return
        for fields, clients in groups.items():
            payload = {name: values[name] for name in fields if name in values}
            encoded = orjson.dumps({"type": "LIVE_DATA", "payload": payload, **head})
            for client in clients:
                client.offer(encoded)
