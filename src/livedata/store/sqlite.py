"""Telemetry store on SQLite: the embedded shape's database, stdlib only.

URLs follow SQLAlchemy: ``sqlite:///relative/telemetry.db`` (relative to the
working directory), ``sqlite:////absolute/telemetry.db``, and ``sqlite:///:memory:``
(or ``sqlite://``) for a private in-memory database.  Parent directories of the
file are created.

Schema (``PRAGMA user_version`` 3; files of versions 1 and 2 are upgraded on start)::

    streams(stream_id INTEGER PRIMARY KEY, tenant, chassis, msg_type, last_ts,
            UNIQUE(tenant, chassis, msg_type))
    series(series_id INTEGER PRIMARY KEY, stream_id, field, UNIQUE(stream_id, field))
    records(bucket INTEGER, stream_id INTEGER, ts INTEGER,        -- bucket = ts // 60,000
            n INTEGER, v BLOB,                                    -- n values, packed
            PRIMARY KEY(bucket, stream_id, ts)) WITHOUT ROWID
    rollups(step INTEGER, series_id INTEGER, bucket INTEGER,      -- bucket = ts // step
            lo_ts INTEGER, lo, hi_ts INTEGER, hi,                 -- min and max point
            PRIMARY KEY(step, series_id, bucket)) WITHOUT ROWID   -- step 10 s and 1 min
    retention(id INTEGER PRIMARY KEY CHECK (id = 0), cutoff INTEGER)  -- newest cutoff
    frames(tenant, chassis, ts INTEGER, count INTEGER, data BLOB,    -- raw frames, one
           PRIMARY KEY(tenant, chassis, ts)) WITHOUT ROWID            -- blob per message
        + INDEX frames_ts(ts)                                         -- for their retention

**One row per record** (machine, message type, timestamp): ``v`` is the JSON array
``[series_id, value, series_id, value, ...]`` of its values (orjson: ints, floats in
their shortest exact form and strings come back as they went in; a non-finite float
is ``["inf"]``/``["-inf"]``, JSON having none), ``n`` how many.  Versions 1 and 2 kept
one row per point (``points(bucket, series_id, ts, value)``); opening such a file moves
its points into ``records`` a minute at a time, in one transaction (version 1 first
gets its rollups), and drops ``points``.  Measured (``bench/bench_ingest.py``, 200
machines of the simulator, 13 values a record, batches of a few hundred records):
the writer thread's work per record fell from about 37 to about 13 µs, the file is
smaller (the names and keys are not repeated per point), and reads parse the blobs in
Python (about 1 µs a record).

Names are interned in ``streams``/``series`` (26.6 instead of 73 MB per million points
in the narrow shape, and writes about 1.5x faster than repeating four strings in every
row).  Records are **clustered by minute, then stream, then time**: new data lands at
the right edge of the tree (keyed by (stream, ts) every batch touches one leaf page per
stream, and throughput falls with the table's size).  A 2-minute query of one machine
reads 2-3 minutes with one index seek each; a day-long one walks 1,440 minutes newest
first and stops once every field asked for has ``limit`` points.  Retention deletes
whole minutes from the left of the tree.

``last_ts`` per stream makes :meth:`SQLiteStore.latest_ts` one row read.

Rollups (for :meth:`SQLiteStore.downsample` over long ranges): per series and 10 s or
1 min bucket, the minimum and maximum point (no counts, nothing that a redelivered
point could count twice; of equal values the earliest).  They are computed from the
records of a whole minute, in Python, in the write's own transaction, once the minute
is *settled*: when the stream's newest point is 5-60 s
(:func:`~livedata.store.base.settle_lag`, spread per stream) into a later minute, and
again whenever a write touches a settled minute (late data, a redelivery, a corrected
value).  So a rollup is always exactly what its raw points give -- a rewritten record
recomputes the same rows -- and a record is read once more when its minute settles,
instead of rollups being updated on every write.  The open minutes (the newest one or
two of each stream) are read raw.  ``downsample`` reads the coarsest rollups that fit
its grid (:func:`~livedata.store.base.rollup_plan`, grouped in SQL) and raw records
only at the ends of the range and in open minutes (folded in Python): 7 days of 10
fields at 1 Hz is about 100,000 rollup rows instead of 6 M points.

Duplicates: writing an existing record key again merges its values into the row
(``ON CONFLICT DO UPDATE`` with a Python function): each value written replaces the one
of its field (**last write wins** per point), the others stay, and the key keeps one
row, like :class:`~livedata.store.memory.MemoryStore`.
Values are normalised as there (bool as int, NaN/None/objects skipped and not counted).

Threads: all writes run on **one dedicated writer thread** with its own connection
(WAL mode, ``synchronous=NORMAL``, 64 MB page cache); each ``write`` call is one
transaction of one ``executemany`` insert, and calls queue up in order.  Queries run
on a small pool of reader threads, each with its own connection, beside the writer
(WAL lets readers see the last committed state while a write is in progress).
Nothing blocks the event loop.  With ``:memory:`` a single connection on the
writer thread serves both, since an in-memory database is private to its connection.

Under stress:

* **Disk full, database locked** (another process holding the write lock for longer
  than the 5 s busy timeout), **unusable file** (a directory, no permission,
  corrupt, a newer schema version): :class:`~livedata.errors.StoreError` is raised
  -- never a ``sqlite3`` exception -- and the batch is rolled back as a whole, so it
  is either fully stored or not at all; retrying it cannot duplicate anything,
  since writes are idempotent.
* **Power loss**: with ``synchronous=NORMAL`` in WAL mode the last transactions
  before the loss may be missing, the file is never corrupt.
* A ``write`` whose caller is cancelled still completes (or rolls back) on the
  writer thread; the retry is harmless.
* ``delete_before`` (retention) deletes ten minutes of data per transaction, so
  writes queued meanwhile get their turn between them.  Freed pages are reused;
  the file does not shrink.  It first records the cutoff in ``retention``:
  ``downsample`` reads nothing older (not even a later write below the cutoff, which
  ``query`` shows until the next retention), so no rollup bucket reaching below the
  cutoff is used, partial or waiting to be deleted.
* Late data (backfill) goes into old minutes, in the middle of the tree: correct,
  a little slower per point than live data.
* Writes queue without bound on the writer thread; callers (ingest) await each
  write, so the queue is as long as the number of concurrent writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import orjson

from livedata.errors import ConfigError, ErrorMap, StoreError, map_exceptions
from livedata.model import Record, Value
from livedata.store.base import (
    INT64_MAX,
    INT64_MIN,
    MINUTE_MS,
    ROLLUP_LEVELS_MS,
    Grid,
    LatestWindow,
    Plan,
    Series,
    Store,
    bucket_grid,
    check_replacement,
    extremes,
    first_open_minute,
    kept_field,
    minutes_to_settle,
    rollup_plan,
    settle_lag,
    storable,
)
from livedata.store.frames import FrameBlob

T = TypeVar("T")

_StreamKey = tuple[str, str, str]
"""(tenant, chassis, msg_type): one machine's message type."""

