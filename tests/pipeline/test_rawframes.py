"""Ingest's raw-frame keeper: blobs to the store, bounded while it is down, and the decode
ranges written when the DBC changes (real SQLite metadata, memory store); the runtime's
retention of values and raw frames."""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
import zlib
from pathlib import Path

import pytest

from livedata.codec import decode, encode
from livedata.errors import StoreError
from livedata.metadata import Metadata
from livedata.metadata.decoding import machine_ranges
from livedata.model import DeviceMessage, Frame, Kind, MsgType, Record
from livedata.pipeline.rawframes import FrameKeeper
from livedata.runtime import Runtime
from livedata.settings import Settings
from livedata.store.frames import STORE_BELOW, FrameBlob, pack_frames, unpack_frames
from livedata.store.memory import MemoryStore
from livedata.store.sqlite import SQLiteStore
from tests.pipeline.faults import FlakyStore

T0 = 1_750_000_000_000
COMPRESSED_FILE = Path(__file__).parent.parent / "files" / "frames" / "compressed-frames.db"


def message(ts: int, kind: Kind = Kind.REALTIME) -> DeviceMessage:
    frames = (Frame(ts, 0x18FEF100, True, bytes(8)), Frame(ts + 5, 0x123, False, b"\x01\x02"))
    return DeviceMessage("acme", "M1", MsgType.VEHICLE_CAN, ts, kind, frames=frames)


async def test_blobs_and_ranges_follow_the_assigned_dbc(meta: Metadata) -> None:
    """Each kept message is one blob; a DBC change starts a new range, backfill has its own."""
    one = await meta.add_dbc("acme", "m.dbc", "a")
    two = await meta.add_dbc("acme", "m.dbc", "b")
    store = MemoryStore(f"memory://{uuid.uuid4().hex}")
    keeper = FrameKeeper(store, meta)
    for s in range(10):
        keeper.keep(message(T0 + s * 1000), T0 + s * 1000, one.id, "m.dbc")
    await keeper.flush()
    for s in range(10, 20):
        keeper.keep(message(T0 + s * 1000), T0 + s * 1000, two.id, "m.dbc")
    keeper.keep(message(T0 - 60_000, Kind.BACKFILL), T0 - 60_000, two.id, "m.dbc")
    await keeper.flush()
    await keeper.write_ranges()
    assert keeper.kept == 21 and keeper.pending == 0
    assert await store.count_frames("acme", "M1", 0, 2**62) == 21
    ranges = [r.to_dict() for r in await machine_ranges(meta, "acme", "M1")]
    assert [(r["from"], r["to"], r["dbcId"]) for r in ranges] == [
        (T0 - 60_000, T0 - 60_000, two.id),
        (T0, T0 + 9_000, one.id),
        (T0 + 10_000, T0 + 19_000, two.id),
    ]


async def test_store_down_keeps_a_bounded_queue(meta: Metadata) -> None:
    """While the store is down blobs wait (the oldest dropped beyond the bound, counted);
    once it is back they are written."""
    store = FlakyStore(MemoryStore(f"memory://{uuid.uuid4().hex}"), down=True)
    keeper = FrameKeeper(store, meta, max_blobs=5)
    for s in range(8):
        keeper.keep(message(T0 + s * 1000), T0 + s * 1000, None, None)
    with pytest.raises(StoreError):
        await keeper.flush()
    assert (keeper.pending, keeper.dropped) == (5, 3)
    store.down = False
    await keeper.flush()
    blobs = await store.read_frames("acme", "M1", 0, 2**62)
    assert [b.ts for b in blobs] == [T0 + s * 1000 for s in range(3, 8)]


async def test_retention_pass_applies_both_retentions(tmp_path: Path) -> None:
    """The runtime's retention pass deletes values after retention_days and raw frames after
    frames_retention_days, each on its own clock."""
    settings = Settings(
        store=f"memory://{uuid.uuid4().hex}",
        metadata=f"sqlite:///{tmp_path}/meta.db",
        data_dir=tmp_path,
        retention_days=30,
        frames_retention_days=7,
    )
    rt = Runtime(settings)
    await rt.meta.start()
    try:
        day = 86_400_000
        now = T0 / 1000
        old = [T0 - 40 * day, T0 - 10 * day, T0 - day]
        await rt.store.write(
            [Record("acme", "M1", "vehicle_can", ts, Kind.REALTIME, {"x": 1}) for ts in old]
        )
        await rt.store.write_frames([FrameBlob("acme", "M1", ts, 1, b"f") for ts in old])
        assert await rt.retention_pass(now) == (1, 2)
        assert [b.ts for b in await rt.store.read_frames("acme", "M1", 0, T0)] == [T0 - day]
        got = await rt.store.query("acme", "M1", "vehicle_can", ["x"], 0, T0)
        assert [ts for ts, _ in got["x"]] == [T0 - 10 * day, T0 - day]
    finally:
        await rt.meta.close()


