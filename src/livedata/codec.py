"""The wire encoding of device payloads: bytes in, :class:`DeviceMessage` out, and back.

Sans-I/O.  The same payloads travel over MQTT (``livedata/{tenant}/{chassis}/telemetry/{msgType}``)
and HTTP (``POST /api/ingest/{orgId}/{chassisId}/{msgType}``); see
``docs/device-protocol.md``.  A payload never names its machine: the tenant and
chassis come from the topic or the URL, so a device cannot write another
machine's data by what it puts in a payload.

``vehicle_can`` — a binary frame batch, version 1, little-endian::

    offset size  field
    0      1     version            1
    1      1     flags              bit 0: backfill (stored, not pushed live); bits 1-7: 0
    2      8     base ts            int64, ms since the epoch: the message's timestamp
    10     2     frame count n      uint16, at most MAX_FRAMES (10,000)
    12     …     n frames, each:
                 0  2  ts offset    int16, ms relative to base ts (-32768 … 32767)
                 2  4  id           uint32: bits 0-28 the identifier, bit 31 set for an
                                    extended (29-bit) frame, bits 29-30: 0; a standard
                                    frame's identifier is at most 0x7FF
                 6  1  length       data bytes: 0-8, or a CAN FD length 12/16/20/24/32/48/64
                 7  …  data

A classic frame costs 15 bytes (7 + 8 data), so a second of 1,000 frames is 15 kB.

``client_raw_data`` — a JSON object (UTF-8), version 1::

    {"v": 1, "ts": 1712345678000, "kind": "realTime", "values": {"cpu_usage": 12.5, …}}

``v`` and ``ts`` (int, ms since the epoch) are required; ``kind`` is ``"realTime"``
(default) or ``"backfill"``; ``values`` is an object of flat values whose keys and
values ingest checks one by one (see :mod:`livedata.decode.values`).  Any other key
is refused, so a newer device format is a new ``v``, not silently half-read.

Limits: a payload is at most :data:`MAX_PAYLOAD` bytes (1 MiB) and a batch at most
:data:`MAX_FRAMES` frames.  :func:`decode` raises :class:`~livedata.errors.DecodeError`
with a one-line reason for anything else: a wrong version, the other message type's
encoding, a truncated batch, trailing bytes, reserved bits set, too many frames, an
oversized payload.  Nothing is partly accepted: a payload decodes whole or not at all.
:func:`encode` raises :class:`ValueError` for a message it cannot represent (a device
bug: a frame more than 32 s away from the message's timestamp, too many frames, too
large), so a device never sends what the server would refuse.

Speed: :mod:`struct` with precompiled formats; a batch whose frames all carry 8
data bytes (the common case) is read and written with one ``iter_unpack`` /
one ``pack`` per frame, no per-frame slicing and no function call per frame
beyond the frame's own construction.  Frames are made with ``tuple.__new__``
and the message by setting its slots directly (:func:`_message`), not through the
named tuple's and the frozen dataclass's Python-level constructors; the objects are
the same (equal, same types, still immutable).
"""

from __future__ import annotations

import struct
from dataclasses import fields
from typing import Any

import orjson

from livedata.errors import DecodeError
from livedata.model import DeviceMessage, Frame, Kind, MsgType

__all__ = [
    "CAN_VERSION",
    "CONTENT_TYPES",
    "JSON_VERSION",
    "MAX_FRAMES",
    "MAX_PAYLOAD",
    "decode",
    "encode",
]

CAN_VERSION = 1
JSON_VERSION = 1
MAX_PAYLOAD = 1024 * 1024
"""Bytes a payload may have at most, on every transport."""
MAX_FRAMES = 10_000
"""Frames a ``vehicle_can`` batch may have at most."""

CONTENT_TYPES = {
    MsgType.VEHICLE_CAN: "application/octet-stream",
    MsgType.CLIENT_RAW_DATA: "application/json",
}
"""The media type of each message type's payload (for HTTP)."""

FLAG_BACKFILL = 0x01
EXTENDED = 0x8000_0000
_RESERVED_ID_BITS = 0x6000_0000
_EXT_MAX = 0x1FFF_FFFF
_EXT_CHECK = EXTENDED | _RESERVED_ID_BITS
_STD_MAX = 0x7FF
_LENGTHS = frozenset((*range(9), 12, 16, 20, 24, 32, 48, 64))

_HEADER = struct.Struct("<BBqH")
_FRAME = struct.Struct("<hIB")
_FRAME8 = struct.Struct("<hIB8s")
_JSON_KEYS = frozenset(("v", "ts", "kind", "values"))
_INT64_MAX = (1 << 63) - 1

_new_frame = tuple.__new__
"""``_new_frame(Frame, (ts, id, extended, data))``: a :class:`Frame` without its
Python-level ``__new__`` (the fields are checked by the caller)."""

_MESSAGE_FIELDS = ("tenant", "chassis", "msg_type", "ts", "kind", "frames", "values", "payload")
if tuple(f.name for f in fields(DeviceMessage)) != _MESSAGE_FIELDS:  # pragma: no cover
    raise ImportError("DeviceMessage's fields changed: update livedata.codec._message")
