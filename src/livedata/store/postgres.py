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
blocking -- its whole batch.  For downsampling (min/max per time
bucket, to come) ``coalesce(num, int)`` is the number of a point.

Duplicates: ``INSERT ... ON CONFLICT (series_id, ts) DO UPDATE`` -- writing a key
again **replaces its value (last write wins)** and keeps one row, as in the memory
and SQLite stores; an identical redelivered value is not rewritten (no dead tuple).
Within one ``write`` the later record wins (merged in Python: PostgreSQL refuses to
update one row twice in a statement).  Rows are inserted in key order, so two
writers upserting the same keys take their locks in the same order.

Retention (``delete_before``): on plain PostgreSQL, ``DELETE`` by time slices of an
hour, each its own transaction (so writes are not held up and the WAL comes in
bounded pieces), found through the BRIN index; freed space is reused after
autovacuum, the files do not shrink.  With TimescaleDB, ``drop_chunks`` removes
whole days at once and ``DELETE`` the rest of the cutoff's day.

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

from livedata.errors import ConfigError, StoreError
from livedata.model import Record, Value
from livedata.store.base import (
    INT64_MIN,
    Series,
    Store,
    bucket_width,
    extremes,
    storable_values,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DAY_MS = 86_400_000
DELETE_SLICE_MS = 3_600_000
POOL_SIZE = 4
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 60.0
SCHEMA_LOCK = 0x6C6976_6461_7461  # "livedata": the advisory lock around schema creation

_Key = tuple[str, str, str, str]
"""(tenant, chassis, msg_type, field): one series."""

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
# Min and max per (series, time bucket): DISTINCT ON keeps the first row of each group
# in the ORDER BY, so one sort ascending by value gives the minimum rows and one
# descending the maximum rows, with their timestamps.
_EXTREMES = """
    WITH p AS MATERIALIZED (
        SELECT s.field, (p.ts - $4) / $6 AS k, p.ts, p.num, p.int,
            coalesce(p.num, p.int::double precision) AS v
        FROM telemetry_series s
        JOIN telemetry_points p ON p.series_id = s.series_id
        WHERE s.tenant = $1 AND s.chassis = $2 AND s.msg_type = $3 AND s.field = ANY($7::text[])
            AND p.ts BETWEEN $4 AND $5 AND p.str IS NULL
    )
    SELECT lo.field, lo.k, lo.ts, lo.num, lo.int, hi.ts, hi.num, hi.int
    FROM (SELECT DISTINCT ON (field, k) field, k, ts, num, int FROM p ORDER BY field, k, v) lo
    JOIN (SELECT DISTINCT ON (field, k) field, k, ts, num, int FROM p ORDER BY field, k, v DESC) hi
        USING (field, k)
    ORDER BY lo.field, lo.k
"""
_LATEST = """
    SELECT max(p.ts)
    FROM telemetry_series s
    CROSS JOIN LATERAL (
        SELECT ts FROM telemetry_points WHERE series_id = s.series_id ORDER BY ts DESC LIMIT 1
    ) p
    WHERE s.tenant = $1 AND s.chassis = $2 AND s.msg_type = $3
"""
_OLDEST = """
    SELECT min(p.ts)
    FROM telemetry_series s
    CROSS JOIN LATERAL (
        SELECT ts FROM telemetry_points WHERE series_id = s.series_id AND ts >= $1
        ORDER BY ts LIMIT 1
    ) p
"""

_RETRY_ONCE = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.InterfaceError,
    ConnectionError,
)
"""A dead pooled connection (server restarted), a deadlock, a serialisation failure."""

