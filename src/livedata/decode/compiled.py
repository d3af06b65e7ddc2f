"""Per-message CAN decoders compiled from a DBC: the fast path of :mod:`livedata.decode.can`.

:func:`compile_message` turns one cantools :class:`~cantools.database.can.Message`
into a small Python function, generated once from the message's layout and
compiled with :func:`compile`::

    def decode(data, values):
        b = int.from_bytes(data, 'big')
        l = int.from_bytes(data, 'little')
        r0 = (l >> 16) & 255
        r1 = ((b >> 40) & 65535 ^ 32768) - 32768    # signed, Motorola
        values['engine_torque'] = r0 - 125
        values['boom_angle'] = (r1 * 1) / 100       # 0.01 resolution, exact
        return None

One ``int.from_bytes`` per byte order and a shift and a mask per signal replace
cantools' bitstruct unpacking, dict merging and per-signal conversion calls;
multiplexed messages become ``if``/``elif`` chains on the selector (nested for
extended multiplexing).  The function writes the signal values into ``values``
and returns ``None``, or returns a one-line reason and writes nothing.

The values are those of :meth:`cantools.database.can.Message.decode_simple`
(``decode_choices=False``) after livedata's rounding to the signal's resolution
(see :func:`decimals`): ints where cantools gives ints, floats rounded to the
number of decimals of the scale and offset.  When the scale and offset are exact
decimals and the raw range small enough that ``raw * scale + offset`` is within a
quarter of the last decimal of the exact result, the value is computed as one
correctly rounded integer division (``(raw * P + O) / 10**d``), which gives the
same float as ``round(raw * scale + offset, d)`` without its cost.  When that holds
only for small raw values (a wide signal), the division is taken for those and a
test of the raw value chooses at run time.  Otherwise the generated code calls
:func:`round` like the reference -- except for floats of magnitude ``2**(52 - d)``
and more, which are multiples of ``2**-d`` and so already have at most ``d``
decimals: ``round`` would return them unchanged.  IEEE float signals are
unpacked with :mod:`struct` and are not rounded.

What the generator does not cover falls back to cantools itself (the returned
decoder then calls ``decode_simple``): a multiplexer selector whose conversion is
not an integer one, and layouts so branchy that the generated code would exceed
:data:`MAX_LINES`.  :attr:`MessageDecoder.compiled` says which path a message got.

The names written into the source are string literals made with :func:`repr`,
and every number is an ``int`` or a ``float`` from cantools' parsed DBC, so a
hostile DBC cannot inject code.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from cantools.database.can import Message, Signal

__all__ = [
    "MAX_LINES",
    "MessageDecoder",
    "compile_message",
    "decimals",
    "format_or",
    "storable_as_decoded",
]

DecodeFn = Callable[[bytes, dict[str, Any]], str | None]

MAX_LINES = 4_000
"""Generated code longer than this (a message with many multiplexers side by side) falls back."""

_F32 = struct.Struct(">f").unpack
_F64 = struct.Struct(">d").unpack


def decimals(x: float) -> int:
    """How many decimal places ``x`` needs (at most 12)."""
    for digits in range(13):
        if abs(round(x, digits) - x) <= 1e-12 * max(1.0, abs(x)):
            return digits
    return 12


def format_or(items: Sequence[object]) -> str:
    """``1``, ``1 or 2``, ``1, 2 or 3`` -- as cantools words its multiplexer errors."""
    texts = [str(i) for i in items]
    if len(texts) <= 1:
        return "".join(texts)
    return f"{', '.join(texts[:-1])} or {texts[-1]}"


def resolution_digits(signal: Signal) -> int | None:
    """Decimals livedata rounds ``signal``'s values to; ``None``: not rounded.

    Float signals and integer conversions (cantools gives ints) are not rounded.
    """
    conv = signal.conversion
    if conv.is_float or (isinstance(conv.scale, int) and isinstance(conv.offset, int)):
        return None
    return max(decimals(conv.scale), decimals(conv.offset))


@dataclass(frozen=True, slots=True)
class MessageDecoder:
    """One message's decoder: ``decode(data, values) -> None | reason``.

    ``data`` must be exactly ``length`` bytes (the caller checks and trims, as
    cantools does with ``allow_excess``).
    """

    decode: DecodeFn
    length: int
    compiled: bool
    source: str | None


class _Unsupported(Exception):
    """The generator does not cover this message; use cantools."""


def _integer_conversion(signal: Signal) -> tuple[int, int] | None:
    """(scale, offset) when cantools converts ``signal`` with integers, else ``None``."""
    conv = signal.conversion
    inner = getattr(conv, "_conversion", conv)  # NamedSignalConversion wraps the numeric one
    if conv.is_float:
        return None
    scale, offset = inner.scale, inner.offset
    if isinstance(scale, int) and isinstance(offset, int):
        return scale, offset
    return None


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def storable_as_decoded(signal: Signal) -> bool:
    """Whether every value decoding gives for ``signal`` is already as the stores keep it
    (:func:`livedata.store.base.storable`), whatever the frame: an int within 64 bits (an
    integer conversion of a raw range that stays within them) or a finite float (IEEE float
    signals are refused as malformed when not finite; a scaled value is finite when its
    largest magnitude is).  Values outside the DBC's min/max are decoded too, so the raw
    range counts, not the DBC's."""
    if signal.conversion.is_float:
        return True
    if signal.is_signed:
        first, last = -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
    else:
        first, last = 0, (1 << signal.length) - 1
    ints = _integer_conversion(signal)
    if ints is not None:
        scale, offset = ints
        ends = (first * scale + offset, last * scale + offset)
        return min(ends) >= _INT64_MIN and max(ends) <= _INT64_MAX
    conv = signal.conversion
    return math.isfinite(max(-first, last) * abs(float(conv.scale)) + abs(float(conv.offset)))


