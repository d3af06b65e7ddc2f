"""Authentication and authorisation of every HTTP request and live connection.

:class:`SecurityMiddleware` wraps the gateway app (REST, WebSocket, SSE); Socket.IO
calls :meth:`Security.authenticate` from its connect handler; the live WebSocket,
served by the server layer without the app, asks :meth:`Security.admit_websocket`
(the same checks, through :meth:`Security.refusal`).  For each request it
finds the route's rule (:mod:`livedata.auth.policy`), authenticates the caller, and
refuses before any data flows:

- no or bad credentials: HTTP **401** ``unauthenticated``; a WebSocket is accepted
  and closed at once with **1008** (policy violation) and the reason
  ``authentication required``; a page redirects to the login page;
- another organisation in the URL: **404** ``not_found``, the same answer as for an
  unknown id; too low a role: **403** ``forbidden``;
- a state-changing request authenticated by the session cookie without the
  matching ``X-CSRF-Token`` header: **403** ``csrf_failed``;
- a browser WebSocket whose ``Origin`` is neither the gateway's own nor in
  ``allowed_origins``: closed with 1008 ``origin not allowed`` (cross-site
  WebSocket hijacking); SSE and REST are protected by the SameSite cookie and CSRF;
- more than ``live_per_user`` live connections of one user: 429 / close 1008;
  more than ``commands_per_minute`` device methods: 429 with ``Retry-After``;
- bodies, heads and connections are capped before this, by the server layer
  (:mod:`livedata.gateway.server`).

Live connections are registered by credential: logging out, revoking a token or
disabling a user closes that credential's connections in this process at once
(WebSocket close 1008 ``session ended``), and every :data:`RECHECK_S` the
credentials of all live connections are checked again, so other gateways close
theirs too (within :data:`RECHECK_S` plus the check's own time).  The check reads
them together (:meth:`Security.recheck`: one query per kind of credential and 500
credentials, whatever the number of connections), not one query per connection.

State-changing requests that succeed are written to the audit log (who, what,
from where) together with logins and token changes; admins read it at
``GET /api/resources/{orgId}/audit`` and as the SSE log table ``audit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.requests import Request

from livedata import observe
from livedata.auth import Principal
from livedata.auth import credentials as cred
from livedata.auth.limits import ConnectionCount, LoginThrottle, SlidingWindow
from livedata.auth.policy import LOGIN_PAGE, Access, Rule, rule_for
from livedata.errors import BackendError
from livedata.gateway.server import send_error
from livedata.metadata.accounts import Accounts
from livedata.ratelog import Throttled

if TYPE_CHECKING:
    from livedata.gateway.gateway import Supervisor
    from livedata.metadata import Metadata
    from livedata.settings import Settings

log = logging.getLogger("livedata.security")
_UNCHECKED = Throttled(log)
"""Requests whose credentials the metadata database could not check (logged once a minute)."""

SESSION_COOKIE = "livedata_session"
CSRF_COOKIE = "livedata_csrf"
CSRF_HEADER = "x-csrf-token"
RECHECK_S = 30.0
CLOSE_POLICY = 1008
_SAFE = ("GET", "HEAD", "OPTIONS")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request or connection refused: HTTP ``status``, error ``code``, ``message`` (a
    WebSocket is accepted and closed with 1008 and the message as reason)."""

    status: int
    code: str
    message: str

    def __iter__(self) -> Iterator[Any]:
        return iter((self.status, self.code, self.message))


TOO_MANY_LIVE = Refusal(429, "too_many_connections", "too many live connections")


@dataclass(eq=False, slots=True)
class _Live:
    principal: Principal
    close: Callable[[str], None]


def header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


def cookies_of(headers: Mapping[str, str]) -> dict[str, str]:
    jar: dict[str, str] = {}
    for part in headers.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            jar[name] = value
    return jar


