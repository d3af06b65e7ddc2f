"""The telemetry store: every record, for history and backfill."""

from __future__ import annotations

from livedata.backends import load
from livedata.store.base import Store

SUPPORTED_BACKENDS = {
    "memory": "livedata.store.memory:MemoryStore",
    "sqlite": "livedata.store.sqlite:SQLiteStore",
    "clickhouse": "livedata.store.clickhouse:ClickHouseStore",
    "postgresql": "livedata.store.postgres:PostgresStore",
}


def open_store(url: str) -> Store:
    """The store for ``url``; not started yet.

    ``memory://``, ``sqlite:///path/telemetry.db``, ``clickhouse://host:9000/database``,
    ``postgresql://user@host:5432/database``.
    """
    store: Store = load(SUPPORTED_BACKENDS, url, "store")
    return store


__all__ = ["SUPPORTED_BACKENDS", "Store", "open_store"]
