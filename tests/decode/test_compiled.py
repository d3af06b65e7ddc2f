"""The compiled per-message decoder gives cantools' values, on random messages and frames."""

from __future__ import annotations

import random
from typing import Any

import cantools
from cantools.database.can import Message, Signal
from cantools.database.conversion import BaseConversion
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livedata.decode.can import CanDecoder
from livedata.decode.compiled import compile_message, format_or, storable_as_decoded
from livedata.store.base import storable
from tests.decode.dbcgen import random_database, random_frame, random_message, reference


def compiled(message: Message, data: bytes) -> dict[str, Any] | None:
    """The compiled decoder's values, ``None`` when it refuses the frame."""
    values: dict[str, Any] = {}
    reason = compile_message(message).decode(data, values)
    return None if reason is not None else values


def same(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Equal values of equal types (1 and 1.0 differ: the store keeps what it gets)."""
    if a is None or b is None:
        return a is b
    return a == b and all(type(a[k]) is type(b[k]) for k in a)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), fd=st.booleans())
def test_random_messages_match_cantools(rng: random.Random, fd: bool) -> None:
    """Random messages (signed/unsigned, Intel/Motorola, scale/offset, float, mux, FD) decode alike."""
    db = random_database(rng, 3, fd=fd)
    for message in db.messages:
        for _ in range(20):
            data = random_frame(message, rng, bad_mux=0.2)
            assert same(compiled(message, data), reference(message, data)), compile_message(
                message
            ).source


@settings(max_examples=150, deadline=None)
@given(rng=st.randoms(use_true_random=False), data=st.binary(min_size=8, max_size=8))
def test_random_bytes_match_cantools(rng: random.Random, data: bytes) -> None:
    """Arbitrary payloads (also NaN floats and undefined multiplexer values) get the same outcome."""
    message = random_message(rng, 1)
    message = cantools.database.load_string(
        cantools.database.can.Database([message], strict=False).as_dbc_string(),
        database_format="dbc",
    ).messages[0]
    data = data[: message.length]
    assert same(compiled(message, data), reference(message, data))


def test_large_random_database_is_all_compiled() -> None:
    """Every message of a large random DBC gets generated code (no cantools fallback)."""
    db = random_database(random.Random(5), 200, fd=True)
    assert all(compile_message(m).compiled for m in db.messages)
    nested = [m for m in db.messages if any(s.name.endswith("mux2") for s in m.signals)]
    assert nested, "the random DBC has extended multiplexing"


def _selector_message(scale: float) -> Message:
    selector = Signal(
        "sel",
        0,
        8,
        conversion=BaseConversion.factory(scale=scale, offset=0),
        is_multiplexer=True,
    )
    a = Signal("a", 8, 8, multiplexer_ids=[0], multiplexer_signal="sel")
    b = Signal("b", 16, 8, multiplexer_ids=[1], multiplexer_signal="sel")
    return Message(0x100, "M", 3, [selector, a, b], strict=False)


def test_unsupported_selector_falls_back_to_cantools() -> None:
    """A selector with a scaled conversion is decoded by cantools, with the same rounding."""
    message = _selector_message(0.5)
    decoder = compile_message(message)
    assert not decoder.compiled
    for data in (bytes([2, 7, 9]), bytes([0, 7, 9]), bytes([9, 1, 1])):
        assert same(compiled(message, data), reference(message, data))
    assert compile_message(_selector_message(1)).compiled


def test_undefined_multiplexer_reason_is_cantools_wording() -> None:
    """An undefined multiplexer value is reported as cantools words it."""
    message = _selector_message(1)
    values: dict[str, Any] = {}
    assert compile_message(message).decode(bytes([5, 0, 0]), values) == (
        "expected multiplexer id 0 or 1, but got 5"
    )
    assert values == {}
    assert format_or([1]) == "1" and format_or([1, 2, 3]) == "1, 2 or 3"


def test_names_cannot_inject_code() -> None:
    """A hostile signal name ends up as a dict key, never as code."""
    name = "x'] = 1; import os; values['y"
    message = Message(0x1, "M", 1, [Signal(name, 0, 8)], strict=False)
    values: dict[str, Any] = {}
    assert compile_message(message).decode(b"\x07", values) is None
    assert values == {name: 7}


def test_suffix_names_every_field() -> None:
    """A suffix (separate source addresses) is appended to every field name."""
    message = _selector_message(1)
    values: dict[str, Any] = {}
    compile_message(message, ".0x01").decode(bytes([1, 2, 3]), values)
    assert values == {"b.0x01": 3}


SCALES_ODD = [0.05, 0.1, 0.001, 1 / 3, 0.03125, 0.2, 0.0039, 1.5e-7]
OFFSETS_ODD = [0, -3.2, -40, 0.5, -32127, 1e-4]


@settings(max_examples=300, deadline=None)
@given(
    scale=st.sampled_from(SCALES_ODD),
    offset=st.sampled_from(OFFSETS_ODD),
    length=st.sampled_from([8, 16, 24, 32, 45, 53, 63, 64]),
    signed=st.booleans(),
    order=st.sampled_from(["little_endian", "big_endian"]),
    pick=st.integers(min_value=0, max_value=2**64 - 1),
    magnitude=st.integers(min_value=0, max_value=64),
)
def test_raw_values_of_every_size_match_cantools(
    scale: float, offset: float, length: int, signed: bool, order: str, pick: int, magnitude: int
) -> None:
    """Raw values small, large and around the exact-division and big-float bounds round
    exactly as cantools' value rounded to the resolution."""
    signal = Signal(
        "x",
        0 if order == "little_endian" else 7,
        length,
        byte_order=order,
        is_signed=signed,
        conversion=BaseConversion.factory(scale=scale, offset=offset, is_float=False),
    )
    message = Message(0x123, "M", 8, [signal], strict=False)
    raw = pick % (1 << min(magnitude, length))  # small values as often as large ones
    if order == "little_endian":
        data = raw.to_bytes(8, "little")
    else:
        data = (raw << (64 - length)).to_bytes(8, "big")
    assert same(compiled(message, data), reference(message, data)), compile_message(message).source


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), fd=st.booleans())
def test_storable_signals_decode_to_stored_values(rng: random.Random, fd: bool) -> None:
    """A signal judged storable as decoded gives values the stores keep unchanged, on random
    frames and on its raw extremes (all bits 0, all bits 1)."""
    db = random_database(rng, 3, fd=fd)
    for message in db.messages:
        frames = [random_frame(message, rng) for _ in range(20)]
        frames += [bytes(message.length), b"\xff" * message.length]
        for data in frames:
            values = compiled(message, data)
            for signal in message.signals:
                if values is not None and signal.name in values:
                    value = values[signal.name]
                    if storable_as_decoded(signal):
                        assert storable(value) == value and type(storable(value)) is type(value)


def test_wide_integer_signal_is_not_storable_as_decoded() -> None:
    """A 64-bit unsigned integer signal can exceed int64, so it is not storable as decoded and
    a decoder with it leaves the check to ingest; a scaled or 63-bit one is storable."""
    wide = Signal("wide", 0, 64, is_signed=False)
    signed = Signal("signed", 0, 64, is_signed=True)
    scaled = Signal("scaled", 0, 64, conversion=BaseConversion.factory(scale=0.5, offset=0))
    assert not storable_as_decoded(wide)
    assert storable_as_decoded(signed) and storable_as_decoded(scaled)
    values = compiled(Message(0x100, "M", 8, [wide], strict=False), b"\xff" * 8)
    assert values == {"wide": (1 << 64) - 1} and storable(values["wide"]) == float(1 << 64)
    db = cantools.database.can.Database([Message(0x100, "M", 8, [wide], strict=False)])
    assert not CanDecoder.from_dbc(db.as_dbc_string()).storable