SCHEMA_VERSION = 3
BUCKET_MS = MINUTE_MS
"""Records are clustered by minute (``bucket = ts // BUCKET_MS``); fixed by the schema version."""
BUSY_TIMEOUT_S = 5.0
READER_THREADS = 2
WRITER_CACHE_KIB = 65_536
WAL_AUTOCHECKPOINT_PAGES = 10_000
DELETE_BUCKETS_PER_TRANSACTION = 10
DELETE_ROLLUP_SERIES_PER_TRANSACTION = 1_000

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS streams (
        stream_id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        chassis TEXT NOT NULL,
        msg_type TEXT NOT NULL,
        last_ts INTEGER,
        UNIQUE (tenant, chassis, msg_type)
    )""",
    """CREATE TABLE IF NOT EXISTS series (
        series_id INTEGER PRIMARY KEY,
        stream_id INTEGER NOT NULL REFERENCES streams,
        field TEXT NOT NULL,
        UNIQUE (stream_id, field)
    )""",
    """CREATE TABLE IF NOT EXISTS records (
        bucket INTEGER NOT NULL,
        stream_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        n INTEGER NOT NULL,
        v BLOB NOT NULL,
        PRIMARY KEY (bucket, stream_id, ts)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rollups (
        step INTEGER NOT NULL,
        series_id INTEGER NOT NULL,
        bucket INTEGER NOT NULL,
        lo_ts INTEGER NOT NULL,
        lo NOT NULL,
        hi_ts INTEGER NOT NULL,
        hi NOT NULL,
        PRIMARY KEY (step, series_id, bucket)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS retention (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        cutoff INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS frames (
        tenant TEXT NOT NULL,
        chassis TEXT NOT NULL,
        ts INTEGER NOT NULL,
        count INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (tenant, chassis, ts)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS frames_ts ON frames (ts)",
)
FRAMES_DELETE_SLICE_MS = 600_000
"""Raw-frame retention deletes ten minutes of blobs per transaction."""

# A key written again merges its values into the row (last write wins per field);
# ld_merge/ld_count are this module's functions, registered on the writer connection.
_INSERT_RECORD = """
    INSERT INTO records (bucket, stream_id, ts, n, v) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (bucket, stream_id, ts) DO UPDATE
    SET v = ld_merge(v, excluded.v), n = ld_count(v, excluded.v)
"""
_INSERT_STREAM = "INSERT OR IGNORE INTO streams (tenant, chassis, msg_type) VALUES (?, ?, ?)"
_SELECT_STREAM = "SELECT stream_id FROM streams WHERE tenant = ? AND chassis = ? AND msg_type = ?"
_INSERT_SERIES = "INSERT OR IGNORE INTO series (stream_id, field) VALUES (?, ?)"
_SELECT_SERIES = "SELECT series_id FROM series WHERE stream_id = ? AND field = ?"
_UPDATE_LAST = (
    "UPDATE streams SET last_ts = ?1 WHERE stream_id = ?2 AND (last_ts IS NULL OR last_ts < ?1)"
)
# Walk the minutes of the range newest first (clamped to the minutes that hold data), one
# index seek per minute, so the primary key gives the order and the caller stops early.
_SELECT_RECORDS = """
    WITH RECURSIVE minutes(b) AS (
        SELECT MIN(:last_bucket, (SELECT MAX(bucket) FROM records))
        UNION ALL
        SELECT b - 1 FROM minutes WHERE b > MAX(:first_bucket, (SELECT MIN(bucket) FROM records))
    )
    SELECT ts, v FROM records
    WHERE bucket IN (SELECT b FROM minutes) AND stream_id = :stream_id
        AND ts BETWEEN :start_ms AND :end_ms
    ORDER BY bucket DESC, ts DESC
"""
# latest_values_many: the records of each (machine, minute) of the windows, one index seek
# each (CROSS JOIN keeps this order), and the asked series of the machines' streams.
_WINDOW_RECORDS = """
    SELECT r.v
    FROM (SELECT json_extract(value, '$[0]') AS chassis, json_extract(value, '$[1]') AS bucket,
              json_extract(value, '$[2]') AS lo, json_extract(value, '$[3]') AS hi
          FROM json_each(:minutes)) AS w
    CROSS JOIN streams s
    CROSS JOIN records r
    WHERE s.tenant = :tenant AND s.chassis = w.chassis AND s.msg_type = :msg_type
        AND r.bucket = w.bucket AND r.stream_id = s.stream_id AND r.ts BETWEEN w.lo AND w.hi
    ORDER BY r.ts
"""
_WINDOW_SERIES = """
    SELECT a.chassis, a.field, se.series_id
    FROM (SELECT json_extract(value, '$[0]') AS chassis, json_extract(value, '$[1]') AS field
          FROM json_each(:fields)) AS a
    CROSS JOIN streams s
    CROSS JOIN series se
    WHERE s.tenant = :tenant AND s.chassis = a.chassis AND s.msg_type = :msg_type
        AND se.stream_id = s.stream_id AND se.field = a.field
"""
_OF_MACHINE = (
    "series_id IN (SELECT series_id FROM series JOIN streams USING (stream_id)"
    " WHERE tenant = ? AND chassis = ?)"
)
_STREAMS_OF_MACHINE = (
    "stream_id IN (SELECT stream_id FROM streams WHERE tenant = ? AND chassis = ?)"
)
_LATEST = "SELECT last_ts FROM streams WHERE tenant = ? AND chassis = ? AND msg_type = ?"
_INSERT_ROLLUP = "INSERT OR REPLACE INTO rollups VALUES (?, ?, ?, ?, ?, ?, ?)"
_ROLLUP_DELETE = """
    DELETE FROM rollups WHERE step = :step
        AND series_id IN (SELECT series_id FROM series WHERE stream_id = :stream)
        AND bucket BETWEEN :first AND :first + :per - 1
"""

# -- the values of a record: one blob --------------------------------------------------
#
# ``[series_id, value, series_id, value, ...]`` as JSON (orjson): ints, floats and
# strings come back as they went in (floats in their shortest exact form).  JSON has no
# infinities: a non-finite float is written as ``["inf"]`` or ``["-inf"]`` (no value is a
# list otherwise).  NaN is never stored.


def _pack(flat: list[object]) -> bytes:
    """The blob of ``[series_id, value, ...]``."""
    blob = orjson.dumps(flat)
    if b"null" in blob:  # orjson writes a non-finite float as null (or a string says null)
        blob = orjson.dumps([[repr(x)] if type(x) is float and x - x != 0 else x for x in flat])
    return blob


def _unpack(blob: bytes) -> list[Any]:
    """``[series_id, value, ...]`` of a blob (non-finite floats still as their marker)."""
    flat: list[Any] = orjson.loads(blob)
    return flat


def _value(raw: object) -> Value:
    """A value of an unpacked blob (the marker of a non-finite float made a float)."""
    if type(raw) is list:
        return float(raw[0])
    return raw  # type: ignore[return-value]


def _merge(old: bytes, new: bytes) -> bytes:
    """``old`` with the values of ``new`` added or replacing its own (a key written again)."""
    a, b = _unpack(old), _unpack(new)
    values = dict(zip(a[::2], a[1::2], strict=True))
    values.update(zip(b[::2], b[1::2], strict=True))
    return orjson.dumps([x for pair in values.items() for x in pair])


def _merged_count(old: bytes, new: bytes) -> int:
    """How many values :func:`_merge` of the two blobs holds."""
    return len(set(_unpack(old)[::2]) | set(_unpack(new)[::2]))


# The rollups of every minute of a version-1 file at once, from its narrow points table.
_ROLLUP_ALL_EXTREME = """
    SELECT series_id, bucket * :per + (ts - bucket * :minute_ms) / :step AS b, ts, {fn}(value) AS v
    FROM points WHERE typeof(value) IN ('integer', 'real')
    GROUP BY series_id, b
"""
_ROLLUP_ALL = f"""
    INSERT OR REPLACE INTO rollups (step, series_id, bucket, lo_ts, lo, hi_ts, hi)
    SELECT :step, series_id, b, lo.ts, lo.v, hi.ts, hi.v
    FROM ({_ROLLUP_ALL_EXTREME.replace("{fn}", "MIN")}) lo
    JOIN ({_ROLLUP_ALL_EXTREME.replace("{fn}", "MAX")}) hi USING (series_id, b)
"""
_SET_CUTOFF = """
    INSERT INTO retention (id, cutoff) VALUES (0, ?1)
    ON CONFLICT (id) DO UPDATE SET cutoff = MAX(cutoff, excluded.cutoff)
"""


ERRORS: ErrorMap = {(sqlite3.Error, OSError, OverflowError): StoreError}
"""sqlite3's and the file system's errors → the project's (a local file: no network kinds)."""


def _translated(action: str) -> contextlib.AbstractContextManager[None]:
    """Turn driver and file-system errors into :class:`StoreError` (the store's boundary)."""
    return map_exceptions(ERRORS, f"sqlite store: {action}", str)


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction: committed at the end, rolled back when anything raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _records_from_points(conn: sqlite3.Connection) -> None:
    """Move the points of a version-1 or -2 file (one row per point) into ``records``
    (one row per record), a minute at a time, and drop the old table."""
    bucket: int | None = INT64_MIN
    while True:
        bucket = conn.execute(
            "SELECT MIN(bucket) FROM points WHERE bucket > ?", (bucket,)
        ).fetchone()[0]
        if bucket is None:
            break
        grouped: dict[tuple[int, int], list[object]] = {}
        for series_id, stream_id, ts, value in conn.execute(
            "SELECT series_id, stream_id, ts, value FROM points JOIN series USING (series_id)"
            " WHERE bucket = ? ORDER BY series_id, ts",
            (bucket,),
        ):
            flat = grouped.get((stream_id, ts))
            if flat is None:
                flat = grouped[stream_id, ts] = []
            flat.append(series_id)
            flat.append(value)
        conn.executemany(
            _INSERT_RECORD,
            [
                (bucket, stream_id, ts, len(flat) >> 1, _pack(flat))
                for (stream_id, ts), flat in grouped.items()
            ],
        )
    conn.execute("DROP TABLE points")


def database_path(url: str) -> str:
    """The file named by a ``sqlite://`` URL (SQLAlchemy's convention), or ``:memory:``."""
    parts = urlsplit(url)
    if parts.netloc:
        raise ConfigError(
            f"store URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return path or ":memory:"


class SQLiteStore(Store):
    """The store on one SQLite file; see the module docstring for threads and stress."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = database_path(url)
        self._in_memory = self.path == ":memory:"
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._read_conns: list[sqlite3.Connection] = []
        self._read_local = threading.local()
        self._conns_lock = threading.Lock()
        # Committed ids only (a rolled-back id may be handed out again); ids never change.
        # Written by the writer after commit and by readers that looked an id up.
        self._stream_ids: dict[_StreamKey, int] = {}
        self._series_ids: dict[int, dict[str, int]] = {}  # stream_id -> field -> series_id
        self._start_lock: asyncio.Lock | None = None
        self._closed = False
        self.rollups = True
        """Keep rollups and read them in ``downsample``.  ``False`` (benchmarks only)
        writes none and downsamples raw points; a file written so must not be read with
        ``True``."""

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._write_conn is not None:
                return
            self._closed = False
            writer = ThreadPoolExecutor(1, thread_name_prefix="livedata-sqlite-writer")
            try:
                conn = await asyncio.get_running_loop().run_in_executor(writer, self._open_writer)
            except BaseException:
                writer.shutdown(wait=False)
                raise
            self._writer = writer
            self._write_conn = conn
            if not self._in_memory:
                self._readers = ThreadPoolExecutor(
                    READER_THREADS, thread_name_prefix="livedata-sqlite-reader"
                )

    async def close(self) -> None:
        """Finish queued writes and queries, then close every connection."""
        self._closed = True
        readers, self._readers = self._readers, None
        if readers is not None:
            await asyncio.to_thread(readers.shutdown, True)
        with self._conns_lock:
            conns, self._read_conns = self._read_conns, []
        for conn in conns:
            conn.close()
        writer, self._writer = self._writer, None
        write_conn, self._write_conn = self._write_conn, None
        if writer is not None and write_conn is not None:
            # Queued after every pending write; closing the last connection checkpoints WAL.
            await asyncio.get_running_loop().run_in_executor(writer, write_conn.close)
        if writer is not None:
            writer.shutdown(wait=False)
        # A reopened :memory: database numbers its rows afresh.
        self._stream_ids.clear()
        self._series_ids.clear()

    def _connect(self, cache_kib: int) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,  # transactions are explicit
            check_same_thread=False,  # used on one thread at a time; closed from close()
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA cache_size=-{cache_kib}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        with _translated(f"opening {self.path}"):
            if not self._in_memory:
                parent = os.path.dirname(os.path.abspath(self.path))
                os.makedirs(parent, exist_ok=True)
            conn = self._connect(WRITER_CACHE_KIB)
            try:
                conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
                conn.execute("PRAGMA journal_size_limit=67108864")
                conn.create_function("ld_merge", 2, _merge, deterministic=True)
                conn.create_function("ld_count", 2, _merged_count, deterministic=True)
                conn.execute("BEGIN IMMEDIATE")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
                upgrade = version in (1, 2) and tables
                if version != SCHEMA_VERSION and (version != 0 or tables) and not upgrade:
                    raise StoreError(
                        f"sqlite store: {self.path} is not a livedata telemetry database of "
                        f"schema version {SCHEMA_VERSION} (it has version {version}, "
                        f"{tables} schema objects); use another file"
                    )
                for statement in _SCHEMA:
                    conn.execute(statement)
                if upgrade and version == 1:  # version 1 had no rollups: build them
                    for step in ROLLUP_LEVELS_MS:
                        params = {"step": step, "per": BUCKET_MS // step, "minute_ms": BUCKET_MS}
                        conn.execute(_ROLLUP_ALL, params)
                if upgrade:  # versions 1 and 2 kept one row per point
                    _records_from_points(conn)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.close()
                raise
            return conn

    def _read_conn(self) -> sqlite3.Connection:
        """This reader thread's connection, opened on first use."""
        conn: sqlite3.Connection | None = getattr(self._read_local, "conn", None)
        if conn is None:
            conn = self._connect(WRITER_CACHE_KIB // 4)
            self._read_local.conn = conn
            with self._conns_lock:
                self._read_conns.append(conn)
        return conn

    async def _on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread, after the writes queued before it."""
        if self._write_conn is None:
            if self._closed:
                raise StoreError("sqlite store is closed")
            await self.start()
        writer, conn = self._writer, self._write_conn
        assert writer is not None and conn is not None
        return await asyncio.get_running_loop().run_in_executor(writer, fn, conn)

    async def _on_reader(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on a reader thread (on the writer for ``:memory:``)."""
        if self._in_memory:
            return await self._on_writer(fn)
        if self._readers is None:
            if self._closed:
                raise StoreError("sqlite store is closed")
            await self.start()
        readers = self._readers
        assert readers is not None

        def run() -> T:
            with _translated("opening a read connection"):
                conn = self._read_conn()
            return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(readers, run)

    # -- writes --------------------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> int:
        if not records:
            return 0
        return await self._on_writer(partial(self._write_batch, records))

    def _write_batch(self, records: Sequence[Record], conn: sqlite3.Connection) -> int:
        """One transaction: intern new names, insert every point, or roll back all of it."""
        with _translated("write"), _immediate(conn):
            written, interned = self._insert(conn, records)
        self._remember(*interned)
        return written

    def _remember(
        self, new_streams: dict[_StreamKey, int], new_series: dict[tuple[int, str], int]
    ) -> None:
        """Cache the ids a committed transaction interned."""
        self._stream_ids.update(new_streams)
        for (stream_id, name), series_id in new_series.items():
            self._series_ids.setdefault(stream_id, {})[name] = series_id

    def _insert(
        self, conn: sqlite3.Connection, records: Sequence[Record]
    ) -> tuple[int, tuple[dict[_StreamKey, int], dict[tuple[int, str], int]]]:
        """Insert ``records`` (one row each) inside the caller's transaction: (points, the
        ids interned, to :meth:`_remember` after the commit)."""
        stream_ids, series_ids = self._stream_ids, self._series_ids
        new_streams: dict[_StreamKey, int] = {}
        new_series: dict[tuple[int, str], int] = {}
        no_fields: dict[str, int] = {}
        rows: list[tuple[int, int, int, int, bytes]] = []
        points = 0
        newest: dict[int, int] = {}  # stream_id -> newest ts in this batch
        touched: dict[int, set[int]] = {}  # stream_id -> minutes written in this batch
        pack = _pack
        for record in records:
            key = (record.tenant, record.chassis, record.msg_type)
            stream_id = stream_ids.get(key)
            if stream_id is None:
                stream_id = new_streams.get(key)
                if stream_id is None:
                    stream_id = new_streams[key] = self._intern_stream(conn, key)
            fields = series_ids.get(stream_id, no_fields)
            ts = record.ts
            flat: list[object] = []
            add = flat.append
            for name, value in record.values.items():
                if type(value) is float:  # storable(), inlined for the usual types
                    if value != value:
                        continue
                elif type(value) is not str and not (
                    type(value) is int and INT64_MIN <= value <= INT64_MAX
                ):
                    kept = storable(value)
                    if kept is None:
                        continue
                    value = kept
                series_id = fields.get(name)
                if series_id is None:
                    series_id = new_series.get((stream_id, name))
                    if series_id is None:
                        series_id = self._intern_series(conn, stream_id, name)
                        new_series[stream_id, name] = series_id
                add(series_id)
                add(value)
            if flat:
                count = len(flat) >> 1
                points += count
                bucket = ts // BUCKET_MS
                rows.append((bucket, stream_id, ts, count, pack(flat)))
                if ts > newest.get(stream_id, INT64_MIN):
                    newest[stream_id] = ts
                minutes = touched.get(stream_id)
                if minutes is None:
                    minutes = touched[stream_id] = set()
                minutes.add(bucket)
        conn.executemany(_INSERT_RECORD, rows)
        if self.rollups and newest:
            self._settle(conn, touched, newest)
        conn.executemany(_UPDATE_LAST, [(ts, sid) for sid, ts in newest.items()])
        return points, (new_streams, new_series)

    @staticmethod
    def _settle(
        conn: sqlite3.Connection, touched: dict[int, set[int]], newest: dict[int, int]
    ) -> None:
        """Compute the rollups of the minutes this write settles (before ``last_ts`` moves)."""
        ids = ",".join(str(int(stream_id)) for stream_id in newest)
        before = dict(
            conn.execute(f"SELECT stream_id, last_ts FROM streams WHERE stream_id IN ({ids})")
        )
        pairs: list[tuple[int, int]] = []
        for stream_id, ts in newest.items():
            old = before.get(stream_id)
            minutes = touched[stream_id]
            if old is not None:  # the usual live write settles nothing: say so cheaply
                lag = settle_lag(stream_id)
                open_from = (old - lag) // BUCKET_MS
                same_open = ts <= old or (ts - lag) // BUCKET_MS == open_from
                if same_open and min(minutes) >= open_from:
                    continue
            new = ts if old is None or ts > old else old
            for minute in minutes_to_settle(minutes, old, new, stream_id):
                pairs.append((stream_id, minute))
        if pairs:
            compute_rollups(conn, pairs)

    @staticmethod
    def _intern_stream(conn: sqlite3.Connection, key: _StreamKey) -> int:
        conn.execute(_INSERT_STREAM, key)
        return int(conn.execute(_SELECT_STREAM, key).fetchone()[0])

    @staticmethod
    def _intern_series(conn: sqlite3.Connection, stream_id: int, name: str) -> int:
        conn.execute(_INSERT_SERIES, (stream_id, name))
        return int(conn.execute(_SELECT_SERIES, (stream_id, name)).fetchone()[0])

    async def delete_before(self, ts_ms: int) -> int:
        """Delete whole minutes in small transactions (writes get turns between them).

        The cutoff is recorded first (``downsample`` reads nothing older from then on);
        rollups entirely older than it go last, for a thousand series per transaction.
        """
        await self._on_writer(partial(self._record_cutoff, ts_ms))
        cutoff_bucket = ts_ms // BUCKET_MS
        deleted = 0
        while True:
            count, more = await self._on_writer(
                partial(self._delete_oldest_minutes, ts_ms, cutoff_bucket)
            )
            deleted += count
            if not more:
                break
        after = 0
        while after >= 0:
            after = await self._on_writer(partial(self._delete_old_rollups, ts_ms, after))
        return deleted

    @staticmethod
    def _record_cutoff(ts_ms: int, conn: sqlite3.Connection) -> None:
        with _translated("delete_before"):
            conn.execute(_SET_CUTOFF, (ts_ms,))  # autocommit: one statement

    @staticmethod
    def _delete_old_rollups(ts_ms: int, after: int, conn: sqlite3.Connection) -> int:
        """Delete the rollups older than ``ts_ms`` of some series past ``after``; the last
        series id done, or -1 when none are left."""
        with _translated("delete_before"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                ids = [
                    row[0]
                    for row in conn.execute(
                        "SELECT series_id FROM series WHERE series_id > ? ORDER BY series_id"
                        " LIMIT ?",
                        (after, DELETE_ROLLUP_SERIES_PER_TRANSACTION),
                    )
                ]
                conn.executemany(
                    "DELETE FROM rollups WHERE step = ? AND series_id = ? AND bucket < ?",
                    [(step, sid, ts_ms // step) for step in ROLLUP_LEVELS_MS for sid in ids],
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return int(ids[-1]) if ids else -1

    @staticmethod
    def _delete_oldest_minutes(
        ts_ms: int, cutoff_bucket: int, conn: sqlite3.Connection
    ) -> tuple[int, bool]:
        """Delete up to a few old minutes; return (points deleted, whether more remain)."""
        with _translated("delete_before"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                oldest = conn.execute("SELECT MIN(bucket) FROM records").fetchone()[0]
                more = oldest is not None and oldest < cutoff_bucket
                if more:
                    upto = min(oldest + DELETE_BUCKETS_PER_TRANSACTION, cutoff_bucket)
                    where, params = "bucket < ?", [upto]
                else:  # last pass: the minute of the cutoff itself, then forget what went
                    where, params = "bucket = ? AND ts < ?", [cutoff_bucket, ts_ms]
                deleted = conn.execute(
                    f"SELECT COALESCE(SUM(n), 0) FROM records WHERE {where}", params
                ).fetchone()[0]
                conn.execute(f"DELETE FROM records WHERE {where}", params)
                if not more:
                    conn.execute("UPDATE streams SET last_ts = NULL WHERE last_ts < ?", (ts_ms,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return deleted, more

    # -- reads ---------------------------------------------------------------------

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
        fn = partial(
            self._query, (tenant, chassis, msg_type), list(fields), start_ms, end_ms, limit
        )
        return await self._on_reader(fn)

    def _query(
        self,
        key: _StreamKey,
        fields: list[str],
        start_ms: int,
        end_ms: int,
        limit: int,
        conn: sqlite3.Connection,
    ) -> Series:
        result: Series = {name: [] for name in fields}
        if limit <= 0 or start_ms > end_ms or not fields:
            return result
        params = {
            "first_bucket": start_ms // BUCKET_MS,
            "last_bucket": end_ms // BUCKET_MS,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "stream_id": 0,
        }
        with _translated("query"):
            conn.execute("BEGIN")  # one snapshot for every field
            try:
                stream_id = self._stream_ids.get(key)
                if stream_id is None:
                    row = conn.execute(_SELECT_STREAM, key).fetchone()
                    if row is None:
                        return result
                    stream_id = self._stream_ids.setdefault(key, row[0])
                known = self._series_ids.setdefault(stream_id, {})
                wanted: dict[int, list[tuple[int, Value]]] = {}
                for name, points in result.items():
                    series_id = known.get(name)
                    if series_id is None:
                        row = conn.execute(_SELECT_SERIES, (stream_id, name)).fetchone()
                        if row is None:
                            continue
                        series_id = known.setdefault(name, row[0])
                    wanted[series_id] = points
                if wanted:
                    params["stream_id"] = stream_id
                    self._newest_first(conn.execute(_SELECT_RECORDS, params), wanted, limit)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        for points in result.values():
            points.reverse()
        return result

    @staticmethod
    def _newest_first(
        rows: Iterable[tuple[int, bytes]], wanted: dict[int, list[tuple[int, Value]]], limit: int
    ) -> None:
        """Append each wanted series' points of ``rows`` (newest first) up to ``limit`` each."""
        full = 0
        for ts, blob in rows:
            flat = _unpack(blob)
            for i in range(0, len(flat), 2):
                points = wanted.get(flat[i])
                if points is not None and len(points) < limit:
                    points.append((ts, _value(flat[i + 1])))
                    if len(points) == limit:
                        full += 1
            if full == len(wanted):
                return

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
        grid = bucket_grid(start_ms, end_ms, buckets)
        fn = partial(
            self._downsample, (tenant, chassis, msg_type), list(fields), start_ms, end_ms, grid
        )
        return await self._on_reader(fn)

    def _downsample(
        self,
        key: _StreamKey,
        fields: list[str],
        start_ms: int,
        end_ms: int,
        grid: Grid,
        conn: sqlite3.Connection,
    ) -> Series:
        """One statement for all fields: min and max per (series, bucket), grouped in SQL
        over the rollups of the plan and the raw points of its ends and open minutes."""
        result: Series = {name: [] for name in fields}
        if start_ms > end_ms or not fields:
            return result
        with _translated("downsample"):
            conn.execute("BEGIN")  # one snapshot: points, rollups, last_ts and cutoff agree
            try:
                stream_id = self._stream_ids.get(key)
                if stream_id is None:
                    row = conn.execute(_SELECT_STREAM, key).fetchone()
                    if row is None:
                        return result
                    stream_id = self._stream_ids.setdefault(key, row[0])
                known = self._series_ids.setdefault(stream_id, {})
                names: dict[int, str] = {}
                for name in result:
                    series_id = known.get(name)
                    if series_id is None:
                        row = conn.execute(_SELECT_SERIES, (stream_id, name)).fetchone()
                        if row is None:
                            continue
                        series_id = known.setdefault(name, row[0])
                    names[series_id] = name
                if not names:
                    return result
                plan = self._plan(conn, stream_id, start_ms, end_ms, grid)
                if plan is None:
                    return result
                lows: dict[tuple[int, int], tuple[int, Value]] = {}
                highs: dict[tuple[int, int], tuple[int, Value]] = {}
                if plan.rollups:
                    for side, sid, k, ts, value in conn.execute(_downsample_sql(plan, grid, names)):
                        (highs if side else lows)[sid, k] = (ts, value)
                if plan.raw:
                    raw = conn.execute(_raw_sql(plan), (stream_id,))
                    _fold_raw(raw, names, grid, lows, highs)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        for sid, k in sorted(lows):
            low_ts, low = lows[sid, k]
            high_ts, high = highs[sid, k]
            result[names[sid]].extend(extremes(low_ts, low, high_ts, high))
        return result

    def _plan(
        self, conn: sqlite3.Connection, stream_id: int, start_ms: int, end_ms: int, grid: Grid
    ) -> Plan | None:
        """What to read: nothing before the recorded cutoff, open minutes raw; None if empty."""
        row = conn.execute("SELECT cutoff FROM retention").fetchone()
        open_minutes: list[int] = []
        if row is not None and row[0] > start_ms:
            start_ms = row[0]  # no rollup bucket older than the cutoff is used, partial or not
        if start_ms > end_ms:
            return None
        if not self.rollups or grid.step == 1:
            return Plan(raw=[(start_ms, end_ms)])
        last = conn.execute("SELECT last_ts FROM streams WHERE stream_id = ?", (stream_id,))
        last_ts = last.fetchone()[0]
        if last_ts is not None:
            open_minutes.extend(
                range(first_open_minute(last_ts, stream_id), last_ts // BUCKET_MS + 1)
            )
        return rollup_plan(start_ms, end_ms, grid, open_minutes)

    async def latest_ts(self, tenant: str, chassis: str, msg_type: str) -> int | None:
        return await self._on_reader(partial(self._latest, (tenant, chassis, msg_type)))

    @staticmethod
    def _latest(key: _StreamKey, conn: sqlite3.Connection) -> int | None:
        with _translated("latest_ts"):
            row = conn.execute(_LATEST, key).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def _latest_rows(self, tenant: str, chassis: Sequence[str]) -> list[tuple[str, str, int]]:
        return await self._on_reader(partial(self._latest_of_many, tenant, list(chassis)))

    @staticmethod
    def _latest_of_many(
        tenant: str, chassis: list[str], conn: sqlite3.Connection
    ) -> list[tuple[str, str, int]]:
        marks = ", ".join("?" * len(chassis))
        sql = (
            "SELECT chassis, msg_type, last_ts FROM streams"
            f" WHERE tenant = ? AND chassis IN ({marks}) AND last_ts IS NOT NULL"
        )
        with _translated("latest_many"):
            return conn.execute(sql, (tenant, *chassis)).fetchall()

    async def _latest_value_rows(
        self, tenant: str, msg_type: str, windows: Sequence[LatestWindow]
    ) -> list[tuple[str, str, Value]]:
        fn = partial(self._latest_values, tenant, msg_type, windows)
        return await self._on_reader(fn)

    @staticmethod
    def _latest_values(
        tenant: str, msg_type: str, windows: Sequence[LatestWindow], conn: sqlite3.Connection
    ) -> list[tuple[str, str, Value]]:
        """Two statements in one snapshot (the windows' minutes and fields as JSON): the
        asked series, then the windows' records, oldest first, so each series keeps the
        value of its newest record."""
        minutes = [
            (chassis, bucket, start_ms, end_ms)
            for chassis, start_ms, end_ms, _ in windows
            for bucket in range(start_ms // BUCKET_MS, end_ms // BUCKET_MS + 1)
        ]
        asked = [(window.chassis, name) for window in windows for name in window.fields]
        params = {"tenant": tenant, "msg_type": msg_type}
        latest: dict[int, tuple[str, str, Value]] = {}
        with _translated("latest_values_many"):
            conn.execute("BEGIN")
            try:
                series = {
                    series_id: (chassis, name)
                    for chassis, name, series_id in conn.execute(
                        _WINDOW_SERIES, {**params, "fields": orjson.dumps(asked)}
                    )
                }
                if series:
                    rows = conn.execute(
                        _WINDOW_RECORDS, {**params, "minutes": orjson.dumps(minutes)}
                    )
                    for (blob,) in rows:
                        flat = _unpack(blob)
                        for i in range(0, len(flat), 2):
                            found = series.get(flat[i])
                            if found is not None:
                                latest[flat[i]] = (*found, _value(flat[i + 1]))
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        return list(latest.values())

    async def machine_points(self, tenant: str, chassis: str) -> int:
        return await self._on_reader(partial(self._count_machine, tenant, chassis))

    @staticmethod
    def _count_machine(tenant: str, chassis: str, conn: sqlite3.Connection) -> int:
        with _translated("machine_points"):
            row = conn.execute(
                f"SELECT COALESCE(SUM(n), 0) FROM records WHERE {_STREAMS_OF_MACHINE}",
                (tenant, chassis),
            )
        return int(row.fetchone()[0])

    async def delete_machine(self, tenant: str, chassis: str) -> int:
        """One transaction on the writer: points, rollups, and ``last_ts`` (names stay interned).

        The points table is keyed by minute first, so this reads all of it: writes queued
        meanwhile wait for it (an admin action, not a live path)."""
        return await self._on_writer(partial(self._delete_machine, tenant, chassis))

    @staticmethod
    def _delete_machine(tenant: str, chassis: str, conn: sqlite3.Connection) -> int:
        with _translated("delete_machine"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                key = (tenant, chassis)
                deleted = conn.execute(
                    f"SELECT COALESCE(SUM(n), 0) FROM records WHERE {_STREAMS_OF_MACHINE}", key
                ).fetchone()[0]
                conn.execute(f"DELETE FROM records WHERE {_STREAMS_OF_MACHINE}", key)
                conn.execute(f"DELETE FROM rollups WHERE {_OF_MACHINE}", key)
                conn.execute("DELETE FROM frames WHERE tenant = ? AND chassis = ?", key)
                conn.execute(
                    "UPDATE streams SET last_ts = NULL WHERE tenant = ? AND chassis = ?", key
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return int(deleted)

    # -- raw frames ----------------------------------------------------------------

    async def write_frames(self, blobs: Sequence[FrameBlob]) -> int:
        """One transaction on the writer thread (``INSERT OR REPLACE``)."""
        if not blobs:
            return 0
        rows = [(b.tenant, b.chassis, b.ts, b.count, b.data) for b in blobs]

        def insert(conn: sqlite3.Connection) -> int:
            with _translated("write_frames"), _immediate(conn):
                conn.executemany("INSERT OR REPLACE INTO frames VALUES (?, ?, ?, ?, ?)", rows)
            return len(rows)

        return await self._on_writer(insert)

    async def read_frames(
        self, tenant: str, chassis: str, start_ms: int, end_ms: int, limit: int = 1_000
    ) -> list[FrameBlob]:
        def select(conn: sqlite3.Connection) -> list[FrameBlob]:
            with _translated("read_frames"):
                rows = conn.execute(
                    "SELECT ts, count, data FROM frames WHERE tenant = ? AND chassis = ?"
                    " AND ts BETWEEN ? AND ? ORDER BY ts LIMIT ?",
                    (tenant, chassis, start_ms, end_ms, max(limit, 0)),
                ).fetchall()
            return [FrameBlob(tenant, chassis, ts, n, bytes(data)) for ts, n, data in rows]

        return await self._on_reader(select)

    async def count_frames(self, tenant: str, chassis: str, start_ms: int, end_ms: int) -> int:
        def count(conn: sqlite3.Connection) -> int:
            with _translated("count_frames"):
                row = conn.execute(
                    "SELECT count(*) FROM frames WHERE tenant = ? AND chassis = ?"
                    " AND ts BETWEEN ? AND ?",
                    (tenant, chassis, start_ms, end_ms),
                ).fetchone()
            return int(row[0])

        return await self._on_reader(count)

    async def delete_frames_before(self, ts_ms: int) -> int:
        """Ten minutes of blobs per transaction (writes get turns between them)."""

        def delete_slice(conn: sqlite3.Connection) -> int:
            with _translated("delete_frames_before"):
                oldest = conn.execute("SELECT MIN(ts) FROM frames").fetchone()[0]
                if oldest is None or oldest >= ts_ms:
                    return -1
                upto = min(ts_ms, oldest + FRAMES_DELETE_SLICE_MS)
                return int(conn.execute("DELETE FROM frames WHERE ts < ?", (upto,)).rowcount)

        deleted = 0
        while (count := await self._on_writer(delete_slice)) >= 0:
            deleted += count
        return deleted

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
        """One transaction on the writer: readers see the range before or after, never
        half-replaced.  The rollups of every settled minute of the range are recomputed."""
        check_replacement(tenant, chassis, msg_type, start_ms, end_ms, records)
        key = (tenant, chassis, msg_type)
        return await self._on_writer(
            partial(self._replace, key, start_ms, end_ms, list(records), tuple(keep))
        )

    def _replace(
        self,
        key: _StreamKey,
        start_ms: int,
        end_ms: int,
        records: list[Record],
        keep: tuple[str, ...],
        conn: sqlite3.Connection,
    ) -> int:
        with _translated("replace_values"), _immediate(conn):
            row = conn.execute(_SELECT_STREAM, key).fetchone()
            if row is not None:
                _clear_range(conn, row[0], start_ms, end_ms, keep)
            written, interned = self._insert(conn, records)
            stream_id = row[0] if row is not None else interned[0].get(key)
            if self.rollups and stream_id is not None:
                last = conn.execute(
                    "SELECT last_ts FROM streams WHERE stream_id = ?", (stream_id,)
                ).fetchone()[0]
                if last is not None:
                    settled = first_open_minute(last, stream_id)
                    last_minute = min(end_ms // BUCKET_MS, settled - 1)
                    minutes = range(start_ms // BUCKET_MS, last_minute + 1)
                    compute_rollups(conn, [(stream_id, m) for m in minutes])
        self._remember(*interned)
        return written


def _clear_range(
    conn: sqlite3.Connection, stream_id: int, start_ms: int, end_ms: int, keep: Sequence[str]
) -> None:
    """Delete the points of a stream in ``[start_ms, end_ms]`` but those of ``keep``."""
    kept = {
        sid
        for sid, name in conn.execute(
            "SELECT series_id, field FROM series WHERE stream_id = ?", (stream_id,)
        )
        if kept_field(name, keep)
    }
    where = "bucket BETWEEN ?2 AND ?3 AND stream_id = ?1 AND ts BETWEEN ?4 AND ?5"
    params = (stream_id, start_ms // BUCKET_MS, end_ms // BUCKET_MS, start_ms, end_ms)
    if not kept:
        conn.execute(f"DELETE FROM records WHERE {where}", params)
        return
    gone: list[tuple[int, int, int]] = []
    changed: list[tuple[int, bytes, int, int, int]] = []
    for bucket, ts, blob in conn.execute(
        f"SELECT bucket, ts, v FROM records WHERE {where}", params
    ):
        flat = _unpack(blob)
        left = [x for i in range(0, len(flat), 2) if flat[i] in kept for x in flat[i : i + 2]]
        if not left:
            gone.append((bucket, stream_id, ts))
        elif len(left) < len(flat):
            changed.append((len(left) >> 1, orjson.dumps(left), bucket, stream_id, ts))
    key = "bucket = ? AND stream_id = ? AND ts = ?"
    conn.executemany(f"DELETE FROM records WHERE {key}", gone)
    conn.executemany(f"UPDATE records SET n = ?, v = ? WHERE {key}", changed)


def compute_rollups(conn: sqlite3.Connection, pairs: Sequence[tuple[int, int]]) -> None:
    """(Re)compute every rollup of the ``(stream_id, minute)`` pairs from the minute's
    records: per series and bucket of each step the minimum and the maximum numeric
    point, of equal values the earliest."""
    for step in ROLLUP_LEVELS_MS:
        per = BUCKET_MS // step
        conn.executemany(
            _ROLLUP_DELETE,
            [{"step": step, "stream": sid, "first": m * per, "per": per} for sid, m in pairs],
        )
    finest, coarser = ROLLUP_LEVELS_MS[0], ROLLUP_LEVELS_MS[1:]
    rows: list[tuple[int, ...] | tuple[object, ...]] = []
    for stream_id, minute in pairs:
        # per finest bucket (in time order) the numeric points of each series, in time order
        found: dict[int, dict[int, tuple[list[int], list[float]]]] = {}
        for ts, blob in conn.execute(
            "SELECT ts, v FROM records WHERE bucket = ? AND stream_id = ? ORDER BY ts",
            (minute, stream_id),
        ):
            flat = _unpack(blob)
            bucket = ts // finest
            slot = found.get(bucket)
            if slot is None:
                slot = found[bucket] = {}
            for sid, value in zip(flat[::2], flat[1::2], strict=True):
                kind = type(value)
                if kind is str:
                    continue
                if kind is list:
                    value = float(value[0])
                got = slot.get(sid)
                if got is None:
                    slot[sid] = ([ts], [value])
                else:
                    got[0].append(ts)
                    got[1].append(value)
        # min()/max() and index() give the first, so the earliest, of equal extremes
        extremes: list[tuple[int, int, int, float, int, float]] = []
        for bucket, slot in found.items():
            for sid, (times, values) in slot.items():
                low, high = min(values), max(values)
                low_ts, high_ts = times[values.index(low)], times[values.index(high)]
                extremes.append((sid, bucket, low_ts, low, high_ts, high))
                rows.append((finest, sid, bucket, low_ts, low, high_ts, high))
        for step in coarser:  # from the finest buckets, in time order per series
            per = step // finest
            folded: dict[tuple[int, int], list[float]] = {}
            for sid, bucket, low_ts, low, high_ts, high in extremes:
                now = folded.get((sid, bucket // per))
                if now is None:
                    folded[sid, bucket // per] = [low_ts, low, high_ts, high]
                else:
                    if low < now[1]:
                        now[0], now[1] = low_ts, low
                    if high > now[3]:
                        now[2], now[3] = high_ts, high
            rows.extend((step, *key, *extreme) for key, extreme in folded.items())
    conn.executemany(_INSERT_ROLLUP, rows)


def _downsample_sql(plan: Plan, grid: Grid, names: dict[int, str]) -> str:
    """Min rows (side 0) then max rows (side 1) per (series, grid bucket) of the rollups of
    ``plan`` (its raw points are read by :func:`_raw_sql`).

    Every number in it is an int made here, so it is built as text: the number of
    ranges varies, and SQLite plans each range as an index seek per series.
    """
    ids = ",".join(str(int(i)) for i in names)
    bucket = f"(ts - {int(grid.origin)}) / {int(grid.width)}"
    parts = []
    for side, fn in ((0, "MIN"), (1, "MAX")):
        column = "lo" if side == 0 else "hi"
        sources = [
            f"SELECT series_id, {column}_ts AS ts, {column} AS value FROM rollups"
            f" WHERE step = {int(step)} AND series_id IN ({ids})"
            f" AND bucket BETWEEN {int(first)} AND {int(last)}"
            for step, first, last in plan.rollups
        ]
        parts.append(
            f"SELECT {side}, series_id, {bucket} AS k, ts, {fn}(value)"
            f" FROM ({' UNION ALL '.join(sources)}) GROUP BY series_id, k"
        )
    return " UNION ALL ".join(parts)


def _raw_sql(plan: Plan) -> str:
    """The records (ts, blob) of one stream (parameter 1) in the raw ranges of ``plan``:
    one index seek per minute they span (every number in it is an int made here)."""
    spans = ", ".join(f"({int(a)}, {int(b)})" for a, b in plan.raw_minutes())
    ranges = " OR ".join(f"ts BETWEEN {int(a)} AND {int(b)}" for a, b in plan.raw)
    return (
        f"WITH RECURSIVE spans(a, b) AS (VALUES {spans}),"
        " minutes(x, b) AS (SELECT a, b FROM spans UNION ALL"
        " SELECT x + 1, b FROM minutes WHERE x < b)"
        " SELECT ts, v FROM records WHERE bucket IN (SELECT x FROM minutes)"
        f" AND stream_id = ?1 AND ({ranges})"
    )


def _fold_raw(
    rows: Iterable[tuple[int, bytes]],
    names: dict[int, str],
    grid: Grid,
    lows: dict[tuple[int, int], tuple[int, Value]],
    highs: dict[tuple[int, int], tuple[int, Value]],
) -> None:
    """Fold the numeric points of ``names`` in ``rows`` into the minimum and maximum per
    (series, grid bucket); of equal values the earliest point wins."""
    origin, width = grid.origin, grid.width
    for ts, blob in rows:
        flat = _unpack(blob)
        k = (ts - origin) // width
        for i in range(0, len(flat), 2):
            sid = flat[i]
            if sid not in names:
                continue
            raw = flat[i + 1]
            if type(raw) is str:
                continue
            value: float = float(raw[0]) if type(raw) is list else raw
            key = (sid, k)
            low: tuple[int, Any] | None = lows.get(key)
            if low is None or value < low[1] or (value == low[1] and ts < low[0]):
                lows[key] = (ts, value)
            high: tuple[int, Any] | None = highs.get(key)
            if high is None or value > high[1] or (value == high[1] and ts < high[0]):
                highs[key] = (ts, value)
