"""The ingest role: device messages in, decoded records to the store and the log.

Per message: look the machine up (unknown machines are rejected and counted),
decode ``vehicle_can`` frames with the machine's DBC or validate
``client_raw_data`` values, then queue one :class:`Record`.  A writer task takes
what has queued, waits ``linger`` (50 ms) for the rest of the second's
messages (up to ``batch_max`` records), makes the batch durable, acknowledges its
device messages and hands it to an appender task that appends it to the log.

Durable means one of two things:

* **in the store** -- the normal path while the store keeps up: the batch is
  written to the store before it is appended to the log, so a live point is
  never ahead of history;
* **in the spill journal** (:mod:`livedata.pipeline.spill`, when ingest has one)
  -- when a store write fails or has not finished within ``spill_after``
  seconds (2 s), that batch and every later one go to the journal instead, and a
  drainer task copies the journal to the store in order, deleting each part only
  after the store confirmed it.  Live records keep flowing to the log meanwhile,
  ahead of history but never lost: the history they are ahead of is on disk.
  Once the journal has drained empty the writer goes back to the store.  At start
  the journal still holds what an earlier process acknowledged but did not
  store; it is drained first (the replay).  The history API reads the store, so
  while records wait in the journal a page opened meanwhile shows them only
  after a reload (or live, if they arrive after it subscribed).

Under stress:

* **Store slow or down, with a journal** (the default in every shape): ingest
  keeps its pace until the journal holds ``spill_max_bytes`` (256 MiB: about 80
  minutes of the demo's 100 machines at 1 Hz, at 270 B per record; see
  ``bench/bench_ingest.py --store-down``).  Then the writer waits for the drainer, the
  in-memory queue fills (``queue_max`` records), and :meth:`Ingest.handle` waits,
  which slows the device link down instead of growing memory.  The drainer
  retries a failed store write with backoff (0.5 s … ``drain_retry_max``, 5 s),
  so the store's return is noticed within seconds.
* **Store slow or down, without a journal**: the writer retries the batch with
  backoff (1 s … 30 s) and never drops it; the queue fills and ``handle`` waits.
  The live path stops with the store.
* **Log slow or down** (Kafka restarting): the appender retries the oldest batch
  with backoff (0.5 s … 5 s), in order; the log's own ``append`` also waits while
  the log is full.  Storing and acknowledging go on meanwhile, so the broker keeps
  being acknowledged, until ``queue_max`` durable records wait for the log; then
  the writer waits, the queue fills and ``handle`` waits.  Those records are
  durable already: a crash while they wait loses their live publication and alert
  evaluation, never their storage.
* **Journal write fails** (disk full): retried with backoff; each attempt first
  tries the store directly when the journal is empty.  Nothing is acknowledged
  until one of the two has the batch.

Memory is bounded by ``queue_max`` queued records, the batch being written
(``batch_max``), ``queue_max`` records waiting for the log, and one chunk read back
from the journal (``batch_max``).  A repeated failure (store, journal, log) is
logged once per minute with a count (:class:`~livedata.ratelog.Throttled`), and once
when it recovers.

Acknowledgement: a device message is acknowledged to its link only once its
record is durable (store or journal), in arrival order (as MQTT requires of
PUBACKs); the log gets the batch right after.  A crash before that makes a broker
with a persistent session redeliver it (writes are idempotent, so a redelivered
record is stored once).  Over MQTT this matters beyond crashes: while acknowledgements stop, the
broker holds at most ``inflight`` unacknowledged messages for the link and queues
the rest up to its own limit (Mosquitto's ``max_queued_messages``), dropping
beyond it -- so without a journal (``spill_dir=off``) a long store outage becomes
data loss at the broker; with one the broker keeps being acknowledged until the
journal is full.
The in-process link (``local://``) has nothing to acknowledge: its bounded queue
makes the simulated fleet wait instead.
Bad input is counted per machine (see :class:`DecodeStats`) and never stops the
pipeline or the rest of a batch.

The raw frames of every decoded ``vehicle_can`` message go to :attr:`Ingest.frames`
(:class:`~livedata.pipeline.rawframes.FrameKeeper`, its own task): kept in the
store for re-decoding, best effort, never holding up a record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from livedata import observe
from livedata.bus.base import Log
from livedata.catalog import Catalog
from livedata.decode.can import BusState
from livedata.decode.values import decode_values
from livedata.devices.base import Ack, DeviceLink, Rejection
from livedata.errors import BackendError, BusError, DecodeError, StoreError
from livedata.model import DeviceMessage, Kind, MsgType, Record
from livedata.pipeline.dtcs import DtcService
from livedata.pipeline.limits import TimestampPolicy
from livedata.pipeline.rawframes import FrameKeeper
from livedata.pipeline.spill import Chunk, SpillJournal
from livedata.ratelog import Throttled
from livedata.retry import backoff
from livedata.store.base import Store

log = logging.getLogger("livedata.ingest")


@dataclass(slots=True)
class DecodeStats:
    """Per-machine decoding counters, shown by the API."""

    messages: int = 0
    frames: int = 0
    unknown_ids: int = 0
    malformed: int = 0
    rejected: int = 0
    points: int = 0
    last_errors: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "frames": self.frames,
            "unknownIds": self.unknown_ids,
            "malformed": self.malformed,
            "rejected": self.rejected,
            "points": self.points,
            "lastErrors": list(self.last_errors),
        }


class Ingest:
    def __init__(
        self,
        store: Store,
        log: Log,
        catalog: Catalog,
        *,
        batch_max: int = 5_000,
        queue_max: int = 20_000,
        linger: float = 0.05,
        spill: SpillJournal | None = None,
        spill_after: float = 2.0,
        drain_retry_max: float = 5.0,
        timestamps: TimestampPolicy | None = None,
    ) -> None:
        self.store = store
        self.timestamps = timestamps or TimestampPolicy()
        self.log = log
        self.catalog = catalog
        self.batch_max = batch_max
        self.queue_max = queue_max
        self.linger = linger
        self.spill = spill
        """The spill journal (``None``: the writer waits for the store, as without one)."""
        self.spill_after = spill_after
        self.drain_retry_max = drain_retry_max
        self._queue: asyncio.Queue[tuple[Record, Ack | None]] = asyncio.Queue(queue_max)
        self._accepted: deque[float] = deque()
        """When each queued record was accepted (``time.time()``), in queue order."""
        self._batch_since: float | None = None
        """When the oldest record of the batch in hand was accepted, until it is durable."""
        self._direct: asyncio.Task[int] | None = None
        """A store write that outlived ``spill_after``; the drainer lets it end first."""
        self.stats: dict[tuple[str, str], DecodeStats] = {}
        self._buses: dict[tuple[str, str, Kind], BusState] = {}
        """J1939 transport sessions per machine (live and backfill apart: their times differ)."""
        self.dtcs = DtcService(catalog.meta)
        self.frames = FrameKeeper(store, catalog.meta)
        """Raw frames kept for re-decoding, and which DBC decoded which range."""
        self.written = 0
        """Records the store has confirmed."""
        self.spilled = 0
        """Records that went through the spill journal."""
        self._unlogged: deque[list[Record]] = deque()
        """Durable, acknowledged batches not yet in the log, oldest first."""
        self.unlogged = 0
        """Records in those batches (at most ``queue_max`` plus one batch)."""
        self._log_work = asyncio.Event()
        self._log_room = asyncio.Event()
        self._failures = Throttled(logging.getLogger("livedata.ingest"))

    def stats_for(self, tenant: str, chassis: str) -> DecodeStats:
        key = (tenant, chassis)
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = DecodeStats()
        return stats

    def _error(self, stats: DecodeStats, reason: str, message: str) -> None:
        observe.DECODE_ERRORS.labels(reason).inc()
        stats.last_errors.append(f"{time.strftime('%H:%M:%S')} {message}")

    async def handle(self, msg: DeviceMessage, ack: Ack | None = None) -> Record | None:
        """Decode one device message and queue its record; ``None`` if it was rejected.

        ``ack`` is awaited once the record is durable -- in the store, or in the spill
        journal while the store is slow or down -- or at once when the message is
        rejected (a bad message is final, redelivering it would not make it good).
        """
        with observe.log_context(machine=msg.chassis):
            stats = self.stats_for(msg.tenant, msg.chassis)
            stats.messages += 1
            try:
                record = await self._decode(msg, stats)
            except DecodeError as exc:
                await self.reject(msg.tenant, msg.chassis, str(exc), ack)
                return None
            stats.points += len(record.values)
            await self.submit(record, ack)
            return record

    async def submit(self, record: Record, ack: Ack | None = None) -> None:
        """Queue a record that needs no decoding (e.g. rows of the SSE write API)."""
        observe.RECORDS_IN.labels(observe.msg_type_label(record.msg_type), record.kind.value).inc()
        observe.POINTS_IN.inc(len(record.values))
        await self._queue.put((record, ack))
        self._accepted.append(time.time())  # no await since the put: stays in step with it
        observe.INGEST_QUEUE.set(self._queue.qsize())

    async def reject(self, tenant: str, chassis: str, reason: str, ack: Ack | None = None) -> None:
        """Count a message that cannot be used (bad encoding, unknown machine, no DBC)."""
        stats = self.stats_for(tenant, chassis)
        stats.rejected += 1
        self._error(stats, "rejected", reason)
        log.warning("rejected message of %s/%s: %s", tenant, chassis, reason)
        if ack is not None:
            await ack()

    async def _decode(self, msg: DeviceMessage, stats: DecodeStats) -> Record:
        ts = self.timestamps.check(msg.ts, int(time.time() * 1000))
        info = await self.catalog.machine(msg.tenant, msg.chassis)
        if info is None:
            raise DecodeError(f"unknown machine {msg.chassis!r} in organisation {msg.tenant!r}")
        if info.disabled:
            raise DecodeError(f"machine {msg.chassis!r} is disabled")
        if msg.msg_type == MsgType.VEHICLE_CAN:
            if info.decoder is None:
                raise DecodeError(f"no DBC file assigned to machine {msg.chassis!r}")
            key = (msg.tenant, msg.chassis, msg.kind)
            bus = self._buses.get(key) or self._buses.setdefault(key, BusState())
            result = info.decoder.decode(msg.frames, bus)
            self.frames.keep(msg, ts, info.dbc_id, info.dbc_name)
            stats.frames += result.frames
            if result.unknown:
                stats.unknown_ids += result.unknown
                observe.DECODE_ERRORS.labels("unknown_id").inc(result.unknown)
            for error in result.errors:
                stats.malformed += 1
                self._error(stats, "malformed", error)
            if result.errors:
                log.info("%d malformed frames: %s", len(result.errors), result.errors[0])
            values: dict[str, Any] = dict(result.values)
            if result.dm1:
                values.update(await self.dtcs.observe(msg.tenant, msg.chassis, result.dm1))
        else:
            values, errors = decode_values(msg.values)
            for error in errors:
                stats.malformed += 1
                self._error(stats, "malformed", error)
            await self.catalog.note_fields(msg.tenant, msg.chassis, msg.msg_type, set(values))
        return Record(msg.tenant, msg.chassis, msg.msg_type, ts, msg.kind, values)

    def depth(self) -> int:
        """Records queued in memory, waiting for the writer."""
        return self._queue.qsize()

    def oldest_unstored(self) -> float | None:
        """When the oldest record not yet confirmed by the store was accepted (``time.time()``).

        Queued, in the writer's hands, or in the journal; ``None`` when there is none.
        The journal's records are older than the batch in hand, which is older than
        the queue's.
        """
        if self.spill is not None and self.spill.oldest_ms is not None:
            return self.spill.oldest_ms / 1000
        if self._batch_since is not None:
            return self._batch_since
        return self._accepted[0] if self._accepted else None

    def update_gauges(self) -> None:
        """Set the ingest gauges of :mod:`livedata.observe` (also done after every batch)."""
        observe.INGEST_QUEUE.set(self._queue.qsize())
        observe.INGEST_UNLOGGED.set(self.unlogged)
        oldest = self.oldest_unstored()
        observe.UNSTORED_AGE.set(0.0 if oldest is None else max(0.0, time.time() - oldest))
        if self.spill is not None:
            observe.SPILL_RECORDS.set(self.spill.records)
            observe.SPILL_BYTES.set(self.spill.bytes)
            observe.SPILL_MAX_BYTES.set(self.spill.max_bytes)

    async def start(self) -> None:
        """Open the spill journal, if any (the runtime does so before the roles run)."""
        if self.spill is not None:
            await self.spill.open()

    async def close(self) -> None:
        """Close the spill journal, if any; call once :meth:`run` has ended."""
        await self.frames.close()
        if self.spill is not None:
            await self.spill.close()

    async def run(self) -> None:
        """Make queued records durable, acknowledge them, append them to the log; with a
        journal, also drain it to the store.  Until cancelled."""
        with observe.log_context(role="ingest"):
            await self.start()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._writer(), name="ingest-writer")
                tasks.create_task(self._appender(), name="ingest-appender")
                tasks.create_task(self.frames.run(), name="ingest-raw-frames")
                if self.spill is not None:
                    tasks.create_task(self._drainer(), name="ingest-drainer")

    async def _writer(self) -> None:
        try:
            while True:
                batch = [await self._queue.get()]
                self._batch_since = self._accepted.popleft()
                self._take(batch)
                if len(batch) < self.batch_max and self.linger:
                    # the machines of one second arrive together: wait for the rest of them,
                    # one transaction per second instead of dozens (measured: 4x less CPU and
                    # disk per record in SQLite)
                    await asyncio.sleep(self.linger)
                    self._take(batch)
                observe.INGEST_QUEUE.set(self._queue.qsize())
                records = [record for record, _ in batch]
                if self.spill is None:
                    await self._write(records)
                else:
                    await self._keep(records, self._batch_since)
                self._batch_since = None
                for _, ack in batch:
                    if ack is not None:
                        await self._ack(ack)
                await self._hand_to_log(records)
                self.update_gauges()
        finally:
            self._batch_since = None
            direct, self._direct = self._direct, None
            if direct is not None:
                direct.cancel()

    def _take(self, batch: list[tuple[Record, Ack | None]]) -> None:
        while len(batch) < self.batch_max and not self._queue.empty():
            batch.append(self._queue.get_nowait())
            self._accepted.popleft()

    @property
    def spilling(self) -> bool:
        """Whether batches go to the journal (it has rows, or a slow store write is pending)."""
        return self.spill is not None and (self.spill.rows > 0 or self._direct is not None)

    async def _keep(self, records: list[Record], accepted: float | None) -> None:
        """Make ``records`` durable: in the store while it keeps up, else in the journal."""
        assert self.spill is not None
        delays = backoff(1.0, 30.0)
        while True:
            if not self.spilling:
                task = asyncio.create_task(self.store.write(records), name="ingest-store-write")
                done, _ = await asyncio.wait({task}, timeout=self.spill_after)
                if not done:
                    self._direct = task
                    log.warning(
                        "store write of %d records has taken over %g s; spilling to %s",
                        len(records),
                        self.spill_after,
                        self.spill.path,
                    )
                else:
                    try:
                        points = task.result()
                    except StoreError as exc:
                        observe.STORE_FAILURES.inc()
                        log.error(
                            "store write of %d records failed; spilling to %s: %s",
                            len(records),
                            self.spill.path,
                            exc,
                        )
                    else:
                        self._stored(records, points)
                        return
            try:
                await self.spill.append(records, accepted)  # waits while the journal is full
            except BackendError as exc:
                observe.SPILL_FAILURES.inc()
                delay = next(delays)
                log.error(
                    "spilling %d records failed, retrying in %.0f s: %s", len(records), delay, exc
                )
                await asyncio.sleep(delay)
                continue
            self.spilled += len(records)
            observe.SPILLED.inc(len(records))
            return

    async def _drainer(self) -> None:
        """Copy the journal to the store, oldest first; delete only what the store confirmed."""
        assert self.spill is not None
        delays = backoff(0.5, self.drain_retry_max)
        chunk: Chunk | None = None  # kept across retries: read and decoded once
        while True:
            await self.spill.wait_for_rows()
            direct = self._direct  # set before its batch was journalled, so seen here
            if direct is not None:  # a slow direct write: let it end first, to keep the order
                await asyncio.wait({direct})
                if not direct.cancelled() and isinstance(direct.exception(), StoreError):
                    observe.STORE_FAILURES.inc()
                self._direct = None
            try:
                if chunk is None:
                    chunk = await self.spill.read(self.batch_max)
                    if chunk is None:
                        continue
                points = await self.store.write(chunk.records)
                await self.spill.delete_through(chunk.last_id)
            except BackendError as exc:
                if isinstance(exc, StoreError):
                    observe.STORE_FAILURES.inc()
                self._failures.failed(  # the text only: a kept exception keeps the chunk alive
                    "drain",
                    "draining the spill journal (%d records) failed, retrying: %s",
                    self.spill.records,
                    str(exc),
                    level=logging.ERROR,
                )
                self.update_gauges()
                await asyncio.sleep(next(delays))
                continue
            self._failures.recovered(
                "drain", "the store takes writes again; %d records to drain", self.spill.records
            )
            delays = backoff(0.5, self.drain_retry_max)
            self._stored(chunk.records, points)
            chunk = None
            self.update_gauges()

    async def _ack(self, ack: Ack) -> None:
        try:
            await ack()
        except Exception as exc:  # the link is gone: the broker will redeliver
            log.warning("acknowledgement failed: %s", exc)

    async def _hand_to_log(self, records: list[Record]) -> None:
        """Queue a durable batch for the log; waits while ``queue_max`` records wait for it."""
        while self.unlogged >= self.queue_max:
            self._log_room.clear()
            await self._log_room.wait()
        self._unlogged.append(records)
        self.unlogged += len(records)
        self._log_work.set()

    async def _appender(self) -> None:
        """Append the durable batches to the log in order, retrying with backoff (0.5 s … 5 s)."""
        delays = backoff(0.5, 5.0)
        while True:
            while not self._unlogged:
                self._log_work.clear()
                await self._log_work.wait()
            records = self._unlogged[0]
            try:
                await self.log.append(records)
            except BusError as exc:
                observe.LOG_FAILURES.inc()
                self._failures.failed(
                    "log",
                    "log append failed, retrying (%d records wait for the log; devices are "
                    "still acknowledged up to %d): %s",
                    self.unlogged,
                    self.queue_max,
                    exc,
                    level=logging.ERROR,
                )
                await asyncio.sleep(next(delays))
                continue
            delays = backoff(0.5, 5.0)
            self._failures.recovered("log", "the log takes appends again")
            self._unlogged.popleft()
            self.unlogged -= len(records)
            self._log_room.set()

    async def _write(self, batch: list[Record]) -> None:
        """Without a journal: write to the store, retrying until it takes the batch."""
        delays = backoff(1.0, 30.0)
        while True:
            try:
                points = await self.store.write(batch)
                break
            except StoreError as exc:
                observe.STORE_FAILURES.inc()
                self._failures.failed(
                    "store",
                    "store write of %d records failed, retrying: %s",
                    len(batch),
                    exc,
                    level=logging.ERROR,
                )
                await asyncio.sleep(next(delays))
        self._failures.recovered("store", "the store takes writes again")
        self._stored(batch, points)

    def _stored(self, batch: list[Record], points: int) -> None:
        now = time.time()
        observe.STORE_BATCHES.inc()
        observe.STORE_POINTS.inc(points)
        for record in batch[:: max(1, len(batch) // 20)]:
            observe.STORE_LAG.observe(max(0.0, now - record.ts / 1000))
        self.written += len(batch)


async def consume_devices(ingest: Ingest, link: DeviceLink) -> None:
    """Feed every delivery of a device link to ``ingest``."""
    with observe.log_context(role="ingest"):
        async for delivery in link.inbound():
            if isinstance(delivery, Rejection):
                await ingest.reject(
                    delivery.tenant, delivery.chassis, delivery.reason, delivery.ack
                )
            else:
                await ingest.handle(delivery.message, delivery.ack)
