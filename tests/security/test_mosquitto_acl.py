"""Mosquitto with the configuration of `livedata devices mqtt-config`: each device confined.

Every test seeds a fresh metadata database (organisation ``acme``, machines M1 and
M2 with secrets, M3 without), writes the password file and ACL with the CLI exactly
as an operator would, and starts a real Mosquitto (2.0.11 here) with them and
``allow_anonymous false``.  The service user is what ``livedata serve`` connects
as; it reads telemetry through the shared subscription the device link uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from livedata.auth.mosquitto import device_url, with_credentials
from livedata.cli.main import main
from livedata.codec import encode
from livedata.devices.base import Delivery, MethodResult
from livedata.devices.mqtt import (
    MqttDevice,
    MqttDeviceLink,
    method_request_topic,
    method_response_topic,
    status_topic,
    telemetry_topic,
)
from livedata.errors import ConfigError
from livedata.metadata import Metadata
from livedata.metadata.accounts import Accounts
from livedata.model import DeviceMessage, MsgType
from tests.servers.mosquitto import Mosquitto, start_mosquitto

ORG = "acme"
SERVICE = "livedata"
SERVICE_PASSWORD = "service-password-0123"
TS = 1_700_000_000_000


def raw(chassis: str, ts: int = TS) -> DeviceMessage:
    return DeviceMessage(ORG, chassis, MsgType.CLIENT_RAW_DATA, ts, values={"cpu_usage": 1.0})


@dataclass
class Setup:
    """The data directory, the generated files, the broker and the known device secrets."""

    data_dir: Path
    passwd: Path
    acl: Path
    broker: Mosquitto
    secrets: dict[str, str] = field(default_factory=dict)

    def url(self, username: str | None = None, password: str | None = None) -> str:
        base = self.broker.url
        if username is None:
            return base
        return with_credentials(base, username, password or "")

    def device_url(self, chassis: str, secret: str | None = None) -> str:
        return device_url(self.broker.url, ORG, chassis, secret or self.secrets[chassis])

    @property
    def service_url(self) -> str:
        return self.url(SERVICE, SERVICE_PASSWORD) + "?group=ingest"


async def seed(data_dir: Path, with_secret: list[str], without: list[str]) -> dict[str, str]:
    """Create ``acme`` and its machines; the new secrets of ``with_secret``."""
    meta = Metadata(f"sqlite:///{data_dir / 'metadata.db'}")
    await meta.start()
    try:
        await meta.ensure_org(ORG, ORG)
        accounts = Accounts(meta)
        secrets = {}
        for chassis in [*with_secret, *without]:
            await meta.upsert_machine(ORG, chassis, chassis, "WL")
        for chassis in with_secret:
            secrets[chassis] = await accounts.set_device_secret(ORG, chassis)
        return secrets
    finally:
        await meta.close()


async def generate(
    setup_dir: Path, passwd: Path, acl: Path, monkeypatch: pytest.MonkeyPatch, stdin: str = ""
) -> None:
    """Run `livedata devices mqtt-config` (in a thread: it runs its own event loop)."""
    argv = ["devices", "mqtt-config", "--passwd", str(passwd), "--acl", str(acl)]
    argv += ["--data-dir", str(setup_dir), "--service-user", SERVICE]
    if stdin:
        argv.append("--service-password-stdin")
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert await asyncio.to_thread(main, argv) == 0


@pytest.fixture
async def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Setup]:
    data_dir = tmp_path / "data"
    secrets = await seed(data_dir, ["M1", "M2"], ["M3"])
    conf_dir = tmp_path / "mosquitto"
    conf_dir.mkdir()
    passwd, acl = conf_dir / "livedata.passwd", conf_dir / "livedata.acl"
    await generate(data_dir, passwd, acl, monkeypatch, SERVICE_PASSWORD + "\n")
    broker = start_mosquitto(conf_dir, f"password_file {passwd}\nacl_file {acl}\n", anonymous=False)
    try:
        yield Setup(data_dir, passwd, acl, broker, secrets)
    finally:
        broker.stop()


class Client:
    """A raw MQTT 5 client whose received messages are collected in a queue."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.received: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def pump(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            self.received.put_nowait((message.topic.value, payload))

    async def next(self, timeout: float = 5.0) -> tuple[str, bytes]:
        return await asyncio.wait_for(self.received.get(), timeout)

    def drained(self) -> list[tuple[str, bytes]]:
        items = []
        while not self.received.empty():
            items.append(self.received.get_nowait())
        return items


