"""CAN decoding with the demo DBC: golden frames, signal listing, DBC errors, encoding."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import orjson
import pytest

from livedata.decode.can import CanDecoder, DecodeResult, builtin_dbc
from livedata.errors import DecodeError, NotFound
from livedata.model import Frame

FILES = Path(__file__).resolve().parent.parent / "files" / "can"

ALL_SIGNALS = [
    "ambient_temp",
    "battery_voltage",
    "boom_angle",
    "brake_status",
    "bucket_angle",
    "coolant_temp",
    "engine_hours",
    "engine_rpm",
    "engine_torque",
    "fuel_level",
    "gear",
    "hydraulic_pressure",
    "oil_pressure",
    "oil_temp_hydraulic",
    "speed",
]


def read_frames(path: Path) -> list[Frame]:
    """Parse the ``<ts_ms> <ID>#<DATA>`` fixture format described at the top of the file."""
    frames = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ts, spec = line.split()
        can_id, data = spec.split("#")
        frames.append(Frame(int(ts), int(can_id, 16), len(can_id) == 8, bytes.fromhex(data)))
    return frames


def fixture_decoder(path: Path) -> CanDecoder:
    """The decoder a fixture names in its ``# dbc: FILE [separate_sources]`` line.

    ``FILE`` is next to the fixture; without the line, the demo DBC.
    """
    for line in path.read_text().splitlines():
        if line.startswith("# dbc:"):
            name, *options = line.split(":", 1)[1].split()
            text = (path.parent / name).read_text()
            return CanDecoder.from_dbc(text, separate_sources="separate_sources" in options)
    return CanDecoder.from_dbc(builtin_dbc("loader"))


def outcome(result: DecodeResult) -> dict[str, object]:
    """A decode result as the golden files hold it."""
    return {
        "values": result.values,
        "frames": result.frames,
        "unknown": result.unknown,
        "errors": result.errors,
        "reassembled": result.reassembled,
        "dm1": [d.to_dict() for d in result.dm1],
    }


GOLDEN = sorted(FILES.glob("*.txt"))


@pytest.fixture(scope="module")
def decoder() -> CanDecoder:
    return CanDecoder.from_dbc(builtin_dbc("loader"))


def scale_of(decoder: CanDecoder, name: str) -> float:
    for message in decoder.database.messages:
        for signal in message.signals:
            if signal.name == name:
                return float(signal.conversion.scale)
    raise KeyError(name)


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_golden_frames(path: Path) -> None:
    """Decoding each fixture's frames gives exactly its hand-computed golden result."""
    result = fixture_decoder(path).decode(read_frames(path))
    got = outcome(result)
    golden = json.loads(path.with_suffix(".golden.json").read_text())
    assert got == golden
    # == treats 800 and 800.0 alike; the JSON text also pins ints versus floats
    assert json.dumps(got, sort_keys=True) == json.dumps(golden, sort_keys=True)


def test_golden_frames_any_order(decoder: CanDecoder) -> None:
    """The latest timestamp wins whatever order the frames arrive in."""
    frames = read_frames(FILES / "frames.txt")
    expected = decoder.decode(frames).values
    rng = random.Random(7)
    for _ in range(20):
        shuffled = frames[:]
        rng.shuffle(shuffled)
        assert decoder.decode(shuffled).values == expected


def test_unknown_and_malformed_do_not_stop_the_batch(decoder: CanDecoder) -> None:
    """Unknown ids are counted, malformed frames reported, and the good frames decoded."""
    frames = [
        Frame(1, 0x18FEDA00, True, bytes(8)),
        Frame(2, 0x18FEEE00, True, b""),
        Frame(3, 0x3A0, False, bytes([9, 0, 0, 0, 0, 0, 0, 0])),
        Frame(4, 0x18FEEF00, True, bytes.fromhex("FFFFFF64FFFFFFFF")),
    ]
    result = decoder.decode(frames)
    assert result.values == {"oil_pressure": 400}
    assert (result.frames, result.unknown, len(result.errors)) == (1, 1, 2)
    assert result.errors[0] == "frame 0x18FEEE00 (ET1): 0 bytes, expected 8"
    assert "got 9" in result.errors[1]


def test_empty_batch(decoder: CanDecoder) -> None:
    """An empty batch decodes to nothing, without error."""
    result = decoder.decode([])
    assert (result.values, result.frames, result.unknown, result.errors) == ({}, 0, 0, [])


def test_signals_listing(decoder: CanDecoder) -> None:
    """signals() lists every signal once, sorted, with unit, min, max and choices."""
    signals = decoder.signals()
    assert [s.name for s in signals] == ALL_SIGNALS  # the mux selector is not a field
    by_name = {s.name: s for s in signals}
    speed = by_name["speed"]
    assert (speed.message, speed.unit, speed.minimum, speed.maximum) == ("CCVS1", "km/h", 0, 60)
    assert (by_name["coolant_temp"].unit, by_name["coolant_temp"].minimum) == ("degC", -40)
    assert by_name["hydraulic_pressure"].maximum == 400
    assert by_name["engine_torque"].minimum == -125
    assert by_name["gear"].choices == {-1: "R", 0: "N", 1: "F1", 2: "F2", 3: "F3", 4: "F4"}
    assert by_name["brake_status"].choices is not None
    assert by_name["brake_status"].choices[1] == "pressed"
    assert by_name["speed"].choices is None
    as_dict = by_name["gear"].to_dict()
    assert as_dict == {
        "name": "gear",
        "message": "ETC2",
        "unit": "",
        "min": -1,
        "max": 4,
        "choices": {"-1": "R", "0": "N", "1": "F1", "2": "F2", "3": "F3", "4": "F4"},
        "resolution": 1,
    }
    assert by_name["speed"].resolution == 0.00390625
    orjson.dumps([s.to_dict() for s in signals])  # JSON-able


