"""The spill journal: records ingest has accepted but the store has not yet confirmed, on disk.

While the store is slow or down, ingest writes each batch here instead (see
:mod:`livedata.pipeline.ingest`), appends it to the log and acknowledges it to the
device; a drainer then copies the journal to the store in order and deletes each
part only after the store confirmed it.  So the live path keeps going, devices keep
being acknowledged, and memory stays bounded however long the outage lasts.

The same machinery serves a second journal, the **log journal** (``purpose`` :data:`LOG`,
``{spill_dir}/ingest-log.db``): records stored and acknowledged that wait for the log
(Kafka) beyond what memory holds; ingest's appender drains it to the log, in order,
deleting each part once the log took it.  Everything below holds for both, with "the
store" read as "the log" for that one.

File: one SQLite database, ``{spill_dir}/ingest-spill.db``, with one row per
batch::

    spill (id INTEGER PRIMARY KEY AUTOINCREMENT,   -- append order; ids never reused
           accepted_ms INTEGER,                    -- when ingest accepted the batch's
                                                   -- oldest record (wall clock, ms)
           records INTEGER,                        -- records in the batch
           data BLOB)                              -- the records, JSON (orjson)

The data is the batch as a JSON array of record envelopes
(:func:`livedata.model.encode_records`, the log's codec), values as ingest normalised
them, so what is replayed is what would have been stored; rows of a journal written
before the envelope (arrays ``[tenant, chassis, msg_type, ts, kind, values]``) are read too.  WAL mode with ``synchronous=FULL``: an :meth:`SpillJournal.append` that
has returned survives a crash of the process *and* of the machine, which is what
acknowledging a device message promises.  The connection takes SQLite's exclusive
lock when it opens, so a second process pointed at the same directory fails at
start (:class:`~livedata.errors.BackendError`) instead of draining the same rows.

Bound: ``max_bytes`` counts the encoded records (the ``data`` column).  An append
that would pass it waits until the drainer has made room -- that is the
backpressure: ingest's writer waits, its in-memory queue (``ingest_queue``) fills,
and :meth:`~livedata.pipeline.ingest.Ingest.handle` waits, which slows the device
link down.  A single batch bigger than the whole bound is taken when the journal
is empty, so ingest never deadlocks.  On disk the file holds the bound plus SQLite's
page overhead (a few %) and a WAL of at most 64 MiB; freed pages are reused, and
when the journal drains empty after an outage (the file past 4 MiB) it is vacuumed
back to a few pages.

Order and idempotence: :meth:`~SpillJournal.read` returns the oldest rows;
:meth:`~SpillJournal.delete_through` deletes every row up to an id.  A crash
between the store write and the delete makes the next drain write the same
records again, which the store's idempotent writes absorb; deleting the same id
twice deletes nothing the second time.  At start the journal still holds what
the last process accepted and did not store: that is the replay.

Disk full or an unusable file: :class:`~livedata.errors.BackendError`, never a
``sqlite3`` exception; the caller (ingest) retries with backoff.  All SQLite work
runs on one thread of the journal's own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import Counter

from livedata import observe
from livedata.errors import BackendError
from livedata.model import Record, decode_records, encode_records

log = logging.getLogger("livedata.spill")

T = TypeVar("T")

SCHEMA_VERSION = 1
VACUUM_ABOVE_BYTES = 4 * 2**20
"""When the journal drains empty and its file is bigger than this, it is vacuumed."""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spill ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " accepted_ms INTEGER NOT NULL,"
    " records INTEGER NOT NULL,"
    " data BLOB NOT NULL)"
)


@dataclass(frozen=True, slots=True)
class Purpose:
    """What a journal holds records for: its file, its name in messages, what drains it."""

    file_name: str
    label: str
    drained_to: str
    """Where the drained records go (in messages: "ingest waits for ...")."""
    full: Counter
    """Counts the times an append waited because the journal was full."""


STORE = Purpose("ingest-spill.db", "spill journal", "the store", observe.SPILL_FULL)
"""The spill journal proper: records accepted, not yet confirmed by the store."""
LOG = Purpose("ingest-log.db", "log journal", "the log", observe.LOG_JOURNAL_FULL)
"""The log journal: records stored and acknowledged, not yet appended to the log (see
:mod:`livedata.pipeline.ingest`, "Log slow or down")."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """The oldest rows of the journal, read for the store: delete them with ``last_id``."""

    last_id: int
    records: list[Record]


def decode_row(data: bytes) -> list[Record]:
    """A row's records (:func:`~livedata.model.decode_records`: the envelopes, or the arrays
    ``[tenant, chassis, msg_type, ts, kind, values]`` a journal written before kept)."""
    return decode_records(data)


@contextlib.contextmanager
def _translated(label: str, path: Path, action: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise BackendError(
                f"{label} {path}: {action} failed: it is in use by another process "
                f"(give each ingest process its own spill_dir): {exc}"
            ) from exc
        raise BackendError(f"{label} {path}: {action} failed: {exc}") from exc
    except (sqlite3.Error, OSError) as exc:
        raise BackendError(f"{label} {path}: {action} failed: {exc}") from exc


class SpillJournal:
    """A bounded, ordered, durable journal of record batches (see the module doc); what
    for is its ``purpose``: :data:`STORE` (the default) or :data:`LOG`."""

    def __init__(self, directory: Path | str, max_bytes: int, purpose: Purpose = STORE) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.directory = Path(directory)
        self.purpose = purpose
        self.path = self.directory / purpose.file_name
        self.max_bytes = max_bytes
        self.records = 0
        """Records in the journal (accepted, not yet taken by what drains it)."""
        self.bytes = 0
        """Encoded bytes of those records, the quantity bounded by ``max_bytes``."""
        self.rows = 0
        self.oldest_ms: int | None = None
        """When the oldest record in the journal was accepted (ms), ``None`` when empty."""
        self.peak_records = 0
        self.peak_bytes = 0
        self.last_id = 0
        """The id of the row appended last by this process (0: none yet)."""
        self._conn: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._appended = asyncio.Event()
        self._deleted = asyncio.Event()

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    # --- lifecycle ----------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the file and take its lock; the rows found are the replay."""
        if self._conn is not None:
            return
        thread = ThreadPoolExecutor(1, thread_name_prefix="livedata-spill")
        try:
            conn, totals = await asyncio.get_running_loop().run_in_executor(thread, self._open)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        self._thread, self._conn = thread, conn
        self.rows, self.records, self.bytes, self.oldest_ms = totals
        self._peaks()
        if self.records:
            log.warning(
                "%s %s holds %d records (%d bytes) left by an earlier process; they go to %s first",
                self.purpose.label,
                self.path,
                self.records,
                self.bytes,
                self.purpose.drained_to,
            )

    def _open(self) -> tuple[sqlite3.Connection, tuple[int, int, int, int | None]]:
        with _translated(self.purpose.label, self.path, "opening"):
            self.directory.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=1.0, isolation_level=None)
            try:
                conn.execute("PRAGMA locking_mode=EXCLUSIVE")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA journal_size_limit=67108864")
                conn.execute("BEGIN IMMEDIATE")  # takes the lock, kept while open
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                tables = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
                if version != SCHEMA_VERSION and (version != 0 or tables):
                    raise BackendError(
                        f"{self.purpose.label} {self.path} has schema version {version}, not "
                        f"{SCHEMA_VERSION}; move it away (it may hold unstored records)"
                    )
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
                row = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(records), 0), COALESCE(SUM(length(data)), 0),"
                    " (SELECT accepted_ms FROM spill ORDER BY id LIMIT 1) FROM spill"
                ).fetchone()
            except BaseException:
                conn.close()
                raise
            return conn, (int(row[0]), int(row[1]), int(row[2]), row[3])

    async def close(self) -> None:
        conn, thread = self._conn, self._thread
        self._conn = self._thread = None
        if conn is None or thread is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(thread, conn.close)
        finally:
            thread.shutdown(wait=False)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn, thread = self._conn, self._thread
        if conn is None or thread is None:
            raise BackendError(f"{self.purpose.label} {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(thread, fn, conn)

    # --- writing ------------------------------------------------------------------

    def room_for(self, size: int) -> bool:
        """Whether ``size`` more encoded bytes fit (always, when the journal is empty)."""
        return self.rows == 0 or self.bytes + size <= self.max_bytes

    async def append(
        self, records: Sequence[Record], accepted: float | None = None, *, wait: bool = True
    ) -> int:
        """Add one batch durably; returns its encoded size.

        ``accepted`` is when ingest accepted its oldest record (``time.time()``; now
        when ``None``).  While the batch does not fit, waits for the drainer
        (``wait``) or raises :class:`JournalFull` (not ``wait``).
        """
        if not records:
            return 0
        data = encode_records(records)
        if not self.room_for(len(data)):
            if not wait:
                raise JournalFull(
                    f"{self.purpose.label} full: {self.bytes} + {len(data)} bytes > {self.max_bytes}"
                )
            self.purpose.full.inc()
            log.warning(
                "%s %s is full (%d records, %d of %d bytes): ingest waits for %s",
                self.purpose.label,
                self.path,
                self.records,
                self.bytes,
                self.max_bytes,
                self.purpose.drained_to,
            )
            while not self.room_for(len(data)):
                self._deleted.clear()
                await self._deleted.wait()
        accepted_ms = int((time.time() if accepted is None else accepted) * 1000)
        count = len(records)

        def insert(conn: sqlite3.Connection) -> int:
            with _translated(self.purpose.label, self.path, "append"):
                cursor = conn.execute(
                    "INSERT INTO spill (accepted_ms, records, data) VALUES (?, ?, ?)",
                    (accepted_ms, count, data),
                )
                return int(cursor.lastrowid or 0)

        self.last_id = await self._run(insert)
        if self.rows == 0:
            self.oldest_ms = accepted_ms
        self.rows += 1
        self.records += count
        self.bytes += len(data)
        self._peaks()
        self._appended.set()
        return len(data)

    def _peaks(self) -> None:
        self.peak_records = max(self.peak_records, self.records)
        self.peak_bytes = max(self.peak_bytes, self.bytes)

    # --- draining -----------------------------------------------------------------

    async def wait_for_rows(self) -> None:
        """Return once the journal has at least one row."""
        while self.rows == 0:
            self._appended.clear()
            await self._appended.wait()

    async def read(self, max_records: int) -> Chunk | None:
        """The oldest rows, up to ``max_records`` records (at least one row); ``None``: empty."""

        def select(conn: sqlite3.Connection) -> tuple[int, list[bytes]] | None:
            with _translated(self.purpose.label, self.path, "read"):
                cursor = conn.execute("SELECT id, records, data FROM spill ORDER BY id")
                try:
                    blobs: list[bytes] = []
                    last_id, taken = 0, 0
                    for row_id, count, data in cursor:
                        if blobs and taken + count > max_records:
                            break
                        last_id, taken = row_id, taken + count
                        blobs.append(data)
                finally:
                    cursor.close()
            return (last_id, blobs) if blobs else None

        found = await self._run(select)
        if found is None:
            return None
        last_id, blobs = found
        records: list[Record] = []
        for data in blobs:
            records.extend(decode_row(data))
        return Chunk(last_id, records)

    async def delete_through(self, last_id: int) -> int:
        """Delete every row with ``id <= last_id`` (the store has them); returns records deleted."""

        def delete(conn: sqlite3.Connection) -> tuple[int, int, int, int | None, bool]:
            with _translated(self.purpose.label, self.path, "delete"):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    rows, records, size = conn.execute(
                        "SELECT COUNT(*), COALESCE(SUM(records), 0),"
                        " COALESCE(SUM(length(data)), 0) FROM spill WHERE id <= ?",
                        (last_id,),
                    ).fetchone()
                    conn.execute("DELETE FROM spill WHERE id <= ?", (last_id,))
                    oldest = conn.execute(
                        "SELECT accepted_ms FROM spill ORDER BY id LIMIT 1"
                    ).fetchone()
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                emptied = oldest is None
                if emptied and rows:
                    self._shrink(conn)
            return rows, records, size, (oldest[0] if oldest else None), emptied

        rows, records, size, oldest, emptied = await self._run(delete)
        self.rows = 0 if emptied else self.rows - rows
        self.records = 0 if emptied else self.records - records
        self.bytes = 0 if emptied else self.bytes - size
        self.oldest_ms = oldest
        if rows:
            self._deleted.set()
        return int(records)

    def _shrink(self, conn: sqlite3.Connection) -> None:
        """Give the disk back after an outage: vacuum an empty journal whose file grew."""
        pages, page_size = (
            conn.execute("PRAGMA page_count").fetchone()[0],
            conn.execute("PRAGMA page_size").fetchone()[0],
        )
        if pages * page_size > VACUUM_ABOVE_BYTES:
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def stats(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "bytes": self.bytes,
            "maxBytes": self.max_bytes,
            "oldestMs": self.oldest_ms,
        }


class JournalFull(BackendError):
    """An append without waiting found no room."""


def spill_dir_of(setting: str, data_dir: Path, instance: str | None = None) -> Path | None:
    """Where the journal lives for the ``spill_dir`` setting; ``None``: no journal.

    ``auto`` (the default, whatever the store): ``{data_dir}/spill``, or
    ``{data_dir}/spill/{instance}`` for an ingest process with an identity of its own
    (its MQTT ``client_id``), so ingest processes sharing a data directory each have
    their journal and a restarted one finds its own; ``off``: none; else a path.
    """
    value = setting.strip()
    if value.lower() in ("", "off", "none", "false"):
        return None
    if value.lower() == "auto":
        return data_dir / "spill" / instance if instance else data_dir / "spill"
    return Path(value)
