"""The MQTT device link and device on a real Mosquitto started by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from livedata.bus.memory import MemoryLog
from livedata.catalog import Catalog
from livedata.codec import encode
from livedata.devices import open_devices
from livedata.devices.base import Delivery, Rejection
from livedata.devices.mqtt import (
    MqttDevice,
    MqttDeviceLink,
    PresenceChange,
    status_topic,
    telemetry_topic,
)
from livedata.errors import BackendError, ConfigError
from livedata.metadata import Metadata
from livedata.model import DeviceMessage, Kind, MsgType
from livedata.observe import BROKER_DROPPED
from livedata.pipeline.ingest import Ingest, Outcome, consume_devices
from livedata.store.clickhouse import ClickHouseStore
from livedata.store.memory import MemoryStore
from tests.devices.contract import TS, can_message, raw_message, until
from tests.servers import free_port
from tests.servers.mosquitto import Mosquitto, start_mosquitto


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


@pytest.fixture
def tenant() -> str:
    """A fresh organisation id per test, so retained statuses never leak between tests."""
    return f"t{uuid.uuid4().hex[:8]}"


class Links:
    """Starts links and devices for a test and closes them all afterwards.

    Each link's deliveries are pumped into a queue, so waiting for one with a timeout
    does not end the link's ``inbound()`` generator.
    """

    def __init__(self) -> None:
        self.links: list[MqttDeviceLink] = []
        self.devices: list[MqttDevice] = []
        self.queues: dict[int, asyncio.Queue[Delivery | Rejection]] = {}
        self.pumps: list[asyncio.Task[None]] = []

    async def link(self, url: str) -> MqttDeviceLink:
        link = MqttDeviceLink(url)
        await link.start()
        self.links.append(link)
        return link

    async def device(self, url: str, tenant: str, chassis: str) -> MqttDevice:
        device = MqttDevice(url, tenant, chassis)
        await device.connect()
        self.devices.append(device)
        return device

    def queue(self, link: MqttDeviceLink) -> asyncio.Queue[Delivery | Rejection]:
        queue = self.queues.get(id(link))
        if queue is None:
            queue = self.queues[id(link)] = asyncio.Queue()

            async def pump() -> None:
                async for item in link.inbound():
                    queue.put_nowait(item)

            self.pumps.append(asyncio.create_task(pump()))
        return queue

    async def next(self, link: MqttDeviceLink, timeout: float = 5.0) -> Delivery | Rejection:
        return await asyncio.wait_for(self.queue(link).get(), timeout)

    async def nothing(self, link: MqttDeviceLink, wait: float = 0.5) -> None:
        await asyncio.sleep(wait)
        queue = self.queue(link)
        assert queue.empty(), f"unexpected {queue.get_nowait()}"

    async def close(self) -> None:
        for task in self.pumps:
            task.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)
        for device in self.devices:
            await device.close()
        for link in self.links:
            await link.close()
        self.pumps.clear()
        self.queues.clear()
        self.links.clear()
        self.devices.clear()


@pytest.fixture
async def parts() -> AsyncIterator[Links]:
    links = Links()
    yield links
    await links.close()


def link_url(broker: Mosquitto, **options: str | int) -> str:
    options.setdefault("group", f"g{uuid.uuid4().hex[:8]}")
    return broker.url + "?" + "&".join(f"{k}={v}" for k, v in options.items())


async def publish(
    broker: Mosquitto, topic: str, payload: bytes, *, retain: bool = False, **auth: str
) -> None:
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5, **auth
    ) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


async def test_telemetry_round_trip_with_identity_from_topic(
    broker: Mosquitto, parts: Links, tenant: str
) -> None:
    """Both message types go device → broker → link intact, tenant and chassis from the topic."""
    link = await parts.link(link_url(broker))
    device = await parts.device(broker.url, tenant, "M1")
    sent = [can_message(tenant, "M1"), raw_message(tenant, "M1", gps_fix=True, mode="dig")]
    sent.append(can_message(tenant, "M1", TS + 1000, Kind.BACKFILL))
    for message in sent:
        await device.send(message)
    await link.send(raw_message(tenant, "M2", TS + 2000))  # the link's own publish path
    received = []
    for _ in range(4):
        item = await parts.next(link)
        assert isinstance(item, Delivery), item
        assert item.ack is not None
        await item.ack()
        received.append(item.message)
    assert received == [*sent, raw_message(tenant, "M2", TS + 2000)]
    with pytest.raises(ValueError, match="cannot send for"):
        await device.send(raw_message(tenant, "M2"))


async def test_payload_cannot_change_identity(broker: Mosquitto, parts: Links, tenant: str) -> None:
    """A payload naming another machine is stored under the topic's machine, or refused."""
    link = await parts.link(link_url(broker))
    topic = telemetry_topic(tenant, "M1", "client_raw_data")
    claims = {"v": 1, "ts": TS, "values": {"tenant": "other", "chassis": "M2"}}
    await publish(broker, topic, orjson.dumps(claims))
    item = await parts.next(link)
    assert isinstance(item, Delivery)
    assert (item.message.tenant, item.message.chassis) == (tenant, "M1")
    assert item.message.values == {"tenant": "other", "chassis": "M2"}
    await publish(broker, topic, orjson.dumps({**claims, "chassis": "M2", "values": {}}))
    item = await parts.next(link)
    assert isinstance(item, Rejection)
    assert (item.tenant, item.chassis) == (tenant, "M1")
    assert "unknown keys 'chassis'" in item.reason


