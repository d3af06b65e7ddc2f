"""The access matrix: two organisations, three roles, every endpoint and live surface.

One demo server holds organisation A (``demo``) and B (``orgzq``), each with a
viewer, an operator and an admin.  For every route of the app (the spec table in
:mod:`tests.security.spec`, which must list exactly the app's routes), every user
and an anonymous caller, three kinds of request are made:

- **own**: the caller's organisation and objects -- allowed (the route's answer)
  when the role suffices, else 403; writes carry an *invalid* body, so nothing
  changes but the answer (400) proves the request got past authorisation;
- **foreign**: the other organisation in the URL with its real ids -- 404;
- **mixed**: the caller's organisation with the other one's object ids (machine,
  group, DBC, user, rule, token) -- 403 for too low a role, else 404.

Foreign and mixed writes carry *valid* bodies, so a hole would really act.  Every
answer that names the other organisation's ids (only because the request did) is
compared with the answer to the same request with ids that do not exist: equal
after substituting the ids, so nothing tells a foreign id from an unknown one.
Every other answer to a user of A must not contain any id or name of B, and the
other way round.  The live surfaces (WebSocket, SSE, Socket.IO) get the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import socketio
import websockets
from websockets.exceptions import ConnectionClosed

from livedata.auth import Role
from livedata.sim.demo import DBC_PATH
from tests.security.servers import (
    RULE,
    TwoOrgs,
    User,
    release_two_orgs,
    two_orgs_server,
    write_value,
)
from tests.security.spec import DEVICE, PUBLIC, SPEC, WS_LIVE

FAKE = {
    "orgId": "nosuchorg",
    "iothubName": "nosuchorg",
    "chassisId": "NOX-0000",
    "deviceId": "NOX-0000",
    "model": "NOM",
    "groupId": "000000000000",
    "dbcId": "999991",
    "userId": "999992",
    "ruleId": "999993",
    "tokenId": "999994",
    "alertId": "999995",
}
"""Ids that exist nowhere: what a foreign id's answer must look like."""

OBJECT_PARAMS = (
    "chassisId",
    "deviceId",
    "model",
    "groupId",
    "dbcId",
    "userId",
    "ruleId",
    "tokenId",
)
"""Path parameters naming an object of an organisation (alerts: there are none to name)."""

MARKERS = {
    "A": ["WL-0001", "WL-0002", "a_viewer", "a_operator", "a_admin", "loader.dbc", "Demo fleet"],
    "B": ["orgzq", "ZQX-", "b_viewer", "b_operator", "b_admin", "zqx.dbc", "Org ZQ", "ZQ machine"],
}
"""Strings only the organisation's own answers may contain (plus its group ids, added below)."""

INVALID = {"unexpected": 1}
"""The body of 'own' writes: fails validation (400) after authorisation, changes nothing."""


def _dbc_assignment(ids: dict[str, str]) -> dict[str, Any]:
    return {"dbcId": int(ids["dbcId"])}


