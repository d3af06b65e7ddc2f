"""The log on Kafka: ``kafka://host:port[,host:port…]/topic[?partitions=N&…]``.

Query parameters: ``partitions`` and ``replication`` (used when the topic is
created), ``session_timeout_ms`` (how long a silent consumer keeps its
partitions, default 10 s), ``share=i/n`` (0-based: the consumers of this log read the
partitions whose number is ``i`` modulo ``n``, assigned, not shared with a group's other
members; see "A consumer dies"), ``fetch_wait_ms`` (the consumers' ``fetch_max_wait_ms``,
default :data:`FETCH_WAIT_MS`: the longest a broker holds a fetch that found nothing;
Kafka answers as soon as a record is there, but Tansu 0.6 answers every fetch only
after sleeping up to half of it (all of it under 250 ms): at 10,000 records/s and a
100 ms linger, produce → consume p50/p99 was 113-127 / 264-284 ms with aiokafka's 500 ms,
66-78 / 142-190 ms with 250 and 28-39 / 68-83 ms with 100, for 1.3× and 2.6× Tansu's CPU;
``bench/bench_tansu_growth.py``) and ``linger_ms`` (:attr:`KafkaLog.batch_ms`, default
:data:`LINGER_MS`: how long ingest lets records gather before an append unless
a full batch waits; a produce request costs about 0.3 ms of CPU in aiokafka and
the broker however few records it carries, so appending whatever came in during
the last round trip -- a handful of records at 10,000/s -- paid that per handful;
0 appends at once).  Each append is one record batch per partition on the broker, so
the linger also sets how many batches a partition holds: the bench's broker (Tansu
0.6, ``memory://``) lists every batch of a partition on each fetch, so its CPU grows
with the batches written since it started.  At 10,000 records/s from two producers
(``bench/bench_tansu_growth.py``, ``fetch_wait_ms`` 500): with a 10 ms linger Tansu went
from 22 % to 137 % of a core within 90 s; with 50 ms from 10 % to 20 % in 2 minutes, with
100 ms from 8 % to 12 %, while produce → consume p50 went from 22-99 ms to 74-115 ms and
106-135 ms (p99 ~270 ms in all three; with ``fetch_wait_ms`` 100 the p50 was the same,
28-55 ms, at 50 and 100 ms of linger, and Tansu's CPU at 150 s 52 % against 32 %).  A real
Kafka finds an offset by its index, but takes fewer, larger batches at less CPU per record
too.

:meth:`KafkaLog.start` creates the topic when it is missing (``partitions``
default 8, the most consumers a group can usefully have; ``replication``
default 3, or the number of brokers if fewer) and starts one producer with
``acks=all``.  The producer is idempotent when the broker supports it (Apache
Kafka does).  When the broker refuses ``InitProducerId`` (Tansu 0.6 does, for
the request version aiokafka sends) it falls back to a plain ``acks=all``
producer and logs a warning: then a send that aiokafka retries may write a
record twice, which the stores absorb (idempotent writes) and which may make
distribute publish it twice.

Records are partitioned by chassis (the default partitioner's choice for the chassis
as key), so all records of a machine go to one partition and stay in order.  One
:meth:`KafkaLog.append` sends one message per partition and 256 KiB: its value is a JSON
array of record envelopes (:func:`livedata.model.encode_records`; a value holding one
envelope, as written before, is read too), its key one of its machines.  Consumed
records keep their values as that JSON until they are read
(:func:`~livedata.model.decode_records` with ``values_as_json``), so distribute never
parses them and the alert role only those a rule applies to.  Each call of
:meth:`KafkaLog.consume` runs one consumer of a consumer group: the group's
consumers share the partitions, each partition read by one of them at a time.
The Kafka group id is ``{topic}.{group}``, so groups of different logs never
rebalance each other.  Offsets are committed by hand, for the batch before,
when the next batch is asked for (at-least-once).  Values that are not a
record are logged, counted in :attr:`KafkaLog.skipped` and skipped (their
offsets are committed with the rest).

Under stress:

* **Broker down.**  ``append`` waits while aiokafka retries (reconnects,
  metadata refreshes) up to its request timeout (40 s), then raises
  :class:`~livedata.errors.BusError`; ingest retries the batch with backoff and
  does not acknowledge the device message meanwhile, so nothing is lost (a
  retried batch may be written twice, see above).  ``append`` also waits while
  the producer's buffer is full: that is the backpressure to ingest.  Consumers
  keep polling and go on from their position when the broker is back.
* **Broker restarted empty** (Tansu on ``memory://``: topics and groups gone).  Tansu
  takes produce requests for a topic it does not know, and a topic created later
  (``CreateTopics``, or a client's metadata request, which auto-creates it with 4
  partitions) starts its partitions' offsets at 0 again, over the records written
  meanwhile: every produce then fails with an unknown error (-1; Tansu: the record
  object at that offset already exists) until each partition's offset, advanced by one
  record per refused produce, has passed them -- hundreds of refusals per partition after
  seconds of traffic, so ingest's appends failed for good (measured: a role restarted
  18 s after Tansu did, creating the topic).  So: once a producer connection is down or
  new, the next ``append`` creates the topic again first (with ``partitions``; if that fails it
  raises and the next append tries again) and refreshes the partitions, before it sends;
  and messages refused with an unknown error (only the append in flight across the
  restart can have written into the missing topic now) are sent again at once, for up to
  :data:`RESEND_S`, each refusal moving the offset past one stale record.  Records in
  flight across the restart may be read twice.  A group's consumer rejoins and reads the
  new topic from its start; a share's consumer (``share=i/n``) keeps its position, so it
  reads a partition from its start again when the partition's end is below what it had
  read (else it would skip every record until the new offsets passed its old position:
  measured, all live of the first 11 s after the restart).
* **A consumer dies.**  Its partitions move to the other consumers of its group:
  at once when it leaves cleanly (``close``), after ``session_timeout_ms`` when
  its process is killed, plus the broker's rebalance time (Tansu answers a
  join after about 5 s).  On Tansu a group's first generation is numbered 0,
  and aiokafka sends no ``LeaveGroup`` for generation 0, so there even a clean
  close counts as a death.  Batches the consumer had received but not
  confirmed (by asking for the next one) are delivered again to the new owner,
  so **distribute may publish a record twice**: a client sees the same point
  again, never a hole.  Each join also stops every member of the group while Tansu
  rebalances (about 5 s), and a killed member's restart is a second join: a kill of one
  of two distribute processes stopped live for all machines twice and for half of them
  15-20 s.  With ``share=i/n`` (one process per share, restarted by its supervisor, as
  ``bench_cluster.py`` runs distribute) there is no group membership: each consumer is
  assigned its share of the partitions at start and resumes from the group's committed
  offsets (an offset commit with no member, which Tansu takes), so a dead process's
  share waits for its restart -- and only its share, the others read on -- and a
  restart reads on within a second of starting.  A share nobody runs is not read: run
  every share, or use the group.
* **A commit the broker keeps refusing** (a broker restarted without its data):
  given up after ``session_timeout_ms`` (by then the group has dropped a member that
  stalled anyway) and logged (throttled); consuming goes on, and the records are read
  again after a rebalance.  aiokafka retries a retriable refusal forever, and a broker
  that lost its data (Tansu on ``memory://`` after a restart) refuses every commit with
  UnknownTopicOrPartition: that stopped distribute for good (measured).  ``close`` during a group join waits for the join.
* **Kafka does not bound a topic by its consumers.**  Unlike the memory log,
  ``append`` never waits for a slow consumer group: the broker keeps records
  by retention (time/size on disk), so a group that falls behind reads them
  later, and one that falls behind beyond retention loses the oldest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ConsumerStoppedError,
    CorruptRecordException,
    KafkaConnectionError,
    KafkaError,
    KafkaProtocolError,
    KafkaTimeoutError,
    RequestTimedOutError,
    UnknownError,
)
from aiokafka.partitioner import DefaultPartitioner

from livedata import errors
from livedata.backends import share_option
from livedata.bus.base import Log
from livedata.errors import BusError, ConfigError, ErrorMap, map_exceptions
from livedata.model import Record, decode_records, encode_records
from livedata.ratelog import Throttled

log = logging.getLogger("livedata.bus.kafka")
_COMMITS = Throttled(log)
"""Commit failures, logged once a minute per group (a rebalance or restart makes a burst)."""
_RESENDS = Throttled(log)
"""Batch messages resent after an unknown broker error (see "Broker restarted empty")."""

DEFAULT_PARTITIONS = 8
BATCH = 1_000
"""Messages per consumed batch at most (each a batch of records)."""
MESSAGE_BYTES = 256 * 1024
"""A batch message of :meth:`KafkaLog.append` holds at most this many bytes of envelopes
(aiokafka's ``max_request_size`` and the brokers' ``message.max.bytes`` are 1 MiB)."""
RUN_FILL = 0.8
""":func:`bounded_values` cuts a batch by the size of the records before into runs of this
share of :data:`MESSAGE_BYTES`, leaving room for records larger than those."""
_PARTITIONER = DefaultPartitioner()
POLL_MS = 1_000
"""Milliseconds a consumer waits for records before looking again."""
SESSION_TIMEOUT_MS = 10_000
"""A consumer not heard of for this long is dropped from its group."""
LINGER_MS = 100.0
"""Default of the ``linger_ms`` URL option (see the module docstring)."""
FETCH_WAIT_MS = 250
"""Default of the ``fetch_wait_ms`` URL option (see the module docstring)."""
HEARTBEAT_MS = 1_000
"""How often a consumer tells its group it is alive (and learns of rebalances)."""
RESEND_S = 10.0
"""How long :meth:`KafkaLog.append` resends batch messages the broker refuses with an
unknown error before it raises (see "Broker restarted empty" in the module docstring)."""

TOPIC_ALREADY_EXISTS = 36
NOT_AUTHORIZED = (29, 31)  # topic / cluster authorization failed
T = TypeVar("T")


ERRORS: ErrorMap = {
    (KafkaTimeoutError, RequestTimedOutError, TimeoutError): errors.BusTimeout,
    (KafkaConnectionError, OSError): errors.BusUnavailable,
    (KafkaProtocolError, CorruptRecordException): errors.BusProtocolError,
    (KafkaError, ConsumerStoppedError): BusError,
}
"""aiokafka's (and the socket's) errors → the project's."""