_new_object = object.__new__
_set_fields = tuple(getattr(DeviceMessage, name).__set__ for name in _MESSAGE_FIELDS)


def _message(
    tenant: str,
    chassis: str,
    msg_type: MsgType,
    ts: int,
    kind: Kind,
    frames: tuple[Frame, ...],
    values: dict[str, Any],
    payload: bytes | None,
) -> DeviceMessage:
    """``DeviceMessage(tenant, chassis, msg_type, ts, kind, frames, values, payload)``
    with its slots set directly: the frozen dataclass's ``__init__`` costs an
    ``object.__setattr__`` call per field.  The result is the same, still frozen."""
    msg = _new_object(DeviceMessage)
    s_tenant, s_chassis, s_type, s_ts, s_kind, s_frames, s_values, s_payload = _set_fields
    s_tenant(msg, tenant)
    s_chassis(msg, chassis)
    s_type(msg, msg_type)
    s_ts(msg, ts)
    s_kind(msg, kind)
    s_frames(msg, frames)
    s_values(msg, values)
    s_payload(msg, payload)
    return msg


def encode(msg: DeviceMessage) -> bytes:
    """The payload of ``msg`` (its tenant and chassis are not part of it: they go in the topic)."""
    if msg.msg_type == MsgType.VEHICLE_CAN:
        data = _encode_can(msg)
    elif msg.msg_type == MsgType.CLIENT_RAW_DATA:
        data = orjson.dumps(
            {"v": JSON_VERSION, "ts": msg.ts, "kind": msg.kind.value, "values": msg.values}
        )
    else:  # pragma: no cover - MsgType is closed
        raise ValueError(f"unknown msgType {msg.msg_type!r}")
    if len(data) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(data)} bytes, at most {MAX_PAYLOAD}: split the message")
    return data


def _encode_can(msg: DeviceMessage) -> bytes:
    frames = msg.frames
    if len(frames) > MAX_FRAMES:
        raise ValueError(f"{len(frames)} frames in one batch, at most {MAX_FRAMES}")
    if not 0 <= msg.ts <= _INT64_MAX:
        raise ValueError(f"timestamp {msg.ts} out of range")
    flags = FLAG_BACKFILL if msg.kind == Kind.BACKFILL else 0
    parts = [_HEADER.pack(CAN_VERSION, flags, msg.ts, len(frames))]
    base = msg.ts
    pack8, pack = _FRAME8.pack, _FRAME.pack
    try:
        for f in frames:
            ident = f.arbitration_id
            if f.is_extended:
                if not 0 <= ident <= _EXT_MAX:
                    raise ValueError(f"extended CAN id 0x{ident:X} is more than 29 bits")
                ident |= EXTENDED
            elif not 0 <= ident <= _STD_MAX:
                raise ValueError(f"standard CAN id 0x{ident:X} is more than 11 bits")
            n = len(f.data)
            if n == 8:
                parts.append(pack8(f.ts - base, ident, 8, f.data))
            elif n in _LENGTHS:
                parts.append(pack(f.ts - base, ident, n))
                parts.append(f.data)
            else:
                raise ValueError(f"CAN frame of {n} data bytes is not a CAN or CAN FD length")
    except struct.error as exc:
        raise ValueError(
            f"a frame is more than 32 s away from the message timestamp {base}: {exc}"
        ) from None
    return b"".join(parts)


def decode(tenant: str, chassis: str, msg_type: str, payload: bytes) -> DeviceMessage:
    """Read one payload of ``msg_type`` sent by ``tenant``/``chassis`` (from the topic or URL).

    Raises :class:`DecodeError` with a one-line reason when it cannot be read whole.
    """
    if len(payload) > MAX_PAYLOAD:
        raise DecodeError(f"payload of {len(payload)} bytes is larger than {MAX_PAYLOAD} bytes")
    if msg_type == MsgType.VEHICLE_CAN:
        return _decode_can(tenant, chassis, payload)
    if msg_type == MsgType.CLIENT_RAW_DATA:
        return _decode_json(tenant, chassis, payload)
    raise DecodeError(f"unknown msgType {msg_type[:64]!r}: use one of {', '.join(MsgType)}")


