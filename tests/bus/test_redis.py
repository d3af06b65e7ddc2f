"""The pub/sub contract on Redis, and surviving a Redis restart."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest

from livedata.bus import open_pubsub
from livedata.bus.base import HISTORY_MAX, HISTORY_SECONDS
from livedata.bus.redis import RedisPubSub
from livedata.errors import BusError
from tests.bus.contract import PubSubContract, eventually, unique_id
from tests.servers.redis import RedisServer, start_redis


class TestRedisPubSub(PubSubContract):
    @pytest.fixture(autouse=True)
    def _server(self, redis_server: RedisServer) -> None:
        self.server = redis_server

    def make_url(self) -> str:
        # Redis channels are server-wide: a prefix per test keeps tests apart.
        return f"{self.server.url}?prefix={unique_id('test')}/"


def test_redis_url_opens_redis_pubsub() -> None:
    """``redis://`` URLs open :class:`RedisPubSub`."""
    assert isinstance(open_pubsub("redis://127.0.0.1:6379/0"), RedisPubSub)


async def test_prefix_separates_deployments(redis_server: RedisServer) -> None:
    """Pub/subs with different ``prefix`` do not see each other's channels; handlers get bare names."""
    ours, theirs = (
        open_pubsub(f"{redis_server.url}?prefix={unique_id()}/"),
        open_pubsub(f"{redis_server.url}?prefix={unique_id()}/"),
    )
    await ours.start()
    await theirs.start()
    try:
        got: list[tuple[str, bytes]] = []
        await ours.subscribe("c", lambda channel, message: got.append((channel, message)))
        await theirs.publish("c", b"theirs")
        await ours.publish("c", b"ours")
        await eventually(lambda: len(got) >= 1)
        await asyncio.sleep(0.05)
        assert got == [("c", b"ours")]
    finally:
        await ours.close()
        await theirs.close()


