"""The simulator's MQTT side: the packet reader, and ``livedata simulate`` against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from livedata.cli.simulate import _Ticker, simulate
from livedata.codec import encode
from livedata.decode.can import CanDecoder
from livedata.devices.base import Delivery
from livedata.devices.mqtt import MqttDeviceLink
from livedata.errors import ConfigError
from livedata.sim import wire
from livedata.sim.connection import SimDevice, device_topics
from livedata.sim.demo import DBC_PATH
from livedata.sim.ring import PayloadRing
from tests.devices.contract import Inbox, raw_message, until
from tests.servers.mosquitto import Mosquitto, start_mosquitto


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


def test_reader_reassembles_packets_split_anywhere() -> None:
    """Packets cut at every byte boundary come out whole, in order, once."""
    big = wire.publish(wire.publish_header("livedata/t/m/methods/req/x/1"), 9, b"p" * 300)
    stream = wire.puback(7) + b"\xd0\x00" + big  # PUBACK, PINGRESP, PUBLISH
    for cut in range(1, len(stream)):
        reader = wire.PacketReader()
        packets = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [kind for kind, _, _ in packets] == [wire.PUBACK, 13, wire.PUBLISH], cut
        topic, pid, payload = wire.read_publish(packets[2][1], packets[2][2])
        assert (topic, pid, payload) == ("livedata/t/m/methods/req/x/1", 9, b"p" * 300)


def test_reader_refuses_what_a_broker_never_sends() -> None:
    """A CONNECT from the broker, a packet over the bound or a 5-byte length is a ProtocolError."""
    with pytest.raises(wire.ProtocolError, match="not one a broker sends"):
        wire.PacketReader().feed(b"\x10\x00")
    with pytest.raises(wire.ProtocolError, match="at most"):
        wire.PacketReader(max_packet=100).feed(b"\x30" + wire.varint(101))
    with pytest.raises(wire.ProtocolError, match="remaining length"):
        wire.PacketReader().feed(b"\x30\xff\xff\xff\xff\x01")


SAVED = "Saving in-memory database"


def _persistent_broker(directory: Path) -> Mosquitto:
    """A broker that keeps the subscriber's session across a restart (saved every second or
    two, and when it stops)."""
    return start_mosquitto(
        directory, f"persistence true\npersistence_location {directory}/\nautosave_interval 1\n"
    )


def _subscriber(broker: Mosquitto) -> MqttDeviceLink:
    """Ingest's link on a persistent session with a plain subscription (restored at restart)."""
    return MqttDeviceLink(broker.url + f"?shared=off&client_id=sub{uuid.uuid4().hex[:6]}")


def _second(chassis: str, ts: int) -> tuple[bytes, bytes]:
    """A machine's ``client_raw_data`` message stamped ``ts`` (a sequence number here)."""
    _, raw_topic = device_topics("t1", chassis)
    return raw_topic, encode(raw_message("t1", chassis, ts))


class _Received:
    """Each machine's timestamps as the subscriber receives them, acknowledged at once."""

    def __init__(self, link: MqttDeviceLink) -> None:
        self.ts: dict[str, list[int]] = {}

        async def pump() -> None:
            async for item in link.inbound():
                assert isinstance(item, Delivery), item
                self.ts.setdefault(item.message.chassis, []).append(item.message.ts)
                assert item.ack is not None
                await item.ack()

        self.task = asyncio.create_task(pump())

    async def all_of(self, want: dict[str, list[int]], timeout: float) -> dict[str, list[int]]:
        """What came, once every timestamp of ``want`` did (fails after ``timeout``)."""
        await until(
            lambda: all(set(ts) <= set(self.ts.get(c, ())) for c, ts in want.items()), timeout
        )
        return self.ts

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def _first_seen(seen: list[int]) -> list[int]:
    return list(dict.fromkeys(seen))


