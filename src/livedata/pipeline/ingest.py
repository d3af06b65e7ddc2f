"""The ingest role: device messages in, decoded records to the log (live) and the store.

The entry point is :meth:`Ingest.handle_many`: a batch of deliveries (what a device
link received in one go; the HTTP ingest and the SSE write API hand in their messages
the same way) is decoded message by message -- look the machine up (unknown machines
are refused and counted), decode ``vehicle_can`` frames with the machine's DBC or
validate ``client_raw_data`` values -- and its records are queued in one step.  Each
message gets a structured outcome: its :class:`Record`, or a :class:`Refused` saying
why (``code`` and ``reason``), so a caller never parses a log line.  Values are
normalised once, here (:func:`~livedata.store.base.storable_values`: bools as ints,
NaN and objects left out): what the log, the journal and the store get is the same, and
the store does not check them again (:meth:`~livedata.store.base.Store.write_normalised`;
records read back from the spill journal, whose JSON turns an infinite float into null,
go through the checking :meth:`~livedata.store.base.Store.write`).

Two paths leave the queue, in parallel ("one copy stored, another published"):

* **the log** (and so the live channels): every record is handed to an in-order
  appender the moment it is queued, so live does not wait for the store; the
  appender appends what has gathered in one call (a Kafka batch, one memory-log step),
  once the oldest of them has waited the log's ``batch_ms`` (Kafka: 100 ms, as a produce
  request has a fixed cost; others: none) -- the append in flight before counting -- or
  ``batch_max`` wait;
* **the store**: a writer task takes what has queued, and waits for more until the
  batch has ``batch_max`` records or its oldest record is ``linger`` old -- batches
  bounded by size and by age, one transaction for a second's fleet instead of dozens
  (measured: 4x less CPU and disk per record in SQLite) -- then makes the batch
  durable.  Both bounds default to the store's own (:attr:`Store.batch_max
  <livedata.store.base.Store.batch_max>`, :attr:`~livedata.store.base.Store.batch_ms`:
  50 ms for SQLite, memory and PostgreSQL, 1 s for ClickHouse).  The writer also
  stops waiting once half of ``ack_window`` deliveries wait for their acknowledgement: a
  link that sends at most ``ack_window`` unacknowledged (MQTT's ``inflight``) sends
  nothing more until some are acknowledged, so waiting longer would only cap its rate at
  ``ack_window`` / ``linger`` messages/s, and with the other half still open the link
  keeps receiving while the batch is written and acknowledged (with the whole window as
  the trigger, the broker held the last messages of each second's burst at 5,000
  machines until then: 10 % of the link's reads found its window full,
  ``bench/bench_cluster.py --hops``).  A batch whose records the log has not taken
  yet waits for the log before it is written (at most ``log_wait``; not at all while the
  log is failing or hung): the acknowledgement needs both anyway, and the log is the
  live path.  A fleet sending on the second hands each ingest process a burst, whose
  last messages complete the ack window; the store write it set off (ClickHouse: the
  insert encoded on a thread that holds the GIL half the time, then the server's work on
  it) then ran beside the appends of the burst's last records and delayed them.

A device message is acknowledged once its record is durable **and** in the log, in
arrival order (as MQTT requires of PUBACKs), by an acker task, so the writer goes on
with the next batch meanwhile.  When the log has not taken the records within
``log_wait`` (1 s) of their durability, or is failing (its appender retrying) or hung
(an append in flight for ``log_wait``: a stopped Kafka until its request timeout), the
acknowledgement goes by durability alone and the records wait for the log in a bounded
backlog, beyond half of ``queue_max`` in the log journal on disk (see below): a crash
then loses the live publication and alert evaluation of those still in memory, never
their storage.  (A Kafka that stopped makes ``append`` wait up to its 40 s request
timeout before failing; without the bound the broker would stop sending after
``inflight`` unacknowledged messages and storing would stop with it.)

Durable means one of two things:

* **in the store** -- the normal path while the store keeps up;
* **in the spill journal** (:mod:`livedata.pipeline.spill`, when ingest has one)
  -- when a store write has not finished within ``spill_after`` seconds (2 s), its
  batch is journalled (so it can be acknowledged) while the write goes on; the next
  batch waits up to ``spill_after`` for that write, and when it succeeded, the write
  deletes its own row and the next batch goes to the store too.  So a store that is
  slow but up costs one journal append and delete per slow batch, never a read-back
  and a second store write.  When a store write fails, or the one in flight has not
  ended by then, that batch and every later one go to the journal instead, and a
  drainer task copies the journal to the store in order (after the write in flight
  ended), deleting each part only after the store confirmed it.  Once the journal has
  drained empty the writer goes back to the store.  At start the journal still holds
  what an earlier process acknowledged but did not store; it is drained first (the
  replay).  The history API reads the store, so while records wait in the journal a
  page opened meanwhile shows them only after a reload (or live, if they arrive after
  it subscribed).

Live records are ahead of history by the store write (tens of ms): a page that loads
history and subscribes at once may get a point live that its history does not have yet,
never the other way round.

Under stress:

* **Store slow or down, with a journal** (the default in every shape): ingest
  keeps its pace until the journal holds ``spill_max_bytes`` (256 MiB: about 80
  minutes of the demo's 100 machines at 1 Hz, at 270 B per record; see
  ``bench/bench_ingest.py --store-down``).  Then the writer waits for the drainer, the
  in-memory queue fills (``queue_max`` records), and :meth:`Ingest.handle_many` waits,
  which slows the device link down instead of growing memory.  The drainer
  retries a failed store write with backoff (0.5 s … ``drain_retry_max``, 5 s),
  so the store's return is noticed within seconds.
* **Store slow or down, without a journal**: the writer retries the batch with
  backoff (1 s … 30 s) and never drops it; the queue fills and ``handle_many`` waits.
  Live keeps going until then.
* **Log slow or down** (Kafka restarting or stopped): the appender retries the oldest
  chunk with backoff (0.5 s … 5 s), in order; the log's own ``append`` also waits
  while the log is full.  Storing and acknowledging go on meanwhile, so the broker
  keeps being acknowledged.  With a log journal (``ingest-log.db`` in ``spill_dir``,
  the same :class:`~livedata.pipeline.spill.SpillJournal` machinery, on wherever the
  spill journal is), once more than ``queue_max / 2`` records wait for the log in
  memory a journaller task moves the oldest to it (up to ``batch_max`` a row, one
  fsync each), so memory stays bounded and ``handle_many`` keeps its pace until the
  journal holds ``log_journal_max_bytes`` (1 GiB: about 30 minutes of 1,000 machines
  sending 2 records/s, at the demo's 270 B a record); then the move waits, memory fills to
  ``queue_max`` and ``handle_many`` waits.  When the log is back the appender takes
  the journal first -- its records are older than memory's -- then memory, so each
  machine's records reach the log in the order ingest took them; each journal part is
  deleted only after the log took it (a crash in between appends it again: at least
  once, as a redelivery would).  At start an earlier process's journal is appended
  first (the replay).  Journalled records are as good as in the log for the
  acknowledgement.  A journal that fails (disk full) puts the records back in memory
  and is retried with backoff, and ingest waits at ``queue_max`` as without one.
  Without a journal (``spill_dir=off``) ``handle_many`` waits once ``queue_max``
  records wait for the log.
  Replayed records are old but otherwise ordinary: distribute publishes them live
  (in order, after the others of their machine that reached the log first); a chart
  keeps its points sorted by time, merges them into the gap the outage left and drops
  those more than its window behind its newest point; the fleet page takes their
  values (the newest last) and counts their arrival as a sign of life; alerts evaluate
  them in order (a condition that held during the outage is raised late, once) and
  skip records over 10 minutes old, so a long outage floods nothing.
* **Journal write fails** (disk full): retried with backoff; each attempt first
  tries the store directly when the journal is empty.  Nothing is acknowledged
  until one of the two has the batch.

Memory is bounded by ``queue_max`` queued records plus one handed-in batch, the batches
being written (``batch_max`` each: the one in hand, and a slow one journalled and still in
flight), ``queue_max`` records waiting for the log plus one handed-in batch, and one chunk
read back from each journal (``batch_max``).  A repeated failure (store, journal, log),
slow store writes and refused messages are logged once per minute with a count
(:class:`~livedata.ratelog.Throttled`), and once when the failure ends.

Acknowledgement and redelivery: a crash before the acknowledgement makes a broker
with a persistent session redeliver the message (writes are idempotent, so a
redelivered record is stored once).  Over MQTT this matters beyond crashes: while
acknowledgements stop, the broker holds at most ``inflight`` unacknowledged messages
for the link and queues the rest up to its own limit (Mosquitto's
``max_queued_messages``), dropping beyond it -- so without a journal (``spill_dir=off``)
a long store outage becomes data loss at the broker; with one the broker keeps being
acknowledged until the journal is full.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from livedata import observe
from livedata.bus.base import Log
from livedata.catalog import Catalog, MachineInfo
from livedata.decode.can import BusState
from livedata.decode.dm1 import Dm1
from livedata.decode.values import decode_values
from livedata.devices.base import Ack, Delivery, DeviceLink, Rejection
from livedata.errors import BackendError, BusError, DecodeError, StoreError
from livedata.model import DeviceMessage, Kind, MsgType, Record
from livedata.pipeline.dtcs import DtcService
from livedata.pipeline.limits import TimestampPolicy
from livedata.pipeline.rawframes import FrameKeeper
from livedata.pipeline.spill import Chunk, SpillJournal
from livedata.ratelog import Throttled
from livedata.retry import backoff
from livedata.store.base import Store, normalised

log = logging.getLogger("livedata.ingest")

HANDLE_MAX = 500
"""Deliveries :func:`consume_devices` hands to :meth:`Ingest.handle_many` at most in one
call, letting the event loop run between calls.  Decoding is synchronous (a ``vehicle_can``
message costs tens of µs), so a link's whole backlog (up to its ``inflight``, 5,000 over
MQTT) in one call held the loop for hundreds of ms on a busy machine: the log's appender,
the acker and the link's reader waited for all of it, and each record for the whole batch
to be decoded before any of it was queued.  Measured at 5,000 machines
(``bench/bench_cluster.py --fleets 5000 --ingest 2 --hops``): see bench/README.md."""
MAX_UNKNOWN_MACHINES = 1_000
"""Machines not in the catalog whose :class:`DecodeStats` are kept (the most recently
refused ones): made-up ids in topics or URLs cannot grow ingest's memory."""


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


