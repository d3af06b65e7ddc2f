"""Login, logout, API tokens, users, device secrets and the audit log over HTTP.

==========================================================  =====================================
``POST /api/auth/login`` ``{username, password}``            session cookie (HttpOnly, SameSite=Lax)
                                                             + ``livedata_csrf`` cookie; 429 when
                                                             throttled (:mod:`livedata.auth.limits`)
``POST /api/auth/logout``                                    ends the session and its live connections
``GET /api/auth/me``                                         who am I: user, organisation, role
``POST /api/auth/live-token``                                a 60 s token for ``?access_token=``
``GET|POST /api/auth/tokens``, ``DELETE …/tokens/{id}``      one's own API tokens (shown once)
``GET|POST /api/resources/{orgId}/users``, ``PUT|DELETE …``  users of the organisation (admin)
``GET /api/resources/{orgId}/tokens``                        every token of the organisation (admin)
``POST /api/resources/{orgId}/machines/{id}/secret``         a new device secret, shown once (admin)
``GET /api/resources/{orgId}/audit?limit=``                  the audit log, newest first (admin)
==========================================================  =====================================

A token acts with its user's organisation and role at the time of use: demoting a
user demotes their tokens.  Passwords are at least :data:`MIN_PASSWORD` characters.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from livedata import observe
from livedata.auth import Role
from livedata.auth import credentials as cred
from livedata.errors import InputError
from livedata.gateway.security import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    client_address,
    principal_of,
)
from livedata.gateway.state import gateway_of
from livedata.metadata.accounts import audit_dict, token_dict, user_dict
from livedata.model import Name

router = APIRouter(prefix="/api", tags=["auth"])

MIN_PASSWORD = 10
USERNAME = r"^[A-Za-z0-9_.@-]{1,64}$"
ROLE = r"^(viewer|operator|admin)$"


class LoginBody(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=200)
    org: str | None = Field(
        None,
        max_length=64,
        description="the organisation, needed only when its username exists in several",
    )


class TokenBody(BaseModel):
    name: Name
    expiresInDays: float | None = Field(None, gt=0, le=3650)


class NewUserBody(BaseModel):
    username: str = Field(pattern=USERNAME)
    password: str = Field(min_length=MIN_PASSWORD, max_length=200)
    role: str = Field(pattern=ROLE)


class UserChangeBody(BaseModel):
    role: str | None = Field(None, pattern=ROLE)
    password: str | None = Field(None, min_length=MIN_PASSWORD, max_length=200)
    disabled: bool | None = None


@router.post("/auth/login", summary="Log in: sets the session cookie")
async def login(request: Request, body: LoginBody) -> Response:
    gw = gateway_of(request)
    sec = gw.security
    address = client_address(request.scope)
    now = time.monotonic()
    wait = sec.logins.retry_after(body.username, address, now)
    if wait:
        observe.LOGINS.labels("throttled").inc()
        return JSONResponse(
            {
                "error": {
                    "code": "too_many_requests",
                    "message": "too many failed logins from this address; wait",
                }
            },
            status_code=429,
            headers={"Retry-After": str(int(wait) + 1)},
        )
    user = await sec.accounts.check_password(body.username, body.password, body.org)
    if user is None:
        sec.logins.failed(body.username, address, now)
        observe.LOGINS.labels("failed").inc()
        for known in await sec.accounts.find_users(body.username, body.org):
            await sec.audit(known.org_id, body.username, "login_failed", "", address)
        return JSONResponse(
            {"error": {"code": "unauthenticated", "message": "wrong username or password"}},
            status_code=401,
        )
    sec.logins.succeeded(body.username, address)
    observe.LOGINS.labels("ok").inc()
    lifetime = gw.settings.session_hours * 3600
    session, csrf = await sec.accounts.create_session(user, lifetime)
    await sec.audit(user.org_id, user.username, "login", "", address)
    response = JSONResponse({"user": user_dict(user), "csrf": csrf})
    secure = gw.settings.secure_cookies
    response.set_cookie(
        SESSION_COOKIE,
        session,
        max_age=int(lifetime),
        httponly=True,
        samesite="lax",
        secure=secure,
        path="/",
    )
    response.set_cookie(
        CSRF_COOKIE, csrf, max_age=int(lifetime), httponly=False, samesite="lax", secure=secure
    )
    return response


@router.post("/auth/logout", summary="Log out: ends the session and its live connections")
async def logout(request: Request) -> Response:
    sec = gateway_of(request).security
    principal = principal_of(request)
    if principal.via == "session":
        await sec.accounts.end_session(principal.credential)
        sec.end(credential=principal.credential)
    await sec.audit(principal.org, principal.username, "logout", "", client_address(request.scope))
    response = JSONResponse({"ok": True})
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/auth/me", summary="The caller: user, organisation and role")
async def me(request: Request) -> dict[str, Any]:
    p = principal_of(request)
    return {"user": p.username, "id": p.user_id, "org": p.org, "role": p.role.name, "via": p.via}


@router.post("/auth/live-token", summary="A 60 s token for WebSocket/SSE query strings")
async def live_token(request: Request) -> dict[str, Any]:
    p = principal_of(request)
    token = cred.sign_live_token(gateway_of(request).security.key, p.user_id)
    return {"token": token, "expiresIn": cred.LIVE_TOKEN_SECONDS}


@router.get("/auth/tokens", summary="The caller's API tokens")
async def my_tokens(request: Request) -> dict[str, Any]:
    p = principal_of(request)
    rows = await gateway_of(request).security.accounts.list_tokens(p.org, p.user_id)
    return {"tokens": [token_dict(t, u) for t, u in rows]}


@router.post("/auth/tokens", status_code=201, summary="Create an API token (shown once)")
async def create_token(request: Request, body: TokenBody) -> dict[str, Any]:
    sec = gateway_of(request).security
    p = principal_of(request)
    expires = (
        int(time.time() * 1000 + body.expiresInDays * 86_400_000) if body.expiresInDays else None
    )
    row, raw = await sec.accounts.create_token(p.user_id, body.name, expires)
    await sec.audit(p.org, p.username, "token_created", body.name, client_address(request.scope))
    return {**token_dict(row, p.username), "token": raw}


@router.delete("/auth/tokens/{tokenId}", status_code=204, summary="Revoke a token")
async def revoke_token(request: Request, tokenId: int) -> Response:
    sec = gateway_of(request).security
    p = principal_of(request)
    owner = None if p.role >= Role.admin else p.user_id
    token = await sec.accounts.revoke_token(p.org, tokenId, owner)
    sec.end(credential=token.token_hash)
    await sec.audit(p.org, p.username, "token_revoked", token.name, client_address(request.scope))
    return Response(status_code=204)


@router.get("/resources/{orgId}/tokens", summary="Every API token of the organisation")
async def org_tokens(request: Request, orgId: str) -> dict[str, Any]:
    rows = await gateway_of(request).security.accounts.list_tokens(orgId)
    return {"tokens": [token_dict(t, u) for t, u in rows]}


@router.get("/resources/{orgId}/users", summary="Users of the organisation")
async def list_users(request: Request, orgId: str) -> dict[str, Any]:
    users = await gateway_of(request).security.accounts.list_users(orgId)
    return {"users": [user_dict(u) for u in users]}


@router.post("/resources/{orgId}/users", status_code=201, summary="Create a user")
async def create_user(request: Request, orgId: str, body: NewUserBody) -> dict[str, Any]:
    accounts = gateway_of(request).security.accounts
    user = await accounts.create_user(orgId, body.username, body.password, Role[body.role])
    return user_dict(user)


@router.put("/resources/{orgId}/users/{userId}", summary="Change a user's role, password or state")
async def change_user(
    request: Request, orgId: str, userId: int, body: UserChangeBody
) -> dict[str, Any]:
    sec = gateway_of(request).security
    if body.role is not None and userId == principal_of(request).user_id:
        raise InputError("you cannot change your own role")
    user = await sec.accounts.update_user(
        orgId,
        userId,
        role=Role[body.role] if body.role else None,
        password=body.password,
        disabled=body.disabled,
    )
    if body.password or body.disabled:
        sec.end(user_id=userId)
    return user_dict(user)


@router.delete("/resources/{orgId}/users/{userId}", status_code=204, summary="Delete a user")
async def delete_user(request: Request, orgId: str, userId: int) -> Response:
    sec = gateway_of(request).security
    if userId == principal_of(request).user_id:
        raise InputError("you cannot delete yourself")
    await sec.accounts.delete_user(orgId, userId)
    sec.end(user_id=userId)
    return Response(status_code=204)


@router.post(
    "/resources/{orgId}/machines/{chassisId}/secret",
    summary="Give a machine a new secret (shown once; the old one stops working)",
)
async def new_device_secret(request: Request, orgId: str, chassisId: str) -> dict[str, Any]:
    secret = await gateway_of(request).security.accounts.set_device_secret(orgId, chassisId)
    return {"deviceId": chassisId, "username": f"{orgId}/{chassisId}", "secret": secret}


@router.get("/resources/{orgId}/audit", summary="The audit log, newest first")
async def audit_log(
    request: Request, orgId: str, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    entries = await gateway_of(request).security.accounts.list_audit(orgId, limit)
    return {"entries": [audit_dict(e) for e in entries]}