GROUP = {"name": "intruder", "msgType": "vehicle_can", "fields": ["speed"]}
ATTACK_BODIES: dict[tuple[str, str], Callable[[dict[str, str]], Any]] = {
    ("POST", "/api/resources/{orgId}/users"): lambda _: {
        "username": "zz_intruder",
        "password": "long enough password",
        "role": "admin",
    },
    ("PUT", "/api/resources/{orgId}/users/{userId}"): lambda _: {"role": "viewer"},
    ("POST", "/api/resources/{orgId}/groups"): lambda _: GROUP,
    ("PUT", "/api/resources/{orgId}/groups/{groupId}"): lambda _: GROUP,
    ("POST", "/api/resources/{orgId}/dbc"): lambda _: {
        "name": "intruder.dbc",
        "content": DBC_PATH.read_text(),
    },
    ("PUT", "/api/resources/{orgId}/machines/{chassisId}/dbc"): _dbc_assignment,
    ("POST", "/api/resources/{orgId}/machines"): lambda _: {
        "chassisId": "ZZ-INTRUDER",
        "name": "intruder",
        "model": "ZZ",
    },
    ("PUT", "/api/resources/{orgId}/machines/{chassisId}"): lambda _: {"name": "intruder"},
    ("PUT", "/api/resources/{orgId}"): lambda _: {"name": "intruder"},
    ("POST", "/api/resources/{orgId}/models"): lambda _: {"name": "ZZ-INTRUDER"},
    ("POST", "/api/resources/{orgId}/machines/import"): lambda _: {"csv": "ZZ-1,intruder,ZZ,\n"},
    ("PUT", "/api/resources/{orgId}/models/{model}/dbc"): _dbc_assignment,
    ("POST", "/api/resources/{orgId}/redecode"): lambda ids: {
        "machines": [ids["chassisId"]],
        "from": 0,
        "to": 1,
    },
    ("POST", "/api/resources/{orgId}/alert-rules"): lambda _: RULE,
    ("PUT", "/api/resources/{orgId}/alert-rules/{ruleId}"): lambda _: RULE,
    ("POST", "/api/resources/{orgId}/alerts/{alertId}/ack"): lambda _: {"comment": "intruder"},
    ("POST", "/api/iothubs/{iothubName}/devices/{deviceId}/methods"): lambda _: {
        "methodName": "startMs",
        "payload": {"reason": "intruder"},
    },
    ("POST", "/db/write/{table}"): lambda ids: {
        "data": {"rows": [[f"{ids['chassisId']}.cpu_usage", 1_700_000_000_000, 1.0]]}
    },
}
"""Valid bodies for foreign and mixed writes (with the other organisation's ids)."""

OK_OWN: dict[tuple[str, str], int] = {
    ("POST", "/api/auth/login"): 400,
    ("POST", "/api/auth/tokens"): 400,
    ("DELETE", "/api/auth/tokens/{tokenId}"): 404,
    ("GET", "/api/resources/{orgId}/alerts/{alertId}"): 404,
    ("GET", "/api/resources/{orgId}/alerts/{alertId}/notifications"): 404,
    ("PUT", "/api/resources/{orgId}/users/{userId}"): 200,  # no field given: changes nothing
    ("POST", "/api/resources/{orgId}/machines/{chassisId}/secret"): 200,
    ("POST", "/api/resources/{orgId}/machines/{chassisId}/provision"): 200,
    ("POST", "/api/auth/logout"): 200,  # a token's logout ends nothing
    ("POST", "/api/auth/live-token"): 200,
}
"""The allowed answer of an 'own' request where it is not 200 (GET) / 400 (invalid write) /
404 (DELETE of an id that does not exist)."""

QUERIES: dict[str, dict[str, str]] = {
    "/api/resources/{orgId}/_common/datasets/{chassisId}/history": {"msgType": "client_raw_data"},
    "/api/resources/{orgId}/_common/datasets/{chassisId}/export": {"msgType": "client_raw_data"},
    "/api/resources/{orgId}/machines/{chassisId}/import": {"filename": "run.log"},
    "/db/write/{table}": {"timeformat": "ms"},
}

REST_ROUTES = sorted(k for k in SPEC if k[1] not in (WS_LIVE, "/db/watch/{table}"))
PRINCIPALS = ["anonymous", "a_viewer", "a_operator", "a_admin", "b_viewer", "b_operator", "b_admin"]


@dataclass
class Call:
    """One request of the matrix and what it must get."""

    who: str
    scenario: str
    method: str
    path: str
    params: dict[str, str]
    body: Any
    expect: int
    twin: Call | None = None
    """The same request with FAKE ids (foreign and mixed)."""
    swaps: tuple[tuple[str, str], ...] = ()
    """(fake, real) pairs to turn the twin's answer into the expected one."""


