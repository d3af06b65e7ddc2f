"""The DTC lifecycle of each machine: DM1 messages in, "became active" and "cleared" out.

A DM1 (:mod:`livedata.decode.dm1`) lists *all* active DTCs of one ECU (source
address).  :class:`DtcState` (sans I/O, one machine) compares it with what that
ECU had active: a DTC that appears became active (``since`` = the DM1's
timestamp), one that is gone was cleared (``clearedAt``), one whose occurrence
count changed is updated.  A DTC is keyed by (source address, SPN, FMI).

:class:`DtcService` (the ingest role owns one) keeps a :class:`DtcState` per
machine and applies the DM1s of a whole ingest batch at once
(:meth:`DtcService.observe_many`): it loads the active DTCs of the batch's machines
it has not seen since the start in one query (so a restart neither forgets nor
repeats them; a thousand machines at start-up), queues the batch's changes for the
database and returns the summary fields ingest adds to each ``vehicle_can`` record.
:meth:`DtcService.run` (a task of the ingest role) writes what has queued in one
transaction (:mod:`livedata.metadata.dtcs`), so ingest never waits for the database:
awaiting that write in the message path held every later message of the link behind it
(at 5,000 machines, ``bench/bench_cluster.py --hops``: about 7 batches a second with
changes per ingest process, p99 28 ms and up to 383 ms each on a busy machine, 12 % of
the message path's wall time).  The summary fields are:
``dtc_active`` (count over all ECUs), ``lamp_mil``, ``lamp_red_stop``,
``lamp_amber_warning``, ``lamp_protect`` (1 when any ECU has that lamp on), and
``dtc.<SPN>.<FMI>`` (the occurrence count) for each active DTC, 0 in the record
where it cleared -- so they are stored, charted, pushed live and usable by alert
rules like any signal: ``dtc_active > 0`` fires when any DTC becomes active,
``dtc.110.16 > 0`` when that one does (and clears with it).  Each change is also a
row of the SSE log table ``dtcs`` (``/db/watch/dtcs``) of the gateway in the same
process (the latest :data:`MAX_EVENTS` are kept for it).

Under stress:

- At most :data:`MAX_ACTIVE` DTCs are kept active per machine; beyond that, new
  ones are ignored (and counted in :attr:`DtcService.dropped`) until some clear.
  Machines are those the catalog knows (ingest rejects the others), so memory is
  bounded by the fleet.
- When the database write fails, the changes stay queued, in order, and the write is
  retried with backoff (0.5 s … 10 s), logged once a minute with a count; records
  carry the summary of their DM1s all the same (what the machine says is active).  At
  most :data:`MAX_UNWRITTEN` changes wait; beyond, the oldest are dropped and counted in
  :attr:`DtcService.lost`.  A crash (or a stop while the database is down) loses the
  queued changes: the next process loads what the database has, and the next DM1s
  bring the difference again (a DTC that became active meanwhile gets the time of the
  first DM1 after the restart).  A machine whose active DTCs cannot be loaded gets no
  DTC fields, and is loaded again with its next batch.  The record's telemetry is never
  held up or lost for it.
- Batches are applied one at a time (a lock), so concurrent callers (the MQTT link,
  HTTP ingest) never compare a DM1 with a state another batch is still loading.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from livedata.decode.dm1 import LAMP_NAMES, SPN_NAMES, Dm1, Dtc, Lamps
from livedata.errors import BackendError
from livedata.metadata import Metadata
from livedata.metadata.dtcs import DtcLog, Machine
from livedata.ratelog import Throttled
from livedata.retry import backoff

log = logging.getLogger("livedata.dtcs")

MAX_ACTIVE = 256
"""Active DTCs kept per machine."""
MAX_EVENTS = 1_000
"""Recent changes kept for the SSE log table ``dtcs`` (read once a second)."""
MAX_UNWRITTEN = 100_000
"""Changes waiting for the database at most (see "Under stress" in the module doc)."""
WRITE_MAX = 5_000
"""Changes written in one transaction at most."""

Key = tuple[int, int, int]
"""(source address, SPN, FMI)."""


_LAMP_FIELDS = tuple((name, f"lamp_{name}") for name in LAMP_NAMES)
"""Each lamp and its summary field of the record."""


@dataclass(frozen=True, slots=True)
class DtcChange:
    """One step of a DTC's life: ``kind`` is ``active``, ``cleared`` or ``oc``."""

    kind: str
    sa: int
    spn: int
    fmi: int
    oc: int
    lamps: dict[str, int]
    ts: int