async def test_messages_published_across_a_broker_restart_all_arrive_in_order(
    tmp_path: Path,
) -> None:
    """Streaming through a broker restart: every message arrives, in order per machine, none dropped."""
    own = _persistent_broker(tmp_path / "broker")
    link = _subscriber(own)
    devices = [SimDevice(own.url, "t1", f"M{i}") for i in range(3)]
    sent: dict[str, list[int]] = {d.chassis: [] for d in devices}

    async def stream() -> None:
        for ts in range(1, 10_000):
            for device in devices:
                device.publish([_second(device.chassis, ts)])
                sent[device.chassis].append(ts)
            await asyncio.sleep(0.02)

    await link.start()
    received = _Received(link)
    streaming = asyncio.create_task(stream())
    try:
        await asyncio.gather(*(d.connect() for d in devices))
        await asyncio.sleep(1.5)  # streaming before the restart
        await asyncio.to_thread(own.stop)  # SIGTERM: the broker saves its sessions
        await until(lambda: not any(d.connected for d in devices))
        spooled_at_least = {d.chassis: len(sent[d.chassis]) for d in devices}
        await asyncio.sleep(1.0)  # publishing on while the broker is away
        assert all(d.spooled > 0 for d in devices)
        await asyncio.to_thread(own.restart)
        await until(lambda: all(d.connects == 2 for d in devices), 40)
        await asyncio.sleep(0.5)
        streaming.cancel()
        got = await received.all_of(sent, 30)
        for device in devices:
            seen = got[device.chassis]
            assert _first_seen(seen) == sent[device.chassis], device.chassis
            assert len(seen) - len(set(seen)) <= 10  # at most the window sent twice
            assert device.dropped == 0
            assert len(sent[device.chassis]) > spooled_at_least[device.chassis] + 20
        await until(lambda: all(d.sent >= len(sent[d.chassis]) for d in devices))
    finally:
        streaming.cancel()
        await received.stop()
        await asyncio.gather(*(d.close() for d in devices))
        await link.close()
        own.stop()


@contextlib.asynccontextmanager
async def _machine_and_subscriber(
    directory: Path, spool: int
) -> AsyncIterator[tuple[Mosquitto, MqttDeviceLink, SimDevice]]:
    """A persistent broker, a subscriber whose session it has saved, and a connected machine."""
    own = _persistent_broker(directory)
    link = _subscriber(own)
    device = SimDevice(own.url, "t1", "M1", spool=spool)
    try:
        await link.start()
        await device.connect()
        saves = own.read_log().count(SAVED)
        await until(lambda: own.read_log().count(SAVED) > saves)  # with the subscription
        await asyncio.sleep(0.2)
        yield own, link, device
    finally:
        await device.close()
        await link.close()
        own.stop()


async def test_messages_in_flight_when_the_broker_dies_are_sent_again(tmp_path: Path) -> None:
    """Unacknowledged at a broker kill: kept, and after the restart sent before newer ones."""
    async with _machine_and_subscriber(tmp_path, 120) as (own, link, device):
        own.process.send_signal(signal.SIGSTOP)  # no PUBACK comes
        device.publish([_second("M1", 1), _second("M1", 2)])
        device.publish([_second("M1", 3), _second("M1", 4)])
        own.kill()
        await until(lambda: not device.connected)
        assert (device.spooled, device.sent, device.dropped) == (4, 0, 0)
        device.publish([_second("M1", 5), _second("M1", 6)])
        assert not device.full  # disconnected: the fleet does not wait for it
        own.restart()
        received = _Received(link)
        got = await received.all_of({"M1": [1, 2, 3, 4, 5, 6]}, 40)
        assert got["M1"] == [1, 2, 3, 4, 5, 6]
        await until(lambda: device.sent == 6)
        assert (device.spooled, device.dropped) == (0, 0)
        await received.stop()


async def test_a_full_spool_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    """Beyond ``spool`` the oldest are dropped and counted; the newest arrive after the restart."""
    async with _machine_and_subscriber(tmp_path, 3) as (own, link, device):
        own.kill()
        await until(lambda: not device.connected)
        for ts in range(1, 9, 2):
            device.publish([_second("M1", ts), _second("M1", ts + 1)])
        assert (device.spooled, device.dropped) == (3, 5)
        own.restart()
        received = _Received(link)
        await received.all_of({"M1": [6, 7, 8]}, 40)
        await until(lambda: device.sent == 3)
        await asyncio.sleep(0.5)
        assert received.ts["M1"] == [6, 7, 8]
        assert device.dropped == 5
        await received.stop()