async def test_bad_messages_are_rejected_and_nothing_else_lost(
    broker: Mosquitto, parts: Links, tenant: str
) -> None:
    """Wrong encoding, a truncated batch, an unknown type or id each give one Rejection; good data still flows."""
    link = await parts.link(link_url(broker))
    good = encode(can_message(tenant, "M1"))
    bad = [
        (telemetry_topic(tenant, "M1", "vehicle_can"), encode(raw_message(tenant, "M1")), "JSON"),
        (telemetry_topic(tenant, "M1", "vehicle_can"), good[:-2], "truncated"),
        (telemetry_topic(tenant, "M1", "client_raw_data"), good, "binary vehicle_can"),
        (telemetry_topic(tenant, "M1", "engine_oil"), good, "unknown msgType"),
        (telemetry_topic(tenant, "M1", "status"), good, "unknown msgType"),
        (f"livedata/{tenant}/bad id!/telemetry/vehicle_can", good, "invalid organisation"),
        (telemetry_topic(tenant, "M1", "vehicle_can"), b"", "truncated"),
    ]
    for topic, payload, _ in bad:
        await publish(broker, topic, payload)
    await publish(broker, telemetry_topic(tenant, "M1", "vehicle_can"), good)
    for topic, _, needle in bad:
        item = await parts.next(link)
        assert isinstance(item, Rejection), (topic, item)
        assert needle in item.reason, (topic, item.reason)
        assert item.tenant == tenant
        assert item.chassis == ("" if "bad id" in topic else "M1")
        assert item.ack is not None
        await item.ack()
    item = await parts.next(link)
    assert isinstance(item, Delivery) and item.message == can_message(tenant, "M1")
    await parts.nothing(link)
    assert link.counters["rejected"] == len(bad)


async def test_share_group_splits_messages_exactly_once(
    broker: Mosquitto, parts: Links, tenant: str
) -> None:
    """Two links of one share group each get a part, and every message exactly once."""
    url = link_url(broker)
    links = [await parts.link(url), await parts.link(url)]
    device = await parts.device(broker.url, tenant, "M1")
    count = 40
    for i in range(count):
        await device.send(raw_message(tenant, "M1", TS + i * 1000))
    got: list[list[int]] = [[], []]

    async def drain(index: int) -> None:
        while True:
            item = await parts.next(links[index], 30)
            assert isinstance(item, Delivery) and item.ack is not None
            got[index].append(item.message.ts)
            await item.ack()

    tasks = [asyncio.create_task(drain(i)) for i in range(2)]
    await until(lambda: sum(map(len, got)) >= count, 10)
    await asyncio.sleep(0.5)  # anything extra would arrive now
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert got[0] and got[1], got
    everything = got[0] + got[1]
    assert sorted(everything) == [TS + i * 1000 for i in range(count)]


