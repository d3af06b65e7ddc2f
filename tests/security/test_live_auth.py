"""Live connections and browser sessions against a running server: refusals, logout, limits.

WebSocket, SSE and Socket.IO each refuse no credentials, an expired or forged live
token, a revoked API token and (WebSocket, Socket.IO) a foreign ``Origin``; logging
out or revoking a token ends that credential's live connections and nothing else.
CSRF, the body cap and odd paths use the shared two-organisation server; login
throttling, the live-connection cap, the command rate and session expiry use a
server of their own started with low limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import socketio
import websockets
from websockets.exceptions import ConnectionClosed

from livedata.auth import credentials as cred
from tests.conftest import Server, start_demo, stop
from tests.security.servers import (
    PASSWORD,
    TwoOrgs,
    User,
    env,
    release_two_orgs,
    two_orgs_server,
)

EVIL = "http://evil.example"


@pytest.fixture(scope="session")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoOrgs]:
    """The shared two-organisation server (stopped at the end of the session)."""
    yield two_orgs_server(tmp_path_factory)
    release_two_orgs()


@pytest.fixture(scope="module")
def key(two: TwoOrgs) -> bytes:
    """The server's signing key, read from its data directory."""
    return cred.server_key("", two.server.data_dir)


def live_url(two: TwoOrgs, query: str = "") -> str:
    url = two.server.live_url(two.server.machines[0], "client_raw_data")
    return url + (f"&{query}" if query else "")


async def ws_result(
    url: str, headers: dict[str, str] | None = None, origin: str | None = None
) -> tuple[int | None, str, list[Any]]:
    """Connect, subscribe to cpu_usage; (close code or None if data flowed, reason, messages)."""
    got: list[Any] = []
    async with websockets.connect(
        url, additional_headers=headers or {}, origin=origin, open_timeout=10
    ) as ws:
        with contextlib.suppress(ConnectionClosed):
            await ws.send('{"type":"INIT_FIELD_LIST","payload":["cpu_usage"]}')
        try:
            async with asyncio.timeout(4):
                while True:
                    got.append(orjson.loads(await ws.recv()))
                    if got[-1]["type"] == "LIVE_DATA":
                        return None, "", got
        except ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or "", got


async def sse_status(
    url: str, params: dict[str, str], headers: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """(status, content type, body or first data line) of a watch request."""
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url, params=params, headers=headers or {}) as response,
    ):
        kind = response.headers.get("content-type", "")
        if response.status_code != 200:
            return response.status_code, kind, (await response.aread()).decode()
        async with asyncio.timeout(4):
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    return 200, kind, line
        return 200, kind, ""


async def sio_result(url: str, **connect: Any) -> tuple[bool, list[Any]]:
    """(connected, connect_error payloads) of a Socket.IO connection attempt."""
    client = socketio.AsyncClient(reconnection=False)
    refusals: list[Any] = []
    client.on("connect_error", refusals.append)
    if "headers" in connect:  # python-engineio's client pops the Cookie header out of it
        connect["headers"] = dict(connect["headers"])
    try:
        await client.connect(url, transports=["websocket"], wait_timeout=10, **connect)
    except socketio.exceptions.ConnectionError:
        return False, refusals
    await client.disconnect()
    return True, refusals


def watch_params(two: TwoOrgs, **extra: str) -> dict[str, str]:
    return {"tag": f"{two.server.machines[0]}.cpu_usage", **extra}


async def new_token(two: TwoOrgs, user: User, name: str) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=two.url, timeout=10) as client:
        response = await client.post("/api/auth/tokens", json={"name": name}, headers=user.headers)
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["token"]


async def revoke(two: TwoOrgs, user: User, token_id: int) -> None:
    async with httpx.AsyncClient(base_url=two.url, timeout=10) as client:
        response = await client.delete(f"/api/auth/tokens/{token_id}", headers=user.headers)
    assert response.status_code == 204, response.text


