"""The device payload encoding: golden bytes, round trips, and every refusal."""

from __future__ import annotations

import dataclasses
import pickle
import random
import struct
from pathlib import Path

import orjson
import pytest

from livedata import codec
from livedata.codec import MAX_FRAMES, MAX_PAYLOAD, decode, encode
from livedata.decode.dm1 import Dm1, Lamps
from livedata.errors import DecodeError
from livedata.model import DeviceMessage, Frame, Kind, MsgType, slot_constructor
from livedata.store.frames import FrameBlob
from tests.decode.test_can import read_frames

FIXTURES = sorted((Path(__file__).resolve().parent / "files" / "can").glob("*.txt"))

TS = 1_700_000_000_000

CAN = DeviceMessage(
    "acme",
    "M1",
    MsgType.VEHICLE_CAN,
    TS,
    Kind.BACKFILL,
    frames=(
        Frame(TS, 0x123, False, bytes(range(8))),
        Frame(TS + 5, 0x18FEF100, True, b"\x01\x02"),
        Frame(TS - 2, 0x7FF, False, b""),
    ),
)
CAN_GOLDEN = bytes.fromhex(
    "01 01 0068e5cf8b010000 0300"  # version 1, backfill, base ts, 3 frames
    "0000 23010000 08 0001020304050607"  # +0 ms, 0x123, 8 bytes
    "0500 00f1fe98 02 0102"  # +5 ms, 0x18FEF100 | extended bit, 2 bytes
    "feff ff070000 00"  # -2 ms, 0x7FF, no data
)
JSON = DeviceMessage(
    "acme",
    "M1",
    MsgType.CLIENT_RAW_DATA,
    TS,
    values={"cpu_usage": 12.5, "gps_fix": True, "mode": "dig"},
)
JSON_GOLDEN = (
    b'{"v":1,"ts":1700000000000,"kind":"realTime",'
    b'"values":{"cpu_usage":12.5,"gps_fix":true,"mode":"dig"}}'
)


def header(count: int, version: int = 1, flags: int = 0, ts: int = TS) -> bytes:
    return struct.pack("<BBqH", version, flags, ts, count)


def test_vehicle_can_golden_bytes() -> None:
    """A frame batch encodes to the documented little-endian layout, byte for byte."""
    assert encode(CAN) == CAN_GOLDEN


def test_vehicle_can_round_trip() -> None:
    """Decoding the golden bytes gives the message back, identity from the caller."""
    assert decode("acme", "M1", "vehicle_can", CAN_GOLDEN) == CAN
    other = decode("other", "M9", "vehicle_can", CAN_GOLDEN)
    assert (other.tenant, other.chassis) == ("other", "M9")
    assert other.frames == CAN.frames


def test_vehicle_can_fast_path_round_trip() -> None:
    """A batch of 8-byte frames (the fast path) and an empty batch round-trip."""
    frames = tuple(
        Frame(TS + i, 0x100 + i % 0x600, i % 3 == 0, bytes([i % 256] * 8)) for i in range(2000)
    )
    msg = DeviceMessage("acme", "M1", MsgType.VEHICLE_CAN, TS, frames=frames)
    data = encode(msg)
    assert len(data) == 12 + 15 * 2000
    assert decode("acme", "M1", "vehicle_can", data) == msg
    empty = DeviceMessage("acme", "M1", MsgType.VEHICLE_CAN, TS)
    assert decode("acme", "M1", "vehicle_can", encode(empty)) == empty


def test_can_fd_lengths_round_trip() -> None:
    """CAN FD data lengths up to 64 bytes are carried."""
    frames = tuple(
        Frame(TS, 0x10, False, bytes(n)) for n in (0, 1, 7, 8, 12, 16, 20, 24, 32, 48, 64)
    )
    msg = DeviceMessage("acme", "M1", MsgType.VEHICLE_CAN, TS, frames=frames)
    assert decode("acme", "M1", "vehicle_can", encode(msg)) == msg


