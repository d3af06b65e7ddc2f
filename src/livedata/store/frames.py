"""Raw CAN frames as the stores keep them, for re-decoding (sans I/O).

One :class:`FrameBlob` per ``vehicle_can`` message: the frames of one machine and
second, keyed like the record decoded from them -- (tenant, chassis, ts), ``ts``
being the record's timestamp -- so that re-decoding a blob rewrites exactly that
record.  The body is the message in the device wire encoding
(:mod:`livedata.codec`, 7 bytes per frame plus its data; the payload the device
link received, when it kept it, else encoded again) in raw deflate (no header).  A
payload shorter than :data:`STORE_BELOW` bytes (a second of a machine with a few
dozen frames: the demo's 12 frames are 192 bytes) is kept as one *stored* deflate
block (5 bytes of header, no compression); a longer one is compressed (zlib level
6).  Both are plain raw deflate, so :func:`unpack_frames` reads either, and the
blobs written before (all compressed).

Measured on the demo's messages (100 machines, 60 s, 192 bytes a message):
compressing costs 7-8 µs a message (zlib builds its Huffman trees per block,
whatever the level: level 1 saves under 1 µs, for 131 bytes instead of 122) for
122 bytes; storing, 197 bytes for under 1 µs (the whole of :func:`pack_frames`).
In ``bench_ingest`` (200 machines, a ``vehicle_can`` and a ``client_raw_data``
record per machine and second) that is 5 µs CPU a record less (50.6 -> 45.5 µs)
for 75 more bytes a machine-second in the ``frames`` table (1.6x the blob).

Under stress: :func:`unpack_frames` inflates at most :data:`MAX_BLOB_BYTES` (the
wire encoding's own bound) and raises :class:`~livedata.errors.DecodeError` for a
blob that is damaged or too large, so one bad blob costs only its second.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from livedata import codec
from livedata.errors import DecodeError
from livedata.model import DeviceMessage, MsgType, slot_constructor

__all__ = ["MAX_BLOB_BYTES", "STORE_BELOW", "FrameBlob", "pack_frames", "unpack_frames"]

MAX_BLOB_BYTES = codec.MAX_PAYLOAD
"""The largest inflated blob: one wire payload."""
STORE_BELOW = 512
"""Payloads shorter than this (bytes) are stored, not compressed (see the module doc)."""
_LEVEL = 6
_STORED = struct.Struct("<BHH")
"""A stored deflate block's header: BFINAL=1 and BTYPE=00 (0x01), LEN, NLEN = ~LEN."""
_WBITS = -15  # raw deflate: no zlib header and checksum (6 bytes a blob)
_PACK_WBITS, _PACK_MEMLEVEL = -12, 4
"""Packing with a 4 KiB window and small hash tables: a typical blob (a second of one
machine's frames, about 200 bytes encoded) compresses the same, without zlib's 256 KiB
of state per blob (its allocation was most of the cost); inflating with ``_WBITS``
reads any smaller window, so old and new blobs read alike."""


@dataclass(frozen=True, slots=True)
class FrameBlob:
    """The compressed raw frames of one machine's ``vehicle_can`` message."""

    tenant: str
    chassis: str
    ts: int
    """The timestamp of the record decoded from these frames (ms since the epoch)."""
    count: int
    """How many frames the blob holds."""
    data: bytes


_blob = slot_constructor(FrameBlob)
"""``FrameBlob(...)`` without the frozen dataclass's ``__init__`` (one per message)."""


def pack_frames(msg: DeviceMessage, ts: int) -> FrameBlob:
    """The frames of ``msg`` as a blob keyed by ``ts`` (the record's timestamp).

    Raises :class:`ValueError` for frames the wire encoding cannot carry (more than
    32 s from the message's timestamp, too many); ingest counts those and goes on.
    """
    if msg.msg_type != MsgType.VEHICLE_CAN:
        raise ValueError(f"{msg.msg_type} carries no frames")
    payload = msg.payload  # as the link received it: the frames, kind and ts
    if payload is None:
        payload = codec.encode(msg)
    size = len(payload)
    if size < STORE_BELOW:
        data = _STORED.pack(1, size, size ^ 0xFFFF) + payload
    else:
        deflate = zlib.compressobj(_LEVEL, zlib.DEFLATED, _PACK_WBITS, _PACK_MEMLEVEL)
        data = deflate.compress(payload) + deflate.flush()
    return _blob(msg.tenant, msg.chassis, ts, len(msg.frames), data)


def unpack_frames(blob: FrameBlob) -> DeviceMessage:
    """The message a blob was packed from (its kind and frames; ``ts`` is the device's).

    Raises :class:`~livedata.errors.DecodeError` for a damaged or oversized blob.
    """
    inflate = zlib.decompressobj(_WBITS)
    try:
        payload = inflate.decompress(blob.data, MAX_BLOB_BYTES + 1)
    except zlib.error as exc:
        raise DecodeError(f"raw frames of {blob.chassis} at {blob.ts}: damaged ({exc})") from None
    if len(payload) > MAX_BLOB_BYTES or inflate.unconsumed_tail or not inflate.eof:
        raise DecodeError(f"raw frames of {blob.chassis} at {blob.ts}: damaged or too large")
    return codec.decode(blob.tenant, blob.chassis, MsgType.VEHICLE_CAN, payload)
