"""The MQTT link's sans-I/O receive path (:class:`PacketSplitter`) against packets paho builds
and paho's own PUBLISH decoder."""

from __future__ import annotations

import random

import paho.mqtt.client as paho
import pytest
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from livedata.devices.mqtt import PacketSplitter, ProtocolError


def paho_packets(build: list[tuple[str, tuple[object, ...]]]) -> list[bytes]:
    """The bytes paho-mqtt's own client builds for each ``(method, args)``, one per packet."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    out: list[bytes] = []

    def capture(command: int, packet: bytes, mid: int, qos: int, info: object = None) -> int:
        out.append(bytes(packet))
        return 0

    client._packet_queue = capture  # type: ignore[method-assign, assignment]
    client._sock = object()  # type: ignore[assignment]  # paho builds nothing unconnected
    for method, args in build:
        getattr(client, method)(*args)
    client._sock = None
    return out


def properties(size: int) -> Properties | None:
    """PUBLISH properties of about ``size`` bytes (``None`` for 0)."""
    if size == 0:
        return None
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/octet-stream"
    props.MessageExpiryInterval = 3600
    props.UserProperty = [("k", "v" * size)]
    return props


PUBLISHES = [
    # (topic, payload size, qos, retain, dup, properties' size)
    ("livedata/acme/M1/telemetry/vehicle_can", 192, 1, False, False, 0),
    ("livedata/acme/M1/telemetry/vehicle_can", 0, 1, False, True, 0),
    ("livedata/acme/M2/status", 30, 1, True, False, 0),
    ("a", 1, 0, False, False, 0),
    ("livedata/acme/M3/telemetry/client_raw_data", 120, 0, True, False, 0),
    ("livedata/é/M4/telemetry/vehicle_can", 127, 1, False, False, 10),
    ("t" * 300, 16_383, 1, False, False, 200),
    ("livedata/acme/M5/telemetry/vehicle_can", 16_384, 1, False, False, 20_000),
    ("livedata/acme/M6/telemetry/vehicle_can", 2_100_000, 1, False, False, 0),
]
"""Remaining lengths of 1 to 4 bytes, properties lengths of 0 to 3 bytes, QoS 0 and 1."""


def built() -> tuple[list[bytes], list[tuple[str, bytes, int, int, bool]]]:
    """paho's PUBLISH packets for :data:`PUBLISHES` and what each carries."""
    rng = random.Random(17)
    calls: list[tuple[str, tuple[object, ...]]] = []
    expected = []
    for mid, (topic, size, qos, retain, dup, props) in enumerate(
        PUBLISHES, start=65_536 - len(PUBLISHES)
    ):
        payload = rng.randbytes(size)
        mid = mid if qos else 0
        calls.append(
            (
                "_send_publish",
                (mid, topic.encode(), payload, qos, retain, dup, None, properties(props)),
            )
        )
        expected.append((topic, payload, mid, qos, retain))
    return paho_packets(calls), expected


def test_publishes_are_read_as_paho_reads_them() -> None:
    """Every PUBLISH paho builds (1-4 byte lengths, properties of every size, QoS 0/1, retain,
    dup) gives the topic, payload, packet id and flags paho's own decoder reads from it."""
    packets, expected = built()
    splitter = PacketSplitter()
    got = splitter.feed(b"".join(packets))
    assert len(got) == len(packets)
    for (first, topic, payload, mid), raw, (text, body, want_mid, qos, retain) in zip(
        got, packets, expected, strict=True
    ):
        assert topic is not None
        header = raw[0]
        length_bytes = next(i for i in range(1, 5) if raw[i] < 0x80)
        reference = _packet.decode_publish(
            header, raw[1 + length_bytes :], MQTTProtocolVersion.MQTTv5
        )
        assert first == header
        assert (topic, payload, mid) == (reference.topic, reference.payload, reference.mid)
        assert (topic.decode(), payload, mid) == (text, body, want_mid)
        assert (
            ((first >> 1) & 3, bool(first & 1))
            == (qos, retain)
            == (reference.qos, reference.retain)
        )


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100, 65_536])
def test_a_stream_cut_anywhere_gives_the_same_packets(chunk: int) -> None:
    """The same packets come out whatever the reads cut the stream into (1 byte at a time,
    inside a length, inside properties), none before it is whole."""
    packets, _ = built()
    stream = b"".join(packets[:-1])  # the 2 MB one byte by byte would be slow
    whole = PacketSplitter().feed(stream)
    splitter = PacketSplitter()
    got = []
    for at in range(0, len(stream), chunk):
        got += splitter.feed(stream[at : at + chunk])
    assert got == whole and len(got) == len(packets) - 1
    assert splitter.feed(b"") == []


def test_other_packets_come_whole_in_order_for_paho() -> None:
    """PUBACK, PINGRESP, a QoS 2 PUBLISH and DISCONNECT between PUBLISHes come as
    ``(first byte, None, body, 0)``, in stream order."""
    packets = paho_packets(
        [
            ("_send_publish", (1, b"x/y", b"one", 1, False, False, None, None)),
            ("_send_puback", (513,)),
            ("_send_pingresp", ()),
            ("_send_publish", (2, b"x/y", b"two", 2, False, False, None, None)),
            ("_send_publish", (0, b"x/y", b"three", 0, False, False, None, None)),
            ("_send_disconnect", ()),
        ]
    )
    got = PacketSplitter().feed(b"".join(packets))
    assert [(first >> 4, topic) for first, topic, _, _ in got] == [
        (3, b"x/y"),
        (4, None),
        (13, None),
        (3, None),
        (3, b"x/y"),
        (14, None),
    ]
    assert got[1][2] == packets[1][2:] and got[3][2] == packets[3][2:]
    assert [payload for _, topic, payload, _ in got if topic] == [b"one", b"three"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x32\x80\x80\x80\x80\x01", "remaining length"),
        (b"\x32\x05\x00\x09abc", "topic and packet id"),
        (b"\x30\x04\x00\x03ab", "topic and properties"),
        (b"\x32\x02\x00\x00", "shorter than"),
        (b"\x32\x08\x00\x01a\x00\x01\x05xy", "properties longer than the packet"),
        (b"\x30\x07\x00\x01a\xff\xff\xff\xff", "properties length"),
    ],
)
def test_malformed_packets_are_protocol_errors(raw: bytes, reason: str) -> None:
    """A length of more than 4 bytes, a topic, packet id or properties running past the
    packet: a ProtocolError saying which, not a short or shifted payload."""
    with pytest.raises(ProtocolError, match=reason):
        PacketSplitter().feed(raw + b"\x30\x04\x00\x01a\x00")