async def test_presence_follows_connect_close_and_lost_connection(
    broker: Mosquitto, parts: Links, tenant: str
) -> None:
    """Online on connect; offline at once via the Last Will when the connection drops; offline on close."""
    link = await parts.link(link_url(broker))
    changes = link.presence_changes()

    async def next_change() -> PresenceChange:  # of this test's devices
        while True:
            change = await asyncio.wait_for(anext(changes), 5)
            if change.tenant == tenant:
                return change

    device = MqttDevice(broker.url, tenant, "M1")
    await device.connect()
    change = await next_change()
    assert (change.tenant, change.chassis, change.online) == (tenant, "M1", True)
    assert link.presence[(tenant, "M1")][0] is True
    started = time.monotonic()
    await device.abort()  # no DISCONNECT: the broker publishes the Last Will
    change = await next_change()
    assert change.online is False and change.chassis == "M1"
    assert time.monotonic() - started < 1.0
    assert link.presence[(tenant, "M1")][0] is False

    other = await parts.device(broker.url, tenant, "M2")
    assert (await next_change()).online is True
    await other.close()
    change = await next_change()
    assert (change.chassis, change.online) == ("M2", False)

    # a link that starts later learns both from the retained statuses
    late = await parts.link(link_url(broker))
    await until(lambda: len([k for k in late.presence if k[0] == tenant]) == 2)
    assert late.presence[(tenant, "M1")][0] is False
    assert late.presence[(tenant, "M2")][0] is False
    await changes.aclose()


@pytest.fixture
async def own(tmp_path: Path, parts: Links) -> AsyncIterator[Mosquitto]:
    """A broker of the test's own (its queues start empty); the test's links close first."""
    server = start_mosquitto(tmp_path / "broker")
    yield server
    await parts.close()
    server.stop()


async def link_with_queued(
    own: Mosquitto, parts: Links, tenant: str, *, inflight: int, count: int
) -> MqttDeviceLink:
    """A link with ``inflight``, then ``count`` messages of machine M1 published (ts TS + i)."""
    link = await parts.link(link_url(own, inflight=inflight))
    topic = telemetry_topic(tenant, "M1", "client_raw_data")
    for i in range(count):
        await publish(own, topic, encode(raw_message(tenant, "M1", TS + i)))
    return link


async def test_link_holds_unacknowledged_messages_in_flight(
    own: Mosquitto, parts: Links, tenant: str
) -> None:
    """Nothing is acknowledged before ack(): with inflight=3 the broker sends 3 and holds the rest."""
    link = await link_with_queued(own, parts, tenant, inflight=3, count=6)
    first = [await parts.next(link) for _ in range(3)]
    await parts.nothing(link)
    for item in first:
        assert item.ack is not None
        await item.ack()
    rest = [await parts.next(link) for _ in range(3)]
    assert [i.message.ts for i in (*first, *rest) if isinstance(i, Delivery)] == [
        TS + i for i in range(6)
    ]


async def test_an_acknowledgement_waits_for_those_of_older_messages(
    own: Mosquitto, parts: Links, tenant: str
) -> None:
    """A message acknowledged before an older one is PUBACKed only after it: the broker sees them in order."""
    link = await link_with_queued(own, parts, tenant, inflight=2, count=4)
    older, newer = await parts.next(link), await parts.next(link)
    assert newer.ack is not None and older.ack is not None
    await newer.ack()
    await parts.nothing(link)  # no PUBACK yet, so the broker sends nothing more
    assert len(link._order) == 2
    await older.ack()  # both PUBACKs go out, in order, and the broker sends the rest
    rest = [await parts.next(link), await parts.next(link)]
    assert [i.message.ts for i in (older, newer, *rest) if isinstance(i, Delivery)] == [
        TS + i for i in range(4)
    ]