@contextlib.asynccontextmanager
async def connected(
    broker: Mosquitto, username: str | None, password: str | None, client_id: str = ""
) -> AsyncIterator[Client]:
    raw_client = aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=username,
        password=password,
        identifier=client_id or None,
        protocol=aiomqtt.ProtocolVersion.V5,
    )
    async with raw_client:
        client = Client(raw_client)
        task = asyncio.create_task(client.pump())
        try:
            yield client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


async def refused(broker: Mosquitto, username: str | None, password: str | None) -> bool:
    """Whether the broker refuses this login (CONNACK not authorised / bad credentials)."""
    try:
        async with connected(broker, username, password):
            return False
    except aiomqtt.MqttError:
        return True


async def test_a_device_publishes_its_own_telemetry_to_the_service_user(setup: Setup) -> None:
    """Device A's telemetry and presence reach the server's link (service user, $share group),
    and so does the broker's count of dropped messages."""
    link = MqttDeviceLink(setup.service_url)
    await link.start()
    device = MqttDevice(setup.device_url("M1"), ORG, "M1")

    async def answer(method: str, payload: object) -> MethodResult:
        return MethodResult(200, {"method": method, "echo": payload})

    device.on_method = answer
    try:
        await device.connect()
        await device.send(raw("M1"))
        inbound = link.inbound()
        item = await asyncio.wait_for(anext(inbound), 5)
        assert isinstance(item, Delivery)
        assert (item.message.tenant, item.message.chassis, item.message.ts) == (ORG, "M1", TS)
        await item.ack()
        for _ in range(50):  # the retained online status, read by the service user
            if link.status(ORG, "M1").connected:
                break
            await asyncio.sleep(0.1)
        assert link.status(ORG, "M1").connected
        for _ in range(50):  # retained by the broker since its start ($SYS, read by the ACL)
            if link.broker_dropped is not None:
                break
            await asyncio.sleep(0.1)
        assert link.broker_dropped == 0
        # a direct method: the service user writes the request, the device reads it and answers
        result = await link.call(ORG, "M1", "getStatus", {"x": 1}, response_timeout=5)
        assert result == MethodResult(200, {"method": "getStatus", "echo": {"x": 1}})
    finally:
        await device.close()
        await link.close()


async def test_a_device_cannot_publish_as_another_device(setup: Setup) -> None:
    """Everything device A publishes under B's prefix is dropped: the service user sees none of it."""
    async with connected(setup.broker, SERVICE, SERVICE_PASSWORD) as service:
        await service.client.subscribe(f"$share/ingest/{telemetry_topic('+', '+', '+')}", qos=1)
        await service.client.subscribe(status_topic("+", "+"), qos=1)
        await service.client.subscribe(method_response_topic("+", "+", "+"), qos=1)
        async with connected(setup.broker, f"{ORG}/M1", setup.secrets["M1"], f"{ORG}/M1") as a:
            forged = [
                telemetry_topic(ORG, "M2", "client_raw_data"),
                telemetry_topic(ORG, "M2", "vehicle_can"),
                status_topic(ORG, "M2"),
                method_response_topic(ORG, "M2", "0" * 32),
                telemetry_topic("other", "M1", "client_raw_data"),
                f"livedata/{ORG}/M1/telemetry/client_raw_data/extra",
            ]
            for topic in forged:
                await a.client.publish(topic, encode(raw("M2")), qos=1)
            # the marker, published after them on the same connection, arrives; they never do
            own = telemetry_topic(ORG, "M1", "client_raw_data")
            await a.client.publish(own, encode(raw("M1")), qos=1)
            assert (await service.next())[0] == own
            await asyncio.sleep(0.3)
            assert service.drained() == []


async def test_a_device_cannot_receive_or_send_another_devices_methods(setup: Setup) -> None:
    """Device A receives only its own method requests, even subscribed to livedata/#, and cannot send any."""
    async with (
        connected(setup.broker, SERVICE, SERVICE_PASSWORD) as service,
        connected(setup.broker, f"{ORG}/M1", setup.secrets["M1"], f"{ORG}/M1") as a,
        connected(setup.broker, f"{ORG}/M2", setup.secrets["M2"], f"{ORG}/M2") as b,
    ):
        await a.client.subscribe("livedata/#", qos=1)
        await a.client.subscribe(method_request_topic(ORG, "M2", "+", "+"), qos=1)
        await b.client.subscribe(method_request_topic(ORG, "M2", "+", "+"), qos=1)
        await service.client.subscribe(method_request_topic("+", "+", "+", "+"), qos=1)
        # device A forges a request to B: B must not get it (nor may A write requests at all)
        await a.client.publish(method_request_topic(ORG, "M2", "endMs", "a" * 32), b"{}", qos=1)
        for_b = method_request_topic(ORG, "M2", "startMs", "b" * 32)
        for_a = method_request_topic(ORG, "M1", "startMs", "c" * 32)
        await service.client.publish(for_b, b'{"reason":"b"}', qos=1)
        await service.client.publish(for_a, b'{"reason":"a"}', qos=1)
        assert await b.next() == (for_b, b'{"reason":"b"}')
        assert await a.next() == (for_a, b'{"reason":"a"}')
        await asyncio.sleep(0.3)
        assert a.drained() == [] and b.drained() == []
        assert service.drained() == []  # the service user cannot read requests either


