"""The gateway while its metadata database (PostgreSQL) is down: credentials that cannot be
checked get 503, not 500, and the first request after the database is back works."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from livedata.auth import credentials as cred
from tests.conftest import Server, start_demo, stop
from tests.security.servers import env
from tests.servers.postgres import PostgresServer, start_postgres


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres(fsync=False)
    yield server
    server.stop(remove=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[Server]:
    data: Path = tmp_path_factory.mktemp("metadata-down")
    with env(LIVEDATA_METADATA=postgres.url()):
        demo = start_demo(data, "--machines", "1")
    yield demo
    stop(demo)


def _unknown() -> dict[str, str]:
    """A token never seen (each is looked up in the database, not in a cache)."""
    return {"Authorization": f"Bearer {cred.TOKEN_PREFIX}{secrets.token_hex(16)}"}


def test_unverifiable_credentials_get_503_and_the_restarted_database_serves_again(
    server: Server, postgres: PostgresServer
) -> None:
    """A token the gateway must look up while PostgreSQL is stopped gets 503 ``unavailable``;
    once PostgreSQL is back, the very next request is answered from it (401: unknown)."""
    url = f"{server.url}/api/resources/demo/machines"
    assert httpx.get(url, headers=_unknown(), timeout=30).status_code == 401
    postgres.stop()
    try:
        down = httpx.get(url, headers=_unknown(), timeout=30)
        assert down.status_code == 503, down.text
        assert down.json()["error"]["code"] == "unavailable"
        assert "SELECT" not in down.text and "token" not in down.text.lower()  # no details
    finally:
        postgres.start()
    assert httpx.get(url, headers=_unknown(), timeout=30).status_code == 401
