"""The Live Data page against a stand-in gateway.

The stand-in is a small Starlette app run by uvicorn in a thread on a free loopback
port: it serves the static UI, the REST API of the contract from in-memory fixtures,
and the live WebSocket with synthetic values once per whole second (history uses the
same function of time, so history and live points meet exactly). Tests can make it
drop every socket and refuse new ones for a while, or send an ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import socket
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

pytestmark = pytest.mark.browser

STATIC_DIR = Path(__file__).resolve().parents[2] / "src" / "livedata" / "web" / "static"
WINDOW_MS = 120_000
WS_FAILED = r"WebSocket connection to .* failed"
HTTP_4XX = r"Failed to load resource: the server responded with a status of 4\d\d"


def _fields(*specs: tuple[str, str, float | None, float | None]) -> list[dict]:
    return [{"name": n, "unit": u, "min": lo, "max": hi} for n, u, lo, hi in specs]


MACHINES = {
    "demo": [
        {
            "chassisId": "WL-0001",
            "name": "Wheel loader 1",
            "model": "WL",
            "msgTypes": {
                "vehicle_can": {
                    "fields": _fields(
                        ("speed", "km/h", 0, 60),
                        ("engine_rpm", "rpm", 0, 2500),
                        ("coolant_temp", "°C", -40, 130),
                        ("hydraulic_oil_temp", "°C", -40, 130),
                        ("fuel_level", "%", 0, 100),
                        ("brake_status", "", 0, 1),
                    )
                },
                "client_raw_data": {
                    "fields": _fields(
                        ("cpu_load", "%", 0, 100),
                        ("mem_used", "MB", 0, 4096),
                        ("gps_lat", "deg", None, None),
                        ("gps_lng", "deg", None, None),
                    )
                },
            },
        },
        {
            "chassisId": "EX-0002",
            "name": "Excavator 2",
            "model": "EX",
            "msgTypes": {
                "vehicle_can": {
                    "fields": _fields(
                        ("speed", "km/h", 0, 30),
                        ("engine_rpm", "rpm", 0, 2200),
                        ("coolant_temp", "°C", -40, 130),
                    )
                },
                "client_raw_data": {"fields": _fields(("cpu_load", "%", 0, 100))},
            },
        },
    ],
    "north": [
        {
            "chassisId": "DT-0101",
            "name": "Dump truck 101",
            "model": "DT",
            "msgTypes": {"vehicle_can": {"fields": _fields(("speed", "km/h", 0, 70))}},
        }
    ],
}

GROUPS = {
    "demo": [
        {
            "id": "g1",
            "name": "Drive",
            "msgType": "vehicle_can",
            "fields": ["speed"],
            "unit": "km/h",
        },
        {
            "id": "g2",
            "name": "Engine",
            "msgType": "vehicle_can",
            "fields": ["engine_rpm"],
            "unit": "rpm",
        },
        {
            "id": "g3",
            "name": "Temperatures",
            "msgType": "vehicle_can",
            "fields": ["coolant_temp", "hydraulic_oil_temp"],
            "unit": "°C",
        },
    ],
    "north": [],
}


def synthetic_value(chassis: str, field_name: str, ts_ms: int) -> float:
    """A smooth, deterministic signal per (machine, field): the same for history and live."""
    phase = zlib.crc32(f"{chassis}/{field_name}".encode()) % 1000 / 1000 * 2 * math.pi
    t = ts_ms / 1000
    wave = math.sin(t / 11 + phase) * 0.6 + math.sin(t / 2.7 + 2 * phase) * 0.25
    limits = {
        "speed": (22, 12),
        "engine_rpm": (1450, 420),
        "coolant_temp": (86, 5),
        "hydraulic_oil_temp": (64, 7),
        "fuel_level": (71, 1.5),
        "cpu_load": (38, 20),
        "mem_used": (1650, 180),
        "gps_lat": (57.7089, 0.002),
        "gps_lng": (11.9746, 0.003),
    }
    if field_name == "brake_status":
        return 1.0 if wave > 0.4 else 0.0
    mid, amplitude = limits.get(field_name, (50, 10))
    return round(mid + amplitude * wave, 6 if field_name.startswith("gps") else 2)


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@dataclass(eq=False)
class LiveConnection:
    chassis: str
    msg_type: str
    loop: asyncio.AbstractEventLoop
    fields: list[str] = field(default_factory=list)
    init_messages: list[list[str]] = field(default_factory=list)
    outbox: list[dict] = field(default_factory=list)
    dropped: asyncio.Event = field(default_factory=asyncio.Event)


class FakeGateway:
    """In-memory stand-in for the gateway's HTTP API and live WebSocket."""

    def __init__(self) -> None:
        self.groups = {org: [dict(g) for g in groups] for org, groups in GROUPS.items()}
        self.ids = itertools.count(100)
        self.connections: list[LiveConnection] = []  # every connection ever accepted
        self.open: set[LiveConnection] = set()  # those still open
        self.history_requests: list[dict[str, str]] = []
        self.refuse_until = 0.0
        self.epoch = uuid.uuid4().hex[:8]
        self.org = "demo"
        """The logged-in user's organisation (the page shows only that one)."""
        self.role = "admin"
        base = "/api/resources/{org}"
        dataset = base + "/_common/datasets/{chassis}"
        self.app = Starlette(
            routes=[
                Route("/", lambda request: FileResponse(STATIC_DIR / "index.html")),
                Mount("/static", StaticFiles(directory=STATIC_DIR)),
                Route("/api/auth/me", self.me),
                Route("/db/watch/device_status", self.status_stream),
                Route("/api/orgs", self.orgs),
                Route(base + "/machines", self.machines),
                Route(base + "/machines/{chassis}/status", self.status),
                Route(base + "/groups", self.list_groups, methods=["GET"]),
                Route(base + "/groups", self.create_group, methods=["POST"]),
                Route(base + "/groups/{id}", self.update_group, methods=["PUT"]),
                Route(base + "/groups/{id}", self.delete_group, methods=["DELETE"]),
                Route(dataset + "/history", self.history),
                WebSocketRoute(dataset + "/live", self.live),
            ]
        )

    # ---- test controls (called from the test thread) ----

    def drop_all(self, refuse_for: float) -> None:
        """Close every live socket and refuse new ones for `refuse_for` seconds."""
        self.refuse_until = time.time() + refuse_for
        for conn in list(self.open):
            conn.loop.call_soon_threadsafe(conn.dropped.set)

    def send_error(self, code: str, message: str) -> None:
        for conn in list(self.open):
            conn.outbox.append({"type": "ERROR", "code": code, "message": message})

    # ---- REST ----

    async def me(self, request: Request) -> JSONResponse:
        """The stand-in has no accounts: every caller is one user of ``self.org``."""
        return JSONResponse(
            {"user": "tester", "id": 1, "org": self.org, "role": self.role, "via": "session"}
        )

    async def status_stream(self, request: Request) -> Response:
        """The status SSE stream: no changes ever (EventSource reconnects now and then)."""
        return Response(": no status changes\n\n", media_type="text/event-stream")

    async def orgs(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "orgs": [
                    {"id": "demo", "name": "Demo fleet"},
                    {"id": "north", "name": "North quarry"},
                ]
            }
        )

    async def machines(self, request: Request) -> JSONResponse:
        org = request.path_params["org"]
        if org not in MACHINES:
            return error(404, "not_found", f"unknown organisation {org}")
        return JSONResponse({"machines": MACHINES[org]})

    async def status(self, request: Request) -> JSONResponse:
        """Every machine of the stand-in is connected with real-time on."""
        chassis = request.path_params["chassis"]
        return JSONResponse(
            {"deviceId": chassis, "connected": True, "since": 0, "realtime": "on", "lastSeen": None}
        )

    async def list_groups(self, request: Request) -> JSONResponse:
        return JSONResponse({"groups": self.groups[request.path_params["org"]]})

    def _validate(self, org: str, body: dict, group_id: str | None) -> JSONResponse | None:
        name = str(body.get("name", "")).strip()
        if not name:
            return error(422, "invalid", "name is required")
        if any(g["name"] == name and g["id"] != group_id for g in self.groups[org]):
            return error(409, "conflict", f"A group named “{name}” already exists.")
        if body.get("msgType") not in ("vehicle_can", "client_raw_data"):
            return error(422, "invalid", "msgType must be vehicle_can or client_raw_data")
        if not body.get("fields"):
            return error(422, "invalid", "fields must not be empty")
        return None

    async def create_group(self, request: Request) -> JSONResponse:
        org, body = request.path_params["org"], await request.json()
        if problem := self._validate(org, body, None):
            return problem
        group = {
            "id": f"g{next(self.ids)}",
            **{k: body[k] for k in ("name", "msgType", "fields")},
            "unit": body.get("unit", ""),
        }
        self.groups[org].append(group)
        return JSONResponse(group, status_code=201)

    async def update_group(self, request: Request) -> JSONResponse:
        org, group_id, body = (
            request.path_params["org"],
            request.path_params["id"],
            await request.json(),
        )
        if problem := self._validate(org, body, group_id):
            return problem
        for group in self.groups[org]:
            if group["id"] == group_id:
                group.update({k: body[k] for k in ("name", "msgType", "fields", "unit")})
                return JSONResponse(group)
        return error(404, "not_found", f"no group {group_id}")

    async def delete_group(self, request: Request) -> Response:
        org, group_id = request.path_params["org"], request.path_params["id"]
        self.groups[org] = [g for g in self.groups[org] if g["id"] != group_id]
        return Response(status_code=204)

    async def history(self, request: Request) -> JSONResponse:
        q = request.query_params
        self.history_requests.append(dict(q))
        now = int(time.time() * 1000)
        to = int(q.get("to", now))
        start = int(q.get("from", to - WINDOW_MS))
        fields = [f for f in q.get("fields", "").split(",") if f]
        chassis = request.path_params["chassis"]
        seconds = range(start // 1000 * 1000, to + 1, 1000)
        series = {
            f: [[ts, synthetic_value(chassis, f, ts)] for ts in seconds if ts >= start]
            for f in fields
        }
        return JSONResponse({"msgType": q["msgType"], "from": start, "to": to, "series": series})

    # ---- live WebSocket ----

    async def live(self, ws: WebSocket) -> None:
        if time.time() < self.refuse_until:
            await ws.close(code=1013)  # before accept: the handshake is refused
            return
        await ws.accept()
        conn = LiveConnection(
            ws.path_params["chassis"], ws.query_params["msgType"], asyncio.get_running_loop()
        )
        self.connections.append(conn)
        self.open.add(conn)
        tasks = {
            asyncio.create_task(self._receive(ws, conn)),
            asyncio.create_task(self._send(ws, conn)),
            asyncio.create_task(conn.dropped.wait()),
        }
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if conn.dropped.is_set():
                with contextlib.suppress(Exception):
                    await ws.close(code=1012)
        finally:
            self.open.discard(conn)

    async def _receive(self, ws: WebSocket, conn: LiveConnection) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await ws.receive_json()
                if message.get("type") == "INIT_FIELD_LIST":
                    conn.init_messages.append(message["payload"])
                    conn.fields = message["payload"]

    async def _send(self, ws: WebSocket, conn: LiveConnection) -> None:
        for seq in itertools.count(1):
            await asyncio.sleep(1 - time.time() % 1 + 0.01)
            ts = int(time.time()) * 1000
            for message in conn.outbox[:]:
                conn.outbox.remove(message)
                await ws.send_json(message)
            payload = {f: synthetic_value(conn.chassis, f, ts) for f in conn.fields}
            if payload:
                await ws.send_json(
                    {
                        "type": "LIVE_DATA",
                        "payload": payload,
                        "ts": ts,
                        "seq": seq,
                        "epoch": self.epoch,
                    }
                )


class ServerThread:
    """uvicorn serving an ASGI app on a free loopback port, in a daemon thread."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        host, port = self.sock.getsockname()
        self.url = f"http://{host}:{port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def gateway():
    fake = FakeGateway()
    with ServerThread(fake.app) as server:
        fake.url = server.url
        yield fake


def open_sockets(gateway: FakeGateway) -> dict[tuple[str, str], LiveConnection]:
    return {(c.chassis, c.msg_type): c for c in list(gateway.open)}


def test_history_then_live(gateway, live_page):
    """Charts show the last two minutes at once, then grow with live points, without doubles."""
    page = live_page(gateway.url).open()
    page.wait_for(
        lambda: all(n >= 115 for g in page.point_counts().values() for n in g.values()),
        timeout=5,
        what="history in every chart",
    )
    first = page.point_counts()
    assert set(first) == {"Drive", "Engine", "Temperatures"}
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live indicator")
    page.page.wait_for_timeout(3500)
    later = page.point_counts()
    assert all(later[g][f] >= first[g][f] + 2 for g in first for f in first[g]), (first, later)

    points = page.series("Temperatures", "coolant_temp")
    stamps = [p[0] for p in points]
    assert stamps == sorted(set(stamps)), "points must be sorted and unique by ts"
    assert max(b - a for a, b in itertools.pairwise(stamps)) == 1000, (
        "no gap where history meets live"
    )
    assert time.time() * 1000 - stamps[-1] < 2500
    assert points[-1][1] == synthetic_value("WL-0001", "coolant_temp", stamps[-1])

    sockets = open_sockets(gateway)
    assert set(sockets) == {("WL-0001", "vehicle_can")}, "one socket per message type with groups"
    assert sockets["WL-0001", "vehicle_can"].init_messages == [
        ["speed", "engine_rpm", "coolant_temp", "hydraulic_oil_temp"]
    ]
    page.screenshot("live-page")
    page.assert_clean()


def test_add_group_through_form(gateway, live_page):
    """A group added in the form gets a chart that fills from history and live data."""
    page = live_page(gateway.url).open()
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live")
    p = page.page

    p.get_by_role("button", name="Add group").first.click()
    form = p.locator("#group-form")
    form.locator("input[name=name]").fill("Device")
    form.locator("select[name=msgType]").select_option("client_raw_data")
    form.locator("input[value=cpu_load]").check()
    form.locator("input[value=mem_used]").check()
    assert form.locator("input[name=unit]").input_value() == "%", "unit prefilled from first field"
    page.screenshot("add-group-form")
    form.get_by_role("button", name="Save").click()
    p.locator("#group-dialog").wait_for(state="hidden")

    page.wait_for(
        lambda: page.point_counts().get("Device", {}).get("cpu_load", 0) >= 115,
        timeout=5,
        what="new chart backfilled",
    )
    first = page.point_counts()["Device"]["mem_used"]
    page.wait_for(
        lambda: page.point_counts()["Device"]["mem_used"] >= first + 2, what="new chart live"
    )
    assert gateway.groups["demo"][-1]["fields"] == ["cpu_load", "mem_used"]
    sockets = open_sockets(gateway)
    assert sockets["WL-0001", "client_raw_data"].init_messages == [["cpu_load", "mem_used"]]

    # A field added to an existing message type is requested on the open socket.
    p.get_by_role("button", name="Add group").first.click()
    form.locator("input[name=name]").fill("Fuel")
    form.locator("input[value=fuel_level]").check()
    form.get_by_role("button", name="Save").click()
    page.wait_for(
        lambda: page.point_counts().get("Fuel", {}).get("fuel_level", 0) >= 115,
        timeout=5,
        what="fuel chart backfilled",
    )
    can = open_sockets(gateway)["WL-0001", "vehicle_can"]
    assert can is sockets["WL-0001", "vehicle_can"], "the socket stays open"
    assert can.init_messages[-1] == [
        "speed",
        "engine_rpm",
        "coolant_temp",
        "hydraulic_oil_temp",
        "fuel_level",
    ]
    page.screenshot("after-add-group")
    page.assert_clean()


def test_server_validation_error_shown_in_form(gateway, live_page):
    """A 409 from the server is shown inside the form, which stays open."""
    page = live_page(gateway.url).open()
    p = page.page
    p.get_by_role("button", name="Add group").first.click()
    form = p.locator("#group-form")
    form.locator("input[name=name]").fill("Drive")
    form.locator("input[value=speed]").check()
    form.get_by_role("button", name="Save").click()
    error_box = form.locator("#form-error")
    error_box.wait_for()
    assert "already exists" in error_box.inner_text()
    assert p.locator("#group-dialog").is_visible()
    page.screenshot("form-validation-error")
    assert len(gateway.groups["demo"]) == 3
    page.assert_clean(allow=(HTTP_4XX,))


def test_edit_group(gateway, live_page):
    """Editing a group's fields redraws its chart and re-sends the field list."""
    page = live_page(gateway.url).open()
    p = page.page
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live")
    p.locator('.card[data-group-id="g1"]').get_by_role("button", name="Edit").click()
    form = p.locator("#group-form")
    assert form.locator("input[name=name]").input_value() == "Drive"
    assert form.locator("input[value=speed]").is_checked()
    form.locator("input[value=brake_status]").check()
    form.get_by_role("button", name="Save").click()
    page.wait_for(
        lambda: page.point_counts()["Drive"].get("brake_status", 0) >= 115,
        timeout=5,
        what="edited chart backfilled",
    )
    can = open_sockets(gateway)["WL-0001", "vehicle_can"]
    assert can.init_messages[-1] == [
        "speed",
        "brake_status",
        "engine_rpm",
        "coolant_temp",
        "hydraulic_oil_temp",
    ]
    assert gateway.groups["demo"][0]["fields"] == ["speed", "brake_status"]
    page.assert_clean()


def test_delete_group(gateway, live_page):
    """Deleting a group removes its chart; deleting the last one shows the empty state."""
    page = live_page(gateway.url).open()
    p = page.page
    for group_id in ("g1", "g2", "g3"):
        p.locator(f'.card[data-group-id="{group_id}"]').get_by_role("button", name="Delete").click()
        p.locator("#confirm-form").get_by_role("button", name="Delete").click()
        p.locator(f'.card[data-group-id="{group_id}"]').wait_for(state="detached")
        if group_id == "g1":
            page.screenshot("after-delete")
            assert set(page.point_counts()) == {"Engine", "Temperatures"}
    assert gateway.groups["demo"] == []
    p.locator("#empty-state").wait_for()
    page.wait_for(lambda: not open_sockets(gateway), what="socket closed with the last group")
    assert p.locator(".conn").count() == 0
    page.screenshot("empty-state")
    page.assert_clean()


def test_reconnect_fills_gap(gateway, live_page):
    """When the server drops the socket the indicator says reconnecting, then live, and the gap is filled."""
    page = live_page(gateway.url).open()
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live")
    page.page.wait_for_timeout(1500)
    gateway.drop_all(refuse_for=3.5)
    page.wait_for(
        lambda: page.connection_state("vehicle_can") == "reconnecting",
        timeout=3,
        what="reconnecting indicator",
    )
    assert "reconnecting (" in page.page.locator(".conn").inner_text()
    page.screenshot("reconnecting")
    page.wait_for(
        lambda: page.connection_state("vehicle_can") == "live", timeout=12, what="live again"
    )
    page.page.wait_for_timeout(2500)
    stamps = [p[0] for p in page.series("Drive", "speed")]
    assert stamps == sorted(set(stamps))
    assert max(b - a for a, b in itertools.pairwise(stamps)) == 1000, "gap filled from history"
    assert time.time() * 1000 - stamps[-1] < 2500
    resumed = [r for r in gateway.history_requests if "from" in r]
    assert resumed, "history after reconnect starts at the last point"
    assert len(gateway.connections) >= 2
    page.assert_clean(allow=(WS_FAILED,))


def test_server_error_banner(gateway, live_page):
    """An ERROR message from the live socket is shown in the banner and can be dismissed."""
    page = live_page(gateway.url).open()
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live")
    gateway.send_error("unknown_field", "Field 'tyre_pressure' is not decoded for WL-0001")
    banner = page.page.locator("#banner")
    banner.wait_for()
    assert "tyre_pressure" in banner.inner_text()
    assert "unknown_field" in banner.inner_text()
    page.screenshot("error-banner")
    banner.get_by_role("button", name="Dismiss").click()
    banner.wait_for(state="hidden")
    page.assert_clean()


def test_switch_machine(gateway, live_page):
    """Switching machine closes the old sockets and asks only for fields the machine decodes."""
    page = live_page(gateway.url).open()
    page.wait_for(lambda: ("WL-0001", "vehicle_can") in open_sockets(gateway), what="WL socket")
    page.page.select_option("#machine-select", "EX-0002")
    page.wait_for(
        lambda: set(open_sockets(gateway)) == {("EX-0002", "vehicle_can")},
        what="only the EX socket open",
    )
    page.wait_for(
        lambda: page.point_counts()["Drive"]["speed"] >= 115, timeout=5, what="EX history"
    )
    conn = open_sockets(gateway)["EX-0002", "vehicle_can"]
    assert conn.init_messages == [["speed", "engine_rpm", "coolant_temp"]]
    note = page.page.locator('.card[data-group-id="g3"] .card-note')
    assert "hydraulic_oil_temp" in note.inner_text()
    assert "machine=EX-0002" in page.page.url
    page.screenshot("switch-machine")
    page.assert_clean()


def test_empty_organisation(gateway, live_page):
    """An organisation without groups shows the empty state with an Add button."""
    gateway.org = "north"
    page = live_page(gateway.url).open()
    empty = page.page.locator("#empty-state")
    assert empty.is_visible()
    assert empty.get_by_role("button", name="Add group").is_visible()
    assert page.page.locator("#org-select").input_value() == "north"
    assert page.page.locator(".card").count() == 0
    assert not open_sockets(gateway)
    page.assert_clean()
