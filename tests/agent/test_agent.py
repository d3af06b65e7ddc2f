"""The edge agent end to end: Mosquitto + `livedata serve` + the agent on a python-can virtual bus."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import can
import httpx
import orjson
import pytest
import websockets

from livedata.agent import Agent, AgentConfig
from livedata.decode.can import CanDecoder
from livedata.devices.mqtt import status_topic
from livedata.sim.demo import DBC_PATH
from livedata.sim.machine import Machine
from tests.servers.mosquitto import Mosquitto, start_mosquitto

ORG = "demo"
_channels = itertools.count(1)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A Mosquitto of this module, persistent so a restart keeps the server's session."""
    directory = tmp_path_factory.mktemp("agent-mosquitto")
    mosquitto = start_mosquitto(directory, f"persistence true\npersistence_location {directory}/\n")
    yield mosquitto
    mosquitto.stop()


@pytest.fixture(scope="module")
def server(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`livedata serve --devices mqtt://…?client_id=… --seed-demo 5` (no fleet); yields its URL.

    A persistent session: while the server's link reconnects after a broker restart the
    broker queues its messages instead of dropping them (a clean session loses them).
    """
    data = tmp_path_factory.mktemp("agent-server")
    log = (data / "server.log").open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "livedata", "serve", "--port", "0", "--data-dir", str(data),
         "--devices", broker.url + "?client_id=agent-test-ingest", "--seed-demo", "5"],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    url = None
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline:
        line = process.stdout.readline()
        if m := re.search(r"serving on (http://\S+)", line):
            url = m.group(1)
        elif not line and process.poll() is not None:
            break
    if url is None:
        process.kill()
        raise RuntimeError((data / "server.log").read_text()[-3000:])
    yield url
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Producer:
    """A test CAN producer: the simulated machine's frames on a virtual bus, 4 times a second."""

    def __init__(self, channel: str, chassis: str) -> None:
        self.bus = can.Bus(interface="virtual", channel=channel)
        self.machine = Machine(chassis, CanDecoder.from_dbc(DBC_PATH.read_text()), 0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.25):
            frames, _ = self.machine.step(int(time.time() * 1000))
            for f in frames:
                msg = can.Message(
                    arbitration_id=f.arbitration_id, is_extended_id=f.is_extended, data=f.data
                )
                self.bus.send(msg)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.bus.shutdown()


@contextlib.asynccontextmanager
async def running_agent(broker: Mosquitto, chassis: str, tmp: Path) -> AsyncIterator[Agent]:
    channel = f"agent-test-{next(_channels)}"
    producer = Producer(channel, chassis)
    config = AgentConfig(
        mqtt=broker.url + "?connect_timeout=2",
        tenant=ORG,
        chassis=chassis,
        can_interface="virtual",
        can_channel=channel,
        state_file=tmp / "state.json",
        spool_file=tmp / "spool.sqlite",
        send_timeout=2.0,
    )
    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        producer.close()


async def wait_status(http: httpx.AsyncClient, chassis: str, timeout: float = 10, **want: object):
    deadline = time.monotonic() + timeout
    while True:
        body = (await http.get(f"/api/resources/{ORG}/machines/{chassis}/status")).json()
        if all(body.get(k) == v for k, v in want.items()):
            return body
        assert time.monotonic() < deadline, f"status of {chassis} never {want}: {body}"
        await asyncio.sleep(0.2)


class LiveClient:
    """Collects the LIVE_DATA timestamps of one machine's vehicle_can channel."""

    def __init__(self, server: str, chassis: str, msg_type: str = "vehicle_can") -> None:
        base = server.replace("http://", "ws://")
        self.url = f"{base}/api/resources/{ORG}/_common/datasets/{chassis}/live?msgType={msg_type}"
        self.field = "speed" if msg_type == "vehicle_can" else "cpu_usage"
        self.received: list[tuple[float, int]] = []  # (arrival, record ts)
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        async with websockets.connect(self.url) as ws:
            await ws.send(
                orjson.dumps({"type": "INIT_FIELD_LIST", "payload": [self.field]}).decode()
            )
            async for raw in ws:
                msg = orjson.loads(raw)
                if msg.get("type") == "LIVE_DATA":
                    self.received.append((time.monotonic(), msg.get("ts")))

    async def __aenter__(self) -> LiveClient:
        self.task = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task

    def since(self, t: float) -> int:
        return sum(1 for arrival, _ in self.received if arrival >= t)


async def command(http: httpx.AsyncClient, chassis: str, method: str, **extra: object):
    body = {"methodName": method, "payload": {"reason": "user_action", "commandId": "t"}, **extra}
    return await http.post(f"/api/iothubs/{ORG}/devices/{chassis}/methods", json=body)


async def test_stop_and_start_round_trip(server: str, broker: Mosquitto, tmp_path: Path) -> None:
    """Stop ends LIVE_DATA within 2 s and shows stopped; Start resumes it; both are logged."""
    chassis = "WL-0001"
    async with (
        httpx.AsyncClient(base_url=server, timeout=40) as http,
        running_agent(broker, chassis, tmp_path),
        LiveClient(server, chassis) as live,
    ):
        await wait_status(http, chassis, connected=True, realtime="on")
        deadline = time.monotonic() + 10
        while live.since(0) < 2:
            assert time.monotonic() < deadline, "no LIVE_DATA from the agent"
            await asyncio.sleep(0.2)
        stop = await command(http, chassis, "endMs")
        assert stop.status_code == 200 and stop.json() == {
            "status": 200,
            "payload": {"realtime": "off"},
        }
        await wait_status(http, chassis, timeout=2, realtime="off")
        quiet_from = time.monotonic() + 2.0
        await asyncio.sleep(5.0)
        assert live.since(quiet_from) == 0, "LIVE_DATA kept coming after Stop"
        started = await command(http, chassis, "startMs")
        assert started.json()["payload"] == {"realtime": "on"}
        t0 = time.monotonic()
        await wait_status(http, chassis, timeout=2, realtime="on")
        deadline = time.monotonic() + 5
        while live.since(t0) < 2:
            assert time.monotonic() < deadline, "LIVE_DATA did not resume after Start"
            await asyncio.sleep(0.2)
        log = (await http.get(f"/api/iothubs/{ORG}/devices/{chassis}/methods")).json()["commands"]
        assert [c["methodName"] for c in log[:2]] == ["startMs", "endMs"]
        assert all(c["outcome"] == "ok" and c["status"] == 200 for c in log[:2])
        assert (tmp_path / "state.json").read_text() == '{"realtime": true}'


async def test_not_connected_is_404_at_once(server: str) -> None:
    """A known machine with no agent connected gets 404 DeviceNotConnected without waiting."""
    async with httpx.AsyncClient(base_url=server, timeout=40) as http:
        t0 = time.monotonic()
        response = await command(http, "WL-0002", "startMs")
        assert time.monotonic() - t0 < 1.0
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "DeviceNotConnected"


async def test_silent_device_is_504_after_the_timeout(server: str, broker: Mosquitto) -> None:
    """A connected device that never answers gives 504 GatewayTimeout after the timeout (±1 s)."""
    chassis = "WL-0003"
    async with (
        aiomqtt.Client("127.0.0.1", broker.port, identifier=f"{ORG}/{chassis}") as device,
        httpx.AsyncClient(base_url=server, timeout=40) as http,
    ):
        await device.subscribe(f"livedata/{ORG}/{chassis}/methods/req/+/+", qos=1)
        online = orjson.dumps({"online": True, "ts": int(time.time() * 1000)})
        await device.publish(status_topic(ORG, chassis), online, qos=1, retain=True)
        await wait_status(http, chassis, connected=True)
        t0 = time.monotonic()
        response = await command(http, chassis, "endMs", responseTimeoutInSeconds=5)
        took = time.monotonic() - t0
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "GatewayTimeout"
        assert 4.0 <= took <= 6.0
        log = (await http.get(f"/api/iothubs/{ORG}/devices/{chassis}/methods")).json()
        assert log["commands"][0]["outcome"] == "GatewayTimeout"
        await device.publish(status_topic(ORG, chassis), b"", qos=1, retain=True)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({}, "methodName"),
        ({"methodName": ""}, "methodName"),
        ({"methodName": "a/b"}, "methodName"),
        ({"methodName": "startMs", "responseTimeoutInSeconds": 2}, "responseTimeoutInSeconds"),
        ({"methodName": "startMs", "responseTimeoutInSeconds": 301}, "responseTimeoutInSeconds"),
        ({"methodName": "startMs", "connectTimeoutInSeconds": -1}, "connectTimeoutInSeconds"),
        ({"methodName": "startMs", "responseTimeoutInSeconds": "x"}, "responseTimeoutInSeconds"),
        ({"methodName": "startMs", "surprise": 1}, "surprise"),
        ([1, 2], "object"),
    ],
)
async def test_malformed_bodies_are_400(server: str, body: object, says: str) -> None:
    """A malformed method request is 400 naming what is wrong."""
    async with httpx.AsyncClient(base_url=server, timeout=10) as http:
        response = await http.post(f"/api/iothubs/{ORG}/devices/WL-0001/methods", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "bad_request"
        assert says in response.json()["error"]["message"]


async def test_unknown_hub_or_device_is_404(server: str) -> None:
    """An unknown organisation (iothubName) or machine is 404 not_found."""
    async with httpx.AsyncClient(base_url=server, timeout=10) as http:
        for path in (
            "/api/iothubs/nope/devices/WL-0001/methods",
            f"/api/iothubs/{ORG}/devices/XX/methods",
        ):
            response = await http.post(path, json={"methodName": "startMs"})
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"


@pytest.mark.skip(
    reason="known bug, issue 4 stays open: under CI load the seconds sent just before the "
    "broker stops (up to ~5) are lost; passes on a quiet machine"
)
async def test_store_and_forward_over_a_broker_outage(
    server: str, broker: Mosquitto, tmp_path: Path
) -> None:
    """With the broker down ~12 s every second still reaches storage once, the gap as backfill."""
    chassis = "WL-0004"
    async with (
        httpx.AsyncClient(base_url=server, timeout=40) as http,
        running_agent(broker, chassis, tmp_path) as agent,
        LiveClient(server, chassis, "client_raw_data") as live,
    ):
        await wait_status(http, chassis, connected=True)
        await asyncio.sleep(3)
        first = int(time.time()) * 1000
        await asyncio.to_thread(broker.stop)
        down_from = int(time.time() * 1000)
        await asyncio.sleep(12)
        await asyncio.to_thread(broker.restart)
        up_at = int(time.time() * 1000)
        deadline = time.monotonic() + 40
        while agent.spool.rows or agent.counters["spooled"] == 0:
            assert time.monotonic() < deadline, f"spool not drained: {agent.counters}"
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)
        last = int(time.time()) * 1000 - 2000
        response = await http.get(
            f"/api/resources/{ORG}/_common/datasets/{chassis}/history",
            params={"msgType": "client_raw_data", "fields": "cpu_usage", "from": first, "to": last},
        )
        points = [p[0] for p in response.json()["series"]["cpu_usage"]]
        assert points == list(range(first, last + 1, 1000)), (
            f"a second is missing or doubled: {[(p - first) // 1000 for p in points]}, "
            f"down {(down_from - first) / 1000}, up {(up_at - first) / 1000}, {agent.counters}"
        )
        live_ts = {ts for _, ts in live.received}
        outage = {ts for ts in points if down_from + 1000 < ts < up_at - 1000}
        assert len(outage) >= 8
        assert not (outage & live_ts), "spooled seconds were pushed live"
        assert agent.counters["spooled"] >= 8 and agent.spool.dropped == 0
