"""Telemetry store on PostgreSQL (asyncpg), with TimescaleDB when the server has it.

URL: ``postgresql://user[:password]@host[:port]/database[?options]``; libpq-style
options (``sslmode``, ``connect_timeout``, ...) go to asyncpg, plus these of livedata:

* ``pool_size`` -- connections in the pool (default 4);
* ``timescaledb`` -- ``auto`` (default: use it when the server offers it) or ``off``;
* ``compress_after_days`` -- TimescaleDB compression policy (default 1);
* ``retention_days`` -- TimescaleDB retention policy (default none: the runtime's
  periodic ``delete_before`` is the retention; set it to have the database drop old
  chunks by itself as well).

The tables are created when missing, under an advisory lock so that several
processes may start at once.  Schema (names prefixed so the metadata database can
be the same one)::

    telemetry_series (series_id bigint identity PRIMARY KEY,
                      tenant, chassis, msg_type, field text,
                      UNIQUE (tenant, chassis, msg_type, field))
    telemetry_points (series_id bigint, ts bigint,       -- ms since the epoch
                      num double precision, int bigint, str text,  -- exactly one is set
                      PRIMARY KEY (series_id, ts))
    telemetry_rollups (series_id bigint, step int, bucket bigint,    -- bucket = ts // step
                       lo_ts bigint, lo_num, lo_int, hi_ts bigint, hi_num, hi_int,
                       PRIMARY KEY (series_id, step, bucket))   -- step 10 s and 1 min
    telemetry_rollup_open (tenant, chassis, msg_type text, open_minute bigint,
                           PRIMARY KEY (tenant, chassis, msg_type))
    telemetry_retention (id int PRIMARY KEY, cutoff bigint)       -- newest cutoff
    telemetry_frames (tenant, chassis text, ts bigint, count int, data bytea,
                      PRIMARY KEY (tenant, chassis, ts)) + index on ts  -- raw frames
    plain PostgreSQL: + BRIN index on ts (retention deletes by time)
    TimescaleDB:      telemetry_points is a hypertable, chunks of one day on ts,
                      compressed (segment by series_id, order by ts) after
                      ``compress_after_days``; ``telemetry_now_ms()`` is its
                      integer "now" for the policies

Why interned series ids (as in the SQLite store), measured on PostgreSQL 15 here
with 100 machines x 10 fields, fsync on: 87-107 bytes per point against 225-229 for
a table keyed by the four names and ts, and 1.5-2.5x the insert rate (upserts of
1 k to 100 k points per batch: 130-240 k points/s against 71-97 k); the 2-minute
query of 10 fields is about 1 ms either way.  A process caches the ids it has seen
(they never change; series rows are never deleted).

Batch insert, measured the same way: binary ``COPY`` of the batch into a temporary
table, then ``INSERT ... SELECT ... ON CONFLICT`` from it, against one
``INSERT ... SELECT FROM unnest($1::bigint[], ...)`` and ``executemany``.
At 1 k points per batch COPY and unnest tie (126-144 k against 130-190 k points/s,
executemany 100-120 k); at 10 k and 100 k points COPY leads (238-270 k against
132-203 k), and a redelivered batch (all conflicts) goes 1.5-1.9x faster.  COPY it
is.  The staging table is a per-connection temporary table made when the pool opens
the connection, so a transaction-pooling proxy (PgBouncer ``pool_mode=transaction``)
does not fit; session pooling does.

Values: float in ``num``, int in ``int`` (exact over 64 bits), str in ``str``; they
come back with their type.  Normalised as in the other stores (bool as int,
NaN/None/objects skipped and not counted); a string containing NUL (``"\\x00"``,
which ``text`` cannot hold) is skipped too, rather than failing -- and, retried,
blocking -- its whole batch.  For downsampling (min/max per time bucket)
``coalesce(num, int)`` is the number of a point.

Rollups, as in the SQLite store: per series and 10 s or 1 min bucket the minimum and
maximum point, computed with SQL from the raw points of a whole minute in the write's
own transaction once the minute is *settled* (the stream's newest point is 5-60 s
into a later minute; again whenever a write touches a settled minute), so they always
equal what the raw points give, and a redelivered record recomputes the same rows.
``telemetry_rollup_open`` keeps each stream's first open minute (it changes about once
a minute).  A write locks the rows of its streams (``FOR UPDATE``, in key order)
before it computes any rollup, so two writers of one stream take turns there, and the
second reads the points the first committed; a live write that settles nothing costs
that one statement.  ``downsample`` reads, in one repeatable-read snapshot, the
coarsest rollups that fit its grid and the raw points of the range's ends and of the
open minutes (the newest one or two of the stream).  Tables made by an older version
get their rollups built from every point when the store first starts.

Duplicates: ``INSERT ... ON CONFLICT (series_id, ts) DO UPDATE`` -- writing a key
again **replaces its value (last write wins)** and keeps one row, as in the memory
and SQLite stores; an identical redelivered value is not rewritten (no dead tuple).
Within one ``write`` the later record wins (merged in Python: PostgreSQL refuses to
update one row twice in a statement).  Rows are inserted in key order, so two
writers upserting the same keys take their locks in the same order.

Retention (``delete_before``): the cutoff is recorded first in ``telemetry_retention``
(``downsample`` reads nothing older from then on, so rollups waiting to be deleted are
never used).  Then on plain PostgreSQL, ``DELETE`` by time slices of an
hour, each its own transaction (so writes are not held up and the WAL comes in
bounded pieces), found through the BRIN index; freed space is reused after
autovacuum, the files do not shrink.  With TimescaleDB, ``drop_chunks`` removes
whole days at once and ``DELETE`` the rest of the cutoff's day.  Last, the rollups
entirely older than the cutoff, one step at a time.

Under stress:

* **Server down, restarting, refusing connections, timeouts, disk full, any SQL
  error**: :class:`~livedata.errors.StoreError`, never an asyncpg exception.  A call
  that fails because a pooled connection had died (the server restarted) is retried
  once on a fresh connection, as are deadlocks and serialisation failures -- every
  call is idempotent; otherwise the store does not retry: ingest retries the batch
  with a growing delay.
* **Atomicity**: a ``write`` is one transaction (COPY + upsert): either all of the
  batch is stored or none of it.  New series names are committed just before it;
  they are harmless if the batch then fails.
* Concurrent calls wait for a pooled connection (``pool_size``); a call waits at most
  ``command_timeout`` (60 s) for the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from livedata import errors
from livedata.errors import ConfigError, ErrorMap, StoreError, describe, map_exceptions
from livedata.model import Record, Value
from livedata.store.base import (
    INT64_MIN,
    MINUTE_MS,
    ROLLUP_LEVELS_MS,
    LatestWindow,
    Plan,
    Series,
    Store,
    bucket_grid,
    check_replacement,
    extremes,
    kept_field,
    normalised,
    rollup_plan,
    settle_streams,
)
from livedata.store.frames import FrameBlob

log = logging.getLogger(__name__)

T = TypeVar("T")

DAY_MS = 86_400_000
DELETE_SLICE_MS = 3_600_000
DELETE_ROLLUPS_PER_TRANSACTION = 100_000
SORT_MEMORY = "64MB"
"""``work_mem`` of the transactions that sort many rollups: a backfill's write, a downsampling."""
POOL_SIZE = 4
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 60.0
SCHEMA_LOCK = 0x6C6976_6461_7461  # "livedata": the advisory lock around schema creation

