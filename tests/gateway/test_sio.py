"""Socket.IO with clients nobody here wrote: python-socketio's AsyncClient and npm's socket.io-client.

The demo server runs with a second organisation seeded into its data directory:
``other`` has ``OT-0001`` and its own ``WL-0001`` (the same id as a demo machine), and
an admin whose API token is ``OTHER_TOKEN``.  Clients authenticate with the auth
payload ``{token}``: the demo admin's token (``Server.token``) or other's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import queue
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import socketio

from livedata.auth import Role
from livedata.gateway.sio import ALERT_CREATED
from livedata.metadata import Metadata
from livedata.metadata.accounts import Accounts
from livedata.sim.demo import ORG, ensure_demo_admin
from tests.conftest import Server, start_demo, stop
from tests.gateway.test_watch import LocalServer

SCRIPT = Path(__file__).with_name("sio_client.mjs")
ROOT = Path(__file__).resolve().parents[2]
OTHER_TOKEN = "ld_test_other_admin_token_0123456789abcdefghij"
"""The API token of organisation other's admin."""


async def _seed(data_dir: Path) -> None:
    meta = Metadata(f"sqlite:///{data_dir / 'metadata.db'}")
    await meta.start()
    # the demo's admin first: the server gives the first admin its LIVEDATA_ADMIN_TOKEN
    await meta.ensure_org(ORG, "Demo fleet")
    await ensure_demo_admin(meta)
    await meta.ensure_org("other", "Another organisation")
    await meta.upsert_machine("other", "OT-0001", "Other 1", "OT")
    await meta.upsert_machine("other", "WL-0001", "Other's WL-0001", "OT")
    accounts = Accounts(meta)
    admin = await accounts.create_user("other", "other-admin", "other-password", Role.admin)
    await accounts.create_token(admin.id, "test", raw=OTHER_TOKEN)
    await meta.close()


