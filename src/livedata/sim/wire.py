"""The MQTT 5 packets a simulated device needs, as bytes: sans-I/O, no client library.

``livedata simulate`` publishes tens of thousands of messages a second from one
process; a general client (paho-mqtt under aiomqtt) spends about 80 µs of Python on
each (reading the fixed header byte by byte, a future and a ``wait_for`` per
publish).  A device needs only a small, fixed part of MQTT 5 — CONNECT with a Last
Will and credentials, PUBLISH at QoS 0/1, PUBACK, SUBSCRIBE, PINGREQ and DISCONNECT
— so this module builds those packets with ``struct`` and splits an incoming byte
stream into packets (:class:`PacketReader`); :mod:`livedata.sim.connection` moves the
bytes.

Only what a device sends or receives is here: a packet type the broker should
never send a client (CONNECT, SUBSCRIBE, …) is a :class:`ProtocolError`, as is a
malformed length.  Incoming packets are bounded by ``max_packet`` (the broker may
send a method request; nothing big), so a broken peer cannot make the reader
buffer without end.
"""

from __future__ import annotations

import struct

__all__ = [
    "CONNACK",
    "DISCONNECT",
    "DISCONNECT_PACKET",
    "PINGREQ_PACKET",
    "PUBACK",
    "PUBLISH",
    "RECEIVE_MAXIMUM",
    "SUBACK",
    "PacketReader",
    "ProtocolError",
    "connack",
    "connect",
    "puback",
    "puback_reason",
    "publish",
    "publish_header",
    "read_publish",
    "suback_codes",
    "subscribe",
]

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
_FROM_BROKER = frozenset((CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP, DISCONNECT))
_U16 = struct.Struct(">H")

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
"""Normal disconnection (reason 0): the broker discards the Last Will."""


class ProtocolError(Exception):
    """The broker sent something that is not (this subset of) MQTT 5."""