_INT_CODES = {8: "b", 16: "h", 32: "i", 64: "q"}
_FLOAT_CODES = {32: "f", 64: "d"}


def _aligned(signal: Signal) -> tuple[str, int, str] | None:
    """(byte order, first byte, struct code) of a byte-aligned 8/16/32/64-bit signal."""
    if signal.length not in _INT_CODES:
        return None
    if signal.conversion.is_float:
        code = _FLOAT_CODES.get(signal.length)
        if code is None:
            return None
    else:
        code = _INT_CODES[signal.length]
        if not signal.is_signed:
            code = code.upper()
    if signal.byte_order == "little_endian" and signal.start % 8 == 0:
        return "<", signal.start // 8, code
    if signal.byte_order == "big_endian" and signal.start % 8 == 7:
        return ">", signal.start // 8, code
    return None


class _Generator:
    def __init__(self, message: Message, suffix: str) -> None:
        self.message = message
        self.suffix = suffix
        self.nbits = 8 * message.length
        self.lines: list[str] = []
        self.uses = {"big": False, "little": False}
        self.count = 0
        self.structs: dict[str, Any] = {}
        """Namespace names of the ``Struct.unpack_from`` of byte-aligned signal groups."""

    def unpack_aligned(self, signals: list[Signal], indent: str) -> dict[str, str]:
        """Emit one ``struct`` unpack per byte order for the byte-aligned signals.

        Returns the local holding each such signal's raw value (signed, or a float,
        as the struct code says).
        """
        locals_: dict[str, str] = {}
        for order in "<>":
            group = []
            for signal in signals:
                spec = _aligned(signal)
                if spec is not None and spec[0] == order:
                    group.append((spec[1], spec[2], signal))
            if not group:
                continue
            group.sort(key=lambda g: g[0])
            fmt, at, names = order, 0, []
            for first, code, signal in group:
                fmt += (f"{first - at}x" if first > at else "") + code
                at = first + signal.length // 8
                local = f"r{self.count}"
                self.count += 1
                names.append(local)
                locals_[signal.name] = local
            unpack = f"_s{len(self.structs)}"
            self.structs[unpack] = struct.Struct(fmt).unpack_from
            self.lines.append(f"{indent}{', '.join(names)}, = {unpack}(data)")
        return locals_

    def raw(self, signal: Signal) -> str:
        """An expression for the signal's raw bits (an unsigned int)."""
        if signal.byte_order == "little_endian":
            self.uses["little"] = True
            shift, var = signal.start, "l"
        else:
            self.uses["big"] = True
            msb = 8 * (signal.start // 8) + (7 - signal.start % 8)
            shift, var = self.nbits - msb - signal.length, "b"
        expr = f"({var} >> {shift})" if shift else var
        if shift + signal.length < self.nbits:
            expr = f"{expr} & {(1 << signal.length) - 1}"
        return expr

    def value(self, signal: Signal, local: str, indent: str, unpacked: bool) -> tuple[str, bool]:
        """Emit the signal's value into ``local``; returns (expression, is_float_signal).

        ``unpacked``: ``local`` already holds the raw value (from a struct unpack).
        """
        conv = signal.conversion
        if conv.is_float:
            if not unpacked:
                unpack = "_F32" if signal.length == 32 else "_F64"
                nbytes = signal.length // 8
                raw = self.raw(signal)
                self.lines.append(
                    f"{indent}{local} = {unpack}(({raw}).to_bytes({nbytes}, 'big'))[0]"
                )
            if conv.scale != 1 or conv.offset != 0:
                return f"{local} * {conv.scale!r} + {conv.offset!r}", True
            return local, True
        if not unpacked:
            raw = self.raw(signal)
            if signal.is_signed:
                sign = 1 << (signal.length - 1)
                self.lines.append(f"{indent}{local} = ({raw} ^ {sign}) - {sign}")
            else:
                self.lines.append(f"{indent}{local} = {raw}")
        ints = _integer_conversion(signal)
        if ints is not None:
            iscale, ioffset = ints
            expr = local if iscale == 1 else f"{local} * {iscale}"
            return (f"{expr} + {ioffset}" if ioffset else expr), False
        digits = resolution_digits(signal)
        assert digits is not None
        inner = getattr(conv, "_conversion", conv)
        scale, offset = inner.scale, inner.offset  # as cantools computes: an int stays an int
        q = 10**digits
        p, o = round(Fraction(scale) * q), round(Fraction(offset) * q)
        top = (1 << (signal.length - 1)) if signal.is_signed else (1 << signal.length) - 1
        fs, fo = Fraction(scale), Fraction(offset)
        binary = max(fs.denominator, fo.denominator)
        if (
            binary & (binary - 1) == 0  # dyadic scale and offset
            and binary <= 1 << digits  # ... with no more decimals than livedata rounds to
            and (top * abs(fs) + abs(fo)) * binary < 1 << 53  # every step exact in a float
        ):
            expr = local if fs == 1 else f"{local} * {scale!r}"
            return (f"{expr} + {offset!r}" if fo else f"float({expr})" if fs == 1 else expr), False
        exact = float(Fraction(p, q)) == scale and float(Fraction(o, q)) == offset
        # |raw| up to `small` keeps the float error of raw * scale + offset under a quarter
        # of the last decimal (see the module docstring): the integer division is exact there
        small = int((0.25 * 10.0**-digits * 2.0**50 - abs(offset)) / abs(scale)) if scale else top
        g = math.gcd(p, o, q)
        p, o, q = p // g, o // g, q // g
        num = f"{local} * {p}" if p != 1 else local
        if o:
            num = f"({num} + {o})"
        divided = f"{num} / {q}" if q != 1 else f"float({num})"
        if exact and top < 1 << 53 and small >= top:
            return divided, False
        # round(x, d) of a float of magnitude >= 2**(52 - d) is x itself: such a float is a
        # multiple of 2**-d, which has at most d decimals (and round is correctly rounded)
        x = f"x{local}"
        big = float(2 ** (52 - digits))
        walrus = f"({x} := {local} * {scale!r} + {offset!r})"
        rounded = f"(round({x}, {digits}) if {-big!r} < {walrus} < {big!r} else {x})"
        if exact and small >= 1:
            low = -small if signal.is_signed else 0
            return f"({divided} if {low} <= {local} <= {small} else {rounded})", False
        return rounded, False

    def node(
        self,
        queue: list[Any],
        writes: list[tuple[str, str]],
        floats: list[str],
        selectors: dict[str, str],
        indent: str,
    ) -> None:
        if len(self.lines) > MAX_LINES:
            raise _Unsupported("too much code")
        if not queue:
            for local in floats:
                self.lines.append(f"{indent}if {local} - {local}:")
                self.lines.append(f"{indent}    return 'non-finite float signal'")
            for name, expr in writes:
                self.lines.append(f"{indent}values[{name + self.suffix!r}] = {expr}")
            self.lines.append(f"{indent}return None")
            return
        head, rest = queue[0], queue[1:]
        if isinstance(head, dict):  # a codec node: its signals, then its multiplexers
            writes, floats, selectors = list(writes), list(floats), dict(selectors)
            unpacked = self.unpack_aligned(head["signals"], indent)
            for signal in head["signals"]:
                if signal.name in unpacked:
                    local = unpacked[signal.name]
                else:
                    local = f"r{self.count}"
                    self.count += 1
                expr, is_float = self.value(signal, local, indent, signal.name in unpacked)
                if signal.is_multiplexer:
                    if _integer_conversion(signal) is None:
                        raise _Unsupported("selector with a non-integer conversion")
                    if expr != local:
                        self.lines.append(f"{indent}s{local} = {expr}")
                        local = f"s{local}"
                    selectors[signal.name] = local
                    continue
                if is_float:
                    self.lines.append(f"{indent}f{local} = {expr}")
                    floats.append(f"f{local}")
                    expr = f"f{local}"
                writes.append((signal.name, expr))
            self.node(list(head["multiplexers"].items()) + rest, writes, floats, selectors, indent)
            return
        selector, branches = head
        local = selectors[selector]
        keyword = "if"
        for mux_value in sorted(branches):
            self.lines.append(f"{indent}{keyword} {local} == {int(mux_value)}:")
            self.node([branches[mux_value], *rest], writes, floats, selectors, indent + "    ")
            keyword = "elif"
        expected = format_or(sorted(branches))
        self.lines.append(
            f"{indent}return 'expected multiplexer id {expected}, but got ' + str({local})"
        )

    def source(self) -> str:
        self.node([self.message._codecs], [], [], {}, "    ")
        constants = "".join(f", {name}={name}" for name in ["_fb", "_F32", "_F64", *self.structs])
        head = [f"def decode(data, values{constants}):"]
        if self.uses["big"]:
            head.append("    b = _fb(data, 'big')")
        if self.uses["little"]:
            head.append("    l = _fb(data, 'little')")
        return "\n".join(head + self.lines) + "\n"


def _fallback(message: Message, suffix: str) -> DecodeFn:
    """cantools' own decoding with livedata's rounding, for what the generator does not cover."""
    selectors = {s.name for s in message.signals if s.is_multiplexer}
    fields = tuple(
        (s.name, s.name + suffix, resolution_digits(s), s.conversion.is_float)
        for s in message.signals
        if s.name not in selectors
    )
    decode_simple = message.decode_simple

    def decode(data: bytes, values: dict[str, Any]) -> str | None:
        try:
            decoded = decode_simple(data, False, True)
        except Exception as exc:  # cantools raises several kinds for bad frames
            return str(exc) or type(exc).__name__
        out = {}
        for name, key, digits, is_float in fields:
            if name in decoded:
                value: Any = decoded[name]
                if is_float and not math.isfinite(value):
                    return "non-finite float signal"
                out[key] = value if digits is None else round(value, digits)
        values.update(out)
        return None

    return decode


def compile_message(message: Message, suffix: str = "") -> MessageDecoder:
    """Build ``message``'s decoder; ``suffix`` is appended to every field name.

    Generated and compiled when the generator covers the message, else cantools'
    ``decode_simple`` with the same rounding (see the module docstring).
    """
    generator = _Generator(message, suffix)
    try:
        source = generator.source()
    except _Unsupported:
        return MessageDecoder(_fallback(message, suffix), message.length, False, None)
    namespace: dict[str, Any] = {"_fb": int.from_bytes, "_F32": _F32, "_F64": _F64}
    namespace.update(generator.structs)
    exec(compile(source, f"<dbc message {message.name}>", "exec"), namespace)
    return MessageDecoder(namespace["decode"], message.length, True, source)
