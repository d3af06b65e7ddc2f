"""The MQTT link's batched receive on a real Mosquitto: paho's fast path, lists of
deliveries, PUBACKs gathered per event-loop turn, properties skipped."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from livedata.codec import encode
from livedata.devices.base import Delivery, Rejection
from livedata.devices.mqtt import MqttDeviceLink, telemetry_topic
from livedata.model import DeviceMessage, MsgType
from tests.servers.mosquitto import Mosquitto, start_mosquitto

TS = 1_700_000_000_000


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


def message(tenant: str, n: int) -> DeviceMessage:
    return DeviceMessage(tenant, "M1", MsgType.CLIENT_RAW_DATA, TS + n, values={"n": n})


async def take(
    link: MqttDeviceLink, count: int, timeout: float = 10.0
) -> list[list[Delivery | Rejection]]:
    """Lists from ``link.batches`` until ``count`` deliveries have come."""
    lists: list[list[Delivery | Rejection]] = []
    batches = link.batches(1_000)
    async with asyncio.timeout(timeout):
        while sum(map(len, lists)) < count:
            lists.append(await anext(batches))
    await batches.aclose()
    return lists


async def test_a_burst_arrives_in_lists_in_order_and_is_acknowledged_once(
    broker: Mosquitto,
) -> None:
    """200 messages sent at once come through paho's fast path, in order, in fewer lists
    than messages; once acknowledged, a restarted persistent session gets none again."""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    client_id = f"ingest-{uuid.uuid4().hex[:8]}"
    url = f"{broker.url}?group=g{uuid.uuid4().hex[:8]}&client_id={client_id}"
    link = MqttDeviceLink(url)
    await link.start()
    try:
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as sender:
            topic = telemetry_topic(tenant, "M1", "client_raw_data")
            await asyncio.gather(
                *(sender.publish(topic, encode(message(tenant, n)), qos=1) for n in range(200))
            )
        lists = await take(link, 200)
        deliveries = [d for batch in lists for d in batch]
        assert all(isinstance(d, Delivery) for d in deliveries)
        assert [d.message.ts for d in deliveries if isinstance(d, Delivery)] == [
            TS + n for n in range(200)
        ]
        assert len(lists) < 200 and link.fast_packets >= 200
        for delivery in deliveries:
            assert delivery.ack is not None
            await delivery.ack()
        await asyncio.sleep(0.2)  # the PUBACKs of the turn go out together
    finally:
        await link.close()
    again = MqttDeviceLink(url)
    await again.start()
    try:
        with pytest.raises(TimeoutError):
            await take(again, 1, timeout=1.0)
        assert again.stale_acks == 0
    finally:
        await again.close()


async def test_publish_properties_are_skipped_and_the_payload_kept(broker: Mosquitto) -> None:
    """A PUBLISH carrying MQTT 5 properties (content type, user properties) is read with its
    payload intact: the fast path skips the properties by their length."""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    link = MqttDeviceLink(f"{broker.url}?group=g{uuid.uuid4().hex[:8]}")
    await link.start()
    try:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        props.UserProperty = [("k" * 100, "v" * 200), ("a", "b")]
        async with aiomqtt.Client(
            "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as sender:
            await sender.publish(
                telemetry_topic(tenant, "M1", "client_raw_data"),
                encode(message(tenant, 7)),
                qos=1,
                properties=props,
            )
        [[delivery]] = await take(link, 1)
        assert isinstance(delivery, Delivery) and delivery.message.values == {"n": 7}
    finally:
        await link.close()
