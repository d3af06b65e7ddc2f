"""Random DBC messages and frames, for the decoder equivalence test and bench/bench_decode.py.

:func:`random_database` builds messages with Intel and Motorola, signed and unsigned,
integer, scaled and IEEE float signals, optionally multiplexed (also nested, as
``SG_MUL_VAL_`` extended multiplexing) and optionally CAN FD lengths, writes them as
DBC text with cantools and loads that text back (so the decoders see what a parsed
DBC file gives them).
"""

from __future__ import annotations

import math
import random
from typing import Any

import cantools
from cantools.database.can import Database, Message, Signal
from cantools.database.conversion import BaseConversion

from livedata.decode.compiled import resolution_digits

SCALES = [1, 1, 2, 0.1, 0.05, 0.125, 0.00390625, 0.4, 0.001, 10, 0.5, 1 / 3, 1e-7, 0.03125]
OFFSETS = [0, 0, -40, -273, 0.5, -125, 1000, -3.2, -32127]
LENGTHS = [1, 2, 4, 7, 8, 10, 12, 16, 16, 20, 24, 31, 32, 40, 53, 64]
# what J1939 DBCs are made of (SAE J1939-71 resolutions and offsets, mostly byte-aligned)
J1939_SCALES = [1, 1, 0.5, 0.125, 0.05, 0.1, 0.4, 0.00390625, 0.03125, 0.0078125, 0.001, 5, 10]
J1939_OFFSETS = [0, 0, 0, -40, -125, -273, -32127, -1600]
J1939_LENGTHS = [2, 2, 4, 8, 8, 8, 16, 16, 16, 32]
FD_LENGTHS = [12, 16, 20, 24, 32, 48, 64]


def _motorola_bits(start: int, length: int) -> list[int] | None:
    """The little-endian bit numbers a Motorola signal with MSB ``start`` covers."""
    bits, pos = [], start
    for _ in range(length):
        if pos < 0:
            return None
        bits.append(pos)
        pos = pos + 15 if pos % 8 == 0 else pos - 1
    return bits


class _Layout:
    def __init__(self, rng: random.Random, nbytes: int) -> None:
        self.rng = rng
        self.nbits = 8 * nbytes
        self.used: set[int] = set()

    def place(self, length: int, order: str, aligned: bool = False) -> int | None:
        """A free start bit for a signal of ``length`` bits in ``order``, or ``None``."""
        for _ in range(20):
            start = self.rng.randrange(self.nbits)
            if aligned:
                start -= start % 8
            if order == "little_endian":
                bits = list(range(start, start + length))
            else:
                found = _motorola_bits(start, length)
                if found is None:
                    continue
                bits = found
            if max(bits) < self.nbits and not self.used.intersection(bits):
                self.used.update(bits)
                return start
        return None


def _signal(
    rng: random.Random,
    layout: _Layout,
    name: str,
    *,
    mux_ids: list[int] | None = None,
    mux_signal: str | None = None,
    selector: bool = False,
    j1939: bool = False,
) -> Signal | None:
    order = "little_endian" if j1939 else rng.choice(["little_endian", "big_endian"])
    is_float = not selector and not j1939 and rng.random() < 0.1
    if is_float:
        length = rng.choice([32, 64])
        signed = False
        scale, offset = rng.choice([(1, 0), (1, 0), (0.5, -10)])
    elif selector:
        length, signed, scale, offset = rng.choice([2, 3, 4, 8]), False, 1, 0
    else:
        length = rng.choice(J1939_LENGTHS if j1939 else LENGTHS)
        signed = length > 1 and not j1939 and rng.random() < 0.4
        scale = rng.choice(J1939_SCALES if j1939 else SCALES)
        offset = rng.choice(J1939_OFFSETS if j1939 else OFFSETS)
    start = layout.place(length, order, aligned=j1939 and length >= 8)
    if start is None:
        return None
    return Signal(
        name,
        start,
        length,
        byte_order=order,
        is_signed=signed,
        conversion=BaseConversion.factory(scale=scale, offset=offset, is_float=is_float),
        is_multiplexer=selector,
        multiplexer_ids=mux_ids,
        multiplexer_signal=mux_signal,
    )