@pytest.fixture(scope="session")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoOrgs]:
    """The shared two-organisation server (stopped at the end of the session)."""
    yield two_orgs_server(tmp_path_factory)
    release_two_orgs()


@pytest.fixture(scope="module")
def markers(two: TwoOrgs) -> dict[str, list[str]]:
    """Per organisation, the strings no answer to the other organisation may contain."""
    found = {key: list(values) for key, values in MARKERS.items()}
    for key in ("A", "B"):
        found[key].append(two.ids[key]["groupId"])
    return found


def key_of(two: TwoOrgs, who: str) -> str:
    """``A`` or ``B``: the organisation of a seeded user."""
    return "A" if two.users[who].org == "demo" else "B"


def other(key: str) -> str:
    return "B" if key == "A" else "A"


def fill(template: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), FAKE.get(m.group(1), "x")), template)


def build_calls(two: TwoOrgs, method: str, template: str) -> list[Call]:
    """Every request the matrix makes for one route."""
    spec = SPEC[(method, template)]
    params_of = dict(QUERIES.get(template, {}))
    params_names = set(re.findall(r"\{(\w+)\}", template))
    org_in_path = bool(params_names & {"orgId", "iothubName"})
    is_db = template.startswith("/db/")
    objects = params_names & set(OBJECT_PARAMS)
    attack = ATTACK_BODIES.get((method, template))
    calls: list[Call] = []

    def ids_for(key: str, scenario: str) -> dict[str, str]:
        own = {**two.ids[key], "table": "client_raw_data", "msgType": "client_raw_data"}
        own["alertId"] = FAKE["alertId"]
        if scenario == "own":
            if method == "DELETE":
                own.update({p: FAKE[p] for p in OBJECT_PARAMS})
            return own
        theirs = {**two.ids[other(key)], "table": "client_raw_data", "msgType": "client_raw_data"}
        theirs["alertId"] = FAKE["alertId"]
        if scenario == "foreign":
            return theirs
        return {**theirs, "orgId": own["orgId"], "iothubName": own["iothubName"]}

    def expected(who: str, scenario: str) -> int:
        if spec == PUBLIC:
            return OK_OWN[(method, template)]
        if spec == DEVICE or who == "anonymous":
            return 401
        if scenario == "foreign":
            return 404
        if Role[two.users[who].role] < spec:
            return 403
        if scenario == "mixed":
            return 404
        default = 200 if method == "GET" else 404 if method == "DELETE" else 400
        return OK_OWN.get((method, template), default)

    def make(who: str, key: str, scenario: str) -> Call:
        ids = ids_for(key, scenario)
        params = dict(params_of)
        if is_db and scenario == "foreign":
            params["org"] = ids["orgId"]
        if scenario == "own" or attack is None:
            body = INVALID if method in ("POST", "PUT") else None
            if template in ("/api/auth/logout", "/api/auth/live-token") or template.endswith(
                "/secret"
            ):
                body = None
        else:
            body = attack(ids)
        return Call(
            who, scenario, method, fill(template, ids), params, body, expected(who, scenario)
        )

    for who in PRINCIPALS:
        keys = ("A", "B") if who == "anonymous" else (key_of(two, who),)
        for key in keys:
            calls.append(make(who, key, "own"))
            if who == "anonymous" or spec in (PUBLIC, DEVICE):
                continue
            scenarios = []
            if org_in_path or is_db:
                scenarios.append("foreign")
            if objects:
                scenarios.append("mixed")
            for scenario in scenarios:
                call = make(who, key, scenario)
                real = ids_for(key, scenario)
                fake_ids = {
                    p: FAKE[p] if real.get(p) == two.ids[other(key)].get(p) else v
                    for p, v in real.items()
                    if p in FAKE
                }
                fake_ids = {**real, **fake_ids}
                twin = make(who, key, scenario)
                twin.path = fill(template, fake_ids)
                if is_db and scenario == "foreign":
                    twin.params["org"] = fake_ids["orgId"]
                if attack is not None:
                    twin.body = attack(fake_ids)
                call.twin = twin
                call.swaps = tuple(
                    (FAKE[p], real[p]) for p in FAKE if p in real and fake_ids[p] != real[p]
                )
                calls.append(call)
    return calls


