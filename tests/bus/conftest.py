"""Real servers for the bus backends, one per session, stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.kafka import KafkaServer, start_kafka
from tests.servers.redis import RedisServer, start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` on a free loopback port."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """A Tansu broker (in-memory storage) on a free loopback port."""
    server = start_kafka(tmp_path_factory.mktemp("kafka"))
    yield server
    server.stop()
