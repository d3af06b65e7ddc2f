"""Re-decoding: a time range of chosen machines decoded again from their kept raw frames.

An admin replaces a model's DBC (a corrected scale, a missing signal) and wants the
history already received to follow.  :meth:`Redecoder.start` starts a job for a list
of machines, a time range and a DBC file (default: each machine's current one); the
job reads each machine's raw frame blobs (:mod:`livedata.pipeline.rawframes`) in
time order, a page of :data:`PAGE` blobs at a time, decodes them as ingest does
(one record per blob, at the blob's timestamp; J1939 transport sessions carried
across the blobs of a machine) and replaces the ``vehicle_can`` values of the
page's span with them (:meth:`~livedata.store.base.Store.replace_values`): a signal
the new DBC no longer has disappears from that span, a new one appears.  The DTC
fields (``dtc_active``, ``lamp_*``, ``dtc.<SPN>.<FMI>``) come from the DM1 lifecycle,
not from the DBC, and are kept as they are.  Nothing else changes: other machines,
other times, ``client_raw_data``, values at times without kept frames (older than the
frames' retention, say).  When a machine is done, a ``redecode`` row says which DBC
now decoded its range (:mod:`livedata.metadata.decoding`).  Re-decoded records are
not published live and raise no alerts.

Progress (:meth:`RedecodeJob.to_dict`): blobs done of the total counted at the start,
values written, frames that failed to decode.  One job runs at a time per
organisation; starting the same job again while it runs returns it (idempotent),
another one is a :class:`~livedata.errors.Conflict`.  Running a finished job again
gives the same history (the replacement is a function of the frames and the DBC).

Under stress: memory is one page of blobs and their records.  A damaged blob is
counted and its second left as it was (the spans are cut around it).  A store error
ends the job as ``failed`` with the reason; the pages replaced until then stay
replaced (each page is one transaction on the SQL stores), so starting it again
finishes the work.  The job runs in the process that started it; a restart of that
process ends it (the history is then partly re-decoded: start it again).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from livedata.catalog import Catalog
from livedata.decode.can import BusState, CanDecoder
from livedata.decode.dm1 import SUMMARY_FIELDS
from livedata.errors import BackendError, Conflict, DecodeError, InputError, NotFound
from livedata.metadata.decoding import add_range
from livedata.model import Kind, MsgType, Record
from livedata.pipeline.dtcs import dtc_field
from livedata.store.base import Store
from livedata.store.frames import FrameBlob, unpack_frames

log = logging.getLogger("livedata.redecode")

PAGE = 600
"""Blobs read, decoded and replaced at once (10 minutes of a 1 Hz machine)."""
MAX_MACHINES = 1_000
MAX_SPAN_MS = 31 * 86_400_000
KEEP = ("dtc.", *(name for name, *_ in SUMMARY_FIELDS))
"""Field-name prefixes re-decoding leaves alone: the DTC fields ingest adds from DM1s."""
assert dtc_field(0, 0).startswith(KEEP[0])


@dataclass(slots=True)
class RedecodeJob:
    """One re-decoding job and its progress."""

    org: str
    machines: tuple[str, ...]
    start_ms: int
    end_ms: int
    dbc_id: int | None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "running"
    """``running``, ``done``, ``failed`` or ``cancelled``."""
    total: int = 0
    """Raw frame blobs in the range (counted at the start)."""
    done: int = 0
    values: int = 0
    errors: int = 0
    """Malformed frames and damaged blobs."""
    machine: str | None = None
    """The machine being re-decoded."""
    error: str | None = None
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    finished_ms: int | None = None

    def same(self, machines: tuple[str, ...], start_ms: int, end_ms: int, dbc: int | None) -> bool:
        return (self.machines, self.start_ms, self.end_ms, self.dbc_id) == (
            machines,
            start_ms,
            end_ms,
            dbc,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "machines": list(self.machines),
            "from": self.start_ms,
            "to": self.end_ms,
            "dbcId": self.dbc_id,
            "total": self.total,
            "done": self.done,
            "progress": 1.0 if self.total == 0 else round(self.done / self.total, 4),
            "values": self.values,
            "errors": self.errors,
            "machine": self.machine,
            "error": self.error,
            "started": self.started_ms,
            "finished": self.finished_ms,
        }


class Redecoder:
    """Starts and runs re-decoding jobs (see module); the gateway's runtime owns one."""

    def __init__(self, store: Store, catalog: Catalog, page: int = PAGE) -> None:
        self.store = store
        self.catalog = catalog
        self.page = page
        self.jobs: dict[str, RedecodeJob] = {}
        """The latest job of each organisation."""
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def job(self, org: str, job_id: str | None = None) -> RedecodeJob:
        """The organisation's latest job (or the one with ``job_id``); :class:`NotFound`."""
        job = self.jobs.get(org)
        if job is None or (job_id is not None and job.id != job_id):
            raise NotFound("no such re-decoding job")
        return job

    async def start(
        self,
        org: str,
        machines: list[str],
        start_ms: int,
        end_ms: int,
        dbc_id: int | None = None,
    ) -> tuple[RedecodeJob, bool]:
        """Start a job; ``(job, False)`` when the same job is running already."""
        wanted = tuple(dict.fromkeys(machines))
        running = self.jobs.get(org)
        if running is not None and running.state == "running":
            if running.same(wanted, start_ms, end_ms, dbc_id):
                return running, False
            raise Conflict(
                f"re-decoding job {running.id} of this organisation is still running "
                f"({running.done} of {running.total} done): wait for it"
            )
        if not wanted:
            raise InputError("give at least one machine")
        if len(wanted) > MAX_MACHINES:
            raise InputError(f"{len(wanted)} machines; at most {MAX_MACHINES} per job")
        if start_ms > end_ms:
            raise InputError(f"from ({start_ms}) is after to ({end_ms})")
        if end_ms - start_ms > MAX_SPAN_MS:
            raise InputError(f"the range is longer than {MAX_SPAN_MS // 86_400_000} days")
        plan: list[tuple[str, CanDecoder, int | None, str]] = []
        chosen: tuple[CanDecoder, int, str] | None = None
        if dbc_id is not None:
            dbc = await self.catalog.meta.get_dbc(org, dbc_id)
            chosen = (await self.catalog.decoder(dbc), dbc.id, dbc.name)
        for chassis in wanted:
            info = await self.catalog.machine(org, chassis)
            if info is None:
                raise NotFound(f"machine {chassis!r} not found")
            if chosen is not None:
                plan.append((chassis, *chosen))
            elif info.decoder is None:
                raise InputError(f"machine {chassis!r} has no DBC file: choose one (dbcId)")
            else:
                plan.append((chassis, info.decoder, info.dbc_id, info.dbc_name or ""))
        job = RedecodeJob(org, wanted, start_ms, end_ms, dbc_id)
        for chassis in wanted:
            job.total += await self.store.count_frames(org, chassis, start_ms, end_ms)
        self.jobs[org] = job
        self._tasks[org] = asyncio.create_task(self._run(job, plan), name=f"redecode-{job.id}")
        log.info(
            "re-decoding %d machines of %s, %d..%d (%d blobs), job %s",
            len(wanted), org, start_ms, end_ms, job.total, job.id,
        )  # fmt: skip
        return job, True

    async def wait(self, org: str) -> RedecodeJob:
        """Wait for the organisation's running job to end; the job."""
        task = self._tasks.get(org)
        if task is not None:
            await asyncio.wait({task})
        return self.job(org)

    async def cancel(self, org: str) -> RedecodeJob:
        """Stop the organisation's running job (it ends ``cancelled``; the pages replaced
        so far stay replaced); :class:`NotFound` when none runs."""
        task = self._tasks.get(org)
        if task is None:
            raise NotFound("no re-decoding job is running")
        task.cancel()
        await asyncio.wait({task})
        self._ended(self.job(org))
        return self.job(org)

    def _ended(self, job: RedecodeJob) -> None:
        """Mark a job whose task ended (a task cancelled before it ran has not done so)."""
        if job.state == "running":
            job.state = "cancelled"
        if job.finished_ms is None:
            job.finished_ms = int(time.time() * 1000)
        job.machine = None
        self._tasks.pop(job.org, None)

    async def close(self) -> None:
        """Cancel running jobs (they end ``cancelled``)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for job in self.jobs.values():
            self._ended(job)

    async def _run(
        self, job: RedecodeJob, plan: list[tuple[str, CanDecoder, int | None, str]]
    ) -> None:
        try:
            for chassis, decoder, dbc_id, dbc_name in plan:
                job.machine = chassis
                span = await self._machine(job, chassis, decoder)
                if span is not None:
                    await add_range(
                        self.catalog.meta, job.org, chassis, dbc_id, dbc_name, *span, "redecode"
                    )
            job.state = "done"
        except asyncio.CancelledError:
            job.state = "cancelled"
            raise
        except BackendError as exc:
            job.state, job.error = "failed", str(exc)
            log.error("re-decoding job %s failed: %s", job.id, exc)
        except Exception as exc:  # a bug: the job ends, the organisation is not blocked
            job.state, job.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
            log.exception("re-decoding job %s failed", job.id)
        finally:
            self._ended(job)

    async def _machine(
        self, job: RedecodeJob, chassis: str, decoder: CanDecoder
    ) -> tuple[int, int] | None:
        """Re-decode one machine's range, page by page; the span of its blobs (or None)."""
        bus = BusState()
        first: int | None = None
        last = job.start_ms - 1
        while last < job.end_ms:
            blobs = await self.store.read_frames(job.org, chassis, last + 1, job.end_ms, self.page)
            if not blobs:
                break
            if first is None:
                first = blobs[0].ts
            await self._page(job, chassis, decoder, bus, blobs)
            last = blobs[-1].ts
            if len(blobs) < self.page:
                break
        return None if first is None else (first, last)

    async def _page(
        self,
        job: RedecodeJob,
        chassis: str,
        decoder: CanDecoder,
        bus: BusState,
        blobs: list[FrameBlob],
    ) -> None:
        """Decode a page and replace its spans (cut around damaged blobs)."""
        records: list[Record] = []
        for blob in blobs:
            try:
                msg = unpack_frames(blob)
            except DecodeError as exc:
                job.errors += 1
                log.warning("%s", exc)
                await self._replace(job, chassis, records)
                records = []
                continue
            result = decoder.decode(msg.frames, bus)
            job.errors += len(result.errors)
            records.append(
                Record(
                    job.org,
                    chassis,
                    MsgType.VEHICLE_CAN,
                    blob.ts,
                    Kind.BACKFILL,
                    dict(result.values),
                )
            )
        await self._replace(job, chassis, records)
        job.done += len(blobs)

    async def _replace(self, job: RedecodeJob, chassis: str, records: list[Record]) -> None:
        if records:
            job.values += await self.store.replace_values(
                job.org, chassis, MsgType.VEHICLE_CAN, records[0].ts, records[-1].ts, records, KEEP
            )