def _decode_can(tenant: str, chassis: str, payload: bytes) -> DeviceMessage:
    if len(payload) < _HEADER.size:
        if payload[:1] in (b"{", b"["):
            raise DecodeError(_LOOKS_LIKE_JSON)
        raise DecodeError(
            f"vehicle_can batch truncated: {len(payload)} bytes, the header alone is {_HEADER.size}"
        )
    version, flags, base, count = _HEADER.unpack_from(payload)
    if version != CAN_VERSION:
        if payload[:1] in (b"{", b"["):
            raise DecodeError(_LOOKS_LIKE_JSON)
        raise DecodeError(
            f"unsupported vehicle_can encoding version {version} (this server reads {CAN_VERSION})"
        )
    if flags & ~FLAG_BACKFILL:
        raise DecodeError(f"vehicle_can flags 0x{flags:02X} set reserved bits")
    if base < 0:
        raise DecodeError(f"vehicle_can timestamp {base} is negative")
    if count > MAX_FRAMES:
        raise DecodeError(f"vehicle_can batch of {count} frames, at most {MAX_FRAMES} allowed")
    kind = Kind.BACKFILL if flags & FLAG_BACKFILL else Kind.REALTIME
    body = len(payload) - _HEADER.size
    frames = _frames8(payload, base) if body == count * _FRAME8.size else None
    if frames is None:
        frames = _frames(payload, base, count)
    return _message(tenant, chassis, MsgType.VEHICLE_CAN, base, kind, frames, {}, bytes(payload))


_LOOKS_LIKE_JSON = (
    "vehicle_can payload looks like JSON: vehicle_can is a binary frame batch "
    "(see docs/device-protocol.md); JSON is for client_raw_data"
)


def _check_id(raw: int, index: int) -> tuple[int, bool]:
    if raw & _RESERVED_ID_BITS:
        raise DecodeError(f"frame {index}: CAN id word 0x{raw:08X} sets reserved bits 29-30")
    if raw & EXTENDED:
        return raw & _EXT_MAX, True
    if raw > _STD_MAX:
        raise DecodeError(f"frame {index}: standard CAN id 0x{raw:X} is more than 11 bits")
    return raw, False


def _frames8(payload: bytes, base: int) -> tuple[Frame, ...] | None:
    """The frames if every one carries 8 bytes and has a valid id; ``None`` to take the
    general path (which reads frame by frame and names the first bad one)."""
    out: list[Frame] = []
    append = out.append
    for offset, raw, length, data in _FRAME8.iter_unpack(memoryview(payload)[_HEADER.size :]):
        if length != 8:
            return None
        if raw <= _STD_MAX:
            append(_new_frame(Frame, (base + offset, raw, False, data)))
        elif raw & _EXT_CHECK == EXTENDED:  # bit 31 set, reserved bits 29-30 clear
            append(_new_frame(Frame, (base + offset, raw & _EXT_MAX, True, data)))
        else:
            return None
    return tuple(out)


def _frames(payload: bytes, base: int, count: int) -> tuple[Frame, ...]:
    out = []
    pos = _HEADER.size
    end = len(payload)
    unpack = _FRAME.unpack_from
    size = _FRAME.size
    for index in range(count):
        if pos + size > end:
            raise DecodeError(
                f"vehicle_can batch truncated: frame {index} of {count} starts at byte {pos} "
                f"of {end}"
            )
        offset, raw, length = unpack(payload, pos)
        if length not in _LENGTHS:
            raise DecodeError(f"frame {index}: length {length} is not a CAN or CAN FD data length")
        ident, extended = _check_id(raw, index)
        pos += size
        if pos + length > end:
            raise DecodeError(
                f"vehicle_can batch truncated: frame {index} of {count} needs {length} data "
                f"bytes, {end - pos} left"
            )
        out.append(_new_frame(Frame, (base + offset, ident, extended, payload[pos : pos + length])))
        pos += length
    if pos != end:
        raise DecodeError(f"vehicle_can batch has {end - pos} bytes after its {count} frames")
    return tuple(out)


def _decode_json(tenant: str, chassis: str, payload: bytes) -> DeviceMessage:
    try:
        obj: Any = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        if payload[:1] == bytes((CAN_VERSION,)):
            raise DecodeError(
                "client_raw_data payload looks like a binary vehicle_can batch: "
                "client_raw_data is a JSON object"
            ) from None
        raise DecodeError(f"client_raw_data is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"client_raw_data must be a JSON object, not {type(obj).__name__}")
    version = obj.get("v")
    if version != JSON_VERSION:
        if version is None:
            raise DecodeError('client_raw_data has no version: send {"v": 1, "ts": …, "values": …}')
        raise DecodeError(
            f"unsupported client_raw_data version {str(version)[:20]} "
            f"(this server reads {JSON_VERSION})"
        )
    unknown = set(obj) - _JSON_KEYS
    if unknown:
        names = ", ".join(sorted(repr(k[:40]) for k in unknown)[:5])
        raise DecodeError(f"client_raw_data has unknown keys {names}: only v, ts, kind, values")
    ts = obj.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= _INT64_MAX:
        raise DecodeError("client_raw_data ts must be an integer: ms since the epoch")
    kind_text = obj.get("kind", Kind.REALTIME.value)
    try:
        kind = Kind(kind_text)
    except ValueError:
        raise DecodeError(
            f"client_raw_data kind {str(kind_text)[:40]!r} is neither 'realTime' nor 'backfill'"
        ) from None
    values = obj.get("values")
    if not isinstance(values, dict):
        raise DecodeError("client_raw_data values must be a JSON object of flat values")
    return _message(tenant, chassis, MsgType.CLIENT_RAW_DATA, ts, kind, (), values, None)
