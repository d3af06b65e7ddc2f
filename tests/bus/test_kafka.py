"""The log contract on Kafka (a Tansu broker), plus take-over within a consumer group."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.protocol.metadata import MetadataRequest

from livedata.bus import Log, open_log
from livedata.bus.kafka import (
    _PARTITIONER,
    FETCH_WAIT_MS,
    LINGER_MS,
    MESSAGE_BYTES,
    KafkaLog,
    bounded_values,
)
from livedata.errors import BusError, ConfigError
from livedata.model import Kind, Record, decode_records, encode_records
from tests.bus.contract import Consumer, LogContract, eventually, keys, parsed, rec, unique_id
from tests.servers import free_port
from tests.servers.kafka import KafkaServer, start_kafka

JOIN_TIMEOUT = 20.0
"""Seconds a consumer group may take to form or rebalance (Tansu answers a join after ~5 s)."""


def assigned(log: Log) -> frozenset[int]:
    assert isinstance(log, KafkaLog)
    return log.assigned_partitions()


class TestKafkaLog(LogContract):
    ready_delay = 1.0
    """Used as such only by the xfailed capacity test: ``consumers_ready`` waits for the group."""
    known_failures = {  # noqa: RUF012 - the contract's ClassVar
        "test_append_waits_when_full_until_consumed": (
            "Kafka does not bound a topic by what its consumers have read: producers never "
            "wait for consumer groups, the broker keeps records by retention (time/size)"
        ),
    }

    @pytest.fixture(autouse=True)
    def _server(self, kafka_server: KafkaServer) -> None:
        self.server = kafka_server

    def make_url(self, capacity: int | None = None) -> str:
        return f"{self.server.url}/{unique_id('topic')}"

    async def consumers_ready(self, *consumers: Consumer) -> None:
        """Wait until the consumers' groups have formed: each owns partitions, none shared."""

        def stable() -> bool:
            groups: dict[str, list[frozenset[int]]] = {}
            for consumer in consumers:
                groups.setdefault(consumer._group, []).append(assigned(consumer._log))
            for shares in groups.values():
                if not all(shares) or sum(map(len, shares)) != len(frozenset().union(*shares)):
                    return False
            return True

        await eventually(stable, timeout=JOIN_TIMEOUT)
        for consumer in consumers:
            assert not consumer.task.done(), consumer.task


@pytest.fixture
async def logs(kafka_server: KafkaServer) -> AsyncIterator[list[KafkaLog]]:
    """Logs a test opens; closed at the end."""
    opened: list[KafkaLog] = []
    yield opened
    for log in opened:
        await log.close()


async def started(opened: list[KafkaLog], url: str) -> KafkaLog:
    log = open_log(url)
    assert isinstance(log, KafkaLog)
    await log.start()
    opened.append(log)
    return log


def test_kafka_url_is_parsed() -> None:
    """A ``kafka://`` URL opens KafkaLog with its brokers, topic, partitions, linger, fetch wait and share; bad ones fail."""
    log = open_log("kafka://h1:9092,h2:9093/telemetry?partitions=12")
    assert isinstance(log, KafkaLog)
    assert (log.bootstrap, log.topic, log.partitions) == ("h1:9092,h2:9093", "telemetry", 12)
    assert log.batch_ms == LINGER_MS
    assert KafkaLog("kafka://h:1/t?linger_ms=0").batch_ms == 0
    assert log.fetch_wait_ms == FETCH_WAIT_MS
    assert KafkaLog("kafka://h:1/t?fetch_wait_ms=500").fetch_wait_ms == 500
    assert (log.share, KafkaLog("kafka://h:1/t?share=1/3").share) == (None, (1, 3))
    for bad in (
        "kafka://h1:9092",
        "kafka://h1:9092/a/b",
        "kafka://h:1/t?partitions=x",
        "kafka://h:1/t?linger_ms=-1",
        "kafka://h:1/t?fetch_wait_ms=-1",
        "kafka://h:1/t?fetch_wait_ms=x",
        "kafka://h:1/t?share=2/2",
        "kafka://h:1/t?share=x",
    ):
        with pytest.raises(ConfigError):
            open_log(bad)