def test_client_raw_data_golden_and_round_trip() -> None:
    """client_raw_data is the documented compact JSON and reads back equal."""
    assert encode(JSON) == JSON_GOLDEN
    assert decode("acme", "M1", "client_raw_data", JSON_GOLDEN) == JSON
    backfill = decode(
        "acme", "M1", "client_raw_data", b'{"v":1,"ts":5,"kind":"backfill","values":{}}'
    )
    assert backfill.kind is Kind.BACKFILL and backfill.ts == 5
    default = decode("acme", "M1", "client_raw_data", b'{"v":1,"ts":5,"values":{"a":1}}')
    assert default.kind is Kind.REALTIME and default.values == {"a": 1}


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (header(0, version=2), "version 2"),
        (JSON_GOLDEN, "looks like JSON"),
        (b"", "truncated"),
        (CAN_GOLDEN[:11], "truncated"),
        (CAN_GOLDEN[:-1], "truncated"),  # the last frame's header is cut
        (CAN_GOLDEN[:20], "truncated"),  # the first frame's data is cut
        (header(2) + struct.pack("<hIB8s", 0, 0x10, 8, bytes(8)), "truncated"),  # 2 said, 1 sent
        (CAN_GOLDEN + b"\x00", "1 bytes after"),
        (header(MAX_FRAMES + 1) + bytes(15 * (MAX_FRAMES + 1)), "10001 frames"),
        (header(0, flags=0x02), "reserved bits"),
        (header(0, ts=-1), "negative"),
        (header(1) + struct.pack("<hIB", 0, 0x800, 0), "more than 11 bits"),
        (header(1) + struct.pack("<hIB", 0, 0x4000_0001, 0), "reserved bits 29-30"),
        (header(1) + struct.pack("<hIB", 0, 0x100, 9) + bytes(9), "not a CAN or CAN FD"),
        (header(1) + struct.pack("<hIB8s", 0, 0x800, 8, bytes(8)), "more than 11 bits"),
        (  # 8-byte frames (the fast path): the bad id is found in the second frame
            header(2)
            + struct.pack("<hIB8s", 0, 0x8000_0100, 8, bytes(8))
            + struct.pack("<hIB8s", 0, 0xC000_0001, 8, bytes(8)),
            "frame 1: CAN id word 0xC0000001 sets reserved bits 29-30",
        ),
        (
            header(2)
            + struct.pack("<hIB8s", 0, 0x8000_0100, 8, bytes(8))
            + struct.pack("<hIB8s", 0, 0x1000, 8, bytes(8)),
            "frame 1: standard CAN id 0x1000 is more than 11 bits",
        ),
    ],
)
def test_bad_vehicle_can_is_refused(payload: bytes, needle: str) -> None:
    """Each malformed batch raises DecodeError naming the problem."""
    with pytest.raises(DecodeError, match=needle):
        decode("acme", "M1", "vehicle_can", payload)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (CAN_GOLDEN, "looks like a binary vehicle_can"),
        (b"{not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"ts": 1, "values": {}}', "no version"),
        (b'{"v": 2, "ts": 1, "values": {}}', "version 2"),
        (b'{"v": 1, "ts": "now", "values": {}}', "ts must be an integer"),
        (b'{"v": 1, "ts": true, "values": {}}', "ts must be an integer"),
        (b'{"v": 1, "ts": -5, "values": {}}', "ts must be an integer"),
        (b'{"v": 1, "ts": 1, "kind": "live", "values": {}}', "neither"),
        (b'{"v": 1, "ts": 1, "values": [1]}', "values must be a JSON object"),
        (b'{"v": 1, "ts": 1}', "values must be a JSON object"),
        (b'{"v": 1, "ts": 1, "values": {}, "chassis": "M2"}', "unknown keys 'chassis'"),
    ],
)
def test_bad_client_raw_data_is_refused(payload: bytes, needle: str) -> None:
    """Each malformed JSON payload raises DecodeError naming the problem."""
    with pytest.raises(DecodeError, match=needle):
        decode("acme", "M1", "client_raw_data", payload)


@pytest.mark.parametrize("msg_type", ["vehicle_can", "client_raw_data"])
def test_oversized_payload_is_refused(msg_type: str) -> None:
    """A payload over 1 MiB is refused before it is parsed."""
    payload = b'{"v":1,"ts":1,"values":{"a":"' + b"x" * MAX_PAYLOAD + b'"}}'
    with pytest.raises(DecodeError, match="larger than"):
        decode("acme", "M1", msg_type, payload)


def test_unknown_msg_type_is_refused() -> None:
    """A message type that is not vehicle_can or client_raw_data is refused."""
    with pytest.raises(DecodeError, match="unknown msgType 'engine_oil'"):
        decode("acme", "M1", "engine_oil", b"{}")


@pytest.mark.parametrize(
    ("frames", "needle"),
    [
        ((Frame(TS + 40_000, 0x10, False, b""),), "32 s away"),
        ((Frame(TS, 0x800, False, b""),), "11 bits"),
        ((Frame(TS, 0x2000_0000, True, b""),), "29 bits"),
        ((Frame(TS, 0x10, False, bytes(9)),), "not a CAN or CAN FD length"),
        ((Frame(TS, 0x10, False, b""),) * (MAX_FRAMES + 1), "at most 10000"),
    ],
)
def test_encode_refuses_what_the_server_would_refuse(
    frames: tuple[Frame, ...], needle: str
) -> None:
    """encode raises ValueError for a batch that the format cannot carry."""
    with pytest.raises(ValueError, match=needle):
        encode(DeviceMessage("acme", "M1", MsgType.VEHICLE_CAN, TS, frames=frames))


def test_encode_refuses_oversized_json() -> None:
    """encode raises ValueError for client_raw_data over 1 MiB."""
    msg = DeviceMessage("acme", "M1", MsgType.CLIENT_RAW_DATA, TS, values={"a": "x" * MAX_PAYLOAD})
    with pytest.raises(ValueError, match="at most"):
        encode(msg)