def random_message(
    rng: random.Random, index: int, *, fd: bool = False, mux: bool = True, j1939: bool = False
) -> Message:
    """One random message (id ``0x100 + index`` or a 29-bit id) with unique signal names.

    ``j1939``: Intel byte order, J1939 resolutions and offsets, byte-aligned signals of
    8 bits and more, no float signals (what real J1939 DBCs hold).
    """
    length = rng.choice(FD_LENGTHS) if fd and rng.random() < 0.5 else rng.randint(1, 8)
    layout = _Layout(rng, length)
    prefix = f"m{index}_"
    signals: list[Signal] = []

    def add(name: str, **kw: object) -> Signal | None:
        sig = _signal(rng, layout, prefix + name, j1939=j1939, **kw)  # type: ignore[arg-type]
        if sig is not None:
            signals.append(sig)
        return sig

    for k in range(rng.randint(1, 8 if j1939 else 5)):
        add(f"s{k}")
    if mux and rng.random() < 0.3:
        selector = add("mux", selector=True)
        if selector is not None:
            for value in range(rng.randint(1, 3)):
                for k in range(rng.randint(1, 2)):
                    add(f"v{value}_{k}", mux_ids=[value], mux_signal=selector.name)
            if rng.random() < 0.5:  # extended multiplexing: a selector inside branch 0
                inner = add("mux2", selector=True, mux_ids=[0], mux_signal=selector.name)
                if inner is not None:
                    for value in range(rng.randint(1, 2)):
                        add(f"w{value}", mux_ids=[value], mux_signal=inner.name)
    extended = rng.random() < 0.5
    frame_id = (0x18000000 | index) if extended else 0x100 + index
    return Message(
        frame_id,
        f"M{index}",
        length,
        signals,
        is_extended_frame=extended,
        is_fd=length > 8,
        strict=False,
    )


def random_database(
    rng: random.Random, count: int, *, fd: bool = False, mux: bool = True, j1939: bool = False
) -> Database:
    """``count`` random messages, written as DBC text and parsed back by cantools."""
    messages = [random_message(rng, i, fd=fd, mux=mux, j1939=j1939) for i in range(count)]
    db = Database(messages, strict=False)
    return cantools.database.load_string(db.as_dbc_string(), database_format="dbc", strict=True)


def _set_raw(data: bytearray, signal: Signal, raw: int) -> None:
    """Write ``raw`` into ``signal``'s bits of ``data`` (a selector: unsigned, unscaled)."""
    nbits = 8 * len(data)
    mask = (1 << signal.length) - 1
    if signal.byte_order == "little_endian":
        word = int.from_bytes(data, "little")
        word = word & ~(mask << signal.start) | (raw << signal.start)
        data[:] = word.to_bytes(len(data), "little")
    else:
        msb = 8 * (signal.start // 8) + (7 - signal.start % 8)
        shift = nbits - msb - signal.length
        word = int.from_bytes(data, "big")
        word = word & ~(mask << shift) | (raw << shift)
        data[:] = word.to_bytes(len(data), "big")


def random_frame(message: Message, rng: random.Random, bad_mux: float = 0.0) -> bytes:
    """Random payload for ``message`` whose selectors hold defined values.

    With probability ``bad_mux`` a selector is left random (often undefined: an error).
    """
    data = bytearray(rng.randbytes(message.length))
    if rng.random() < bad_mux:
        return bytes(data)
    node = message._codecs
    while node is not None and node["multiplexers"]:
        selector, branches = next(iter(node["multiplexers"].items()))
        value = rng.choice(sorted(branches))
        _set_raw(data, message.get_signal_by_name(selector), value)
        node = branches[value]
    return bytes(data)


def reference(message: Message, data: bytes) -> dict[str, Any] | None:
    """cantools' ``decode_simple`` values as livedata keeps them (rounded to the signal's
    resolution, no multiplexer selectors); ``None`` when cantools refuses the frame or a
    float signal is not finite (livedata refuses those)."""
    try:
        decoded = message.decode_simple(data, False, True)
    except Exception:  # cantools raises several kinds; all mean "refused"
        return None
    out: dict[str, Any] = {}
    for s in message.signals:
        if s.is_multiplexer or s.name not in decoded:
            continue
        value = decoded[s.name]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        digits = resolution_digits(s)
        out[s.name] = value if digits is None else round(value, digits)
    return out