@dataclass(frozen=True, slots=True)
class Refused:
    """Why ingest refused a message: ``code`` is ``decode_error`` (the payload cannot be
    read) or ``rejected`` (readable but unusable: unknown machine, no DBC, bad time)."""

    code: str
    reason: str


Outcome = Record | Refused
"""What became of one message handed to :meth:`Ingest.handle_many`."""


async def _wait_until(event: asyncio.Event, done: Callable[[], bool], deadline: float) -> None:
    """Wait until ``done()`` holds, checked each time ``event`` is set, or until the
    monotonic ``deadline`` has passed."""
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        event.clear()
        try:
            async with asyncio.timeout(left):
                await event.wait()
        except TimeoutError:
            return


class Ingest:
    def __init__(
        self,
        store: Store,
        log: Log,
        catalog: Catalog,
        *,
        batch_max: int | None = None,
        queue_max: int = 20_000,
        linger: float | None = None,
        spill: SpillJournal | None = None,
        spill_after: float = 2.0,
        log_journal: SpillJournal | None = None,
        drain_retry_max: float = 5.0,
        timestamps: TimestampPolicy | None = None,
        log_wait: float = 1.0,
    ) -> None:
        self.store = store
        self.timestamps = timestamps or TimestampPolicy()
        self.log = log
        self.catalog = catalog
        self.batch_max = store.batch_max if batch_max is None else batch_max
        self.queue_max = queue_max
        self.linger = store.batch_ms / 1000 if linger is None else linger
        """Seconds a store batch waits for more records after its oldest (see the module doc)."""
        self.ack_window: int | None = None
        """The smallest window of the device links feeding ingest (:func:`consume_devices`):
        once half of it waits for its acknowledgement the writer stops lingering."""
        self._unacked = 0
        """Accepted deliveries with an ack, not yet acknowledged."""
        self.spill = spill
        """The spill journal (``None``: the writer waits for the store, as without one)."""
        self.spill_after = spill_after
        self.drain_retry_max = drain_retry_max
        self._queue: deque[tuple[Record, Ack | None, float]] = deque()
        """Records waiting for the writer, with their ack and when they were accepted."""
        self._queue_work = asyncio.Event()
        self._queue_full = asyncio.Event()
        """Set while the queue holds ``batch_max`` records or half of ``ack_window``
        deliveries wait for their acknowledgement: the writer need not linger."""
        self._room = asyncio.Event()
        """Set when the queue or the log backlog got room."""
        self._queued = 0
        """Records queued so far; the log gets them in the same order."""
        self._taken = 0
        """Records the writer has taken so far."""
        self._logged = 0
        """Records the log has accepted so far."""
        self._log_progress = asyncio.Event()
        self._log_failing = False
        self._append_since: float | None = None
        """When the log append in flight began (monotonic), ``None`` between appends."""
        self.log_wait = log_wait
        """How long an acknowledgement waits for the log after its batch is durable."""
        self._to_ack: deque[tuple[int, float, list[Ack]]] = deque()
        """Durable batches to acknowledge, oldest first: (records queued up to the batch's
        last, when it became durable (monotonic), its acks)."""
        self._ack_work = asyncio.Event()
        self._batch_since: float | None = None
        """When the oldest record of the batch in hand was accepted, until it is durable."""
        self._direct: asyncio.Task[None] | None = None
        """A store write that outlived ``spill_after`` (its batch is the journal's first
        row): :meth:`_slow_write`; the drainer lets it end first."""
        self.stats: dict[tuple[str, str], DecodeStats] = {}
        """Decoding counters of the machines in the catalog, and of at most
        :data:`MAX_UNKNOWN_MACHINES` others."""
        self._unknown: dict[tuple[str, str], None] = {}
        """Machines refused as unknown (or for a payload no one could read), oldest first."""
        self._erred: set[tuple[str, str]] = set()
        """Machines whose error counters moved (or were dropped) since :meth:`take_erred`."""
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
        """Queued batches not yet in the log, oldest first."""
        self._unlogged_since: float | None = None
        """When (monotonic) the oldest of :attr:`_unlogged` was queued, about (``None``: empty)."""
        self.unlogged = 0
        """Records waiting for the log in memory (at most ``queue_max`` plus one handed-in
        batch): queued, in the appender's hands, or being moved to the log journal."""
        self._log_work = asyncio.Event()
        self._log_full = asyncio.Event()
        """Set when ``batch_max`` records wait for the log in memory: the appender's linger
        ends early.  Not :attr:`_log_work`, set by every handed-in batch: a link hands in
        a few messages per event-loop turn, and waking the lingering appender for each
        (a task step and a timeout each time) cost more than the append."""
        self.log_journal = log_journal
        """The log journal (``None``: records wait for the log in memory only)."""
        self.log_memory_max = max(1, queue_max // 2)
        """Records waiting for the log in memory beyond which the oldest go to the log journal."""
        self._moving = 0
        """Records taken from memory for the log journal, not yet in it."""
        self._log_over = asyncio.Event()
        """Set when more than ``log_memory_max`` records wait for the log in memory."""
        self.log_journalled = 0
        """Records that went through the log journal."""
        self._failures = Throttled(logging.getLogger("livedata.ingest"))
        self._refusals = Throttled(logging.getLogger("livedata.ingest"))

    def stats_for(self, tenant: str, chassis: str) -> DecodeStats:
        key = (tenant, chassis)
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = DecodeStats()
        return stats

    def take_erred(self) -> set[tuple[str, str]]:
        """The machines whose error counters moved since the last call, or whose
        counters were dropped (then they are no longer in :attr:`stats`)."""
        erred, self._erred = self._erred, set()
        return erred

    def _note_unknown(self, key: tuple[str, str]) -> None:
        """Count ``key`` among the unknown machines; drop the counters of the one refused
        longest ago beyond :data:`MAX_UNKNOWN_MACHINES`."""
        unknown = self._unknown
        unknown.pop(key, None)
        unknown[key] = None
        if len(unknown) > MAX_UNKNOWN_MACHINES:
            oldest = next(iter(unknown))
            del unknown[oldest]
            self.stats.pop(oldest, None)
            self._erred.add(oldest)

    def _error(self, key: tuple[str, str], stats: DecodeStats, reason: str, message: str) -> None:
        observe.DECODE_ERRORS.labels(reason).inc()
        stats.last_errors.append(f"{time.strftime('%H:%M:%S')} {message}")
        self._erred.add(key)

    async def handle(self, msg: DeviceMessage, ack: Ack | None = None) -> Record | None:
        """:meth:`handle_many` for one message: its record, ``None`` if it was refused."""
        outcome = (await self.handle_many([Delivery(msg, ack)]))[0]
        return outcome if isinstance(outcome, Record) else None

    async def handle_many(self, deliveries: Sequence[Delivery | Rejection]) -> list[Outcome]:
        """Decode a batch of deliveries and queue their records in one step; one outcome each.

        Each delivery's ``ack`` is awaited once its record is durable -- in the store, or
        in the spill journal while the store is slow or down -- and in the log, or at
        once when the message is refused (a bad message is final, redelivering it would
        not make it good).  Waits while the queue or the log backlog is full.

        The usual message waits for nothing: the clock is read once per batch (again after
        an organisation's first load), the organisation's machines once per run of
        messages of one organisation (:meth:`Catalog.cached`), and only a first load (of an
        organisation, or of a machine's active DTCs: a DM1's changes are written by
        :meth:`DtcService.run`), or a field name never seen before is awaited -- the
        batch's new field names in one statement per organisation (a fleet's first
        messages: one row set for thousands of machines instead of a transaction each,
        which at 5,000 machines kept each ingest process from its messages for 15-25 s at
        start-up).
        """
        outcomes: list[Outcome] = []
        accepted: list[tuple[Record, Ack | None]] = []
        dtcs: list[tuple[str, str, list[Dm1], dict[str, Any], DecodeStats]] = []
        catalog = self.catalog
        now_ms = int(time.time() * 1000)
        tenant_of: str | None = None
        machines: dict[str, MachineInfo] = {}
        # the batch's field names never seen before, saved in one statement per
        # organisation (a fleet's first second: thousands of machines, one each)
        new_fields: dict[str, list[tuple[str, str, str]]] = {}
        for delivery in deliveries:
            if isinstance(delivery, Rejection):
                outcomes.append(
                    await self.reject(
                        delivery.tenant, delivery.chassis, delivery.reason, delivery.ack
                    )
                )
                continue
            msg = delivery.message
            tenant, chassis = msg.tenant, msg.chassis
            stats = self.stats_for(tenant, chassis)
            stats.messages += 1
            token = observe.machine_var.set(chassis)  # log_context, without its generator
            try:
                if tenant != tenant_of:
                    found = catalog.cached(tenant)
                    if found is None:
                        found = await catalog.machines(tenant)
                        now_ms = int(time.time() * 1000)
                    machines, tenant_of = found, tenant
                record, dm1 = self._decode(msg, stats, machines.get(chassis), now_ms)
                if dm1:
                    dtcs.append((tenant, chassis, dm1, record.values, stats))
                elif msg.msg_type == MsgType.CLIENT_RAW_DATA:
                    names = record.values.keys()
                    if not catalog.fields_known(tenant, chassis, msg.msg_type, names):
                        claimed = await catalog.claim_fields(tenant, chassis, msg.msg_type, names)
                        if claimed:
                            new_fields.setdefault(tenant, []).extend(claimed)
            except DecodeError as exc:
                outcomes.append(
                    await self.reject(tenant, chassis, str(exc), delivery.ack, "rejected")
                )
                continue
            finally:
                observe.machine_var.reset(token)
            stats.points += len(record.values)
            outcomes.append(record)
            accepted.append((record, delivery.ack))
        for tenant, rows in new_fields.items():
            await catalog.save_fields(tenant, rows)
        if dtcs:  # the batch's DM1s: their changes queued for one metadata transaction
            summaries = await self.dtcs.observe_many([item[:3] for item in dtcs])
            for (*_, values, stats), summary in zip(dtcs, summaries, strict=True):
                points = len(values)
                values.update(summary)
                stats.points += len(values) - points
        if accepted:
            await self._enqueue(accepted)
        return outcomes

    async def submit(self, record: Record, ack: Ack | None = None) -> None:
        """Queue a record that needs no decoding (e.g. rows of the SSE write API)."""
        await self.submit_many([(record, ack)])

    async def submit_many(self, items: Sequence[tuple[Record, Ack | None]]) -> None:
        """Queue records that need no decoding, in one step (their values are normalised)."""
        for record, _ in items:
            record.values = normalised(record.values)
        await self._enqueue(items)

    async def reject(
        self,
        tenant: str,
        chassis: str,
        reason: str,
        ack: Ack | None = None,
        code: str = "decode_error",
    ) -> Refused:
        """Count a message that cannot be used (bad encoding, unknown machine, no DBC).

        Logged once a minute, with a count of the others (one key for all: an attacker's
        made-up machine ids cannot grow it); each machine's count is in its
        :class:`DecodeStats`."""
        key = (tenant, chassis)
        if key not in self.stats or key in self._unknown:
            self._note_unknown(key)
        stats = self.stats_for(tenant, chassis)
        stats.rejected += 1
        self._error(key, stats, "rejected", reason)
        self._refusals.failed("refused", "refused a message of %s/%s: %s", tenant, chassis, reason)
        if ack is not None:
            await ack()
        return Refused(code, reason)

    async def _enqueue(self, items: Sequence[tuple[Record, Ack | None]]) -> None:
        """Queue records for the writer and hand them to the log, in one step and one order."""
        while len(self._queue) >= self.queue_max or self.unlogged >= self.queue_max:
            self._room.clear()
            await self._room.wait()
        now = time.time()
        records: list[Record] = []
        counts: dict[tuple[str, Kind], int] = {}
        points = 0
        unacked = 0
        for record, ack in items:
            key = (record.msg_type, record.kind)
            counts[key] = counts.get(key, 0) + 1
            points += len(record.values)
            self._queue.append((record, ack, now))
            records.append(record)
            if ack is not None:
                unacked += 1
        self._unacked += unacked
        for (msg_type, kind), count in counts.items():
            observe.records_in(msg_type, kind.value).inc(count)
        observe.POINTS_IN.inc(points)
        self._queued += len(records)
        if not self._unlogged:
            self._unlogged_since = time.monotonic()
        self._unlogged.append(records)
        self.unlogged += len(records)
        self._log_work.set()
        if self.unlogged >= self.batch_max:
            self._log_full.set()
        if self.unlogged > self.log_memory_max:
            self._log_over.set()
        self._queue_work.set()
        if self._full():
            self._queue_full.set()
        observe.INGEST_QUEUE.set(len(self._queue))

    def _full(self) -> bool:
        """Whether the writer should take a batch now rather than wait for more records."""
        window = self.ack_window
        return len(self._queue) >= self.batch_max or (
            window is not None and 2 * self._unacked >= window
        )

    def _decode(
        self, msg: DeviceMessage, stats: DecodeStats, info: MachineInfo | None, now_ms: int
    ) -> tuple[Record, list[Dm1]]:
        """The record of ``msg`` from machine ``info`` (``None``: unknown), and the DM1s
        :meth:`handle_many` gives to the DTC service; :class:`DecodeError` to refuse it."""
        ts = self.timestamps.check(msg.ts, now_ms)
        if info is None:
            self._note_unknown((msg.tenant, msg.chassis))
            raise DecodeError(f"unknown machine {msg.chassis!r} in organisation {msg.tenant!r}")
        if info.disabled:
            raise DecodeError(f"machine {msg.chassis!r} is disabled")
        dm1: list[Dm1] = []
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
                self._erred.add((msg.tenant, msg.chassis))
                observe.DECODE_ERRORS.labels("unknown_id").inc(result.unknown)
            for error in result.errors:
                stats.malformed += 1
                self._error((msg.tenant, msg.chassis), stats, "malformed", error)
            if result.errors:
                log.info("%d malformed frames: %s", len(result.errors), result.errors[0])
            values: dict[str, Any] = result.values
            if not info.decoder.storable:  # e.g. a 64-bit unsigned signal: wider than int64
                values = normalised(values)
            dm1 = result.dm1
        else:
            values, errors = decode_values(msg.values)  # storable already
            for error in errors:
                stats.malformed += 1
                self._error((msg.tenant, msg.chassis), stats, "malformed", error)
        return Record(msg.tenant, msg.chassis, msg.msg_type, ts, msg.kind, values), dm1

    def depth(self) -> int:
        """Records queued in memory, waiting for the writer."""
        return len(self._queue)

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
        return self._queue[0][2] if self._queue else None

    def update_gauges(self) -> None:
        """Set the ingest gauges of :mod:`livedata.observe` (also done after every batch)."""
        observe.INGEST_QUEUE.set(len(self._queue))
        observe.INGEST_UNLOGGED.set(self.unlogged)
        oldest = self.oldest_unstored()
        observe.UNSTORED_AGE.set(0.0 if oldest is None else max(0.0, time.time() - oldest))
        if self.spill is not None:
            observe.SPILL_RECORDS.set(self.spill.records)
            observe.SPILL_BYTES.set(self.spill.bytes)
            observe.SPILL_MAX_BYTES.set(self.spill.max_bytes)
        if self.log_journal is not None:
            observe.LOG_JOURNAL_RECORDS.set(self.log_journal.records)

    def _journals(self) -> list[SpillJournal]:
        return [j for j in (self.spill, self.log_journal) if j is not None]

    async def start(self) -> None:
        """Open the spill and log journals, if any (the runtime does so before the roles
        run); what an earlier process left in them is the replay."""
        for journal in self._journals():
            await journal.open()

    async def close(self) -> None:
        """Close the journals, if any; call once :meth:`run` has ended."""
        await self.frames.close()
        await self.dtcs.close()
        for journal in self._journals():
            await journal.close()

    async def run(self) -> None:
        """Append queued records to the log, make them durable, acknowledge them; with a
        journal, also drain it to the store.  Until cancelled."""
        with observe.log_context(role="ingest"):
            await self.start()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._writer(), name="ingest-writer")
                tasks.create_task(self._appender(), name="ingest-appender")
                tasks.create_task(self.frames.run(), name="ingest-raw-frames")
                tasks.create_task(self.dtcs.run(), name="ingest-dtcs")
                tasks.create_task(self._acker(), name="ingest-acker")
                if self.spill is not None:
                    tasks.create_task(self._drainer(), name="ingest-drainer")
                if self.log_journal is not None:
                    tasks.create_task(self._log_journaller(), name="ingest-log-journaller")

    async def _next_batch(self) -> list[tuple[Record, Ack | None, float]]:
        """The writer's next batch: ``batch_max`` records, or fewer once the oldest is
        ``linger`` old."""
        while not self._queue:
            self._queue_work.clear()
            await self._queue_work.wait()
        if self.linger and not self._full():
            # the machines of one second arrive together: wait for the rest of them
            left = self._queue[0][2] + self.linger - time.time()
            if left > 0:
                self._queue_full.clear()
                try:
                    async with asyncio.timeout(min(left, self.linger)):
                        await self._queue_full.wait()
                except TimeoutError:
                    pass
        count = min(len(self._queue), self.batch_max)
        batch = [self._queue.popleft() for _ in range(count)]
        if not self._full():
            self._queue_full.clear()
        self._taken += count
        self._room.set()
        return batch

    async def _writer(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                self._batch_since = batch[0][2]
                observe.INGEST_QUEUE.set(len(self._queue))
                taken = self._taken
                await _wait_until(  # live first: see "the store" in the module doc
                    self._log_progress,
                    lambda: self._logged >= taken or self._log_down(),  # noqa: B023 (awaited here)
                    time.monotonic() + self.log_wait,
                )
                records = [record for record, _, _ in batch]
                if self.spill is None:
                    await self._write(records)
                else:
                    await self._keep(records, self._batch_since)
                self._batch_since = None
                acks = [ack for _, ack, _ in batch if ack is not None]
                if acks:
                    self._to_ack.append((self._taken, time.monotonic(), acks))
                    self._ack_work.set()
                self.update_gauges()
        finally:
            self._batch_since = None
            direct, self._direct = self._direct, None
            if direct is not None:
                direct.cancel()

    async def _acker(self) -> None:
        """Acknowledge durable batches in order, each once the log has its records too (or
        the log journal) -- or once it has waited ``log_wait`` for that, or the log is
        failing or hung (:meth:`_log_down`; then durability is enough, as the records wait
        for the log in memory or in the log journal)."""
        while True:
            while not self._to_ack:
                self._ack_work.clear()
                await self._ack_work.wait()
            count, durable_at, acks = self._to_ack[0]
            await _wait_until(
                self._log_progress,
                lambda: self._logged >= count or self._log_down(),  # noqa: B023 (awaited here)
                durable_at + self.log_wait,
            )
            self._to_ack.popleft()
            for ack in acks:  # inline, not a helper coroutine: one fewer per message
                try:
                    await ack()
                except Exception as exc:  # the link is gone: the broker will redeliver
                    log.warning("acknowledgement failed: %s", exc)
            self._unacked -= len(acks)

    def _log_down(self) -> bool:
        """Whether the log is failing, or its append in flight has hung for ``log_wait``
        (a stopped Kafka, until its request timeout): then acknowledging waits no more
        for it, else a link's window of unacknowledged messages would cap its rate at one
        window per ``log_wait``."""
        since = self._append_since
        return self._log_failing or (
            since is not None and time.monotonic() - since >= self.log_wait
        )

    @property
    def spilling(self) -> bool:
        """Whether the journal holds rows, or a slow store write is pending."""
        return self.spill is not None and (self.spill.rows > 0 or self._direct is not None)

    async def _keep(self, records: list[Record], accepted: float | None) -> None:
        """Make ``records`` durable: in the store while it is up, else in the journal.

        A store write that outlives ``spill_after`` has its batch journalled (so it can be
        acknowledged) and goes on; the next batch waits up to ``spill_after`` for it, and
        when it succeeds, deletes its row and goes to the store too.  So a store that is
        merely slow costs one journal append and delete per slow batch, never a read-back
        and a second store write; only a failed or hanging write starts the drain."""
        assert self.spill is not None
        delays = backoff(1.0, 30.0)
        while True:
            direct = self._direct
            if direct is not None and not direct.done() and self.spill.rows == 1:
                await asyncio.wait({direct}, timeout=self.spill_after)
            if self.spill.rows == 0:  # else the drainer stores the journal first, in order
                task = asyncio.create_task(
                    self.store.write_normalised(records), name="ingest-store-write"
                )
                done, _ = await asyncio.wait({task}, timeout=self.spill_after)
                if not done:
                    self._failures.failed(
                        "slow",
                        "store write of %d records has taken over %g s; journalling it to %s",
                        len(records),
                        self.spill_after,
                        self.spill.path,
                    )
                else:
                    self._failures.recovered("slow", "store writes end within spill_after again")
                while not done:  # journal it, so that it can be acknowledged
                    if await self._journal(records, accepted):
                        self._direct = asyncio.create_task(
                            self._slow_write(task, records, self.spill.last_id),
                            name="ingest-slow-store-write",
                        )
                        return
                    done, _ = await asyncio.wait({task}, timeout=next(delays))
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
            if await self._journal(records, accepted):
                return
            await asyncio.sleep(next(delays))

    async def _journal(self, records: list[Record], accepted: float | None) -> bool:
        """Append ``records`` to the journal (waits while it is full); ``False``: the append
        failed (logged, counted), the caller retries."""
        assert self.spill is not None
        try:
            await self.spill.append(records, accepted)
        except BackendError as exc:
            observe.SPILL_FAILURES.inc()
            log.error("spilling %d records failed, retrying: %s", len(records), exc)
            return False
        self.spilled += len(records)
        observe.SPILLED.inc(len(records))
        return True

    async def _slow_write(self, task: asyncio.Task[int], records: list[Record], row: int) -> None:
        """Wait for a store write whose batch was journalled meanwhile (as ``row``, the
        journal's first); when it succeeds, delete that row.  A failed write leaves it to
        the drainer."""
        assert self.spill is not None
        try:
            points = await task
        except StoreError as exc:
            observe.STORE_FAILURES.inc()
            log.error("slow store write of %d records failed: %s", len(records), exc)
            return
        self._stored(records, points)
        try:
            await self.spill.delete_through(row)
        except BackendError as exc:  # the drainer writes it again: writes are idempotent
            log.error("deleting a stored batch from the spill journal failed: %s", exc)

    async def _drainer(self) -> None:
        """Copy the journal to the store, oldest first; delete only what the store confirmed."""
        assert self.spill is not None
        delays = backoff(0.5, self.drain_retry_max)
        chunk: Chunk | None = None  # kept across retries: read and decoded once
        while True:
            await self.spill.wait_for_rows()
            direct = self._direct  # set right after its batch was journalled
            if direct is not None:  # a slow store write: let it end first, to keep the order
                await asyncio.wait({direct})
                if self._direct is direct:
                    self._direct = None
                if not self.spill.rows:
                    continue
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

    async def _log_linger(self) -> None:
        """Let records gather until the oldest waiting has waited the log's
        :attr:`~livedata.bus.base.Log.batch_ms` (0 for most logs), unless ``batch_max``
        already wait.  Counted from the oldest record's arrival, not from the end of the
        append before: records that came while an append was in flight have waited for it
        already (on Kafka the two added up, a round trip plus 100 ms for every record)."""
        linger = self.log.batch_ms / 1000
        if not linger:
            return
        since = self._unlogged_since
        await _wait_until(
            self._log_full,
            lambda: self.unlogged >= self.batch_max,
            (time.monotonic() if since is None else since) + linger,
        )

    def _take_unlogged(self, limit: int) -> list[Record]:
        """The oldest batches waiting for the log in memory, up to ``limit`` records (at
        least one batch), as one list."""
        chunk = self._unlogged.popleft()
        while self._unlogged and len(chunk) + len(self._unlogged[0]) <= limit:
            chunk = chunk + self._unlogged.popleft()
        # what is left came before now: counting its linger from now errs on the long side
        self._unlogged_since = time.monotonic() if self._unlogged else None
        return chunk

    async def _next_log_chunk(self) -> tuple[list[Record], int]:
        """The appender's next chunk and, when it was read from the log journal, the journal
        row it ends with (0: from memory).  The journal's records are older than memory's
        (the journaller moves the oldest), so they go first; while a move is under way,
        memory waits for it."""
        journal = self.log_journal
        while True:
            if journal is not None and journal.rows:
                found = await journal.read(self.batch_max)
                if found is not None:
                    return found.records, found.last_id
            elif self._unlogged and not self._moving:
                await self._log_linger()
                if self._unlogged and not self._moving and not (journal and journal.rows):
                    # at most log_memory_max: while the log fails the appender holds it,
                    # and the journaller must still find the rest to move
                    return self._take_unlogged(min(self.batch_max, self.log_memory_max)), 0
            else:
                self._log_work.clear()
                await self._log_work.wait()

    async def _appender(self) -> None:
        """Append to the log in order -- the log journal's records first, then memory's --
        what has gathered (up to ``batch_max``) in one call, retrying a failed chunk with
        backoff (0.5 s … 5 s); a chunk from the journal is deleted from it once the log
        took it (a crash in between appends it again: at least once)."""
        delays = backoff(0.5, 5.0)
        chunk: list[Record] | None = None  # kept across retries
        row = 0  # the log journal row the chunk ends with (0: from memory)
        appended = False
        while True:
            try:
                if chunk is None:
                    chunk, row = await self._next_log_chunk()
                if not appended:
                    self._append_since = time.monotonic()
                    try:
                        await self.log.append(chunk)
                    finally:
                        self._append_since = None
                    appended = True
                    self._failures.recovered("log", "the log takes appends again")
                    self._log_failing = False
                    if not row:
                        self._logged += len(chunk)
                        self.unlogged -= len(chunk)
                    self._log_progress.set()
                    self._room.set()
                if row and self.log_journal is not None:
                    await self.log_journal.delete_through(row)
                    self._failures.recovered("log-journal", "the log journal works again")
                    self.update_gauges()
            except BusError as exc:
                observe.LOG_FAILURES.inc()
                self._log_failing = True
                self._log_progress.set()
                self._failures.failed(
                    "log",
                    "log append failed, retrying (%d records wait for the log in memory, %d "
                    "in its journal; devices are still acknowledged): %s",
                    self.unlogged,
                    self.log_journal.records if self.log_journal is not None else 0,
                    exc,
                    level=logging.ERROR,
                )
                await asyncio.sleep(next(delays))
                continue
            except BackendError as exc:  # reading or deleting log journal rows
                self._failures.failed(
                    "log-journal", "the log journal failed, retrying: %s", str(exc)
                )
                await asyncio.sleep(next(delays))
                continue
            delays = backoff(0.5, 5.0)
            chunk, row, appended = None, 0, False

    async def _log_journaller(self) -> None:
        """Move the oldest records waiting for the log in memory to the log journal while
        more than ``log_memory_max`` wait there, up to ``batch_max`` records a row.  A full
        journal makes the move wait (memory then fills to ``queue_max`` and
        :meth:`handle_many` waits); a failed one puts the records back at memory's head
        and is retried with backoff (0.5 s … 5 s)."""
        journal = self.log_journal
        assert journal is not None
        delays = backoff(0.5, 5.0)
        while True:
            while not (self._unlogged and self.unlogged > self.log_memory_max):
                self._log_over.clear()
                await self._log_over.wait()
            batch = self._take_unlogged(self.batch_max)
            self._moving = len(batch)
            failed: BackendError | None = None
            try:
                await journal.append(batch)
            except BackendError as exc:
                failed = exc
                self._unlogged.appendleft(batch)  # the oldest: back to the head
                self._unlogged_since = time.monotonic()
            self._moving = 0
            self._log_work.set()
            if failed is not None:
                self._failures.failed(
                    "log-journal", "the log journal failed, retrying: %s", str(failed)
                )
                await asyncio.sleep(next(delays))
                continue
            self._failures.recovered("log-journal", "the log journal works again")
            delays = backoff(0.5, 5.0)
            self.log_journalled += len(batch)
            observe.LOG_JOURNALLED.inc(len(batch))
            self._logged += len(batch)  # as good as logged: acknowledging needs no more
            self.unlogged -= len(batch)
            self._log_progress.set()
            self._room.set()
            self.update_gauges()

    async def _write(self, batch: list[Record]) -> None:
        """Without a journal: write to the store, retrying until it takes the batch."""
        delays = backoff(1.0, 30.0)
        while True:
            try:
                points = await self.store.write_normalised(batch)
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
    """Feed the device link's deliveries to ``ingest``: what the link has, up to
    :data:`HANDLE_MAX` (and the store's ``batch_max``) a call, the event loop running
    between calls.

    The link's :attr:`~livedata.devices.base.DeviceLink.window` narrows
    :attr:`Ingest.ack_window`, so a store batch never waits for messages the link cannot
    send before an acknowledgement.

    A batch whose handling fails unexpectedly (a backend error nobody mapped, a bug) is
    handed in again with backoff (0.5 s … 5 s) until it is taken, logged once a minute:
    dropping it would leave its deliveries unacknowledged for good, and the MQTT link
    acknowledges in arrival order, so every later message would wait behind them."""
    window = link.window
    if window is not None:
        current = ingest.ack_window
        ingest.ack_window = window if current is None else min(current, window)
    failures = ingest._failures
    with observe.log_context(role="ingest"):
        async for batch in link.batches(min(ingest.batch_max, HANDLE_MAX)):
            delays = backoff(0.5, 5.0)
            while True:
                try:
                    outcomes = await ingest.handle_many(batch)
                except Exception as exc:
                    failures.failed(
                        "handle",
                        "handling a batch of %d deliveries failed, retrying: %r",
                        len(batch),
                        exc,
                        level=logging.ERROR,
                    )
                    await asyncio.sleep(next(delays))
                    continue
                failures.recovered("handle", "batches are handled again")
                break
            link.settle(batch, outcomes)
            await asyncio.sleep(0)  # a link's generator does not wait while it has more
