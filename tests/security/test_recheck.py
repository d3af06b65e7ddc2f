"""The periodic re-check of live connections' credentials: all of them read together.

Another gateway (here: a second :class:`Accounts` on the same SQLite database) ends a
session, revokes a token, disables a user; :meth:`Security.recheck` of this one closes
exactly the live connections whose credential is no longer valid, with a fixed number
of queries however many connections there are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import event

from livedata.auth import Role
from livedata.auth import credentials as cred
from livedata.gateway.security import Security
from livedata.metadata import Metadata
from livedata.metadata.accounts import CHECK_CHUNK, Accounts
from livedata.settings import Settings

PASSWORD = "a long enough password"


class Tasks:
    """A supervisor that runs nothing (the test calls ``recheck`` itself)."""

    def spawn(self, name: str, factory: object) -> None:
        raise AssertionError(f"{name} was not to be started")


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[Metadata]:
    meta = Metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    await meta.start()
    await meta.ensure_org("orga", "orga")
    yield meta
    await meta.close()


def security(meta: Metadata, tmp_path: Path) -> Security:
    settings = Settings(data_dir=tmp_path, live_per_user=100_000)
    return Security(settings, meta, Tasks(), lambda org, table, row: None)  # type: ignore[arg-type]


def count_queries(meta: Metadata) -> list[str]:
    statements: list[str] = []
    event.listen(
        meta.engine.sync_engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: statements.append(statement),
    )
    return statements


async def test_revoked_ended_and_disabled_credentials_close_their_connections(
    meta: Metadata, tmp_path: Path
) -> None:
    """Ending a session, revoking a token and disabling a user elsewhere closes exactly
    their live connections at the next re-check; the others stay."""
    sec = security(meta, tmp_path)
    other = Accounts(meta)  # another gateway's view of the same database
    alice = await other.create_user("orga", "alice", PASSWORD, Role.viewer)
    bob = await other.create_user("orga", "bob", PASSWORD, Role.viewer)
    carol = await other.create_user("orga", "carol", PASSWORD, Role.viewer)
    kept_session, _ = await other.create_session(alice, 3600)
    ended_session, _ = await other.create_session(alice, 3600)
    _, kept_token = await other.create_token(bob.id, "kept")
    revoked_row, revoked_token = await other.create_token(bob.id, "revoked")

    closed: list[str] = []
    principals = {
        "kept session": await sec.accounts.session_principal(cred.digest(kept_session)),
        "ended session": await sec.accounts.session_principal(cred.digest(ended_session)),
        "kept token": await sec.accounts.token_principal(cred.digest(kept_token)),
        "revoked token": await sec.accounts.token_principal(cred.digest(revoked_token)),
        "alice live-token": await sec.accounts.user_principal(alice.id, "live-token"),
        "carol live-token": await sec.accounts.user_principal(carol.id, "live-token"),
    }
    for name, principal in principals.items():
        assert principal is not None, name
        for _ in range(3):  # several connections per credential
            sec.open_live(principal, lambda why, name=name: closed.append(f"{name}: {why}"))

    assert await sec.recheck() == 0 and closed == []

    await other.end_session(cred.digest(ended_session))
    await other.revoke_token("orga", revoked_row.id)
    await other.update_user("orga", carol.id, disabled=True)
    assert await sec.recheck() == 9
    assert sorted(set(closed)) == [
        "carol live-token: session ended",
        "ended session: session ended",
        "revoked token: session ended",
    ]
    assert len(closed) == 9


async def test_a_closed_connection_is_not_closed_again(meta: Metadata, tmp_path: Path) -> None:
    """A connection that ended while the re-check read the database is not closed by it."""
    sec = security(meta, tmp_path)
    user = await sec.accounts.create_user("orga", "dave", PASSWORD, Role.viewer)
    principal = await sec.accounts.user_principal(user.id, "live-token")
    assert principal is not None
    closed: list[str] = []
    handle = sec.open_live(principal, closed.append)
    assert handle is not None
    await sec.accounts.update_user("orga", user.id, disabled=True)
    sec.close_live(handle)
    assert await sec.recheck() == 0 and closed == []


async def test_the_recheck_reads_in_a_fixed_number_of_queries(
    meta: Metadata, tmp_path: Path
) -> None:
    """803 connections (400 sessions, 400 tokens, 3 users) are checked in one query per
    kind and CHECK_CHUNK credentials, not one or two per connection."""
    sec = security(meta, tmp_path)
    user = await sec.accounts.create_user("orga", "erin", PASSWORD, Role.viewer)
    for i in range(400):
        session, _ = await sec.accounts.create_session(user, 3600)
        _, token = await sec.accounts.create_token(user.id, f"t{i}")
        for principal in (
            await sec.accounts.session_principal(cred.digest(session)),
            await sec.accounts.token_principal(cred.digest(token)),
        ):
            assert principal is not None
            sec.open_live(principal, lambda why: None)
    users = [
        await sec.accounts.create_user("orga", f"u{i}", PASSWORD, Role.viewer) for i in range(3)
    ]
    for u in users:
        principal = await sec.accounts.user_principal(u.id, "live-token")
        assert principal is not None
        sec.open_live(principal, lambda why: None)
    statements = count_queries(meta)
    assert await sec.recheck() == 0
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    per_kind = -(-400 // CHECK_CHUNK)
    assert len(selects) == 2 * per_kind + 1
