"""The telemetry store: every record, for history and backfill."""

from __future__ import annotations

from livedata.backends import load
from livedata.store.base import Store

SUPPORTED_BACKENDS = {
    "memory": "livedata.store.memory:MemoryStore",
    "sqlite": "livedata.store.sqlite:SQLiteStore",
}


def open_store(url: str) -> Store:
    """The store for ``url`` (``memory://``, ``sqlite:///path/telemetry.db``); not started yet."""
    store: Store = load(SUPPORTED_BACKENDS, url, "store")
    return store


__all__ = ["SUPPORTED_BACKENDS", "Store", "open_store"]