_Key = tuple[str, str, str, str]
"""(tenant, chassis, msg_type, field): one series."""
_Stream = tuple[str, str, str]
"""(tenant, chassis, msg_type): one machine's message type."""
Hook = Callable[[asyncpg.Connection], Awaitable[None]]

_TABLES = (
    """CREATE TABLE IF NOT EXISTS telemetry_series (
        series_id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        tenant text NOT NULL,
        chassis text NOT NULL,
        msg_type text NOT NULL,
        field text NOT NULL,
        UNIQUE (tenant, chassis, msg_type, field)
    )""",
    """CREATE TABLE IF NOT EXISTS telemetry_points (
        series_id bigint NOT NULL,
        ts bigint NOT NULL,
        num double precision,
        int bigint,
        str text,
        PRIMARY KEY (series_id, ts)
    )""",
    """CREATE TABLE IF NOT EXISTS telemetry_rollups (
        series_id bigint NOT NULL,
        step integer NOT NULL,
        bucket bigint NOT NULL,
        lo_ts bigint NOT NULL,
        lo_num double precision,
        lo_int bigint,
        hi_ts bigint NOT NULL,
        hi_num double precision,
        hi_int bigint,
        PRIMARY KEY (series_id, step, bucket)
    )""",
    """CREATE TABLE IF NOT EXISTS telemetry_rollup_open (
        tenant text NOT NULL,
        chassis text NOT NULL,
        msg_type text NOT NULL,
        open_minute bigint,
        PRIMARY KEY (tenant, chassis, msg_type)
    )""",
    """CREATE TABLE IF NOT EXISTS telemetry_retention (
        id integer PRIMARY KEY CHECK (id = 0),
        cutoff bigint NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS telemetry_frames (
        tenant text NOT NULL,
        chassis text NOT NULL,
        ts bigint NOT NULL,
        count integer NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (tenant, chassis, ts)
    )""",
    "CREATE INDEX IF NOT EXISTS telemetry_frames_ts ON telemetry_frames (ts)",
)
_BRIN = """CREATE INDEX IF NOT EXISTS telemetry_points_ts_brin ON telemetry_points
    USING brin (ts) WITH (pages_per_range = 32, autosummarize = on)"""
_NOW_FUNCTION = """CREATE OR REPLACE FUNCTION telemetry_now_ms() RETURNS bigint
    LANGUAGE sql STABLE AS $$ SELECT (extract(epoch FROM now()) * 1000)::bigint $$"""

_STAGE = """CREATE TEMPORARY TABLE IF NOT EXISTS telemetry_stage (
    series_id bigint, ts bigint, num double precision, int bigint, str text
) ON COMMIT DELETE ROWS"""
_STAGE_COLUMNS = ("series_id", "ts", "num", "int", "str")
_UPSERT = """
    INSERT INTO telemetry_points AS p (series_id, ts, num, int, str)
    SELECT series_id, ts, num, int, str FROM telemetry_stage ORDER BY series_id, ts
    ON CONFLICT (series_id, ts) DO UPDATE
        SET num = EXCLUDED.num, int = EXCLUDED.int, str = EXCLUDED.str
        WHERE (p.num, p.int, p.str) IS DISTINCT FROM (EXCLUDED.num, EXCLUDED.int, EXCLUDED.str)
"""
_INTERN = """
    INSERT INTO telemetry_series (tenant, chassis, msg_type, field)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
    ON CONFLICT DO NOTHING
"""
_LOOKUP = """
    SELECT s.series_id, s.tenant, s.chassis, s.msg_type, s.field
    FROM telemetry_series s
    JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS i(tenant, chassis, msg_type, field)
        USING (tenant, chassis, msg_type, field)
"""
_SELECT = """
    SELECT s.field, p.ts, p.num, p.int, p.str
    FROM telemetry_series s
    CROSS JOIN LATERAL (
        SELECT ts, num, int, str FROM telemetry_points
        WHERE series_id = s.series_id AND ts BETWEEN $4 AND $5
        ORDER BY ts DESC
        LIMIT $6
    ) p
    WHERE s.tenant = $1 AND s.chassis = $2 AND s.msg_type = $3 AND s.field = ANY($7::text[])
"""
_OF_MACHINE = """WHERE series_id IN (
    SELECT series_id FROM telemetry_series WHERE tenant = $1 AND chassis = $2)"""