async def send(client: httpx.AsyncClient, two: TwoOrgs, call: Call) -> httpx.Response:
    headers = {} if call.who == "anonymous" else two.users[call.who].headers
    return await client.request(
        call.method,
        call.path,
        params=call.params,
        headers=headers,
        json=call.body if call.body is not None else None,
    )


def leaks(text: str, who: str, two: TwoOrgs, markers: dict[str, list[str]]) -> list[str]:
    """The other organisation's markers in ``text`` (nothing for anonymous callers)."""
    if who == "anonymous":
        return [m for key in ("A", "B") for m in markers[key] if m in text]
    key = key_of(two, who)
    return [m for m in markers[other(key)] if m in text]


def swapped(text: str, swaps: tuple[tuple[str, str], ...]) -> str:
    for fake, real in swaps:
        text = text.replace(fake, real)
    return text


@pytest.mark.parametrize(("method", "template"), REST_ROUTES, ids=lambda v: str(v))
async def test_rest_route(
    two: TwoOrgs, markers: dict[str, list[str]], method: str, template: str
) -> None:
    """Each user/anonymous gets exactly the specified answer on own, foreign and mixed ids."""
    calls = build_calls(two, method, template)
    failures: list[str] = []
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=two.url, timeout=20) as client:

        async def check(call: Call) -> None:
            async with limit:
                response = await send(client, two, call)
                twin = await send(client, two, call.twin) if call.twin else None
            where = f"{call.who} {call.scenario} {call.method} {call.path} {call.params}"
            if response.status_code != call.expect:
                failures.append(
                    f"{where}: {response.status_code} (expected {call.expect}) {response.text[:200]}"
                )
            if twin is None:
                found = leaks(response.text, call.who, two, markers)
                if found:
                    failures.append(f"{where}: leaks {found}: {response.text[:300]}")
            else:
                same = (twin.status_code, swapped(twin.text, call.swaps))
                if (response.status_code, response.text) != same:
                    failures.append(
                        f"{where}: differs from unknown ids: {response.status_code} "
                        f"{response.text[:200]} vs {same[0]} {same[1][:200]}"
                    )

        await asyncio.gather(*(check(c) for c in calls))
    assert not failures, "\n".join(failures)


def test_refusals_use_one_error_shape(two: TwoOrgs) -> None:
    """401, 403 and 404 refusals are JSON {"error": {code, message}} with the documented codes."""
    a_viewer = two.user("A", "viewer")
    cases = [
        ({}, "/api/resources/demo/machines", 401, "unauthenticated"),
        (a_viewer.headers, "/api/resources/demo/users", 403, "forbidden"),
        (a_viewer.headers, "/api/resources/orgzq/machines", 404, "not_found"),
        (a_viewer.headers, "/api/no-such-route", 404, "not_found"),
    ]
    for headers, path, status, code in cases:
        response = httpx.get(two.url + path, headers=headers, timeout=10)
        assert response.status_code == status
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["error"]["code"] == code
        assert response.json()["error"]["message"]


def test_dbc_of_another_org_cannot_be_assigned(two: TwoOrgs) -> None:
    """An admin of A cannot decode A's own machine with B's DBC file (404, as an unknown DBC)."""
    a_admin = two.user("A", "admin")
    chassis = two.ids["A"]["chassisId"]
    url = f"{two.url}/api/resources/demo/machines/{chassis}/dbc"
    foreign = httpx.put(url, json={"dbcId": int(two.ids["B"]["dbcId"])}, headers=a_admin.headers)
    unknown = httpx.put(url, json={"dbcId": int(FAKE["dbcId"])}, headers=a_admin.headers)
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.text == unknown.text.replace(FAKE["dbcId"], two.ids["B"]["dbcId"])


