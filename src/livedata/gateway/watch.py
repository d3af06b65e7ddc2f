"""Machbase Neo's watch (Server-Sent Events) and write APIs, served from the live pipeline.

``GET /db/watch/{table}`` streams ``text/event-stream``; ``POST /db/write/{table}``
feeds a tag table the way Machbase users do.  Both are scoped to the caller's
organisation (:mod:`livedata.gateway.security`: watching needs the viewer role,
the ``audit`` table and writing the admin role; an ``org`` query parameter naming
another organisation is 404).  Table names are case-insensitive (``EXAMPLE`` is
``example``), tag names are not.

Tables of an organisation
-------------------------

=====================  =====  ===========================================================
table                  kind   rows
=====================  =====  ===========================================================
``vehicle_can``        tag    decoded CAN signals; a tag is ``{chassisId}.{field}``
``client_raw_data``    tag    device metrics; a tag is ``{chassisId}.{field}``
any other valid name   tag    a *user* tag table, created by its first write; tags are
                              free names (``neo_load1``)
``device_status``      log    status changes of machines (rows once presence exists)
``commands``           log    the command log (rows once commands exist)
``alerts``             log    alerts (rows once alerts exist)
``decode_errors``      log    what ingest rejected: ``TIME``, ``MACHINE``, ``KIND``, ``MESSAGE``
``dtcs``               log    DTCs becoming active, changing and clearing: ``TIME``,
                              ``MACHINE``, ``EVENT``, ``SA``, ``SPN``, ``FMI``, ``OC``, ``NAME``
=====================  =====  ===========================================================

Log tables are fed in process: other code calls ``Gateway.publish_row(org,
table, row)`` (:meth:`LogTables.publish` of the gateway's watch service);
``decode_errors`` and ``dtcs`` are fed from ingest once a second (in memory), so
they have rows in a process that runs the ingest role.

A telemetry tag whose chassis id itself contains dots is split at the longest
prefix that is a machine of the organisation.  A user tag table is stored like
a machine's message type: tenant = organisation, chassis = ``_tags`` (a name no
machine can have: ids start with a letter or digit), message type = the table
name, field = the tag name; it exists once written (its tag names are kept in
the metadata database's field list), in every process.

Watch
-----

Query parameters as Machbase documents them: ``timeformat`` (``ns`` default,
``s``, ``ms``, ``us``, ``ns``, ``default`` = ``2006-01-02 15:04:05.999`` in ``tz``;
case-insensitive), ``tz`` (``UTC`` default, ``Local``, an IANA name such as
``Asia/Seoul``), ``period`` (``3s`` default, Go durations ``500ms``/``3s``/``1m``;
at least 1 s), ``keep-alive`` (``30s``: a ``: keep-alive`` comment when nothing
else was sent for that long), ``tag`` (tag tables: required, repeatable, at most
100), ``parallelism`` (accepted and validated; there is no query to parallelise),
``max-rows`` (log tables: default 20, at most 100 rows per period; the rest of
the period's rows are skipped and a ``skipped`` event says how many).

Each period a tag table stream sends, per tag, only the newest value that arrived
in the period: ``data: {"NAME":…,"TIME":…,"VALUE":…}``.  A new stream first sends
each tag's current value (the newest stored in the last 10 minutes), so a
dashboard opens filled.  Nothing reads the database per period: values come from
the pipeline (an in-process listener of the fan-out core,
:meth:`~livedata.gateway.fanout.Fanout.listen`) into one bounded ring per live
channel, shared by every stream of that channel.  The request's parameters, the
event ids and the bytes of events are the sans-I/O :mod:`livedata.gateway.protocol.sse`.

Resuming: every event has ``id: {epoch}-{prev}-{cover}-{index}[-{resume}]`` --
the process's epoch, the ring positions the event's period covered, its index in
the period and, for tag tables, the same period in the pub/sub's own terms (per
channel, its epoch and the seq of its messages at the period's start and end:
:func:`~livedata.gateway.protocol.sse.format_marks`).  A client that reconnects
with ``Last-Event-ID`` (browsers' EventSource does so by itself) gets exactly the
events it missed: the rest of its last period, then one period-sized bucket of
newest values after another, then live.  On the same process this comes from the
rings: a ring keeps the last 10 minutes (at most 2,000 messages per channel) and
is kept 10 minutes after its last stream left.  On another gateway process (the
distributed shape behind a load balancer) or after a restart, a tag stream is
resumed from the pub/sub's history instead (the channels' last
``live_history_seconds``, 180 s by default; buckets cut by record time), so it
recovers there too; log tables live in one process and are resumed there only.
When what it missed is gone (too old, evicted from a busy ring or the history, a
log table of another process) it gets ``event: gap`` with a JSON
``{"code":"gap","message":…,"lastEventId":…}`` and then the current values; it
should fill the hole from the history API.

Errors -- unknown table or organisation (404), missing or malformed tags, bad
``period``/``keep-alive``/``timeformat``/``tz``/``parallelism``, ``max-rows``
over 100 (400), too many streams (503) -- are JSON ``{"error":{"code","message"}}``
sent before the stream starts.

Under stress: at most 1,000 streams per process and 100 tags per stream; a
stream's memory is its plan, rings are bounded by entries and age, and at most
2,000 rings exist.  Streams of the same table, tags, time format and period form
one group (:class:`_Group`): one timer per group wakes each period (and when a
member's keep-alive is due), computes the period's events once and frames them
once (:class:`~livedata.gateway.protocol.sse.Batch`); there is no task, timer or
``await`` per stream per period.  A stream's events go out through the fan-out
core's outbox (:class:`~livedata.gateway.fanout.Outbox`, the policy of every live
transport).  Served by livedata's server layer (``livedata serve``), once the
response head is sent the server hands over the connection's transport
(:meth:`~livedata.gateway.server.LimitedHttp.stream_body`): while the client keeps
up, a period's events are one HTTP chunk, the same bytes object for every member,
written straight to the transport; the transport's ``pause_writing`` pauses the
outbox.  Under another ASGI server one writer task per stream hands the events to
ASGI ``send`` instead (paused above :data:`HIGH_WATER` bytes not yet sent).  While
paused, events queue in the outbox (at most :data:`STREAM_QUEUE`; beyond, the
oldest is dropped and the next event's data carries ``"missed": n``) and go out in
one write once it caught up.  A client whose
stream makes no progress for ``client_stall_seconds`` (default 30 s; its TCP
window is full) is given up by the outbox's stall clock (a deadline in the fan-out
core's stall clock of that time, which the live WebSocket and Socket.IO share: no
timer per stream):
the stream ends, its rings and its stream slot are released (counted in
``livedata_stalled_clients``; uvicorn logs "ASGI callable returned without
completing response"), and the connection is closed once the peer reads or goes
away; ``Last-Event-ID`` resumes it.

Write
-----

``POST /db/write/{table}`` with ``application/json``
``{"data":{"columns":["NAME","TIME","VALUE"],"rows":[…]}}`` (columns optional,
case-insensitive, any order), ``application/x-ndjson`` (one
``{"NAME","TIME","VALUE"}`` per line) or ``text/csv`` (``header=skip`` or
``header=columns`` for a header line, ``delimiter``), optionally
``Content-Encoding: gzip``; ``timeformat``/``tz`` as for watch, ``ns`` by
default.  At most 4 MiB (decompressed) and 10,000 rows; a bad row refuses the
whole request (400, naming the row).  Tables: a user tag table (NAME = tag) or
``client_raw_data`` (NAME = ``{chassisId}.{field}`` of a machine of the
organisation); ``vehicle_can`` is decoded from machines' CAN frames and log tables
are written by livedata, so they refuse writes.  Rows go through ingest like
device data -- stored, then published live (rows with a TIME older than 10
minutes are stored as backfill, not pushed) -- and the response
(``{"success":true,"reason":…,"data":{"rows":n}}``) comes once they are stored.
Times are stored in milliseconds.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import secrets
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter, Gauge

from livedata.decode.values import decode_values
from livedata.devices.base import Delivery
from livedata.errors import DecodeError, InputError, NotFound
from livedata.gateway.fanout import Fanout, Outbox
from livedata.gateway.protocol import sse
from livedata.gateway.protocol.sse import (
    Event,
    Mark,
    TimeFormat,
    TooLarge,
    WatchParams,
    parse_duration,
)
from livedata.gateway.security import ON_LIVE_END, principal_of
from livedata.gateway.server import RAW_HTTP
from livedata.gateway.state import gateway_of
from livedata.model import DeviceMessage, Kind, MsgType, Record, Value, live_channel, valid_id

if TYPE_CHECKING:
    from livedata.catalog import Catalog
    from livedata.gateway.gateway import Supervisor
    from livedata.gateway.viewers import ViewerFollower
    from livedata.metadata import Metadata
    from livedata.pipeline.ingest import DecodeStats, Ingest
    from livedata.store.base import Store

log = logging.getLogger("livedata.gateway.watch")

USER_CHASSIS = "_tags"
"""The chassis under which user tag tables are stored (no machine id can start with '_')."""
TELEMETRY_TABLES = (MsgType.VEHICLE_CAN.value, MsgType.CLIENT_RAW_DATA.value)
LOG_TABLES = {
    "device_status": "status changes of machines",
    "commands": "the command log",
    "alerts": "alerts raised and cleared",
    "decode_errors": "device messages ingest could not use",
    "dtcs": "diagnostic trouble codes becoming active and clearing",
    "audit": "logins, token changes, commands and configuration changes (admins only)",
}

MAX_STREAMS = 1_000
RING_SECONDS = 600.0
RING_ENTRIES = 2_000
MAX_RINGS = 2_000
MAX_LOG_RINGS = 1_000
SWEEP_EVERY_S = 10.0
SNAPSHOT_WINDOW_MS = 600_000

WRITE_MAX_BYTES = 4 * 1024 * 1024
WRITE_MAX_ROWS = 10_000
WRITE_ACK_TIMEOUT_S = 15.0
REALTIME_WINDOW_MS = 600_000

STREAMS = Gauge("livedata_watch_streams", "Open SSE watch streams")
RINGS = Gauge("livedata_watch_rings", "Live channels buffered for SSE watch streams")
EVENTS = Counter("livedata_watch_events", "Events sent to SSE watch streams", ["event"])
WRITTEN = Counter("livedata_write_rows", "Rows written through POST /db/write", ["table_kind"])


# --------------------------------------------------------------------------- parameters


class _Busy(Exception):
    """A process-wide bound is reached (503)."""


# --------------------------------------------------------------------------- rings


@dataclass(slots=True)
class Entry:
    seq: int
    at_ms: int
    """Arrival time (wall clock, ms): periods are cut by arrival."""
    ts: int
    """The record's (or row's) TIME in ms."""
    payload: Mapping[str, Any]
    head: Mapping[str, Any] | None = None
    """The channel message's ``ts``, ``seq``, ``epoch`` (live channels; shared, read only)."""

    @property
    def mark(self) -> Mark:
        """Its position in its pub/sub channel."""
        head = self.head
        return (head["epoch"], head["seq"]) if head is not None else None


