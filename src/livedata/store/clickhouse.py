"""Telemetry store on ClickHouse over the native protocol (clickhouse-driver).

URL: ``clickhouse://[user[:password]@]host[:port][/database][?options]`` -- the port
is the native one (9000 by default), the database defaults to ``default`` and is
created when missing.  Query options are clickhouse-driver's (``secure``,
``compression``, ``connect_timeout``, ``send_receive_timeout``, ``alt_hosts``, ...;
anything else becomes a query setting), plus ``pool_size`` (clients and threads,
default 4).

Schema (in the URL's database)::

    records (tenant String, chassis String, msg_type String,
             ts Int64,               -- milliseconds since the epoch
             field Array(String),    -- the record's field names, sorted
             kind Array(UInt8),      -- per field: 1 float, 2 int, 3 str
             num Array(Float64),     -- the number (ints too, for min/max); 0 for text
             int Array(Int64),       -- the exact int when kind = 2, else 0
             str Array(String),      -- the text when kind = 3, else ''
             ver UInt64)             -- write version, increasing per write
        ENGINE = ReplacingMergeTree(ver)
        PARTITION BY intDiv(ts, 86400000)            -- one partition per UTC day
        ORDER BY (tenant, chassis, msg_type, ts, field)
        SETTINGS index_granularity = 1024

    streams (tenant, chassis, msg_type, last_ts Int64)
        ENGINE = ReplacingMergeTree(last_ts) ORDER BY (tenant, chassis, msg_type)
        SETTINGS index_granularity = 256
        filled by the materialized view records_streams_mv (max(ts) per inserted
        block), so latest_ts reads one row per machine instead of scanning its records
    retention (cutoff Int64) ENGINE = ReplacingMergeTree(cutoff) ORDER BY tuple()
    frames (tenant, chassis String, ts Int64, count UInt32, data String, ver UInt64)
        ENGINE = ReplacingMergeTree(ver) PARTITION BY intDiv(ts, 86400000)
        ORDER BY (tenant, chassis, ts)          -- raw frames, one blob per message; read
                                                -- with argMax(.., ver) like the points
    frames_retention (cutoff Int64)             -- their own cutoff, as ``retention``

Re-decoding (``replace_values``) deletes the range's values and their minutes' rollups
with ``ALTER TABLE ... DELETE`` (a mutation, waited for: on 18.16 it rewrites every
part of the table, seconds on a large one) -- whole records, after reading the values
of the kept fields, which are written again with the new values -- inserts the new
records and rebuilds the rollups of the range's minutes from the records: readers may
see the range empty meanwhile (no transactions), and afterwards the rollups follow the
new values exactly.

    rollups (tenant, chassis, msg_type, field String, step UInt32, bucket Int64,
             lo AggregateFunction(argMin, Tuple(Int64, UInt8, Float64, Int64), Float64),
             hi AggregateFunction(argMax, Tuple(Int64, UInt8, Float64, Int64), Float64))
        ENGINE = AggregatingMergeTree()
        PARTITION BY intDiv(bucket * step, 86400000)  -- the day of its points
        ORDER BY (tenant, chassis, msg_type, field, step, bucket)
        per (stream, field, minute) (step 60000) argMin/argMax of (ts, kind, num, int) by
        num, inserted when the minute settles (see Rollups)
    rollup_open (tenant, chassis, msg_type, done UInt8, open_minute Int64)
        ENGINE = ReplacingMergeTree(open_minute) ORDER BY (tenant, chassis, msg_type, done)
        SETTINGS index_granularity = 256
        -- per stream its first open minute: the minutes before it are rolled up

**One row per record**, not per point: measured with ``bench/bench_storecost.py``
(``--phase clickhouse``, 2,500-record inserts of 8 and 15 values), the server's CPU per
record, merges included, fell by about 1.5x against the per-point table, the store's
own CPU per record rose by about 10 % (the arrays are cut per record), and the
2-minute query of one machine takes about as long.  A database of the per-point
version (``points``, one row per value) is migrated when the store starts (see
:meth:`ClickHouseStore._migrate_points`): its views are dropped first, so every process
writing to it must run this version.

Values: an int comes back as int (``int``, exact over 64 bits), a float as float
(``num``), a string as str; ``num`` also holds ints as Float64 so that the
downsampled history (min/max per time bucket) aggregates one column without
looking at ``kind``.

Rollups, as in the SQLite and PostgreSQL stores, of *settled* minutes only, computed
once: when a write moves a stream's newest point 185-235 s
(:func:`~livedata.store.base.settle_lag` rounded to 5 s plus whole 10 s, spread per
stream by :func:`~livedata.store.base.stream_key`, plus
:data:`~livedata.store.base.GROUP_DELAY_MS`) past a group of :data:`SETTLE_SPAN` (10)
minutes, it runs ``INSERT INTO rollups SELECT ... FROM records`` for those minutes
(all its streams in one statement, the (stream, minute) pairs sent as an external table)
and records the stream's new open minute in ``rollup_open``.  A fleet's streams settle in
cohorts, a 60th of them every 10 s (:data:`~livedata.store.base.GROUP_LAG_STEP_MS`), so
one write in 10 s per process settles (three inserts and a roll-up) instead of nearly
every write of a large fleet; that write reads back a 60th of the fleet's last ten
minutes (about 100,000 records of 10,000 streams at 1 Hz; a larger fleet in statements
of :data:`ROLL_UP_PAIRS`), so it takes longer than the others.  It reads whole index
granules (1,024 records), and in the parts of the newest seconds each granule holds a
little of thousands of streams, so a cohort's few streams are in every granule: settled
5-55 s past the group, the roll-ups read back 7-8 records per record written, all of the
newest minute's parts again for each cohort; settled 3 minutes later, when those records
are merged into larger parts, they read back 5 (``bench/bench_clickhouse_growth.py``, see
``bench/README.md``).  A write into a minute already settled (late data, a redelivery, a
backfill, a correction) rolls that minute up again.
Until this version a materialized view rolled up every insert: about one rollup row per
*point* per insert (a 0.5 s insert meets each (machine, field, minute) once), which
ClickHouse then merged; see ``bench/README.md`` (``bench_storecost.py --phase
clickhouse``) for what each costs.  ``downsample`` reads rollups only for minutes before
the stream's open minute, the records from there on (up to 14 minutes of a live stream),
and raw records at the range's ends.  Only the 1-minute step: ClickHouse scans raw
points fast enough for grids of 10 s steps (24 h of 10 fields is 864,000 points).
Minimum and maximum are idempotent: rolling a minute up again, in this process or
another, adds states equal to or wider than those there, and merges fold them (the
table stays an AggregatingMergeTree).  A *corrected* value (a key written again with
another value) is the exception: its old value stays in the rollup for good, where the
raw downsampling forgets it once ReplacingMergeTree has merged (before that it counts
too; see ``downsample``); :meth:`ClickHouseStore.replace_values` deletes and rebuilds
its minutes' rollups.  ``downsample`` merges the states of the rollups that fit its grid
with states made from the raw points, in one query: 7 days of 10 fields at 1 Hz read
about 100,000 rollup rows instead of 6 M points.  An older database loses its view
(``records_rollups_mv``) on start and keeps its rollups; one without rollups gets them
from every record.  Values are normalised like the other stores (bool as int,
NaN/None/objects skipped and not counted).

Several writers (processes) of one database: ``rollup_open`` holds per stream a
*claimed* open minute, written before the roll-up, and a *settled* one, written after;
readers trust rollups below the settled one.  Every write reads (one query, usually
returning nothing) the claims past the oldest minute it touched, and rolls up again the
minutes it touched below a claim: a point inserted into a minute that another process
is settling was either inserted before the claim, so before the roll-up read the
records, or its write sees the claim.  So when a write returns, ``downsample`` includes
its points -- except while another process's write is between its insert and its
roll-up (milliseconds).  A write that fails anywhere raises; its retry or the stream's
next write in this process, or after :data:`CLAIM_PATIENCE_S` in any process (from the
settled minute on), rolls the minutes up again.
Cost: one more round trip per write, four more (the others' claims of the streams it
would move, claim, roll-up, settled) on a write that settles a group of minutes of some
stream.  The writers of an MQTT share group all see every stream, and each one's newest
point passes a stream's settle time within a second or two of the others': a write leaves
the streams another process has settled or is settling to it (a claim still pending
:data:`CLAIM_PATIENCE_S` after this process first saw it is taken as abandoned and rolled
up here), so each group of minutes is read back once, not once per writer
(``bench/bench_clickhouse_growth.py``).  And since each writer's crossing write holds about
half of a cohort's streams, it settles the cohort's other live streams it has written
before too (:meth:`ClickHouseStore._companions`): one roll-up per cohort instead of one
per writer, a quarter of the claim checks.

Duplicates: a point is (tenant, chassis, msg_type, field, ts); writing it again
**replaces its value (last write wins)**, as in the memory and SQLite stores.
Within one ``write`` the later record wins (done in Python before inserting: one row
per record key).  Across writes, every row carries ``ver`` (nanosecond clock, strictly
increasing in this process); a row's key ends with its sorted field names, so a
redelivered or corrected record (the same fields) replaces the older row on merge
(ReplacingMergeTree keeps the highest ``ver``), while a record of *other* fields at the
same ts (a partial write, e.g. two messages of one timestamp in two batches) is a row
of its own and both stay.  Merges happen in the background at some time or never, so
``query`` deduplicates by itself, per point: ``argMax(value, ver) ... GROUP BY field,
ts`` over the records' points (ARRAY JOIN), which also merges the fields of partial
records.  ``machine_points`` and ``delete_before`` count the values of the rows that
``FINAL`` keeps: exact, except that a field written in two records of different field
sets at the same ts counts twice.  Measured on the per-point table, on 18.16, against
``FINAL`` on 1 M points of one machine (10 fields; 150 unmerged one-second parts and 10
redelivered batches; queries interleaved, medians; ``bench/bench_store_backends.py``
repeats it; two runs): the 2-minute history query, the one the live page makes,
took 27-29 ms with argMax against 43-44 ms with FINAL on the newest (unmerged)
minutes, 10-11 against 23-24 ms on older merged ones, and 7-8 against 12-16 ms once
everything was merged -- about what the same query costs without deduplication.
Counting all 1 M points, argMax took 0.75-1.26 s against FINAL's 0.98-1.1 s while
unmerged, and lost once merged (0.59-1.0 s against 0.48-0.53 s).  Long ranges are
to be downsampled in the store (min/max per time bucket), and min and max need no
deduplication at all -- a redelivered point has the same value; only a corrected one
counts with its old value until merged -- so that query can skip both (0.2-0.45 s
for the same scan).

Retention without mutations: ``delete_before(cutoff)`` records the cutoff in
``retention`` (every query and ``latest_ts`` filters ``ts >=`` the highest recorded
cutoff, so the points are gone for readers at once) and drops every day partition
entirely older than the cutoff (``ALTER TABLE ... DROP PARTITION``, instant).  The
rows of the cutoff's own day stay on disk, invisible, until their partition is
dropped by a later call.  It returns the number of points between the previous
cutoff and this one (counted with ``FINAL``, see above).  A point written later with a
timestamp below a recorded cutoff (very late backfill) is accepted and invisible.

Features avoided for the old server (Debian's 18.16; the SQL runs on current
releases too):

* ``TTL`` (19.6) -- retention is the call above, not a table setting;
* ``ALTER TABLE ... DELETE`` for the partial day: 18.16 runs mutations
  asynchronously (no ``mutations_sync`` before 19.x) and **rewrites every part of
  the table**, not only the parts with matching rows (seen here: a DELETE of some
  hours of one day rewrote the parts of every day), so the runtime's retention,
  every 10 minutes, would have rewritten the whole table each time;
* ``LowCardinality(String)`` (experimental in 18.16) for the name columns --
  in key order plain ``String`` compresses well anyway (about 9 bytes per point on
  disk for all columns, in the benchmark);
* column ``CODEC`` (Delta, DoubleDelta, Gorilla, ZSTD: 19.x) -- default LZ4;
* ``DateTime64`` (20.1) -- ``ts`` is Int64 milliseconds; partitions are integer
  day numbers, so no time zone is involved;
* the setting ``max_partitions_per_insert_block`` (unknown to 18.16, 100 on current
  releases): a batch spanning more than 100 days is inserted in several
  statements of at most 100 days each instead;
* ``-OrNull`` aggregate combinators, ``mutations_sync``, ``optimize_read_in_order``.

Threads: clickhouse-driver is synchronous, so every call runs on a small thread
pool (``pool_size``), each thread with its own client; nothing blocks the event
loop.  A client reconnects by itself on its next use after a failure.  It does not ping
the server before every query as clickhouse-driver does (a round trip each): it checks
its socket for a closed connection and pings only after :data:`PING_IDLE_S` idle (see
:class:`_Connection`).

Client CPU of a write: the records insert is encoded into the native format here
(:class:`_Columns`, :class:`_Block`; the same bytes as the driver's, tested) rather than
by clickhouse-driver from Python lists: per record a few cached lookups and list
appends, per value only its part of a C-level type check per field (and the encoding of
strings); measured with a 1,500-record batch of 15-50 values, building and sending it
took about half the CPU of the driver's way (see ``bench/README.md``, issue 17).  Ingest
writes with :meth:`ClickHouseStore.write_normalised` (its values checked once, when
decoded), and a write that moves no stream's open minute -- nearly every write of a live
fleet -- is told per stream by one comparison with a cached bound
(:func:`~livedata.store.base.open_until`): together with the grouping by field names
alone, the write's Python work on the writer thread (which holds the GIL meanwhile, against
ingest's event loop) fell from 5.5 to 3.4 µs per record of the simulated fleet (13 values
per record on average; no server: ``bench/bench_decodepath.py``, see ``bench/README.md``).

Under stress:

* **Server down or unreachable, timeouts, server errors** (e.g. *too many parts*
  when inserts come faster than merges): :class:`~livedata.errors.StoreError`,
  never a clickhouse-driver exception.  The store does not retry; ingest retries
  the batch with a growing delay, and the next call reconnects.
* **Atomicity**: ClickHouse has no transactions; an insert is atomic *per block and
  partition* -- one part is written per partition that a block touches, and a
  batch larger than ``max_insert_block_size`` (1,048,576 rows) is several blocks.
  A failed ``write`` may therefore have stored some days of the batch and not
  others.  Retrying the whole batch is safe: the rows stored twice carry the same
  key, and queries (and later merges) keep one of them.
* Many small inserts make many parts; ClickHouse merges them in the background and
  refuses inserts at 300 active parts in a partition (*too many parts*, a
  StoreError like any other).  Fewer, larger batches (ingest lingers and batches)
  keep far below that: :attr:`ClickHouseStore.batch_ms` is 1 s, so at a fleet's
  rate each ingest process inserts about once a second (measured with
  ``bench/bench_cluster.py --machines 2000 --ingest 2``, 3 rounds: 2,182-2,449
  records per insert instead of 1,000 at 500 ms with the MQTT link's former
  ``inflight`` of 1000, this server's CPU per record 0.56-0.60x, its merged rows
  0.71x; records reach the store up to about a second later (store lag <= 2 s
  instead of <= 0.5-1 s), live data does not wait for it).
* ``delete_before`` counts with ``FINAL`` over the records between the previous and
  the new cutoff: a few minutes' worth when called every few minutes, everything
  older than the cutoff on the first call.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import select
import struct
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from itertools import accumulate, chain, repeat
from operator import itemgetter
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from clickhouse_driver import Client, defines
from clickhouse_driver import errors as ch_errors
from clickhouse_driver.block import BlockInfo, ColumnOrientedBlock
from clickhouse_driver.connection import Connection
from clickhouse_driver.protocol import ClientPacketTypes
from clickhouse_driver.util.helpers import parse_url
from clickhouse_driver.varint import write_varint
from clickhouse_driver.writer import write_binary_str

from livedata import errors
from livedata.errors import ConfigError, ErrorMap, StoreError, map_exceptions
from livedata.model import Record, Value
from livedata.store.base import (
    GROUP_LAG_STEP_MS,
    INT64_MAX,
    INT64_MIN,
    MINUTE_MS,
    Grid,
    LatestWindow,
    Plan,
    Series,
    Store,
    StreamId,
    bucket_grid,
    check_replacement,
    extremes,
    first_open_minute,
    kept_field,
    normalised,
    open_until,
    rollup_plan,
    settle_cohort,
    settle_minutes,
    settle_streams,
    stream_key,
)
from livedata.store.frames import FrameBlob

T = TypeVar("T")

DAY_MS = 86_400_000
POOL_SIZE = 4
MAX_DAYS_PER_INSERT = 100
"""Current releases refuse an insert block touching more partitions (days) than this."""
CONNECT_TIMEOUT_S = 5.0
SEND_RECEIVE_TIMEOUT_S = 60.0

KIND_FLOAT, KIND_INT, KIND_STR = 1, 2, 3

_AS_BYTES = {"strings_as_bytes": True}
"""Insert settings: string columns given as UTF-8 bytes (no encoding per value)."""
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")

RECORDS_GRANULE = 1024
"""Records per index mark: a query reads whole granules of every part it touches, and a
granule of records holds as many points as ~13 of points; at ClickHouse's default (8,192)
the 2-minute query of one machine took twice as long as on the per-point table."""

STREAM_GRANULE = 256
"""Rows per index mark of the per-stream tables (``streams``, ``rollup_open``): their reads
are of one stream (``latest_ts``, ``downsample``), and every insert makes a part of a few
thousand rows, so at ClickHouse's default (8,192) such a read decompressed and filtered
every row of every unmerged part; measured on 18.16 with 4,000 streams in 5 parts, a
``latest_ts`` took about 20-30 % less server CPU at 256 (most of the rest is the cost of
any query).  An older database keeps its tables as they were (only slower)."""

LATEST_GROUP_SPAN_MS = 60_000
"""``latest_values_many``: machines whose windows lie within this span of each other are
read as one key range (``chassis IN (...) AND ts BETWEEN ...``), so a live fleet's machines,
whose newest points are seconds apart, make one range and the index analysis stays short,
while a machine silent for a day adds a range of its own instead of widening the others'
to a day of their records.  Within a range, a granule (1,024 records, about 17 minutes of
one stream at 1 Hz) is read whole anyway."""

_ARRAY_JOIN = "ARRAY JOIN field, kind, num, int, str"
"""Records as one row per point: after it ``field``, ``kind``, ... are the point's."""