_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,  # refused, reset, and TimeoutError
    OverflowError,
    ValueError,
    TypeError,
)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    one such value must not block a batch)."""
    return {
        name: value
        for name, value in storable_values(values).items()
        if type(value) is not str or "\x00" not in value
    }


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

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._pool is not None:
                return
            self._closed = False
            try:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=CONNECT_TIMEOUT_S,
                    command_timeout=COMMAND_TIMEOUT_S,
                    init=_init_connection,
                )
            except _DRIVER_ERRORS as exc:
                raise StoreError(f"postgres store: connecting failed: {_describe(exc)}") from exc
            try:
                async with pool.acquire() as conn:
                    await self._create_schema(conn)
            except BaseException as exc:
                pool.terminate()
                if isinstance(exc, _DRIVER_ERRORS):
                    raise StoreError(
                        f"postgres store: creating the schema failed: {_describe(exc)}"
                    ) from exc
                raise
            self._pool = pool

    async def close(self) -> None:
        """Wait for calls in progress (at most 10 s), then close every connection."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except (TimeoutError, *_DRIVER_ERRORS):
                pool.terminate()

    async def _create_schema(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            for statement in _TABLES:
                await conn.execute(statement)
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
                _describe(exc),
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
            try:
                async with pool.acquire() as conn:
                    return await fn(conn)
            except _RETRY_ONCE as exc:
                if attempt == 2 or self._closed:
                    raise StoreError(f"postgres store: {action} failed: {_describe(exc)}") from exc
                log.info("postgres store: %s failed (%s); retrying once", action, _describe(exc))
            except _DRIVER_ERRORS as exc:
                raise StoreError(f"postgres store: {action} failed: {_describe(exc)}") from exc
        raise AssertionError("unreachable")

    # -- writes ----------------------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> int:
        if not records:
            return 0
        written = 0
        merged: dict[tuple[str, str, str, int], dict[str, Value]] = {}
        for record in records:
            values = _clean(record.values)
            if not values:
                continue
            written += len(values)
            key = (record.tenant, record.chassis, record.msg_type, record.ts)
            known = merged.get(key)
            if known is None:
                merged[key] = values
            else:
                known.update(values)
        if not merged:
            return 0

        async def run(conn: asyncpg.Connection) -> None:
            ids = await self._series_ids(conn, merged)
            rows: list[tuple[int, int, float | None, int | None, str | None]] = []
            for (tenant, chassis, msg_type, ts), values in merged.items():
                for name, value in values.items():
                    series_id = ids[tenant, chassis, msg_type, name]
                    if type(value) is float:
                        rows.append((series_id, ts, value, None, None))
                    elif type(value) is int:
                        rows.append((series_id, ts, None, value, None))
                    else:
                        rows.append((series_id, ts, None, None, str(value)))
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "telemetry_stage", records=rows, columns=_STAGE_COLUMNS
                )
                await conn.execute(_UPSERT)

        await self._call("write", run)
        return written

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
        return known

    async def delete_before(self, ts_ms: int) -> int:
        if self.timescale:
            return await self._call("delete_before", lambda conn: self._drop_chunks(conn, ts_ms))
        deleted = 0
        lo = await self._call("delete_before", partial(_oldest_from, INT64_MIN))
        while lo is not None and lo < ts_ms:
            hi = min(lo + DELETE_SLICE_MS, ts_ms)
            count = await self._call("delete_before", partial(_delete_slice, lo, hi))
            deleted += count
            # After an empty slice (a gap in the data) jump to the next stored point.
            lo = hi if count else await self._call("delete_before", partial(_oldest_from, hi))
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
        width = bucket_width(start_ms, end_ms, buckets)
        result: Series = {name: [] for name in fields}
        if start_ms > end_ms or not result:
            return result
        args = (tenant, chassis, msg_type, start_ms, end_ms, width, list(result))
        rows = await self._call("downsample", lambda conn: conn.fetch(_EXTREMES, *args))
        for name, _k, low_ts, low_num, low_int, high_ts, high_num, high_int in rows:
            low = _value_of(low_num, low_int, None)
            high = _value_of(high_num, high_int, None)
            result[name].extend(extremes(low_ts, low, high_ts, high))
        return result

    async def latest_ts(self, tenant: str, chassis: str, msg_type: str) -> int | None:
        newest = await self._call(
            "latest_ts", lambda conn: conn.fetchval(_LATEST, tenant, chassis, msg_type)
        )
        return None if newest is None else int(newest)


async def _oldest_from(ts_ms: int, conn: asyncpg.Connection) -> int | None:
    """The oldest stored timestamp ``>= ts_ms`` (an index probe per series)."""
    oldest = await conn.fetchval(_OLDEST, ts_ms)
    return None if oldest is None else int(oldest)


async def _delete_slice(lo: int, hi: int, conn: asyncpg.Connection) -> int:
    """Delete the points with ``lo <= ts < hi`` in one transaction; how many."""
    status = await conn.execute("DELETE FROM telemetry_points WHERE ts >= $1 AND ts < $2", lo, hi)
    return int(status.split()[-1])


def _ts_of(point: tuple[int, Value]) -> int:
    return point[0]