@contextlib.asynccontextmanager
async def session(two: TwoOrgs, username: str) -> AsyncIterator[dict[str, str]]:
    """Log in; the cookie header and CSRF token of the browser session."""
    async with httpx.AsyncClient(base_url=two.url, timeout=10) as client:
        response = await client.post(
            "/api/auth/login", json={"username": username, "password": PASSWORD}
        )
    assert response.status_code == 200, response.text
    jar = {c.name: c.value for c in response.cookies.jar}
    yield {
        "Cookie": f"livedata_session={jar['livedata_session']}",
        "csrf": response.json()["csrf"],
        "set-cookie": "\n".join(response.headers.get_list("set-cookie")),
    }


# --------------------------------------------------------------------------- credentials


async def test_live_surfaces_refuse_missing_credentials(two: TwoOrgs) -> None:
    """No credentials: WebSocket 1008, SSE 401 JSON before any stream, Socket.IO unauthenticated."""
    code, reason, messages = await ws_result(live_url(two))
    assert (code, reason, messages) == (1008, "authentication required", [])
    status, kind, body = await sse_status(f"{two.url}/db/watch/client_raw_data", watch_params(two))
    assert status == 401 and kind.startswith("application/json")
    assert orjson.loads(body)["error"]["code"] == "unauthenticated"
    connected, refusals = await sio_result(two.url)
    assert not connected
    assert refusals == [{"message": "authentication required", "data": {"code": "unauthenticated"}}]


async def test_live_tokens_valid_expired_and_forged(two: TwoOrgs, key: bytes) -> None:
    """A fresh live token opens every surface; an expired or forged one is refused like none."""
    viewer = two.user("A", "viewer")
    async with httpx.AsyncClient(base_url=two.url, timeout=10) as client:
        issued = await client.post("/api/auth/live-token", headers=viewer.headers)
    assert issued.status_code == 200 and issued.json()["expiresIn"] == cred.LIVE_TOKEN_SECONDS
    good = issued.json()["token"]
    crafted = cred.sign_live_token(key, viewer.id)
    expired = cred.sign_live_token(key, viewer.id, now=time.time() - 2 * cred.LIVE_TOKEN_SECONDS)
    user_id, expiry, mac = crafted.split(".")
    forged = [
        f"{two.user('A', 'admin').id}.{expiry}.{mac}",  # another user
        f"{user_id}.{int(expiry) + 3600}.{mac}",  # a later expiry
        cred.sign_live_token(b"not the server key", viewer.id),
        f"{user_id}.{expiry}.{'é' * 32}",  # non-ASCII MAC: refused, not a server error
    ]
    for token in (good, crafted):
        code, _, messages = await ws_result(live_url(two, f"access_token={token}"))
        assert code is None and messages[-1]["type"] == "LIVE_DATA"
        status, kind, _ = await sse_status(
            f"{two.url}/db/watch/client_raw_data", watch_params(two, access_token=token)
        )
        assert status == 200 and kind.startswith("text/event-stream")
        connected, _ = await sio_result(two.url, auth={"token": token})
        assert connected
    for token in (expired, *forged):
        code, reason, messages = await ws_result(live_url(two, f"access_token={token}"))
        assert (code, reason, messages) == (1008, "authentication required", []), token
        status, _, body = await sse_status(
            f"{two.url}/db/watch/client_raw_data", watch_params(two, access_token=token)
        )
        assert status == 401, (token, body)
        connected, refusals = await sio_result(two.url, auth={"token": token})
        assert not connected and refusals[0]["data"]["code"] == "unauthenticated"


async def test_live_tokens_are_refused_by_rest(two: TwoOrgs, key: bytes) -> None:
    """A live token in the query string opens live connections only, never REST calls."""
    token = cred.sign_live_token(key, two.user("A", "admin").id)
    async with httpx.AsyncClient(base_url=two.url, timeout=10) as client:
        response = await client.get("/api/resources/demo/users", params={"access_token": token})
        assert response.status_code == 401
        response = await client.get("/api/auth/me", params={"access_token": token})
        assert response.status_code == 401