def _points(db: str, where: str) -> str:
    """The points of the records matching ``where`` (a ``FROM`` source).

    The records are selected in a subquery: 18.16 fails on a condition on ``field`` (a
    sorting key column) after an ARRAY JOIN of it in the same query ("comparison between
    inconvertible types")."""
    return f"(SELECT * FROM {db}.records WHERE {where}) {_ARRAY_JOIN}"


def _per_stream(db: str, table: str, column: str, flag: str = "") -> str:
    """A table of one Int64 ``column`` per stream (and UInt8 ``flag``), of which reads take
    the highest."""
    flagged = f"{flag} UInt8," if flag else ""
    key = f", {flag}" if flag else ""
    return f"""CREATE TABLE IF NOT EXISTS {db}.{table} (
            tenant String,
            chassis String,
            msg_type String,
            {flagged}
            {column} Int64
        ) ENGINE = ReplacingMergeTree({column})
        ORDER BY (tenant, chassis, msg_type{key})
        SETTINGS index_granularity = {STREAM_GRANULE}"""


def _schema(db: str) -> list[str]:
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.records (
            tenant String,
            chassis String,
            msg_type String,
            ts Int64,
            field Array(String),
            kind Array(UInt8),
            num Array(Float64),
            int Array(Int64),
            str Array(String),
            ver UInt64
        ) ENGINE = ReplacingMergeTree(ver)
        PARTITION BY intDiv(ts, {DAY_MS})
        ORDER BY (tenant, chassis, msg_type, ts, field)
        SETTINGS index_granularity = {RECORDS_GRANULE}""",
        _per_stream(db, "streams", "last_ts"),
        f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.records_streams_mv TO {db}.streams AS
        SELECT tenant, chassis, msg_type, max(ts) AS last_ts
        FROM {db}.records GROUP BY tenant, chassis, msg_type""",
        f"""CREATE TABLE IF NOT EXISTS {db}.retention (cutoff Int64)
        ENGINE = ReplacingMergeTree(cutoff) ORDER BY tuple()""",
        f"""CREATE TABLE IF NOT EXISTS {db}.frames (
            tenant String,
            chassis String,
            ts Int64,
            count UInt32,
            data String,
            ver UInt64
        ) ENGINE = ReplacingMergeTree(ver)
        PARTITION BY intDiv(ts, {DAY_MS})
        ORDER BY (tenant, chassis, ts)""",
        f"""CREATE TABLE IF NOT EXISTS {db}.frames_retention (cutoff Int64)
        ENGINE = ReplacingMergeTree(cutoff) ORDER BY tuple()""",
    ]