@pytest.fixture(scope="module")
def two_orgs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server (org demo: WL-0001, WL-0002) whose data dir also holds organisation other."""
    data_dir = tmp_path_factory.mktemp("sio-demo")
    asyncio.run(_seed(data_dir))
    server = start_demo(data_dir, "--machines", "2")
    yield server
    stop(server)


def write_other(server: Server, tag: str, value: float) -> int:
    """Write one client_raw_data value to organisation other (pushed live like device data)."""
    t = int(time.time() * 1000)
    response = requests.post(
        f"{server.url}/db/write/client_raw_data",
        params={"org": "other", "timeformat": "ms"},
        json={"data": {"rows": [[tag, t, value]]}},
        headers={"Authorization": f"Bearer {OTHER_TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return t


class Recorder:
    """A python-socketio AsyncClient that records every event it gets."""

    EVENTS = (
        "dashboard:data",
        "dashboard:update",
        "device-update",
        "sensor-data",
        "alert-created",
        "error",
    )

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.got: list[tuple[float, str, Any]] = []
        for name in self.EVENTS:
            self.client.on(name, self._recorder(name))

    def _recorder(self, name: str) -> Callable[[Any], None]:
        def record(data: Any = None) -> None:
            self.got.append((time.monotonic(), name, data))

        return record

    async def connect(self, url: str, token: str, org: str | None = None) -> Recorder:
        """Connect with the API token ``token``, naming ``org`` if given."""
        auth = {"token": token, **({"org": org} if org else {})}
        await self.client.connect(url, auth=auth, wait_timeout=10)
        return self

    def events(self, name: str, since: float = 0.0) -> list[Any]:
        return [data for at, event, data in self.got if event == name and at >= since]

    async def wait_for(self, name: str, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while not self.events(name):
            assert time.monotonic() < deadline, f"no {name} within {timeout} s"
            await asyncio.sleep(0.05)
        return self.events(name)[0]


def readings(events: list[Any]) -> list[dict[str, Any]]:
    return [e for e in events if "sensorType" in e]


async def test_python_client_gets_the_right_readings_until_it_unsubscribes(
    two_orgs: Server,
) -> None:
    """subscribe-device with fields → device-update with exactly those stored readings; unsubscribe stops them."""
    rec = await Recorder().connect(two_orgs.url, two_orgs.token, "demo")
    try:
        summary = await rec.wait_for("dashboard:data")
        assert summary["org"] == "demo" and summary["total"] == 2
        assert [m["deviceId"] for m in summary["machines"]] == two_orgs.machines
        machine = two_orgs.machines[0]
        ack = await rec.client.call(
            "subscribe-device", {"deviceId": machine, "fields": ["speed", "engine_rpm"]}, timeout=5
        )
        assert ack["ok"] is True and ack["room"] == f"device:demo:{machine}"
        subscribed = time.monotonic()
        await asyncio.sleep(2.6)
        got = readings(rec.events("device-update", subscribed))
        assert {r["sensorType"] for r in got} == {"speed", "engine_rpm"}
        assert {r["deviceId"] for r in got} == {machine}
        assert len(got) >= 4
        ack = await rec.client.call("unsubscribe-device", machine, timeout=5)
        assert ack == {"ok": True, "deviceId": machine, "subscribed": False}
        await asyncio.sleep(0.3)
        stopped = time.monotonic()
        await asyncio.sleep(1.6)
        assert rec.events("device-update", stopped) == []
        assert rec.events("sensor-data", stopped)  # the connection itself is still live
    finally:
        await rec.client.disconnect()
    response = await asyncio.to_thread(
        requests.get,
        f"{two_orgs.url}/api/resources/demo/_common/datasets/{machine}/history",
        params={"msgType": "vehicle_can", "fields": "speed,engine_rpm"},
        headers=two_orgs.headers,
        timeout=10,
    )
    history = response.json()["series"]  # a record is stored before it is published
    for reading in got:
        stored = dict(map(tuple, history[reading["sensorType"]]))
        assert stored[reading["timestamp"]] == reading["value"]


async def test_rooms_are_per_organisation(two_orgs: Server) -> None:
    """A client of org other subscribed to its WL-0001 gets other's values, never demo's WL-0001."""
    rec = await Recorder().connect(two_orgs.url, OTHER_TOKEN, "other")
    try:
        summary = await rec.wait_for("dashboard:data")
        assert [m["deviceId"] for m in summary["machines"]] == ["OT-0001", "WL-0001"]
        assert summary["machines"][1]["name"] == "Other's WL-0001"
        ack = await rec.client.call("subscribe-device", "WL-0001", timeout=5)
        assert ack["ok"] is True and ack["room"] == "device:other:WL-0001"
        t = write_other(two_orgs, "WL-0001.cpu_usage", 42.5)
        await asyncio.sleep(2.0)
        got = readings(rec.events("device-update"))
        assert got == [
            {"deviceId": "WL-0001", "sensorType": "cpu_usage", "value": 42.5, "timestamp": t}
        ]
        topics = {e["topic"] for e in rec.events("sensor-data")}
        assert topics == {"live-stream/other/consumer-WL-0001/client_raw_data"}
    finally:
        await rec.client.disconnect()


async def test_unknown_organisation_is_refused(two_orgs: Server) -> None:
    """Connecting for an organisation that is not the caller's (here one that does not exist,
    or one that does) fails with not_found; without a valid token with unauthenticated."""
    for org in ("nope", "other"):
        rec = Recorder()
        refusals: list[Any] = []
        rec.client.on("connect_error", refusals.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await rec.connect(two_orgs.url, two_orgs.token, org)
        assert refusals == [
            {"message": f"organisation {org!r} not found", "data": {"code": "not_found"}}
        ]
    rec = Recorder()
    refusals = []
    rec.client.on("connect_error", refusals.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await rec.connect(two_orgs.url, "ld_not_a_token", "demo")
    assert refusals == [{"message": "authentication required", "data": {"code": "unauthenticated"}}]


async def test_dashboard_updates_and_throttled_sensor_data(two_orgs: Server) -> None:
    """dashboard:update comes every second; sensor-data is the org's, at most one per topic per second."""
    rec = await Recorder().connect(two_orgs.url, two_orgs.token)  # no org: the caller's, demo
    try:
        await rec.wait_for("dashboard:data")
        await asyncio.sleep(3.2)
    finally:
        await rec.client.disconnect()
    updates = rec.events("dashboard:update")
    assert 2 <= len(updates) <= 4
    assert all(u["org"] == "demo" and u["online"] == 2 for u in updates)
    assert all(
        set(m["values"]) == {"vehicle_can", "client_raw_data"} for m in updates[-1]["machines"]
    )
    per_topic: dict[str, list[int]] = defaultdict(list)
    for event in rec.events("sensor-data"):
        per_topic[event["topic"]].append(event["timestamp"] // 1000)
    assert set(per_topic) == {
        f"live-stream/demo/consumer-{m}/{t}"
        for m in two_orgs.machines
        for t in ("vehicle_can", "client_raw_data")
    }
    assert all(len(s) == len(set(s)) for s in per_topic.values())


# --------------------------------------------------------------------------- socket.io-client


class NodeClient:
    """npm's socket.io-client in a Node process (tests/gateway/sio_client.mjs)."""

    def __init__(self, url: str, token: str, org: str | None = None) -> None:
        node = shutil.which("node")
        assert node, "node is not installed"
        self.proc = subprocess.Popen(
            [node, str(SCRIPT), url, token, *([org] if org else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def _pull(self, timeout: float) -> dict[str, Any] | None:
        try:
            item = self.lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        self.seen.append(item)
        return item

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict:
        deadline = time.monotonic() + timeout
        for item in self.seen:
            if predicate(item):
                return item
        while time.monotonic() < deadline:
            item = self._pull(deadline - time.monotonic())
            if item is not None and predicate(item):
                return item
        raise AssertionError(f"nothing matched within {timeout} s; saw {self.seen[-5:]}")

    def collect(self, seconds: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        got = []
        while time.monotonic() < deadline:
            item = self._pull(deadline - time.monotonic())
            if item is not None:
                got.append(item)
        return got

    def call(self, event: str, data: Any) -> Any:
        ident = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": ident, "emit": event, "data": data}) + "\n")
        self.proc.stdin.flush()
        return self.wait(lambda item: item.get("ack") == ident)["data"]

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write('{"close": true}\n')
            self.proc.stdin.flush()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def test_node_socket_io_client(two_orgs: Server) -> None:
    """socket.io-client: subscribe-device → device-update, unsubscribe stops them, other org refused."""
    node = NodeClient(two_orgs.url, two_orgs.token, "demo")
    try:
        node.wait(lambda i: i.get("event") == "connect", 10)
        summary = node.wait(lambda i: i.get("event") == "dashboard:data")["data"]
        assert summary["org"] == "demo"
        machine = two_orgs.machines[1]
        assert node.call("subscribe-device", machine)["ok"] is True
        got = [
            i["data"]
            for i in node.collect(2.2)
            if i.get("event") == "device-update" and "sensorType" in i["data"]
        ]
        sensors = {r["sensorType"] for r in got}
        assert {"speed", "engine_rpm", "cpu_usage", "gps_lat"} <= sensors
        assert {r["deviceId"] for r in got} == {machine}
        stamps = {r["timestamp"] for r in got}
        assert len(stamps) >= 2 and all(abs(s / 1000 - time.time()) < 5 for s in stamps)

        assert node.call("unsubscribe-device", {"deviceId": machine})["ok"] is True
        node.collect(0.3)
        assert [i for i in node.collect(1.5) if i.get("event") == "device-update"] == []

        refused = node.call("subscribe-device", "OT-0001")
        assert refused["ok"] is False and refused["error"]["code"] == "not_found"
        error = node.wait(lambda i: i.get("event") == "error")["data"]
        assert error["error"]["code"] == "not_found" and error["deviceId"] == "OT-0001"
        write_other(two_orgs, "OT-0001.cpu_usage", 7.0)
        later = node.collect(1.2)
        assert not [
            i
            for i in later
            if i.get("event") == "device-update" and i["data"]["deviceId"] == "OT-0001"
        ]
        assert not [i for i in later if "/other/" in json.dumps(i.get("data"))]
    finally:
        node.close()


def test_node_client_org_choice_and_bad_payloads(two_orgs: Server) -> None:
    """Without org the caller's organisation is used, another one is refused, so is a client
    without a token, and bad payloads get errors."""
    node = NodeClient(two_orgs.url, two_orgs.token)
    refused = NodeClient(two_orgs.url, two_orgs.token, "nope")
    anonymous = NodeClient(two_orgs.url, "")
    try:
        summary = node.wait(lambda i: i.get("event") == "dashboard:data", 10)["data"]
        assert summary["org"] == "demo"
        for payload in (None, 42, {"deviceId": two_orgs.machines[0], "fields": "speed"}):
            reply = node.call("subscribe-device", payload)
            assert reply["ok"] is False and reply["error"]["code"] == "bad_request", reply
        error = refused.wait(lambda i: i.get("event") == "connect_error", 10)["data"]
        assert error == {"code": "not_found"}
        assert not [i for i in refused.seen if i.get("event") == "dashboard:data"]
        error = anonymous.wait(lambda i: i.get("event") == "connect_error", 10)["data"]
        assert error == {"code": "unauthenticated"}
        assert not [i for i in anonymous.seen if i.get("event") == "dashboard:data"]
    finally:
        node.close()
        refused.close()
        anonymous.close()


# --------------------------------------------------------------------------- in process


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    server = LocalServer(tmp_path_factory.mktemp("sio-local"), sensor_data="on")
    yield server
    server.stop()


async def test_alert_created_reaches_only_its_organisation(local: LocalServer) -> None:
    """push_org(org, ALERT_CREATED, alert) sends alert-created to that organisation's
    clients only."""
    acme = await Recorder().connect(local.url, local.tokens["acme"], "acme")
    zeta = await Recorder().connect(local.url, local.tokens["zeta"], "zeta")
    try:
        await acme.wait_for("dashboard:data")
        await zeta.wait_for("dashboard:data")
        alert = {"id": "a1", "deviceId": "AC-1", "severity": "critical", "message": "too hot"}
        await asyncio.to_thread(
            local.run, lambda: local.gateway.socket.push_org("acme", ALERT_CREATED, alert)
        )
        assert await acme.wait_for("alert-created") == alert
        await asyncio.sleep(0.3)
        assert zeta.events("alert-created") == []
    finally:
        await acme.client.disconnect()
        await zeta.client.disconnect()


async def test_sensor_data_modes(local: LocalServer) -> None:
    """sensor_data "on" sends every record, "off" none."""
    rec = await Recorder().connect(local.url, local.tokens["acme"], "acme")
    gateway = local.gateway.socket
    try:
        await rec.wait_for("dashboard:data")
        t = int(time.time() * 1000)

        def post(rows: list[list[Any]]) -> None:
            body = {"data": {"rows": rows}}
            response = requests.post(
                f"{local.url}/db/write/client_raw_data?timeformat=ms",
                json=body,
                headers=local.headers,
                timeout=10,
            )
            assert response.status_code == 200, response.text

        await asyncio.to_thread(post, [["AC-1.cpu_usage", t, 1], ["AC-1.cpu_usage", t + 100, 2]])
        await asyncio.sleep(0.5)
        assert [e["data"]["cpu_usage"] for e in rec.events("sensor-data")] == [1, 2]
        gateway.sensor_data = "off"
        await asyncio.to_thread(post, [["AC-1.cpu_usage", t + 200, 3]])
        await asyncio.sleep(0.5)
        assert len(rec.events("sensor-data")) == 2
        assert readings(rec.events("device-update")) == []  # nobody subscribed
    finally:
        gateway.sensor_data = "on"
        await rec.client.disconnect()


# --------------------------------------------------------------------------- sans server


def test_device_update_frames_are_server_websocket_text_frames() -> None:
    """A device-update is one unmasked text frame holding 42["device-update",data], any size."""
    from livedata.gateway.sio import DEVICE_UPDATE

    small = DEVICE_UPDATE.frame(b'{"a":1}')
    packet = b'42["device-update",{"a":1}]'
    assert small == bytes((0x81, len(packet))) + packet
    big = DEVICE_UPDATE.frame(b'{"a":"' + b"x" * 300 + b'"}')
    assert big[:2] == bytes((0x81, 126)) and int.from_bytes(big[2:4], "big") == len(big) - 4


def test_since_positions_are_checked() -> None:
    """since maps message types to {epoch, seq}; anything else is a bad_request refusal."""
    from livedata.gateway.sio import _Refused, _since

    assert _since({"deviceId": "WL-0001"}) is None
    assert _since({"since": {}}) == {}
    assert _since({"since": {"vehicle_can": {"epoch": "e1", "seq": 5}}}) == {
        "vehicle_can": ("e1", 5)
    }
    for bad in (
        [],
        {"nope": {"epoch": "e", "seq": 1}},
        {"vehicle_can": {"epoch": "", "seq": 1}},
        {"vehicle_can": {"epoch": "e", "seq": -1}},
        {"vehicle_can": {"epoch": "e", "seq": True}},
        {"vehicle_can": {"epoch": "e" * 65, "seq": 1}},
    ):
        with pytest.raises(_Refused) as refused:
            _since({"since": bad})
        assert refused.value.code == "bad_request"