class Security:
    """Accounts, limits and live-connection registry of one gateway process."""

    def __init__(
        self,
        settings: Settings,
        meta: Metadata,
        tasks: Supervisor,
        publish_row: Callable[[str, str, dict[str, Any]], None],
    ) -> None:
        """``publish_row(org, table, row)``: where audit entries go as log-table rows."""
        self.tasks = tasks
        self.publish_row = publish_row
        self.settings = settings
        self.accounts = Accounts(meta)
        self.logins = LoginThrottle()
        self.live_count = ConnectionCount(settings.live_per_user)
        self.commands = SlidingWindow(settings.commands_per_minute, 60.0)
        self._key: bytes | None = None
        self._live: dict[int, _Live] = {}
        self._ids = itertools.count()

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = cred.server_key(self.settings.secret_key, self.settings.data_dir)
        return self._key

    async def start(self) -> None:
        """Give the first admin the configured ``admin_token``; then re-check live connections."""
        token = self.settings.admin_token
        if token and await self.accounts.token_by_raw(token) is None:
            admin = await self.accounts.first_admin()
            if admin is None:
                log.warning("admin_token is set but there is no admin user yet: not applied")
            else:
                await self.accounts.create_token(admin.id, "admin_token setting", raw=token)
                log.info("admin_token given to user %s", admin.username)
        self.tasks.spawn("security-recheck", self._recheck)

    # authentication ---------------------------------------------------------------

    async def authenticate(
        self, headers: Mapping[str, str], query: Mapping[str, str], live: bool
    ) -> Principal | None:
        """The caller: Bearer token, session cookie, or (``live`` only) ``access_token``."""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return await self.accounts.token_principal(cred.digest(auth[7:].strip()))
        session = cookies_of(headers).get(SESSION_COOKIE)
        if session:
            return await self.accounts.session_principal(cred.digest(session))
        token = query.get("access_token")
        if live and token:
            if token.startswith(cred.TOKEN_PREFIX):
                return await self.accounts.token_principal(cred.digest(token))
            user_id = cred.check_live_token(self.key, token)
            if user_id is not None:
                return await self.accounts.user_principal(user_id, "live-token")
        return None

    def origin_ok(self, headers: Mapping[str, str]) -> bool:
        """A browser's ``Origin`` must be the gateway's own or an allowed one; none is fine."""
        origin = headers.get("origin")
        if origin is None:
            return True
        origin = origin.rstrip("/")
        if origin in self.settings.allowed_origins:
            return True
        return urlsplit(origin).netloc == headers.get("host", "")

    def refusal(
        self,
        rule: Rule,
        principal: Principal | None,
        headers: Mapping[str, str],
        method: str,
        websocket: bool,
    ) -> Refusal | None:
        """Why ``principal`` may not make this request (counted), or None when it may."""
        if principal is None:
            observe.AUTH_REFUSED.labels("unauthenticated").inc()
            return Refusal(401, "unauthenticated", "authentication required")
        if websocket and not self.origin_ok(headers):
            observe.AUTH_REFUSED.labels("origin").inc()
            return Refusal(403, "forbidden", "origin not allowed")
        if rule.org is not None and rule.org != principal.org:
            observe.AUTH_REFUSED.labels("other_org").inc()
            return Refusal(404, "not_found", f"organisation {rule.org!r} not found")
        if principal.role < rule.role:
            observe.AUTH_REFUSED.labels("role").inc()
            return Refusal(403, "forbidden", f"this needs the {rule.role.name} role")
        if (
            not websocket
            and method not in _SAFE
            and principal.via == "session"
            and headers.get(CSRF_HEADER) != principal.csrf
        ):
            observe.AUTH_REFUSED.labels("csrf").inc()
            return Refusal(403, "csrf_failed", "missing or wrong X-CSRF-Token header")
        return None

    async def admit_websocket(
        self,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        close: Callable[[str], None],
    ) -> int | Refusal:
        """The checks of :class:`SecurityMiddleware` for a WebSocket served outside the app
        (:mod:`livedata.gateway.wsserver`): a live-connection handle (give it back with
        :meth:`close_live`; ``close(reason)`` ends the connection) or the refusal."""
        rule = rule_for("GET", path, query.get("org"))
        if rule.access is not Access.user:  # the WebSockets served this way are user routes
            return Refusal(404, "not_found", f"no such resource: {path}")
        principal = await self.authenticate(headers, query, live=True)
        refusal = self.refusal(rule, principal, headers, "GET", websocket=True)
        if refusal is not None:
            return refusal
        assert principal is not None
        handle = self.open_live(principal, close)
        return TOO_MANY_LIVE if handle is None else handle

    # live connections ---------------------------------------------------------------

    def open_live(self, principal: Principal, close: Callable[[str], None]) -> int | None:
        """Register a live connection; ``None`` when the user has too many."""
        if not self.live_count.acquire(principal.user_id):
            observe.AUTH_REFUSED.labels("live_limit").inc()
            return None
        handle = next(self._ids)
        self._live[handle] = _Live(principal, close)
        return handle

    def close_live(self, handle: int) -> None:
        entry = self._live.pop(handle, None)
        if entry is not None:
            self.live_count.release(entry.principal.user_id)

    def end(self, *, credential: str = "", user_id: int | None = None) -> int:
        """Close this process's live connections of a credential or a user; how many."""
        ended = 0
        for entry in list(self._live.values()):
            p = entry.principal
            if (credential and p.credential == credential) or p.user_id == user_id:
                entry.close("session ended")
                ended += 1
        return ended

    async def recheck(self) -> int:
        """Check the credentials of every live connection again, together, and close
        those no longer valid (``session ended``); how many were closed."""
        live = list(self._live.items())
        if not live:
            return 0
        sessions, tokens, users = set(), set(), set()
        for _, entry in live:
            p = entry.principal
            if p.via == "session":
                sessions.add(p.credential)
            elif p.via == "token":
                tokens.add(p.credential)
            else:
                users.add(p.user_id)
        valid = await self.accounts.still_valid(sessions, tokens, users)
        ended = 0
        for handle, entry in live:
            p = entry.principal
            if p.via == "session":
                ok = p.credential in valid[0]
            elif p.via == "token":
                ok = p.credential in valid[1]
            else:
                ok = p.user_id in valid[2]
            if not ok and self._live.get(handle) is entry:  # still open
                entry.close("session ended")
                ended += 1
        return ended

    async def _recheck(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_S)
            try:
                await self.recheck()
            except Exception:  # the metadata database is away: try again next time
                log.exception("re-checking live connections' credentials failed")

    # audit ---------------------------------------------------------------------------

    async def audit(
        self, org: str, actor: str, action: str, target: str, address: str, details: Any = None
    ) -> None:
        """Write an audit entry and publish it to the ``audit`` log table; never raises."""
        try:
            entry = await self.accounts.audit(org, actor, action, target, address, details)
            self.publish_row(
                org,
                "audit",
                {
                    "TIME": entry.ts_ms,
                    "ACTOR": actor,
                    "ACTION": action,
                    "TARGET": target,
                    "ADDRESS": address,
                },
            )
        except Exception:
            log.exception("audit entry %s %s by %s not written", action, target, actor)