def test_large_batches_are_cut_into_bounded_messages() -> None:
    """A batch over MESSAGE_BYTES becomes several values within it that decode to its records
    in order; a single record over it goes alone."""
    records = [
        Record("t", "m", "can", n, Kind.REALTIME, {f"s{i}": n * 0.1 + i for i in range(200)})
        for n in range(200)
    ]
    values = list(bounded_values(records))
    assert len(values) > 1 and all(len(v) <= MESSAGE_BYTES for v in values)
    assert [r for v in values for r in decode_records(v)] == records
    huge = Record("t", "m", "can", 1, Kind.REALTIME, {"text": "x" * MESSAGE_BYTES})
    assert [decode_records(v) for v in bounded_values([huge])] == [[huge]]


def test_a_batch_cut_by_the_size_of_records_before_is_encoded_once(monkeypatch) -> None:
    """Given the bytes per record of the batches before, a batch over MESSAGE_BYTES is cut
    into values within it, each record encoded once (without it, twice); a size given too
    small still yields bounded values; all decode to the records in order."""
    from livedata.bus import kafka

    encoded: list[int] = []

    def counting(records):
        encoded.append(len(records))
        return encode_records(records)

    monkeypatch.setattr(kafka, "encode_records", counting)
    records = [
        Record("t", "m", "can", n, Kind.REALTIME, {f"s{i}": n * 0.1 + i for i in range(200)})
        for n in range(200)
    ]
    per_record = len(encode_records(records)) / len(records)
    for hint, encodings in ((0.0, 2), (per_record, 1), (per_record / 10, None)):
        encoded.clear()
        values = list(bounded_values(records, hint))
        assert len(values) > 1 and all(len(v) <= MESSAGE_BYTES for v in values)
        assert [r for v in values for r in decode_records(v)] == records
        if encodings is not None:
            assert sum(encoded) == encodings * len(records)


def test_read_records_keep_their_values_json_until_values_are_read() -> None:
    """A batch value's records carry their values as the JSON ingest wrote, parse it on the
    first read of ``values`` (once) and equal the records appended."""
    records = [
        Record("t", "A", "vehicle_can", 1, Kind.REALTIME, {"x": 1.5, "s": 'a"\\n'}),
        Record("t", "B", "client_raw_data", 2, Kind.BACKFILL, {}),
    ]
    read = decode_records(next(bounded_values(records)), values_as_json=True)
    assert [r.raw for r in read] == [orjson.dumps(r.values) for r in records]
    assert not any(parsed(r) for r in read)
    assert read[0].values is read[0].values
    assert parsed(read[0]) and not parsed(read[1])
    assert read == records


@pytest.mark.parametrize("as_json", [True, False])
@pytest.mark.parametrize(
    "values", [b"5", b"[1]", b'"x"', b"null", b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"]
)
def test_values_that_are_not_an_object_are_refused_as_a_batch(values: bytes, as_json: bool) -> None:
    """A batch value whose record's values are not a JSON object of values (or nest too deep
    to read) is refused, values kept as JSON or not, with an error the consumer counts and
    skips."""
    good = b'{"tenant":"t","chassis":"A","msgType":"vehicle_can","ts":1,"kind":"realTime"'
    data = b"[" + good + b',"values":{}},' + good + b',"values":' + values + b"}]"
    with pytest.raises((ValueError, TypeError)):
        decode_records(data, values_as_json=as_json)


async def test_start_fails_with_bus_error_when_kafka_is_unreachable() -> None:
    """Starting against a port where nothing listens raises BusError, not an aiokafka error."""
    log = open_log(f"kafka://127.0.0.1:{free_port()}/t")
    with pytest.raises(BusError):
        await log.start()
    await log.close()


async def test_topic_is_created_with_the_partitions_of_the_url(kafka_server, logs) -> None:
    """start() creates a missing topic with ``partitions``; a second start finds it and is fine."""
    topic = unique_id("topic")
    await started(logs, f"{kafka_server.url}/{topic}?partitions=3")
    await started(logs, f"{kafka_server.url}/{topic}?partitions=3")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap)
    await producer.start()
    try:
        assert await producer.partitions_for(topic) == {0, 1, 2}
    finally:
        await producer.stop()


async def test_values_that_are_not_records_are_skipped(kafka_server, logs) -> None:
    """Garbage in the topic is logged and skipped; the records around it still arrive."""
    url = f"{kafka_server.url}/{unique_id('topic')}?partitions=1"
    log = await started(logs, url)
    await log.append([rec("m1", 1)])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_server.bootstrap)
    await producer.start()
    try:
        for value in (b"not json", b'{"tenant": "t"}', b"[1, 2]"):
            await producer.send_and_wait(log.topic, value, key=b"m1")
    finally:
        await producer.stop()
    await log.append([rec("m1", 2)])
    got: list[Record] = []
    batches = log.consume("g")
    while len(got) < 2:
        got += await asyncio.wait_for(anext(batches), JOIN_TIMEOUT)
    await batches.aclose()
    assert [r.ts for r in got] == [1, 2]
    assert log.skipped == 3