async def test_wrong_password_anonymous_and_borrowed_secrets_are_refused(setup: Setup) -> None:
    """Wrong secret, no credentials, another device's secret, a machine without one: refused."""
    broker = setup.broker
    assert await refused(broker, f"{ORG}/M1", "wrong-secret")
    assert await refused(broker, None, None)
    assert await refused(broker, f"{ORG}/M1", setup.secrets["M2"])
    assert await refused(broker, f"{ORG}/M3", setup.secrets["M1"])  # M3 has no secret
    assert await refused(broker, SERVICE, setup.secrets["M1"])
    assert await refused(broker, "nobody", SERVICE_PASSWORD)
    assert not await refused(broker, f"{ORG}/M1", setup.secrets["M1"])
    with pytest.raises(ConfigError, match="refused"):
        await MqttDevice(setup.device_url("M1", "wrong-secret"), ORG, "M1").connect()
    with pytest.raises(ConfigError, match="refused"):
        await MqttDeviceLink(setup.url(SERVICE, "wrong") + "?connect_timeout=5").start()


async def test_regenerating_after_a_new_device_and_sighup_lets_it_in(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new machine's secret works after regeneration + SIGHUP; a rotated secret is cut off."""
    meta = Metadata(f"sqlite:///{setup.data_dir / 'metadata.db'}")
    await meta.start()
    try:
        accounts = Accounts(meta)
        m3 = await accounts.set_device_secret(ORG, "M3")
        await meta.upsert_machine(ORG, "M4", "M4", "WL")
        m4 = await accounts.set_device_secret(ORG, "M4")
        new_m1 = await accounts.set_device_secret(ORG, "M1")
    finally:
        await meta.close()
    assert await refused(setup.broker, f"{ORG}/M3", m3)  # not before the broker reloads

    link = MqttDeviceLink(setup.service_url)
    await link.start()
    old_m1 = MqttDevice(setup.device_url("M1"), ORG, "M1")
    await old_m1.connect()
    try:
        await generate(
            setup.data_dir, setup.passwd, setup.acl, monkeypatch
        )  # keeps the service hash
        assert setup.passwd.stat().st_mode & 0o777 == 0o600
        await asyncio.to_thread(setup.broker.reload)
        # the old M1 connection is dropped at reload and cannot come back with the old secret
        for _ in range(50):
            if not old_m1.connected:
                break
            await asyncio.sleep(0.1)
        assert not old_m1.connected
        assert await refused(setup.broker, f"{ORG}/M1", setup.secrets["M1"])
        assert link.connected  # the service user's hash was kept: the server stays connected
        inbound = link.inbound()
        for chassis, secret in (("M3", m3), ("M4", m4), ("M1", new_m1)):
            device = MqttDevice(setup.device_url(chassis, secret), ORG, chassis)
            await device.connect()
            try:
                await device.send(raw(chassis))
                item = await asyncio.wait_for(anext(inbound), 5)
                assert isinstance(item, Delivery) and item.message.chassis == chassis
                await item.ack()
            finally:
                await device.close()
    finally:
        await old_m1.close()
        await link.close()


async def test_generated_files_have_the_documented_shape(setup: Setup) -> None:
    """The password file holds hashes only (0600); the ACL has the device patterns and the service block."""
    text = setup.passwd.read_text()
    assert setup.passwd.stat().st_mode & 0o777 == 0o600
    users = [line.split(":", 1)[0] for line in text.splitlines()]
    assert users == [SERVICE, f"{ORG}/M1", f"{ORG}/M2"]
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in text.splitlines())
    assert SERVICE_PASSWORD not in text and setup.secrets["M1"] not in text
    acl = setup.acl.read_text()
    assert "pattern write livedata/%u/telemetry/+" in acl
    assert "pattern read livedata/%u/methods/req/+/+" in acl
    assert f"user {SERVICE}\ntopic read livedata/+/+/telemetry/+" in acl
