"""The log (durable hand-off ingest → distribute) and pub/sub (live fan-out)."""

from __future__ import annotations

from livedata.backends import load
from livedata.bus.base import Log, PubSub

LOG_BACKENDS = {
    "memory": "livedata.bus.memory:MemoryLog",
    "kafka": "livedata.bus.kafka:KafkaLog",
}
PUBSUB_BACKENDS = {
    "memory": "livedata.bus.memory:MemoryPubSub",
    "redis": "livedata.bus.redis:RedisPubSub",
}


def open_log(url: str) -> Log:
    """The log for ``url``; not started yet."""
    log: Log = load(LOG_BACKENDS, url, "log")
    return log


def open_pubsub(url: str) -> PubSub:
    """The pub/sub for ``url``; not started yet."""
    pubsub: PubSub = load(PUBSUB_BACKENDS, url, "pubsub")
    return pubsub


__all__ = ["LOG_BACKENDS", "PUBSUB_BACKENDS", "Log", "PubSub", "open_log", "open_pubsub"]
