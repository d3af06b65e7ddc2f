"""In-process log and pub/sub: the embedded shape runs on these.

Objects opened with the same URL (``memory://`` or ``memory://name``) in one
process share one broker, like clients of one server, so roles wired separately
still meet.

Under stress: the log holds at most ``capacity`` records not yet consumed by the
slowest existing group; ``append`` then waits (backpressure to ingest) instead of
growing memory or dropping.  Pub/sub calls each subscriber's handler inline; the
gateway's handler only enqueues, so a slow browser never slows the publisher.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from urllib.parse import parse_qs, urlsplit

from livedata.bus.base import Handler, Log, PubSub
from livedata.errors import BusError
from livedata.model import Record

DEFAULT_CAPACITY = 100_000


class _LogBroker:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records: list[Record] = []
        self.base = 0  # offset of records[0]
        self.offsets: dict[str, int] = {}
        self.changed = asyncio.Condition()

    @property
    def end(self) -> int:
        return self.base + len(self.records)

    def backlog(self) -> int:
        if not self.offsets:
            return 0
        return self.end - min(self.offsets.values())

    def trim(self) -> None:
        floor = min(self.offsets.values()) if self.offsets else self.end - self.capacity
        drop = max(0, floor - self.base)
        if drop:
            del self.records[:drop]
            self.base += drop


class _PubSubBroker:
    def __init__(self) -> None:
        self.handlers: dict[str, list[Handler]] = {}


_log_brokers: dict[str, _LogBroker] = {}
_pubsub_brokers: dict[str, _PubSubBroker] = {}


def _name(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc + parts.path


class MemoryLog(Log):
    """An in-process log; ``memory://name?capacity=N`` (default 100,000 records)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        query = parse_qs(urlsplit(url).query)
        capacity = int(query.get("capacity", [DEFAULT_CAPACITY])[0])
        name = _name(url)
        if name not in _log_brokers:
            _log_brokers[name] = _LogBroker(capacity)
        self._broker = _log_brokers[name]
        self._closed = False

    def backlog(self) -> int:
        """Records appended but not yet consumed by the slowest group."""
        return self._broker.backlog()

    async def append(self, records: Sequence[Record]) -> None:
        if self._closed:
            raise BusError("log is closed")
        broker = self._broker
        async with broker.changed:
            await broker.changed.wait_for(
                lambda: self._closed or broker.backlog() < broker.capacity
            )
            if self._closed:
                raise BusError("log is closed")
            broker.records.extend(records)
            broker.trim()
            broker.changed.notify_all()

    async def consume(self, group: str) -> AsyncIterator[list[Record]]:
        broker = self._broker
        broker.offsets.setdefault(group, broker.base)
        while not self._closed:
            async with broker.changed:
                await broker.changed.wait_for(
                    lambda: self._closed or broker.offsets[group] < broker.end
                )
                if self._closed:
                    return
                start = broker.offsets[group] - broker.base
                batch = broker.records[start : start + 1000]
                broker.offsets[group] += len(batch)
                broker.trim()
                broker.changed.notify_all()
            yield batch

    async def close(self) -> None:
        self._closed = True
        async with self._broker.changed:
            self._broker.changed.notify_all()


class MemoryPubSub(PubSub):
    """In-process pub/sub; handlers are called inline on publish."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._broker = _pubsub_brokers.setdefault(_name(url), _PubSubBroker())
        self._mine: dict[str, Handler] = {}

    async def publish(self, channel: str, message: bytes) -> None:
        for handler in self._broker.handlers.get(channel, ()):
            handler(channel, message)

    async def subscribe(self, channel: str, handler: Handler) -> None:
        await self.unsubscribe(channel)
        self._mine[channel] = handler
        self._broker.handlers.setdefault(channel, []).append(handler)

    async def unsubscribe(self, channel: str) -> None:
        handler = self._mine.pop(channel, None)
        if handler is None:
            return
        handlers = self._broker.handlers.get(channel, [])
        handlers.remove(handler)
        if not handlers:
            del self._broker.handlers[channel]

    async def close(self) -> None:
        for channel in list(self._mine):
            await self.unsubscribe(channel)