_LATEST = """
    SELECT max(p.ts)
    FROM telemetry_series s
    CROSS JOIN LATERAL (
        SELECT ts FROM telemetry_points WHERE series_id = s.series_id ORDER BY ts DESC LIMIT 1
    ) p
    WHERE s.tenant = $1 AND s.chassis = $2 AND s.msg_type = $3
"""
_LATEST_MANY = """
    SELECT s.chassis, s.msg_type, max(p.ts)
    FROM telemetry_series s
    CROSS JOIN LATERAL (
        SELECT ts FROM telemetry_points WHERE series_id = s.series_id ORDER BY ts DESC LIMIT 1
    ) p
    WHERE s.tenant = $1 AND s.chassis = ANY($2::text[])
    GROUP BY s.chassis, s.msg_type
"""
# Per asked (machine, field): its series (one unique-index probe), then its newest point in
# the window (one backward index range scan); LATERAL with OFFSET 0 as in _PAIRS below.
_LATEST_VALUES = """
    SELECT w.chassis, w.field, p.num, p.int, p.str
    FROM unnest($3::text[], $4::text[], $5::bigint[], $6::bigint[]) AS w(chassis, field, lo, hi)
    CROSS JOIN LATERAL (
        SELECT series_id FROM telemetry_series
        WHERE tenant = $1 AND chassis = w.chassis AND msg_type = $2 AND field = w.field
        OFFSET 0
    ) s
    CROSS JOIN LATERAL (
        SELECT num, int, str FROM telemetry_points
        WHERE series_id = s.series_id AND ts BETWEEN w.lo AND w.hi
        ORDER BY ts DESC
        LIMIT 1
    ) p
"""
_OLDEST = """
    SELECT min(p.ts)
    FROM telemetry_series s
    CROSS JOIN LATERAL (
        SELECT ts FROM telemetry_points WHERE series_id = s.series_id AND ts >= $1
        ORDER BY ts LIMIT 1
    ) p
"""

# Rollups: min and max per (series, step, bucket) of a set of points ``c``.  DISTINCT ON
# keeps the first row of each group in the ORDER BY: ascending by value for the
# minimum, descending for the maximum (ints beyond 2**53 ordered exactly by ``int``).
_ROLLUP_SELECT = """
    SELECT lo.series_id, lo.step, lo.bucket, lo.ts, lo.num, lo.int, hi.ts, hi.num, hi.int
    FROM (SELECT DISTINCT ON (series_id, step, bucket) series_id, step, bucket, ts, num, int
          FROM c ORDER BY series_id, step, bucket, v, int, ts) lo
    JOIN (SELECT DISTINCT ON (series_id, step, bucket) series_id, step, bucket, ts, num, int
          FROM c ORDER BY series_id, step, bucket, v DESC, int DESC NULLS LAST, ts) hi
        USING (series_id, step, bucket)
"""
_ROLLUP_COLUMNS = "series_id, step, bucket, lo_ts, lo_num, lo_int, hi_ts, hi_num, hi_int"
# The series of the (stream, minute) pairs $1..$4, as (series_id, minute).  LATERAL with
# OFFSET 0, here and below, makes each pair one index range scan: as a plain join the
# planner hashes the pairs against a sequential scan of the whole table (measured: a
# write of an hour of 10 fields took 5 s at 864,000 points, growing with the table).
_PAIRS = """
    SELECT s.series_id, f.minute
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
        AS f(tenant, chassis, msg_type, minute)
    CROSS JOIN LATERAL (
        SELECT series_id FROM telemetry_series
        WHERE tenant = f.tenant AND chassis = f.chassis AND msg_type = f.msg_type
        OFFSET 0
    ) s
"""


def _rollup_insert() -> str:
    """(Re)compute the rollups of the (stream, minute) pairs $1..$4: the finest step from
    the minute's raw points, each coarser one from the step before, in one statement."""
    finest, *coarser = ROLLUP_LEVELS_MS
    ctes = [
        f"""c{finest} AS MATERIALIZED (
        SELECT f.series_id, f.minute * {MINUTE_MS // finest} + (p.ts - f.minute * {MINUTE_MS}) / {finest}
                AS bucket,
            p.ts AS lo_ts, p.num AS lo_num, p.int AS lo_int, p.ts AS hi_ts, p.num AS hi_num,
            p.int AS hi_int
        FROM ({_PAIRS}) AS f
        CROSS JOIN LATERAL (
            SELECT ts, num, int FROM telemetry_points
            WHERE series_id = f.series_id
                AND ts BETWEEN f.minute * {MINUTE_MS} AND f.minute * {MINUTE_MS} + {MINUTE_MS - 1}
                AND str IS NULL
            OFFSET 0
        ) p
    )"""
    ]
    selects, source, step = [], f"c{finest}", finest
    for coarse in [*coarser, None]:
        ctes.append(
            f"""r{step} AS MATERIALIZED (
        SELECT lo.series_id, {step} AS step, lo.bucket, lo.ts AS lo_ts, lo.num AS lo_num,
            lo.int AS lo_int, hi.ts AS hi_ts, hi.num AS hi_num, hi.int AS hi_int
        FROM (SELECT DISTINCT ON (series_id, bucket) series_id, bucket, lo_ts AS ts,
                lo_num AS num, lo_int AS int
              FROM {source}
              ORDER BY series_id, bucket, coalesce(lo_num, lo_int::double precision), lo_int, lo_ts) lo
        JOIN (SELECT DISTINCT ON (series_id, bucket) series_id, bucket, hi_ts AS ts,
                hi_num AS num, hi_int AS int
              FROM {source}
              ORDER BY series_id, bucket, coalesce(hi_num, hi_int::double precision) DESC,
                  hi_int DESC NULLS LAST, hi_ts) hi
            USING (series_id, bucket)
    )"""
        )
        selects.append(f"SELECT {_ROLLUP_COLUMNS} FROM r{step}")
        if coarse is None:
            break
        per = coarse // step
        ctes.append(
            f"""g{coarse} AS (
        SELECT series_id, floor(bucket::numeric / {per})::bigint AS bucket, lo_ts, lo_num, lo_int,
            hi_ts, hi_num, hi_int
        FROM r{step}
    )"""
        )
        source, step = f"g{coarse}", coarse
    return (
        "WITH "
        + ",\n    ".join(ctes)
        + f"\nINSERT INTO telemetry_rollups ({_ROLLUP_COLUMNS}) "
        + " UNION ALL ".join(selects)
    )


