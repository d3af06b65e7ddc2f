"""The SSE watch and write APIs with clients nobody here wrote: curl, requests + sseclient-py.

Most tests run against the real demo server (``tests.conftest``); the log-table
tests run the same app in this process on a real socket, so they can publish rows.
Every request carries an admin's API token (``Authorization: Bearer``): the demo's,
or on the local server the one of organisation ``acme`` (or ``zeta``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import requests
import sseclient
import uvicorn

from livedata.auth import Role
from livedata.cli.common import bind
from livedata.decode.dm1 import Dm1, Dtc, Lamps
from livedata.gateway.app import create_app
from livedata.gateway.gateway import Gateway
from livedata.gateway.server import LimitedServer, uvicorn_config
from livedata.gateway.sio import with_socketio
from livedata.metadata.accounts import Accounts
from livedata.model import DeviceMessage, MsgType
from livedata.runtime import Runtime
from livedata.settings import load_settings
from tests.conftest import Server

# --------------------------------------------------------------------------- helpers


class Target(Protocol):
    """A running server and the headers of an admin of its (first) organisation."""

    url: str

    @property
    def headers(self) -> dict[str, str]: ...


def new_table() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def write(server: Target, table: str, rows: list[list[Any]], **params: str) -> dict[str, Any]:
    body = {"data": {"columns": ["NAME", "TIME", "VALUE"], "rows": rows}}
    response = requests.post(
        f"{server.url}/db/write/{table}",
        json=body,
        params=params,
        headers=server.headers,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def now_ms() -> int:
    return int(time.time() * 1000)


def auth_header(server: Target) -> str:
    """The server's ``Authorization`` header as one ``Name: value`` line (for curl -H)."""
    return "".join(f"{name}: {value}" for name, value in server.headers.items())