async def test_a_full_broker_queue_drops_acknowledged_messages_and_the_link_says_so(
    tmp_path: Path, parts: Links, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Mosquitto drops what is beyond a share-group member's queue, acknowledged to the device; the link reports the drops."""
    server = start_mosquitto(tmp_path / "broker", "max_queued_messages 3\nsys_interval 1\n")
    try:
        link = await parts.link(link_url(server, inflight=2))
        await until(lambda: link.broker_dropped is not None, 10)  # the broker's first report
        assert link.broker_dropped == 0
        device = await parts.device(server.url, tenant, "M1")
        for i in range(10):  # each one PUBACKed by the broker
            await device.send(raw_message(tenant, "M1", TS + i * 1000))
        await until(lambda: link.broker_dropped == 5, 10)  # 2 in flight, 3 queued, 5 dropped
        got = []
        for _ in range(5):
            item = await parts.next(link)
            assert isinstance(item, Delivery) and item.ack is not None
            got.append(item.message.ts)
            await item.ack()
        await parts.nothing(link)
        assert got == [TS + i * 1000 for i in range(5)]
        assert BROKER_DROPPED._value.get() == 5
        warned = [r.getMessage() for r in caplog.records if "dropped 5 messages" in r.getMessage()]
        assert warned and "since it last said (5 since it started)" in warned[0], warned
    finally:
        await parts.close()
        server.stop()


async def test_unacknowledged_message_is_redelivered_to_the_restarted_member(
    broker: Mosquitto, parts: Links, tenant: str
) -> None:
    """A message whose consumer died before ack comes again to the persistent session; an acked one does not."""
    client_id = f"ingest-{uuid.uuid4().hex[:8]}"
    url = link_url(broker, client_id=client_id)
    device = await parts.device(broker.url, tenant, "M1")

    first = MqttDeviceLink(url)
    await first.start()
    await device.send(raw_message(tenant, "M1", TS))
    item = await asyncio.wait_for(anext(first.inbound()), 5)
    assert isinstance(item, Delivery) and item.message.ts == TS
    # the process dies before the record is durable: no ack, no DISCONNECT
    assert first._client is not None
    first._client._client.socket().shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]
    await first.close()
    await device.send(raw_message(tenant, "M1", TS + 1))

    second = await parts.link(url)
    again = [await parts.next(second), await parts.next(second)]
    assert [i.message.ts for i in again if isinstance(i, Delivery)] == [TS, TS + 1]
    for i in again:
        assert i.ack is not None
        await i.ack()
    await item.ack()  # the dead connection's ack is skipped, not sent on the new one
    assert second.stale_acks == 0 and first.stale_acks == 1
    await second.close()

    third = await parts.link(url)
    await parts.nothing(third, 1.0)


async def test_link_and_device_survive_a_broker_restart(
    tmp_path: Path, parts: Links, tenant: str
) -> None:
    """After the broker restarts, link and device reconnect on their own and messages flow again."""
    own = start_mosquitto(tmp_path / "broker")
    try:
        link = await parts.link(link_url(own))
        device = await parts.device(own.url, tenant, "M1")
        own.restart()
        await until(lambda: device.connects == 2 and link.counters["connects"] == 2, 15)
        assert link.connected and device.connected
        await device.send(raw_message(tenant, "M1", TS))
        item = await parts.next(link)
        assert isinstance(item, Delivery) and item.message.ts == TS
        await until(lambda: link.presence.get((tenant, "M1"), (False, 0))[0] is True)
    finally:
        await parts.close()
        own.stop()


def password_file(path: Path, users: dict[str, str]) -> Path:
    for n, (user, secret) in enumerate(users.items()):
        flags = ["-c"] if n == 0 else []
        subprocess.run(["mosquitto_passwd", *flags, "-b", str(path), user, secret], check=True)
    return path


async def test_broker_acl_confines_a_device_to_its_prefix(tmp_path: Path, tenant: str) -> None:
    """With one %u pattern ACL, a device can publish its own telemetry but not another machine's."""
    directory = tmp_path / "acl"
    directory.mkdir()
    users = {f"{tenant}/M1": "device-secret", "ingest": "ingest-secret"}
    passwords = await asyncio.to_thread(password_file, directory / "passwd", users)
    acl = directory / "acl"
    acl.write_text(
        "user ingest\ntopic read livedata/#\n\n"
        "pattern write livedata/%u/telemetry/+\n"
        "pattern readwrite livedata/%u/status\n"
        "pattern read livedata/%u/methods/req/#\n"
        "pattern write livedata/%u/methods/res/+\n"
    )
    own = start_mosquitto(
        directory, f"password_file {passwords}\nacl_file {acl}\n", anonymous=False
    )
    links = Links()
    try:
        with pytest.raises(ConfigError, match="refused"):
            await MqttDeviceLink(f"mqtt://ingest:wrong@127.0.0.1:{own.port}").start()
        link = await links.link(f"mqtt://ingest:ingest-secret@127.0.0.1:{own.port}")
        auth = {"username": f"{tenant}/M1", "password": "device-secret"}
        foreign = telemetry_topic(tenant, "M2", "client_raw_data")
        await publish(own, foreign, encode(raw_message(tenant, "M2", TS)), **auth)
        device = MqttDevice(
            f"mqtt://{tenant}%2FM1:device-secret@127.0.0.1:{own.port}", tenant, "M1"
        )
        await device.connect()
        links.devices.append(device)
        await device.send(raw_message(tenant, "M1", TS + 1))
        item = await links.next(link)
        assert isinstance(item, Delivery)
        assert (item.message.chassis, item.message.ts) == ("M1", TS + 1)
        await links.nothing(link)  # the foreign message, published first, never arrives
    finally:
        await links.close()
        own.stop()