_ROLLUP_INSERT = _rollup_insert()
# Delete the rollups of the (stream, minute) pairs $1..$4 at the steps $5 (found by
# index, deleted by row address), and move the open minutes of the streams $6..$9.
_ROLLUP_CLEAR = f"""
    WITH moved AS (
        UPDATE telemetry_rollup_open o SET open_minute = u.open_minute
        FROM unnest($6::text[], $7::text[], $8::text[], $9::bigint[])
            AS u(tenant, chassis, msg_type, open_minute)
        WHERE o.tenant = u.tenant AND o.chassis = u.chassis AND o.msg_type = u.msg_type
    )
    DELETE FROM telemetry_rollups WHERE ctid = ANY(ARRAY(
        SELECT r.ctid
        FROM ({_PAIRS}) AS f
        CROSS JOIN unnest($5::int[]) AS l(step)
        CROSS JOIN LATERAL (
            SELECT ctid FROM telemetry_rollups
            WHERE series_id = f.series_id AND step = l.step
                AND bucket BETWEEN f.minute * ({MINUTE_MS} / l.step)
                    AND (f.minute + 1) * ({MINUTE_MS} / l.step) - 1
            OFFSET 0
        ) r
    ))
"""
_LOCK_OPEN = """
    SELECT o.tenant, o.chassis, o.msg_type, o.open_minute
    FROM telemetry_rollup_open o
    JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(tenant, chassis, msg_type)
        ON o.tenant = k.tenant AND o.chassis = k.chassis AND o.msg_type = k.msg_type
    ORDER BY 1, 2, 3
    FOR UPDATE OF o
"""
_ADD_OPEN = """
    INSERT INTO telemetry_rollup_open (tenant, chassis, msg_type)
    SELECT DISTINCT * FROM unnest($1::text[], $2::text[], $3::text[]) ORDER BY 1, 2, 3
    ON CONFLICT DO NOTHING
"""
# On start: a row for every stream (streams of an older version included: NULL, as
# their rollups are built from every point).
_FILL_OPEN = """
    INSERT INTO telemetry_rollup_open (tenant, chassis, msg_type)
    SELECT DISTINCT tenant, chassis, msg_type FROM telemetry_series
    ON CONFLICT DO NOTHING
"""
# Upgrading tables of an older version: the rollups of every stored point.
_ROLLUP_ALL = f"""
    WITH c AS MATERIALIZED (
        SELECT p.series_id, l.step, floor(p.ts::numeric / l.step)::bigint AS bucket,
            p.ts, p.num, p.int, coalesce(p.num, p.int::double precision) AS v
        FROM telemetry_points p CROSS JOIN unnest($1::int[]) AS l(step)
        WHERE p.str IS NULL
    )
    INSERT INTO telemetry_rollups ({_ROLLUP_COLUMNS}) {_ROLLUP_SELECT}
"""
_SET_CUTOFF = """
    INSERT INTO telemetry_retention AS r (id, cutoff) VALUES (0, $1)
    ON CONFLICT (id) DO UPDATE SET cutoff = greatest(r.cutoff, excluded.cutoff)
"""
# Retention: up to $3 rollups of step $1 older than bucket $2, by an index range per series.
_DELETE_ROLLUPS = """
    DELETE FROM telemetry_rollups WHERE ctid = ANY(ARRAY(
        SELECT r.ctid FROM telemetry_series s
        CROSS JOIN LATERAL (
            SELECT ctid FROM telemetry_rollups
            WHERE series_id = s.series_id AND step = $1 AND bucket < $2
            OFFSET 0
        ) r
        LIMIT $3
    ))
"""
_DOWNSAMPLE_SERIES = """
    SELECT s.series_id, s.field, (SELECT max(cutoff) FROM telemetry_retention),
        (SELECT open_minute FROM telemetry_rollup_open
         WHERE tenant = $1 AND chassis = $2 AND msg_type = $3)
    FROM telemetry_series s
    WHERE s.tenant = $1 AND s.chassis = $2 AND s.msg_type = $3 AND s.field = ANY($4::text[])
"""


def _key(ts: str, num: str, integer: str) -> str:
    """A point as a float8[] that sorts by value, exactly: [value, int >> 32, int & 0xffffffff,
    ts, is int] (an int in two halves, each exact in a double), so that min() and max()
    over it find a bucket's extreme points without sorting all of them."""
    return (
        f"ARRAY[coalesce({num}, {integer}::double precision),"
        f" coalesce({integer} >> 32, 0), coalesce({integer} & 4294967295, 0), {ts},"
        f" ({integer} IS NOT NULL)::int]::double precision[]"
    )


# Min and max per (series, grid bucket) over the rollup ranges ($4, $5, $6) and the raw
# ranges ($7, $8) of a plan; $2 and $3 are the grid's origin and width.  Aggregating
# arrays (hash or sort by group only) took 170 ms for 7 days of 10 fields where DISTINCT
# ON (two sorts by value of every row) took 310 ms.
_DOWNSAMPLE = f"""
    WITH c AS (
        SELECT s.series_id, (r.lo_ts - $2) / $3 AS k,
            {_key("r.lo_ts", "r.lo_num", "r.lo_int")} AS lo,
            {_key("r.hi_ts", "r.hi_num", "r.hi_int")} AS hi
        FROM unnest($1::bigint[]) AS s(series_id)
        CROSS JOIN unnest($4::int[], $5::bigint[], $6::bigint[]) AS g(step, first, last)
        CROSS JOIN LATERAL (
            SELECT * FROM telemetry_rollups
            WHERE series_id = s.series_id AND step = g.step AND bucket BETWEEN g.first AND g.last
            OFFSET 0
        ) r
        UNION ALL
        SELECT s.series_id, (p.ts - $2) / $3, {_key("p.ts", "p.num", "p.int")},
            {_key("p.ts", "p.num", "p.int")}
        FROM unnest($1::bigint[]) AS s(series_id)
        CROSS JOIN unnest($7::bigint[], $8::bigint[]) AS g(lo, hi)
        CROSS JOIN LATERAL (
            SELECT ts, num, int FROM telemetry_points
            WHERE series_id = s.series_id AND ts BETWEEN g.lo AND g.hi AND str IS NULL
            OFFSET 0
        ) p
    )
    SELECT series_id, k, min(lo), max(hi) FROM c GROUP BY series_id, k ORDER BY series_id, k
"""

