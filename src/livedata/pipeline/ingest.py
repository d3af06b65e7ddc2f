"""The ingest role: device messages in, decoded records to the store and the log.

Per message: look the machine up (unknown machines are rejected and counted),
decode ``vehicle_can`` frames with the machine's DBC or validate
``client_raw_data`` values, then queue one :class:`Record`.  A writer task takes
what has queued, waits ``linger`` (50 ms) for the rest of the second's
messages (up to ``batch_max`` records), writes it to the store in one
batch, then appends it to the log, so a live point is never ahead of history.

Under stress: the queue is bounded (``queue_max`` records); when the store is
slow, :meth:`Ingest.handle` waits, which slows the device link down instead of
growing memory.  When the store fails the batch is retried with backoff
(1 s … 30 s) and never dropped; the same for the log, whose append also waits
while the log is full.  A device message is acknowledged to its link only after
its record is in both, so a crash before that makes the broker redeliver it
(writes are idempotent, so a redelivered record is stored once).
Bad input is counted per machine (see :class:`DecodeStats`) and never stops the
pipeline or the rest of a batch.
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
from livedata.decode.values import decode_values
from livedata.devices.base import Ack, DeviceLink, Rejection
from livedata.errors import BusError, DecodeError, StoreError
from livedata.model import DeviceMessage, MsgType, Record
from livedata.store.base import Store

log = logging.getLogger("livedata.ingest")

EARLIEST_TS = 946_684_800_000
"""2000-01-01: older timestamps are a device's clock error, not data."""
MAX_FUTURE_MS = 86_400_000
"""Timestamps more than a day ahead are refused (a store could never take some of them)."""


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
    ) -> None:
        self.store = store
        self.log = log
        self.catalog = catalog
        self.batch_max = batch_max
        self.linger = linger
        self._queue: asyncio.Queue[tuple[Record, Ack | None]] = asyncio.Queue(queue_max)
        self.stats: dict[tuple[str, str], DecodeStats] = {}
        self.written = 0

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

        ``ack`` is awaited once the record is in the store and the log (or at once
        when the message is rejected: a bad message is final, redelivering it would
        not make it good).
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
        observe.RECORDS_IN.labels(record.msg_type, record.kind.value).inc()
        observe.POINTS_IN.inc(len(record.values))
        await self._queue.put((record, ack))
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
        if not EARLIEST_TS <= msg.ts <= time.time() * 1000 + MAX_FUTURE_MS:
            raise DecodeError(
                f"timestamp {msg.ts} is not a time in ms since 2000 and before tomorrow"
            )
        info = await self.catalog.machine(msg.tenant, msg.chassis)
        if info is None:
            raise DecodeError(f"unknown machine {msg.chassis!r} in organisation {msg.tenant!r}")
        if msg.msg_type == MsgType.VEHICLE_CAN:
            if info.decoder is None:
                raise DecodeError(f"no DBC file assigned to machine {msg.chassis!r}")
            result = info.decoder.decode(msg.frames)
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
        else:
            values, errors = decode_values(msg.values)
            for error in errors:
                stats.malformed += 1
                self._error(stats, "malformed", error)
            await self.catalog.note_fields(msg.tenant, msg.chassis, msg.msg_type, set(values))
        return Record(msg.tenant, msg.chassis, msg.msg_type, msg.ts, msg.kind, values)

    def depth(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Write queued records to the store, then the log, until cancelled."""
        with observe.log_context(role="ingest"):
            while True:
                batch = [await self._queue.get()]
                self._drain(batch)
                if len(batch) < self.batch_max and self.linger:
                    # the machines of one second arrive together: wait for the rest of them,
                    # one transaction per second instead of dozens (measured: 4x less CPU and
                    # disk per record in SQLite)
                    await asyncio.sleep(self.linger)
                    self._drain(batch)
                observe.INGEST_QUEUE.set(self._queue.qsize())
                records = [record for record, _ in batch]
                await self._write(records)
                await self._append(records)
                for _, ack in batch:
                    if ack is not None:
                        await self._ack(ack)

    async def _ack(self, ack: Ack) -> None:
        try:
            await ack()
        except Exception as exc:  # the link is gone: the broker will redeliver
            log.warning("acknowledgement failed: %s", exc)

    async def _append(self, records: list[Record]) -> None:
        delay = 1.0
        while True:
            try:
                await self.log.append(records)
                return
            except BusError as exc:
                log.error(
                    "log append of %d records failed, retrying in %.0f s: %s",
                    len(records),
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _drain(self, batch: list[tuple[Record, Ack | None]]) -> None:
        while len(batch) < self.batch_max and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _write(self, batch: list[Record]) -> None:
        delay = 1.0
        while True:
            try:
                points = await self.store.write(batch)
                break
            except StoreError as exc:
                observe.STORE_FAILURES.inc()
                log.error(
                    "store write of %d records failed, retrying in %.0f s: %s",
                    len(batch),
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
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