def test_users_revoke_only_their_own_tokens(two: TwoOrgs) -> None:
    """A viewer cannot revoke a token of their organisation's admin (404); the admin's still works."""
    a_viewer, a_admin = two.user("A", "viewer"), two.user("A", "admin")
    response = httpx.delete(
        f"{two.url}/api/auth/tokens/{a_admin.token_id}", headers=a_viewer.headers, timeout=10
    )
    assert response.status_code == 404
    me = httpx.get(f"{two.url}/api/auth/me", headers=a_admin.headers, timeout=10)
    assert me.status_code == 200 and me.json()["user"] == "a_admin"


# --------------------------------------------------------------------------- live surfaces


async def ws_session(
    url: str, headers: dict[str, str], fields: list[str], seconds: float
) -> dict[str, Any]:
    """Open a live WebSocket, send INIT_FIELD_LIST, collect messages until closed or timeout."""
    got: list[Any] = []
    async with websockets.connect(url, additional_headers=headers, open_timeout=10) as ws:
        with contextlib.suppress(ConnectionClosed):  # a refusal may close before we send
            await ws.send(orjson.dumps({"type": "INIT_FIELD_LIST", "payload": fields}).decode())
        try:
            async with asyncio.timeout(seconds):
                while True:
                    got.append(orjson.loads(await ws.recv()))
                    if got[-1].get("type") == "LIVE_DATA":
                        break
        except ConnectionClosed:
            pass
        except TimeoutError:
            pass
        code = ws.close_code
        reason = ws.close_reason
    return {"messages": got, "close": (code, reason)}


async def test_websocket_matrix(two: TwoOrgs, markers: dict[str, list[str]]) -> None:
    """Live WebSocket: 1008 for anonymous and foreign orgs, 4404 for foreign machines, data for own."""
    failures: list[str] = []

    def url(org: str, chassis: str) -> str:
        return two.server.live_url(chassis, "client_raw_data", org)

    async def one(who: str, org: str, chassis: str, fields: list[str]) -> dict[str, Any]:
        headers = {} if who == "anonymous" else two.users[who].headers
        return await ws_session(url(org, chassis), headers, fields, 4.0)

    jobs: dict[tuple[str, str], Any] = {}
    for who in PRINCIPALS:
        if who == "anonymous":
            for key in ("A", "B"):
                ids = two.ids[key]
                jobs[(who, f"own-{key}")] = one(who, ids["orgId"], ids["chassisId"], ["cpu_usage"])
            continue
        key = key_of(two, who)
        mine, theirs = two.ids[key], two.ids[other(key)]
        jobs[(who, "own")] = one(who, mine["orgId"], mine["chassisId"], ["cpu_usage"])
        jobs[(who, "foreign")] = one(who, theirs["orgId"], theirs["chassisId"], ["cpu_usage"])
        jobs[(who, "foreign-twin")] = one(who, FAKE["orgId"], FAKE["chassisId"], ["cpu_usage"])
        jobs[(who, "mixed")] = one(who, mine["orgId"], theirs["chassisId"], ["cpu_usage"])
        jobs[(who, "mixed-twin")] = one(who, mine["orgId"], FAKE["chassisId"], ["cpu_usage"])

    async def feed_b() -> None:  # B's machine only sends what we write
        for n in range(6):
            await asyncio.sleep(0.5)
            await asyncio.to_thread(
                write_value, two.url, two.user("B", "admin"), "ZQX-7001.cpu_usage", 40.0 + n
            )

    results = await asyncio.gather(*jobs.values(), feed_b())
    outcome = dict(zip(jobs, results[:-1], strict=True))

    for (who, scenario), result in outcome.items():
        code, reason = result["close"]
        text = orjson.dumps(result).decode()
        where = f"{who} {scenario}"
        if who == "anonymous":
            if (code, reason) != (1008, "authentication required") or result["messages"]:
                failures.append(f"{where}: {result}")
            continue
        key = key_of(two, who)
        if scenario == "own":
            live = [m for m in result["messages"] if m["type"] == "LIVE_DATA"]
            if not live or set(live[0]["payload"]) != {"cpu_usage"}:
                failures.append(f"{where}: no LIVE_DATA: {result}")
            if found := leaks(text, who, two, markers):
                failures.append(f"{where}: leaks {found}: {text[:300]}")
        elif scenario == "foreign":
            if code != 1008 or result["messages"]:
                failures.append(f"{where}: not refused with 1008: {result}")
        elif scenario == "mixed" and (
            code != 4404 or [m.get("code") for m in result["messages"]] != ["not_found"]
        ):
            failures.append(f"{where}: not 4404 not_found: {result}")
        if scenario in ("foreign", "mixed"):
            theirs = two.ids[other(key)]
            twin = orjson.dumps(outcome[(who, f"{scenario}-twin")]).decode()
            twin = twin.replace(FAKE["orgId"], theirs["orgId"])
            twin = twin.replace(FAKE["chassisId"], theirs["chassisId"])
            if twin != text:
                failures.append(f"{where}: differs from unknown ids: {text} vs {twin}")
    assert not failures, "\n".join(failures)


