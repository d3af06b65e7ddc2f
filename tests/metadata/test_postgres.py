"""The metadata contract on a real PostgreSQL started by the tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from livedata.errors import BackendError
from livedata.metadata import Metadata
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


async def test_a_restarted_server_costs_no_failed_call(postgres: PostgresServer) -> None:
    """After PostgreSQL restarts, the next metadata call works (the pool's dead connection
    is replaced at checkout, not handed to the call)."""
    meta = Metadata(postgres.url())
    await meta.start()
    try:
        org = f"org-{uuid.uuid4().hex[:10]}"
        await meta.ensure_org(org, "Before")
        postgres.restart()
        await meta.ensure_org(org, "After")  # failed with "connection is closed" before
        assert org in [o.id for o in await meta.list_orgs()]
    finally:
        await meta.close()


async def test_a_stopped_server_is_a_backend_error(postgres: PostgresServer) -> None:
    """While PostgreSQL is stopped, a metadata call raises BackendError (what callers retry),
    not the driver's ConnectionRefusedError; it works again once the server is back."""
    meta = Metadata(postgres.url())
    await meta.start()
    try:
        await meta.list_orgs()
        postgres.stop()
        try:
            for _ in range(2):  # the pooled connection, then a new one
                with pytest.raises(BackendError):
                    await meta.list_orgs()
        finally:
            postgres.start()
        await meta.list_orgs()
    finally:
        await meta.close()