async def test_revoked_api_token_is_refused_everywhere(two: TwoOrgs) -> None:
    """After revocation an API token opens nothing: REST 401, WS 1008, SSE 401, Socket.IO refused."""
    viewer = two.user("A", "viewer")
    token_id, token = await new_token(two, viewer, "to be revoked")
    bearer = {"Authorization": f"Bearer {token}"}
    code, _, _ = await ws_result(live_url(two), bearer)
    assert code is None
    await revoke(two, viewer, token_id)
    async with httpx.AsyncClient(base_url=two.url, timeout=10) as client:
        assert (await client.get("/api/auth/me", headers=bearer)).status_code == 401
    for url, headers in ((live_url(two), bearer), (live_url(two, f"access_token={token}"), {})):
        code, reason, messages = await ws_result(url, headers)
        assert (code, reason, messages) == (1008, "authentication required", [])
    status, _, _ = await sse_status(
        f"{two.url}/db/watch/client_raw_data", watch_params(two), bearer
    )
    assert status == 401
    status, _, _ = await sse_status(
        f"{two.url}/db/watch/client_raw_data", watch_params(two, access_token=token)
    )
    assert status == 401
    for connect in ({"auth": {"token": token}}, {"headers": bearer}):
        connected, refusals = await sio_result(two.url, **connect)
        assert not connected and refusals[0]["data"]["code"] == "unauthenticated"


async def test_foreign_origin_is_refused(two: TwoOrgs) -> None:
    """A page of another site cannot open the WebSocket or Socket.IO with a user's credentials."""
    viewer = two.user("A", "viewer")
    code, reason, messages = await ws_result(live_url(two), viewer.headers, origin=EVIL)
    assert (code, reason, messages) == (1008, "origin not allowed", [])
    code, _, _ = await ws_result(live_url(two), viewer.headers, origin=two.url)
    assert code is None  # the gateway's own origin is fine
    connected, refusals = await sio_result(
        two.url, auth={"token": viewer.token}, headers={"Origin": EVIL}
    )
    assert not connected
    # Engine.IO's own same-origin check refuses it before Socket.IO's connect handler runs
    assert refusals in (
        [{"message": "origin not allowed", "data": {"code": "forbidden"}}],
        ["Connection error"],
    )
    async with httpx.AsyncClient(timeout=10) as client:
        handshake = await client.get(
            f"{two.url}/socket.io/",
            params={"EIO": "4", "transport": "polling"},
            headers={**viewer.headers, "Origin": EVIL},
        )
    assert handshake.status_code == 400
    assert "access-control-allow-origin" not in handshake.headers
    connected, _ = await sio_result(
        two.url, auth={"token": viewer.token}, headers={"Origin": two.url}
    )
    assert connected


async def test_sse_gives_other_sites_nothing_to_read(two: TwoOrgs) -> None:
    """SSE is not Origin-checked; a foreign page gets no CORS grant, so its browser reads nothing."""
    viewer = two.user("A", "viewer")
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream(
            "GET",
            f"{two.url}/db/watch/client_raw_data",
            params=watch_params(two),
            headers={**viewer.headers, "Origin": EVIL},
        ) as response,
    ):
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-credentials" not in response.headers


# --------------------------------------------------------------------------- sessions


async def test_session_cookie_attributes(two: TwoOrgs) -> None:
    """The session cookie is HttpOnly and SameSite=Lax; the CSRF cookie is readable by the page."""
    async with session(two, "a_viewer") as s:
        cookies = s["set-cookie"].lower().split("\n")
    session_cookie = next(c for c in cookies if c.startswith("livedata_session="))
    csrf_cookie = next(c for c in cookies if c.startswith("livedata_csrf="))
    assert "httponly" in session_cookie and "samesite=lax" in session_cookie
    assert "path=/" in session_cookie
    assert "httponly" not in csrf_cookie