class Ring:
    """The recent messages of one live channel (or one log table), in arrival order.

    Bounded by ``max_entries`` and ``max_age_s``; ``lost_upto`` is the highest
    sequence number this ring may have missed or dropped, so a client whose
    position is below it cannot be resumed exactly.
    """

    __slots__ = (
        "_max_entries",
        "entries",
        "idle_since",
        "key",
        "listener",
        "lost_upto",
        "max_age_ms",
        "users",
    )

    def __init__(
        self,
        key: Any,
        lost_upto: int,
        max_entries: int = RING_ENTRIES,
        max_age_s: float = RING_SECONDS,
    ) -> None:
        self.key = key
        self.entries: deque[Entry] = deque(maxlen=None)
        self.lost_upto = lost_upto
        self.users = 0
        self.idle_since = time.monotonic()
        self.max_age_ms = int(max_age_s * 1000)
        self.listener: Callable[[dict[str, Any], dict[str, Any]], None] | None = None
        self._max_entries = max_entries

    def append(self, entry: Entry) -> None:
        entries = self.entries
        entries.append(entry)
        oldest = entry.at_ms - self.max_age_ms
        while len(entries) > self._max_entries or entries[0].at_ms < oldest:
            self.lost_upto = entries.popleft().seq

    def between(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo < seq <= hi``, oldest first."""
        out: list[Entry] = []
        for entry in reversed(self.entries):
            if entry.seq <= lo:
                break
            if entry.seq <= hi:
                out.append(entry)
        out.reverse()
        return out


class Plan:
    """What one stream watches: which rings, and how a range of them becomes events."""

    rings: list[Ring]
    key: Any = None
    """Streams with equal keys get the same events each period (see :class:`_Group`)."""

    def collect(self, lo: int, hi: int) -> list[Event]:
        raise NotImplementedError

    def marks_at(self, hi: int) -> list[Mark]:
        """Per source channel, its position after the arrivals up to ``hi`` (tag tables)."""
        return []

    async def snapshot(self, history: Fanout) -> list[Event]:
        """The current values a new stream starts with (``history``: the live channels'
        retained messages, for what went out live but is not stored yet)."""
        return []


@dataclass(slots=True)
class _Source:
    channel: str
    chassis: str
    msg_type: str
    tags: list[tuple[int, str, str]] = field(default_factory=list)
    """(index in the request, tag name, field)."""


class TagPlan(Plan):
    def __init__(self, store: Store, org: str, sources: list[_Source], fmt: TimeFormat) -> None:
        self.store, self.org, self.sources, self.fmt = store, org, sources, fmt
        self.rings = []
        self.by_channel: dict[str, Ring] = {}
        self.floor: dict[str, tuple[str, int]] = {}
        """Channel positions already sent from the pub/sub's history (a resume): ring
        entries up to them are skipped."""

    def _event(self, name: str, ts: int, value: Any) -> Event:
        return None, {"NAME": name, "TIME": self.fmt.format(ts), "VALUE": value}

    def collect(self, lo: int, hi: int) -> list[Event]:
        return self.events_of(
            (source, self.by_channel[source.channel].between(lo, hi)) for source in self.sources
        )

    def marks_at(self, hi: int) -> list[Mark]:
        marks: list[Mark] = []
        for source in self.sources:
            mark: Mark = None
            after: Entry | None = None
            for entry in reversed(self.by_channel[source.channel].entries):
                if entry.seq <= hi:
                    mark = entry.mark
                    break
                after = entry
            if mark is None and after is not None and after.head is not None:
                # a channel numbers its messages one by one: the one before the first
                # that arrived after ``hi``
                mark = (after.head["epoch"], after.head["seq"] - 1)
            floor = self.floor.get(source.channel)
            if floor is not None and (mark is None or (mark[0] == floor[0] and mark[1] < floor[1])):
                mark = floor
            marks.append(mark)
        return marks

    def events_of(self, found: Iterable[tuple[_Source, Iterable[Entry]]]) -> list[Event]:
        """Per tag, the newest value among ``found`` entries (not below the floor)."""
        best: dict[int, tuple[int, int, str, Any]] = {}
        for source, entries in found:
            floor = self.floor.get(source.channel)
            for entry in entries:
                if floor is not None and entry.head is not None:
                    head = entry.head
                    if head["epoch"] == floor[0] and head["seq"] <= floor[1]:
                        continue
                values = entry.payload
                for index, name, fld in source.tags:
                    if fld in values:
                        key = (entry.ts, entry.seq)
                        held = best.get(index)
                        if held is None or key > held[:2]:
                            best[index] = (entry.ts, entry.seq, name, values[fld])
        return [self._event(best[i][2], best[i][0], best[i][3]) for i in sorted(best)]

    async def snapshot(self, history: Fanout) -> list[Event]:
        """Per tag, its newest value in the store or, newer than that, in the channel's
        retained live messages: a record goes out live before the store has it, and one
        sent before this stream listened would otherwise be in neither."""
        end = int(time.time() * 1000)
        found: dict[int, tuple[int, Event]] = {}
        for source in self.sources:
            fields = list(dict.fromkeys(f for _, _, f in source.tags))
            series = await self.store.query(
                self.org, source.chassis, source.msg_type, fields, end - SNAPSHOT_WINDOW_MS, end, 1
            )
            retained = await history.retained(source.channel)
            for index, name, fld in source.tags:
                points = series.get(fld)
                if points:
                    ts, value = points[-1]
                    found[index] = (ts, self._event(name, ts, value))
                for values, head in retained:
                    if fld in values and (index not in found or head["ts"] > found[index][0]):
                        found[index] = (head["ts"], self._event(name, head["ts"], values[fld]))
        return [found[i][1] for i in sorted(found)]


class LogPlan(Plan):
    def __init__(self, table: str, ring: Ring, fmt: TimeFormat, max_rows: int) -> None:
        self.table, self.fmt, self.max_rows = table, fmt, max_rows
        self.rings = [ring]

    def collect(self, lo: int, hi: int) -> list[Event]:
        rows = self.rings[0].between(lo, hi)
        events: list[Event] = []
        for entry in rows[: self.max_rows]:
            data = {"TIME": self.fmt.format(entry.ts)}
            data.update((k, v) for k, v in entry.payload.items() if k != "TIME")
            events.append((None, data))
        if len(rows) > self.max_rows:
            skipped = len(rows) - self.max_rows
            events.append(
                ("skipped", {"skipped": skipped, "table": self.table, "maxRows": self.max_rows})
            )
        return events


# --------------------------------------------------------------------------- log tables


class LogTables:
    """In-process log tables that other code publishes rows to; watch streams read them.

    ``publish(org, table, row)`` never blocks and never fails for a registered
    table: the row goes into the table's ring (last 10 minutes, at most 2,000
    rows per organisation and table) for the streams watching it.  ``row`` is a
    flat JSON-able dict; ``TIME`` (ms since the epoch) is set to now when absent.
    """

    def __init__(self, next_seq: Callable[[], int], current_seq: Callable[[], int]) -> None:
        self._next_seq = next_seq
        self._current_seq = current_seq
        self._tables: dict[str, str] = {}
        self._rings: dict[tuple[str, str], Ring] = {}
        for name, description in LOG_TABLES.items():
            self.register(name, description)

    def register(self, name: str, description: str) -> None:
        """Make ``name`` a log table (idempotent)."""
        if not valid_id(name) or name in TELEMETRY_TABLES:
            raise ValueError(f"{name!r} cannot be a log table")
        self._tables[name.lower()] = description

    def __contains__(self, name: str) -> bool:
        return name in self._tables

    @property
    def tables(self) -> dict[str, str]:
        return dict(self._tables)

    def ring(self, org: str, table: str) -> Ring | None:
        """The ring of ``org``'s ``table``, created when missing (``None`` when full)."""
        key = (org, table)
        ring = self._rings.get(key)
        if ring is None:
            if len(self._rings) >= MAX_LOG_RINGS:
                return None
            ring = self._rings[key] = Ring(key, self._current_seq())
        return ring

    def publish(self, org: str, table: str, row: Mapping[str, Any]) -> None:
        if table not in self._tables:
            raise KeyError(f"{table!r} is not a registered log table")
        ring = self.ring(org, table)
        if ring is None:
            log.warning("log table %s of %s dropped a row: too many log tables", table, org)
            return
        now = int(time.time() * 1000)
        ts = row.get("TIME")
        ts = ts if isinstance(ts, int) and not isinstance(ts, bool) else now
        ring.append(Entry(self._next_seq(), now, ts, dict(row)))


