"""Users, browser sessions, API tokens, device secrets and the audit log (migration 0004).

Only hashes of secrets are stored (see :mod:`livedata.auth.credentials`).  Lookups
of sessions and tokens are cached for :data:`CACHE_SECONDS` per process, so a
logout or a revocation takes effect at once in the process that did it and within
that time in the others.  Usernames are unique per organisation (migration 0007):
another organisation may have a user of the same name, and nothing tells either
about the other's users.  Everything is scoped by organisation: a user id, token id or machine of
another organisation is :class:`~livedata.errors.NotFound`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    delete,
    or_,
    select,
)
from sqlalchemy.orm import Mapped, mapped_column

from livedata.auth import Principal, Role
from livedata.auth import credentials as cred
from livedata.errors import Conflict, NotFound
from livedata.metadata import Metadata
from livedata.metadata.tables import Base, Machine

CACHE_SECONDS = 5.0
CHECK_CHUNK = 500
"""Credentials per query of :meth:`Accounts.still_valid` (SQLite's bound-parameter limit)."""
LOGIN_CANDIDATES = 5
"""A login without an organisation tries the password on at most this many same-named users."""
AUDIT_MAX_LIST = 1000


def now_ms() -> int:
    return int(time.time() * 1000)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("org_id", "username", name="uq_users_org_username"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"), index=True)
    username: Mapped[str] = mapped_column(String(64))
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class BrowserSession(Base):
    __tablename__ = "sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int] = mapped_column(BigInteger)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    expires_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_org_ts", "org_id", "ts_ms"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id", ondelete="CASCADE"))
    ts_ms: Mapped[int] = mapped_column(BigInteger)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(500))
    address: Mapped[str] = mapped_column(String(64))
    details: Mapped[Any] = mapped_column(JSON, nullable=True)


def user_dict(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "org": user.org_id,
        "username": user.username,
        "role": user.role,
        "disabled": user.disabled,
        "createdMs": user.created_ms,
    }


def token_dict(token: ApiToken, username: str) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "user": username,
        "prefix": token.prefix,
        "createdMs": token.created_ms,
        "expiresMs": token.expires_ms,
        "revoked": token.revoked_ms is not None,
    }


def audit_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "ts": entry.ts_ms,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "address": entry.address,
        "details": entry.details,
    }


def _principal(user: User, via: str, credential: str = "", csrf: str = "") -> Principal | None:
    if user.disabled:
        return None
    return Principal(user.id, user.username, user.org_id, Role[user.role], via, credential, csrf)


