"""In-process log and pub/sub: the embedded shape runs on these.

Objects opened with the same URL (``memory://`` or ``memory://name``) in one
event loop share one broker, like clients of one server, so roles wired
separately still meet.

The log is split into partitions by chassis (``?partitions=N``, default 4), like
a Kafka topic keyed by chassis: the consumers of a group divide the partitions
among themselves, so each chassis is read by one consumer at a time and in
order, and a consumer that leaves hands its partitions to the others.

Under stress: the log holds at most ``capacity`` records (``?capacity=N``,
default 100,000) not yet consumed by the slowest existing group; ``append``
then waits (backpressure to ingest) instead of growing memory or dropping.
With no group the oldest records are discarded beyond ``capacity``.  Pub/sub
keeps each channel's last ``history_seconds`` (at most ``HISTORY_MAX``
messages) for clients that reconnect, and
calls each subscriber's handler inline; a handler that raises is logged and the
others still get the message.  The gateway's handler only enqueues, so a slow
browser never slows the publisher.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit
from weakref import WeakKeyDictionary

from livedata.bus.base import HISTORY_MAX, Handler, LiveMessage, Log, Message, PubSub
from livedata.errors import BusError
from livedata.model import Record

log = logging.getLogger("livedata.bus.memory")

DEFAULT_CAPACITY = 100_000
DEFAULT_PARTITIONS = 4
BATCH = 1_000


class _Partition:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.base = 0  # offset of records[0]

    @property
    def end(self) -> int:
        return self.base + len(self.records)


class _LogBroker:
    def __init__(self, capacity: int, partitions: int) -> None:
        self.capacity = capacity
        self.partitions = [_Partition() for _ in range(partitions)]
        self.offsets: dict[str, list[int]] = {}
        self.members: dict[str, list[object]] = {}
        self.changed = asyncio.Condition()

    def backlog(self) -> int:
        if not self.offsets:
            return 0
        return sum(
            p.end - min(offsets[i] for offsets in self.offsets.values())
            for i, p in enumerate(self.partitions)
        )

    def trim(self) -> None:
        total = sum(len(p.records) for p in self.partitions)
        for i, p in enumerate(self.partitions):
            if self.offsets:
                floor = min(offsets[i] for offsets in self.offsets.values())
            else:
                floor = p.end - max(0, self.capacity - (total - len(p.records)))
            drop = max(0, floor - p.base)
            if drop:
                del p.records[:drop]
                p.base += drop

    def assigned(self, group: str, member: object) -> list[int]:
        members = self.members[group]
        return [i for i in range(len(self.partitions)) if members[i % len(members)] is member]


_Kept = bytes | tuple[dict[str, Any], dict[str, Any]]


class _PubSubBroker:
    def __init__(self) -> None:
        self.handlers: dict[str, list[Handler]] = {}
        self.history: dict[str, deque[tuple[float, _Kept]]] = {}

    def keep(self, channel: str, message: Message, seconds: float) -> None:
        now = time.monotonic()
        kept = self.history.get(channel)
        if kept is None:
            kept = self.history[channel] = deque(maxlen=HISTORY_MAX)
        if isinstance(message, LiveMessage):
            # plain tuples of plain values: the collector stops tracking them, so a long
            # history adds nothing to the work of a full collection
            kept.append((now, (message.values, message.head)))
        else:
            # An exact-size copy: orjson's output keeps its whole (~4 KiB) buffer for life, so
            # 180 s of history at 10 Hz per channel would take 16 times the memory it needs.
            kept.append((now, bytes(memoryview(message))))
        while kept and now - kept[0][0] > seconds:
            kept.popleft()


_log_brokers: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _LogBroker]] = (
    WeakKeyDictionary()
)
_pubsub_brokers: WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _PubSubBroker]] = (
    WeakKeyDictionary()
)


def _name(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc + parts.path


class MemoryLog(Log):
    """An in-process log; ``memory://name?capacity=N&partitions=P``."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        query = parse_qs(urlsplit(url).query)
        self._capacity = int(query.get("capacity", [DEFAULT_CAPACITY])[0])
        self._partitions = int(query.get("partitions", [DEFAULT_PARTITIONS])[0])
        self._name = _name(url)
        self._closed = False

    @property
    def _broker(self) -> _LogBroker:
        brokers = _log_brokers.setdefault(asyncio.get_running_loop(), {})
        broker = brokers.get(self._name)
        if broker is None:
            broker = brokers[self._name] = _LogBroker(self._capacity, self._partitions)
        return broker

    def backlog(self) -> int:
        """Records appended but not yet consumed by the slowest group."""
        return self._broker.backlog()

    async def append(self, records: Sequence[Record]) -> None:
        broker = self._broker
        async with broker.changed:
            await broker.changed.wait_for(
                lambda: self._closed or broker.backlog() < broker.capacity
            )
            if self._closed:
                raise BusError("log is closed")
            count = len(broker.partitions)
            for record in records:
                broker.partitions[zlib.crc32(record.chassis.encode()) % count].records.append(
                    record
                )
            broker.trim()
            broker.changed.notify_all()

    async def consume(self, group: str) -> AsyncIterator[list[Record]]:
        broker = self._broker
        member = object()
        if group not in broker.offsets:
            broker.offsets[group] = [p.base for p in broker.partitions]
        broker.members.setdefault(group, []).append(member)
        offsets = broker.offsets[group]

        def ready() -> bool:
            return self._closed or any(
                offsets[i] < broker.partitions[i].end for i in broker.assigned(group, member)
            )

        try:
            while not self._closed:
                async with broker.changed:
                    await broker.changed.wait_for(ready)
                    if self._closed:
                        return
                    batch: list[Record] = []
                    for i in broker.assigned(group, member):
                        part = broker.partitions[i]
                        start = offsets[i] - part.base
                        taken = part.records[start : start + BATCH - len(batch)]
                        offsets[i] += len(taken)
                        batch.extend(taken)
                    broker.trim()
                    broker.changed.notify_all()
                if batch:
                    yield batch
        finally:
            broker.members[group].remove(member)

    async def close(self) -> None:
        self._closed = True
        broker = self._broker
        async with broker.changed:
            broker.changed.notify_all()


class MemoryPubSub(PubSub):
    """In-process pub/sub; handlers are called inline on publish."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._name = _name(url)
        self._mine: dict[str, Handler] = {}

    @property
    def _broker(self) -> _PubSubBroker:
        brokers = _pubsub_brokers.setdefault(asyncio.get_running_loop(), {})
        return brokers.setdefault(self._name, _PubSubBroker())

    async def publish_many(self, messages: Sequence[tuple[str, Message]]) -> None:
        """Hands each message to the subscribers as it is: a :class:`LiveMessage` object
        stays an object (no JSON round trip in process)."""
        broker = self._broker
        for channel, message in messages:
            broker.keep(channel, message, self.history_seconds)
            for handler in list(broker.handlers.get(channel, ())):
                try:
                    handler(channel, message)
                except Exception:
                    log.exception("a subscriber of %s failed", channel)

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

    async def history(self, channel: str) -> list[Message]:
        kept = self._broker.history.get(channel, ())
        cutoff = time.monotonic() - self.history_seconds
        return [
            message if isinstance(message, bytes) else LiveMessage.of(*message)
            for at, message in kept
            if at >= cutoff
        ]

    async def close(self) -> None:
        for channel in list(self._mine):
            await self.unsubscribe(channel)