def varint(n: int) -> bytes:
    """MQTT's variable byte integer (at most 268,435,455)."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"{n} does not fit an MQTT variable byte integer")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > 0xFFFF:
        raise ValueError("an MQTT string is at most 65,535 bytes")
    return _U16.pack(len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def connect(
    client_id: str,
    *,
    keepalive: int,
    will_topic: str | None = None,
    will_payload: bytes = b"",
    will_retain: bool = True,
    username: str | None = None,
    password: str | None = None,
    clean_start: bool = True,
) -> bytes:
    """CONNECT, MQTT 5, with an optional Last Will at QoS 1."""
    flags = 0x02 if clean_start else 0
    payload = _string(client_id)
    if will_topic is not None:
        flags |= 0x04 | (1 << 3) | (0x20 if will_retain else 0)
        payload += b"\x00" + _string(will_topic) + _string(will_payload)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    header = _string("MQTT") + bytes((5, flags)) + _U16.pack(keepalive) + b"\x00"
    return _packet(CONNECT << 4, header + payload)


def publish_header(topic: str) -> bytes:
    """The topic part of a PUBLISH, prepared once per topic for :func:`publish`."""
    return _string(topic)


def publish(topic: bytes, packet_id: int, payload: bytes, *, retain: bool = False) -> bytes:
    """PUBLISH at QoS 1 (``packet_id`` 1 … 65535) or QoS 0 (``packet_id`` 0), no properties.

    ``topic`` is :func:`publish_header`'s result.
    """
    if packet_id:
        body_len = len(topic) + 3 + len(payload)
        first = 0x32 | retain
        return b"".join(
            (bytes((first,)), varint(body_len), topic, _U16.pack(packet_id), b"\x00", payload)
        )
    return b"".join(
        (bytes((0x30 | retain,)), varint(len(topic) + 1 + len(payload)), topic, b"\x00", payload)
    )


def puback(packet_id: int) -> bytes:
    """PUBACK, success."""
    return b"\x40\x02" + _U16.pack(packet_id)


def subscribe(packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
    """SUBSCRIBE to one filter."""
    return _packet(
        (SUBSCRIBE << 4) | 0x02,
        _U16.pack(packet_id) + b"\x00" + _string(topic_filter) + bytes((qos,)),
    )


def _skip_varint(body: bytes, at: int) -> tuple[int, int]:
    """``(value, next offset)`` of the variable byte integer at ``at``."""
    value = shift = 0
    for i in range(4):
        if at + i >= len(body):
            break
        byte = body[at + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at + i + 1
        shift += 7
    raise ProtocolError("malformed variable byte integer")


_PROPERTY_SIZES = {
    **dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 1),
    **dict.fromkeys((0x13, 0x21, 0x22, 0x23), 2),
    **dict.fromkeys((0x02, 0x11, 0x18, 0x27), 4),
}
_PROPERTY_STRINGS = frozenset((0x03, 0x08, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x09))


def _properties(raw: bytes) -> dict[int, int]:
    """The integer properties of a property block (strings and pairs skipped)."""
    out: dict[int, int] = {}
    at = 0
    while at < len(raw):
        ident = raw[at]
        at += 1
        if ident in _PROPERTY_SIZES:
            size = _PROPERTY_SIZES[ident]
            out[ident] = int.from_bytes(raw[at : at + size], "big")
            at += size
        elif ident == 0x0B:
            out[ident], at = _skip_varint(raw, at)
        elif ident in _PROPERTY_STRINGS:
            at += 2 + _U16.unpack_from(raw, at)[0]
        elif ident == 0x26:  # user property: a string pair
            at += 2 + _U16.unpack_from(raw, at)[0]
            at += 2 + _U16.unpack_from(raw, at)[0]
        else:
            raise ProtocolError(f"unknown property 0x{ident:02X}")
        if at > len(raw):
            raise ProtocolError("truncated properties")
    return out


RECEIVE_MAXIMUM = 0x21


def connack(body: bytes) -> tuple[int, dict[int, int]]:
    """``(reason code, integer properties)`` of a CONNACK body; 0 is success."""
    if len(body) < 2:
        raise ProtocolError("CONNACK too short")
    if len(body) == 2:
        return body[1], {}
    length, at = _skip_varint(body, 2)
    return body[1], _properties(body[at : at + length])


def suback_codes(body: bytes) -> bytes:
    """The reason codes of a SUBACK body (one per filter; 0-2 granted QoS, ≥ 0x80 refused)."""
    if len(body) < 3:
        raise ProtocolError("SUBACK too short")
    length, at = _skip_varint(body, 2)
    return body[at + length :]


def read_publish(flags: int, body: bytes) -> tuple[str, int, bytes]:
    """``(topic, packet id (0 at QoS 0), payload)`` of an incoming PUBLISH."""
    try:
        (n,) = _U16.unpack_from(body, 0)
        topic = body[2 : 2 + n].decode()
        at = 2 + n
        packet_id = 0
        if flags & 0x06:
            (packet_id,) = _U16.unpack_from(body, at)
            at += 2
        length, at = _skip_varint(body, at)
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(f"malformed PUBLISH: {exc}") from None
    return topic, packet_id, body[at + length :]


def puback_reason(body: bytes) -> tuple[int, int]:
    """``(packet id, reason code)`` of a PUBACK body (reason 0 when absent)."""
    if len(body) < 2:
        raise ProtocolError("PUBACK too short")
    return _U16.unpack_from(body, 0)[0], body[2] if len(body) > 2 else 0


class PacketReader:
    """Splits the bytes from the broker into ``(type, flags, body)`` packets."""

    def __init__(self, max_packet: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._max = max_packet

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """The whole packets completed by ``data``, in order; :class:`ProtocolError` if malformed."""
        buf = self._buf
        buf += data
        out = []
        at = 0
        end = len(buf)
        while end - at >= 2:
            first = buf[at]
            length = shift = 0
            i = at + 1
            while True:
                if i >= end:
                    length = -1
                    break
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise ProtocolError("malformed remaining length")
            if length < 0:
                break
            if length > self._max:
                raise ProtocolError(f"packet of {length} bytes, at most {self._max}")
            if end - i < length:
                break
            kind = first >> 4
            if kind not in _FROM_BROKER:
                raise ProtocolError(f"packet type {kind} is not one a broker sends a client")
            out.append((kind, first & 0x0F, bytes(buf[i : i + length])))
            at = i + length
        if at:
            del buf[:at]
        return out
