"""The metadata contract on a real PostgreSQL started by the tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.metadata.contract import MetadataContract
from tests.servers.postgres import PostgresServer, start_postgres


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres(fsync=False)
    yield server
    server.stop(remove=True)


class TestPostgresMetadata(MetadataContract):
    @pytest.fixture(autouse=True)
    def _server(self, postgres: PostgresServer) -> None:
        self.server = postgres

    def make_url(self) -> str:
        return self.server.url()