async def test_stopped_consumer_hands_its_uncommitted_records_to_the_group(
    kafka_server, logs
) -> None:
    """A consumer stopped mid-stream: another of its group gets its unconfirmed records, not its confirmed ones."""
    # Tansu numbers a group's first generation 0, for which aiokafka sends no
    # LeaveGroup: the stopped consumer is dropped after the session timeout.
    url = f"{kafka_server.url}/{unique_id('topic')}?session_timeout_ms=6000"
    first_log, second_log, producer = (
        await started(logs, url),
        await started(logs, url),
        await started(logs, url),
    )
    first: list[Record] = []
    unconfirmed: list[Record] = []
    crash = asyncio.Event()

    async def first_consumer() -> None:
        async for batch in first_log.consume("distribute"):
            if crash.is_set():  # received, then the process "dies" before confirming it
                unconfirmed.extend(batch)
                break
            first.extend(batch)

    second = Consumer(second_log, "distribute")
    first_task = asyncio.create_task(first_consumer())
    try:
        await eventually(
            lambda: (
                bool(assigned(first_log))
                and bool(assigned(second_log))
                and not assigned(first_log) & assigned(second_log)
            ),
            timeout=JOIN_TIMEOUT,
        )
        mine = assigned(first_log)

        wave1 = [rec(f"m{i % 20}", i) for i in range(100)]
        await producer.append(wave1)
        await eventually(lambda: len(first) + len(second.records) >= 100)
        assert first, "the first consumer owned no chassis of the first wave"
        crash.set()
        wave2 = [rec(f"m{i % 20}", i) for i in range(100, 200)]
        await producer.append(wave2)
        await asyncio.wait_for(first_task, JOIN_TIMEOUT)
        assert unconfirmed, "the first consumer got nothing of the second wave"

        # After the rebalance the second consumer owns the first one's partitions too,
        # and re-reads from the last commit: every record of the second wave arrives.
        await eventually(lambda: assigned(second_log) >= mine, timeout=JOIN_TIMEOUT)
        await eventually(lambda: set(keys(wave2)) <= set(keys(second.records)))
        assert set(keys(unconfirmed)) <= set(keys(second.records))
        # What the first consumer had confirmed (asked past) is not delivered again.
        assert not set(keys(first)) & set(keys(second.records))
        assert sorted(keys(first + second.records)) == sorted(keys(wave1 + wave2))
    finally:
        first_task.cancel()
        for log in logs:
            await log.close()
        await asyncio.wait_for(second.task, 5)


def partition_of(chassis: str, count: int) -> int:
    """The partition of ``chassis``'s records in a topic of ``count`` partitions."""
    return _PARTITIONER(chassis.encode(), list(range(count)), list(range(count)))


async def test_shares_read_their_partitions_and_a_restarted_share_resumes_at_once(
    kafka_server, logs
) -> None:
    """Consumers of ``share=0/2`` and ``1/2`` each read the partitions of their remainder
    (together all records, none twice); one that dies is resumed by its restart from its
    last commit within a second, no session timeout or rebalance, while the other goes on
    reading throughout."""
    url = f"{kafka_server.url}/{unique_id('topic')}?partitions=4&session_timeout_ms=30000"
    producer = await started(logs, url)
    first_log = await started(logs, f"{url}&share=0/2")
    other = Consumer(await started(logs, f"{url}&share=1/2"), "distribute")
    first: list[Record] = []
    unconfirmed: list[Record] = []
    crash = asyncio.Event()

    async def first_consumer(log: KafkaLog) -> None:
        async for batch in log.consume("distribute"):
            if crash.is_set():  # received, then the process "dies" before confirming it
                unconfirmed.extend(batch)
                return
            first.extend(batch)

    def mine(records: list[Record]) -> list[tuple[str, int]]:
        return keys([r for r in records if partition_of(r.chassis, 4) % 2 == 0])

    def theirs(records: list[Record]) -> list[tuple[str, int]]:
        return keys([r for r in records if partition_of(r.chassis, 4) % 2 == 1])

    task = asyncio.create_task(first_consumer(first_log))
    try:
        await eventually(lambda: len(assigned(first_log)) == 2, timeout=JOIN_TIMEOUT)
        assert assigned(first_log) == {0, 2}
        wave1 = [rec(f"m{i % 20}", i) for i in range(100)]
        await producer.append(wave1)
        await eventually(lambda: len(first) + len(other.records) == 100)
        assert (keys(first), keys(other.records)) == (mine(wave1), theirs(wave1))
        crash.set()
        wave2 = [rec(f"m{i % 20}", i) for i in range(100, 200)]
        await producer.append(wave2)
        await asyncio.wait_for(task, JOIN_TIMEOUT)
        assert unconfirmed
        # the other share reads on while the first is gone
        await eventually(lambda: set(theirs(wave2)) <= set(keys(other.records)), timeout=2)

        again: list[Record] = []
        restarted = await started(logs, f"{url}&share=0/2")
        began = asyncio.get_running_loop().time()

        async def restarted_consumer() -> None:
            async for batch in restarted.consume("distribute"):
                again.extend(batch)

        task = asyncio.create_task(restarted_consumer())
        await eventually(lambda: set(mine(wave2)) <= set(keys(again)), timeout=JOIN_TIMEOUT)
        assert asyncio.get_running_loop().time() - began < 3.0, "resumed without a rebalance"
        # from the last commit: what the first had confirmed is not read again
        assert not set(keys(first)) & set(keys(again))
        assert sorted(keys(first + again + other.records)) == sorted(keys(wave1 + wave2))
    finally:
        task.cancel()
        for log in logs:
            await log.close()
        await asyncio.wait_for(other.task, 5)