def test_dbc_ids_and_frame_formats(decoder: CanDecoder) -> None:
    """The demo DBC has J1939 extended ids and one standard multiplexed message."""
    messages = {m.name: m for m in decoder.database.messages}
    assert messages["EEC1"].frame_id == 0x0CF00400 and messages["EEC1"].is_extended_frame
    assert messages["CCVS1"].frame_id == 0x18FEF100
    assert messages["ET1"].frame_id == 0x18FEEE00
    assert messages["DD1"].frame_id == 0x18FEFC00
    hyd = messages["HydraulicStatus"]
    assert hyd.frame_id == 0x3A0 and not hyd.is_extended_frame and hyd.is_multiplexed()


@pytest.mark.parametrize(
    "text",
    [
        "this is not a DBC file at all",
        "",
        'VERSION ""\n\nBS_:\n\nBU_: A\n',
        # two overlapping signals: refused by cantools' strict checks
        'VERSION ""\nBS_:\nBU_: A\nBO_ 100 M: 8 A\n'
        ' SG_ a : 0|16@1+ (1,0) [0|0] "" A\n SG_ b : 8|16@1+ (1,0) [0|0] "" A\n',
        # a signal beyond the end of its 1-byte message
        'VERSION ""\nBS_:\nBU_: A\nBO_ 100 M: 1 A\n SG_ a : 4|16@1+ (1,0) [0|0] "" A\n',
    ],
)
def test_from_dbc_refuses_invalid(text: str) -> None:
    """An invalid DBC (garbage, no messages, overlaps, out of bounds) raises DecodeError."""
    with pytest.raises(DecodeError, match="invalid DBC"):
        CanDecoder.from_dbc(text)


def test_builtin_dbc_unknown_name() -> None:
    """Asking for a DBC that is not shipped raises NotFound, also for path tricks."""
    for name in ("nope", "../errors", "LOADER"):
        with pytest.raises(NotFound):
            builtin_dbc(name)


def test_encode_decode_round_trip(decoder: CanDecoder) -> None:
    """Every signal survives encode then decode within half its scale."""
    rng = random.Random(1)
    infos = decoder.signals()
    for _ in range(200):
        values: dict[str, float] = {}
        for s in infos:
            assert s.minimum is not None and s.maximum is not None
            if s.choices or s.name in ("bucket_angle", "coolant_temp", "engine_torque"):
                values[s.name] = rng.randint(int(s.minimum), int(s.maximum))
            else:
                values[s.name] = rng.uniform(s.minimum, s.maximum)
        frames = decoder.encode(values, 5000)
        result = decoder.decode(frames)
        assert result.errors == [] and result.unknown == 0
        assert set(result.values) == set(values)
        for name, value in values.items():
            tolerance = scale_of(decoder, name) / 2 + 1e-9
            assert math.isclose(result.values[name], value, abs_tol=tolerance), name


def test_encode_frames(decoder: CanDecoder) -> None:
    """encode gives one frame per message and per mux value, flagged as the DBC says."""
    frames = decoder.encode({}, 1234)
    assert all(f.ts == 1234 and len(f.data) == 8 for f in frames)
    ids = [(f.arbitration_id, f.is_extended) for f in frames]
    assert ids.count((0x3A0, False)) == 2
    assert (0x0CF00400, True) in ids and (0x18FEF100, True) in ids
    assert len(ids) == 11
    muxes = sorted(f.data[0] for f in frames if f.arbitration_id == 0x3A0)
    assert muxes == [0, 1]


def test_encode_fills_and_clamps(decoder: CanDecoder) -> None:
    """Missing signals become 0 and out-of-range or non-finite values are clamped or zeroed."""
    values = decoder.decode(
        decoder.encode({"speed": 999.0, "gear": -7, "engine_rpm": math.nan}, 0)
    ).values
    assert values["speed"] == 60.0
    assert values["gear"] == -1
    assert values["engine_rpm"] == 0.0
    assert values["coolant_temp"] == 0
    assert values["fuel_level"] == 0.0


def test_encode_missing_uses_minimum_when_zero_is_out_of_range() -> None:
    """A missing signal whose range excludes 0 is sent as its minimum."""
    dbc = (
        'VERSION ""\nBS_:\nBU_: A\nBO_ 256 M: 2 A\n'
        ' SG_ volts : 0|8@1+ (0.1,0) [10|25] "V" A\n'
        ' SG_ level : 8|8@1+ (1,0) [0|200] "%" A\n'
    )
    decoder = CanDecoder.from_dbc(dbc)
    frames = decoder.encode({}, 0)
    assert [(f.arbitration_id, f.is_extended) for f in frames] == [(256, False)]
    assert decoder.decode(frames).values == {"volts": 10.0, "level": 0}


def test_scaled_values_are_rounded_to_resolution(decoder: CanDecoder) -> None:
    """Scaled values carry no binary noise (0.4 * 187 is 74.8, not 74.80000000000001)."""
    frame = Frame(0, 0x18FEFC00, True, bytes.fromhex("FFBBFFFFFFFFFFFF"))
    assert repr(decoder.decode([frame]).values["fuel_level"]) == "74.8"