_STATE_TYPE = "Tuple(Int64, UInt8, Float64, Int64), Float64"
_STATES = (
    "argMinState(tuple(ts, kind, num, int), num) AS lo,"
    " argMaxState(tuple(ts, kind, num, int), num) AS hi"
)
"""Per group of points, the states of its minimum and maximum point (ts, kind, num, int)."""


_MIGRATE_SELECT = """
    SELECT tenant, chassis, msg_type, ts, arrayMap(p -> p.1, points), arrayMap(p -> p.2, points),
        arrayMap(p -> p.3, points), arrayMap(p -> p.4, points), arrayMap(p -> p.5, points), v
    FROM (
        SELECT tenant, chassis, msg_type, ts, max(v) AS v,
            arraySort(groupArray(tuple(field, k, n, i, s))) AS points
        FROM (
            SELECT tenant, chassis, msg_type, ts, field, argMax(kind, ver) AS k,
                argMax(num, ver) AS n, argMax(int, ver) AS i, argMax(str, ver) AS s,
                max(ver) AS v
            FROM {db}.points WHERE {where}
            GROUP BY tenant, chassis, msg_type, ts, field
        )
        GROUP BY tenant, chassis, msg_type, ts
    )"""
"""An older database's points (one row each) as records (:meth:`ClickHouseStore._migrate_points`)."""
MIGRATE_POINTS = 2_000_000
"""Points of an older database moved per statement at most (a day's machines in chunks)."""

MUTATION_WAIT_S = 120.0
"""How long :meth:`ClickHouseStore.delete_machine` waits for its mutations."""

ROLLUP_STEPS = (MINUTE_MS,)
"""The rollup steps this store keeps (the ``step`` column leaves room for more)."""


def _rollup_select(source: str, where: str = "") -> str:
    """Rollup states per (series, minute) of the points of ``source`` (records after an
    ARRAY JOIN) that match ``where`` (conditions followed by ``AND``), in the rollups'
    column order.

    The bucket is ``floor(ts / step)``.  ``toInt64``: 18.16 types ``ts % 60000`` as the
    divisor's type, Int16, and 40000 overflows to -25536.  ``modulo()``, not ``%``, so that
    the text can take query parameters.
    """
    (step,) = ROLLUP_STEPS
    return f"""SELECT tenant, chassis, msg_type, field, toUInt32({step}) AS step,
            intDiv(ts, {step}) - (modulo(ts, toInt64({step})) < 0) AS bucket, {_STATES}
        FROM {source}
        WHERE {where} kind != {KIND_STR}
        GROUP BY tenant, chassis, msg_type, field, bucket"""


_MINUTE = f"intDiv(ts, {MINUTE_MS}) - (modulo(ts, toInt64({MINUTE_MS})) < 0)"
"""The minute of ``ts`` (floor, as Python's ``ts // MINUTE_MS``), as :func:`_rollup_select`."""


_PAIRS = "settle_pairs"
"""Name of the external table (sent with the query) of the (stream, minute) pairs to roll up."""
_PAIR_STRUCTURE = [
    ("tenant", "String"),
    ("chassis", "String"),
    ("msg_type", "String"),
    ("minute", "Int64"),
]
SETTLE_SPAN = 10
"""Minutes of a stream settled together (:func:`~livedata.store.base.first_open_minute`): a
roll-up reads whole granules (1,024 records, about 17 minutes of one stream at 1 Hz), so
settling minute by minute read each granule about 17 times; ``downsample`` reads up to 11
minutes of a stream raw instead of 2 (14 with :data:`~livedata.store.base.GROUP_DELAY_MS`)."""
CLAIM_PATIENCE_S = 30.0
"""How long another process's claim may stay pending (claimed, not settled) before a
write settling the same streams takes it as abandoned and rolls the group up itself
(:meth:`ClickHouseStore._unclaimed`): far above a roll-up's time (a cohort's, about a
second), so that a slow claimer is not doubled."""
ROLL_UP_PAIRS = 20_000
"""(stream, minute) pairs rolled up per statement at most (a backfill in several)."""


def _external(name: str, structure: list[tuple[str, str]], rows: list[Any]) -> dict[str, Any]:
    """An external table for clickhouse-driver: rows sent as a data block, not in the SQL."""
    return {"name": name, "structure": structure, "data": rows}


def _rollup_schema(db: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS {db}.rollups (
            tenant String,
            chassis String,
            msg_type String,
            field String,
            step UInt32,
            bucket Int64,
            lo AggregateFunction(argMin, {_STATE_TYPE}),
            hi AggregateFunction(argMax, {_STATE_TYPE})
        ) ENGINE = AggregatingMergeTree()
        PARTITION BY intDiv(bucket * step, {DAY_MS})
        ORDER BY (tenant, chassis, msg_type, field, step, bucket)""",
        _per_stream(db, "rollup_open", "open_minute", flag="done"),
    ]


ERRORS: ErrorMap = {
    (ch_errors.SocketTimeoutError, TimeoutError): errors.StoreTimeout,
    (ch_errors.NetworkError, OSError, EOFError): errors.StoreUnavailable,
    (
        ch_errors.UnexpectedPacketFromServerError,
        ch_errors.UnknownPacketFromServerError,
        ch_errors.ChecksumDoesntMatchError,
        struct.error,
    ): errors.StoreProtocolError,
    (ch_errors.Error, OverflowError): StoreError,  # OverflowError: a value the column cannot hold
}
"""clickhouse-driver's (and the socket's) errors → the project's."""


def _detail(exc: BaseException) -> str:
    """The first line of the server's message and its code (ClickHouse adds a stack trace)."""
    if not isinstance(exc, ch_errors.Error):
        return repr(exc)
    message = str(getattr(exc, "message", None) or exc).strip()
    first = message.splitlines()[0].removesuffix(" Stack trace:") if message else ""
    code = getattr(exc, "code", None)
    return f"{first} (code {code})" if code else first or type(exc).__name__


def _translated(action: str) -> contextlib.AbstractContextManager[None]:
    """Driver and network errors become :class:`StoreError` subclasses (the boundary)."""
    return map_exceptions(ERRORS, f"clickhouse store: {action}", _detail)


def _split_url(url: str) -> tuple[str, dict[str, Any], str, int]:
    """(host, client kwargs without database, database, pool size) from a store URL."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    try:
        pool_size = int(options.pop("pool_size", POOL_SIZE))
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        driver_url = urlunsplit(parts._replace(query=urlencode(options)))
        host, kwargs = parse_url(driver_url)
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"store URL {url!r}: {exc}") from exc
    if not host:
        raise ConfigError(f"store URL {url!r} names no host (clickhouse://host:9000/database)")
    database = kwargs.pop("database", None) or "default"
    if not _NAME.match(database):
        raise ConfigError(f"store URL {url!r}: database name {database!r} is not a plain name")
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    kwargs.setdefault("send_receive_timeout", SEND_RECEIVE_TIMEOUT_S)
    kwargs.setdefault("sync_request_timeout", CONNECT_TIMEOUT_S)
    kwargs.setdefault("client_name", "livedata")
    return host, kwargs, database, pool_size


def _day(ts: int) -> int:
    """The partition of ``ts``: ClickHouse's ``intDiv`` truncates toward zero."""
    return int(ts / DAY_MS) if ts < 0 else ts // DAY_MS


def _partition_max_ts(day: int) -> int:
    """The largest timestamp that partition ``day`` can hold (see :func:`_day`)."""
    return day * DAY_MS if day < 0 else (day + 1) * DAY_MS - 1


def _partition_min_ts(day: int) -> int:
    """The smallest timestamp that partition ``day`` can hold (see :func:`_day`)."""
    return day * DAY_MS if day > 0 else (day - 1) * DAY_MS + 1


NAMES_CACHED = 100_000
"""Names kept encoded (:func:`_utf8`, :func:`_utf8_stream`, :func:`_sorted_fields`) before
the caches start anew."""
_UTF8: dict[str, bytes] = {}
_UTF8_STREAMS: dict[tuple[str, str, str], tuple[bytes, bytes, bytes]] = {}
_FIELDS: dict[tuple[str, ...], tuple[bytes, int, Callable[[dict[str, Value]], Any] | None]] = {}
_KIND_OF: dict[type, int] = {float: KIND_FLOAT, int: KIND_INT, str: KIND_STR}


def _utf8(name: str) -> bytes:
    """``name`` as UTF-8, encoded once: the same tenants and machines come in every batch."""
    encoded = _UTF8.get(name)
    if encoded is None:
        if len(_UTF8) >= NAMES_CACHED:
            _UTF8.clear()
        encoded = _UTF8[name] = name.encode()
    return encoded


