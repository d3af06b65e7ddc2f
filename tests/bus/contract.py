"""The log and pub/sub contracts, run on every bus backend.

Subclass :class:`LogContract` / :class:`PubSubContract` as ``Test<Backend>Log`` /
``Test<Backend>PubSub`` and implement ``make_url`` to return the URL of a fresh
log or pub/sub that no other test uses.  ``known_failures`` maps a test name to
the reason a backend is known to fail it: the test then runs as a strict xfail,
so it turns into a failure as soon as the backend is fixed and the entry can go.
"""

from __future__ import annotations

import abc
import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar

import pytest

from livedata.bus import Log, PubSub, open_log, open_pubsub
from livedata.model import Kind, Record, live_channel

TIMEOUT = 5.0
"""Seconds a test waits for something that should happen."""

BLOCKED = 0.2
"""Seconds that an operation which should wait must still be waiting after."""


def unique_id(prefix: str = "t") -> str:
    """A fresh name, valid as a tenant, machine or bus name."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def parsed(record: Record) -> bool:
    """Whether a record's values were parsed (its ``values`` slot is set): a record read
    from the log parses them on their first read only."""
    try:
        Record.values.__get__(record)  # type: ignore[attr-defined]  # the slot's descriptor
    except AttributeError:
        return False
    return True


def rec(chassis: str, ts: int, tenant: str = "tenant-1") -> Record:
    return Record(tenant, chassis, "vehicle_can", ts, Kind.REALTIME, {"x": ts})


def keys(records: list[Record]) -> list[tuple[str, int]]:
    """(chassis, ts) per record, grouped by chassis, keeping the order within each chassis.

    The log orders records per chassis (its key), not across chassis.
    """
    return sorted(((r.chassis, r.ts) for r in records), key=lambda k: k[0])


async def eventually(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait until ``predicate()`` holds; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"condition not reached within {timeout} s")
        await asyncio.sleep(0.005)


class _KnownFailures:
    known_failures: ClassVar[dict[str, str]] = {}

    @pytest.fixture(autouse=True)
    def _mark_known_failures(self, request: pytest.FixtureRequest) -> None:
        reason = self.known_failures.get(request.node.originalname)
        if reason:
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


class Consumer:
    """A task reading ``group`` from ``log`` into ``records``; ``work`` seconds per batch."""

    def __init__(self, log: Log, group: str, work: float = 0.0) -> None:
        self.records: list[Record] = []
        self.batches = 0
        self._log, self._group, self._work = log, group, work
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for batch in self._log.consume(self._group):
            self.records.extend(batch)
            self.batches += 1
            if self._work:
                await asyncio.sleep(self._work)


class LogContract(_KnownFailures, abc.ABC):
    """What every :class:`~livedata.bus.base.Log` does; subclassed per backend."""

    ready_delay = 0.05
    """Seconds a consumer is given to join its group before records are appended."""

    @abc.abstractmethod
    def make_url(self, capacity: int | None = None) -> str:
        """The URL of a fresh log; ``capacity`` bounds the records not yet consumed."""

    @pytest.fixture
    async def open_logs(self) -> AsyncIterator[Callable[[str], Awaitable[Log]]]:
        """Opens started logs (several on one URL act like several processes); closes them."""
        opened: list[Log] = []
        self._consumers: list[Consumer] = []

        async def open_(url: str) -> Log:
            log = open_log(url)
            await log.start()
            opened.append(log)
            return log

        yield open_
        for log in opened:
            await log.close()
        tasks = [consumer.task for consumer in self._consumers]
        _, pending = await asyncio.wait(tasks, timeout=TIMEOUT) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        assert not pending, "consume loops still running after close"

    def consumer(self, log: Log, group: str, work: float = 0.0) -> Consumer:
        """A consumer task that the fixture waits for after closing the logs."""
        consumer = Consumer(log, group, work)
        self._consumers.append(consumer)
        return consumer

    async def consumers_ready(self, *consumers: Consumer) -> None:
        await asyncio.sleep(self.ready_delay)
        for consumer in consumers:
            assert not consumer.task.done(), consumer.task

    async def test_append_then_consume_in_order(self, open_logs) -> None:
        """A consumer gets every appended record once, in append order per chassis."""
        log = await open_logs(self.make_url())
        consumer = self.consumer(log, "g")
        await self.consumers_ready(consumer)
        sent = [rec(f"m{i % 3}", 1000 + i) for i in range(30)]
        for i in range(0, 30, 10):
            await log.append(sent[i : i + 10])
        await eventually(lambda: len(consumer.records) >= 30)
        await asyncio.sleep(0.05)
        assert keys(consumer.records) == keys(sent)
        assert next(r for r in consumer.records if r.chassis == "m0").values == {"x": 1000}

    async def test_order_per_chassis_is_kept(self, open_logs) -> None:
        """Records of one chassis arrive in the order they were appended, across appenders."""
        url = self.make_url()
        log = await open_logs(url)
        consumer = self.consumer(log, "g")
        await self.consumers_ready(consumer)

        async def machine(chassis: str) -> None:
            appender = await open_logs(url)
            for start in range(0, 100, 5):
                await appender.append([rec(chassis, ts) for ts in range(start, start + 5)])
                await asyncio.sleep(random.random() / 1000)

        await asyncio.gather(*(machine(f"m{n}") for n in range(4)))
        await eventually(lambda: len(consumer.records) >= 400)
        for n in range(4):
            got = [r.ts for r in consumer.records if r.chassis == f"m{n}"]
            assert got == list(range(100))

    async def test_same_group_consumers_share_exactly_once(self, open_logs) -> None:
        """Two consumers of one group each get a share, together every record exactly once."""
        url = self.make_url()
        first = self.consumer(await open_logs(url), "g", work=0.002)
        second = self.consumer(await open_logs(url), "g", work=0.002)
        await self.consumers_ready(first, second)
        log = await open_logs(url)
        sent = [rec(f"m{i % 20}", i) for i in range(400)]
        for i in range(0, 400, 5):
            await log.append(sent[i : i + 5])
            await asyncio.sleep(0.001)
        await eventually(lambda: len(first.records) + len(second.records) >= 400)
        await asyncio.sleep(0.05)
        assert first.records and second.records
        assert sorted(keys(first.records + second.records)) == sorted(keys(sent))

    async def test_one_chassis_goes_to_one_consumer_of_a_group(self, open_logs) -> None:
        """While a group is stable, all records of a chassis go to one of its consumers."""
        url = self.make_url()
        first = self.consumer(await open_logs(url), "g", work=0.002)
        second = self.consumer(await open_logs(url), "g", work=0.002)
        await self.consumers_ready(first, second)
        log = await open_logs(url)
        pick = random.Random(7)
        for i in range(0, 400, 5):
            await log.append([rec(f"m{pick.randrange(20)}", j) for j in range(i, i + 5)])
            await asyncio.sleep(0.001)
        await eventually(lambda: len(first.records) + len(second.records) >= 400)
        shared = {r.chassis for r in first.records} & {r.chassis for r in second.records}
        assert not shared, f"chassis consumed by both consumers: {sorted(shared)}"

    async def test_each_group_gets_everything(self, open_logs) -> None:
        """Two groups each get every record, in order per chassis, independently of each other."""
        url = self.make_url()
        fast = self.consumer(await open_logs(url), "distribute")
        slow = self.consumer(await open_logs(url), "alerts", work=0.005)
        await self.consumers_ready(fast, slow)
        log = await open_logs(url)
        sent = [rec(f"m{i % 4}", i) for i in range(200)]
        for i in range(0, 200, 20):
            await log.append(sent[i : i + 20])
        await eventually(lambda: len(fast.records) >= 200 and len(slow.records) >= 200)
        await asyncio.sleep(0.05)
        assert keys(fast.records) == keys(sent)
        assert keys(slow.records) == keys(sent)

    async def test_consume_ends_after_close(self, open_logs) -> None:
        """Closing the log ends a waiting consume loop, and a later consume ends at once."""
        log = await open_logs(self.make_url())
        consumer = self.consumer(log, "g")
        await self.consumers_ready(consumer)
        await log.append([rec("m1", 1)])
        await eventually(lambda: len(consumer.records) == 1)
        await log.close()
        await asyncio.wait_for(consumer.task, TIMEOUT)
        late = self.consumer(log, "g")
        await asyncio.wait_for(late.task, TIMEOUT)
        assert late.records == []

    async def test_append_waits_when_full_until_consumed(self, open_logs) -> None:
        """Beyond ``capacity`` unconsumed records, append waits (no drop) until a consumer reads."""
        log = await open_logs(self.make_url(capacity=10))
        batches = log.consume("g")
        first = asyncio.ensure_future(anext(batches))  # joins the group, then waits
        await asyncio.sleep(self.ready_delay)
        await log.append([rec("m1", 0)])
        assert keys(await asyncio.wait_for(first, TIMEOUT)) == [("m1", 0)]

        await asyncio.wait_for(log.append([rec("m1", ts) for ts in range(1, 11)]), TIMEOUT)
        blocked = asyncio.ensure_future(log.append([rec("m1", 11)]))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(blocked), BLOCKED)
        assert not blocked.done()

        got = await asyncio.wait_for(anext(batches), TIMEOUT)  # reading frees room
        await asyncio.wait_for(blocked, TIMEOUT)
        while len(got) < 11:
            got += await asyncio.wait_for(anext(batches), TIMEOUT)
        assert [r.ts for r in got] == list(range(1, 12))
        await batches.aclose()


class PubSubContract(_KnownFailures, abc.ABC):
    """What every :class:`~livedata.bus.base.PubSub` does; subclassed per backend."""

    @abc.abstractmethod
    def make_url(self) -> str:
        """The URL of a fresh pub/sub that no other test uses."""

    @pytest.fixture
    def url(self) -> str:
        return self.make_url()

    @pytest.fixture
    async def open_pubsub_(self, url: str) -> AsyncIterator[Callable[[], Awaitable[PubSub]]]:
        """Opens started pub/subs on the test's URL (each like another process); closes them."""
        opened: list[PubSub] = []

        async def open_() -> PubSub:
            pubsub = open_pubsub(url)
            await pubsub.start()
            opened.append(pubsub)
            return pubsub

        yield open_
        for pubsub in opened:
            await pubsub.close()

    @staticmethod
    def collector() -> tuple[list[tuple[str, bytes]], Callable[[str, bytes], None]]:
        got: list[tuple[str, bytes]] = []
        return got, lambda channel, message: got.append((channel, message))

    async def test_subscriber_gets_only_its_channel(self, open_pubsub_) -> None:
        """A subscriber receives the messages of its channel and none of other channels."""
        subscriber, publisher = await open_pubsub_(), await open_pubsub_()
        mine = live_channel("tenant-1", "m1", "vehicle_can")
        other = live_channel("tenant-1", "m2", "vehicle_can")
        got, handler = self.collector()
        await subscriber.subscribe(mine, handler)
        await publisher.publish(other, b"not for you")
        await publisher.publish(mine, b"hello")
        await eventually(lambda: len(got) >= 1)
        await asyncio.sleep(0.05)
        assert got == [(mine, b"hello")]

    async def test_messages_arrive_in_order_and_intact(self, open_pubsub_) -> None:
        """Messages from one publisher arrive in publish order, byte for byte."""
        subscriber, publisher = await open_pubsub_(), await open_pubsub_()
        got, handler = self.collector()
        await subscriber.subscribe("c", handler)
        sent = [bytes([n % 256]) * (n + 1) + b"\x00\xff" for n in range(100)]
        for message in sent:
            await publisher.publish("c", message)
        await eventually(lambda: len(got) >= 100)
        assert [message for _, message in got] == sent

    async def test_publish_many_is_publish_in_batch_order(self, open_pubsub_) -> None:
        """A batch publish delivers each message on its channel in batch order and keeps it
        in the channel's history, as one publish per message would; an empty batch is a no-op."""
        subscriber, publisher = await open_pubsub_(), await open_pubsub_()
        got, handler = self.collector()
        await subscriber.subscribe("a", handler)
        await subscriber.subscribe("b", handler)
        batch = [("b" if n % 3 == 0 else "a", b"%d" % n) for n in range(1_200)]
        await publisher.publish_many([])
        await publisher.publish_many(batch[:1])
        await publisher.publish_many(batch[1:])
        await eventually(lambda: len(got) >= len(batch))
        assert got == batch
        assert await subscriber.history("b") == [m for channel, m in batch if channel == "b"]

    async def test_unsubscribe_stops_delivery(self, open_pubsub_) -> None:
        """After unsubscribe the handler is not called again; other subscribers still are."""
        subscriber, sentinel, publisher = (
            await open_pubsub_(),
            await open_pubsub_(),
            await open_pubsub_(),
        )
        got, handler = self.collector()
        seen, sentinel_handler = self.collector()
        await subscriber.subscribe("c", handler)
        await sentinel.subscribe("c", sentinel_handler)
        await publisher.publish("c", b"1")
        await eventually(lambda: len(got) == 1 and len(seen) == 1)
        await subscriber.unsubscribe("c")
        await publisher.publish("c", b"2")
        await eventually(lambda: len(seen) == 2)
        await asyncio.sleep(0.05)
        assert got == [("c", b"1")]

    async def test_fan_out_to_every_pubsub_on_the_url(self, open_pubsub_) -> None:
        """Two pub/sub objects on the same URL both receive a message published once."""
        first, second, publisher = await open_pubsub_(), await open_pubsub_(), await open_pubsub_()
        got_first, handler_first = self.collector()
        got_second, handler_second = self.collector()
        await first.subscribe("c", handler_first)
        await second.subscribe("c", handler_second)
        await publisher.publish("c", b"to all")
        await eventually(lambda: len(got_first) == 1 and len(got_second) == 1)
        await asyncio.sleep(0.05)
        assert got_first == got_second == [("c", b"to all")]

    async def test_publish_without_subscriber_is_fine_and_not_kept(self, open_pubsub_) -> None:
        """Publishing to nobody does not fail, and a later subscriber does not get that message."""
        subscriber, publisher = await open_pubsub_(), await open_pubsub_()
        await publisher.publish("c", b"into the void")
        got, handler = self.collector()
        await subscriber.subscribe("c", handler)
        await publisher.publish("c", b"marker")
        await eventually(lambda: len(got) >= 1)
        await asyncio.sleep(0.05)
        assert got == [("c", b"marker")]

    async def test_subscribe_again_replaces_the_handler(self, open_pubsub_) -> None:
        """One handler per channel per object: a second subscribe replaces the first handler."""
        subscriber, publisher = await open_pubsub_(), await open_pubsub_()
        old, old_handler = self.collector()
        new, new_handler = self.collector()
        await subscriber.subscribe("c", old_handler)
        await subscriber.subscribe("c", new_handler)
        await publisher.publish("c", b"m")
        await eventually(lambda: len(new) >= 1)
        await asyncio.sleep(0.05)
        assert (old, new) == ([], [("c", b"m")])

    async def test_unsubscribe_unknown_channel_is_ignored(self, open_pubsub_) -> None:
        """Unsubscribing from a channel never subscribed does nothing and raises nothing."""
        pubsub = await open_pubsub_()
        got, handler = self.collector()
        await pubsub.subscribe("kept", handler)
        await pubsub.unsubscribe("never-subscribed")
        await pubsub.publish("kept", b"still here")
        await eventually(lambda: len(got) >= 1)
        assert got == [("kept", b"still here")]

    async def test_close_ends_subscriptions(self, open_pubsub_) -> None:
        """After close a pub/sub object's handlers are no longer called."""
        subscriber, sentinel, publisher = (
            await open_pubsub_(),
            await open_pubsub_(),
            await open_pubsub_(),
        )
        got, handler = self.collector()
        seen, sentinel_handler = self.collector()
        await subscriber.subscribe("c", handler)
        await sentinel.subscribe("c", sentinel_handler)
        await subscriber.close()
        await publisher.publish("c", b"after close")
        await eventually(lambda: len(seen) >= 1)
        await asyncio.sleep(0.05)
        assert got == []

    async def test_raising_handler_does_not_stop_others(self, open_pubsub_) -> None:
        """A handler that raises neither fails the publisher nor starves other subscribers."""
        broken, healthy, publisher = (
            await open_pubsub_(),
            await open_pubsub_(),
            await open_pubsub_(),
        )

        def explode(channel: str, message: bytes) -> None:
            raise RuntimeError("handler bug")

        got, handler = self.collector()
        await broken.subscribe("c", explode)
        await healthy.subscribe("c", handler)
        await publisher.publish("c", b"1")
        await publisher.publish("c", b"2")
        await eventually(lambda: len(got) >= 2)
        assert got == [("c", b"1"), ("c", b"2")]