def test_payload_carries_no_identity() -> None:
    """Neither encoding contains the tenant or chassis: they come from the topic or URL."""
    msg = DeviceMessage("tenant-xyz", "chassis-xyz", MsgType.CLIENT_RAW_DATA, TS, values={})
    assert b"xyz" not in encode(msg)
    assert b"xyz" not in encode(
        DeviceMessage("tenant-xyz", "chassis-xyz", MsgType.VEHICLE_CAN, TS, frames=CAN.frames)
    )
    assert set(orjson.loads(encode(msg))) == {"v", "ts", "kind", "values"}


def assert_same(got: DeviceMessage, want: DeviceMessage) -> None:
    """``got`` is ``want`` in every way a user can see: types, fields, repr, pickle, frozen."""
    assert type(got) is DeviceMessage
    for f in dataclasses.fields(DeviceMessage):
        mine, theirs = getattr(got, f.name), getattr(want, f.name)
        assert type(mine) is type(theirs) and mine == theirs, f.name
    assert all(type(frame) is Frame for frame in got.frames)
    for mine, theirs in zip(got.frames, want.frames, strict=True):
        assert [type(v) for v in mine] == [type(v) for v in theirs]
    assert got == want and repr(got) == repr(want)
    assert pickle.loads(pickle.dumps(got)) == want
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.ts = 0  # type: ignore[misc]
    if got.frames:
        with pytest.raises(AttributeError):
            got.frames[0].ts = 0  # type: ignore[misc]


def batches(frames: list[Frame]) -> list[tuple[Frame, ...]]:
    """``frames`` cut into batches that stay within 30 s of their first frame."""
    out: list[list[Frame]] = []
    for frame in frames:
        if not out or abs(frame.ts - out[-1][0].ts) > 30_000:
            out.append([])
        out[-1].append(frame)
    return [tuple(batch) for batch in out]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_decode_makes_the_objects_the_constructors_make(path: Path) -> None:
    """For every CAN fixture file, decoded messages are those built with DeviceMessage/Frame."""
    frames = read_frames(path)
    eights = [f for f in frames if len(f.data) == 8]  # the all-8-byte fast path
    for batch in batches(frames) + batches(eights):
        base = min(f.ts for f in batch)
        want = DeviceMessage("acme", "M1", MsgType.VEHICLE_CAN, base, Kind.BACKFILL, batch)
        payload = encode(want)
        got = decode("acme", "M1", "vehicle_can", payload)
        assert_same(got, dataclasses.replace(want, payload=payload))
        assert got.payload == payload


def test_decode_json_makes_the_object_the_constructor_makes() -> None:
    """A decoded client_raw_data message is the one built with DeviceMessage."""
    assert_same(decode("acme", "M1", "client_raw_data", encode(JSON)), JSON)


def test_fast_path_agrees_with_the_general_path_on_any_id_word() -> None:
    """Random 8-byte-frame batches with any id words: the same frames or the same error
    as the frame-by-frame reader."""
    rng = random.Random(17)
    words = [0, 0x7FF, 0x800, 0x1FFF_FFFF, 0x2000_0000, 0x4000_0000, 0x8000_0000, 0x9FFF_FFFF]
    words += [0xA000_0000, 0xC000_07FF, 0xFFFF_FFFF, 0x8000_0800, 0x18FE_F100]
    for _ in range(500):
        count = rng.randint(1, 6)
        ids = [
            rng.choice(words) if rng.random() < 0.3 else rng.randint(0, 0x7FF) for _ in range(count)
        ]
        ids = [i | 0x8000_0000 if i > 0x7FF and rng.random() < 0.5 else i for i in ids]
        payload = header(count) + b"".join(
            struct.pack("<hIB8s", n - 3, word, 8, bytes([n] * 8)) for n, word in enumerate(ids)
        )
        try:
            general = DeviceMessage(
                "acme",
                "M1",
                MsgType.VEHICLE_CAN,
                TS,
                frames=codec._frames(payload, TS, count),
                payload=payload,
            )
        except DecodeError as exc:
            with pytest.raises(DecodeError) as raised:
                decode("acme", "M1", "vehicle_can", payload)
            assert str(raised.value) == str(exc)
        else:
            assert_same(decode("acme", "M1", "vehicle_can", payload), general)


def test_slot_constructor_makes_the_dataclass_objects() -> None:
    """slot_constructor builds objects equal to the dataclass's own, still frozen, and
    refuses a class whose field names could clash with its generated code."""
    blob = slot_constructor(FrameBlob)("acme", "M1", 5, 2, b"xy")
    assert blob == FrameBlob("acme", "M1", 5, 2, b"xy") and type(blob) is FrameBlob
    with pytest.raises(dataclasses.FrozenInstanceError):
        blob.ts = 6  # type: ignore[misc]
    dm1 = slot_constructor(Dm1)(1, 0, Lamps(0, 0, 0, 0, 3, 3, 3, 3), ())
    assert dm1 == Dm1(1, 0, Lamps(0, 0, 0, 0, 3, 3, 3, 3), ())

    @dataclasses.dataclass(frozen=True, slots=True)
    class Private:
        _hidden: int

    with pytest.raises(TypeError, match="starting with '_'"):
        slot_constructor(Private)