async def test_csrf_is_required_with_the_cookie_only(two: TwoOrgs) -> None:
    """Cookie POSTs need the session's X-CSRF-Token (403 without or wrong); Bearer needs none."""
    async with (
        session(two, "a_viewer") as s,
        httpx.AsyncClient(base_url=two.url, timeout=10) as client,
    ):
        cookie = {"Cookie": s["Cookie"]}
        for extra in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}):
            response = await client.post("/api/auth/live-token", headers={**cookie, **extra})
            assert response.status_code == 403, extra
            assert response.json()["error"]["code"] == "csrf_failed"
        response = await client.post(
            "/api/auth/live-token", headers={**cookie, "X-CSRF-Token": s["csrf"]}
        )
        assert response.status_code == 200
        assert (await client.get("/api/auth/me", headers=cookie)).json()["via"] == "session"
        other_session_csrf = two.user("A", "viewer").token  # any other value is wrong
        response = await client.post(
            "/api/auth/live-token", headers={**cookie, "X-CSRF-Token": other_session_csrf}
        )
        assert response.status_code == 403
        response = await client.post(
            "/api/auth/live-token", headers=two.user("A", "viewer").headers
        )
        assert response.status_code == 200


async def test_logout_ends_the_sessions_live_connections(two: TwoOrgs) -> None:
    """Logout closes the session's WebSocket (1008 session ended), SSE and Socket.IO; a token's stay."""
    operator = two.user("A", "operator")
    async with session(two, "a_operator") as s:
        cookie = {"Cookie": s["Cookie"]}
        ws = await websockets.connect(live_url(two), additional_headers=cookie)
        token_ws = await websockets.connect(live_url(two), additional_headers=operator.headers)
        for conn in (ws, token_ws):
            await conn.send('{"type":"INIT_FIELD_LIST","payload":["cpu_usage"]}')
            assert orjson.loads(await asyncio.wait_for(conn.recv(), 4))["type"] == "LIVE_DATA"
        sio = socketio.AsyncClient(reconnection=False)
        disconnected = asyncio.Event()
        sio.on("disconnect", lambda *_: disconnected.set())
        # python-engineio's client takes the Cookie header out of the dict it is given: a copy
        await sio.connect(two.url, headers=dict(cookie), transports=["websocket"], wait_timeout=10)

        sse_lines: list[str] = []
        sse_open = asyncio.Event()

        async def read_sse() -> None:
            # the server ends the stream by dropping it (no last chunk): that is an end too
            with contextlib.suppress(httpx.RemoteProtocolError):
                await _read_sse()

        async def _read_sse() -> None:
            async with (
                httpx.AsyncClient(timeout=30) as client,
                client.stream(
                    "GET",
                    f"{two.url}/db/watch/client_raw_data",
                    params=watch_params(two, period="1s"),
                    headers=cookie,
                ) as response,
            ):
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    sse_lines.append(line)
                    sse_open.set()

        sse = asyncio.create_task(read_sse())
        await asyncio.wait_for(sse_open.wait(), 5)
        async with httpx.AsyncClient(base_url=two.url, timeout=10) as client:
            response = await client.post(
                "/api/auth/logout", headers={**cookie, "X-CSRF-Token": s["csrf"]}
            )
            assert response.status_code == 200
            assert (await client.get("/api/auth/me", headers=cookie)).status_code == 401

        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        assert (ws.close_code, ws.close_reason) == (1008, "session ended")
        await asyncio.wait_for(sse, 5)  # the stream ended
        await asyncio.wait_for(disconnected.wait(), 5)
        assert not sio.connected
        # the same user's token connection is untouched
        async with asyncio.timeout(4):
            while orjson.loads(await token_ws.recv())["type"] != "LIVE_DATA":
                pass
        await token_ws.close()
        code, reason, _ = await ws_result(live_url(two), cookie)
        assert (code, reason) == (1008, "authentication required")