def dtc_field(spn: int, fmi: int) -> str:
    """The record field of one DTC: ``dtc.110.16``."""
    return f"dtc.{spn}.{fmi}"


class DtcState:
    """The active DTCs and latest lamps of one machine (sans I/O)."""

    def __init__(self, active: dict[Key, int] | None = None) -> None:
        self.active: dict[Key, int] = dict(active or {})
        """Occurrence count of each active DTC."""
        self.lamps: dict[int, Lamps] = {}
        """Latest lamp status per source address."""
        self.latest: dict[int, int] = {}
        """Timestamp of the latest DM1 applied per source address."""
        self.listed: dict[int, tuple[Dtc, ...]] = {}
        """The DTCs of the latest DM1 applied per source address, when all of them are
        active as listed (none dropped): a DM1 listing the same changes nothing."""
        self._summary: dict[str, int] | None = None
        """:meth:`summary` without cleared DTCs, until a DM1 changes the DTCs or lamps."""

    def quiet(self, dm1: Dm1) -> bool:
        """Apply ``dm1`` at once if it changes no DTC (most DM1s): it lists none while none
        is active, or the same DTCs as the latest DM1 of its ECU (an ECU repeats its DM1
        every second), or it is older than that one (late backfill).  The same as
        :meth:`diff` (no changes) then :meth:`commit`, without their work.  ``False``
        (nothing done) otherwise."""
        sa = dm1.sa
        latest = self.latest.get(sa)
        if latest is not None and dm1.ts < latest:
            return True  # late backfill: changes nothing
        dtcs = dm1.dtcs
        if dtcs or self.active:
            listed = self.listed.get(sa)  # parse_dm1 shares the tuple of a repeated payload
            if listed is None or (listed is not dtcs and listed != dtcs):
                return False
        self.latest[sa] = dm1.ts
        lamps = self.lamps.get(sa)
        if lamps is not dm1.lamps and lamps != dm1.lamps:
            self._summary = None
            self.lamps[sa] = dm1.lamps
        return True

    def diff(self, dm1: Dm1) -> tuple[list[DtcChange], int]:
        """The changes ``dm1`` brings, and how many new DTCs did not fit :data:`MAX_ACTIVE`.

        A DM1 older than the latest one applied for its ECU (late backfill) changes nothing.
        """
        if dm1.ts < self.latest.get(dm1.sa, dm1.ts):
            return [], 0
        now = {(dm1.sa, d.spn, d.fmi): d.oc for d in dm1.dtcs}
        if not now and not self.active:  # the usual DM1: nothing active, nothing was
            return [], 0
        lamps = dm1.lamps.to_dict()
        changes: list[DtcChange] = []
        room = MAX_ACTIVE - len(self.active)
        dropped = 0
        for key, oc in now.items():
            old = self.active.get(key)
            if old is None:
                if room <= 0:
                    dropped += 1
                    continue
                room -= 1
                changes.append(DtcChange("active", *key, oc, lamps, dm1.ts))
            elif old != oc:
                changes.append(DtcChange("oc", *key, oc, lamps, dm1.ts))
        for key, oc in self.active.items():
            if key[0] == dm1.sa and key not in now:
                changes.append(DtcChange("cleared", *key, oc, lamps, dm1.ts))
        return changes, dropped

    def commit(self, dm1: Dm1, changes: list[DtcChange], dropped: int = 0) -> None:
        """Take ``changes`` (from :meth:`diff` of ``dm1``, which dropped ``dropped`` new
        DTCs) as done."""
        if dm1.ts < self.latest.get(dm1.sa, dm1.ts):
            return
        self.latest[dm1.sa] = dm1.ts
        if dropped:
            self.listed.pop(dm1.sa, None)
        else:
            self.listed[dm1.sa] = dm1.dtcs
        if changes or self.lamps.get(dm1.sa) != dm1.lamps:
            self._summary = None
        self.lamps[dm1.sa] = dm1.lamps
        for c in changes:
            key = (c.sa, c.spn, c.fmi)
            if c.kind == "cleared":
                self.active.pop(key, None)
            else:
                self.active[key] = c.oc

    def summary(self, cleared: Sequence[DtcChange] = ()) -> dict[str, int]:
        """The fields for the record: :data:`~livedata.decode.dm1.SUMMARY_FIELDS`
        (``dtc_active``, ``lamp_*`` = 1 when on at some ECU) and ``dtc.<SPN>.<FMI>`` =
        occurrence count of each active DTC (0 for one in ``cleared`` that is not active
        elsewhere), so that a rule can watch one code.  Without ``cleared``, the same dict
        while nothing changed (callers read it, never change it)."""
        if not cleared and self._summary is not None:
            return self._summary
        out = {"dtc_active": len(self.active)}
        for name, field_name in _LAMP_FIELDS:
            out[field_name] = int(any(getattr(lamps, name) == 1 for lamps in self.lamps.values()))
        for c in cleared:
            out[dtc_field(c.spn, c.fmi)] = 0
        for (_, spn, fmi), oc in self.active.items():
            name = dtc_field(spn, fmi)
            out[name] = max(oc, out.get(name, 0))
        if not cleared:
            self._summary = out
        return out


