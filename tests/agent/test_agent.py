"""The edge agent end to end: Mosquitto + `livedata serve` + the agent on a python-can virtual bus."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import can
import httpx
import orjson
import pytest
import websockets

from livedata.agent import Agent, AgentConfig, Spool
from livedata.agent.agent import CanReader
from livedata.codec import decode
from livedata.decode.can import CanDecoder
from livedata.devices.mqtt import status_topic
from livedata.sim.demo import DBC_PATH
from livedata.sim.machine import Machine
from tests.conftest import ADMIN_TOKEN
from tests.servers import free_port
from tests.servers.mosquitto import Mosquitto, start_mosquitto

ORG = "demo"
HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
"""The demo organisation's admin, as every request of these tests is made."""
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
    """`livedata serve --devices mqtt://…?client_id=… --seed-demo 7` (no fleet); yields its URL.

    A persistent session, so the broker queues messages for the server's link while it
    is away.  Not across a broker restart, though: Mosquitto 2.0 does not restore the
    link's shared subscription from its persistence file, and until the link subscribes
    again the broker acknowledges telemetry with "no matching subscribers" and drops it
    — which the agent must notice (see ``livedata.agent.delivery``).
    """
    data = tmp_path_factory.mktemp("agent-server")
    log = (data / "server.log").open("a")
    process = subprocess.Popen(
        [sys.executable, "-m", "livedata", "serve", "--port", "0", "--data-dir", str(data),
         "--devices", broker.url + "?client_id=agent-test-ingest", "--seed-demo", "7"],
        stdout=subprocess.PIPE, stderr=log, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "LIVEDATA_ADMIN_TOKEN": ADMIN_TOKEN},
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


def agent_config(mqtt: str, chassis: str, tmp: Path, **overrides: Any) -> AgentConfig:
    """The agent of these tests: state and spool in ``tmp``, 2 s send timeout."""
    values: dict[str, Any] = {
        "mqtt": mqtt + "?connect_timeout=2",
        "tenant": ORG,
        "chassis": chassis,
        "can_interface": "virtual",
        "can_channel": f"agent-test-{next(_channels)}",
        "state_file": tmp / "state.json",
        "spool_file": tmp / "spool.sqlite",
        "send_timeout": 2.0,
    }
    return AgentConfig(**{**values, **overrides})


@contextlib.asynccontextmanager
async def running_agent(
    broker: Mosquitto | str, chassis: str, tmp: Path, **overrides: Any
) -> AsyncIterator[Agent]:
    """An agent on a virtual bus fed by a :class:`Producer` (unless ``can_log`` is given)."""
    config = agent_config(
        broker if isinstance(broker, str) else broker.url, chassis, tmp, **overrides
    )
    producer = Producer(str(config.can_channel), chassis) if config.can_log is None else None
    agent = Agent(config)
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        if producer is not None:
            producer.close()


def record_deliveries(agent: Agent) -> list[tuple[str, int, str]]:
    """``(msgType, ts, kind)`` of every message the broker acknowledged as delivered."""
    delivered: list[tuple[str, int, str]] = []
    publish = agent.device.publish

    async def recording(msg_type: str, payload: bytes) -> None:
        await publish(msg_type, payload)
        message = decode(ORG, agent.config.chassis, msg_type, payload)
        delivered.append((msg_type, message.ts, message.kind.value))

    agent.device.publish = recording  # type: ignore[method-assign]
    return delivered