class Stream:
    """One watch stream read with requests + sseclient-py, as Machbase's Python example does;
    ``headers`` are added to the server's (its admin's token)."""

    def __init__(
        self,
        server: Target,
        table: str,
        params: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.response = requests.get(
            f"{server.url}/db/watch/{table}",
            params=params,
            headers={**server.headers, **(headers or {})},
            stream=True,
            timeout=(5, 8),
        )
        assert self.response.status_code == 200, self.response.text
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self.events = sseclient.SSEClient(self.response).events()
        self.last_id: str | None = None

    def next(self) -> sseclient.Event:
        event = next(self.events)
        self.last_id = event.id
        return event

    def next_data(self) -> dict[str, Any]:
        event = self.next()
        assert event.event == "message", (event.event, event.data)
        return json.loads(event.data)

    def take(self, n: int) -> list[dict[str, Any]]:
        return [self.next_data() for _ in range(n)]

    def close(self) -> None:
        self.response.close()


def raw_lines(url: str, headers: dict[str, str], seconds: float) -> list[str]:
    """Every line a stream sends within ``seconds`` (comments included), via a plain socket."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "", parts.port or 80, f"{parts.path}?{parts.query}"
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection((host, port), timeout=seconds + 2) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
        sock.settimeout(0.2)
        data = b""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            data += chunk
    return data.decode().splitlines()


# --------------------------------------------------------------------------- the reference examples


def test_reference_curl_example_streams_latest_values(demo: Server) -> None:
    """Machbase's curl example, as written (host, port and the API token aside), streams
    neo_load1/neo_load5."""
    start = time.time_ns()
    write(demo, "example", [["neo_load1", start, 1.87], ["neo_load5", start, 1.37]])
    stop = threading.Event()
    written: list[float] = []

    def keep_writing() -> None:
        n = 0
        while not stop.wait(0.7):
            n += 1
            value = round(1.87 + n / 100, 2)
            written.append(value)
            write(demo, "example", [["neo_load1", time.time_ns(), value]])

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        url = f"{demo.url}/db/watch/example?tag=neo_load1&tag=neo_load5&period=3s&timeformat=s"
        # --max-time ends curl like ^C does, but lets it flush what it printed
        result = subprocess.run(
            ["curl", "-s", "-o", "-", "--max-time", "4.5", "-H", auth_header(demo), url],
            capture_output=True,
            text=True,
            timeout=15,
        )
    finally:
        stop.set()
        writer.join()
    assert result.returncode == 28, result.stderr  # 28: stopped by --max-time
    events = [
        json.loads(line.removeprefix("data: "))
        for line in result.stdout.splitlines()
        if line.startswith("data: ")
    ]
    assert events[:2] == [
        {"NAME": "neo_load1", "TIME": start // 10**9, "VALUE": 1.87},
        {"NAME": "neo_load5", "TIME": start // 10**9, "VALUE": 1.37},
    ]
    later = events[2:]
    assert [e["NAME"] for e in later] == ["neo_load1"], result.stdout
    assert later[0]["VALUE"] in written[:5]
    assert abs(later[0]["TIME"] - time.time()) < 5
    assert all(
        line.startswith(("id: ", "data: ")) or not line for line in result.stdout.splitlines()
    )


def test_reference_python_example_with_sseclient(demo: Server) -> None:
    """Machbase's Python example (requests + sseclient-py, plus the API token) reads readable UTC
    times from EXAMPLE."""
    # a second ago (the newest neo_load5 value, even after the curl test), in Seoul's local time
    seoul = datetime.now(ZoneInfo("Asia/Seoul")).replace(microsecond=456_000) - timedelta(seconds=1)
    write(
        demo,
        "EXAMPLE",
        [["neo_load5", seoul.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], 0.5]],
        timeformat="default",
        tz="Asia/Seoul",
    )
    url = f"{demo.url}/db/watch/EXAMPLE"
    params = {
        "tag": ["neo_load1", "neo_load5"],
        "period": "3s",
        "keep-alive": "30s",
        "timeformat": "default",
    }
    response = requests.get(url, params=params, headers=demo.headers, stream=True, timeout=(5, 8))
    client = sseclient.SSEClient(response)
    try:
        events = client.events()
        first = json.loads(next(events).data)
        if first["NAME"] == "neo_load1":  # written by the curl test, when it ran before
            first = json.loads(next(events).data)
    finally:
        response.close()
    expected = seoul.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3].rstrip("0")
    assert first == {"NAME": "neo_load5", "TIME": expected, "VALUE": 0.5}


# --------------------------------------------------------------------------- semantics


def test_latest_value_per_period(demo: Server) -> None:
    """Of several values written in one period only the newest is sent, once, per tag."""
    table = new_table()
    write(demo, table, [["a", now_ms(), 0], ["quiet", now_ms(), -1]], timeformat="ms")
    stream = Stream(demo, table, {"tag": ["a", "b", "quiet"], "period": "2s"})
    try:
        assert stream.take(2) == [
            {"NAME": "a", "TIME": pytest.approx(now_ms() * 10**6, abs=5 * 10**9), "VALUE": 0},
            {"NAME": "quiet", "TIME": pytest.approx(now_ms() * 10**6, abs=5 * 10**9), "VALUE": -1},
        ]
        for base in (10, 20):
            t = now_ms()
            rows = [["a", t, base + 1], ["b", t, base + 5], ["a", t + 1, base + 2]]
            write(demo, table, [*rows, ["a", t + 2, base + 3]], timeformat="ms")
            period = stream.take(2)
            assert period == [
                {"NAME": "a", "TIME": (t + 2) * 10**6, "VALUE": base + 3},
                {"NAME": "b", "TIME": t * 10**6, "VALUE": base + 5},
            ]
    finally:
        stream.close()


def test_one_stream_watches_many_machine_tags(demo: Server) -> None:
    """One stream of 18 vehicle_can tags of 3 machines gets each tag once per period, as stored."""
    fields = ["speed", "engine_rpm", "coolant_temp", "fuel_level", "gear", "oil_pressure"]
    tags = [f"{m}.{f}" for m in demo.machines for f in fields]
    stream = Stream(demo, "vehicle_can", {"tag": tags, "period": "2s", "timeformat": "ms"})
    try:
        snapshot = stream.take(len(tags))
        assert [e["NAME"] for e in snapshot] == tags
        period = stream.take(len(tags))
    finally:
        stream.close()
    assert [e["NAME"] for e in period] == tags
    time.sleep(1.2)
    for machine in demo.machines:
        mine = [e for e in period if e["NAME"].startswith(machine + ".")]
        history = requests.get(
            f"{demo.url}/api/resources/demo/_common/datasets/{machine}/history",
            params={"msgType": "vehicle_can", "fields": ",".join(fields)},
            headers=demo.headers,
            timeout=10,
        ).json()["series"]
        for event in mine:
            points = dict(map(tuple, history[event["NAME"].split(".", 1)[1]]))
            assert points[event["TIME"]] == event["VALUE"]


@pytest.mark.parametrize(
    ("timeformat", "tz", "expect"),
    [
        ("s", None, lambda t: t // 1000),
        ("ms", None, lambda t: t),
        ("us", None, lambda t: t * 1000),
        ("ns", None, lambda t: t * 1_000_000),
        (None, None, lambda t: t * 1_000_000),
        ("default", None, lambda t: _readable(t, UTC)),
        ("DEFAULT", "UTC", lambda t: _readable(t, UTC)),
        ("default", "Asia/Seoul", lambda t: _readable(t, ZoneInfo("Asia/Seoul"))),
        ("default", "America/New_York", lambda t: _readable(t, ZoneInfo("America/New_York"))),
        ("default", "Local", lambda t: _readable(t, None)),
    ],
)
def test_time_formats_and_zones(
    demo: Server, timeformat: str | None, tz: str | None, expect: Callable[[int], Any]
) -> None:
    """TIME is written in each time format and time zone as Machbase writes it."""
    table = new_table()
    t = (now_ms() // 1000 - 5) * 1000 + 120
    write(demo, table, [["x", t, 7]], timeformat="ms")
    params = {"tag": "x", **({"timeformat": timeformat} if timeformat else {})}
    stream = Stream(demo, table, {**params, **({"tz": tz} if tz else {})})
    try:
        assert stream.next_data() == {"NAME": "x", "TIME": expect(t), "VALUE": 7}
    finally:
        stream.close()


def _readable(t: int, zone: Any) -> str:
    when = datetime.fromtimestamp(t // 1000, zone)
    return when.strftime("%Y-%m-%d %H:%M:%S") + f".{t % 1000:03d}".rstrip("0")


def test_keep_alive_comment_on_an_idle_stream(demo: Server) -> None:
    """A stream with nothing to send gets a ': keep-alive' comment every keep-alive interval."""
    table = new_table()
    write(demo, table, [["busy", now_ms(), 1]], timeformat="ms")
    url = f"{demo.url}/db/watch/{table}?tag=idle&period=1s&keep-alive=1s"
    lines = raw_lines(url, demo.headers, 3.6)
    assert lines[0] == "HTTP/1.1 200 OK"
    body = lines[lines.index("") + 1 :]
    comments = [line for line in body if line.startswith(":")]
    assert 2 <= len(comments) <= 4, body
    assert all(c == ": keep-alive" for c in comments)
    assert not [line for line in body if line.startswith("data")]


def test_last_event_id_resumes_after_a_dropped_connection(demo: Server) -> None:
    """A client reconnecting with Last-Event-ID gets exactly what it missed, then live values."""
    table = new_table()
    write(demo, table, [["a", now_ms(), 1]], timeformat="ms")
    stream = Stream(demo, table, {"tag": "a", "period": "1s", "timeformat": "ms"})
    assert stream.next_data()["VALUE"] == 1
    write(demo, table, [["a", now_ms(), 2]], timeformat="ms")
    assert stream.next_data()["VALUE"] == 2
    last_id = stream.last_id
    stream.close()  # the connection drops
    write(demo, table, [["a", now_ms(), 3]], timeformat="ms")
    time.sleep(1.3)
    write(demo, table, [["a", now_ms(), 4]], timeformat="ms")
    resumed = Stream(
        demo,
        table,
        {"tag": "a", "period": "1s", "timeformat": "ms"},
        {"Last-Event-ID": last_id},
    )
    try:
        started = time.monotonic()
        assert [e["VALUE"] for e in resumed.take(2)] == [3, 4]
        assert time.monotonic() - started < 0.9  # replayed at once, not at the next period
        write(demo, table, [["a", now_ms(), 5]], timeformat="ms")
        assert resumed.next_data()["VALUE"] == 5
    finally:
        resumed.close()


def test_resume_inside_a_period_sends_the_rest_of_it(demo: Server) -> None:
    """A client that dropped in the middle of a period's events gets the rest of that period."""
    table = new_table()
    write(demo, table, [["a", now_ms(), 1], ["b", now_ms(), 2]], timeformat="ms")
    stream = Stream(demo, table, {"tag": ["a", "b"], "period": "1s"})
    stream.take(2)
    write(demo, table, [["a", now_ms(), 10], ["b", now_ms(), 20]], timeformat="ms")
    first = stream.next_data()
    stream.close()
    assert first["VALUE"] == 10
    resumed = Stream(demo, table, {"tag": ["a", "b"]}, {"Last-Event-ID": stream.last_id or ""})
    try:
        assert resumed.next_data()["VALUE"] == 20
    finally:
        resumed.close()


def test_gap_event_when_missed_values_cannot_be_filled(demo: Server) -> None:
    """A Last-Event-ID that is too old, foreign or garbled gets an 'event: gap', then live data."""
    machine_tag = f"{demo.machines[0]}.speed"
    probe = Stream(demo, "vehicle_can", {"tag": machine_tag, "period": "1s"})
    probe.take(2)
    epoch = (probe.last_id or "").split("-")[0]
    probe.close()
    table = new_table()
    write(demo, table, [["a", now_ms(), 1]], timeformat="ms")
    for last_id in (f"{epoch}-0-0-0", "0badc0de-1-2-0", "not an id"):
        stream = Stream(demo, table, {"tag": "a"}, {"Last-Event-ID": last_id})
        try:
            gap = stream.next()
            assert gap.event == "gap"
            assert json.loads(gap.data)["code"] == "gap"
            assert json.loads(gap.data)["lastEventId"] == last_id
            assert gap.id.startswith(epoch + "-")
        finally:
            stream.close()


# --------------------------------------------------------------------------- write


def test_write_formats_are_stored_and_pushed_live(demo: Server) -> None:
    """CSV (with and without header), NDJSON and gzip'd JSON into client_raw_data: stored and live."""
    machine = demo.machines[1]
    field = f"probe_{uuid.uuid4().hex[:6]}"
    tag = f"{machine}.{field}"
    stream = Stream(demo, "client_raw_data", {"tag": tag, "period": "1s", "timeformat": "ms"})
    t = (now_ms() // 1000 - 10) * 1000
    post = f"{demo.url}/db/write/client_raw_data"
    bodies: list[tuple[dict[str, str], dict[str, str], bytes]] = [
        ({"Content-Type": "text/csv"}, {"timeformat": "ms"}, f"{tag},{t},1\n".encode()),
        (
            {"Content-Type": "text/csv"},
            {"timeformat": "s", "header": "skip"},
            f"NAME,TIME,VALUE\n{tag},{(t + 1000) // 1000},2.5\n".encode(),
        ),
        (
            {"Content-Type": "text/csv"},
            {"timeformat": "ms", "header": "columns", "delimiter": ";"},
            f"TIME;VALUE;NAME\n{t + 2000};3;{tag}\n".encode(),
        ),
        (
            {"Content-Type": "application/x-ndjson"},
            {"timeformat": "ms"},
            json.dumps({"NAME": tag, "TIME": t + 3000, "VALUE": 4}).encode(),
        ),
        (
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            {},
            gzip.compress(
                json.dumps(
                    {
                        "data": {
                            "columns": ["name", "time", "value"],
                            "rows": [[tag, (t + 4000) * 10**6, 5]],
                        }
                    }
                ).encode()
            ),
        ),
    ]
    try:
        for headers, params, body in bodies:
            response = requests.post(
                post, data=body, headers={**demo.headers, **headers}, params=params, timeout=10
            )
            assert response.status_code == 200, response.text
            assert response.json()["success"] is True
        live = [stream.next_data() for _ in range(1)]
    finally:
        stream.close()
    assert live[0]["NAME"] == tag and live[0]["VALUE"] in (1, 2.5, 3, 4, 5)
    history = requests.get(
        f"{demo.url}/api/resources/demo/_common/datasets/{machine}/history",
        params={"msgType": "client_raw_data", "fields": field, "from": t, "to": t + 5000},
        headers=demo.headers,
        timeout=10,
    ).json()
    assert history["series"][field] == [
        [t, 1],
        [t + 1000, 2.5],
        [t + 2000, 3],
        [t + 3000, 4],
        [t + 4000, 5],
    ]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("path", "status", "code", "words"),
    [
        ("/db/watch/nosuchtable?tag=a", 404, "not_found", "table"),
        ("/db/watch/vehicle_can?tag=WL-0001.speed&org=nosuchorg", 404, "not_found", "organisation"),
        ("/db/watch/vehicle_can", 400, "bad_request", "tag"),
        ("/db/watch/vehicle_can?tag=speed", 400, "bad_request", "{chassisId}.{field}"),
        ("/db/watch/vehicle_can?tag=XX-9999.speed", 404, "not_found", "no such machine"),
        ("/db/watch/vehicle_can?tag=WL-0001.speed&period=fast", 400, "bad_request", "period"),
        ("/db/watch/vehicle_can?tag=WL-0001.speed&period=500ms", 400, "bad_request", "minimum"),
        ("/db/watch/vehicle_can?tag=WL-0001.speed&period=2h", 400, "bad_request", "maximum"),
        ("/db/watch/vehicle_can?tag=WL-0001.speed&keep-alive=x", 400, "bad_request", "keep-alive"),
        (
            "/db/watch/vehicle_can?tag=WL-0001.speed&timeformat=iso",
            400,
            "bad_request",
            "timeformat",
        ),
        ("/db/watch/vehicle_can?tag=WL-0001.speed&tz=Mars/Olympus", 400, "bad_request", "tz"),
        (
            "/db/watch/vehicle_can?tag=WL-0001.speed&parallelism=-1",
            400,
            "bad_request",
            "parallelism",
        ),
        ("/db/watch/commands?max-rows=101", 400, "bad_request", "max-rows"),
        ("/db/watch/commands?max-rows=0", 400, "bad_request", "max-rows"),
        ("/db/watch/commands?max-rows=ten", 400, "bad_request", "max-rows"),
        (
            "/db/watch/example?" + "&".join(f"tag=t{i}" for i in range(101)),
            400,
            "bad_request",
            "100",
        ),
        ("/db/watch/example?tag=bad%20name", 400, "bad_request", "invalid tag"),
    ],
)
def test_watch_errors_are_json_before_the_stream(
    demo: Server, path: str, status: int, code: str, words: str
) -> None:
    """Each mistake is a 4xx with {"error":{"code","message"}} instead of a stream."""
    if "example" in path:
        write(demo, "example", [["neo_load1", time.time_ns(), 1.0]])
    response = requests.get(demo.url + path, headers=demo.headers, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert words in error["message"]


@pytest.mark.parametrize(
    ("table", "headers", "body", "status", "words"),
    [
        ("example", {"Content-Type": "application/json"}, b"{not json", 400, "JSON"),
        ("example", {"Content-Type": "application/json"}, b'{"rows":[]}', 400, "data"),
        (
            "example",
            {"Content-Type": "application/json"},
            b'{"data":{"columns":["NAME","TIME"],"rows":[]}}',
            400,
            "NAME, TIME, VALUE",
        ),
        (
            "example",
            {"Content-Type": "application/json"},
            b'{"data":{"rows":[["a","yesterday",1]]}}',
            400,
            "row 1",
        ),
        (
            "example",
            {"Content-Type": "application/json"},
            b'{"data":{"rows":[["a",1,null]]}}',
            400,
            "null",
        ),
        (
            "example",
            {"Content-Type": "application/json"},
            b'{"data":{"rows":[["a",1,[1]]]}}',
            400,
            "nested",
        ),
        (
            "example",
            {"Content-Type": "application/json"},
            b'{"data":{"rows":[["a b",1,1]]}}',
            400,
            "tag name",
        ),
        ("example", {"Content-Type": "text/csv"}, b"a,1\n", 400, "line 1"),
        ("example", {"Content-Type": "application/xml"}, b"<a/>", 415, "Content-Type"),
        ("example", {"Content-Type": "text/csv"}, b"a,1,1\n" * 700_000, 413, "larger"),
        ("vehicle_can", {"Content-Type": "text/csv"}, b"WL-0001.speed,1,1\n", 400, "CAN frames"),
        ("commands", {"Content-Type": "text/csv"}, b"a,1,1\n", 400, "log table"),
        (
            "client_raw_data",
            {"Content-Type": "text/csv"},
            b"XX-1.cpu,1,1\n",
            404,
            "no such machine",
        ),
    ],
    ids=[
        "json-syntax",
        "json-shape",
        "json-columns",
        "time",
        "null",
        "nested",
        "tag-name",
        "csv-fields",
        "media-type",
        "too-large",
        "vehicle_can",
        "log-table",
        "unknown-machine",
    ],
)
def test_write_errors(
    demo: Server, table: str, headers: dict[str, str], body: bytes, status: int, words: str
) -> None:
    """Bad writes are refused whole with a 4xx JSON error naming the problem."""
    response = requests.post(
        f"{demo.url}/db/write/{table}",
        data=body,
        headers={**demo.headers, **headers},
        timeout=10,
    )
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


# --------------------------------------------------------------------------- log tables, in process


class LocalServer:
    """The livedata app (watch, write, Socket.IO) on uvicorn in a thread of this process.

    Organisations ``acme`` (machine ``AC-1``) and ``zeta``, each with an admin whose API
    token is in ``tokens``; ``headers`` act as acme's admin.
    """

    def __init__(
        self,
        data_dir: Path,
        settings: dict[str, Any] | None = None,
        tokens: dict[str, str] | None = None,
        limited: bool = False,
        **sio_options: Any,
    ) -> None:
        """``settings`` are added to the defaults; with ``tokens`` (another server's, on the
        same data directory) nothing is seeded; ``limited``: served by livedata's own server
        layer (:func:`~livedata.gateway.server.uvicorn_config`), as ``livedata serve`` does."""
        config = {"data_dir": data_dir, "port": 0, "log_level": "warning", **(settings or {})}
        self.rt = Runtime(load_settings(config))
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tokens: dict[str, str] = dict(tokens or {})
        self.rt.on_started.append(self._seed if tokens is None else self._note_loop)
        app = create_app(self.rt, **sio_options)
        self.gateway: Gateway = app.state.gateway
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        if limited:
            config = uvicorn_config(with_socketio(app), self.rt.settings, sockets=app.state.live)
            self.server: uvicorn.Server = LimitedServer(config)
        else:
            self.server = uvicorn.Server(
                uvicorn.Config(with_socketio(app), log_config=None, timeout_graceful_shutdown=1)
            )

        async def main() -> None:
            await self.rt.start()
            try:
                await self.server.serve(sockets=[sock])
            finally:
                await self.rt.stop()

        self.thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.rt.started.is_set():
            assert time.monotonic() < deadline, "the local server did not start"
            time.sleep(0.05)

    async def _note_loop(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def _seed(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.rt.meta.ensure_org("acme", "Acme")
        await self.rt.meta.ensure_org("zeta", "Zeta")
        await self.rt.meta.upsert_machine("acme", "AC-1", "Acme 1", "AX")
        accounts = Accounts(self.rt.meta)
        for org in ("acme", "zeta"):
            user = await accounts.create_user(org, f"{org}-admin", uuid.uuid4().hex, Role.admin)
            _row, self.tokens[org] = await accounts.create_token(user.id, "test")
        self.rt.catalog.invalidate()

    def headers_of(self, org: str) -> dict[str, str]:
        """The headers of an API client acting as ``org``'s admin."""
        return {"Authorization": f"Bearer {self.tokens[org]}"}

    @property
    def headers(self) -> dict[str, str]:
        return self.headers_of("acme")

    def run(self, factory: Callable[[], Any]) -> Any:
        """Run ``factory()`` (a coroutine function or plain function) on the server's loop."""
        assert self.loop is not None

        async def call() -> Any:
            result = factory()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def publish(self, org: str, table: str, rows: list[dict[str, Any]]) -> None:
        def go() -> None:
            for row in rows:
                self.gateway.publish_row(org, table, row)

        self.run(go)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("watch-local"))
    yield server
    server.stop()


def test_log_table_sends_at_most_max_rows_per_period(local: LocalServer) -> None:
    """A log table sends the first max-rows rows of a period and says how many it skipped."""
    params = {"period": "1s", "timeformat": "ms"}
    small = Stream(local, "commands", {**params, "max-rows": "10"})
    default = Stream(local, "commands", params)
    try:
        t = now_ms()
        local.publish("acme", "commands", [{"TIME": t + i, "COMMAND": f"c{i}"} for i in range(30)])
        rows = small.take(10)
        assert rows == [{"TIME": t + i, "COMMAND": f"c{i}"} for i in range(10)]
        skipped = small.next()
        assert skipped.event == "skipped"
        assert json.loads(skipped.data) == {"skipped": 20, "table": "commands", "maxRows": 10}
        assert [r["COMMAND"] for r in default.take(20)] == [f"c{i}" for i in range(20)]
        assert json.loads(default.next().data)["skipped"] == 10
    finally:
        small.close()
        default.close()


def test_log_tables_are_per_organisation_and_default_to_the_callers(local: LocalServer) -> None:
    """Rows of one organisation never reach another's stream; without org the caller's one is
    used, and an org that is not the caller's is 404 not_found."""
    refused = requests.get(
        f"{local.url}/db/watch/alerts",
        params={"period": "1s", "org": "zeta"},
        headers=local.headers,
        timeout=10,
    )
    assert refused.status_code == 404, refused.text
    assert refused.json()["error"]["code"] == "not_found"
    acme = Stream(local, "alerts", {"period": "1s"})
    zeta = Stream(local, "alerts", {"period": "1s", "org": "zeta"}, local.headers_of("zeta"))
    try:
        local.publish("zeta", "alerts", [{"ALERT": "zeta-only"}])
        local.publish("acme", "alerts", [{"ALERT": "acme-only"}])
        assert acme.next_data()["ALERT"] == "acme-only"
        assert zeta.next_data()["ALERT"] == "zeta-only"
    finally:
        acme.close()
        zeta.close()


def test_decode_errors_table_shows_what_ingest_rejected(local: LocalServer) -> None:
    """A device message ingest rejects appears as a row of the decode_errors log table."""
    stream = Stream(local, "decode_errors", {"period": "1s", "org": "acme"})
    try:
        message = DeviceMessage("acme", "AC-404", MsgType.CLIENT_RAW_DATA, now_ms(), values={})
        assert local.run(lambda: local.rt.ingest.handle(message)) is None
        row = stream.next_data()
    finally:
        stream.close()
    assert row["MACHINE"] == "AC-404"
    assert row["KIND"] == "rejected"
    assert "unknown machine" in row["MESSAGE"]


def test_dtcs_table_shows_dtc_changes(local: LocalServer) -> None:
    """A DTC becoming active and clearing appears as rows of the dtcs log table."""
    stream = Stream(local, "dtcs", {"period": "1s", "timeformat": "ms"})
    lamps = Lamps(0, 0, 1, 0, 3, 3, 3, 3)
    t = now_ms()
    try:
        active = Dm1(t, 0, lamps, (Dtc(110, 16, 2, 0),))
        local.run(lambda: local.rt.ingest.dtcs.observe_many([("acme", "AC-1", [active])]))
        first = stream.next_data()
        local.run(
            lambda: local.rt.ingest.dtcs.observe_many(
                [("acme", "AC-1", [Dm1(t + 1000, 0, lamps, ())])]
            )
        )
        second = stream.next_data()
    finally:
        stream.close()
    common = {"MACHINE": "AC-1", "SA": 0, "SPN": 110, "FMI": 16, "OC": 2}
    assert first == {"TIME": t, "EVENT": "active", "NAME": "Engine coolant temperature", **common}
    assert second == {**first, "TIME": t + 1000, "EVENT": "cleared"}


def test_streams_release_their_rings(local: LocalServer) -> None:
    """Closed streams are no longer counted; their channel is unsubscribed after the linger time."""
    service = local.gateway.watch
    deadline = time.monotonic() + 30  # generous: a loaded 2-core CI machine is slow
    while service.streams:  # streams of earlier tests may still be closing
        assert time.monotonic() < deadline, "earlier streams are still counted"
        time.sleep(0.05)
    before = 0
    streams = [Stream(local, "vehicle_can", {"tag": "AC-1.speed"}) for _ in range(3)]
    while service.streams < before + 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for stream in streams:
        stream.close()
    while service.streams > before:
        assert time.monotonic() < deadline, "closed streams are still counted"
        time.sleep(0.05)
    local.run(lambda: service._sweep(force=True))
    assert "live-stream/acme/consumer-AC-1/vehicle_can" not in local.gateway.hub.channels


def test_streams_of_the_same_tags_share_one_period_computation(local: LocalServer) -> None:
    """Two streams of the same tags and period are one group: one computation, the same
    event ids and data; a third with another period is a group of its own."""
    service = local.gateway.watch
    params = {"tag": "AC-1.cpu_usage", "period": "1s", "timeformat": "ms"}
    one = Stream(local, "client_raw_data", params)
    two = Stream(local, "client_raw_data", params)
    other = Stream(local, "client_raw_data", {**params, "period": "2s"})
    try:
        deadline = time.monotonic() + 20
        while sum(g.members for g in service._groups.values()) < 3:
            assert time.monotonic() < deadline, "the streams did not start"
            time.sleep(0.05)
        sizes = sorted(g.members for g in service._groups.values() if g.plan.key[0] == "acme")
        assert sizes == [1, 2]
        write(local, "client_raw_data", [["AC-1.cpu_usage", now_ms(), 42]], timeformat="ms")
        first, second = one.next(), two.next()
        assert (first.id, first.data) == (second.id, second.data)
        assert json.loads(first.data)["VALUE"] == 42
    finally:
        one.close()
        two.close()
        other.close()