class DtcService:
    """Per-machine DTC lifecycles, persisted in the metadata database (see the module docstring)."""

    def __init__(self, meta: Metadata) -> None:
        self.log = DtcLog(meta)
        self._machines: dict[Machine, DtcState] = {}
        self._failing: set[Machine] = set()
        """Machines whose active DTCs could not be loaded (logged once until they are)."""
        self._lock = asyncio.Lock()
        self._unwritten: deque[tuple[str, str, DtcChange]] = deque()
        """Changes applied to the machines' states, not yet in the database, oldest first."""
        self._work = asyncio.Event()
        self._failures = Throttled(log)
        self.lost = 0
        """Changes dropped unwritten beyond :data:`MAX_UNWRITTEN`."""
        self.dropped = 0
        """New DTCs ignored because a machine already had :data:`MAX_ACTIVE`."""
        self.seq = 0
        """Number of the latest change in :attr:`events`."""
        self.events: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=MAX_EVENTS)
        """The latest changes as ``(seq, organisation, row)`` for the SSE log table ``dtcs``."""

    def events_since(self, seq: int) -> list[tuple[str, dict[str, Any]]]:
        """``(organisation, row)`` of every change after number ``seq`` still kept."""
        return [(org, row) for n, org, row in self.events if n > seq]

    def _note(self, changes: list[tuple[str, str, DtcChange]]) -> None:
        """Keep ``changes`` (written) for the SSE log table."""
        for tenant, chassis, c in changes:
            self.seq += 1
            row = {
                "TIME": c.ts,
                "MACHINE": chassis,
                "EVENT": c.kind,
                "SA": c.sa,
                "SPN": c.spn,
                "FMI": c.fmi,
                "OC": c.oc,
                "NAME": SPN_NAMES.get(c.spn, ""),
            }
            self.events.append((self.seq, tenant, row))

    def _failed(self, machines: Iterable[Machine], exc: BackendError) -> None:
        """Log the machines whose active DTCs could not be loaded and were not failing yet
        (once until they are loaded)."""
        new = [key for key in machines if key not in self._failing]
        if new:
            self._failing.update(new)
            log.warning(
                "active DTCs of %d machine(s) (%s/%s first) not loaded, retried with their "
                "next DM1: %s",
                len(new),
                *new[0],
                exc,
            )

    @property
    def unwritten(self) -> int:
        """Changes waiting for the database."""
        return len(self._unwritten)

    async def run(self) -> None:
        """Write the queued changes until cancelled, retrying a failed write with backoff
        (0.5 s … 10 s)."""
        delays = backoff(0.5, 10.0)
        while True:
            while not self._unwritten:
                self._work.clear()
                await self._work.wait()
            try:
                await self.flush()
            except BackendError as exc:
                self._failures.failed(
                    "write",
                    "DTC changes not saved (%d waiting, %d dropped so far), retrying: %s",
                    len(self._unwritten),
                    self.lost,
                    str(exc),
                )
                await asyncio.sleep(next(delays))
                continue
            self._failures.recovered("write", "DTC changes are saved again")
            delays = backoff(0.5, 10.0)

    async def flush(self) -> None:
        """Write the queued changes, :data:`WRITE_MAX` a transaction, in order; raises
        :class:`~livedata.errors.BackendError` (what was not written stays queued)."""
        unwritten = self._unwritten
        while unwritten:
            batch = [unwritten[i] for i in range(min(WRITE_MAX, len(unwritten)))]
            await self.log.apply(batch)
            for written in batch:  # observe_many may have dropped some meanwhile
                if unwritten and unwritten[0] is written:
                    unwritten.popleft()
            self._note(batch)

    async def close(self) -> None:
        """A last write once :meth:`run` has ended (its failure is logged, not raised)."""
        try:
            await self.flush()
        except BackendError as exc:
            log.warning("%d DTC changes not saved at stop: %s", len(self._unwritten), exc)

    async def observe_many(
        self, items: Sequence[tuple[str, str, Sequence[Dm1]]]
    ) -> list[dict[str, Any]]:
        """Apply the DM1s of a batch's records: ``(organisation, machine, DM1s in timestamp
        order)`` in the batch's order; the summary fields of each item.

        The machines not seen since the start are loaded in one query; the changes of all
        items are queued for :meth:`run` (see the module docstring for failures).  An
        item gets ``{}`` when its machine's active DTCs cannot be loaded (database down):
        its record simply has no DTC fields.
        """
        async with self._lock:
            machines = self._machines
            new = {
                (tenant, chassis)
                for tenant, chassis, _ in items
                if (tenant, chassis) not in machines
            }
            if new:
                try:
                    loaded = await self.log.active(new)
                except BackendError as exc:
                    self._failed(new, exc)
                else:
                    for key, active in loaded.items():
                        machines[key] = DtcState(active)
                    self._failing.difference_update(loaded)
            summaries: list[dict[str, Any]] = []
            changes: list[tuple[str, str, DtcChange]] = []
            for tenant, chassis, dm1s in items:
                key = (tenant, chassis)
                state = machines.get(key)
                if state is None:
                    summaries.append({})
                    continue
                cleared: list[DtcChange] = []
                for dm1 in dm1s:
                    if state.quiet(dm1):
                        continue
                    found, dropped = state.diff(dm1)
                    self.dropped += dropped
                    if found:
                        changes += [(tenant, chassis, c) for c in found]
                        cleared += [c for c in found if c.kind == "cleared"]
                    state.commit(dm1, found, dropped)
                summaries.append(state.summary(cleared))
            if changes:
                unwritten = self._unwritten
                unwritten.extend(changes)
                over = len(unwritten) - MAX_UNWRITTEN
                for _ in range(max(0, over)):
                    unwritten.popleft()
                self.lost += max(0, over)
                self._work.set()
            return summaries