async def test_revoking_a_token_ends_its_live_connections(two: TwoOrgs) -> None:
    """DELETE of a token closes the WebSocket opened with it at once (1008 session ended)."""
    viewer = two.user("A", "viewer")
    token_id, token = await new_token(two, viewer, "live then revoked")
    async with websockets.connect(
        live_url(two), additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await ws.send('{"type":"INIT_FIELD_LIST","payload":["cpu_usage"]}')
        assert orjson.loads(await asyncio.wait_for(ws.recv(), 4))["type"] == "LIVE_DATA"
        await revoke(two, viewer, token_id)
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        assert (ws.close_code, ws.close_reason) == (1008, "session ended")


# --------------------------------------------------------------------------- HTTP edges


async def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes (no client-side path normalisation); (status, body)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await asyncio.wait_for(reader.readexactly(length), 10) if length else b""
        return status, body
    finally:
        writer.close()


async def test_body_over_8_mib_is_refused_from_content_length(two: TwoOrgs) -> None:
    """A declared body over 8 MiB gets 413 before any of it is sent (authenticated or not)."""
    token = two.user("A", "admin").token
    for path, auth in (
        ("/api/resources/demo/groups", f"Authorization: Bearer {token}\r\n"),
        ("/db/write/client_raw_data", f"Authorization: Bearer {token}\r\n"),
        ("/api/resources/demo/dbc", ""),
    ):
        request = (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {8 * 1024 * 1024 + 1}\r\n\r\n"
        ).encode()
        status, body = await raw_request(two.url, request)
        assert status == 413, body
        assert orjson.loads(body)["error"]["code"] == "too_large"


@pytest.mark.parametrize(
    "path",
    [
        "//api/resources/orgzq/machines",
        "/api//resources/orgzq/machines",
        "/api/resources/orgzq/machines/",
        "/api/resources/demo/../orgzq/machines",
        "/api/resources/demo/machines/..%2F..%2Forgzq%2Fmachines",
        "/api/resources/demo%2F..%2Forgzq/machines",
        "/API/resources/orgzq/machines",
        "/api/resources/orgzq%00/machines",
        "/api/resources/ORGZQ/machines",
        "/api/resources/orgzq/machines?org=demo",
        "/db/watch/client_raw_data?tag=ZQX-7001.cpu_usage&org=demo&org=orgzq",
    ],
)
async def test_odd_paths_do_not_reach_another_org(two: TwoOrgs, path: str) -> None:
    """Doubled slashes, dot segments, encodings and case tricks never serve org B to org A."""
    token = two.user("A", "admin").token
    request = (
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    try:
        status, body = await raw_request(two.url, request)
    except asyncio.IncompleteReadError:  # the server may refuse to parse it at all
        return
    assert status in (307, 400, 401, 404), (status, body[:200])
    own = [m for m in (b"ZQX-", b"Org ZQ", b"ZQ machine", b"orgzq") if m not in path.encode()]
    assert not [m for m in own if m in body], body


# --------------------------------------------------------------------------- limits


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server with 3 live connections per user, 2 commands a minute, 1 s sessions."""
    with env(
        LIVEDATA_LIVE_PER_USER="3",
        LIVEDATA_COMMANDS_PER_MINUTE="2",
        LIVEDATA_SESSION_HOURS="0.0004",
    ):
        server = start_demo(tmp_path_factory.mktemp("limited"), "--machines", "1")
    yield server
    stop(server)


async def test_sessions_expire(limited: Server) -> None:
    """A session cookie stops working once the session's lifetime is over."""
    async with httpx.AsyncClient(base_url=limited.url, timeout=10) as client:
        response = await client.post(
            "/api/auth/login", json={"username": "admin", "password": limited.password}
        )
        assert response.status_code == 200
        cookie = {"Cookie": f"livedata_session={response.cookies['livedata_session']}"}
        await asyncio.sleep(1.8)
        response = await client.get("/api/auth/me", headers=cookie)
        assert response.status_code == 401


async def test_live_connection_cap(limited: Server) -> None:
    """A user's 4th live connection (WS, SSE or Socket.IO) is refused; closing one frees a slot."""
    url = limited.live_url(limited.machines[0], "client_raw_data")
    watch = f"{limited.url}/db/watch/client_raw_data"
    params = {"tag": f"{limited.machines[0]}.cpu_usage"}
    open_ws = [await websockets.connect(url, additional_headers=limited.headers) for _ in range(3)]
    try:
        for ws in open_ws:
            await ws.send('{"type":"INIT_FIELD_LIST","payload":["cpu_usage"]}')
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 4))["type"] == "LIVE_DATA"
        code, reason, _ = await ws_result(url, limited.headers)
        assert (code, reason) == (1008, "too many live connections")
        status, _, body = await sse_status(watch, params, limited.headers)
        assert status == 429 and orjson.loads(body)["error"]["code"] == "too_many_connections"
        connected, refusals = await sio_result(limited.url, headers=limited.headers)
        assert not connected
        assert refusals == [
            {"message": "too many live connections", "data": {"code": "too_many_connections"}}
        ]
        await open_ws.pop().close()
        await asyncio.sleep(0.3)
        code, _, _ = await ws_result(url, limited.headers)
        assert code is None
    finally:
        for ws in open_ws:
            await ws.close()