def _varint(n: int) -> bytes:
    """``n`` (>= 0) as the native protocol's LEB128 varint."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(data: bytes) -> bytes:
    """One value of a ``String`` column in the native format: its length, then its bytes."""
    return _varint(len(data)) + data


def _utf8_stream(stream: tuple[str, str, str]) -> tuple[bytes, bytes, bytes]:
    """``(tenant, chassis, msg_type)`` as values of ``String`` columns (:func:`_string`),
    encoded once."""
    encoded = _UTF8_STREAMS.get(stream)
    if encoded is None:
        if len(_UTF8_STREAMS) >= NAMES_CACHED:
            _UTF8_STREAMS.clear()
        tenant, chassis, msg_type = (_string(name.encode()) for name in stream)
        encoded = _UTF8_STREAMS[stream] = (tenant, chassis, msg_type)
    return encoded


def _sorted_fields(
    values: dict[str, Value],
) -> tuple[bytes, int, Callable[[dict[str, Value]], Any] | None]:
    """The field names of ``values`` sorted, as the data of an ``Array(String)`` row (the
    names as :func:`_string` writes them, one after the other), their number, and a getter
    of the values in that order (``None`` when the dict is in that order already); made
    once per set of names (a message type's records have the same fields).

    Sorted, so that a record's row key is its set of names, whatever order a decoder
    (or the migration of an older database) gives them in."""
    names = tuple(values)
    known = _FIELDS.get(names)
    if known is None:
        if len(_FIELDS) >= NAMES_CACHED:
            _FIELDS.clear()
        order = sorted(names)
        getter = None if list(names) == order or len(order) < 2 else itemgetter(*order)
        encoded = b"".join(_string(name.encode()) for name in order)
        known = _FIELDS[names] = (encoded, len(order), getter)
    return known


def _little_endian(column: array[Any]) -> bytes:
    """A numeric column's bytes as the native format has them (little-endian)."""
    if sys.byteorder != "little":
        column.byteswap()
    return column.tobytes()


RECORDS_TYPES = (
    ("tenant", "String"),
    ("chassis", "String"),
    ("msg_type", "String"),
    ("ts", "Int64"),
    ("field", "Array(String)"),
    ("kind", "Array(UInt8)"),
    ("num", "Array(Float64)"),
    ("int", "Array(Int64)"),
    ("str", "Array(String)"),
    ("ver", "UInt64"),
)
"""The columns (name, type) of a records insert, in ``_COLUMNS`` order, as the server
describes them (its sample block)."""
_COLUMNS = ", ".join(name for name, _ in RECORDS_TYPES)


class _Block(list[tuple[str, str, list[bytes | list[bytes]]]]):
    """A block of an insert already in the native format: per column its name, type and
    data, in pieces (bytes written as they are, lists of bytes written as ``String``
    values by the driver's C writer).  :meth:`_Client.send_data` sends it as it is,
    instead of serialising Python values column by column (clickhouse-driver's way: a
    Python call per row of each array column, a ``struct.pack`` per chunk of numbers)."""

    __slots__ = ("rows",)

    def __init__(
        self, rows: int, columns: list[tuple[str, str, list[bytes | list[bytes]]]]
    ) -> None:
        super().__init__(columns)
        self.rows = rows

    def write(self, out: Any, revision: int) -> None:
        """The block as clickhouse-driver's ``BlockOutputStream.write`` writes it for a server
        of ``revision`` (block info, sizes, then per column its name, type and data)."""
        if revision >= defines.DBMS_MIN_REVISION_WITH_BLOCK_INFO:
            BlockInfo().write(out)
        write_varint(len(self), out)
        write_varint(self.rows, out)
        flag = revision >= defines.DBMS_MIN_REVISION_WITH_CUSTOM_SERIALIZATION
        for name, spec, pieces in self:
            write_binary_str(name, out)
            write_binary_str(spec, out)
            if flag:
                out.write(b"\0")  # no custom serialization, as the driver writes it
            for piece in pieces:
                if type(piece) is bytes:
                    out.write(piece)
                else:
                    out.write_strings(piece)

    def send(self, connection: Connection, columns: list[tuple[str, str]]) -> None:
        """Send the block as a Data packet (``Connection.send_data``'s framing and stream:
        compressed when the connection is); ``columns`` are the server's (sample block)."""
        if columns != [(name, spec) for name, spec, _ in self]:
            raise StoreError(
                f"clickhouse store: the table has the columns {columns},"
                f" this version writes {[(name, spec) for name, spec, _ in self]}"
            )
        revision = connection.server_info.used_revision
        write_varint(ClientPacketTypes.DATA, connection.fout)
        if revision >= defines.DBMS_MIN_REVISION_WITH_TEMPORARY_TABLES:
            write_binary_str("", connection.fout)
        stream = connection.block_out
        self.write(stream.fout, revision)
        stream.finalize()


class _Rows:
    """Records of one set of field names (:class:`_Columns`)."""

    __slots__ = ("chassis", "count", "msg_type", "names", "tenant", "ts", "values")

    def __init__(self, names: bytes, count: int) -> None:
        self.names = names
        self.count = count
        self.tenant: list[bytes] = []
        self.chassis: list[bytes] = []
        self.msg_type: list[bytes] = []
        self.ts: list[int] = []
        self.values: list[Value] = []


class _Columns:
    """One insert statement's records, encoded into a :class:`_Block`.

    Records are grouped by their field names (usually one group per message type), so
    that in a group each field's values are every ``count``-th value: :meth:`encoded`
    writes a group's columns with a few calls per field over all its values (extended
    slices, :mod:`array`), the kinds of a field's values told by one ``set(map(type,
    ...))`` each, and the array columns share one offsets column.  A record costs a few
    Python steps of its own, a value none except for strings (encoded) and the values of
    a field that come in several kinds in one insert (a step each).  The rows of the
    insert come group by group (their order means nothing to the table).
    """

    __slots__ = ("groups",)

    def __init__(self) -> None:
        self.groups: dict[bytes, _Rows] = {}

    def add(self, stream: tuple[str, str, str], ts: int, values: dict[str, Value]) -> None:
        """A record's values (as :func:`~livedata.store.base.normalised` leaves them: float,
        int or str; the timestamp within Int64)."""
        tenant, chassis, msg_type = _utf8_stream(stream)
        names, count, getter = _sorted_fields(values)
        group = self.groups.get(names)
        if group is None:
            group = self.groups[names] = _Rows(names, count)
        group.tenant.append(tenant)
        group.chassis.append(chassis)
        group.msg_type.append(msg_type)
        group.ts.append(ts)
        group.values += values.values() if getter is None else getter(values)

    def encoded(self, ver: int) -> _Block:
        """The records as a block of :data:`RECORDS_TYPES`, every row with version ``ver``."""
        groups = list(self.groups.values())
        rows = sum(len(group.ts) for group in groups)
        counts = chain.from_iterable(repeat(group.count, len(group.ts)) for group in groups)
        offsets = _little_endian(array("Q", accumulate(counts)))
        data: list[list[bytes | list[bytes]]] = [[] for _ in RECORDS_TYPES]
        tenant, chassis, msg_type, ts, field, kind, num, integer, text, _ = data
        for group in groups:
            count, many, values = group.count, len(group.ts), group.values
            size = len(values)
            tenant.append(b"".join(group.tenant))
            chassis.append(b"".join(group.chassis))
            msg_type.append(b"".join(group.msg_type))
            ts.append(_little_endian(array("q", group.ts)))
            field.append(group.names * many)
            kinds = bytearray(size)
            numbers = values  # copied before its strings become 0.0
            texts: list[bytes] = []
            ints = array("q", bytes(8 * size))
            for at in range(count):
                own = values[at::count]
                found = set(map(type, own))
                only = found.pop() if len(found) == 1 else None
                if only is float:
                    kinds[at::count] = bytes((KIND_FLOAT,)) * many
                    continue
                if only is int:
                    kinds[at::count] = bytes((KIND_INT,)) * many
                    ints[at::count] = array("q", cast(list[int], own))
                    continue
                if not texts:
                    numbers, texts = list(values), [b""] * size
                if only is str:
                    kinds[at::count] = bytes((KIND_STR,)) * many
                    numbers[at::count] = [0.0] * many
                    texts[at::count] = list(map(str.encode, cast(list[str], own)))
                else:  # several kinds (KeyError for a value that is not normalised)
                    kinds[at::count] = bytes(map(_KIND_OF.__getitem__, map(type, own)))
                    numbers[at::count] = [0.0 if type(v) is str else v for v in own]
                    ints[at::count] = array("q", [v if type(v) is int else 0 for v in own])
                    texts[at::count] = [v.encode() if type(v) is str else b"" for v in own]
            kind.append(bytes(kinds))
            num.append(_little_endian(array("d", numbers)))
            text.append(texts or bytes(size))  # an empty string is its length 0
            integer.append(_little_endian(ints))
        for column in (field, kind, num, integer, text):
            column.insert(0, offsets)
        data[-1].append(_little_endian(array("Q", [ver]) * rows))
        return _Block(rows, [(*column, d) for column, d in zip(RECORDS_TYPES, data, strict=True)])


PING_IDLE_S = 30.0
"""A connection idle for longer pings the server before its next query (see
:class:`_Connection`)."""


def _quiet(sock: Any) -> bool:
    """Whether ``sock`` has nothing to read (nor hang-up or error to report) right now."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


class _Connection(Connection):
    """clickhouse-driver's connection without its ping before every query.

    The driver pings the server (a round trip, and ~8 % of ingest's CPU) before each
    ``execute`` to find a connection the server has closed.  Here a connection in use
    checks its socket instead (``poll``, no round trip): between queries the server sends
    nothing, so anything to read -- the end of the stream after a restart, a reset, stray
    bytes -- or more than :data:`PING_IDLE_S` since the last query makes it ping and, when
    that fails, reconnect as the driver does.  A peer gone silently (no FIN, a network cut)
    is not seen before the query: the query then fails on its timeouts
    (:class:`~livedata.errors.StoreTimeout` or :class:`~livedata.errors.StoreUnavailable`),
    the client disconnects, and the next call connects anew.
    """

    checked = 0.0

    def force_connect(self) -> None:
        now = time.monotonic()
        if self.connected and now - self.checked < PING_IDLE_S and _quiet(self.socket):
            self.check_query_execution()
        else:
            super().force_connect()
        self.checked = now


class _Client(Client):
    """clickhouse-driver's client with :class:`_Connection` connections, and inserts of
    :class:`_Block` data sent as they are."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for connection in (*self.connections, self.connection):
            connection.__class__ = _Connection  # made by Client.__init__ (round robin too)

    def send_data(
        self,
        sample_block: Any,
        data: Any,
        types_check: bool = False,
        columnar: bool = False,
    ) -> int:
        if not isinstance(data, _Block):
            rows: int = super().send_data(sample_block, data, types_check, columnar)
            return rows
        # As Client.send_data: the block, then an empty one (the end of the data), each
        # followed by the profile events that newer servers send.
        data.send(self.connection, list(sample_block.columns_with_types))
        self.receive_profile_events()
        self.connection.send_data(ColumnOrientedBlock())
        self.receive_profile_events()
        return data.rows


class ClickHouseStore(Store):
    """The store on a ClickHouse server; see the module docstring for schema and stress."""

    batch_max = 10_000
    batch_ms = 1000.0  # ClickHouse wants few large inserts: each one makes a part to merge

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._host, self._kwargs, self.database, self.pool_size = _split_url(url)
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._clients: list[Client] = []
        self._clients_lock = threading.Lock()
        self._start_lock: asyncio.Lock | None = None
        self._started = False
        self._closed = False
        self._last_ver = 0
        self._waiting: dict[StreamId, tuple[int, float]] = {}
        """Per stream, a claim seen pending and when it was first seen (``time.monotonic()``;
        see :meth:`_unclaimed`), or this process's own last claim (at ``-inf``)."""
        self.claim_patience_s = CLAIM_PATIENCE_S
        """How long another process's pending claim is left to it (:data:`CLAIM_PATIENCE_S`)."""
        self._seen: dict[StreamId, int] = {}
        """Per stream written by this process, its newest point written (see :meth:`_saw`)."""
        self._cohorts: dict[tuple[int, int], set[StreamId]] = {}
        """The streams of :attr:`_seen` by settle cohort (:meth:`_companions`)."""
        self._opened: dict[StreamId, int | None] = {}
        """Per stream written by this process, its first open minute as last known
        (``None``: none settled); see :meth:`_settle`."""
        self._open_until: dict[StreamId, tuple[int, int]] = {}
        """Per stream, an open minute of :attr:`_opened` and the newest timestamp that
        leaves it open (:func:`~livedata.store.base.open_until`)."""
        self.rollups = True
        """Keep rollups and read them in ``downsample``.  ``False`` (benchmarks only), set
        before ``start`` on a new database, makes no rollup tables and downsamples raw
        points."""

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self._closed = False
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.pool_size, thread_name_prefix="livedata-clickhouse"
                )
            await self._run_now(self._create_schema)
            self._started = True

    async def close(self) -> None:
        """Finish queued calls, then disconnect every client."""
        self._closed = True
        self._started = False
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True)
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                client.disconnect()

    def _client(self) -> Client:
        """This thread's client, made on first use."""
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = _Client(self._host, database=self.database, **self._kwargs)
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _create_schema(self) -> None:
        statements = _schema(self.database)
        with _translated(f"creating the schema in database {self.database!r}"):
            try:
                self._client().execute(statements[0])
            except ch_errors.ServerException as exc:
                if exc.code != ch_errors.ErrorCodes.UNKNOWN_DATABASE:
                    raise
                # Connected to a database that does not exist yet: create it from `default`.
                bootstrap = Client(self._host, database="default", **self._kwargs)
                try:
                    bootstrap.execute(statements[0])
                finally:
                    bootstrap.disconnect()
                self._client().disconnect()  # reconnect into the new database
            for statement in statements[1:]:
                self._client().execute(statement)
            older = self._client().execute(f"EXISTS TABLE {self.database}.points")[0][0]
            if older:  # its views write into streams and rollups from `points`
                for view in ("streams_mv", "rollups_mv"):
                    self._client().execute(f"DROP TABLE IF EXISTS {self.database}.{view}")
            if self.rollups:
                self._create_rollups()
            # max() over an empty table is 0 in ClickHouse, which would hide negative
            # timestamps: the lowest cutoff is always there (merges fold the copies).
            for table in ("retention", "frames_retention"):
                self._client().execute(
                    f"INSERT INTO {self.database}.{table} (cutoff) VALUES", [(INT64_MIN,)]
                )
            if older:
                self._migrate_points()

    def _migrate_points(self) -> None:
        """Move the rows of an older database's ``points`` (one per point) into ``records``.

        A day partition at a time, the machines of each day in chunks of at most
        :data:`MIGRATE_POINTS` points: per (stream, ts) one row of the points' newest
        values (``argMax(.., ver)``), fields sorted by name as :meth:`write` sorts them,
        the newest ``ver``; then the day's partition of ``points`` is dropped, and
        ``points`` once empty.  Interrupted, the next start goes on with the days left
        and copies the interrupted day again: the same keys with the same ``ver``, which
        queries and merges keep once.  Points older than the retention cutoff (invisible
        anyway) are not copied.  The view fills ``streams`` again from the copies; the
        rollups the per-point version's view made stay.
        """
        db = self.database
        client = self._client()
        cutoff = int(client.execute(f"SELECT max(cutoff) FROM {db}.retention")[0][0])
        partitions = client.execute(
            "SELECT DISTINCT partition FROM system.parts"
            " WHERE database = %(db)s AND table = 'points' AND active",
            {"db": db},
        )
        for day in sorted(int(partition) for (partition,) in partitions):
            in_day = f"intDiv(ts, {DAY_MS}) = {day}"
            machines = client.execute(
                f"SELECT tenant, chassis, count() FROM {db}.points WHERE {in_day}"
                " GROUP BY tenant, chassis ORDER BY tenant, chassis"
            )
            chunk: list[tuple[str, str]] = []
            size = 0
            for n, (tenant, chassis, count) in enumerate(machines):
                chunk.append((tenant, chassis))
                size += count
                if size >= MIGRATE_POINTS or n == len(machines) - 1:
                    client.execute(
                        f"INSERT INTO {db}.records ({_COLUMNS})"
                        + _MIGRATE_SELECT.format(
                            db=db,
                            where=f"{in_day} AND ts >= {cutoff}"
                            " AND (tenant, chassis) IN %(machines)s",
                        ),
                        {"machines": tuple(chunk)},
                    )
                    chunk, size = [], 0
            client.execute(f"ALTER TABLE {db}.points DROP PARTITION {day}")
        client.execute(f"DROP TABLE IF EXISTS {db}.points")

    def _create_rollups(self) -> None:
        """The rollups tables; an older database's rollups view is dropped first.

        A new ``rollups`` table is built from every stored record.  A new ``rollup_open``
        starts each stored stream at the open minute of its newest point
        (:func:`~livedata.store.base.first_open_minute`): the minutes before it have their
        rollups, from the view that filled them on every insert until now or from the
        build.  Points inserted meanwhile by another process get into the rollups twice,
        which min and max do not mind.
        """
        db = self.database
        client = self._client()
        client.execute(f"DROP TABLE IF EXISTS {db}.records_rollups_mv")
        existed, opened = (
            client.execute(f"EXISTS TABLE {db}.{table}")[0][0]
            for table in ("rollups", "rollup_open")
        )
        for statement in _rollup_schema(db):
            client.execute(statement)
        if not existed:
            client.execute(
                f"INSERT INTO {db}.rollups {_rollup_select(f'{db}.records {_ARRAY_JOIN}')}"
            )
        if not opened:
            streams = client.execute(
                f"SELECT tenant, chassis, msg_type, max(last_ts) FROM {db}.streams"
                " GROUP BY tenant, chassis, msg_type"
            )
            moved = [
                (stream, first_open_minute(last, stream_key(stream), SETTLE_SPAN))
                for stream, last in ((tuple(row[:3]), row[3]) for row in streams)
            ]
            if moved:
                self._mark(client, moved, done=1)

    async def _run_now(self, fn: Callable[[], T]) -> T:
        executor = self._executor
        if executor is None:
            raise StoreError("clickhouse store is closed")
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a pool thread, starting the store first if needed."""
        if not self._started:
            if self._closed:
                raise StoreError("clickhouse store is closed")
            await self.start()
        return await self._run_now(fn)

    def _next_ver(self) -> int:
        ver = max(time.time_ns(), self._last_ver + 1)
        self._last_ver = ver
        return ver

    # -- writes ----------------------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> int:
        if not records:
            return 0
        ver = self._next_ver()  # taken in call order, so a later write wins
        return await self._run(partial(self._write_batch, list(records), ver))

    async def write_normalised(self, records: Sequence[Record]) -> int:
        """:meth:`write` without the check of every value (:func:`normalised`: 0.5-0.7 µs
        per record of 6-20 values, on the writer thread, which holds the GIL meanwhile)."""
        if not records:
            return 0
        ver = self._next_ver()
        return await self._run(partial(self._write_batch, list(records), ver, checked=True))

    def _write_batch(
        self,
        records: list[Record],
        ver: int,
        base: dict[tuple[str, str, str, int], dict[str, Value]] | None = None,
        checked: bool = False,
    ) -> int:
        """One row per record key, the values of ``records`` over those of ``base`` (kept
        values that :meth:`_replace` writes again, not counted); the number of values of
        ``records``.  ``checked``: the values are normalised already (:meth:`write_normalised`)."""
        # One entry per (tenant, chassis, msg_type, ts): a later record's field wins.
        merged: dict[tuple[str, str, str, int], dict[str, Value]] = dict(base or {})
        written = 0
        for record in records:
            # the record's own dict: not to be changed
            values = record.values if checked else normalised(record.values)
            if not values:
                continue
            written += len(values)
            key = (record.tenant, record.chassis, record.msg_type, record.ts)
            known = merged.get(key)
            merged[key] = values if known is None else {**known, **values}
        by_chunk: dict[int, _Columns] = {}
        chunk_of_day: dict[int, int] = {}
        touched: dict[StreamId, set[int]] = {}  # per stream, the minutes written
        newest: dict[StreamId, int] = {}
        day_first, day_last, columns = 0, -1, _Columns()  # the previous record's day
        for (tenant, chassis, msg_type, ts), values in merged.items():
            if not isinstance(ts, int) or not INT64_MIN <= ts <= INT64_MAX:
                raise StoreError(f"clickhouse store: write failed: timestamp {ts!r} out of range")
            stream = (tenant, chassis, msg_type)
            minutes = touched.get(stream)
            if minutes is None:
                touched[stream] = {ts // MINUTE_MS}
                newest[stream] = ts
            else:
                minutes.add(ts // MINUTE_MS)
                if ts > newest[stream]:
                    newest[stream] = ts
            if not day_first <= ts <= day_last:
                day = _day(ts)
                day_first, day_last = _partition_min_ts(day), _partition_max_ts(day)
                chunk = chunk_of_day.get(day)
                if chunk is None:
                    chunk = chunk_of_day[day] = len(chunk_of_day) // MAX_DAYS_PER_INSERT
                columns = by_chunk.get(chunk) or by_chunk.setdefault(chunk, _Columns())
            columns.add(stream, ts, values)
        with _translated("write"):
            client = self._client()
            for columns in by_chunk.values():
                client.execute(
                    f"INSERT INTO {self.database}.records ({_COLUMNS}) VALUES",
                    columns.encoded(ver),
                )
            if self.rollups and newest:
                self._settle(client, touched, newest)
        return written

    def _settle(
        self, client: Client, touched: dict[StreamId, set[int]], newest: dict[StreamId, int]
    ) -> None:
        """After a write's insert: roll up the minutes it settles and move its streams' open
        minutes, and roll up again the settled minutes it wrote into (late data).

        ``rollup_open`` is shared by every process writing the database; per stream it
        holds the *claimed* open minute (``done = 0``: written before the roll-up) and the
        *settled* one (``done = 1``: after; readers trust rollups below it).  Each process
        caches the settled minutes of the streams it writes (:attr:`_opened`); one query
        per write reads both for the streams whose claim is past the oldest minute the
        write touched -- usually none, the whole table when a stream is not cached yet
        -- and those of the write's streams whose claim is past a minute the write
        touched have late points there.  A write that moves streams first asks whether
        another process has claimed them already (:meth:`_unclaimed`).  A write of another
        process that inserts a point into a minute being settled either reads the claim
        (and rolls the minute up again itself) or inserted before the claim, so before
        the roll-up.  Rolling up a minute twice, here or in two processes, only adds
        equal states (min and max).  A failure anywhere raises and leaves the cache as it
        was: the retry (or the stream's next write, from the settled minute, in any
        process) rolls it up again.
        """
        db = self.database
        opened = self._opened
        unknown = [stream for stream in newest if stream not in opened]
        lowest = INT64_MIN if unknown else min(min(minutes) for minutes in touched.values())
        # The rows past ``lowest`` only, grouped: the table's other rows (two per stream)
        # are scanned but not grouped.  A stream's settled minute at or below ``lowest`` is
        # then not read; its cache stays older and :meth:`_unclaimed` finds it if it moves.
        rows = client.execute(
            "SELECT tenant, chassis, msg_type, maxIf(open_minute, done = 1),"
            f" countIf(done = 1), max(open_minute) AS claimed FROM {db}.rollup_open"
            " WHERE open_minute > %(lowest)s GROUP BY tenant, chassis, msg_type",
            {"lowest": lowest},
        )
        now = {stream: opened.get(stream) for stream in newest}
        late: set[tuple[StreamId, int]] = set()
        for tenant, chassis, msg_type, settled, known, claimed in rows:
            stream = (tenant, chassis, msg_type)
            if stream not in now:
                if not unknown or stream in opened:
                    continue  # not written now, or cached already
                now[stream] = None  # cached below: all of the table was read
            cached = now[stream]
            if known and (cached is None or settled > cached):
                now[stream] = settled
            if stream in touched:
                late.update((stream, minute) for minute in touched[stream] if minute < claimed)
        self._saw(newest)
        # A stream whose newest point is still within its open minutes moves nothing: one
        # comparison against the bound cached with its open minute, not settle_streams's
        # arithmetic per stream (most writes of a live fleet move no stream at all).
        bounds = self._open_until
        due = [
            stream
            for stream, last in newest.items()
            if (bound := bounds.get(stream)) is None
            or bound[0] != now[stream]
            or last > bound[1]
            or min(touched[stream]) < bound[0]
        ]
        moved, pairs = settle_streams(due, touched, newest, now, SETTLE_SPAN)
        if moved:
            self._companions(moved, pairs, newest)
            moved, pairs = self._unclaimed(client, moved, pairs, now)
        if late:
            pairs = sorted(late.union(pairs))
        if moved:
            waiting = self._waiting
            if len(waiting) + len(moved) > NAMES_CACHED:
                waiting.clear()
            for stream, minute in moved:  # this claim, seen pending later, has failed here
                waiting[stream] = (minute, -math.inf)
            self._mark(client, moved, done=0)
        if pairs:
            self._roll_up(client, pairs)
        if moved:
            self._mark(client, moved, done=1)
            now.update(moved)
        if len(opened) + len(unknown) > NAMES_CACHED:
            opened.clear()
            bounds.clear()
            self._seen.clear()
            self._cohorts.clear()
        opened.update(now)
        for stream in due:  # a new bound where the open minute moved
            first_open = now[stream]
            bound = bounds.get(stream)
            if first_open is not None and (bound is None or bound[0] != first_open):
                bounds[stream] = (
                    first_open,
                    open_until(first_open, stream_key(stream), SETTLE_SPAN),
                )

    def _saw(self, newest: dict[StreamId, int]) -> None:
        """Note the newest point of each stream of a write, and the cohort of a stream new
        to this process."""
        seen, cohorts = self._seen, self._cohorts
        for stream in newest.keys() - seen.keys():
            cohort = settle_cohort(stream_key(stream), SETTLE_SPAN)
            members = cohorts.get(cohort)
            if members is None:
                members = cohorts[cohort] = set()
            members.add(stream)
        seen.update(newest)

    def _companions(
        self,
        moved: list[tuple[StreamId, int]],
        pairs: list[tuple[StreamId, int]],
        newest: dict[StreamId, int],
    ) -> None:
        """Add to ``moved`` and ``pairs`` the live streams of the moving streams' cohorts
        that this write does not hold: their last point seen here is at most
        :data:`~livedata.store.base.GROUP_LAG_STEP_MS` older than the moving stream's.

        The writers of a share group each hold about half of a cohort's streams in the
        write that crosses its settle moment; settling only those, each writer rolled up
        its half in a statement of its own (``bench/bench_clickhouse_growth.py``: two
        roll-ups, four times the claim checks and twice the ``rollup_open`` inserts per
        cohort; the rows read back stayed about the same, the halves' granules differ).
        A companion's settled minutes end :data:`~livedata.store.base.GROUP_DELAY_MS` and
        more before its last point; a point of it arriving later in one of them finds the
        claim and rolls that minute up again (late data)."""
        opened, seen, cohorts = self._opened, self._seen, self._cohorts
        done: set[tuple[int, int]] = set()
        for stream, new in list(moved):
            cohort = settle_cohort(stream_key(stream), SETTLE_SPAN)
            if cohort in done:
                continue
            done.add(cohort)
            live = newest[stream] - GROUP_LAG_STEP_MS
            for other in tuple(cohorts.get(cohort, ())):  # a copy: writes run on several threads
                old = opened.get(other)
                if (
                    other in newest
                    or old is None
                    or old >= new
                    or seen.get(other, INT64_MIN) < live
                ):
                    continue
                moved.append((other, new))
                pairs.extend(
                    (other, minute) for minute in sorted(settle_minutes((), old, new, SETTLE_SPAN))
                )

    def _unclaimed(
        self,
        client: Client,
        moved: list[tuple[StreamId, int]],
        pairs: list[tuple[StreamId, int]],
        now: dict[StreamId, int | None],
    ) -> tuple[list[tuple[StreamId, int]], list[tuple[StreamId, int]]]:
        """``moved`` and ``pairs`` without the streams another process has claimed up to
        their new open minute already: the writers of a share group see every stream, and
        each one's newest point passes the stream's settle time within a second or two of
        the other's, so without this both rolled up every group of minutes (twice the
        read-back, two roll-ups per cohort and writer instead of one).

        One query per write that moves streams, by the key of ``rollup_open``.  A stream
        settled (``done = 1``) up to its new open minute takes that minute into ``now`` (the
        cache) and rolls up nothing but its ``late`` minutes (added by the caller); one
        only claimed is left to its claimer for :attr:`claim_patience_s` after this process
        first saw that claim (the cache keeps the old minute, so the stream's next write
        asks again) and rolled up here after that (the claimer died between claim and
        settled, or is stuck: its group would never be rolled up otherwise); a claim of this
        process's own seen pending (its roll-up failed) is rolled up again at once.  Until this
        version the second sighting was enough, and a roll-up longer than the time between
        two writes (a loaded server) was done twice.  Points of this write in the minutes
        the claimer rolls up were inserted before its claim (its roll-up reads them) or
        after it, and then the caller's first query saw the claim (``late``)."""
        db = self.database
        rows = client.execute(
            "SELECT tenant, chassis, msg_type, maxIf(open_minute, done = 1), countIf(done = 1),"
            f" max(open_minute) FROM {db}.rollup_open"
            f" WHERE (tenant, chassis, msg_type) IN (SELECT tenant, chassis, msg_type FROM {_PAIRS})"
            " GROUP BY tenant, chassis, msg_type",
            external_tables=[
                _external(_PAIRS, _PAIR_STRUCTURE, [(*stream, new) for stream, new in moved])
            ],
        )
        target = dict(moved)
        waiting = self._waiting
        others: set[StreamId] = set()
        clock = time.monotonic()
        for tenant, chassis, msg_type, settled, known, claimed in rows:
            stream = (tenant, chassis, msg_type)
            new = target[stream]
            if known and settled >= new:
                now[stream] = settled
                waiting.pop(stream, None)
                others.add(stream)
            elif claimed >= new:
                seen = waiting.get(stream)
                if seen is None or seen[0] != claimed:
                    if len(waiting) >= NAMES_CACHED:
                        waiting.clear()
                    waiting[stream] = seen = (claimed, clock)
                if clock - seen[1] < self.claim_patience_s:
                    others.add(stream)  # the claimer's, for now
        if not others:
            return moved, pairs
        return (
            [(stream, new) for stream, new in moved if stream not in others],
            [pair for pair in pairs if pair[0] not in others],
        )

    def _mark(self, client: Client, moved: list[tuple[StreamId, int]], done: int) -> None:
        """Record the streams' new open minutes in ``rollup_open`` (claimed, or settled)."""
        client.execute(
            f"INSERT INTO {self.database}.rollup_open"
            " (tenant, chassis, msg_type, done, open_minute) VALUES",
            [(*stream, done, minute) for stream, minute in moved],
        )

    def _roll_up(self, client: Client, pairs: list[tuple[StreamId, int]]) -> None:
        """Insert the rollup states of the ``(stream, minute)`` pairs from their records."""
        for first in range(0, len(pairs), ROLL_UP_PAIRS):
            chunk = pairs[first : first + ROLL_UP_PAIRS]
            lowest = min(minute for _, minute in chunk) * MINUTE_MS
            highest = (max(minute for _, minute in chunk) + 1) * MINUTE_MS - 1
            records = (
                f"(SELECT tenant, chassis, msg_type, ts, field, kind, num, int"
                f" FROM {self.database}.records WHERE ts >= {lowest} AND ts <= {highest}"
                f" AND (tenant, chassis, msg_type) IN (SELECT tenant, chassis, msg_type FROM {_PAIRS})"
                f" AND (tenant, chassis, msg_type, {_MINUTE}) IN (SELECT * FROM {_PAIRS}))"
                " ARRAY JOIN field, kind, num, int"
            )  # as _points(), without the strings, which rollups skip
            client.execute(
                f"INSERT INTO {self.database}.rollups {_rollup_select(records)}",
                external_tables=[
                    _external(_PAIRS, _PAIR_STRUCTURE, [(*stream, m) for stream, m in chunk])
                ],
            )

    async def delete_before(self, ts_ms: int) -> int:
        return await self._run(partial(self._delete_before, ts_ms))

    def _delete_before(self, cutoff: int) -> int:
        db = self.database
        with _translated("delete_before"):
            client = self._client()
            previous = int(client.execute(f"SELECT max(cutoff) FROM {db}.retention")[0][0])
            deleted = 0
            if cutoff > previous:
                rows = client.execute(
                    f"SELECT sum(length(field)) FROM {db}.records FINAL"
                    " WHERE ts >= %(previous)s AND ts < %(cutoff)s",
                    {"previous": previous, "cutoff": cutoff},
                )
                deleted = int(rows[0][0])
                client.execute(f"INSERT INTO {db}.retention (cutoff) VALUES", [(cutoff,)])
            effective = max(cutoff, previous)
            partitions = client.execute(
                "SELECT DISTINCT table, partition FROM system.parts"
                " WHERE database = %(db)s AND table IN ('records', 'rollups') AND active",
                {"db": db},
            )
            for table, partition in partitions:
                day = int(partition)
                if _partition_max_ts(day) < effective:
                    client.execute(f"ALTER TABLE {db}.{table} DROP PARTITION {day}")
        return deleted

    # -- reads -----------------------------------------------------------------------

    async def query(
        self,
        tenant: str,
        chassis: str,
        msg_type: str,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        limit: int = 100_000,
    ) -> Series:
        result: Series = {name: [] for name in fields}
        if limit <= 0 or start_ms > end_ms or not result:
            return result
        params = {
            "tenant": tenant,
            "chassis": chassis,
            "msg_type": msg_type,
            "fields": tuple(result),
            "start": start_ms,
            "end": end_ms,
            "limit": int(limit),
        }
        rows = await self._run(partial(self._select, params))
        current_name: str | None = None
        points: list[tuple[int, Value]] = []
        for name, ts, kind, num, integer, text in rows:
            if name != current_name:
                points = result[name]
                current_name = name
            points.append((ts, _value(kind, num, integer, text)))
        for points in result.values():
            points.reverse()
        return result

    def _select(self, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        db = self.database
        records = _points(
            db,
            "tenant = %(tenant)s AND chassis = %(chassis)s AND msg_type = %(msg_type)s"
            " AND ts >= %(start)s AND ts <= %(end)s"
            f" AND ts >= (SELECT max(cutoff) FROM {db}.retention)",
        )
        sql = f"""
            SELECT field, ts, argMax(kind, ver), argMax(num, ver), argMax(int, ver),
                argMax(str, ver)
            FROM {records}
            WHERE field IN %(fields)s
            GROUP BY field, ts
            ORDER BY field, ts DESC
            LIMIT %(limit)s BY field"""
        with _translated("query"):
            rows: list[tuple[Any, ...]] = self._client().execute(sql, params)
        return rows

    async def downsample(
        self,
        tenant: str,
        chassis: str,
        msg_type: str,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        buckets: int,
    ) -> Series:
        """argMin/argMax per (field, grid bucket), without deduplication.

        One query merges the argMin/argMax states of the rollups that fit the grid with
        states made from the raw points of the range's ends and of the stream's open
        minutes (from ``rollup_open``, read in a query before).  A redelivered point has
        the same value, so min and max need no ``argMax(.., ver)`` pass; only a corrected
        value counts with its old value too (until merged in the raw points, for good in
        the rollups).  Nothing older than the retention cutoff is read.
        """
        grid = bucket_grid(start_ms, end_ms, buckets)
        result: Series = {name: [] for name in fields}
        if start_ms > end_ms or not result:
            return result
        params = {
            "tenant": tenant,
            "chassis": chassis,
            "msg_type": msg_type,
            "fields": tuple(result),
        }
        rows = await self._run(partial(self._select_extremes, params, start_ms, end_ms, grid))
        for name, _k, low, high in rows:
            result[name].extend(extremes(*_point(low), *_point(high)))
        return result

    def _select_extremes(
        self, params: dict[str, Any], start_ms: int, end_ms: int, grid: Grid
    ) -> list[tuple[Any, ...]]:
        db = self.database
        same_machine = "tenant = %(tenant)s AND chassis = %(chassis)s AND msg_type = %(msg_type)s"
        with _translated("downsample"):
            client = self._client()
            if self.rollups:
                cutoff, open_minute, known = client.execute(
                    f"SELECT (SELECT max(cutoff) FROM {db}.retention),"
                    " maxIf(open_minute, done = 1), countIf(done = 1)"
                    f" FROM {db}.rollup_open WHERE {same_machine}",
                    params,
                )[0]
            else:
                cutoff = client.execute(f"SELECT max(cutoff) FROM {db}.retention")[0][0]
                known = 0
            start_ms = max(start_ms, int(cutoff))
            if start_ms > end_ms:
                return []
            plan = Plan(raw=[(start_ms, end_ms)])
            if known and grid.step > 1:
                plan = _settled_plan(start_ms, end_ms, grid, int(open_minute))
            origin, width = int(grid.origin), int(grid.width)
            sources = []
            if plan.rollups:
                ranges = " OR ".join(
                    f"(step = {int(step)} AND bucket BETWEEN {int(first)} AND {int(last)})"
                    for step, first, last in plan.rollups
                )
                sources.append(
                    f"SELECT field, toInt64(intDiv(bucket * step - {origin}, {width})) AS k,"
                    f" lo, hi FROM {db}.rollups WHERE {same_machine} AND field IN %(fields)s"
                    f" AND ({ranges})"
                )
            if plan.raw:
                ranges = " OR ".join(
                    f"(ts >= {int(first)} AND ts <= {int(last)})" for first, last in plan.raw
                )
                points = _points(db, f"{same_machine} AND ({ranges})")
                sources.append(
                    f"SELECT field, toInt64(intDiv(ts - {origin}, {width})) AS k, {_STATES}"
                    f" FROM {points} WHERE field IN %(fields)s AND kind != {KIND_STR}"
                    " GROUP BY field, k"
                )
            sql = (
                "SELECT field, k, argMinMerge(lo), argMaxMerge(hi)"
                f" FROM ({' UNION ALL '.join(sources)}) GROUP BY field, k ORDER BY field, k"
            )
            rows: list[tuple[Any, ...]] = client.execute(sql, params)
        return rows

    async def latest_ts(self, tenant: str, chassis: str, msg_type: str) -> int | None:
        return await self._run(partial(self._latest, tenant, chassis, msg_type))

    def _latest(self, tenant: str, chassis: str, msg_type: str) -> int | None:
        db = self.database
        sql = f"""
            SELECT max(last_ts), count() FROM {db}.streams
            WHERE tenant = %(tenant)s AND chassis = %(chassis)s AND msg_type = %(msg_type)s
                AND last_ts >= (SELECT max(cutoff) FROM {db}.retention)"""
        with _translated("latest_ts"):
            rows = self._client().execute(
                sql, {"tenant": tenant, "chassis": chassis, "msg_type": msg_type}
            )
        newest, count = rows[0]
        return int(newest) if count else None

    async def _latest_rows(self, tenant: str, chassis: Sequence[str]) -> list[tuple[str, str, int]]:
        return await self._run(partial(self._latest_of_many, tenant, tuple(chassis)))

    def _latest_of_many(self, tenant: str, chassis: tuple[str, ...]) -> list[tuple[str, str, int]]:
        db = self.database
        sql = f"""
            SELECT chassis, msg_type, max(last_ts) FROM {db}.streams
            WHERE tenant = %(tenant)s AND chassis IN %(chassis)s
                AND last_ts >= (SELECT max(cutoff) FROM {db}.retention)
            GROUP BY chassis, msg_type"""
        with _translated("latest_many"):
            rows: list[tuple[str, str, int]] = self._client().execute(
                sql, {"tenant": tenant, "chassis": chassis}
            )
        return rows

    async def _latest_value_rows(
        self, tenant: str, msg_type: str, windows: Sequence[LatestWindow]
    ) -> list[tuple[str, str, Value]]:
        return await self._run(partial(self._latest_values, tenant, msg_type, windows))

    def _latest_values(
        self, tenant: str, msg_type: str, windows: Sequence[LatestWindow]
    ) -> list[tuple[str, str, Value]]:
        """One SELECT: ``argMax(point, (ts, ver))`` per (machine, field), over the records of
        each machine's window (the newest ts, and of its points the last written, as
        ``query`` deduplicates), of the union of the windows' fields.

        The key ranges are the windows grouped by :data:`LATEST_GROUP_SPAN_MS`; each
        machine's own window is then a ``transform`` of its chassis to its bounds (sent as
        strings: 18.16 finds no type for a literal array of negative and large numbers).
        """
        db = self.database
        params: dict[str, Any] = {
            "tenant": tenant,
            "msg_type": msg_type,
            "chassis": [window.chassis for window in windows],
            "starts": [str(window.start_ms) for window in windows],
            "ends": [str(window.end_ms) for window in windows],
            "fields": tuple({name for window in windows for name in window.fields}),
        }
        ranges = []
        for i, (machines, lowest, highest) in enumerate(_window_groups(windows)):
            params[f"group{i}"] = tuple(machines)
            ranges.append(f"(chassis IN %(group{i})s AND ts >= {lowest} AND ts <= {highest})")
        bound = "transform(chassis, %(chassis)s, CAST(%({})s AS Array(Int64)), toInt64(0))"
        points = _points(
            db,
            f"tenant = %(tenant)s AND msg_type = %(msg_type)s AND ({' OR '.join(ranges)})"
            f" AND ts >= {bound.format('starts')} AND ts <= {bound.format('ends')}"
            f" AND ts >= (SELECT max(cutoff) FROM {db}.retention)",
        )
        sql = f"""
            SELECT chassis, field, argMax(tuple(kind, num, int, str), tuple(ts, ver))
            FROM {points}
            WHERE field IN %(fields)s
            GROUP BY chassis, field"""
        with _translated("latest_values_many"):
            rows = self._client().execute(sql, params)
        return [(chassis, name, _value(*point)) for chassis, name, point in rows]

    async def machine_points(self, tenant: str, chassis: str) -> int:
        return await self._run(partial(self._count_machine, tenant, chassis))

    def _count_machine(self, tenant: str, chassis: str) -> int:
        db = self.database
        sql = f"""
            SELECT sum(length(field)) FROM {db}.records FINAL
            WHERE tenant = %(tenant)s AND chassis = %(chassis)s
                AND ts >= (SELECT max(cutoff) FROM {db}.retention)"""
        with _translated("machine_points"):
            rows = self._client().execute(sql, {"tenant": tenant, "chassis": chassis})
        return int(rows[0][0])

    async def delete_machine(self, tenant: str, chassis: str) -> int:
        """``ALTER TABLE … DELETE`` on records, rollups, streams and frames, then waits for the
        mutations (18.16 runs them in the background and rewrites every part of each
        table: seconds to minutes on a large table; :class:`StoreError` after
        :data:`MUTATION_WAIT_S`, the deletion then still completes in the background)."""
        return await self._run(partial(self._delete_machine, tenant, chassis))

    def _delete_machine(self, tenant: str, chassis: str) -> int:
        db = self.database
        deleted = self._count_machine(tenant, chassis)
        params = {"tenant": tenant, "chassis": chassis}
        with _translated("delete_machine"):
            client = self._client()
            for table in ("records", "rollups", "rollup_open", "streams", "frames"):
                client.execute(
                    f"ALTER TABLE {db}.{table} DELETE"
                    " WHERE tenant = %(tenant)s AND chassis = %(chassis)s",
                    params,
                )
            self._wait_mutations(client, f"deleting machine {chassis!r}")
        for stream in [s for s in self._opened if s[:2] == (tenant, chassis)]:
            del self._opened[stream]
        return deleted

    def _wait_mutations(self, client: Client, what: str) -> None:
        """Wait for the database's mutations; :class:`StoreError` after :data:`MUTATION_WAIT_S`."""
        deadline = time.monotonic() + MUTATION_WAIT_S
        while client.execute(
            "SELECT count() FROM system.mutations WHERE database = %(db)s AND is_done = 0",
            {"db": self.database},
        )[0][0]:
            if time.monotonic() > deadline:
                raise StoreError(
                    f"clickhouse store: {what} still runs after {MUTATION_WAIT_S:g} s;"
                    " it completes in the background"
                )
            time.sleep(0.1)

    # -- raw frames ------------------------------------------------------------------

    async def write_frames(self, blobs: Sequence[FrameBlob]) -> int:
        """One columnar insert (per 100 days); a rewritten blob wins by its higher ``ver``."""
        if not blobs:
            return 0
        ver = self._next_ver()
        blobs = list(blobs)

        def insert() -> int:
            with _translated("write_frames"):
                client = self._client()
                days = sorted({_day(b.ts) for b in blobs})
                for i in range(0, len(days), MAX_DAYS_PER_INSERT):
                    chunk = set(days[i : i + MAX_DAYS_PER_INSERT])
                    rows = blobs if len(days) == 1 else [b for b in blobs if _day(b.ts) in chunk]
                    client.execute(
                        f"INSERT INTO {self.database}.frames"
                        " (tenant, chassis, ts, count, data, ver) VALUES",
                        [
                            [_utf8(b.tenant) for b in rows],
                            [_utf8(b.chassis) for b in rows],
                            [b.ts for b in rows],
                            [b.count for b in rows],
                            [b.data for b in rows],
                            [ver] * len(rows),
                        ],
                        columnar=True,
                        settings=_AS_BYTES,
                    )
            return len(blobs)

        return await self._run(insert)

    _FRAMES_WHERE = """tenant = %(tenant)s AND chassis = %(chassis)s
        AND ts >= %(start)s AND ts <= %(end)s
        AND ts >= (SELECT max(cutoff) FROM {db}.frames_retention)"""

    async def read_frames(
        self, tenant: str, chassis: str, start_ms: int, end_ms: int, limit: int = 1_000
    ) -> list[FrameBlob]:
        params = {"tenant": tenant, "chassis": chassis, "start": start_ms, "end": end_ms}
        sql = f"""SELECT ts, argMax(count, ver), argMax(data, ver) FROM {self.database}.frames
            WHERE {self._FRAMES_WHERE.format(db=self.database)}
            GROUP BY ts ORDER BY ts LIMIT {max(int(limit), 0)}"""

        def select() -> list[tuple[Any, ...]]:
            with _translated("read_frames"):
                rows: list[tuple[Any, ...]] = self._client().execute(
                    sql, params, settings={"strings_as_bytes": True}
                )
            return rows

        rows = await self._run(select) if limit > 0 else []
        return [FrameBlob(tenant, chassis, ts, n, bytes(data)) for ts, n, data in rows]

    async def count_frames(self, tenant: str, chassis: str, start_ms: int, end_ms: int) -> int:
        params = {"tenant": tenant, "chassis": chassis, "start": start_ms, "end": end_ms}
        sql = f"""SELECT uniqExact(ts) FROM {self.database}.frames
            WHERE {self._FRAMES_WHERE.format(db=self.database)}"""

        def count() -> int:
            with _translated("count_frames"):
                return int(self._client().execute(sql, params)[0][0])

        return await self._run(count)

    async def delete_frames_before(self, ts_ms: int) -> int:
        """Like :meth:`delete_before`: a cutoff of their own, whole days dropped."""

        def delete() -> int:
            db = self.database
            with _translated("delete_frames_before"):
                client = self._client()
                previous = int(
                    client.execute(f"SELECT max(cutoff) FROM {db}.frames_retention")[0][0]
                )
                deleted = 0
                if ts_ms > previous:
                    deleted = int(
                        client.execute(
                            f"SELECT uniqExact(tenant, chassis, ts) FROM {db}.frames"
                            " WHERE ts >= %(previous)s AND ts < %(cutoff)s",
                            {"previous": previous, "cutoff": ts_ms},
                        )[0][0]
                    )
                    client.execute(f"INSERT INTO {db}.frames_retention (cutoff) VALUES", [(ts_ms,)])
                effective = max(ts_ms, previous)
                partitions = client.execute(
                    "SELECT DISTINCT partition FROM system.parts"
                    " WHERE database = %(db)s AND table = 'frames' AND active",
                    {"db": db},
                )
                for (partition,) in partitions:
                    day = int(partition)
                    if _partition_max_ts(day) < effective:
                        client.execute(f"ALTER TABLE {db}.frames DROP PARTITION {day}")
            return deleted

        return await self._run(delete)

    async def replace_values(
        self,
        tenant: str,
        chassis: str,
        msg_type: str,
        start_ms: int,
        end_ms: int,
        records: Sequence[Record],
        keep: Sequence[str] = (),
    ) -> int:
        """Mutations, then the insert, then the rollups of the range's minutes (see module)."""
        check_replacement(tenant, chassis, msg_type, start_ms, end_ms, records)
        ver = self._next_ver()
        return await self._run(
            partial(
                self._replace, (tenant, chassis, msg_type), start_ms, end_ms, list(records),
                tuple(keep), ver,
            )
        )  # fmt: skip

    def _replace(
        self,
        stream: tuple[str, str, str],
        start_ms: int,
        end_ms: int,
        records: list[Record],
        keep: tuple[str, ...],
        ver: int,
    ) -> int:
        db = self.database
        tenant, chassis, msg_type = stream
        params: dict[str, Any] = {
            "tenant": tenant,
            "chassis": chassis,
            "msg_type": msg_type,
            "start": start_ms,
            "end": end_ms,
            "first": start_ms // MINUTE_MS * MINUTE_MS,
            "last": (end_ms // MINUTE_MS + 1) * MINUTE_MS - 1,
        }
        same = "tenant = %(tenant)s AND chassis = %(chassis)s AND msg_type = %(msg_type)s"
        in_range = f"{same} AND ts >= %(start)s AND ts <= %(end)s"
        kept: dict[tuple[str, str, str, int], dict[str, Value]] = {}
        with _translated("replace_values"):
            client = self._client()
            present = client.execute(
                f"SELECT DISTINCT field FROM {_points(db, same)}"
                " WHERE ts >= %(first)s AND ts <= %(last)s",
                params,
            )
            params["fields"] = tuple(f for (f,) in present if not kept_field(f, keep))
            if keep and present:
                rows = client.execute(
                    f"""SELECT ts, field, argMax(kind, ver), argMax(num, ver), argMax(int, ver),
                        argMax(str, ver) FROM {_points(db, in_range)}
                    WHERE {" OR ".join(f"startsWith(field, %(keep{n})s)" for n in range(len(keep)))}
                    GROUP BY ts, field""",
                    params | {f"keep{n}": prefix for n, prefix in enumerate(keep)},
                )
                for ts, name, kind, num, integer, text in rows:
                    value = _value(kind, num, integer, text)
                    kept.setdefault((tenant, chassis, msg_type, ts), {})[name] = value
            if present:
                # Whole records go; the kept values come back in the rows written below.
                client.execute(f"ALTER TABLE {db}.records DELETE WHERE {in_range}", params)
            if self.rollups and params["fields"]:
                client.execute(
                    f"ALTER TABLE {db}.rollups DELETE WHERE {same} AND field IN %(fields)s"
                    f" AND step = {MINUTE_MS} AND bucket >= {params['first'] // MINUTE_MS}"
                    f" AND bucket <= {params['last'] // MINUTE_MS}",
                    params,
                )
            self._wait_mutations(client, f"replacing values of {chassis!r}")
        written = self._write_batch(records, ver, kept)
        if self.rollups and params["fields"]:
            with _translated("replace_values"):
                minutes = _points(db, f"{same} AND ts >= %(first)s AND ts <= %(last)s")
                select = _rollup_select(minutes, "field IN %(fields)s AND")
                self._client().execute(f"INSERT INTO {db}.rollups {select}", params)
        return written


def _settled_plan(start_ms: int, end_ms: int, grid: Grid, open_minute: int) -> Plan:
    """Rollups for the settled minutes of the range (before ``open_minute``), raw points for
    the rest: only settled minutes have (complete) rollups."""
    open_from = open_minute * MINUTE_MS
    if start_ms >= open_from:
        return Plan(raw=[(start_ms, end_ms)])
    plan = rollup_plan(start_ms, min(end_ms, open_from - 1), grid, steps=ROLLUP_STEPS)
    if end_ms >= open_from:
        plan.raw.append((open_from, end_ms))
    return plan


def _window_groups(windows: Iterable[LatestWindow]) -> list[tuple[list[str], int, int]]:
    """``(machines, lowest ts, highest ts)``: the windows in groups spanning at most
    :data:`LATEST_GROUP_SPAN_MS` (a longer window alone), oldest first."""
    groups: list[tuple[list[str], int, int]] = []
    for window in sorted(windows, key=lambda w: w.start_ms):
        if groups and window.end_ms - groups[-1][1] <= LATEST_GROUP_SPAN_MS:
            machines, lowest, highest = groups[-1]
            machines.append(window.chassis)
            groups[-1] = (machines, lowest, max(highest, window.end_ms))
        else:
            groups.append(([window.chassis], window.start_ms, window.end_ms))
    return groups


def _value(kind: int, num: float, integer: int, text: str) -> Value:
    """A stored point's value by its ``kind``."""
    if kind == KIND_FLOAT:
        return num
    if kind == KIND_INT:
        return integer
    return text


def _point(state: tuple[int, int, float, int]) -> tuple[int, Value]:
    """``(ts, value)`` of a merged argMin/argMax state ``(ts, kind, num, int)``."""
    ts, kind, num, integer = state
    return ts, integer if kind == KIND_INT else num
