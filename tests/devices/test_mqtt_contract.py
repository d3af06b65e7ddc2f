"""The device link contract on the MQTT link (real Mosquitto), with both device sides."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import aiomqtt
import pytest

from livedata.codec import encode
from livedata.devices.base import DeviceLink, MethodHandler
from livedata.devices.mqtt import MqttDevice, MqttDeviceLink, telemetry_topic
from livedata.model import DeviceMessage, MsgType
from livedata.sim.connection import SimDevice
from tests.devices.contract import DeviceLinkContract
from tests.servers.mosquitto import Mosquitto, start_mosquitto


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


class TestMqttLink(DeviceLinkContract):
    """Server link with a persistent session (client_id), device side :class:`MqttDevice`."""

    redelivers = True

    @pytest.fixture(autouse=True)
    def _broker(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.link_url = (
            f"{broker.url}?group=g{uuid.uuid4().hex[:8]}&client_id=ingest-{uuid.uuid4().hex[:8]}"
            "&session_expiry=60"
        )

    async def make_link(self) -> DeviceLink:
        link = MqttDeviceLink(self.link_url)
        await link.start()
        return link

    async def make_device(
        self, link: DeviceLink, tenant: str, chassis: str, on_method: MethodHandler | None
    ) -> MqttDevice:
        device = MqttDevice(self.broker.url, tenant, chassis, on_method)
        await device.connect()
        return device

    async def send_raw(
        self, link: DeviceLink, tenant: str, chassis: str, msg_type: str, payload: bytes
    ) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", self.broker.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            await client.publish(telemetry_topic(tenant, chassis, msg_type), payload, qos=1)

    async def crash_device(self, device: object) -> None:
        assert isinstance(device, MqttDevice)
        await device.abort()

    async def crash_and_reopen(self, link: DeviceLink) -> DeviceLink:
        assert isinstance(link, MqttDeviceLink) and link._client is not None
        sock = link._client._client.socket()
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # no ack, no DISCONNECT: the process died
        await link.close()
        return await self.make_link()


class SimDeviceSide:
    """:class:`SimDevice` (what ``livedata simulate`` uses) behind the contract's device API."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device

    async def send(self, message: DeviceMessage) -> None:
        can_topic, raw_topic = self.device.topics
        topic = can_topic if message.msg_type == MsgType.VEHICLE_CAN else raw_topic
        self.device.publish([(topic, encode(message))])

    async def close(self) -> None:
        await self.device.close()

    async def abort(self) -> None:
        await self.device.abort()


class TestMqttLinkWithSimulatorDevice(TestMqttLink):
    """The same link, device side the simulator's lean MQTT connection."""

    async def make_device(  # type: ignore[override]
        self, link: DeviceLink, tenant: str, chassis: str, on_method: MethodHandler | None
    ) -> SimDeviceSide:
        device = SimDevice(self.broker.url, tenant, chassis, on_method)
        await device.connect()
        return SimDeviceSide(device)

    async def crash_device(self, device: object) -> None:
        assert isinstance(device, SimDeviceSide)
        await device.abort()