def decode_error_rows(
    stats: Mapping[tuple[str, str], DecodeStats],
    seen: dict[tuple[str, str], tuple[int, int, int]],
    baseline: bool = False,
    keys: Iterable[tuple[str, str]] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Rows for ``decode_errors`` from ingest's counters since the last call: (org, row).

    ``seen`` holds the counters of the last call (updated here); with ``baseline``
    the current counters are only recorded.  ``keys``: only these machines (those
    whose counters moved, :meth:`~livedata.pipeline.ingest.Ingest.take_erred`), so a
    call costs the machines with new errors, not the fleet; a key no longer in
    ``stats`` (its counters dropped) leaves ``seen`` too.  Error texts come from the machine's
    ``last_errors`` (the newest 20), so a burst of more than 20 in one call is
    summarised in one extra row.
    """
    rows: list[tuple[str, dict[str, Any]]] = []
    for key in list(stats) if keys is None else keys:
        st = stats.get(key)
        if st is None:
            seen.pop(key, None)
            continue
        now = (st.rejected, st.malformed, st.unknown_ids)
        before = seen.get(key, (0, 0, 0) if not baseline else now)
        seen[key] = now
        rejected, malformed, unknown = (a - b for a, b in zip(now, before, strict=True))
        org, chassis = key
        new = max(0, rejected) + max(0, malformed)
        if new:
            kind = "rejected" if not malformed else "malformed" if not rejected else "decode_error"
            texts = list(st.last_errors)[-new:]
            for text in texts:
                message = text.split(" ", 1)[1] if " " in text else text
                rows.append((org, {"MACHINE": chassis, "KIND": kind, "MESSAGE": message}))
            if new > len(texts):
                rows.append(
                    (
                        org,
                        {
                            "MACHINE": chassis,
                            "KIND": kind,
                            "MESSAGE": f"{new - len(texts)} more errors",
                        },
                    )
                )
        if unknown > 0:
            rows.append(
                (
                    org,
                    {
                        "MACHINE": chassis,
                        "KIND": "unknown_id",
                        "MESSAGE": f"{unknown} frames with CAN ids not in the DBC file",
                    },
                )
            )
    return rows


# --------------------------------------------------------------------------- the service


class WatchService:
    """The rings, log tables and streams of one gateway process."""

    def __init__(
        self,
        hub: Fanout,
        store: Store,
        meta: Metadata,
        catalog: Catalog,
        ingest: Ingest,
        viewers: ViewerFollower,
        tasks: Supervisor,
        emit_device_update: Callable[[str, str, dict[str, Any]], None],
    ) -> None:
        """``emit_device_update(org, chassis, update)``: a DTC change to Socket.IO."""
        self.hub, self.store, self.meta, self.catalog = hub, store, meta, catalog
        self.ingest, self.viewers, self.tasks = ingest, viewers, tasks
        self.emit_device_update = emit_device_update
        self.epoch = secrets.token_hex(4)
        self.seq = 0
        self.streams = 0
        self.max_streams = MAX_STREAMS
        self._rings: dict[str, Ring] = {}
        self._lock = asyncio.Lock()
        self.log_tables = LogTables(self.next_seq, lambda: self.seq)
        self._groups: dict[Any, _Group] = {}
        self.history = hub
        """Reads the pub/sub's history (:meth:`Fanout.missed_since`) to resume streams."""

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def start(self) -> None:
        """Run the ring sweeper and the ``decode_errors`` and ``dtcs`` feeds (supervised)."""
        self.tasks.spawn("watch-sweeper", self._sweep_forever)
        self.tasks.spawn("watch-decode-errors", self._decode_errors_forever)
        self.tasks.spawn("watch-dtcs", self._dtcs_forever)

    # rings ------------------------------------------------------------------

    async def acquire(self, channel: str) -> Ring:
        async with self._lock:
            ring = self._rings.get(channel)
            if ring is None:
                if len(self._rings) >= MAX_RINGS:
                    await self._sweep(force=True)
                    if len(self._rings) >= MAX_RINGS:
                        raise _Busy(f"too many live channels are watched (at most {MAX_RINGS})")
                ring = Ring(channel, self.seq)
                ring.listener = self._listener(ring)
                self._rings[channel] = ring
                await self.hub.listen(channel, ring.listener)
                RINGS.set(len(self._rings))
            ring.users += 1
            return ring

    def release(self, ring: Ring) -> None:
        ring.users -= 1
        if ring.users <= 0:
            ring.users = 0
            ring.idle_since = time.monotonic()

    def _listener(self, ring: Ring) -> Callable[[dict[str, Any], dict[str, Any]], None]:
        def on_message(values: dict[str, Any], head: dict[str, Any]) -> None:
            ring.append(
                Entry(self.next_seq(), int(time.time() * 1000), int(head["ts"]), values, head)
            )

        return on_message

    async def _sweep(self, force: bool = False) -> None:
        """Stop listening to channels nobody has watched for ``RING_SECONDS``."""
        now = time.monotonic()
        for channel, ring in list(self._rings.items()):
            if ring.users == 0 and (force or now - ring.idle_since >= RING_SECONDS):
                del self._rings[channel]
                if ring.listener is not None:
                    await self.hub.unlisten(channel, ring.listener)
        RINGS.set(len(self._rings))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            async with self._lock:
                await self._sweep()

    async def _decode_errors_forever(self) -> None:
        seen: dict[tuple[str, str], tuple[int, int, int]] = {}
        ingest = self.ingest
        ingest.take_erred()
        decode_error_rows(ingest.stats, seen, baseline=True)
        while True:
            await asyncio.sleep(1.0)
            for org, row in decode_error_rows(ingest.stats, seen, keys=ingest.take_erred()):
                self.log_tables.publish(org, "decode_errors", row)

    async def _dtcs_forever(self) -> None:
        dtcs = self.ingest.dtcs
        seen = dtcs.seq
        while True:
            await asyncio.sleep(1.0)
            rows, seen = dtcs.events_since(seen), dtcs.seq
            for org, row in rows:
                self.log_tables.publish(org, "dtcs", row)
                chassis = row["MACHINE"]
                self.emit_device_update(org, chassis, {"deviceId": chassis, "dtc": row})

    # planning ---------------------------------------------------------------

    async def plan(self, org: str, table: str, params: WatchParams) -> Plan:
        """Check the table and tags (raising InputError/NotFound) and say what to watch."""
        if table in self.log_tables:
            ring = self.log_tables.ring(org, table)
            if ring is None:
                raise _Busy("too many log tables are open")
            plan: Plan = LogPlan(table, ring, params.fmt, params.max_rows)
            plan.key = (org, table, params.fmt, params.period, params.max_rows)
            return plan
        if not params.tags:
            raise InputError(f"{table} is a tag table: give one or more tag parameters")
        sources: dict[str, _Source] = {}
        if table in TELEMETRY_TABLES:
            for index, tag in enumerate(params.tags):
                chassis, fld = await self._split_tag(org, tag)
                channel = live_channel(org, chassis, table)
                source = sources.setdefault(channel, _Source(channel, chassis, table))
                source.tags.append((index, tag, fld))
        else:
            if not valid_id(table) or not await self.meta.list_fields(org, USER_CHASSIS, table):
                raise NotFound(f"table {table!r} not found")
            bad = [t for t in params.tags if not valid_id(t)]
            if bad:
                raise InputError(
                    f"invalid tag names {bad[:5]}: letters, digits, '_', '.', '-', "
                    "starting with a letter or digit, at most 64 characters"
                )
            channel = live_channel(org, USER_CHASSIS, table)
            source = _Source(channel, USER_CHASSIS, table)
            source.tags = [(i, t, t) for i, t in enumerate(params.tags)]
            sources[channel] = source
        plan = TagPlan(self.store, org, list(sources.values()), params.fmt)
        plan.key = (org, table, params.tags, params.fmt, params.period)
        return plan

    async def _split_tag(self, org: str, tag: str) -> tuple[str, str]:
        """``{chassisId}.{field}`` at the longest prefix that is a machine of ``org``."""
        dots = [i for i, c in enumerate(tag) if c == "."]
        if not dots:
            raise InputError(f"tag {tag!r} must be {{chassisId}}.{{field}}")
        for dot in reversed(dots):
            chassis, fld = tag[:dot], tag[dot + 1 :]
            if (
                valid_id(chassis)
                and valid_id(fld)
                and await self.catalog.machine(org, chassis) is not None
            ):
                return chassis, fld
        raise NotFound(f"tag {tag!r}: no such machine in organisation {org!r}")

    # streaming --------------------------------------------------------------

    def _encode(
        self,
        events: Sequence[Event],
        prev: int,
        cover: int,
        start: int = 0,
        marks: tuple[Sequence[Mark], Sequence[Mark]] | None = None,
    ) -> list[sse.Frame]:
        """Frames of one period; ``marks`` (start, end) make its ids resumable anywhere."""
        resume = sse.format_marks(*marks) if marks and marks[1] else ""
        return sse.frames(events, self.epoch, prev, cover, start, resume)

    def _gap(self, at: int, last_event_id: str | None, message: str, plan: Plan) -> list[sse.Frame]:
        marks = plan.marks_at(at)
        return self._encode([sse.gap_event(last_event_id, message)], at, at, 0, (marks, marks))

    def _replay(
        self, plan: Plan, start: int, end: int, period_ms: int
    ) -> Iterable[list[sse.Frame]]:
        """What happened in ``(start, end]``, one period-sized bucket (by arrival) at a time."""
        entries = sorted(
            ((e.seq, e.at_ms) for ring in plan.rings for e in ring.between(start, end)),
        )
        prev, bucket_start, last = start, None, start
        for seq, at_ms in entries:
            if bucket_start is None:
                bucket_start = at_ms
            elif at_ms >= bucket_start + period_ms:
                events = plan.collect(prev, last)
                if events:
                    marks = (plan.marks_at(prev), plan.marks_at(last))
                    yield self._encode(events, prev, last, 0, marks)
                prev, bucket_start = last, at_ms
            last = seq
        if last > prev:
            events = plan.collect(prev, last)
            if events:
                yield self._encode(
                    events, prev, last, 0, (plan.marks_at(prev), plan.marks_at(last))
                )

    async def _from_history(
        self, plan: TagPlan, pos: sse.EventId, at: int, period_ms: int
    ) -> list[list[sse.Frame]] | None:
        """What a client resuming from another process (or before a restart) missed, from
        the pub/sub's history: the rest of its last period, then period-sized buckets (by
        record time); ``None`` when some of it is not there any more."""
        parsed = sse.parse_marks(pos.resume, len(plan.sources))
        if parsed is None:
            return None
        start_marks, end_marks = parsed
        missed: list[list[Entry]] = []
        for source, mark in zip(plan.sources, start_marks, strict=True):
            if mark is None:
                return None
            recovered, messages = await self.history.missed_since(source.channel, mark)
            if not recovered:
                return None
            missed.append([Entry(h["seq"], h["ts"], h["ts"], v, h) for v, h in messages])
        out: list[list[sse.Frame]] = []
        floor: dict[str, tuple[str, int]] = {}
        rest: list[tuple[_Source, list[Entry]]] = []
        later: list[tuple[int, int, _Source, Entry]] = []
        for n, (source, entries, end) in enumerate(
            zip(plan.sources, missed, end_marks, strict=True)
        ):
            cut = end[1] if end is not None else 0
            rest.append((source, [e for e in entries if e.seq <= cut]))
            later.extend((e.ts, n, source, e) for e in entries if e.seq > cut)
            newest = entries[-1].mark if entries else start_marks[n]
            if newest is not None:
                floor[source.channel] = newest
        marks = list(end_marks)
        events = plan.events_of(rest)
        if len(events) > pos.index + 1:
            out.append(self._encode(events, at, at, pos.index + 1, (start_marks, marks)))
        later.sort(key=lambda item: item[:2])
        bucket: list[tuple[_Source, list[Entry]]] = []
        bucket_start: int | None = None
        before = list(marks)
        for ts, n, source, entry in later:
            if bucket_start is None:
                bucket_start = ts
            elif ts >= bucket_start + period_ms:
                out.append(self._encode(plan.events_of(bucket), at, at, 0, (before, list(marks))))
                bucket, bucket_start, before = [], ts, list(marks)
            bucket.append((source, [entry]))
            marks[n] = entry.mark
        if bucket:
            out.append(self._encode(plan.events_of(bucket), at, at, 0, (before, marks)))
        plan.floor.update(floor)  # live values from here on are the ones after these
        return [frames for frames in out if frames]

    async def stream(
        self, plan: Plan, params: WatchParams, last_event_id: str | None, member: Member
    ) -> None:
        """Serve one client's stream to ``member`` until cancelled (or ``member.done``):
        its start (current values, or what it missed since ``last_event_id``), then its
        group's periods; releases everything when the client goes."""
        acquired: list[Ring] = []
        viewed: list[tuple[str, str]] = []  # its machines: real-time follows viewers
        self.streams += 1
        STREAMS.inc()
        try:
            if isinstance(plan, TagPlan):
                for source in plan.sources:
                    ring = await self.acquire(source.channel)
                    acquired.append(ring)
                    plan.by_channel[source.channel] = ring
                    self.viewers.joined(plan.org, source.chassis)
                    viewed.append((plan.org, source.chassis))
                plan.rings = acquired
            else:
                for ring in plan.rings:
                    ring.users += 1
                    acquired.append(ring)
            period_ms = int(params.period * 1000)
            prev = self.seq
            pos = sse.EventId.parse(last_event_id)
            elsewhere = None
            if (
                pos is not None
                and pos.resume
                and isinstance(plan, TagPlan)
                and (pos.epoch != self.epoch or pos.cover > self.seq)
            ):
                elsewhere = await self._from_history(plan, pos, prev, period_ms)
            if elsewhere is not None:
                for frames in elsewhere:
                    member.send(batch := sse.Batch(frames))
                    _count(batch)
            else:
                async for frames in self._resume_here(plan, pos, last_event_id, prev, period_ms):
                    member.send(batch := sse.Batch(frames))
                    _count(batch)
            # resumed from history: its plan has its own floor, so a group of its own
            own = isinstance(plan, TagPlan) and bool(plan.floor)
            group = self._join(plan, params, prev, own)
            try:
                group.add(member, prev)
                await member.done
            finally:
                group.remove(member)
                self._leave(group)
        finally:
            for ring in acquired:
                self.release(ring)
            for org, chassis in viewed:
                self.viewers.left(org, chassis)
            self.streams -= 1
            STREAMS.dec()

    async def _resume_here(
        self,
        plan: Plan,
        pos: sse.EventId | None,
        last_event_id: str | None,
        prev: int,
        period_ms: int,
    ) -> AsyncIterator[list[sse.Frame]]:
        """The start of a stream from this process's rings: the current values (a new
        stream, or ``gap`` first when ``Last-Event-ID`` cannot be resumed), or what the
        client missed since ``pos``."""
        if last_event_id is not None and (
            pos is None or pos.epoch != self.epoch or pos.cover > self.seq
        ):
            yield self._gap(
                prev,
                last_event_id,
                "Last-Event-ID is from another server process or not understood, and what "
                "was missed is not in the live history; fill the gap from history",
                plan,
            )
            pos = None
        if pos is None:
            try:
                events = await plan.snapshot(self.history)
            except Exception as exc:  # the store is down: live values still flow
                log.warning("watch snapshot failed: %s", exc)
                events = []
            if events:
                now = plan.marks_at(prev)
                yield self._encode(events, prev, prev, 0, (now, now))
            return
        lost = max(ring.lost_upto for ring in plan.rings)
        start = pos.prev if pos.prev < pos.cover else pos.cover
        if lost > start:
            yield self._gap(
                max(lost, pos.cover),
                last_event_id,
                "some of what was missed is no longer buffered; fill the gap from history",
                plan,
            )
        elif pos.prev < pos.cover:
            marks = (plan.marks_at(pos.prev), plan.marks_at(pos.cover))
            rest = self._encode(
                plan.collect(pos.prev, pos.cover), pos.prev, pos.cover, pos.index + 1, marks
            )
            if rest:
                yield rest
        for chunk in self._replay(plan, max(lost, pos.cover), prev, period_ms):
            yield chunk

    def _join(self, plan: Plan, params: WatchParams, prev: int, own: bool = False) -> _Group:
        """The group of streams with ``plan``'s key (made with ``plan`` when there is none;
        ``own``: a new group for this stream alone)."""
        group = None if own else self._groups.get(plan.key)
        if group is None:
            group = _Group(self, plan, params, prev)
            if not own:
                self._groups[plan.key] = group
            for ring in plan.rings:
                ring.users += 1
        group.members += 1
        return group

    def _leave(self, group: _Group) -> None:
        group.members -= 1
        if group.members > 0:
            return
        if self._groups.get(group.plan.key) is group:
            del self._groups[group.plan.key]
        group.stop()
        for ring in group.plan.rings:
            self.release(ring)


class Member:
    """One stream of a watch group: its outbox, keep-alive and where its own periods start.

    :meth:`send` puts a :class:`~livedata.gateway.protocol.sse.Batch` through the outbox:
    in one write while it writes straight through, event by event into its queue when
    it does not (the outbox's policy: drop oldest, ``missed``, stall clock).
    """

    __slots__ = ("done", "framing", "keep_alive", "last_sent", "outbox", "start")

    def __init__(
        self,
        outbox: Outbox,
        framing: sse.SseFraming,
        keep_alive: float,
        done: asyncio.Future[str],
    ) -> None:
        self.outbox = outbox
        self.framing = framing
        self.keep_alive = keep_alive
        self.done = done
        """Set when the stream ends (``stalled``, or ``gone``: its client left or its
        session ended): :meth:`WatchService.stream` returns."""
        self.last_sent = 0.0
        self.start: int | None = None
        """The position it joined its group at, until the group's periods cover it."""

    def send(self, batch: sse.Batch) -> None:
        """Send ``batch`` (not empty) through the outbox (counted by the caller:
        :func:`_count`)."""
        outbox = self.outbox
        if outbox.direct:
            outbox.write(batch.joined(self.framing))
        else:
            offer = outbox.offer
            for (payload, _, head), wire in zip(
                batch.frames, batch.wires(self.framing), strict=True
            ):
                offer(payload, wire, head)

    def keep_alive_now(self) -> None:
        """``: keep-alive``, unless the client is behind (something queued, missed or not
        yet handed on: what comes next will do)."""
        outbox = self.outbox
        if outbox.missed or outbox.queued or outbox.closed or getattr(outbox.sink, "buffer", None):
            return
        outbox.offer(b"{}", self.framing.wrap(sse.KEEP_ALIVE), None)
        EVENTS.labels("keep-alive").inc()


def _count(batch: sse.Batch, streams: int = 1) -> None:
    """Count ``batch``'s events sent to ``streams`` streams (one update per name)."""
    if streams:
        for name, count in batch.counts:
            EVENTS.labels(name).inc(count * streams)


_EARLY = 0.002
"""Seconds a group's timer may fire before its deadline and still count as on time."""


class _Group:
    """Streams of one key (table, tags, time format, period …): one period clock and one
    computation of each period's events, framed once; every member gets the same bytes.

    No task and no timer per member: one timer per group wakes at the next period or
    at the earliest keep-alive a member is due (``keep-alive`` seconds after the last
    thing it was sent), and writes to each member's outbox in turn.  A member that
    joined after the group's period began computes that first period itself from its
    own start (so nothing it already got comes twice); after that it takes the
    group's batch.
    """

    def __init__(self, service: WatchService, plan: Plan, params: WatchParams, prev: int) -> None:
        self.service, self.plan, self.params = service, plan, params
        self.members = 0
        """Streams that joined (:meth:`WatchService._join`) and have not left."""
        self.streams: set[Member] = set()
        self.prev = self.cover = prev
        """The last period covered ``(prev, cover]``."""
        self.loop = asyncio.get_running_loop()
        self.next_tick = self.loop.time() + params.period
        self._timer: asyncio.TimerHandle | None = None
        self._wake_at = 0.0
        self._schedule(self.next_tick)

    def add(self, member: Member, start: int) -> None:
        member.start = start
        member.last_sent = self.loop.time()
        self.streams.add(member)
        due = member.last_sent + member.keep_alive
        if due < self._wake_at:
            self._schedule(due)

    def remove(self, member: Member) -> None:
        self.streams.discard(member)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake_at = float("inf")

    def _schedule(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._wake_at = at
        self._timer = self.loop.call_at(at, self._wake)

    def _wake(self) -> None:
        self._timer = None
        now = self.loop.time()
        if now + _EARLY >= self.next_tick:
            self._period()
            self.next_tick += self.params.period
            if self.next_tick < now:
                self.next_tick = now + self.params.period
        due = self.next_tick
        for member in self.streams:
            at = member.last_sent + member.keep_alive
            if at <= now + _EARLY:
                try:
                    member.keep_alive_now()
                except Exception:
                    log.exception("a watch keep-alive of %s failed", self.plan.key)
                member.last_sent = now
                at = now + member.keep_alive
            if at < due:
                due = at
        self._schedule(due)

    def _period(self) -> None:
        plan, service = self.plan, self.service
        prev, cover = self.cover, service.seq
        try:
            events = plan.collect(prev, cover)
            marks = (plan.marks_at(prev), plan.marks_at(cover))
            frames = service._encode(events, prev, cover, 0, marks) if events else []
        except Exception:  # a bad row must not silence every member for good
            log.exception("a watch period of %s failed", plan.key)
            frames = []
        self.prev, self.cover = prev, cover
        batch = sse.Batch(frames) if frames else None
        now = self.loop.time()
        shared = 0
        for member in self.streams:
            try:
                start = member.start
                if start is not None and prev < start:  # its first period began before it
                    if cover <= start:
                        continue
                    events = plan.collect(start, cover)
                    marks = (plan.marks_at(start), plan.marks_at(cover))
                    own = service._encode(events, start, cover, 0, marks)
                    member.start = None
                    if own:
                        first = sse.Batch(own)
                        member.send(first)
                        _count(first)
                        member.last_sent = now
                    continue
                member.start = None
                if batch is not None:
                    member.send(batch)
                    member.last_sent = now
                    shared += 1
            except Exception:
                log.exception("a watch stream of %s failed", plan.key)
        if batch is not None:
            _count(batch, shared)


STREAM_QUEUE = 512
"""Events a stream's outbox holds while its client is behind (a period has up to 100)."""
HIGH_WATER = 65_536
"""Bytes handed to the HTTP server and not yet sent above which a stream's outbox queues."""


class _AsgiSink:
    """A watch stream's outbox writes here when the server does not hand over its
    transport (another ASGI server): one task per stream hands it to ASGI ``send``.

    ``write`` only appends and wakes that task (coalescing whatever came meanwhile into
    one ``send``); above :data:`HIGH_WATER` bytes not yet sent the outbox is paused, and
    it resumes (writing what it queued in one piece) once a ``send`` completed and the
    buffer is below half of it.  Bytes in a ``send`` still in progress count as
    buffered, so a client that takes nothing keeps the size still and the outbox's
    stall clock gives it up.
    """

    __slots__ = ("buffer", "inflight", "outbox", "wake")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.inflight = 0
        self.wake = asyncio.Event()
        self.outbox: Outbox | None = None

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.wake.set()
        outbox = self.outbox
        if outbox is not None and not outbox.paused and self.get_write_buffer_size() > HIGH_WATER:
            outbox.pause_writing()

    def get_write_buffer_size(self) -> int:
        return len(self.buffer) + self.inflight

    async def run(self, send: Any) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.buffer:
                chunk = bytes(self.buffer)
                self.buffer.clear()
                self.inflight = len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.inflight = 0
                outbox = self.outbox
                if outbox is not None and outbox.paused and len(self.buffer) < HIGH_WATER // 2:
                    outbox.resume_writing()


class _Body:
    """A stream's body as the server layer writes it (a
    :class:`~livedata.gateway.server.BodyStream`): its outbox, and the stream's end
    (``gone``) when the server closes it because the client went away, so no task
    awaits ``receive`` for that."""

    __slots__ = ("gone", "outbox")

    def __init__(self, outbox: Outbox, gone: Callable[[], None]) -> None:
        self.outbox = outbox
        self.gone = gone

    def pause_writing(self) -> None:
        self.outbox.pause_writing()

    def resume_writing(self) -> None:
        self.outbox.resume_writing()

    def close(self) -> None:
        self.outbox.close()
        self.gone()


class _WatchResponse(StreamingResponse):
    """The event stream through the fan-out core's outbox policy (see "Under stress").

    Once the head is sent, the body is written by the stream's group straight to the
    transport when the server layer hands it over (:data:`~livedata.gateway.server.RAW_HTTP`),
    else through ASGI ``send`` (:class:`_AsgiSink`).  What stays here is the request's
    task waiting for the stream to end: the server layer tells when the client went
    away (it closes the :class:`_Body`), the security middleware when its session ended
    (:data:`~livedata.gateway.security.ON_LIVE_END`), the outbox when it stalled; no
    task awaits ``receive``.  Under another ASGI server two more tasks per stream: the
    writer and one awaiting ``receive`` (the client going, or its session ending).
    """

    def __init__(
        self,
        service: WatchService,
        plan: Plan,
        params: WatchParams,
        last_event_id: str | None,
        stall: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(iter(()), **kwargs)  # the body comes from the stream's group
        self.service, self.plan, self.params = service, plan, params
        self.last_event_id = last_event_id
        self.stall = stall

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def end(why: str) -> None:
            if not done.done():
                done.set_result(why)

        def stalled() -> None:
            end("stalled")

        hub = self.service.hub

        def direct(transport: asyncio.Transport) -> _Body:
            outbox = hub.outbox(transport, sse.CHUNKED_SSE, stalled, STREAM_QUEUE, self.stall)
            return _Body(outbox, lambda: end("gone"))

        ref = scope.get("extensions", {}).get(RAW_HTTP)
        protocol = ref() if ref is not None else None
        body = protocol.stream_body(direct) if protocol is not None else None
        framing = sse.CHUNKED_SSE
        tasks: list[asyncio.Future[None]] = []
        if body is not None:  # the server layer ends it: no task awaits receive
            outbox = body.outbox
            scope.get("state", {}).get(ON_LIVE_END, []).append(lambda _why: end("ended"))
        else:
            sink = _AsgiSink()
            framing = sse.SSE_FRAMING
            outbox = sink.outbox = hub.outbox(sink, framing, stalled, STREAM_QUEUE, self.stall)

            async def disconnected() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass

            tasks += [asyncio.ensure_future(sink.run(send)), asyncio.ensure_future(disconnected())]
            for task in tasks:
                task.add_done_callback(lambda _: end("gone"))
        member = Member(outbox, framing, self.params.keep_alive, done)
        try:
            await self.service.stream(self.plan, self.params, self.last_event_id, member)
        finally:
            outbox.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if done.result() == "stalled":
            log.info("ending a watch stream that took nothing for %g s", self.stall)
            return  # no final chunk: it could not get through; the server closes the socket
        if done.result() == "ended":  # its session ended: the stream ends cleanly
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]


# --------------------------------------------------------------------------- write


@dataclass(frozen=True, slots=True)
class _Row:
    number: int
    name: str
    ts: int
    value: Value


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > WRITE_MAX_BYTES:
        raise TooLarge(f"the body is larger than {WRITE_MAX_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > WRITE_MAX_BYTES:
            raise TooLarge(f"the body is larger than {WRITE_MAX_BYTES} bytes")
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(bytes(body), WRITE_MAX_BYTES + 1)
        except zlib.error as exc:
            raise InputError(f"the gzip body cannot be decompressed: {exc}") from None
        if len(out) > WRITE_MAX_BYTES or inflater.unconsumed_tail:
            raise TooLarge(f"the decompressed body is larger than {WRITE_MAX_BYTES} bytes")
        return out
    if encoding not in ("", "identity"):
        raise InputError(f"Content-Encoding {encoding!r} is not supported: use gzip")
    return bytes(body)


_COLUMNS = ("NAME", "TIME", "VALUE")


def _columns(raw: object) -> list[str]:
    if raw is None:
        return list(_COLUMNS)
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise InputError("data.columns must be a list of column names")
    columns = [c.strip().upper() for c in raw]
    if sorted(columns) != sorted(_COLUMNS):
        raise InputError(f"tag tables have the columns NAME, TIME, VALUE; got {raw[:10]}")
    return columns


def parse_rows(body: bytes, content_type: str, query: Any, fmt: TimeFormat) -> list[_Row]:
    """The rows of a write request (JSON, NDJSON or CSV), each checked."""
    kind = content_type.split(";")[0].strip().lower()
    raw_rows: list[tuple[int, dict[str, Any]]] = []
    if kind in ("", "application/json"):
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"the body is not valid JSON: {exc}") from None
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise InputError('expected {"data":{"columns":[…],"rows":[[…],…]}}')
        columns = _columns(data.get("columns"))
        for n, row in enumerate(data["rows"], 1):
            if not isinstance(row, list) or len(row) != len(columns):
                raise InputError(f"row {n}: expected a list of {len(columns)} values")
            raw_rows.append((n, dict(zip(columns, row, strict=True))))
            if n > WRITE_MAX_ROWS:
                break
    elif kind in ("application/x-ndjson", "application/ndjson"):
        for n, line in enumerate(body.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise InputError(f"line {n} is not valid JSON") from None
            if not isinstance(obj, dict):
                raise InputError(f"line {n}: expected an object with NAME, TIME, VALUE")
            upper = {str(k).upper(): v for k, v in obj.items()}
            if set(upper) != set(_COLUMNS):
                raise InputError(f"line {n}: expected the keys NAME, TIME, VALUE")
            raw_rows.append((n, upper))
            if len(raw_rows) > WRITE_MAX_ROWS:
                break
    elif kind == "text/csv":
        delimiter = query.get("delimiter", ",")
        if len(delimiter) != 1:
            raise InputError("delimiter must be one character")
        header = (query.get("header") or "").lower()
        if query.get("heading", "").lower() == "true" and not header:
            header = "skip"
        if header not in ("", "skip", "columns"):
            raise InputError("header must be skip or columns")
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError("the CSV body is not UTF-8") from None
        reader = csv.reader(io.StringIO(text), delimiter=delimiter)
        columns = list(_COLUMNS)
        for n, record in enumerate(reader, 1):
            if not record or all(not cell.strip() for cell in record):
                continue
            if n == 1 and header:
                if header == "columns":
                    columns = _columns(record)
                continue
            if len(record) != len(columns):
                raise InputError(f"line {n}: expected {len(columns)} fields, got {len(record)}")
            raw_rows.append((n, dict(zip(columns, (c.strip() for c in record), strict=True))))
            if len(raw_rows) > WRITE_MAX_ROWS:
                break
        for index, (n, row) in enumerate(raw_rows):
            raw_rows[index] = (n, {**row, "VALUE": _csv_value(row["VALUE"])})
    else:
        raise _Unsupported(
            f"Content-Type {kind!r} is not supported: use application/json, "
            "application/x-ndjson or text/csv"
        )
    if len(raw_rows) > WRITE_MAX_ROWS:
        raise TooLarge(f"more than {WRITE_MAX_ROWS} rows in one request")
    rows: list[_Row] = []
    for n, row in raw_rows:
        name = row["NAME"]
        if not isinstance(name, str) or not name:
            raise InputError(f"row {n}: NAME must be a non-empty string")
        try:
            ts = fmt.to_ms(row["TIME"])
        except ValueError as exc:
            raise InputError(f"row {n}: {exc}") from None
        value = row["VALUE"]
        if value is None:
            raise InputError(f"row {n}: VALUE is null")
        checked, errors = decode_values({"v": value})
        if errors:
            raise InputError(f"row {n}: VALUE {errors[0].split(': ', 1)[-1]}")
        rows.append(_Row(n, name, ts, checked["v"]))
    return rows


def _csv_value(text: str) -> Value:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


class _Unsupported(InputError):
    code = "unsupported_media_type"


def _checked_times(ingest: Ingest, rows: list[_Row], now: int) -> list[_Row]:
    """``rows`` through ingest's timestamp policy: refused (InputError naming the row) or
    clamped, before any row of the request is handed on."""
    checked = []
    for row in rows:
        try:
            checked.append(replace(row, ts=ingest.timestamps.check(row.ts, now)))
        except DecodeError as exc:
            raise InputError(f"row {row.number}: {exc}") from None
    return checked


async def write_rows(
    service: WatchService, org: str, table: str, rows: list[_Row]
) -> dict[str, int]:
    """Hand ``rows`` to ingest and wait until they are stored; returns counts.

    Every row's time goes through ingest's timestamp policy first (refused: nothing of
    the request is written; clamped: written at the server's time)."""
    now = int(time.time() * 1000)

    def kind_of(ts: int) -> Kind:
        return Kind.REALTIME if ts >= now - REALTIME_WINDOW_MS else Kind.BACKFILL

    done: list[asyncio.Event] = []

    def new_ack() -> Callable[[], Any]:
        event = asyncio.Event()
        done.append(event)

        async def ack() -> None:
            event.set()

        return ack

    groups: dict[tuple[str, int], dict[str, Value]] = {}
    if table == MsgType.CLIENT_RAW_DATA:
        tags = []
        for row in rows:
            try:
                tags.append(await service._split_tag(org, row.name))
            except NotFound as exc:
                raise NotFound(f"row {row.number}: {exc}") from None
        for row, (chassis, fld) in zip(
            _checked_times(service.ingest, rows, now), tags, strict=True
        ):
            groups.setdefault((chassis, row.ts), {})[fld] = row.value
        deliveries = [
            Delivery(
                DeviceMessage(
                    org, chassis, MsgType.CLIENT_RAW_DATA, ts, kind_of(ts), values=values
                ),
                new_ack(),
            )
            for (chassis, ts), values in groups.items()
        ]
        outcomes = await service.ingest.handle_many(deliveries)
        for (chassis, _), outcome in zip(groups, outcomes, strict=True):
            if not isinstance(outcome, Record):
                raise InputError(f"ingest refused the values of {chassis!r}: {outcome.reason}")
        WRITTEN.labels("telemetry").inc(len(rows))
    else:
        bad = [r for r in rows if not valid_id(r.name)]
        if bad:
            raise InputError(
                f"row {bad[0].number}: invalid tag name {bad[0].name[:80]!r} (letters, digits, "
                "'_', '.', '-', starting with a letter or digit, at most 64 characters)"
            )
        rows = _checked_times(service.ingest, rows, now)
        await service.catalog.note_fields(org, USER_CHASSIS, table, {r.name for r in rows})
        for row in rows:
            groups.setdefault((USER_CHASSIS, row.ts), {})[row.name] = row.value
        await service.ingest.submit_many(
            [
                (Record(org, chassis, table, ts, kind_of(ts), values), new_ack())
                for (chassis, ts), values in groups.items()
            ]
        )
        WRITTEN.labels("user").inc(len(rows))
    try:
        async with asyncio.timeout(WRITE_ACK_TIMEOUT_S):
            for event in done:
                await event.wait()
    except TimeoutError:
        raise _NotStored(
            f"the rows are queued but not stored after {WRITE_ACK_TIMEOUT_S:g} s; "
            "the store may be down"
        ) from None
    realtime = sum(1 for r in rows if kind_of(r.ts) is Kind.REALTIME)
    return {"rows": len(rows), "realTime": realtime, "backfill": len(rows) - realtime}


class _NotStored(Exception):
    pass


# --------------------------------------------------------------------------- routes

router = APIRouter(tags=["watch"])


def _error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _table_name(table: str) -> str:
    name = table.lower()
    if not valid_id(name):
        raise NotFound(f"table {table[:80]!r} not found")
    return name


@router.get(
    "/db/watch/{table}",
    summary="Watch a table's latest values (Server-Sent Events, Machbase Neo style)",
    response_class=StreamingResponse,
)
async def watch(request: Request, table: str) -> Any:
    gw = gateway_of(request)
    service = gw.watch
    name = _table_name(table)
    params = sse.parse_query(request.url.query)
    org = principal_of(request).org
    try:
        plan = await service.plan(org, name, params)
    except _Busy as exc:
        return _error(503, "too_busy", str(exc), **{"Retry-After": "10"})
    if service.streams >= service.max_streams:
        return _error(
            503,
            "too_many_streams",
            f"this server has {service.max_streams} watch streams open; try again later",
            **{"Retry-After": "10"},
        )
    last_event_id = request.headers.get("last-event-id")
    return _WatchResponse(
        service,
        plan,
        params,
        last_event_id,
        gw.settings.client_stall_seconds,
        media_type=sse.MEDIA_TYPE,
        headers=sse.HEADERS,
    )


@router.post("/db/write/{table}", summary="Write rows to a tag table (Machbase Neo style)")
async def write(request: Request, table: str) -> JSONResponse:
    started = time.perf_counter()
    gw = gateway_of(request)
    name = _table_name(table)
    if "ingest" not in gw.roles:
        return _error(503, "unavailable", "this process does not run the ingest role")
    org = principal_of(request).org
    if name == MsgType.VEHICLE_CAN:
        raise InputError(
            "vehicle_can is decoded from the CAN frames machines send; "
            "write client_raw_data or a table of your own"
        )
    if name in gw.watch.log_tables:
        raise InputError(f"{name} is a log table written by livedata itself")
    fmt = TimeFormat.parse(request.query_params.get("timeformat"), request.query_params.get("tz"))
    try:
        body = await _read_body(request)
        rows = parse_rows(body, request.headers.get("content-type", ""), request.query_params, fmt)
    except TooLarge as exc:
        return _error(413, exc.code, str(exc))
    except _Unsupported as exc:
        return _error(415, exc.code, str(exc))
    if not rows:
        raise InputError("no rows to write")
    try:
        counts = await write_rows(gw.watch, org, name, rows)
    except _NotStored as exc:
        return _error(503, "unavailable", str(exc))
    elapsed = time.perf_counter() - started
    return JSONResponse(
        {
            "success": True,
            "reason": f"success, {counts['rows']} record(s) written",
            "elapse": f"{elapsed * 1000:.3f}ms",
            "data": counts,
        }
    )


__all__ = [
    "LOG_TABLES",
    "USER_CHASSIS",
    "LogTables",
    "TimeFormat",
    "WatchService",
    "decode_error_rows",
    "parse_duration",
    "router",
]