async def sse_session(
    client: httpx.AsyncClient, path: str, params: dict[str, str], headers: dict[str, str]
) -> dict[str, Any]:
    """Open an SSE watch; its status, content type, body (errors) or first data events (streams)."""
    events: list[str] = []
    async with client.stream("GET", path, params=params, headers=headers) as response:
        kind = response.headers.get("content-type", "")
        if response.status_code != 200:
            body = (await response.aread()).decode()
            return {"status": response.status_code, "type": kind, "body": body, "events": []}
        try:
            async with asyncio.timeout(4.0):
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        events.append(line[5:].strip())
                        break
        except TimeoutError:
            pass
    return {"status": 200, "type": kind, "body": "", "events": events}


async def test_sse_matrix(two: TwoOrgs, markers: dict[str, list[str]]) -> None:
    """SSE watch: 401 JSON for anonymous, 404 for foreign orgs and machines, own data otherwise."""
    failures: list[str] = []
    table = "/db/watch/client_raw_data"

    def tag(ids: dict[str, str]) -> str:
        return f"{ids['chassisId']}.cpu_usage"

    async with httpx.AsyncClient(base_url=two.url, timeout=20) as client:
        jobs: dict[tuple[str, str], Any] = {}
        for who in PRINCIPALS:
            headers = {} if who == "anonymous" else two.users[who].headers
            if who == "anonymous":
                for key in ("A", "B"):
                    params = {"tag": tag(two.ids[key]), "org": two.ids[key]["orgId"]}
                    jobs[(who, f"own-{key}")] = sse_session(client, table, params, headers)
                jobs[(who, "audit")] = sse_session(client, "/db/watch/audit", {}, headers)
                continue
            key = key_of(two, who)
            mine, theirs = two.ids[key], two.ids[other(key)]
            fake = {"chassisId": FAKE["chassisId"]}
            cases = {
                "own": {"tag": tag(mine), "period": "1s"},
                "foreign": {"tag": tag(theirs), "org": theirs["orgId"]},
                "foreign-twin": {"tag": tag(fake), "org": FAKE["orgId"]},
                "mixed": {"tag": tag(theirs)},
                "mixed-twin": {"tag": tag(fake)},
            }
            for scenario, params in cases.items():
                jobs[(who, scenario)] = sse_session(client, table, params, headers)
            jobs[(who, "audit")] = sse_session(client, "/db/watch/audit", {}, headers)
        results = await asyncio.gather(*jobs.values())
    outcome = dict(zip(jobs, results, strict=True))

    for (who, scenario), result in outcome.items():
        where = f"{who} {scenario}"
        text = orjson.dumps(result).decode()
        if who == "anonymous":
            if result["status"] != 401 or not result["type"].startswith("application/json"):
                failures.append(f"{where}: {result}")
            continue
        key = key_of(two, who)
        role = two.users[who].role
        if scenario == "own":
            events = [orjson.loads(e) for e in result["events"]]
            if result["status"] != 200 or not events:
                failures.append(f"{where}: no stream with data: {result}")
            elif events[0]["NAME"] != tag(two.ids[key]):
                failures.append(f"{where}: wrong tag {events[0]}")
        elif scenario == "audit":
            want = 200 if role == "admin" else 403
            if result["status"] != want:
                failures.append(f"{where}: {result['status']} (expected {want})")
        elif scenario in ("foreign", "mixed"):
            if result["status"] != 404:
                failures.append(f"{where}: {result['status']} (expected 404): {result}")
            theirs = two.ids[other(key)]
            twin = orjson.dumps(outcome[(who, f"{scenario}-twin")]).decode()
            twin = twin.replace(FAKE["orgId"], theirs["orgId"])
            twin = twin.replace(FAKE["chassisId"], theirs["chassisId"])
            if twin != text:
                failures.append(f"{where}: differs from unknown ids: {text} vs {twin}")
        if scenario in ("own", "audit") and (found := leaks(text, who, two, markers)):
            failures.append(f"{where}: leaks {found}: {text[:300]}")
    assert not failures, "\n".join(failures)


