"""Fuzzing: the REST API from its OpenAPI description (schemathesis), the live WebSocket
protocol and Socket.IO events (hypothesis), against a running demo server as its admin.

No answer may be a 5xx, no handler may raise (the server log is checked for
tracebacks), a bad WebSocket message gets an ERROR or a documented close code, and
a client watching all along keeps receiving live data; afterwards the server still
answers ``/healthz``.  Bounded: a few examples per operation and a time budget for
the whole REST run.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
import socketio
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from tests.conftest import Server, start_demo, stop

REST_BUDGET_S = 40.0
"""Wall-clock budget of the whole schemathesis run; later examples are skipped."""

WS_CLOSE_CODES = {1003, 1008, 1009}
"""Close codes a bad message may get (unsupported data, rate limited, too big)."""

FUZZ = settings(
    max_examples=6,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _text(max_size: int) -> st.SearchStrategy[str]:
    """Text a client can send (no lone surrogates)."""
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=max_size)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server of its own: fuzzing as admin changes things."""
    server = start_demo(tmp_path_factory.mktemp("fuzz"), "--machines", "2")
    yield server
    stop(server)


class Witness:
    """A live client in a thread of its own, receiving all along; records when data came."""

    def __init__(self, server: Server) -> None:
        self.url = server.live_url(server.machines[0], "client_raw_data")
        self.headers = server.headers
        self.times: list[float] = []
        self.closed: Any = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        try:
            async with websockets.connect(self.url, additional_headers=self.headers) as ws:
                await ws.send('{"type":"INIT_FIELD_LIST","payload":["cpu_usage"]}')
                while not self.stop.is_set():
                    try:
                        message = orjson.loads(await asyncio.wait_for(ws.recv(), 0.5))
                    except TimeoutError:
                        continue
                    if message.get("type") == "LIVE_DATA":
                        self.times.append(time.monotonic())
        except Exception as exc:
            self.closed = exc

    def check(self, since: float) -> None:
        """Data arrived since ``since`` with no gap over 4 s, and the connection is open."""
        assert self.closed is None, f"the watching client was disconnected: {self.closed!r}"
        since = max(since, self.times[0])
        stamps = [since] + [t for t in self.times if t >= since] + [time.monotonic()]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert len(stamps) > 2 and max(gaps) < 4.0, f"live data stalled: gaps {max(gaps):.1f} s"


@pytest.fixture(scope="module")
def witness(fuzzed: Server) -> Iterator[Witness]:
    """The client that keeps watching while the fuzzers run."""
    w = Witness(fuzzed)
    deadline = time.monotonic() + 10
    while not w.times and time.monotonic() < deadline:
        time.sleep(0.1)
    assert w.times, "the watching client got no data"
    yield w
    w.stop.set()
    w.thread.join(5)


def server_errors(server: Server) -> list[str]:
    """Tracebacks in the server's log (a handler raised, even if the client saw no 5xx)."""
    log = server.log()
    return [
        chunk[:2000]
        for chunk in log.split("\n20")
        if "Traceback" in chunk or "Exception in ASGI application" in chunk
    ]


# --------------------------------------------------------------------------- REST


_BUDGET: dict[str, float] = {}
_CALLS: dict[str, int] = {}
SLOW_OPERATIONS = {
    "POST /api/auth/login",
    "POST /api/resources/{orgId}/users",
    "PUT /api/resources/{orgId}/users/{userId}",
}
"""Operations that hash a password (Argon2, ~0.4 s of CPU here): fewer examples."""
SLOW_EXAMPLES = 3


@pytest.fixture(scope="module")
def api_schema(fuzzed: Server, witness: Witness) -> Any:
    """The server's OpenAPI description, without the SSE stream (it never ends)."""
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    _BUDGET["deadline"] = time.monotonic() + REST_BUDGET_S
    _BUDGET["started"] = time.monotonic()
    return schema.exclude(path="/db/watch/{table}")


schema = schemathesis.pytest.from_fixture("api_schema")