@pytest.mark.parametrize("share", ["", "&share=0/1"], ids=["group", "share"])
async def test_consumer_goes_on_after_the_broker_restarted_empty(tmp_path, share: str) -> None:
    """The broker restarted without its data (Tansu's memory storage: topic and offsets
    gone) under a running consumer, of a group or of a share: a commit the broker keeps
    refusing is given up and the consumer goes on reading what is appended after the
    restart, every record of it (a share reads the topic created anew from its start)."""
    server = start_kafka(tmp_path)
    opened: list[KafkaLog] = []
    got: list[Record] = []
    try:
        url = f"{server.url}/{unique_id('topic')}?partitions=4&session_timeout_ms=6000"
        producer = await started(opened, url)
        consumer = await started(opened, url + share)

        async def consume() -> None:
            async for batch in consumer.consume("distribute"):
                got.extend(batch)

        task = asyncio.create_task(consume())
        sent = 0
        appended: list[int] = []

        async def send_until(count: int) -> None:
            nonlocal sent
            while len(got) < count:
                with contextlib.suppress(BusError):
                    await producer.append([rec(f"m{sent % 8}", sent)])
                    appended.append(sent)
                sent += 1
                await asyncio.sleep(0.2)

        await asyncio.wait_for(send_until(20), JOIN_TIMEOUT)
        await asyncio.to_thread(server.restart)
        before = sent
        await asyncio.wait_for(send_until(len(got) + 20), 90)
        after = [ts for ts in appended if ts >= before]
        assert after, "appends go on after the restart"
        await eventually(lambda: set(after) <= {r.ts for r in got}, timeout=10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        for log in opened:
            await log.close()
        server.stop()


APPENDS_AFTER_RESTART = 30
"""Appends written between an empty broker restart and the topic's creation by another
process: each partition then holds that many records Tansu's new topic starts below."""


async def append_soon(log: KafkaLog, records: list[Record], attempts: int = 5) -> None:
    """``log.append(records)``, tried again (0.2 s apart) up to ``attempts`` times, as
    ingest does (with backoff): a log whose appends fail for good raises the last error."""
    for attempt in range(attempts):
        try:
            await log.append(records)
            return
        except BusError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2)


async def read_until(log: KafkaLog, wanted: set[tuple[str, int]]) -> None:
    """Consume ``log`` in a fresh group until every ``(chassis, ts)`` of ``wanted`` arrived."""
    seen: set[tuple[str, int]] = set()
    async for batch in log.consume(unique_id("group")):
        seen.update((r.chassis, r.ts) for r in batch)
        if wanted <= seen:
            return


def fleet_records(ts: int) -> list[Record]:
    """One record of each of 32 machines (spread over every partition) at ``ts``."""
    return [rec(f"m{i}", ts) for i in range(32)]


async def append_fleet(log: KafkaLog, stamps: range) -> set[tuple[str, int]]:
    """Append :func:`fleet_records` of each of ``stamps`` (:func:`append_soon`); their keys."""
    for ts in stamps:
        await append_soon(log, fleet_records(ts))
    return {(f"m{i}", ts) for ts in stamps for i in range(32)}