async def test_audit_stream_is_per_organisation(two: TwoOrgs) -> None:
    """An audit entry of B reaches B's admin on the audit SSE table and never A's admin."""
    a_admin, b_admin = two.user("A", "admin"), two.user("B", "admin")
    probe = "zqx-audit-probe"
    seen: dict[str, list[str]] = {"A": [], "B": []}

    async def watch(key: str, user: User, client: httpx.AsyncClient) -> None:
        params = {"period": "1s"}
        async with client.stream(
            "GET", "/db/watch/audit", params=params, headers=user.headers
        ) as response:
            assert response.status_code == 200
            try:
                async with asyncio.timeout(4.0):
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            seen[key].append(line)
                            if probe in line:
                                return
            except TimeoutError:
                pass

    async with httpx.AsyncClient(base_url=two.url, timeout=20) as client:
        watchers = [
            asyncio.create_task(watch("A", a_admin, client)),
            asyncio.create_task(watch("B", b_admin, client)),
        ]
        await asyncio.sleep(1.0)
        response = await client.post(
            "/api/auth/tokens", json={"name": probe}, headers=b_admin.headers
        )
        assert response.status_code == 201
        await asyncio.gather(*watchers)
    assert any(probe in line for line in seen["B"]), seen["B"]
    assert not any("b_admin" in line or probe in line for line in seen["A"]), seen["A"]