def _aim(case: Any, server: Server) -> None:
    """Point most cases at real ids, and keep the fuzzer from locking itself out."""
    params = case.path_parameters or {}
    for name in ("orgId", "iothubName"):
        if name in params:
            params[name] = "demo"
    for name in ("chassisId", "deviceId"):
        if name in params and hash(str(params.get(name))) % 2:
            params[name] = server.machines[1]
    if case.operation.path.startswith("/api/resources/{orgId}/users/{userId}"):
        params["userId"] = 999_999  # not the admin itself (disabling it ends the run)
    if case.operation.path == "/api/auth/tokens/{tokenId}":
        params["tokenId"] = 999_999  # not the admin's token
    if case.operation.path.endswith("/secret"):
        params["chassisId"] = server.machines[1]


@schema.parametrize()
@FUZZ
def test_rest_api_has_no_server_errors(case: Any, fuzzed: Server) -> None:
    """Generated requests to every operation, as admin: never a 5xx (503 only if stated)."""
    if time.monotonic() > _BUDGET["deadline"]:
        return
    key = f"{case.method} {case.operation.path}"
    if key in SLOW_OPERATIONS:
        _CALLS[key] = _CALLS.get(key, 0) + 1
        if _CALLS[key] > SLOW_EXAMPLES:
            return
    _aim(case, fuzzed)
    response = case.call(base_url=fuzzed.url, headers=fuzzed.headers, timeout=30)
    if response.status_code == 503:  # documented: store down / too many streams
        assert response.json()["error"]["code"] in ("unavailable", "too_many_streams")
        return
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"


def test_rest_fuzz_left_the_server_healthy(fuzzed: Server, witness: Witness) -> None:
    """After the REST fuzz: /healthz answers, no traceback in the log, live data kept flowing."""
    response = httpx.get(f"{fuzzed.url}/healthz", timeout=10)
    assert response.status_code == 200, response.text
    assert fuzzed.process.poll() is None
    assert server_errors(fuzzed) == []
    witness.check(_BUDGET.get("started", time.monotonic() - 5))


# --------------------------------------------------------------------------- SSE query


@settings(FUZZ, max_examples=25)
@given(
    st.dictionaries(
        st.sampled_from(
            ["tag", "period", "timeformat", "tz", "keep-alive", "max-rows", "parallelism", "org"]
        ),
        st.one_of(_text(30), st.sampled_from(["WL-0001.speed", "1s", "ms", "UTC"])),
        max_size=5,
    ),
    st.sampled_from(["vehicle_can", "client_raw_data", "audit", "alerts", "nope", "x" * 70]),
)
def test_sse_watch_parameters(fuzzed: Server, params: dict[str, str], table: str) -> None:
    """Random watch parameters: a JSON 4xx before any stream, or a stream -- never a 5xx."""
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "GET", f"{fuzzed.url}/db/watch/{table}", params=params, headers=fuzzed.headers
        ) as response,
    ):
        if response.status_code != 200:
            response.read()
            assert response.status_code < 500, response.text
            assert response.headers["content-type"].startswith("application/json")
            assert response.json()["error"]["code"]


