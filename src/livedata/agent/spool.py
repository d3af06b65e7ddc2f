"""The agent's bounded on-disk queue (SQLite) for messages the broker did not take.

One table ``spool(id, msg_type, payload)``; ``payload`` is the :mod:`livedata.codec`
encoding, already marked ``backfill``.  Rows leave only when :meth:`Spool.delete` is
called after the broker acknowledged them, so a crash between send and delete resends
(stores write idempotently): at least once, never lost while it fits.

Under stress:

- **Full.**  Bounds are ``max_rows`` and ``max_bytes`` (the sum of payload sizes).  A
  push over a bound deletes the **oldest** rows first — the newest data is the most
  useful when the outage ends — and counts them in :attr:`Spool.dropped` (kept in the
  file, so the count survives restarts).  Each drop is logged as a warning: the first
  one at once, then at most one summary line a minute while the spool stays full.  A
  single payload larger than ``max_bytes`` is not stored at all (counted and logged
  the same way) rather than emptying the whole spool for it.
- **Unreadable file** (not a database, e.g. after a disk fault): it is renamed
  ``<name>.corrupt-<unix time>`` and a new, empty spool is started, logged as an
  error; the agent keeps running.
- **Disk full / I/O errors** while pushing raise :class:`sqlite3.Error`; the agent
  counts the message as lost and logs it (see :mod:`livedata.agent.agent`).

Synchronous sqlite3 (WAL): each operation is one small transaction (well under a
millisecond on local disk), cheap enough to run on the agent's event loop.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("livedata.agent.spool")

DROP_LOG_EVERY_S = 60.0
"""While the spool stays full, drops are summed into one warning per this many seconds."""


class Spool:
    def __init__(
        self, path: Path | str, max_rows: int = 100_000, max_bytes: int = 64 << 20
    ) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ValueError("a spool needs room for at least one row and one byte")
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._unlogged = 0
        self._logged_at = float("-inf")
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if self.path == ":memory:":
                raise
            aside = f"{self.path}.corrupt-{int(time.time())}"
            log.error("spool %s is unreadable (%s); moved to %s, starting empty", path, exc, aside)
            Path(self.path).replace(aside)
            for suffix in ("-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)
            self._db = self._open()
        rows, size = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM spool"
        ).fetchone()
        self.rows, self.bytes = int(rows), int(size)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "msg_type TEXT NOT NULL, payload BLOB NOT NULL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER)")
            db.execute("INSERT OR IGNORE INTO counters VALUES ('dropped', 0)")
            db.execute("SELECT count(*) FROM spool").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    @property
    def dropped(self) -> int:
        """Messages dropped so far because the spool was full (survives restarts)."""
        return int(self._db.execute("SELECT n FROM counters WHERE name='dropped'").fetchone()[0])

    def push(self, msg_type: str, payload: bytes) -> int:
        """Append one message, first dropping the oldest rows while a bound would be exceeded.

        Returns how many messages were dropped (the oldest rows, or this payload itself
        when it alone is larger than ``max_bytes``).
        """
        db = self._db
        if len(payload) > self.max_bytes:
            db.execute("UPDATE counters SET n = n + 1 WHERE name='dropped'")
            self._note_dropped(1, f"a {len(payload)}-byte message larger than the spool")
            return 1
        db.execute("BEGIN IMMEDIATE")
        try:
            dropped = 0
            while self.rows and (
                self.rows + 1 > self.max_rows or self.bytes + len(payload) > self.max_bytes
            ):
                row = db.execute(
                    "SELECT id, length(payload) FROM spool ORDER BY id LIMIT 1"
                ).fetchone()
                db.execute("DELETE FROM spool WHERE id = ?", (row[0],))
                self.rows -= 1
                self.bytes -= int(row[1])
                dropped += 1
            if dropped:
                db.execute("UPDATE counters SET n = n + ? WHERE name='dropped'", (dropped,))
            db.execute("INSERT INTO spool (msg_type, payload) VALUES (?, ?)", (msg_type, payload))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            # the counts may be off by the rows deleted before the failure: recount
            self.rows, self.bytes = (
                int(v)
                for v in db.execute(
                    "SELECT count(*), coalesce(sum(length(payload)), 0) FROM spool"
                ).fetchone()
            )
            raise
        self.rows += 1
        self.bytes += len(payload)
        if dropped:
            self._note_dropped(dropped, "the oldest spooled message(s): the spool is full")
        return dropped

    def _note_dropped(self, n: int, what: str) -> None:
        self._unlogged += n
        now = time.monotonic()
        if now - self._logged_at < DROP_LOG_EVERY_S:
            return
        log.warning(
            "spool %s: dropped %d message(s) — %s (bounds %d rows, %d bytes; %d dropped in all)",
            self.path,
            self._unlogged,
            what,
            self.max_rows,
            self.max_bytes,
            self.dropped,
        )
        self._unlogged = 0
        self._logged_at = now

    def oldest(self, n: int) -> list[tuple[int, str, bytes]]:
        """Up to ``n`` oldest rows ``(id, msg_type, payload)`` (they stay until deleted)."""
        return [
            (int(i), str(t), bytes(p))
            for i, t, p in self._db.execute(
                "SELECT id, msg_type, payload FROM spool ORDER BY id LIMIT ?", (n,)
            )
        ]

    def delete(self, row_id: int) -> None:
        """Remove one row (after its PUBACK); a row already gone (dropped) is ignored."""
        row = self._db.execute(
            "SELECT length(payload) FROM spool WHERE id = ?", (row_id,)
        ).fetchone()
        if row is None:
            return
        self._db.execute("DELETE FROM spool WHERE id = ?", (row_id,))
        self.rows -= 1
        self.bytes -= int(row[0])

    def close(self) -> None:
        if self._unlogged:
            self._logged_at = float("-inf")
            self._note_dropped(0, "the oldest spooled message(s): the spool was full")
        self._db.close()
