"""The simulator's MQTT side: the packet reader, and ``livedata simulate`` against a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from livedata.cli.simulate import simulate
from livedata.codec import encode
from livedata.decode.can import CanDecoder
from livedata.devices.mqtt import MqttDeviceLink
from livedata.errors import ConfigError
from livedata.sim import wire
from livedata.sim.connection import SimDevice
from livedata.sim.demo import DBC_PATH
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


async def test_device_reconnects_after_a_broker_restart_and_counts_what_it_dropped(
    tmp_path: Path,
) -> None:
    """Down: publishes are dropped and counted; after the restart the device is back by itself."""
    own = start_mosquitto(tmp_path / "broker")
    link = MqttDeviceLink(own.url + "?group=g")
    device = SimDevice(own.url, "t1", "M1")
    try:
        await device.connect()
        own.kill()
        await until(lambda: not device.connected)
        _, raw_topic = device.topics
        device.publish([(raw_topic, b"{}"), (raw_topic, b"{}")])
        assert device.dropped == 2
        own.restart()
        await link.start()
        await until(lambda: device.connected and device.connects == 2, 20)
        inbox = Inbox(link)
        device.publish([(raw_topic, encode(raw_message("t1", "M1")))])
        item = await inbox.delivery()
        assert item.message == raw_message("t1", "M1")
        await until(lambda: device.sent == 1)
        await inbox.stop()
    finally:
        await device.close()
        await link.close()
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