def test_blobs_round_trip_and_blobs_of_the_full_window_still_read() -> None:
    """A packed blob unpacks to its message; one deflated with a 32 KiB window (older blobs) too."""
    frames = tuple(
        Frame(1_700_000_000_000 + i, 0x0CF00400, True, bytes([i] * 8)) for i in range(50)
    )
    msg = DeviceMessage("acme", "M1", MsgType.VEHICLE_CAN, frames[0].ts, Kind.BACKFILL, frames)
    blob = pack_frames(msg, msg.ts)
    assert (blob.count, unpack_frames(blob)) == (50, msg)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    old = dataclasses.replace(blob, data=deflate.compress(encode(msg)) + deflate.flush())
    assert unpack_frames(old) == msg
    with pytest.raises(ValueError, match="no frames"):
        pack_frames(DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, msg.ts, values={}), 1)


def test_a_received_message_packs_the_payload_it_was_read_from() -> None:
    """A message read from a wire payload keeps it, and its blob deflates exactly those bytes."""
    frames = tuple(
        Frame(1_700_000_000_000 + i, 0x123, False, bytes([i] * (i % 9))) for i in range(9)
    )
    payload = encode(DeviceMessage("acme", "M1", MsgType.VEHICLE_CAN, frames[0].ts, frames=frames))
    msg = decode("acme", "M1", MsgType.VEHICLE_CAN, payload)
    assert msg.payload == payload and msg.frames == frames
    blob = pack_frames(msg, msg.ts + 5)
    assert zlib.decompress(blob.data, -15) == payload
    assert (blob.count, blob.ts, unpack_frames(blob)) == (9, msg.ts + 5, msg)


def test_short_payloads_are_stored_and_long_ones_compressed_both_plain_deflate() -> None:
    """A payload under STORE_BELOW is kept as one stored deflate block, a longer one
    compressed; plain raw inflate (what older code runs) gives each payload back."""
    for n, stored in ((12, True), (STORE_BELOW // 15 + 1, False)):
        frames = tuple(Frame(T0 + i, 0x18FEF100, True, bytes([i % 3] * 8)) for i in range(n))
        payload = encode(DeviceMessage("acme", "M1", MsgType.VEHICLE_CAN, T0, frames=frames))
        msg = decode("acme", "M1", MsgType.VEHICLE_CAN, payload)
        blob = pack_frames(msg, T0)
        assert (len(payload) < STORE_BELOW) is stored
        assert (blob.data == blob.data[:5] + payload) is stored
        assert len(blob.data) < len(payload) or stored
        assert zlib.decompress(blob.data, -15) == payload
        assert (blob.count, unpack_frames(blob)) == (n, msg)


async def test_blobs_compressed_by_the_earlier_code_still_read(tmp_path: Path) -> None:
    """A SQLite file whose blobs were all compressed (tests/files/frames, made by the
    earlier packing) reads back every message it was packed from, next to new blobs."""
    path = tmp_path / "telemetry.db"
    shutil.copy(COMPRESSED_FILE, path)
    expected = json.loads(COMPRESSED_FILE.with_suffix(".json").read_text())
    store = SQLiteStore(f"sqlite:///{path}")
    await store.start()
    try:
        new = message(expected[-1]["ts"] + 1000)
        await store.write_frames([pack_frames(new, new.ts)])
        blobs = await store.read_frames("demo", "m1", 0, new.ts + 1)
        assert all(b.data[0] & 0b111 != 0b001 for b in blobs)  # none is a stored block
        got = [
            {"ts": b.ts, "count": b.count, "payload": encode(unpack_frames(b)).hex()} for b in blobs
        ]
        assert got == expected
        assert unpack_frames((await store.read_frames("acme", "M1", 0, new.ts + 1))[0]) == new
    finally:
        await store.close()