async def test_the_ticker_does_not_wait_for_a_disconnected_machine(tmp_path: Path) -> None:
    """A machine whose broker is gone and whose spool is full does not hold up the tick."""
    own = start_mosquitto(tmp_path / "broker")
    devices = [SimDevice(own.url, "t1", f"M{i}", spool=4) for i in range(2)]
    ring = PayloadRing([d.chassis for d in devices], CanDecoder.from_dbc(DBC_PATH.read_text()), 0)
    ticker = _Ticker(devices, ring, 1.0)
    try:
        await asyncio.gather(*(d.connect() for d in devices))
        own.kill()
        await until(lambda: not any(d.connected for d in devices))
        for second in range(10):
            await asyncio.wait_for(ticker.tick(1_700_000_000_000 + second * 1000), 1)
        assert [(d.spooled, d.dropped) for d in devices] == [(4, 16), (4, 16)]
    finally:
        await asyncio.gather(*(d.abort() for d in devices))
        own.stop()


@pytest.mark.slow
async def test_device_pings_and_drops_a_broker_that_stays_silent() -> None:
    """A broker that accepts and then says nothing gets PINGREQs, then is dropped and retried."""
    received = bytearray()
    accepted = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        await reader.read(4096)  # CONNECT
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK, success, no properties
        while chunk := await reader.read(4096):
            received.extend(chunk)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    device = SimDevice(f"mqtt://127.0.0.1:{port}?keepalive=5", "t1", "M1")
    try:
        await device.connect()
        await until(lambda: wire.PINGREQ_PACKET in received, 10)
        await until(lambda: accepted == 2, 20)  # 7.5 s without a byte: aborted, reconnected
        assert device.last_error == "broker silent for 1.5 × keepalive"
    finally:
        await device.abort()
        server.close()


async def test_refused_credentials_fail_the_connect(tmp_path: Path) -> None:
    """A broker refusing the device's password makes connect raise ConfigError at once."""
    directory = tmp_path / "auth"
    directory.mkdir()
    passwd = directory / "passwd"
    command = ["mosquitto_passwd", "-c", "-b", str(passwd), "t1/M1", "right"]
    await asyncio.to_thread(subprocess.run, command, check=True)
    own = start_mosquitto(directory, f"password_file {passwd}\n", anonymous=False)
    try:
        device = SimDevice(f"mqtt://t1%2FM1:wrong@127.0.0.1:{own.port}", "t1", "M1")
        with pytest.raises(ConfigError, match="refused"):
            await device.connect()
        good = SimDevice(f"mqtt://t1%2FM1:right@127.0.0.1:{own.port}", "t1", "M1")
        await good.connect()
        await good.close()
    finally:
        own.stop()


async def test_simulate_sends_decodable_seconds_and_obeys_end_ms(broker: Mosquitto) -> None:
    """`simulate` with fewer templates than machines: every machine's seconds decode; endMs stops one."""
    org = f"o{uuid.uuid4().hex[:8]}"
    link = MqttDeviceLink(broker.url + f"?group=g{uuid.uuid4().hex[:6]}")
    await link.start()
    inbox = Inbox(link)
    ids = ["WL-0001", "WL-0002", "WL-0003"]
    devices = [SimDevice(broker.url, org, c) for c in ids]
    announced = asyncio.Event()
    task = asyncio.create_task(simulate(devices, 0.2, 0, announced.set, templates=2))
    decoder = CanDecoder.from_dbc(DBC_PATH.read_text())
    try:
        await asyncio.wait_for(announced.wait(), 20)
        seen: dict[tuple[str, str], int] = {}
        while len(seen) < 6 or min(seen.values()) < 2:
            item = await inbox.delivery()
            message = item.message
            assert message.tenant == org
            key = (message.chassis, str(message.msg_type))
            seen[key] = seen.get(key, 0) + 1
            if message.frames:
                assert {"engine_rpm", "speed"} <= set(decoder.decode(list(message.frames)).values)
            else:
                assert "gps_lat" in message.values
            assert item.ack is not None
            await item.ack()
        result = await link.call(org, "WL-0003", "endMs", None, response_timeout=5)
        assert result.payload == {"realtime": "off"}
        await asyncio.sleep(0.5)  # what was already on its way
        while not inbox.queue.empty():
            inbox.queue.get_nowait()
        chassis = set()
        for _ in range(12):
            chassis.add((await inbox.delivery()).message.chassis)
        assert chassis == {"WL-0001", "WL-0002"}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await inbox.stop()
        await link.close()
    assert not any(d.connected for d in devices)