# --------------------------------------------------------------------------- WebSocket


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | _text(20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(_text(10), children, max_size=5)
    ),
    max_leaves=20,
)
_field_names = st.lists(
    st.one_of(st.sampled_from(["cpu_usage", "mem_usage", "speed"]), _text(70), _json),
    max_size=8,
)
_init = st.fixed_dictionaries(
    {"type": st.just("INIT_FIELD_LIST"), "payload": st.one_of(_field_names, _json)},
    optional={
        "since": _json | st.fixed_dictionaries({"epoch": _text(70), "seq": _json}),
        "maxRate": st.one_of(st.integers(-5, 5000), st.floats(), _json),
        "aggregate": st.one_of(st.sampled_from(["last", "avg", "minmax"]), _json),
    },
)
_message = st.one_of(
    _init.map(lambda m: orjson.dumps(m).decode()),
    _json.map(lambda m: orjson.dumps(m).decode()),
    _text(200),
    st.binary(max_size=200),
    st.integers(1, 2000).map(lambda n: "[" * n + "]" * n),  # deeply nested
    st.integers(1, 2000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.just("x" * (64 * 1024 + 1)),  # over the message cap
    st.just(orjson.dumps({"type": "INIT_FIELD_LIST", "payload": ["f"] * 600}).decode()),
    st.sampled_from(  # what orjson cannot produce: huge numbers, NaN, duplicate keys
        [
            '{"type":"INIT_FIELD_LIST","payload":["cpu_usage"],"since":{"epoch":"e","seq":1'
            + "0" * 40
            + "}}",
            '{"type":"INIT_FIELD_LIST","payload":["cpu_usage"],"maxRate":1e999}',
            '{"type":"INIT_FIELD_LIST","payload":["cpu_usage"],"maxRate":NaN}',
            '{"type":"INIT_FIELD_LIST","type":"X","payload":[]}',
            '{"type":"INIT_FIELD_LIST","payload":["cpu_usage"],"maxRate":-0.0}',
        ]
    ),
)


async def _ws_session(url: str, headers: dict[str, str], messages: list[Any], n: int) -> None:
    """Send ``messages`` then a probe; every reply is a protocol message until the probe's
    ERROR comes back (the server kept going), or the close code is a documented one."""
    probe = f"PROBE-{n}"
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        try:
            for message in messages:
                await ws.send(message)
            await ws.send(orjson.dumps({"type": probe}).decode())
            async with asyncio.timeout(10):
                while True:
                    reply = orjson.loads(await ws.recv())
                    assert reply["type"] in ("ERROR", "LIVE_DATA", "RECOVERY"), reply
                    if reply["type"] == "ERROR":
                        assert reply["code"] and reply["message"], reply
                        if probe in reply["message"]:
                            return
        except ConnectionClosed:
            pass
        assert ws.close_code in WS_CLOSE_CODES, (ws.close_code, ws.close_reason)


_probes = iter(range(10**9))


@settings(FUZZ, max_examples=40)
@given(st.lists(_message, min_size=1, max_size=4))
def test_websocket_protocol_fuzz(fuzzed: Server, witness: Witness, messages: list[Any]) -> None:
    """Random messages into the live protocol: ERROR or a documented close, never a crash."""
    url = fuzzed.live_url(fuzzed.machines[0], "client_raw_data")
    asyncio.run(_ws_session(url, fuzzed.headers, messages, next(_probes)))


@settings(FUZZ, max_examples=8)
@given(
    st.sampled_from(["client_raw_data", "vehicle_can", "nope", ""]),
    st.sampled_from(["WL-0001", "NOPE-1", "x" * 65, "%00", "..%2F"]),
)
def test_websocket_url_fuzz(fuzzed: Server, msg_type: str, chassis: str) -> None:
    """Odd machine ids and message types in the live URL: 4404 not_found or data, no crash."""
    url = fuzzed.live_url(chassis, msg_type)

    async def run() -> None:
        try:
            ws = await websockets.connect(url, additional_headers=fuzzed.headers)
        except websockets.exceptions.InvalidStatus as exc:  # no such route: refused handshake
            assert exc.response.status_code in (403, 404), exc
            return
        async with ws:
            try:
                await ws.send('{"type":"INIT_FIELD_LIST","payload":["cpu_usage"]}')
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            except ConnectionClosed:
                assert ws.close_code in (4404, 1008), ws.close_code
                return
            assert reply["type"] in ("LIVE_DATA", "ERROR"), reply

    asyncio.run(run())


# --------------------------------------------------------------------------- Socket.IO


@settings(FUZZ, max_examples=15)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["subscribe-device", "unsubscribe-device"]),
            st.one_of(_json, st.fixed_dictionaries({"deviceId": _json, "fields": _json})),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_socketio_events_fuzz(fuzzed: Server, events: list[tuple[str, Any]]) -> None:
    """Random subscribe/unsubscribe payloads: an {ok, …} acknowledgement each, no crash."""

    async def run() -> None:
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(
            fuzzed.url, auth={"token": fuzzed.token}, transports=["websocket"], wait_timeout=10
        )
        try:
            for event, data in events:
                ack = await client.call(event, data, timeout=5)
                assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), ack
        finally:
            await client.disconnect()

    asyncio.run(run())


def test_live_fuzz_left_the_server_healthy(fuzzed: Server, witness: Witness) -> None:
    """After all fuzzing: /healthz answers, no traceback logged, the watcher still gets data."""
    response = httpx.get(f"{fuzzed.url}/healthz", timeout=10)
    assert response.status_code == 200, response.text
    assert fuzzed.process.poll() is None
    assert server_errors(fuzzed) == []
    witness.check(time.monotonic() - 10)