async def test_unreachable_broker_fails_start_clearly() -> None:
    """A link or device whose broker does not answer fails start with BackendError in time."""
    url = f"mqtt://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BackendError, match="not reachable after 1 s"):
        await MqttDeviceLink(url + "?connect_timeout=1").start()
    with pytest.raises(BackendError, match="not reachable after 1 s"):
        await MqttDevice(url + "?connect_timeout=1", "acme", "M1").connect()
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("mqtt://", "names no host"),
        ("mqtt://host:99999", "invalid port"),
        ("mqtt://host?bogus=1", "'bogus' is not known"),
        ("mqtt://host?inflight=0", "inflight"),
        ("mqtt://host?group=a/b", "share group"),
        ("mqtt://host?client_id=a%2Bb", "client_id"),
        ("mqtt://host?shared=maybe", "shared"),
        ("mqtt://host?partition=0/2", "needs shared=off"),
        ("mqtt://host?shared=off&partition=2/2", "0 <= i < n"),
        ("mqtt://host?shared=off&partition=x", "use i/n"),
    ],
)
def test_bad_urls_are_config_errors(url: str, needle: str) -> None:
    """A wrong MQTT URL is a ConfigError naming what is wrong."""
    with pytest.raises(ConfigError, match=needle):
        open_devices(url)


@pytest.mark.parametrize(
    "url",
    ["mqtt://ingest:s3cret@host:99999", "mqtts://ingest:s3cret@host", "mqtt://ingest:s3cret@"],
)
def test_url_errors_do_not_show_the_password(url: str) -> None:
    """A ConfigError for a bad MQTT URL shows the URL with its password replaced by ***."""
    for make in (open_devices, lambda u: MqttDevice(u, "acme", "M1")):
        with pytest.raises(ConfigError) as caught:
            make(url)
        assert "s3cret" not in str(caught.value) and "ingest:***@" in str(caught.value)


def test_default_window_leaves_clickhouse_batches_to_its_batch_ms() -> None:
    """Half the default inflight (the link's window, where ingest ends a store batch) holds
    5,000 messages/s for ClickHouse's batch_ms, so at that rate a batch is a burst's."""
    link = MqttDeviceLink("mqtt://h")
    assert link.inflight == link.window == 10000
    assert link.window // 2 >= 5000 * ClickHouseStore.batch_ms / 1000
    assert MqttDeviceLink("mqtt://h?inflight=7").window == 7


def test_plain_subscription_and_partitions_split_the_machines() -> None:
    """``shared=off`` subscribes without a share group; partitions 0/3, 1/3 and 2/3 take
    each machine exactly once between them."""
    assert MqttDeviceLink("mqtt://h").share_filter == "$share/ingest/livedata/+/+/telemetry/+"
    links = [MqttDeviceLink(f"mqtt://h?shared=off&partition={i}/3") for i in range(3)]
    assert links[0].share_filter == "livedata/+/+/telemetry/+"
    for n in range(100):
        topic = telemetry_topic("acme", f"M{n}", "vehicle_can")
        assert sum(not link._other_partition(topic) for link in links) == 1


def test_topics() -> None:
    """The documented topic names."""
    assert telemetry_topic("demo", "WL-0001", "vehicle_can") == (
        "livedata/demo/WL-0001/telemetry/vehicle_can"
    )
    assert status_topic("demo", "WL-0001") == "livedata/demo/WL-0001/status"
    assert MqttDeviceLink("mqtt://h").share_filter == "$share/ingest/livedata/+/+/telemetry/+"