_RETRY_ONCE = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.InterfaceError,
    ConnectionError,
)
"""A dead pooled connection (server restarted), a deadlock, a serialisation failure."""

ERRORS: ErrorMap = {
    (asyncpg.exceptions.QueryCanceledError, TimeoutError): errors.StoreTimeout,  # statement_timeout
    (
        asyncpg.PostgresConnectionError,
        asyncpg.exceptions.OperatorInterventionError,  # the server shutting down
        asyncpg.exceptions.ConnectionDoesNotExistError,
        OSError,  # refused, reset
    ): errors.StoreUnavailable,
    (asyncpg.exceptions.ProtocolViolationError, asyncpg.exceptions.InternalClientError): (
        errors.StoreProtocolError
    ),
    # a value the column cannot hold (asyncpg DataError) is one of these
    (asyncpg.PostgresError, asyncpg.InterfaceError, OverflowError): StoreError,
}
"""asyncpg's (and the socket's) errors → the project's; a bug's ValueError or TypeError is not
translated."""


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """(asyncpg DSN, livedata's own options) from a store URL."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    ours: dict[str, str] = {
        name: query.pop(name)
        for name in ("pool_size", "timescaledb", "compress_after_days", "retention_days")
        if name in query
    }
    if not parts.hostname and "host" not in query:
        raise ConfigError(f"store URL {url!r} names no host (postgresql://user@host:5432/db)")
    dsn = urlunsplit(parts._replace(query=urlencode(query)))
    return dsn, ours


def _value_of(num: float | None, integer: int | None, text: str | None) -> Value:
    if num is not None:
        return num
    if integer is not None:
        return integer
    return text if text is not None else ""


def _clean(values: dict[str, Value]) -> dict[str, Value]:
    """The storable values, without text holding NUL (PostgreSQL text cannot hold it:
    one such value must not block a batch): ``values`` itself when it is so (the usual
    case), not to be changed."""
    return _without_nul(normalised(values))


def _without_nul(values: dict[str, Value]) -> dict[str, Value]:
    """Normalised ``values`` without text holding NUL (see :func:`_clean`)."""
    for value in values.values():
        if type(value) is str and "\x00" in value:
            return {
                name: value
                for name, value in values.items()
                if type(value) is not str or "\x00" not in value
            }
    return values


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(_STAGE)


class PostgresStore(Store):
    """The store on a PostgreSQL database; see the module docstring for schema and stress."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._dsn, options = _split_url(url)
        try:
            self.pool_size = int(options.get("pool_size", POOL_SIZE))
            self.compress_after_ms = int(float(options.get("compress_after_days", 1)) * DAY_MS)
            retention = options.get("retention_days")
            self.retention_ms = int(float(retention) * DAY_MS) if retention else None
        except ValueError as exc:
            raise ConfigError(f"store URL {url!r}: {exc}") from exc
        if self.pool_size < 1:
            raise ConfigError(f"store URL {url!r}: pool_size must be at least 1")
        mode = options.get("timescaledb", "auto")
        if mode not in ("auto", "off"):
            raise ConfigError(f"store URL {url!r}: timescaledb must be auto or off")
        self._want_timescale = mode == "auto"
        self.timescale = False
        """Whether the points table is a TimescaleDB hypertable (known after start)."""
        self._pool: asyncpg.Pool | None = None
        self._start_lock: asyncio.Lock | None = None
        self._closed = False
        self._series: dict[_Key, int] = {}
        self.rollups = True
        """Keep rollups and read them in ``downsample``.  ``False`` (benchmarks only)
        writes none and downsamples raw points; a database written so must not be read
        with ``True``."""

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._pool is not None:
                return
            self._closed = False
            with map_exceptions(ERRORS, "postgres store: connecting"):
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=CONNECT_TIMEOUT_S,
                    command_timeout=COMMAND_TIMEOUT_S,
                    init=_init_connection,
                )
            try:
                with map_exceptions(ERRORS, "postgres store: creating the schema"):
                    async with pool.acquire() as conn:
                        await self._create_schema(conn)
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool

    async def close(self) -> None:
        """Wait for calls in progress (at most 10 s), then close every connection."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                pool.terminate()

    async def _create_schema(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            had_rollups = await conn.fetchval("SELECT to_regclass('telemetry_rollups') IS NOT NULL")
            for statement in _TABLES:
                await conn.execute(statement)
            await conn.execute(_FILL_OPEN)
            if not had_rollups:  # tables of an older version: rollups of what is stored
                await conn.execute(_ROLLUP_ALL, list(ROLLUP_LEVELS_MS))
            if self._want_timescale:
                self.timescale = await self._try_timescale(conn)
            if not self.timescale:
                await conn.execute(_BRIN)

    async def _try_timescale(self, conn: asyncpg.Connection) -> bool:
        """Make the points table a compressed hypertable; False when TimescaleDB is not there."""
        available = await conn.fetchval(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
        )
        if not available:
            return False
        try:
            async with conn.transaction():  # a savepoint: a failure leaves the plain table
                await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                await conn.execute(
                    "SELECT create_hypertable('telemetry_points', 'ts',"
                    " chunk_time_interval => $1::bigint, if_not_exists => TRUE,"
                    " migrate_data => TRUE)",
                    DAY_MS,
                )
                await conn.execute(_NOW_FUNCTION)
                await conn.execute(
                    "SELECT set_integer_now_func('telemetry_points', 'telemetry_now_ms',"
                    " replace_if_exists => TRUE)"
                )
                compressed = await conn.fetchval(
                    "SELECT compression_enabled FROM timescaledb_information.hypertables"
                    " WHERE hypertable_name = 'telemetry_points'"
                )
                if not compressed:
                    await conn.execute(
                        "ALTER TABLE telemetry_points SET (timescaledb.compress,"
                        " timescaledb.compress_segmentby = 'series_id',"
                        " timescaledb.compress_orderby = 'ts DESC')"
                    )
                await conn.execute(
                    "SELECT add_compression_policy('telemetry_points',"
                    " compress_after => $1::bigint, if_not_exists => TRUE)",
                    self.compress_after_ms,
                )
                if self.retention_ms is not None:
                    await conn.execute(
                        "SELECT add_retention_policy('telemetry_points',"
                        " drop_after => $1::bigint, if_not_exists => TRUE)",
                        self.retention_ms,
                    )
        except asyncpg.PostgresError as exc:
            log.warning(
                "postgres store: TimescaleDB is installed but could not be set up (%s);"
                " using a plain table",
                describe(exc),
            )
            return False
        return True

    async def _call(self, action: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection; retried once when the connection had died."""
        if self._pool is None:
            if self._closed:
                raise StoreError("postgres store is closed")
            await self.start()
        for attempt in (1, 2):
            pool = self._pool
            if pool is None:
                raise StoreError("postgres store is closed")
            with map_exceptions(ERRORS, f"postgres store: {action}"):
                try:
                    async with pool.acquire() as conn:
                        return await fn(conn)
                except _RETRY_ONCE as exc:
                    if attempt == 2 or self._closed:
                        raise
                    log.info("postgres store: %s failed (%s); retrying once", action, describe(exc))
        raise AssertionError("unreachable")

    # -- writes ----------------------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> int:
        return await self._write(records, _clean)

    async def write_normalised(self, records: Sequence[Record]) -> int:
        """:meth:`write` without the check of every value, only text for NUL."""
        return await self._write(records, _without_nul)

    async def _write(
        self, records: Sequence[Record], clean: Callable[[dict[str, Value]], dict[str, Value]]
    ) -> int:
        if not records:
            return 0
        written = 0
        merged: dict[tuple[str, str, str, int], dict[str, Value]] = {}
        for record in records:
            values = clean(record.values)
            if not values:
                continue
            written += len(values)
            key = (record.tenant, record.chassis, record.msg_type, record.ts)
            known = merged.get(key)
            merged[key] = values if known is None else {**known, **values}
        if not merged:
            return 0
        await self._call("write", partial(self._store, merged, None))
        return written

    async def _store(
        self,
        merged: dict[tuple[str, str, str, int], dict[str, Value]],
        around: tuple[Hook, Hook] | None,
        conn: asyncpg.Connection,
    ) -> None:
        """Upsert ``merged`` in one transaction; ``around`` (re-decoding): what runs in it
        before and after."""
        ids = await self._series_ids(conn, merged) if merged else {}
        rows: list[tuple[int, int, float | None, int | None, str | None]] = []
        newest: dict[_Stream, int] = {}  # newest ts in this batch
        touched: dict[_Stream, set[int]] = {}  # minutes written in this batch
        for (tenant, chassis, msg_type, ts), values in merged.items():
            stream = (tenant, chassis, msg_type)
            if ts > newest.get(stream, INT64_MIN):
                newest[stream] = ts
            minutes = touched.get(stream)
            if minutes is None:
                minutes = touched[stream] = set()
            minutes.add(ts // MINUTE_MS)
            for name, value in values.items():
                series_id = ids[tenant, chassis, msg_type, name]
                if type(value) is float:
                    rows.append((series_id, ts, value, None, None))
                elif type(value) is int:
                    rows.append((series_id, ts, None, value, None))
                else:
                    rows.append((series_id, ts, None, None, str(value)))
        async with conn.transaction():
            if around is not None:
                await around[0](conn)
            if rows:
                await conn.copy_records_to_table(
                    "telemetry_stage", records=rows, columns=_STAGE_COLUMNS
                )
                await conn.execute(_UPSERT)
            if self.rollups and newest:
                await _settle(conn, touched, newest)
            if around is not None:
                await around[1](conn)

    async def _series_ids(
        self, conn: asyncpg.Connection, merged: dict[tuple[str, str, str, int], dict[str, Value]]
    ) -> dict[_Key, int]:
        """The ids of every series in ``merged``, interning new ones (committed at once)."""
        known = self._series
        missing: set[_Key] = set()
        for (tenant, chassis, msg_type, _ts), values in merged.items():
            for name in values:
                key = (tenant, chassis, msg_type, name)
                if key not in known:
                    missing.add(key)
        if missing:
            columns = [list(column) for column in zip(*missing, strict=True)]
            await conn.execute(_INTERN, *columns)
            for series_id, tenant, chassis, msg_type, name in await conn.fetch(_LOOKUP, *columns):
                known[tenant, chassis, msg_type, name] = series_id
            lost = [key for key in missing if key not in known]
            if lost:
                raise StoreError(f"postgres store: write failed: series {lost[0]} not interned")
            streams = sorted({key[:3] for key in missing})
            await conn.execute(_ADD_OPEN, *(list(column) for column in zip(*streams, strict=True)))
        return known

    async def delete_before(self, ts_ms: int) -> int:
        await self._call("delete_before", lambda conn: conn.execute(_SET_CUTOFF, ts_ms))
        if self.timescale:
            deleted = await self._call("delete_before", lambda conn: self._drop_chunks(conn, ts_ms))
        else:
            deleted = 0
            lo = await self._call("delete_before", partial(_oldest_from, INT64_MIN))
            while lo is not None and lo < ts_ms:
                hi = min(lo + DELETE_SLICE_MS, ts_ms)
                count = await self._call("delete_before", partial(_delete_slice, lo, hi))
                deleted += count
                # After an empty slice (a gap in the data) jump to the next stored point.
                lo = hi if count else await self._call("delete_before", partial(_oldest_from, hi))
        for step in ROLLUP_LEVELS_MS:
            gone = DELETE_ROLLUPS_PER_TRANSACTION
            while gone == DELETE_ROLLUPS_PER_TRANSACTION:
                gone = await self._call(
                    "delete_before", partial(_delete_rollups, step, ts_ms // step)
                )
        return deleted

    @staticmethod
    async def _drop_chunks(conn: asyncpg.Connection, ts_ms: int) -> int:
        async with conn.transaction():
            deleted = await conn.fetchval(
                "SELECT count(*) FROM telemetry_points WHERE ts < $1", ts_ms
            )
            await conn.execute(
                "SELECT drop_chunks('telemetry_points', older_than => $1::bigint)", ts_ms
            )
            await conn.execute("DELETE FROM telemetry_points WHERE ts < $1", ts_ms)
        return int(deleted)

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
        args = (tenant, chassis, msg_type, start_ms, end_ms, int(limit), list(result))
        rows = await self._call("query", lambda conn: conn.fetch(_SELECT, *args))
        for name, ts, num, integer, text in rows:
            result[name].append((ts, _value_of(num, integer, text)))
        for points in result.values():
            points.reverse()  # newest first per series, as the LIMIT needs
            points.sort(key=_ts_of)  # a no-op pass when already in order
        return result

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
        result: Series = {name: [] for name in fields}
        if start_ms > end_ms or not result:
            return result
        names: dict[int, str] = {}

        async def run(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                found = await conn.fetch(
                    _DOWNSAMPLE_SERIES, tenant, chassis, msg_type, list(result)
                )
                if not found:
                    return []
                lo, open_minutes = start_ms, set[int]()
                for series_id, name, cutoff, open_minute in found:
                    names[series_id] = name
                    if cutoff is not None and cutoff > lo:
                        lo = cutoff  # no rollup bucket older than the cutoff is used
                    if open_minute is not None:
                        open_minutes = {open_minute, open_minute + 1}
                if lo > end_ms:
                    return []
                if self.rollups and grid.step > 1:
                    plan = rollup_plan(lo, end_ms, grid, open_minutes)
                else:
                    plan = Plan(raw=[(lo, end_ms)])
                steps = [step for step, _, _ in plan.rollups]
                firsts = [first for _, first, _ in plan.rollups]
                lasts = [last for _, _, last in plan.rollups]
                raw_lo = [first for first, _ in plan.raw]
                raw_hi = [last for _, last in plan.raw]
                # 7 days of 10 fields group about 100,000 rollups: in memory, not on disk
                await conn.execute(f"SET LOCAL work_mem = '{SORT_MEMORY}'")
                return await conn.fetch(
                    _DOWNSAMPLE, list(names), grid.origin, grid.width,
                    steps, firsts, lasts, raw_lo, raw_hi,
                )  # fmt: skip

        rows = await self._call("downsample", run)
        for series_id, _k, low, high in rows:
            result[names[series_id]].extend(extremes(*_point(low), *_point(high)))
        return result

    async def latest_ts(self, tenant: str, chassis: str, msg_type: str) -> int | None:
        newest = await self._call(
            "latest_ts", lambda conn: conn.fetchval(_LATEST, tenant, chassis, msg_type)
        )
        return None if newest is None else int(newest)

    async def _latest_rows(self, tenant: str, chassis: Sequence[str]) -> list[tuple[str, str, int]]:
        rows = await self._call(
            "latest_many", lambda conn: conn.fetch(_LATEST_MANY, tenant, list(chassis))
        )
        return [(row[0], row[1], row[2]) for row in rows]

    async def _latest_value_rows(
        self, tenant: str, msg_type: str, windows: Sequence[LatestWindow]
    ) -> list[tuple[str, str, Value]]:
        asked = [(window, name) for window in windows for name in window.fields]
        args = (
            tenant,
            msg_type,
            [window.chassis for window, _ in asked],
            [name for _, name in asked],
            [window.start_ms for window, _ in asked],
            [window.end_ms for window, _ in asked],
        )
        rows = await self._call(
            "latest_values_many", lambda conn: conn.fetch(_LATEST_VALUES, *args)
        )
        return [
            (chassis, name, _value_of(num, integer, text))
            for chassis, name, num, integer, text in rows
        ]

    async def machine_points(self, tenant: str, chassis: str) -> int:
        count = await self._call(
            "machine_points",
            lambda conn: conn.fetchval(
                f"SELECT count(*) FROM telemetry_points {_OF_MACHINE}", tenant, chassis
            ),
        )
        return int(count)

    async def delete_machine(self, tenant: str, chassis: str) -> int:
        """One transaction: the machine's points and rollups (its series ids stay)."""

        async def delete(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                status = await conn.execute(
                    f"DELETE FROM telemetry_points {_OF_MACHINE}", tenant, chassis
                )
                await conn.execute(f"DELETE FROM telemetry_rollups {_OF_MACHINE}", tenant, chassis)
                await conn.execute(
                    "DELETE FROM telemetry_frames WHERE tenant = $1 AND chassis = $2",
                    tenant, chassis,
                )  # fmt: skip
            return int(status.rsplit(" ", 1)[-1])

        return await self._call("delete_machine", delete)

    # -- raw frames ------------------------------------------------------------------

    async def write_frames(self, blobs: Sequence[FrameBlob]) -> int:
        """One ``INSERT ... ON CONFLICT DO UPDATE`` of every blob (from arrays)."""
        if not blobs:
            return 0
        merged = {(b.tenant, b.chassis, b.ts): b for b in blobs}  # one row updated once
        columns = [
            list(c) for c in zip(*((*k, b.count, b.data) for k, b in merged.items()), strict=True)
        ]
        await self._call(
            "write_frames",
            lambda conn: conn.execute(
                """INSERT INTO telemetry_frames (tenant, chassis, ts, count, data)
                SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $5::bytea[])
                ON CONFLICT (tenant, chassis, ts) DO UPDATE
                    SET count = EXCLUDED.count, data = EXCLUDED.data""",
                *columns,
            ),
        )
        return len(blobs)

    async def read_frames(
        self, tenant: str, chassis: str, start_ms: int, end_ms: int, limit: int = 1_000
    ) -> list[FrameBlob]:
        rows = await self._call(
            "read_frames",
            lambda conn: conn.fetch(
                "SELECT ts, count, data FROM telemetry_frames WHERE tenant = $1 AND chassis = $2"
                " AND ts BETWEEN $3 AND $4 ORDER BY ts LIMIT $5",
                tenant, chassis, start_ms, end_ms, max(limit, 0),
            ),
        )  # fmt: skip
        return [FrameBlob(tenant, chassis, ts, n, bytes(data)) for ts, n, data in rows]

    async def count_frames(self, tenant: str, chassis: str, start_ms: int, end_ms: int) -> int:
        count = await self._call(
            "count_frames",
            lambda conn: conn.fetchval(
                "SELECT count(*) FROM telemetry_frames WHERE tenant = $1 AND chassis = $2"
                " AND ts BETWEEN $3 AND $4",
                tenant, chassis, start_ms, end_ms,
            ),
        )  # fmt: skip
        return int(count)

    async def delete_frames_before(self, ts_ms: int) -> int:
        """Hour-long slices, each its own transaction (as the points' retention)."""
        deleted = 0
        while True:
            oldest = await self._call(
                "delete_frames_before",
                lambda conn: conn.fetchval("SELECT min(ts) FROM telemetry_frames"),
            )
            if oldest is None or oldest >= ts_ms:
                return deleted
            upto = min(ts_ms, int(oldest) + DELETE_SLICE_MS)
            status = await self._call(
                "delete_frames_before",
                partial(_execute, "DELETE FROM telemetry_frames WHERE ts < $1", upto),
            )
            deleted += int(status.split()[-1])

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
        """One transaction: readers see the range before or after, never half-replaced.
        The rollups of the range's settled minutes are recomputed in it."""
        check_replacement(tenant, chassis, msg_type, start_ms, end_ms, records)
        written = 0
        merged: dict[tuple[str, str, str, int], dict[str, Value]] = {}
        for record in records:
            values = _clean(record.values)
            written += len(values)
            merged.setdefault((tenant, chassis, msg_type, record.ts), {}).update(values)

        async def clear(conn: asyncpg.Connection) -> None:
            found = await conn.fetch(
                "SELECT series_id, field FROM telemetry_series"
                " WHERE tenant = $1 AND chassis = $2 AND msg_type = $3",
                tenant, chassis, msg_type,
            )  # fmt: skip
            ids = [sid for sid, name in found if not kept_field(name, keep)]
            await conn.execute(
                "DELETE FROM telemetry_points WHERE series_id = ANY($1::bigint[])"
                " AND ts BETWEEN $2 AND $3",
                ids, start_ms, end_ms,
            )  # fmt: skip

        async def settle(conn: asyncpg.Connection) -> None:
            """Recompute the rollups of the range's settled minutes."""
            if self.rollups:
                open_minute = await conn.fetchval(
                    "SELECT open_minute FROM telemetry_rollup_open"
                    " WHERE tenant = $1 AND chassis = $2 AND msg_type = $3 FOR UPDATE",
                    tenant, chassis, msg_type,
                )  # fmt: skip
                last = end_ms // MINUTE_MS
                if open_minute is not None:
                    last = min(last, open_minute - 1)
                minutes = list(range(start_ms // MINUTE_MS, last + 1))
                n = len(minutes)
                pairs = [[tenant] * n, [chassis] * n, [msg_type] * n, minutes]
                await conn.execute(_ROLLUP_CLEAR, *pairs, list(ROLLUP_LEVELS_MS), [], [], [], [])
                await conn.execute(f"SET LOCAL work_mem = '{SORT_MEMORY}'")
                await conn.execute(_ROLLUP_INSERT, *pairs)

        kept = {k: v for k, v in merged.items() if v}
        await self._call("replace_values", partial(self._store, kept, (clear, settle)))
        return written


async def _settle(
    conn: asyncpg.Connection, touched: dict[_Stream, set[int]], newest: dict[_Stream, int]
) -> None:
    """Move the streams' open minutes and compute the rollups of the minutes this write settles.

    The streams' ``telemetry_rollup_open`` rows are locked first, so the rollups are
    computed by later statements, from snapshots that have every point of the writers
    that held the lock before.
    """
    streams = sorted(newest)
    columns = [list(column) for column in zip(*streams, strict=True)]
    before = {tuple(row[:3]): row[3] for row in await conn.fetch(_LOCK_OPEN, *columns)}
    if len(before) < len(streams):  # streams interned by an older version
        await conn.execute(_ADD_OPEN, *columns)
        before = {tuple(row[:3]): row[3] for row in await conn.fetch(_LOCK_OPEN, *columns)}
    moving, settling = settle_streams(streams, touched, newest, before)
    moved = [(*stream, minute) for stream, minute in moving]
    pairs = [(*stream, minute) for stream, minute in settling]
    if not moved and not pairs:
        return
    steps = list(ROLLUP_LEVELS_MS)
    pair_columns = [list(c) for c in zip(*pairs, strict=True)] if pairs else [[], [], [], []]
    moved_columns = [list(c) for c in zip(*moved, strict=True)] if moved else [[], [], [], []]
    await conn.execute(_ROLLUP_CLEAR, *pair_columns, steps, *moved_columns)
    if pairs:
        if len(pairs) > 10:  # a backfill: sort its points in memory, not in temp files
            await conn.execute(f"SET LOCAL work_mem = '{SORT_MEMORY}'")
        await conn.execute(_ROLLUP_INSERT, *pair_columns)


async def _delete_rollups(step: int, below: int, conn: asyncpg.Connection) -> int:
    """Delete some rollups of ``step`` with ``bucket < below``; how many."""
    status = await conn.execute(_DELETE_ROLLUPS, step, below, DELETE_ROLLUPS_PER_TRANSACTION)
    return int(status.split()[-1])


async def _oldest_from(ts_ms: int, conn: asyncpg.Connection) -> int | None:
    """The oldest stored timestamp ``>= ts_ms`` (an index probe per series)."""
    oldest = await conn.fetchval(_OLDEST, ts_ms)
    return None if oldest is None else int(oldest)


async def _delete_slice(lo: int, hi: int, conn: asyncpg.Connection) -> int:
    """Delete the points with ``lo <= ts < hi`` in one transaction; how many."""
    status = await conn.execute("DELETE FROM telemetry_points WHERE ts >= $1 AND ts < $2", lo, hi)
    return int(status.split()[-1])


async def _execute(sql: str, arg: object, conn: asyncpg.Connection) -> str:
    status: str = await conn.execute(sql, arg)
    return status


def _point(key: list[float]) -> tuple[int, Value]:
    """``(ts, value)`` of a point from its sort key (see ``_key``)."""
    number, high, low, ts, is_int = key
    return int(ts), (int(high) << 32) + int(low) if is_int else number


def _ts_of(point: tuple[int, Value]) -> int:
    return point[0]