def map_errors(what: str) -> contextlib.AbstractContextManager[None]:
    """Re-raise aiokafka's (and the socket's) errors as :class:`BusError` subclasses."""
    return map_exceptions(ERRORS, f"kafka {what}", repr)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def bounded_values(records: Sequence[Record], record_bytes: float = 0.0) -> Iterator[bytes]:
    """``records`` encoded (:func:`~livedata.model.encode_records`) in order, as values of
    at most :data:`MESSAGE_BYTES` each unless a single record is larger.

    With ``record_bytes`` (the encoded size of a record in the batches before) a batch that
    would not fit is cut into runs that should, each encoded once (a run that still does
    not fit is cut as below); without it (or for a run too large all the same) encoded
    whole, and when too large cut into as many equal runs as its size asks for, each
    bounded again -- encoding its records twice: when ingest is behind, its appends hold
    ``batch_max`` records (several MiB), and that second encoding was 40 % of the time
    its event loop spent in appends (``bench_cluster.py --hops``)."""
    if record_bytes > 0 and len(records) > 1:
        per_run = max(1, int(MESSAGE_BYTES * RUN_FILL / record_bytes))
        if len(records) > per_run:
            for start in range(0, len(records), per_run):
                yield from bounded_values(records[start : start + per_run])
            return
    value = encode_records(records)
    if len(value) <= MESSAGE_BYTES or len(records) == 1:
        yield value
        return
    runs = min(len(value) // MESSAGE_BYTES + 1, len(records))
    size = -(-len(records) // runs)
    for start in range(0, len(records), size):
        yield from bounded_values(records[start : start + size])


class _Closed(Exception):
    """The log was closed while waiting."""


class KafkaLog(Log):
    """The log on a Kafka topic; see the module docstring for the URL and behaviour."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        self.bootstrap = parts.netloc.rpartition("@")[2]
        self.topic = parts.path.strip("/")
        if not self.bootstrap or not self.topic or "/" in self.topic:
            raise ConfigError(f"Kafka log URL {url!r}: use kafka://host:port[,host:port]/topic")
        query = parse_qs(parts.query)
        try:
            self.partitions = int(query.get("partitions", [DEFAULT_PARTITIONS])[0])
            self.replication = int(query.get("replication", [0])[0])
            self.session_timeout_ms = int(query.get("session_timeout_ms", [SESSION_TIMEOUT_MS])[0])
            self.batch_ms = float(query.get("linger_ms", [LINGER_MS])[0])
            self.fetch_wait_ms = int(query.get("fetch_wait_ms", [FETCH_WAIT_MS])[0])
            self.share = share_option("Kafka URL option share", query.get("share", [None])[0])
        except ValueError as exc:
            raise ConfigError(f"Kafka log URL {url!r}: {exc}") from exc
        if self.partitions < 1:
            raise ConfigError(f"Kafka log URL {url!r}: partitions must be at least 1")
        if not 0 <= self.batch_ms <= 10_000:
            raise ConfigError(f"Kafka log URL {url!r}: linger_ms must be 0 to 10000")
        if not 0 <= self.fetch_wait_ms <= 10_000:
            raise ConfigError(f"Kafka log URL {url!r}: fetch_wait_ms must be 0 to 10000")
        self.idempotent = False
        """Whether the producer is idempotent (known after :meth:`start`)."""
        self.skipped = 0
        """Values read from the topic that were not a record."""
        self._producer: AIOKafkaProducer | None = None
        self._connections: tuple[Any, ...] = ()
        """The producer's broker connections seen by :meth:`append` (see :meth:`_reconnected`)."""
        self._topic_unsure = False
        """The producer connected anew: the broker may have restarted without the topic."""
        self._partition_of: dict[str, int] = {}
        """The partition of each chassis seen, for the partition count below."""
        self._partition_count = 0
        self._record_bytes = 0.0
        """Encoded bytes per record of the last append's batch messages (0: none yet)."""
        self._consumers: set[AIOKafkaConsumer] = set()
        self._closed = asyncio.Event()

    # -- producing ---------------------------------------------------------

    async def start(self) -> None:
        """Create the topic if missing and start the producer; :class:`BusError` if unreachable."""
        if self._producer is not None:
            return
        self._closed.clear()
        await self._create_topic()
        producer = await self._start_producer(idempotent=True)
        if producer is None:
            producer = await self._start_producer(idempotent=False)
        assert producer is not None
        self._producer = producer
        log.info(
            "Kafka log %s on %s (%s producer)",
            self.topic,
            self.bootstrap,
            "idempotent" if self.idempotent else "acks=all, not idempotent",
        )

    async def _create_topic(self) -> bool:
        """Create the topic unless it exists; whether it was created."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="livedata-admin")
        with map_errors(f"connect to {self.bootstrap}"):
            await admin.start()
        try:
            with map_errors(f"create topic {self.topic}"):
                replication = self.replication or await self._default_replication(admin)
                response = await admin.create_topics(
                    [NewTopic(self.topic, self.partitions, replication)]
                )
        finally:
            await admin.close()
        created = False
        for topic, code, *rest in response.topic_errors:
            message = rest[0] if rest else ""
            if code == 0:
                log.info("created topic %s with %d partitions", topic, self.partitions)
                created = True
            elif code in NOT_AUTHORIZED:  # managed clusters: topics made by the operators
                log.warning("may not create topic %s (%s): assuming it exists", topic, message)
            elif code != TOPIC_ALREADY_EXISTS:
                raise BusError(f"kafka create topic {topic} failed: error {code} {message}")
        return created

    @staticmethod
    async def _default_replication(admin: AIOKafkaAdminClient) -> int:
        """3 copies, or as many as there are brokers if fewer."""
        try:
            cluster = await admin.describe_cluster()
        except KafkaError as exc:
            log.info("cannot count the brokers (%r): creating the topic with 1 replica", exc)
            return 1
        return max(1, min(3, len(cluster["brokers"])))

    async def _start_producer(self, idempotent: bool) -> AIOKafkaProducer | None:
        """A started producer, or None if the broker does not do idempotence."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="livedata-log",
            acks="all",
            enable_idempotence=idempotent,
        )
        try:
            await producer.start()
        except KafkaConnectionError as exc:
            await producer.stop()
            raise errors.BusUnavailable(
                f"kafka connect to {self.bootstrap} failed: {exc!r}"
            ) from exc
        except KafkaError as exc:
            await producer.stop()
            if not idempotent:
                raise BusError(f"kafka producer start failed: {exc!r}") from exc
            log.warning(
                "Kafka %s refuses idempotent producers (%r): using acks=all without "
                "idempotence, a retried send may write a record twice",
                self.bootstrap,
                exc,
            )
            return None
        self.idempotent = idempotent
        return producer

    def _reconnected(self, producer: AIOKafkaProducer) -> bool:
        """Whether ``producer``'s broker connections changed since the last call, or it has
        none or one that is down (the broker may have restarted without its data; a
        producer that has not sent yet has none).

        aiokafka has no public hook for this (its connection-closed callback is lost when
        its sender drops a connection that hit EOF first), so the client's connection
        objects are compared; about a microsecond."""
        connections = tuple(producer.client._conns.values())
        if (
            connections
            and connections == self._connections
            and all(c.connected() for c in connections)
        ):
            return False
        self._connections = connections
        return True

    async def _check_topic(self, producer: AIOKafkaProducer) -> None:
        """After a connection change: create the topic again if the broker lost it, then learn
        its partitions anew; :class:`BusError` (and still unsure) if unreachable."""
        self._topic_unsure = False
        cluster = producer.client.cluster
        before = len(cluster.partitions_for_topic(self.topic) or ())
        try:
            if await self._create_topic():
                log.warning(
                    "topic %s was gone after a lost connection to %s (the broker restarted "
                    "without its data?): created it again",
                    self.topic,
                    self.bootstrap,
                )
            with map_errors(f"metadata of {self.topic}"):
                await producer.client.force_metadata_update()
        except BaseException:
            self._topic_unsure = True
            raise
        after = len(cluster.partitions_for_topic(self.topic) or ())
        if after < before:
            log.error(
                "topic %s has %d partitions now, not %d: the broker lost it and another "
                "client's metadata request created it anew (Tansu auto-creates 4); appends "
                "use %d partitions, batches in flight across the loss to the others are not read",
                self.topic,
                after,
                before,
                after,
            )

    async def append(self, records: Sequence[Record]) -> None:
        """Send the records in batch messages and wait until the broker acknowledged all.

        Records are grouped by the partition of their chassis (the default partitioner's
        choice for the key, so a machine's records stay on one partition and in order),
        and each group goes as few messages of at most :data:`MESSAGE_BYTES`, each a JSON
        array of record envelopes (:func:`livedata.model.encode_records`).  When a producer
        connection is down or new, the topic is checked (created again if gone) first; messages the broker
        refuses with an unknown error are sent again for up to :data:`RESEND_S` (see
        "Broker restarted empty").
        """
        producer = self._producer
        if producer is None or self._closed.is_set():
            raise BusError("kafka log is not started or closed")
        if not records:
            return
        if self._reconnected(producer) or self._topic_unsure:
            await self._check_topic(producer)
        with map_errors(f"append to {self.topic}"):
            partitions = sorted(await producer.partitions_for(self.topic))
        messages = list(self._messages(records, partitions))
        total = len(messages)
        deadline = time.monotonic() + RESEND_S
        resent = False
        while True:
            failures = await self._send(producer, messages)
            if not failures:
                if resent:
                    _RESENDS.recovered(self.topic, "topic %s took the resent messages", self.topic)
                return
            refused = [message for message, exc in failures if isinstance(exc, UnknownError)]
            if len(refused) < len(failures) or time.monotonic() > deadline:
                first = failures[0][1]
                raise BusError(
                    f"kafka append to {self.topic}: {len(failures)} of {total} batch messages "
                    f"({len(records)} records) not acknowledged: {first!r}"
                ) from first
            _RESENDS.failed(
                self.topic,
                "topic %s: the broker refused %d batch messages with an unknown error "
                "(Tansu does after it created the topic anew under records written while it "
                "was gone): sending them again",
                self.topic,
                len(refused),
            )
            messages = refused
            resent = True

    async def _send(
        self, producer: AIOKafkaProducer, messages: list[tuple[int, bytes, bytes]]
    ) -> list[tuple[tuple[int, bytes, bytes], BaseException]]:
        """Send ``(partition, key, value)`` messages; those not acknowledged, with why."""
        sent: list[asyncio.Future[Any]] = []
        with map_errors(f"append to {self.topic}"):
            try:
                for partition, key, value in messages:
                    sent.append(
                        await producer.send(self.topic, value, key=key, partition=partition)
                    )
            except BaseException:
                for future in sent:  # still in flight: keep their errors from being reported
                    future.add_done_callback(_retrieve)
                raise
        results = await asyncio.gather(*sent, return_exceptions=True)
        return [
            (message, result)
            for message, result in zip(messages, results, strict=True)
            if isinstance(result, BaseException)
        ]

    def _messages(
        self, records: Sequence[Record], partitions: list[int]
    ) -> Iterator[tuple[int, bytes, bytes]]:
        """``(partition, key, value)`` of the batch messages for ``records``, in order per
        partition: each partition's records encoded in one call, or, when they would not fit
        :data:`MESSAGE_BYTES` at the size of the records of the append before, in runs that
        do (:func:`bounded_values`)."""
        if len(partitions) != self._partition_count:
            self._partition_of.clear()  # the topic grew: keys map anew, as the producer's
            self._partition_count = len(partitions)
        groups: dict[int, list[Record]] = {}
        partition_of = self._partition_of
        for record in records:
            partition = partition_of.get(record.chassis)
            if partition is None:
                key = record.chassis.encode()
                partition = partition_of[record.chassis] = _PARTITIONER(key, partitions, partitions)
            group = groups.get(partition)
            if group is None:
                groups[partition] = [record]
            else:
                group.append(record)
        encoded = 0
        for partition, group in groups.items():
            key = group[0].chassis.encode()
            for value in bounded_values(group, self._record_bytes):
                encoded += len(value)
                yield partition, key, value
        self._record_bytes = encoded / len(records)

    # -- consuming ---------------------------------------------------------

    def assigned_partitions(self) -> frozenset[int]:
        """The partitions the consumers running on this object own right now."""
        return frozenset(
            tp.partition for consumer in self._consumers for tp in consumer.assignment()
        )

    async def _unless_closed(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``; raise :class:`_Closed` (cancelling it) if the log is closed first."""
        task = asyncio.ensure_future(awaitable)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._closed.is_set() and (task.cancelled() or task.exception() is not None):
            raise _Closed
        return task.result()

    async def consume(self, group: str) -> AsyncIterator[list[Record]]:
        if self._closed.is_set():
            return
        consumer = AIOKafkaConsumer(
            *(() if self.share else (self.topic,)),  # a share is assigned, not subscribed
            bootstrap_servers=self.bootstrap,
            client_id=f"livedata-{group}",
            group_id=f"{self.topic}.{group}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=min(HEARTBEAT_MS, self.session_timeout_ms // 3),
            fetch_max_wait_ms=self.fetch_wait_ms,
        )
        self._consumers.add(consumer)
        read: dict[TopicPartition, int] = {}
        """Share: the offset after the last record read of each partition."""
        try:
            with map_errors(f"join group {group} on {self.topic}"):
                await self._unless_closed(consumer.start())
                if self.share is not None:
                    consumer.assign(await self._unless_closed(self._shared_partitions()))
            while not self._closed.is_set():
                with map_errors(f"fetch from {self.topic}"):
                    fetched = await self._unless_closed(
                        consumer.getmany(timeout_ms=POLL_MS, max_records=BATCH)
                    )
                batch, offsets = self._decode(fetched)
                if self.share is not None:
                    read.update(offsets)
                    await self._rewind_recreated(consumer, read)
                if batch:
                    yield batch  # processed once the caller asks for the next batch
                if offsets:
                    await self._commit(consumer, group, offsets, self.session_timeout_ms)
        except _Closed:
            return
        finally:
            self._consumers.discard(consumer)
            try:
                await consumer.stop()  # leaves the group: its partitions move at once
            except Exception:
                log.warning("stopping the consumer of %s failed", group, exc_info=True)

    async def _shared_partitions(self) -> list[TopicPartition]:
        """This process's share ``i/n`` of the topic's partitions: those whose number is
        ``i`` modulo ``n`` (the topic as the broker has it now; the log is started)."""
        if self._producer is None:
            raise BusError(f"Kafka log {self.topic}: consuming a share needs start() first")
        index, count = self.share or (0, 1)
        partitions = await self._producer.partitions_for(self.topic)
        return [TopicPartition(self.topic, p) for p in sorted(partitions) if p % count == index]

    async def _rewind_recreated(
        self, consumer: AIOKafkaConsumer, read: dict[TopicPartition, int]
    ) -> None:
        """Share: read a partition from its start again when its end is now below what was
        read of it (the broker restarted empty and the topic was created anew, offsets from
        0: a group's consumer rejoins and starts from the earliest offset, an assigned one
        would wait, skipping every record, until the new offsets passed its position)."""
        for tp, offset in list(read.items()):
            end = consumer.highwater(tp)
            if end is not None and end < offset:
                log.warning(
                    "partition %s[%d] ends at %d, before the %d read (the broker restarted "
                    "without its data?): reading it from its start",
                    tp.topic,
                    tp.partition,
                    end,
                    offset,
                )
                await consumer.seek_to_beginning(tp)
                del read[tp]

    def _decode(
        self, fetched: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]
    ) -> tuple[list[Record], dict[TopicPartition, int]]:
        batch: list[Record] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, messages in fetched.items():
            for message in messages:
                try:
                    batch.extend(decode_records(message.value, values_as_json=True))
                except (ValueError, KeyError, TypeError) as exc:
                    self.skipped += 1
                    log.warning(
                        "skipped a value that is not a record or a batch at %s[%d]@%d: %r",
                        tp.topic,
                        tp.partition,
                        message.offset,
                        exc,
                    )
            if messages:
                offsets[tp] = messages[-1].offset + 1
        return batch, offsets

    @staticmethod
    async def _commit(
        consumer: AIOKafkaConsumer,
        group: str,
        offsets: dict[TopicPartition, int],
        timeout_ms: int,
    ) -> None:
        """Commit what the caller processed; after a rebalance the new owner re-reads it.
        Given up after ``timeout_ms`` (see "A commit the broker keeps refusing")."""
        assigned = consumer.assignment()
        mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not mine:
            return
        try:
            await asyncio.wait_for(consumer.commit(mine), timeout_ms / 1000)
        except (KafkaError, ConsumerStoppedError, TimeoutError) as exc:
            _COMMITS.failed(
                group,
                "group %s could not commit %d partitions (%s): they will be read again",
                group,
                len(mine),
                " ".join(str(exc).split()),
            )
            return
        _COMMITS.recovered(group, "group %s commits again", group)

    async def close(self) -> None:
        """Flush and stop the producer; end every consume loop of this object."""
        self._closed.set()
        producer, self._producer = self._producer, None
        if producer is not None:
            with map_errors(f"flush to {self.topic}"):
                try:
                    await producer.flush()
                finally:
                    await producer.stop()
