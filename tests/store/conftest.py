"""Real database servers for the store backends, one per session, stopped at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.clickhouse import ClickHouseServer, start_clickhouse
from tests.servers.postgres import PostgresServer, start_postgres


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """A ``clickhouse-server`` on free loopback ports, its files in a temporary directory."""
    server = start_clickhouse(tmp_path_factory.mktemp("clickhouse"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster on a free loopback port (fsync off), removed afterwards."""
    server = start_postgres(fsync=False)
    yield server
    server.stop(remove=True)