class Accounts:
    """The security tables of one metadata database."""

    def __init__(self, meta: Metadata) -> None:
        self.meta = meta
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._loading: dict[str, asyncio.Future[Principal | None]] = {}

    # users -------------------------------------------------------------------

    async def create_user(self, org: str, username: str, password: str, role: Role) -> User:
        await self.meta.require_org(org)
        hashed = await asyncio.to_thread(cred.hash_password, password)
        user = User(
            org_id=org,
            username=username,
            password_hash=hashed,
            role=role.name,
            disabled=False,
            created_ms=now_ms(),
        )
        try:
            async with self.meta.session() as s:
                s.add(user)
        except Conflict:
            raise Conflict(f"username {username!r} is taken in organisation {org!r}") from None
        return user

    async def list_users(self, org: str) -> list[User]:
        async with self.meta.session() as s:
            query = select(User).where(User.org_id == org).order_by(User.id)
            return list((await s.scalars(query)).all())

    async def first_admin(self) -> User | None:
        async with self.meta.session() as s:
            query = select(User).where(User.role == Role.admin.name).order_by(User.id).limit(1)
            return await s.scalar(query)

    async def get_user(self, org: str, user_id: int) -> User:
        async with self.meta.session() as s:
            user = await s.get(User, user_id)
        if user is None or user.org_id != org:
            raise NotFound(f"user {user_id} not found")
        return user

    async def find_user(self, username: str, org: str | None = None) -> User | None:
        """The user ``username`` of ``org``; without ``org`` the only one of that name
        (:class:`Conflict` when several organisations have one)."""
        users = await self.find_users(username, org)
        if len(users) > 1:
            raise Conflict(f"username {username!r} exists in several organisations: name one")
        return users[0] if users else None

    async def find_users(self, username: str, org: str | None = None) -> list[User]:
        """Users named ``username`` (of ``org`` only, when given), at most
        :data:`LOGIN_CANDIDATES`, oldest first."""
        query = select(User).where(User.username == username)
        if org is not None:
            query = query.where(User.org_id == org)
        async with self.meta.session() as s:
            return list((await s.scalars(query.order_by(User.id).limit(LOGIN_CANDIDATES))).all())

    async def update_user(
        self,
        org: str,
        user_id: int,
        role: Role | None = None,
        password: str | None = None,
        disabled: bool | None = None,
    ) -> User:
        hashed = await asyncio.to_thread(cred.hash_password, password) if password else None
        async with self.meta.session() as s:
            user = await s.get(User, user_id)
            if user is None or user.org_id != org:
                raise NotFound(f"user {user_id} not found")
            if role is not None:
                user.role = role.name
            if hashed is not None:
                user.password_hash = hashed
            if disabled is not None:
                user.disabled = disabled
            if hashed is not None or disabled:
                await s.execute(delete(BrowserSession).where(BrowserSession.user_id == user_id))
        self._cache.clear()
        return user

    async def delete_user(self, org: str, user_id: int) -> None:
        async with self.meta.session() as s:
            user = await s.get(User, user_id)
            if user is None or user.org_id != org:
                raise NotFound(f"user {user_id} not found")
            await s.execute(delete(BrowserSession).where(BrowserSession.user_id == user_id))
            await s.execute(delete(ApiToken).where(ApiToken.user_id == user_id))
            await s.delete(user)
        self._cache.clear()

    async def check_password(
        self, username: str, password: str, org: str | None = None
    ) -> User | None:
        """The enabled user named ``username`` (in ``org``, when given) whose password is
        ``password``; ``None`` otherwise, at the cost of at least one hash either way."""
        candidates = await self.find_users(username, org)
        if not candidates:
            await asyncio.to_thread(cred.verify_password, None, password)
        for user in candidates:
            ok = await asyncio.to_thread(cred.verify_password, user.password_hash, password)
            if ok and not user.disabled:
                return user
        return None

    # sessions ------------------------------------------------------------------

    async def create_session(self, user: User, lifetime_s: float) -> tuple[str, str]:
        """A new browser session: (session id for the cookie, CSRF token)."""
        raw, csrf = cred.new_secret(), cred.new_secret()
        stamp = now_ms()
        row = BrowserSession(
            id_hash=cred.digest(raw),
            user_id=user.id,
            csrf=csrf,
            created_ms=stamp,
            expires_ms=stamp + int(lifetime_s * 1000),
        )
        async with self.meta.session() as s:
            s.add(row)
            await s.execute(delete(BrowserSession).where(BrowserSession.expires_ms < stamp))
        return raw, csrf

    async def end_session(self, id_hash: str) -> None:
        async with self.meta.session() as s:
            await s.execute(delete(BrowserSession).where(BrowserSession.id_hash == id_hash))
        self._cache.pop("s:" + id_hash, None)

    async def session_principal(self, id_hash: str) -> Principal | None:
        """The user of a live session, by the hash of its id."""

        async def load() -> Principal | None:
            async with self.meta.session() as s:
                row = await s.get(BrowserSession, id_hash)
                if row is None or row.expires_ms < now_ms():
                    return None
                user = await s.get(User, row.user_id)
            return _principal(user, "session", id_hash, row.csrf) if user else None

        return await self._cached("s:" + id_hash, load)

    # API tokens ----------------------------------------------------------------

    async def create_token(
        self, user_id: int, name: str, expires_ms: int | None = None, raw: str | None = None
    ) -> tuple[ApiToken, str]:
        """A new token of ``user_id``: (its row, the token itself, shown once)."""
        raw = raw or cred.new_token()
        row = ApiToken(
            user_id=user_id,
            name=name,
            token_hash=cred.digest(raw),
            prefix=raw[:8],
            created_ms=now_ms(),
            expires_ms=expires_ms,
            revoked_ms=None,
        )
        async with self.meta.session() as s:
            s.add(row)
        return row, raw

    async def list_tokens(self, org: str, user_id: int | None = None) -> list[tuple[ApiToken, str]]:
        async with self.meta.session() as s:
            query = (
                select(ApiToken, User.username)
                .join(User, User.id == ApiToken.user_id)
                .where(User.org_id == org)
                .order_by(ApiToken.id)
            )
            if user_id is not None:
                query = query.where(ApiToken.user_id == user_id)
            return [(t, u) for t, u in (await s.execute(query)).all()]

    async def revoke_token(self, org: str, token_id: int, user_id: int | None = None) -> ApiToken:
        """Revoke a token of ``org`` (of ``user_id`` only, when given)."""
        async with self.meta.session() as s:
            token = await s.get(ApiToken, token_id)
            owner = await s.get(User, token.user_id) if token else None
            if (
                token is None
                or owner is None
                or owner.org_id != org
                or (user_id is not None and owner.id != user_id)
            ):
                raise NotFound(f"token {token_id} not found")
            if token.revoked_ms is None:
                token.revoked_ms = now_ms()
            self._cache.pop("t:" + token.token_hash, None)
            return token

    async def token_by_raw(self, raw: str) -> ApiToken | None:
        async with self.meta.session() as s:
            return await s.scalar(select(ApiToken).where(ApiToken.token_hash == cred.digest(raw)))

    async def token_principal(self, token_hash: str) -> Principal | None:
        """The user of a valid token, by the token's hash."""

        async def load() -> Principal | None:
            async with self.meta.session() as s:
                token = await s.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash))
                if token is None or token.revoked_ms is not None:
                    return None
                if token.expires_ms is not None and token.expires_ms < now_ms():
                    return None
                user = await s.get(User, token.user_id)
            return _principal(user, "token", token_hash) if user else None

        return await self._cached("t:" + token_hash, load)

    async def user_principal(self, user_id: int, via: str) -> Principal | None:
        async def load() -> Principal | None:
            async with self.meta.session() as s:
                user = await s.get(User, user_id)
            return _principal(user, via) if user else None

        return await self._cached(f"u:{user_id}:{via}", load)

    async def still_valid(
        self, sessions: Collection[str], tokens: Collection[str], users: Collection[int]
    ) -> tuple[set[str], set[str], set[int]]:
        """Which of these are still valid, read together (one query per kind and
        :data:`CHECK_CHUNK` of them, not one per credential): session hashes of
        unexpired sessions, token hashes of unrevoked unexpired tokens, user ids, each
        of an existing user who is not disabled (what :meth:`session_principal`,
        :meth:`token_principal` and :meth:`user_principal` accept), not cached."""
        now = now_ms()
        enabled = User.disabled.is_(False)
        async with self.meta.session() as s:

            async def valid(items: Collection[Any], query: Callable[[Any], Any]) -> set[Any]:
                found: set[Any] = set()
                for chunk in _chunks(sorted(items)):
                    found.update(await s.scalars(query(chunk)))
                return found

            valid_sessions = await valid(
                sessions,
                lambda chunk: (
                    select(BrowserSession.id_hash)
                    .join(User, User.id == BrowserSession.user_id)
                    .where(
                        BrowserSession.id_hash.in_(chunk), BrowserSession.expires_ms >= now, enabled
                    )
                ),
            )
            valid_tokens = await valid(
                tokens,
                lambda chunk: (
                    select(ApiToken.token_hash)
                    .join(User, User.id == ApiToken.user_id)
                    .where(
                        ApiToken.token_hash.in_(chunk),
                        ApiToken.revoked_ms.is_(None),
                        or_(ApiToken.expires_ms.is_(None), ApiToken.expires_ms >= now),
                        enabled,
                    )
                ),
            )
            valid_users = await valid(
                users, lambda chunk: select(User.id).where(User.id.in_(chunk), enabled)
            )
        return valid_sessions, valid_tokens, valid_users

    async def _cached(self, key: str, load: Any) -> Principal | None:
        """``load()``'s answer for ``key``, cached; concurrent misses share one lookup
        (500 connections opened at once with one token make one database read)."""
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        pending = self._loading.get(key)
        if pending is None:
            pending = self._loading[key] = asyncio.ensure_future(load())
            pending.add_done_callback(lambda _f: self._loading.pop(key, None))
        principal: Principal | None = await asyncio.shield(pending)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now, principal)
        return principal

    # device secrets --------------------------------------------------------------

    async def set_device_secret(self, org: str, chassis: str) -> str:
        """A new secret for a machine (the old one stops working); returned once."""
        secret = cred.new_secret()
        async with self.meta.session() as s:
            machine = await s.get(Machine, (org, chassis))
            if machine is None:
                raise NotFound(f"machine {chassis!r} not found in organisation {org!r}")
            machine.secret_hash = cred.device_secret_hash(secret)
        return secret

    async def check_device_secret(self, org: str, chassis: str, secret: str) -> bool:
        async with self.meta.session() as s:
            machine = await s.get(Machine, (org, chassis))
        if machine is None or machine.disabled:
            return False
        return cred.verify_device_secret(machine.secret_hash, secret)

    async def device_credentials(self) -> list[tuple[str, str, str]]:
        """(org, chassis, secret hash) of every machine that has a secret and is enabled."""
        async with self.meta.session() as s:
            rows = await s.execute(
                select(Machine.org_id, Machine.chassis_id, Machine.secret_hash)
                .where(Machine.secret_hash.is_not(None), Machine.disabled.is_(False))
                .order_by(Machine.org_id, Machine.chassis_id)
            )
            return [(o, c, h) for o, c, h in rows.all() if h is not None]

    # audit -------------------------------------------------------------------------

    async def audit(
        self,
        org: str,
        actor: str,
        action: str,
        target: str,
        address: str = "",
        details: Any = None,
    ) -> AuditEntry:
        entry = AuditEntry(
            org_id=org,
            ts_ms=now_ms(),
            actor=actor[:200],
            action=action[:64],
            target=target[:500],
            address=address[:64],
            details=details,
        )
        async with self.meta.session() as s:
            s.add(entry)
        return entry

    async def list_audit(self, org: str, limit: int = 100) -> list[AuditEntry]:
        limit = max(1, min(limit, AUDIT_MAX_LIST))
        async with self.meta.session() as s:
            query = (
                select(AuditEntry)
                .where(AuditEntry.org_id == org)
                .order_by(AuditEntry.ts_ms.desc(), AuditEntry.id.desc())
                .limit(limit)
            )
            return list((await s.scalars(query)).all())


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + CHECK_CHUNK] for i in range(0, len(items), CHECK_CHUNK)]
