"""The agent's bounded on-disk queue (SQLite) for messages the broker could not take.

One table ``spool(id, msg_type, payload)``; ``payload`` is the :mod:`livedata.codec`
encoding, already marked ``backfill``.  Bounds: ``max_rows`` and ``max_bytes`` (the sum
of payload sizes); a push over a bound deletes the oldest rows first and counts them
in :attr:`Spool.dropped` (also kept in the file, so the count survives restarts).
Rows leave only when :meth:`Spool.delete` is called after the broker acknowledged
them, so a crash between send and delete resends (stores write idempotently).
Synchronous sqlite3: each operation is one small transaction (well under a
millisecond on local disk), cheap enough to run on the agent's event loop.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class Spool:
    def __init__(
        self, path: Path | str, max_rows: int = 100_000, max_bytes: int = 64 << 20
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "msg_type TEXT NOT NULL, payload BLOB NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n INTEGER)")
        self._db.execute("INSERT OR IGNORE INTO counters VALUES ('dropped', 0)")
        rows, size = self._db.execute(
            "SELECT count(*), coalesce(sum(length(payload)), 0) FROM spool"
        ).fetchone()
        self.rows, self.bytes = int(rows), int(size)

    @property
    def dropped(self) -> int:
        return int(self._db.execute("SELECT n FROM counters WHERE name='dropped'").fetchone()[0])

    def push(self, msg_type: str, payload: bytes) -> None:
        """Append one message, dropping the oldest while a bound would be exceeded."""
        db = self._db
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
            self.rows += 1
            self.bytes += len(payload)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def oldest(self, n: int) -> list[tuple[int, str, bytes]]:
        """Up to ``n`` oldest rows ``(id, msg_type, payload)`` (they stay until deleted)."""
        return [
            (int(i), str(t), bytes(p))
            for i, t, p in self._db.execute(
                "SELECT id, msg_type, payload FROM spool ORDER BY id LIMIT ?", (n,)
            )
        ]

    def delete(self, row_id: int) -> None:
        row = self._db.execute(
            "SELECT length(payload) FROM spool WHERE id = ?", (row_id,)
        ).fetchone()
        if row is None:
            return
        self._db.execute("DELETE FROM spool WHERE id = ?", (row_id,))
        self.rows -= 1
        self.bytes -= int(row[0])

    def close(self) -> None:
        self._db.close()