async def partition_count(log: KafkaLog) -> int:
    """The partitions ``log``'s producer sends to."""
    assert log._producer is not None
    return len(await log._producer.partitions_for(log.topic))


@contextlib.asynccontextmanager
async def restarted_under_a_producer(tmp_path: Path) -> AsyncIterator[tuple[str, KafkaLog]]:
    """A Tansu broker restarted empty under a started log (8 partitions) that appended once:
    the log's URL and the log, closed (and the broker stopped) at the end."""
    server = start_kafka(tmp_path)
    opened: list[KafkaLog] = []
    try:
        url = f"{server.url}/{unique_id('topic')}?partitions=8"
        producer = await started(opened, url)
        await producer.append(fleet_records(0))
        await asyncio.to_thread(server.restart)
        yield url, producer
    finally:
        for log in opened:
            await log.close()
        server.stop()


@pytest.mark.slow
async def test_appends_go_on_when_another_process_creates_the_topic_after_an_empty_restart(
    tmp_path,
) -> None:
    """Tansu restarted empty under a producer that goes on appending, then another process
    starts on the log (creating the topic): appends are still acknowledged, the topic has
    the configured partitions and every record appended after the restart is read."""
    async with restarted_under_a_producer(tmp_path) as (url, producer):
        after = await append_fleet(producer, range(1, APPENDS_AFTER_RESTART + 1))
        other = open_log(url)  # a role (re)started: KafkaLog.start creates the topic
        assert isinstance(other, KafkaLog)
        await other.start()
        try:
            after |= await append_fleet(
                producer, range(APPENDS_AFTER_RESTART + 1, APPENDS_AFTER_RESTART + 11)
            )
            assert await partition_count(producer) == 8
            await asyncio.wait_for(read_until(other, after), 60)
        finally:
            await other.close()


@pytest.mark.slow
async def test_a_fresh_producer_appends_over_records_written_while_the_topic_was_gone(
    tmp_path,
) -> None:
    """Records written (by a producer that did not notice an empty restart) while the topic
    was gone, then the topic created by a starting process: that process's appends, refused
    at first by Tansu (unknown error), are sent again until acknowledged, and are read."""
    server = start_kafka(tmp_path)
    opened: list[KafkaLog] = []
    stale = AIOKafkaProducer(bootstrap_servers=server.bootstrap, acks="all")
    try:
        url = f"{server.url}/{unique_id('topic')}?partitions=8"
        topic = (await started(opened, url)).topic
        await stale.start()
        await stale.send_and_wait(topic, b"[]", partition=0)  # it knows the 8 partitions now
        await asyncio.to_thread(server.restart)
        for ts in range(APPENDS_AFTER_RESTART):
            value = encode_records([rec("stale", ts)])
            for partition in range(8):
                await append_soon_raw(stale, topic, value, partition)
        fresh = await started(opened, url)  # ingest restarted: creates the topic anew
        await fresh.append(fleet_records(1_000))
        await asyncio.wait_for(read_until(fresh, {(f"m{i}", 1_000) for i in range(32)}), 60)
    finally:
        await stale.stop()
        for log in opened:
            await log.close()
        server.stop()


async def append_soon_raw(
    producer: AIOKafkaProducer, topic: str, value: bytes, partition: int
) -> None:
    """``producer.send_and_wait`` to ``partition``, tried again once the broker is back."""
    for attempt in range(50):
        try:
            await producer.send_and_wait(topic, value, partition=partition)
            return
        except Exception:
            if attempt == 49:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_appends_use_the_partitions_of_a_topic_another_client_auto_created(
    tmp_path,
) -> None:
    """Tansu restarted empty, then another client's metadata request auto-created the topic
    (with 4 partitions, not the 8 configured): the producer appends over those 4, so a
    consumer group reads every record appended after the restart."""
    async with restarted_under_a_producer(tmp_path) as (_, producer):
        client = AIOKafkaClient(bootstrap_servers=producer.bootstrap)
        await client.bootstrap()
        try:
            response = await client.send(
                client.get_random_node(), MetadataRequest([producer.topic], True)
            )
        finally:
            await client.close()
        assert len(response.topics[0][3]) == 4, response  # Tansu auto-created it
        after = await append_fleet(producer, range(1, 11))
        assert await partition_count(producer) == 4
        await asyncio.wait_for(read_until(producer, after), 60)