async def test_command_rate(limited: Server) -> None:
    """The 3rd device method within a minute is 429 with Retry-After; the first two are served."""
    url = f"{limited.url}/api/iothubs/demo/devices/{limited.machines[0]}/methods"
    body = {"methodName": "startMs", "payload": {"reason": "rate test", "commandId": "c1"}}
    async with httpx.AsyncClient(timeout=40) as client:
        first = [await client.post(url, json=body, headers=limited.headers) for _ in range(2)]
        assert [r.status_code for r in first] == [200, 200], [r.text for r in first]
        third = await client.post(url, json=body, headers=limited.headers)
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "too_many_requests"
    assert 1 <= int(third.headers["retry-after"]) <= 61


async def test_login_throttling(limited: Server) -> None:
    """Wrong passwords slow down their address (429 even for the right password there);
    the right password from another address and other users still get in at once."""
    other_address = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with (
        httpx.AsyncClient(base_url=limited.url, timeout=30) as client,
        httpx.AsyncClient(base_url=limited.url, timeout=30, transport=other_address) as elsewhere,
    ):
        other = await client.post(
            "/api/resources/demo/users",
            json={"username": "second", "password": "second's password", "role": "viewer"},
            headers=limited.headers,
        )
        assert other.status_code == 201

        async def login(username: str, password: str, via: httpx.AsyncClient = client) -> Any:
            return await via.post(
                "/api/auth/login", json={"username": username, "password": password}
            )

        statuses = [(await login("admin", "wrong password")).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        for _ in range(5):  # each further failure doubles the wait: one of these is early
            throttled = await login("admin", "wrong password")
            if throttled.status_code == 429:
                break
            assert throttled.status_code == 401
        assert throttled.status_code == 429
        assert throttled.json()["error"]["code"] == "too_many_requests"
        assert 1 <= int(throttled.headers["retry-after"]) <= 901
        right = await login("admin", limited.password)
        assert right.status_code == 429 and "retry-after" in right.headers
        assert "livedata_session" not in right.headers.get("set-cookie", "")
        # the real admin, from another address, is not locked out
        assert (await login("admin", limited.password, elsewhere)).status_code == 200
        # nor is another account from the same address
        assert (await login("second", "second's password")).status_code == 200
