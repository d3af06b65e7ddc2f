"""Raw frames kept for re-decoding, and which DBC decoded which range (the ingest side).

Ingest calls :meth:`FrameKeeper.keep` once per decoded ``vehicle_can`` message (no
I/O there: the frames are compressed into a :class:`~livedata.store.frames.FrameBlob`
and queued, and the machine's decode range is noted in memory).  :meth:`FrameKeeper.run`,
a task of the ingest role, writes the queued blobs to the store about once a second
(one ``write_frames`` call for the whole fleet) and the decode ranges to the metadata
database (:mod:`livedata.metadata.decoding`): a new row when a machine is first seen
by this process or its DBC changes (within a second), the rows' ends every
:attr:`FrameKeeper.ranges_every` seconds (10 s).  Live and backfill data have
ranges of their own, as their times differ.

Keeping raw frames is best effort beside the decoded values, which stay what ingest
makes durable and acknowledges:

* **Store slow or down**: blobs wait in memory, at most ``max_blobs`` (20,000: 200 s of
  100 machines at 1 Hz, about 3 MB at the demo's 12 frames a second); beyond, the
  oldest are dropped and counted in :attr:`FrameKeeper.dropped` -- ingest never waits
  for them.  Writes are retried with backoff (0.5 s … 10 s), failures logged once a
  minute with a count.
* **Metadata database down**: range updates are retried at the next round; the
  ranges' ends may then lag.
* A crash loses the blobs of the last second (their values are stored).
* A message whose frames the wire encoding cannot carry (frames more than 32 s from
  its timestamp, via the in-process link) keeps no blob; counted in
  :attr:`FrameKeeper.unkeepable`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from livedata.errors import BackendError
from livedata.metadata import Metadata
from livedata.metadata.decoding import DecodeRange, add_ranges, extend_ranges
from livedata.model import DeviceMessage, Kind
from livedata.ratelog import Throttled
from livedata.retry import backoff
from livedata.store.base import Store
from livedata.store.frames import FrameBlob, pack_frames

log = logging.getLogger("livedata.rawframes")

MAX_BLOBS = 20_000
WRITE_MAX = 5_000
"""Blobs per ``write_frames`` call."""


@dataclass(slots=True)
class _Range:
    """A machine's open decode range in this process."""

    dbc_id: int | None
    dbc_name: str
    from_ms: int
    to_ms: int
    row_id: int | None = None
    dirty: bool = True