async def test_start_fails_with_bus_error_when_redis_is_unreachable() -> None:
    """Starting against a port where nothing listens raises BusError, not a redis-py error."""
    from tests.servers import free_port

    pubsub = open_pubsub(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(BusError):
        await pubsub.start()
    await pubsub.close()


async def test_history_keeps_recent_messages_for_any_reader(redis_server: RedisServer) -> None:
    """Messages published with nobody subscribed are in the channel's history, in order, for every object."""
    url = f"{redis_server.url}?prefix={unique_id()}/"
    publisher, reader = open_pubsub(url), open_pubsub(url)
    await publisher.start()
    await reader.start()
    try:
        for n in range(3):
            await publisher.publish("c", b"m%d" % n)
        await publisher.publish("other", b"x")
        assert await reader.history("c") == [b"m0", b"m1", b"m2"]
        assert await reader.history("never-published") == []
    finally:
        await publisher.close()
        await reader.close()


async def test_batch_after_script_flush_loads_the_script_again(redis_server: RedisServer) -> None:
    """A batch published after Redis forgot the publish script (SCRIPT FLUSH, as a restart does) is kept and sent at once, not backlogged."""
    from redis.asyncio import Redis

    pubsub = RedisPubSub(f"{redis_server.url}?prefix={unique_id()}/")
    await pubsub.start()
    admin = Redis.from_url(redis_server.url)
    try:
        await pubsub.publish_many([("a", b"1"), ("b", b"2")])
        await admin.script_flush()
        await pubsub.publish_many([("a", b"3"), ("b", b"4"), ("a", b"5")])
        assert pubsub.backlog == 0
        assert await pubsub.history("a") == [b"1", b"3", b"5"]
        assert await pubsub.history("b") == [b"2", b"4"]
    finally:
        await admin.aclose()
        await pubsub.close()


async def test_history_is_bounded_in_count_and_time(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """History holds the newest HISTORY_MAX messages, and none older than HISTORY_SECONDS."""
    import livedata.bus.redis as module

    pubsub = open_pubsub(f"{redis_server.url}?prefix={unique_id()}/")
    await pubsub.start()
    try:
        total = HISTORY_MAX + 150
        for n in range(total):
            await pubsub.publish("c", b"%d" % n)
        kept = await pubsub.history("c")
        assert kept == [b"%d" % n for n in range(total - HISTORY_MAX, total)]
        later = module.time.time() + HISTORY_SECONDS + 1
        monkeypatch.setattr(module.time, "time", lambda: later)
        assert await pubsub.history("c") == []
    finally:
        await pubsub.close()


async def test_history_stream_is_expired_on_its_first_message_then_every_trim_every(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new channel's stream gets its lifetime at once; it is renewed only TRIM_EVERY later."""
    from redis.asyncio import Redis

    import livedata.bus.redis as module

    prefix = f"{unique_id()}/"
    pubsub = open_pubsub(f"{redis_server.url}?prefix={prefix}")
    raw = Redis.from_url(redis_server.url)
    await pubsub.start()
    try:
        lifetime = (HISTORY_SECONDS + module.TRIM_EVERY) * 1000
        await pubsub.publish_many([("c", b"1"), ("d", b"1")])
        assert lifetime - 5000 < await raw.pttl(prefix + "c") <= lifetime
        await raw.persist(prefix + "c")
        await pubsub.publish_many([("c", b"2")])
        assert await raw.pttl(prefix + "c") == -1, "renewed before TRIM_EVERY"
        later = module.time.monotonic() + module.TRIM_EVERY
        monkeypatch.setattr(module.time, "monotonic", lambda: later)
        await pubsub.publish_many([("c", b"3")])
        assert lifetime - 5000 < await raw.pttl(prefix + "c") <= lifetime
        assert await pubsub.history("c") == [b"1", b"2", b"3"]
    finally:
        await pubsub.close()
        await raw.aclose()


@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisServer]:
    """A Redis server of this test alone, since the test restarts it."""
    server = start_redis(tmp_path)
    yield server
    server.stop()


async def test_restart_of_redis_is_survived(own_redis: RedisServer) -> None:
    """While Redis is down publish (and publish_many) keeps messages in a bounded backlog (the oldest dropped
    beyond it) and returns; once Redis is back they are published, in order, into the
    channel's history too, and subscriptions work again."""
    subscriber, publisher = open_pubsub(own_redis.url), open_pubsub(own_redis.url)
    small = open_pubsub(f"{own_redis.url}?backlog=10")
    for pubsub in (subscriber, publisher, small):
        await pubsub.start()
    assert isinstance(publisher, RedisPubSub) and isinstance(small, RedisPubSub)
    try:
        got: list[bytes] = []
        await subscriber.subscribe("c", lambda channel, message: got.append(message))
        await subscriber.subscribe("unsubscribed", lambda channel, message: got.append(b"no!"))
        await subscriber.unsubscribe("unsubscribed")
        await publisher.publish("c", b"before")
        await eventually(lambda: got == [b"before"])

        await asyncio.to_thread(own_redis.stop)
        during = [b"during %d" % n for n in range(100)]
        for message in during[:40]:
            await publisher.publish("c", message)
        await publisher.publish_many([("c", message) for message in during[40:]])
        for n in range(25):
            await small.publish("s", b"small %d" % n)
        assert publisher.backlog == 100 and small.backlog == 10 and small.dropped == 15
        await asyncio.to_thread(own_redis.start)

        await eventually(lambda: publisher.backlog == 0 and small.backlog == 0, timeout=15)
        assert await publisher.history("c") == during, "the restart's messages are recoverable"
        assert await small.history("s") == [b"small %d" % n for n in range(15, 25)]

        # Published before the subscriber has re-subscribed, a probe is lost (fire
        # and forget), so keep probing: one must arrive within the backoff bound.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        probe = 0
        while not any(message.startswith(b"after") for message in got):
            assert loop.time() < deadline, "no message after the restart within 15 s"
            probe += 1
            await publisher.publish("c", b"after %d" % probe)
            await asyncio.sleep(0.05)
        assert isinstance(subscriber, RedisPubSub)
        assert subscriber.connected and subscriber.reconnects >= 1
        await publisher.publish("unsubscribed", b"x")
        await publisher.publish("c", b"last")
        await eventually(lambda: got[-1] == b"last")
        assert got[0] == b"before" and b"no!" not in got
    finally:
        for pubsub in (subscriber, publisher, small):
            await pubsub.close()


async def test_subscriber_reads_what_redis_py_publishes_byte_for_byte(
    redis_server: RedisServer,
) -> None:
    """A burst published by redis-py (binary, CRLF inside, empty, 1 MB, two channels) reaches the
    handlers through the hiredis protocol reader exactly and in order."""
    import redis.asyncio as aioredis

    prefix = f"{unique_id()}/"
    subscriber = open_pubsub(f"{redis_server.url}?prefix={prefix}")
    await subscriber.start()
    client = aioredis.from_url(redis_server.url)
    try:
        got: dict[str, list[bytes]] = {"a": [], "b": []}
        for name in got:
            await subscriber.subscribe(name, lambda channel, message: got[channel].append(message))
        sent = [bytes(range(256)), b"line\r\n*3\r\n$7\r\nmessage", b"", b"x" * 1_000_000]
        sent += [b"%d" % n for n in range(3000)]
        async with client.pipeline(transaction=False) as pipe:
            for n, message in enumerate(sent):
                pipe.publish(prefix + "ab"[n % 2], message)
            await pipe.execute()
        await eventually(lambda: len(got["a"]) + len(got["b"]) == len(sent), timeout=10)
        assert got["a"] == sent[0::2] and got["b"] == sent[1::2]
    finally:
        await client.aclose()
        await subscriber.close()


async def test_subscriber_authenticates_and_reconnects_after_a_kill(
    own_redis: RedisServer,
) -> None:
    """With a user and password in the URL the pub/sub connection authenticates (a wrong
    password fails start with BusError); killed by Redis, it reconnects and re-subscribes."""
    import redis.asyncio as aioredis

    admin = aioredis.from_url(own_redis.url)
    host_port = own_redis.url.split("//")[1]
    try:
        await admin.execute_command("ACL", "SETUSER", "gw", "on", ">s3cret", "~*", "&*", "+@all")
        with pytest.raises(BusError):
            await open_pubsub(f"redis://gw:wrong@{host_port}").start()
        subscriber = open_pubsub(f"redis://gw:s3cret@{host_port}")
        await subscriber.start()
        assert isinstance(subscriber, RedisPubSub)
        try:
            got: list[bytes] = []
            await subscriber.subscribe("c", lambda channel, message: got.append(message))
            await admin.publish("c", b"first")
            await eventually(lambda: got == [b"first"])
            assert await admin.client_kill_filter(_type="pubsub") == 1
            probe = 0
            while not any(message.startswith(b"after") for message in got):
                probe += 1
                await admin.publish("c", b"after %d" % probe)
                await asyncio.sleep(0.05)
                assert probe < 300, "no message after the kill within 15 s"
            assert subscriber.reconnects >= 1
        finally:
            await subscriber.close()
    finally:
        await admin.aclose()


async def test_quiet_subscriber_is_pinged_and_kept_and_a_frozen_redis_is_left(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A silent pub/sub connection is PINGed and kept while Redis answers (no reconnect); when
    Redis stops answering (SIGSTOP) the unanswered PING makes it reconnect and re-subscribe."""
    import redis.asyncio as aioredis

    import livedata.bus.redis as module

    monkeypatch.setattr(module, "PING_INTERVAL", 0.2)
    monkeypatch.setattr(module, "PING_TIMEOUT", 0.3)
    admin = aioredis.from_url(own_redis.url)
    subscriber = open_pubsub(own_redis.url)
    await subscriber.start()
    assert isinstance(subscriber, RedisPubSub)
    try:
        got: list[bytes] = []
        await subscriber.subscribe("c", lambda channel, message: got.append(message))
        await asyncio.sleep(1.5)  # several silent intervals, each answered
        assert subscriber.reconnects == 0
        await admin.publish("c", b"still here")
        await eventually(lambda: got == [b"still here"])
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(1.0)
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        await eventually(lambda: subscriber.reconnects >= 1, timeout=10)
        probe = 0
        while not got[-1].startswith(b"after"):  # published before re-subscribing: lost
            probe += 1
            assert probe < 300, "no message after the reconnect within 15 s"
            await admin.publish("c", b"after %d" % probe)
            await asyncio.sleep(0.05)
    finally:
        await subscriber.close()
        await admin.aclose()


async def test_follows_tells_whether_the_same_read_has_more_of_the_channel(
    redis_server: RedisServer,
) -> None:
    """While a handler runs, ``follows()`` is True exactly when a later message of its channel
    came in the same socket read."""
    import redis.asyncio as aioredis

    prefix = f"{unique_id()}/"
    subscriber = open_pubsub(f"{redis_server.url}?prefix={prefix}")
    await subscriber.start()
    client = aioredis.from_url(redis_server.url)
    try:
        got: list[tuple[str, bytes, bool]] = []
        for name in ("a", "b"):
            await subscriber.subscribe(
                name, lambda channel, message: got.append((channel, message, subscriber.follows()))
            )
        transport = subscriber._conn.transport  # type: ignore[union-attr]
        transport.pause_reading()  # the burst waits in the socket: one read on resume
        async with client.pipeline(transaction=False) as pipe:
            for channel, message in (
                ("a", b"1"),
                ("b", b"1"),
                ("a", b"2"),
                ("a", b"3"),
                ("b", b"2"),
            ):
                pipe.publish(prefix + channel, message)
            await pipe.execute()
        await client.ping()  # Redis has written the pushes out
        transport.resume_reading()
        await eventually(lambda: len(got) == 5)
        assert got == [
            ("a", b"1", True),
            ("b", b"1", True),
            ("a", b"2", True),
            ("a", b"3", False),
            ("b", b"2", False),
        ]
        assert subscriber.follows() is False  # outside a handler
        await client.publish(prefix + "a", b"4")  # alone in its read
        await eventually(lambda: len(got) == 6)
        assert got[-1] == ("a", b"4", False)
    finally:
        await client.aclose()
        await subscriber.close()