async def test_simulate_command_publishes_each_machine_with_presence(
    broker: Mosquitto, parts: Links, tenant: str
) -> None:
    """`livedata simulate` connects one client per machine, sends both types, and goes offline on SIGTERM."""
    link = await parts.link(link_url(broker))
    command = [sys.executable, "-m", "livedata", "simulate", "--mqtt", broker.url]
    command += ["--machines", "2", "--org", tenant, "--period", "0.2"]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        assert process.stdout is not None
        lines = [await asyncio.wait_for(process.stdout.readline(), 20) for _ in range(2)]
        assert lines[1].split() == [b"machines:", b"WL-0001", b"WL-0002"], lines
        seen: set[tuple[str, str]] = set()
        while len(seen) < 4:
            item = await parts.next(link)
            assert isinstance(item, Delivery), item
            assert item.message.tenant == tenant and item.ack is not None
            seen.add((item.message.chassis, item.message.msg_type))
            await item.ack()
        await until(
            lambda: sum(1 for k, v in link.presence.items() if k[0] == tenant and v[0]) == 2
        )
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        await until(lambda: all(not v[0] for k, v in link.presence.items() if k[0] == tenant))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- batched receive: paho's fast path, lists of deliveries, PUBACKs per event-loop turn


def burst_message(tenant: str, n: int) -> DeviceMessage:
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
                *(
                    sender.publish(topic, encode(burst_message(tenant, n)), qos=1)
                    for n in range(200)
                )
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
                encode(burst_message(tenant, 7)),
                qos=1,
                properties=props,
            )
        [[delivery]] = await take(link, 1)
        assert isinstance(delivery, Delivery) and delivery.message.values == {"n": 7}
    finally:
        await link.close()


async def test_retained_telemetry_is_delivered_once_not_at_every_resubscribe(
    broker: Mosquitto, parts: Links, tenant: str
) -> None:
    """Telemetry published retained arrives once; its replay to a later subscription is a Rejection."""
    url = link_url(broker, shared="off")
    link = await parts.link(url)
    topic = telemetry_topic(tenant, "M1", "client_raw_data")
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.publish(topic, encode(raw_message(tenant, "M1")), qos=1, retain=True)
    item = await parts.next(link)
    assert isinstance(item, Delivery) and item.message == raw_message(tenant, "M1")
    later = await parts.link(url)  # a restarted ingest process subscribes again
    replay = await parts.next(later)
    assert isinstance(replay, Rejection) and "retained" in replay.reason
    assert (replay.tenant, replay.chassis) == (tenant, "M1")
    await parts.nothing(later)
    await publish(broker, topic, b"", retain=True)  # clear it for the other tests


async def test_a_long_batch_age_does_not_hold_a_link_at_its_window(
    broker: Mosquitto, tmp_path: Path, tenant: str
) -> None:
    """inflight=3, store_batch_ms of an hour: 12 messages are still stored and acknowledged,
    because a batch is written as soon as the link's window waits for acknowledgements."""
    async with _ingesting(broker, tmp_path, tenant, Ingest, linger=3600) as ingest:
        await _publish_and_store(broker, ingest, tenant, 12)
        assert ingest.ack_window == 3


@contextlib.asynccontextmanager
async def _ingesting(
    broker: Mosquitto, tmp_path: Path, tenant: str, kind: type[Ingest], **options: Any
) -> AsyncIterator[Ingest]:
    """``kind`` (an Ingest) on a memory store and log, fed by an MQTT link with inflight=3."""
    meta = Metadata(f"sqlite:///{tmp_path}/meta.db")
    await meta.start()
    await meta.ensure_org(tenant, "Window")
    await meta.upsert_machine(tenant, "M1", "Loader", "WL")
    store = MemoryStore(f"memory://{uuid.uuid4().hex}")
    ingest = kind(store, MemoryLog(f"memory://{uuid.uuid4().hex}"), Catalog(meta), **options)
    link = MqttDeviceLink(link_url(broker, inflight=3))
    await link.start()
    tasks = [asyncio.create_task(ingest.run()), asyncio.create_task(consume_devices(ingest, link))]
    try:
        yield ingest
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await link.close()
        await meta.close()


async def _publish_and_store(broker: Mosquitto, ingest: Ingest, tenant: str, count: int) -> None:
    """Publish ``count`` messages of M1 and wait until the store has each, in order."""
    topic = telemetry_topic(tenant, "M1", "client_raw_data")
    for i in range(count):
        await publish(broker, topic, encode(raw_message(tenant, "M1", TS + i)))
    async with asyncio.timeout(20):
        while ingest.written < count:  # noqa: ASYNC110 - the store confirms in the writer task
            await asyncio.sleep(0.05)
    stored = await ingest.store.query(tenant, "M1", "client_raw_data", ["cpu_usage"], TS, TS + 20)
    assert [ts for ts, _ in stored["cpu_usage"]] == [TS + i for i in range(count)]