ON_LIVE_END = "on_live_end"
"""``scope["state"][ON_LIVE_END]``: a list to which the app of a live HTTP request (an
SSE watch stream) may add callbacks ``(why)``, run when its session ends (logout,
revocation, a failed re-check).  An app that awaits ``receive`` needs none (it gets
``http.disconnect`` after the final chunk); the watch stream the server layer writes
awaits nothing, so it ends there and sends the final chunk itself."""


def principal_of(request: Request) -> Principal:
    """The authenticated caller of a request the middleware let through."""
    principal: Principal = request.scope["state"]["principal"]
    return principal


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


async def _ws_refuse(receive: Receive, send: Send, reason: str) -> None:
    """Accept and close at once with 1008, so the client sees the reason."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": reason})


class SecurityMiddleware:
    """Pure ASGI middleware: the checks above, then the app with ``scope["state"]["principal"]``."""

    def __init__(self, app: Any, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        sec = self.security
        is_ws = scope["type"] == "websocket"
        method = "GET" if is_ws else scope["method"]
        path = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        rule = rule_for(method, path, query.get("org"))
        if rule.access is Access.public:
            return await self.app(scope, receive, send)
        headers = header_map(scope["headers"])
        refuse = _refuser(is_ws, receive, send)
        if rule.access is Access.closed:
            return await refuse(404, "not_found", f"no such resource: {path}")
        if rule.access is Access.device:
            return await self._device(scope, receive, send, rule, headers)
        live = is_ws or path.startswith("/db/watch/")
        try:
            principal = await sec.authenticate(headers, query, live)
        except BackendError as exc:  # the metadata database is down: not the client's fault
            _UNCHECKED.failed("metadata", "cannot check credentials: %s", str(exc))
            return await refuse(503, "unavailable", "credentials cannot be checked now; retry")
        if rule.access is Access.page:
            if principal is None:
                target = path + (
                    "?" + scope["query_string"].decode() if scope["query_string"] else ""
                )
                location = f"{LOGIN_PAGE}?next={quote(target, safe='')}".encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 302,
                        "headers": [(b"location", location)],
                    }
                )
                return await send({"type": "http.response.body", "body": b""})
            return await self.app(scope, receive, send)
        refusal = sec.refusal(rule, principal, headers, method, is_ws)
        if refusal is not None:
            return await refuse(*refusal)
        assert principal is not None
        if rule.command:
            wait = sec.commands.take(str(principal.user_id), time.monotonic())
            if wait:
                observe.AUTH_REFUSED.labels("command_rate").inc()
                retry = [(b"retry-after", str(int(wait) + 1).encode())]
                return await send_error(send, 429, "too_many_requests", "too many commands", retry)
        scope.setdefault("state", {})["principal"] = principal
        if live:
            return await self._live(scope, receive, send, principal, refuse)
        if method in _SAFE:
            return await self.app(scope, receive, send)
        return await self._audited(scope, receive, send, principal, rule)

    async def _device(
        self, scope: Scope, receive: Receive, send: Send, rule: Rule, headers: dict[str, str]
    ) -> None:
        auth = headers.get("authorization", "")
        secret = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        accounts = self.security.accounts
        assert rule.org is not None and rule.chassis is not None
        if not secret or not await accounts.check_device_secret(rule.org, rule.chassis, secret):
            observe.AUTH_REFUSED.labels("device").inc()
            return await send_error(
                send, 401, "unauthenticated", "the machine's secret is missing or wrong"
            )
        await self.app(scope, receive, send)

    async def _live(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        principal: Principal,
        refuse: Callable[[int, str, str], Awaitable[None]],
    ) -> None:
        sec = self.security
        ended = asyncio.Event()
        reason = ["session ended"]
        on_end: list[Callable[[str], None]] = []

        def close(why: str) -> None:
            reason[0] = why
            ended.set()
            for callback in on_end:
                callback(why)

        handle = sec.open_live(principal, close)
        if handle is None:
            return await refuse(*TOO_MANY_LIVE)
        is_ws = scope["type"] == "websocket"
        if not is_ws:
            scope["state"][ON_LIVE_END] = on_end
        closed = False
        started = finished = False

        async def guarded_receive() -> dict[str, Any]:
            nonlocal closed
            if not ended.is_set():
                waiter = asyncio.ensure_future(ended.wait())
                reader = asyncio.ensure_future(receive())
                done, _ = await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader in done:
                    waiter.cancel()
                    return reader.result()
                reader.cancel()
            if is_ws:
                if not closed:
                    closed = True
                    with contextlib.suppress(Exception):
                        await send(
                            {"type": "websocket.close", "code": CLOSE_POLICY, "reason": reason[0]}
                        )
                return {"type": "websocket.disconnect", "code": CLOSE_POLICY}
            if started and not finished and not closed:  # end the SSE stream cleanly
                closed = True
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            return {"type": "http.disconnect"}

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started, finished
            if closed:
                if is_ws:
                    raise OSError("the connection was closed: " + reason[0])
                return  # the stream was ended for the client; the rest goes nowhere
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        finally:
            sec.close_live(handle)

    async def _audited(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal, rule: Rule
    ) -> None:
        status = [0]

        async def watching_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, watching_send)
        path = scope["path"]
        if status[0] < 400 and not path.startswith("/api/auth/"):
            await self.security.audit(
                rule.org or principal.org,
                principal.username,
                scope["method"],
                path,
                client_address(scope),
            )


def _refuser(
    is_ws: bool, receive: Receive, send: Send
) -> Callable[[int, str, str], Awaitable[None]]:
    async def refuse(status: int, code: str, message: str) -> None:
        if is_ws:
            await _ws_refuse(receive, send, message)
        else:
            await send_error(send, status, code, message)

    return refuse