class SioProbe:
    """A python-socketio client recording every event, refusal and acknowledgement."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self.refusals: list[Any] = []
        self.client.on("connect_error", self.refusals.append)
        self.client.on("*", lambda event, data=None: self.events.append((event, data)))

    async def connect(self, url: str, auth: dict[str, str] | None) -> bool:
        try:
            await self.client.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)
        except socketio.exceptions.ConnectionError:
            return False
        return True


async def test_socketio_matrix(two: TwoOrgs, markers: dict[str, list[str]]) -> None:
    """Socket.IO: connect_error for anonymous and foreign orgs; own org only in every event."""
    failures: list[str] = []

    async def one(who: str, org: str | None) -> dict[str, Any]:
        probe = SioProbe()
        auth: dict[str, str] = {}
        if who != "anonymous":
            auth["token"] = two.users[who].token
        if org is not None:
            auth["org"] = org
        connected = await probe.connect(two.url, auth or None)
        acks: dict[str, Any] = {}
        if connected:
            key = key_of(two, who)
            mine, theirs = two.ids[key], two.ids[other(key)]
            for name, device in (
                ("own", mine["chassisId"]),
                ("mixed", theirs["chassisId"]),
                ("mixed-twin", FAKE["chassisId"]),
            ):
                acks[name] = await probe.client.call(
                    "subscribe-device", {"deviceId": device, "fields": ["cpu_usage"]}, timeout=5
                )
            await asyncio.sleep(2.5)
            await probe.client.disconnect()
        return {
            "connected": connected,
            "refusals": probe.refusals,
            "acks": acks,
            "events": probe.events,
        }

    jobs: dict[tuple[str, str], Any] = {("anonymous", "own"): one("anonymous", None)}
    for who in PRINCIPALS[1:]:
        key = key_of(two, who)
        jobs[(who, "own")] = one(who, None)
        jobs[(who, "foreign")] = one(who, two.ids[other(key)]["orgId"])
        jobs[(who, "foreign-twin")] = one(who, FAKE["orgId"])

    async def feed_b() -> None:
        for n in range(5):
            await asyncio.sleep(0.6)
            await asyncio.to_thread(
                write_value, two.url, two.user("B", "admin"), "ZQX-7001.cpu_usage", 60.0 + n
            )

    results = await asyncio.gather(*jobs.values(), feed_b())
    outcome = dict(zip(jobs, results[:-1], strict=True))
    unauthenticated = [{"message": "authentication required", "data": {"code": "unauthenticated"}}]
    for (who, scenario), result in outcome.items():
        where = f"{who} {scenario}"
        if who == "anonymous":
            if result["connected"] or result["refusals"] != unauthenticated:
                failures.append(f"{where}: {result}")
            continue
        key = key_of(two, who)
        mine, theirs = two.ids[key], two.ids[other(key)]
        if scenario == "foreign":
            want = [
                {
                    "message": f"organisation {theirs['orgId']!r} not found",
                    "data": {"code": "not_found"},
                }
            ]
            if result["connected"] or result["refusals"] != want:
                failures.append(f"{where}: {result}")
            twin = outcome[(who, "foreign-twin")]["refusals"]
            if (
                orjson.dumps(twin).decode().replace(FAKE["orgId"], theirs["orgId"])
                != orjson.dumps(result["refusals"]).decode()
            ):
                failures.append(f"{where}: differs from an unknown org: {twin}")
        if scenario != "own":
            continue
        if not result["connected"]:
            failures.append(f"{where}: not connected: {result['refusals']}")
            continue
        acks = result["acks"]
        if acks["own"].get("ok") is not True:
            failures.append(f"{where}: own subscribe refused: {acks['own']}")
        if (
            acks["mixed"].get("ok") is not False
            or acks["mixed"].get("error", {}).get("code") != "not_found"
        ):
            failures.append(f"{where}: foreign device not refused: {acks['mixed']}")
        twin = (
            orjson.dumps(acks["mixed-twin"])
            .decode()
            .replace(FAKE["chassisId"], theirs["chassisId"])
        )
        if twin != orjson.dumps(acks["mixed"]).decode():
            failures.append(f"{where}: differs from an unknown device: {acks}")
        names = [event for event, _ in result["events"]]
        dashboards = [data for event, data in result["events"] if event == "dashboard:data"]
        if not dashboards or dashboards[0]["org"] != mine["orgId"]:
            failures.append(f"{where}: no dashboard:data of its org: {names}")
        if key == "B" and not any(
            event == "device-update" and data.get("deviceId") == mine["chassisId"]
            for event, data in result["events"]
        ):
            failures.append(f"{where}: no device-update of its machine: {names}")
        # the refusal of the foreign device echoes its id: everything else must be clean
        clean = [
            (e, d)
            for e, d in result["events"]
            if not (e == "error" and d.get("error", {}).get("code") == "not_found")
        ]
        if found := leaks(orjson.dumps(clean).decode(), who, two, markers):
            failures.append(f"{where}: leaks {found}")
    assert not failures, "\n".join(failures)