async def until(
    condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]
) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` (or ``what()``) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"{what if isinstance(what, str) else what()} (after {timeout:g} s)")
        await asyncio.sleep(0.2)


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
        async with websockets.connect(self.url, additional_headers=HEADERS) as ws:
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
        httpx.AsyncClient(base_url=server, timeout=40, headers=HEADERS) as http,
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
    async with httpx.AsyncClient(base_url=server, timeout=40, headers=HEADERS) as http:
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
        httpx.AsyncClient(base_url=server, timeout=40, headers=HEADERS) as http,
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
    async with httpx.AsyncClient(base_url=server, timeout=10, headers=HEADERS) as http:
        response = await http.post(f"/api/iothubs/{ORG}/devices/WL-0001/methods", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "bad_request"
        assert says in response.json()["error"]["message"]


async def test_unknown_hub_or_device_is_404(server: str) -> None:
    """An unknown organisation (iothubName) or machine is 404 not_found."""
    async with httpx.AsyncClient(base_url=server, timeout=10, headers=HEADERS) as http:
        for path in (
            "/api/iothubs/nope/devices/WL-0001/methods",
            f"/api/iothubs/{ORG}/devices/XX/methods",
        ):
            response = await http.post(path, json={"methodName": "startMs"})
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"


async def history(
    http: httpx.AsyncClient, chassis: str, msg_type: str, field: str, start: int, end: int
) -> list[tuple[int, Any]]:
    response = await http.get(
        f"/api/resources/{ORG}/_common/datasets/{chassis}/history",
        params={"msgType": msg_type, "fields": field, "from": start, "to": end},
    )
    assert response.status_code == 200, response.text
    return [(int(p[0]), p[1]) for p in response.json()["series"][field]]


OUTAGE_S = 20


async def test_store_and_forward_over_a_broker_outage(
    server: str, broker: Mosquitto, tmp_path: Path
) -> None:
    """With the broker down 20 s every second reaches storage exactly once, the gap only as backfill."""
    chassis = "WL-0004"
    async with (
        httpx.AsyncClient(base_url=server, timeout=40, headers=HEADERS) as http,
        running_agent(broker, chassis, tmp_path) as agent,
        LiveClient(server, chassis, "client_raw_data") as live,
    ):
        delivered = record_deliveries(agent)
        await wait_status(http, chassis, connected=True)
        await asyncio.sleep(3)
        first = int(time.time()) * 1000
        await asyncio.to_thread(broker.stop)
        down_from = int(time.time() * 1000)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(broker.restart)
        up_at = int(time.time() * 1000)
        await until(
            lambda: agent.spool.rows == 0 and agent.counters["backfilled"] > 0,
            90,
            lambda: f"spool not drained: {agent.counters}",
        )
        await asyncio.sleep(3)
        last = int(time.time()) * 1000 - 2000
        expected = list(range(first, last + 1, 1000))
        for msg_type, field in (("client_raw_data", "cpu_usage"), ("vehicle_can", "speed")):
            points = [ts for ts, _ in await history(http, chassis, msg_type, field, first, last)]
            assert points == expected, (
                f"{msg_type}: a second is missing or doubled: "
                f"{[(p - first) // 1000 for p in points]}, down {(down_from - first) / 1000}, "
                f"up {(up_at - first) / 1000}, {agent.counters}"
            )
        outage = [ts for ts in expected if down_from + 1000 < ts < up_at - 1000]
        assert len(outage) >= OUTAGE_S - 4
        kinds: dict[int, set[str]] = {}
        for msg_type, ts, kind in delivered:
            if msg_type == "client_raw_data":
                kinds.setdefault(ts, set()).add(kind)
        assert all(kinds.get(ts) == {"backfill"} for ts in outage), {
            (ts - first) // 1000: kinds.get(ts) for ts in outage
        }
        live_ts = {ts for _, ts in live.received}
        assert not (set(outage) & live_ts), "spooled seconds were pushed live"
        assert live_ts & set(expected), "no second around the outage was pushed live"
        assert agent.counters["spooled"] >= 2 * len(outage) and agent.spool.dropped == 0
        assert agent.counters["lost"] == agent.counters["unsendable"] == 0


async def test_unsubscribed_telemetry_stays_in_the_spool(tmp_path: Path) -> None:
    """What the broker acknowledges as "no matching subscribers" stays spooled and arrives later, oldest first, as backfill."""
    mosquitto = start_mosquitto(tmp_path / "mosquitto")
    chassis = "WL-0006"
    try:  # one backfill message in flight at a time: strictly oldest first, even around a failure
        async with running_agent(
            mosquitto, chassis, tmp_path / "agent", backfill_window=1
        ) as agent:
            await until(
                lambda: agent.device.connected and agent.counters["spooled"] >= 6,
                20,
                lambda: f"nothing spooled while nobody subscribes: {agent.counters}",
            )
            assert agent.counters["live"] == agent.counters["backfilled"] == 0
            spooled = {
                decode(ORG, chassis, t, p).ts
                for _, t, p in agent.spool.oldest(100)
                if t == "client_raw_data"
            }
            received: list[tuple[int, str]] = []
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as sub:
                await sub.subscribe(f"livedata/{ORG}/{chassis}/telemetry/+", qos=1)

                async def receive() -> None:
                    async for msg in sub.messages:
                        assert isinstance(msg.payload, bytes)
                        msg_type = msg.topic.value.rsplit("/", 1)[1]
                        if msg_type == "client_raw_data":
                            m = decode(ORG, chassis, msg_type, msg.payload)
                            received.append((m.ts, m.kind.value))

                reader = asyncio.create_task(receive())
                try:
                    await until(
                        lambda: (
                            spooled <= {ts for ts, k in received if k == "backfill"}
                            and sum(k == "realTime" for _, k in received) >= 2
                            and agent.spool.rows == 0
                        ),
                        30,
                        lambda: (
                            f"spool not delivered once subscribed: {agent.counters}, {received}"
                        ),
                    )
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
        backfill = [ts for ts, k in received if k == "backfill"]
        assert backfill == sorted(backfill), "the spool was not sent oldest first"
        seconds = sorted(ts for ts, _ in received)
        assert seconds == list(range(seconds[0], seconds[-1] + 1000, 1000)), (
            f"a second is missing or doubled: {[(ts - seconds[0]) // 1000 for ts in seconds]}"
        )
        assert {ts for ts, k in received if k == "realTime"}.isdisjoint(backfill)
    finally:
        mosquitto.stop()


async def test_messages_awaiting_their_puback_are_spooled_when_the_connection_drops(
    tmp_path: Path,
) -> None:
    """Messages published but not acknowledged when the broker dies go to the spool at once, not after the send timeout, and arrive later as backfill."""
    mosquitto = start_mosquitto(tmp_path / "mosquitto")
    chassis = "WL-0006"
    topic = f"livedata/{ORG}/{chassis}/telemetry/+"
    try:
        async with running_agent(
            mosquitto, chassis, tmp_path / "agent", send_timeout=60.0
        ) as agent:
            await until(lambda: agent.device.connected, 20, "the agent did not connect")
            os.kill(mosquitto.process.pid, signal.SIGSTOP)  # PUBLISHes go out, no PUBACK back
            await until(lambda: len(agent.in_flight) >= 2, 20, "no message awaits its PUBACK")
            waiting = {m.ts for m in agent.in_flight if m.msg_type == "client_raw_data"}
            await asyncio.to_thread(mosquitto.kill)
            await until(
                lambda: not agent.in_flight and agent.spool.rows >= 2,
                20,  # well before the 60 s send timeout
                lambda: f"in-flight messages not spooled: {agent.counters}",
            )
            assert agent.counters["lost"] == 0
            await asyncio.to_thread(mosquitto.restart)
            received: set[tuple[int, str]] = set()
            async with aiomqtt.Client("127.0.0.1", mosquitto.port) as sub:
                await sub.subscribe(topic, qos=1)

                async def receive() -> None:
                    async for msg in sub.messages:
                        assert isinstance(msg.payload, bytes)
                        if msg.topic.value.endswith("/client_raw_data"):
                            m = decode(ORG, chassis, "client_raw_data", msg.payload)
                            received.add((m.ts, m.kind.value))

                reader = asyncio.create_task(receive())
                try:
                    await until(
                        lambda: (
                            agent.spool.rows == 0
                            and waiting <= {ts for ts, k in received if k == "backfill"}
                        ),
                        60,
                        lambda: f"in-flight seconds not delivered: {agent.counters}",
                    )
                finally:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
    finally:
        if mosquitto.process.poll() is None:
            os.kill(mosquitto.process.pid, signal.SIGCONT)
        mosquitto.stop()


async def test_full_spool_drops_the_oldest_and_counts_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the broker unreachable and room for 4 messages, the newest 4 are kept and the dropped ones counted and logged."""
    caplog.set_level(logging.WARNING, logger="livedata.agent")
    unreachable = f"mqtt://127.0.0.1:{free_port()}"
    async with running_agent(unreachable, "WL-0007", tmp_path, spool_max_rows=4) as agent:
        await until(
            lambda: agent.spool.dropped >= 6, 20, lambda: f"nothing dropped: {agent.counters}"
        )
        newest = int(time.time()) * 1000 - 1000
        rows = [decode(ORG, "WL-0007", t, p) for _, t, p in agent.spool.oldest(10)]
        dropped = agent.spool.dropped
        assert agent.spool.rows == len(rows) == 4
        assert dropped == agent.counters["spooled"] - 4
    raw = sorted(m.ts for m in rows if m.msg_type == "client_raw_data")
    assert raw == list(range(raw[0], raw[-1] + 1000, 1000)) and raw[-1] >= newest - 2000
    assert all(m.kind.value == "backfill" for m in rows)
    assert any(
        "dropped" in r.getMessage() and "spool is full" in r.getMessage() for r in caplog.records
    )
    reopened = Spool(tmp_path / "spool.sqlite", max_rows=4)
    try:
        assert reopened.dropped >= dropped and reopened.rows == 4, "the count did not survive"
    finally:
        reopened.close()


def test_realtime_state_is_read_back_at_start(tmp_path: Path) -> None:
    """endMs is written to the state file before it takes effect and a new agent starts with it; a bad file means on."""
    config = agent_config("mqtt://127.0.0.1:1", "WL-0001", tmp_path)
    first = Agent(config)
    try:
        assert first.realtime is True
        first.set_realtime(False)
    finally:
        first.spool.close()
        first.reader.stop()
    second = Agent(config)
    try:
        assert second.realtime is False
    finally:
        second.spool.close()
        second.reader.stop()
    config.state_file.write_text("{not json")
    third = Agent(config)
    try:
        assert third.realtime is True
    finally:
        third.spool.close()
        third.reader.stop()


async def test_realtime_off_survives_an_agent_restart(
    server: str, broker: Mosquitto, tmp_path: Path
) -> None:
    """After endMs and an agent restart the machine is still stopped: status off, no LIVE_DATA, history still stored."""
    chassis = "WL-0005"
    async with (
        httpx.AsyncClient(base_url=server, timeout=40, headers=HEADERS) as http,
        LiveClient(server, chassis, "client_raw_data") as live,
    ):
        async with running_agent(broker, chassis, tmp_path):
            await wait_status(http, chassis, connected=True, realtime="on")
            stop = await command(http, chassis, "endMs")
            assert stop.json() == {"status": 200, "payload": {"realtime": "off"}}
        await wait_status(http, chassis, connected=False)
        async with running_agent(broker, chassis, tmp_path) as agent:
            assert agent.realtime is False
            restarted = time.monotonic()
            await wait_status(http, chassis, connected=True, realtime="off")
            start = int(time.time()) * 1000
            await asyncio.sleep(5)
            assert live.since(restarted) == 0, "LIVE_DATA from a machine restarted stopped"
            assert agent.counters["live"] == 0 and agent.counters["history"] >= 4
            stored = await history(
                http, chassis, "client_raw_data", "cpu_usage", start, int(time.time()) * 1000
            )
            assert len(stored) >= 2, "no history while stopped"
            started = await command(http, chassis, "startMs")
            assert started.json()["payload"] == {"realtime": "on"}
            t0 = time.monotonic()
            await until(lambda: live.since(t0) >= 2, 10, "LIVE_DATA did not resume after Start")
        assert (tmp_path / "state.json").read_text() == '{"realtime": true}'


def record_can_log(path: Path, speeds: list[float]) -> None:
    """A python-can log file: one second per speed, the loader's frames 4 times a second."""
    decoder = CanDecoder.from_dbc(DBC_PATH.read_text())
    t0 = 1_700_000_000.0
    with can.Logger(str(path)) as writer:
        for second, speed in enumerate(speeds):
            for quarter in range(4):
                ts = t0 + second + quarter / 4
                for f in decoder.encode({"speed": speed, "engine_rpm": 900.0}, int(ts * 1000)):
                    writer.on_message_received(
                        can.Message(
                            timestamp=ts,
                            arbitration_id=f.arbitration_id,
                            is_extended_id=f.is_extended,
                            data=f.data,
                        )
                    )


@pytest.mark.parametrize("suffix", ["asc", "blf", "log", "csv"])
async def test_can_log_is_replayed_as_a_can_source(tmp_path: Path, suffix: str) -> None:
    """A recorded python-can log (any LogReader format) is read as the CAN source, frame for frame, looping."""
    path = tmp_path / f"drive.{suffix}"
    record_can_log(path, [10.0, 20.0])
    with can.LogReader(str(path)) as reader:
        recorded = [(m.arbitration_id, bytes(m.data)) for m in reader]
    config = agent_config("mqtt://127.0.0.1:1", "WL-0001", tmp_path, can_log=path)
    reader = CanReader.open(config)
    reader.start()
    try:
        frames: list[tuple[int, bytes]] = []
        await until(
            lambda: (
                frames.extend((f.arbitration_id, f.data) for f in reader.take(2**62))
                or len(frames) > len(recorded)
            ),
            20,
            "the log was not replayed (looping)",
        )
    finally:
        reader.stop()
    assert frames[: len(recorded)] == recorded
    assert frames[len(recorded)] == recorded[0], "the replay did not start over"


async def test_agent_cli_replays_a_can_log_into_storage(
    server: str, broker: Mosquitto, tmp_path: Path
) -> None:
    """`livedata agent --can-log` sends the recording's signal values, decoded and stored per second."""
    chassis = "WL-0003"
    path = tmp_path / "drive.asc"
    speeds = [11.0, 22.0, 33.0]
    record_can_log(path, speeds)
    log = tmp_path / "agent.log"
    with log.open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "livedata", "agent", "--mqtt", broker.url, "--org", ORG,
            "--chassis", chassis, "--can-log", str(path), "--data-dir", str(tmp_path / "data"),
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=server, timeout=40, headers=HEADERS) as http:
            start = int(time.time()) * 1000
            stored: list[tuple[int, Any]] = []
            deadline = time.monotonic() + 30
            while {v for _, v in stored} != set(speeds):
                assert time.monotonic() < deadline, f"stored speeds {stored}, recorded {speeds}"
                assert process.returncode is None, log.read_text()
                await asyncio.sleep(0.5)
                stored = await history(
                    http, chassis, "vehicle_can", "speed", start, int(time.time()) * 1000
                )
    finally:
        if process.returncode is None:
            process.terminate()
        assert await asyncio.wait_for(process.wait(), 15) == 0, log.read_text()
    assert (tmp_path / "data" / "spool.sqlite").exists()


@pytest.mark.parametrize(
    ("content", "says"), [(None, "cannot read CAN log"), (b"", "has no frames")]
)
def test_agent_cli_refuses_an_unreadable_can_log(
    tmp_path: Path, content: bytes | None, says: str
) -> None:
    """A missing or empty --can-log stops the agent at start with a clear error (exit 2)."""
    path = tmp_path / "drive.asc"
    if content is not None:
        path.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "livedata", "agent", "--mqtt", "mqtt://127.0.0.1:1",
         "--chassis", "WL-0001", "--can-log", str(path), "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