async def test_a_known_topic_is_still_checked_message_by_message(
    broker: Mosquitto, parts: Links, tenant: str
) -> None:
    """After good telemetry on a topic, later bad payloads on it and an oversized one
    (1.5 MB, over several socket reads) are each one Rejection; good messages around them
    arrive intact."""
    link = await parts.link(link_url(broker))
    can_topic = telemetry_topic(tenant, "M1", "vehicle_can")
    raw_topic = telemetry_topic(tenant, "M1", "client_raw_data")
    good = encode(can_message(tenant, "M1"))
    await publish(broker, can_topic, good)
    await publish(broker, raw_topic, encode(raw_message(tenant, "M1")))
    for _ in range(2):
        item = await parts.next(link)
        assert isinstance(item, Delivery)
    bad = [
        (can_topic, encode(raw_message(tenant, "M1")), "JSON"),
        (can_topic, good[:-2], "truncated"),
        (raw_topic, good, "binary vehicle_can"),
        (can_topic, b"\x01" * 1_500_000, "larger than"),
    ]
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        for topic, payload, _ in bad:
            await client.publish(topic, payload, qos=1)
        await client.publish(can_topic, encode(can_message(tenant, "M1", TS + 1)), qos=1)
    for topic, _, needle in bad:
        item = await parts.next(link)
        assert isinstance(item, Rejection), (topic, item)
        assert needle in item.reason and (item.tenant, item.chassis) == (tenant, "M1")
    item = await parts.next(link)
    assert isinstance(item, Delivery) and item.message == can_message(tenant, "M1", TS + 1)
    await parts.nothing(link)
    assert link.counters["rejected"] == len(bad)


async def test_retained_telemetry_on_a_known_topic_is_refused_at_a_reconnect(
    broker: Mosquitto, parts: Links, tenant: str
) -> None:
    """Telemetry published retained arrives once; when the link's connection drops and it
    subscribes again, the broker's replay on that now known topic is a Rejection."""
    link = await parts.link(link_url(broker, shared="off"))
    topic = telemetry_topic(tenant, "M1", "vehicle_can")
    await publish(broker, topic, encode(can_message(tenant, "M1")), retain=True)
    item = await parts.next(link)
    assert isinstance(item, Delivery) and item.message == can_message(tenant, "M1")
    assert link._client is not None
    link._client._client.socket().shutdown(socket.SHUT_RDWR)  # the network drops
    replay = await parts.next(link, timeout=10)
    assert isinstance(replay, Rejection) and "retained" in replay.reason
    await until(lambda: link.counters["connects"] == 2)  # its subscriptions are all back
    await publish(broker, topic, b"", retain=True)  # clear it for the other tests


async def test_partitions_take_their_machines_and_acknowledge_the_others(
    broker: Mosquitto, parts: Links, tenant: str
) -> None:
    """Two links with ``shared=off``, ``partition=0/2`` and ``1/2``: each delivers every
    message of its machines, in order, and counts the other machines' messages out."""
    group = f"g{uuid.uuid4().hex[:8]}"
    links = [
        await parts.link(link_url(broker, group=group, shared="off", partition=f"{i}/2"))
        for i in range(2)
    ]
    machines = [f"M{n}" for n in range(10)]
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        for ts in (TS, TS + 1000):
            for chassis in machines:
                topic = telemetry_topic(tenant, chassis, "client_raw_data")
                await client.publish(topic, encode(raw_message(tenant, chassis, ts)), qos=1)
    seen: list[list[tuple[str, int]]] = [[], []]
    for i, link in enumerate(links):
        mine = [m for m in machines if not link._other_partition(telemetry_topic(tenant, m, "x"))]
        for _ in range(2 * len(mine)):
            item = await parts.next(link)
            assert isinstance(item, Delivery)
            seen[i].append((item.message.chassis, item.message.ts))
        await parts.nothing(link, 0.2)
        assert sorted(seen[i]) == sorted((m, ts) for m in mine for ts in (TS, TS + 1000))
        assert link.partitioned_out == 2 * (len(machines) - len(mine))
    assert sorted(c for c, _ in seen[0] + seen[1]) == sorted(machines * 2)