class DecodeRanges:
    """Which DBC decoded which range, per machine and kind (sans I/O; see module)."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str, Kind], _Range] = {}
        self.closed: list[tuple[tuple[str, str, Kind], _Range]] = []
        """Ranges whose DBC was replaced and whose last end is not written yet."""
        self.urgent = False
        """A range has no row yet: write soon."""

    def note(
        self, tenant: str, chassis: str, kind: Kind, dbc_id: int | None, dbc_name: str, ts: int
    ) -> None:
        key = (tenant, chassis, kind)
        current = self.open.get(key)
        if current is not None and current.dbc_id == dbc_id:
            if ts > current.to_ms or ts < current.from_ms:
                current.from_ms = min(current.from_ms, ts)
                current.to_ms = max(current.to_ms, ts)
                current.dirty = True
            return
        if current is not None and current.dirty:
            self.closed.append((key, current))
        self.open[key] = _Range(dbc_id, dbc_name, ts, ts)
        self.urgent = True


class FrameKeeper:
    """Queues raw frame blobs and decode ranges; :meth:`run` writes them (see module)."""

    def __init__(
        self,
        store: Store,
        meta: Metadata,
        *,
        max_blobs: int = MAX_BLOBS,
        flush_every: float = 1.0,
        ranges_every: float = 10.0,
    ) -> None:
        self.store = store
        self.meta = meta
        self.max_blobs = max_blobs
        self.flush_every = flush_every
        self.ranges_every = ranges_every
        self.ranges = DecodeRanges()
        self._blobs: deque[FrameBlob] = deque()
        self.kept = 0
        """Blobs the store has confirmed."""
        self.dropped = 0
        self.unkeepable = 0
        self._failures = Throttled(log)
        self._since_ranges = 0.0

    @property
    def pending(self) -> int:
        """Blobs waiting for the store."""
        return len(self._blobs)

    def keep(self, msg: DeviceMessage, ts: int, dbc_id: int | None, dbc_name: str | None) -> None:
        """Queue the frames of a ``vehicle_can`` message decoded into the record at ``ts``
        with DBC file ``dbc_id``; never blocks, never raises for the message's content."""
        self.ranges.note(msg.tenant, msg.chassis, msg.kind, dbc_id, dbc_name or "", ts)
        try:
            blob = pack_frames(msg, ts)
        except ValueError:
            self.unkeepable += 1
            return
        if len(self._blobs) >= self.max_blobs:
            self._blobs.popleft()
            self.dropped += 1
        self._blobs.append(blob)

    async def run(self) -> None:
        """Write blobs and ranges until cancelled."""
        delays = backoff(0.5, 10.0)
        while True:
            await asyncio.sleep(self.flush_every)
            try:
                await self.flush()
            except BackendError as exc:
                self._failures.failed(
                    "flush",
                    "keeping raw frames failed (%d waiting, %d dropped so far): %s",
                    len(self._blobs),
                    self.dropped,
                    str(exc),
                )
                await asyncio.sleep(next(delays))
                continue
            self._failures.recovered("flush", "raw frames are kept again")
            delays = backoff(0.5, 10.0)

    async def close(self) -> None:
        """A last flush once :meth:`run` has ended (its failure is logged, not raised)."""
        try:
            await self.flush()
        except BackendError as exc:
            log.warning("%d raw frame blobs not kept at stop: %s", len(self._blobs), exc)

    async def flush(self) -> None:
        """Write the queued blobs, then the decode ranges when due; raises
        :class:`~livedata.errors.BackendError` (what was not written stays queued)."""
        while self._blobs:
            batch = [self._blobs[i] for i in range(min(WRITE_MAX, len(self._blobs)))]
            await self.store.write_frames(batch)
            for written in batch:  # keep() may have dropped some meanwhile
                if self._blobs and self._blobs[0] is written:
                    self._blobs.popleft()
            self.kept += len(batch)
        loop = asyncio.get_running_loop()
        if self.ranges.urgent or loop.time() - self._since_ranges >= self.ranges_every:
            await self.write_ranges()
            self._since_ranges = loop.time()

    async def write_ranges(self) -> None:
        """New rows for new ranges, new ends for the others (see module)."""
        ranges = self.ranges
        ranges.urgent = False
        closing, ranges.closed = ranges.closed, []
        try:
            updates: list[tuple[int, int, int]] = []
            new: list[tuple[str, str, DecodeRange]] = []
            fresh: list[_Range] = []
            written: list[tuple[_Range, int, int]] = []
            for (tenant, chassis, _kind), r in [*closing, *ranges.open.items()]:
                if not r.dirty:
                    continue
                written.append((r, r.from_ms, r.to_ms))
                if r.row_id is None:
                    span = DecodeRange(r.from_ms, r.to_ms, r.dbc_id, r.dbc_name, "ingest")
                    new.append((tenant, chassis, span))
                    fresh.append(r)
                else:
                    updates.append((r.row_id, r.from_ms, r.to_ms))
            for r, row_id in zip(fresh, await add_ranges(self.meta, new), strict=True):
                r.row_id = row_id
            await extend_ranges(self.meta, updates)
            for r, from_ms, to_ms in written:  # unless keep() moved it meanwhile
                r.dirty = (r.from_ms, r.to_ms) != (from_ms, to_ms)
        except BackendError:
            ranges.closed[:0] = closing
            for r in ranges.open.values():
                r.dirty = True
            ranges.urgent = True
            raise
