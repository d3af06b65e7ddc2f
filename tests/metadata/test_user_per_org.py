"""Usernames unique per organisation (migration 0007), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from livedata.auth import Role
from livedata.errors import Conflict
from livedata.metadata import MIGRATIONS, Metadata
from livedata.metadata.accounts import Accounts
from tests.servers.postgres import PostgresServer, start_postgres

PASSWORD = "a long enough password"


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres(fsync=False)
    yield server
    server.stop(remove=True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def accounts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Accounts]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'meta.db'}"
    else:
        url = request.getfixturevalue("postgres").url()
    meta = Metadata(url)
    await meta.start()
    for org in ("orga", "orgb"):
        await meta.ensure_org(org, org)
    try:
        yield Accounts(meta)
    finally:
        async with meta.engine.begin() as conn:
            await conn.execute(text("DELETE FROM users"))
        await meta.close()


async def test_same_username_in_two_organisations(accounts: Accounts) -> None:
    """Org B may create a user org A has; a second one in the same org is 409 naming only it."""
    a = await accounts.create_user("orga", "alice", PASSWORD, Role.admin)
    b = await accounts.create_user("orgb", "alice", PASSWORD + "!", Role.viewer)
    assert a.id != b.id
    with pytest.raises(Conflict, match="taken in organisation 'orgb'"):
        await accounts.create_user("orgb", "alice", PASSWORD, Role.viewer)
    assert (await accounts.find_user("alice", "orgb")).id == b.id  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="several organisations"):
        await accounts.find_user("alice")


async def test_login_finds_the_user_whose_password_matches(accounts: Accounts) -> None:
    """Without an organisation the password picks the user; with one, only that org's."""
    await accounts.create_user("orga", "bob", PASSWORD, Role.admin)
    await accounts.create_user("orgb", "bob", PASSWORD + "-b", Role.viewer)
    assert (await accounts.check_password("bob", PASSWORD)).org_id == "orga"  # type: ignore[union-attr]
    user_b = await accounts.check_password("bob", PASSWORD + "-b")
    assert user_b is not None and user_b.org_id == "orgb"
    assert await accounts.check_password("bob", PASSWORD, "orgb") is None
    assert await accounts.check_password("bob", "wrong password") is None
    assert await accounts.check_password("nobody", PASSWORD) is None


def test_sqlite_migration_keeps_sessions_and_tokens(tmp_path: Path) -> None:
    """Upgrading a 0004 database rebuilds users and keeps every row that references them."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0004")
        conn.execute(text("INSERT INTO orgs (id, name) VALUES ('o1', 'O1'), ('o2', 'O2')"))
        conn.execute(
            text(
                "INSERT INTO users (id, org_id, username, password_hash, role, disabled, "
                "created_ms) VALUES (7, 'o1', 'carol', 'h', 'admin', 0, 1)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO sessions (id_hash, user_id, csrf, created_ms, expires_ms) "
                "VALUES ('s1', 7, 'c', 1, 2)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO api_tokens (user_id, name, token_hash, prefix, created_ms) "
                "VALUES (7, 't', 'th', 'p', 1)"
            )
        )
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        config.attributes["connection"] = conn
        command.upgrade(config, "0007")
    with engine.begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM sessions")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM api_tokens")).scalar() == 1
        conn.execute(
            text(
                "INSERT INTO users (org_id, username, password_hash, role, disabled, "
                "created_ms) VALUES ('o2', 'carol', 'h', 'viewer', 0, 1)"
            )
        )
        assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    engine.dispose()