class _FailsOnce(Ingest):
    """Ingest whose first ``handle_many`` raises, as a backend error nobody mapped would."""

    failed = 0

    async def handle_many(self, deliveries: Sequence[Delivery | Rejection]) -> list[Outcome]:
        if not self.failed:
            self.failed += 1
            raise RuntimeError("unmapped driver error")
        return await super().handle_many(deliveries)


async def test_a_batch_whose_handling_failed_is_handed_in_again(
    broker: Mosquitto, tmp_path: Path, tenant: str
) -> None:
    """A batch whose handling raised is retried, not dropped: its deliveries are stored and
    acknowledged, and the link (inflight=3, acknowledging in arrival order) goes on."""
    async with _ingesting(broker, tmp_path, tenant, _FailsOnce) as ingest:
        await _publish_and_store(broker, ingest, tenant, 9)
        assert isinstance(ingest, _FailsOnce) and ingest.failed == 1


class _Recorder:
    """A TCP proxy to ``port`` on loopback that notes the MQTT packet types a client sends
    and holds each SUBSCRIBE 0.1 s, as a broker busy sending a backlog answers late."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent: list[int] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        back = asyncio.create_task(self._pipe(up_reader, writer))
        self._tasks.add(back)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                first = (await reader.readexactly(1))[0]
                header, length, shift = bytes([first]), 0, 0
                while True:
                    byte = await reader.readexactly(1)
                    header += byte
                    length |= (byte[0] & 0x7F) << shift
                    shift += 7
                    if not byte[0] & 0x80:
                        break
                self.sent.append(first >> 4)
                if first >> 4 == 8:
                    await asyncio.sleep(0.1)
                up_writer.write(header + await reader.readexactly(length))
        up_writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()


async def test_a_restarted_link_acknowledges_nothing_until_subscribed(
    own: Mosquitto, parts: Links, tenant: str
) -> None:
    """A persistent session's backlog does not flood in while the link resubscribes: no
    PUBACK goes out before its last SUBSCRIBE (each would release up to ``inflight`` more
    ahead of the SUBACKs); then every message is delivered or counted out once and
    acknowledged, those that came with the CONNACK included (nothing comes again)."""
    recorder = _Recorder(own.port)
    port = await recorder.start()
    options = f"shared=off&partition=0/2&client_id=c{uuid.uuid4().hex[:8]}&session_expiry=300"
    url = f"mqtt://127.0.0.1:{port}?{options}&inflight=50"
    first = MqttDeviceLink(url)
    await first.start()
    await first.close()  # the session and its subscription stay at the broker
    # the other partition's machines first: their PUBACKs are not held behind older messages
    machines = sorted(
        (f"M{n}" for n in range(20)),
        key=lambda m: not first._other_partition(telemetry_topic(tenant, m, "x")),
    )
    async with aiomqtt.Client("127.0.0.1", own.port, protocol=aiomqtt.ProtocolVersion.V5) as pub:
        for i in range(100):
            for chassis in machines:
                topic = telemetry_topic(tenant, chassis, "client_raw_data")
                await pub.publish(topic, encode(raw_message(tenant, chassis, TS + i)), qos=1)
    recorder.sent.clear()
    try:
        link = await parts.link(url)
        subscribes = [i for i, kind in enumerate(recorder.sent) if kind == 8]
        assert len(subscribes) == 4, recorder.sent
        assert 4 not in recorder.sent[: subscribes[-1]], recorder.sent[: subscribes[-1] + 1]
        mine = [m for m in machines if not link._other_partition(telemetry_topic(tenant, m, "x"))]
        got = []
        for _ in range(100 * len(mine)):
            item = await parts.next(link)
            assert isinstance(item, Delivery) and item.ack is not None
            got.append((item.message.chassis, item.message.ts))
            await item.ack()
        await until(lambda: link.partitioned_out == 100 * (len(machines) - len(mine)), 10)
        assert sorted(got) == sorted((m, TS + i) for m in mine for i in range(100))
        # each message PUBACKed once on this connection (then closing loses none)
        await until(lambda: recorder.sent.count(4) == 100 * len(machines), 10)
        await parts.close()
        again = await parts.link(url)
        await parts.nothing(again, 1.0)
        assert again.partitioned_out == 0
    finally:
        await parts.close()
        await recorder.close()
