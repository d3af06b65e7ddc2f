"""Sans-I/O CAN decoding with cantools: frames in, signal values out.

A :class:`CanDecoder` wraps one DBC database.  :meth:`CanDecoder.decode` turns a batch
of :class:`~livedata.model.Frame` (what a machine sent in one second) into one flat
``{signal name: number}`` dict; :meth:`CanDecoder.encode` does the reverse for the
simulator.  Signal names are the field names users chart, so they are the keys: a
DBC that uses one name in two messages gets one field, written by whichever frame is
latest.

Behaviour under stress:

- A frame whose id is not in the DBC is counted in :attr:`DecodeResult.unknown` and
  skipped; it is not an error (a real bus carries much we do not decode).
- A malformed frame (shorter than the DBC says, a multiplexer value the DBC does not
  define, anything cantools refuses) adds one readable line to
  :attr:`DecodeResult.errors` and is skipped; every other frame of the batch is still
  decoded.  Nothing here raises for bad frames.
- An invalid DBC text is refused up front by :meth:`CanDecoder.from_dbc` with
  :class:`~livedata.errors.DecodeError`.

The id lookup is a dict built once, so the per-frame cost is one dict lookup plus
cantools' (C-accelerated) unpacking: decoding 10,000 frames takes tens of
milliseconds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from operator import attrgetter
from typing import Any

import cantools
from cantools.database.can import Database, Message, Signal

from livedata.errors import DecodeError, NotFound
from livedata.model import Frame

__all__ = [
    "CanDecoder",
    "DecodeResult",
    "SignalInfo",
    "builtin_dbc",
    "format_can_id",
]

Number = float | int

_BUILTIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}\Z")
_by_ts = attrgetter("ts")


def builtin_dbc(name: str = "loader") -> str:
    """The text of a DBC file shipped in ``livedata/dbc/`` (``loader`` is the demo machine).

    Raises :class:`~livedata.errors.NotFound` for a name that is not shipped.
    """
    if not _BUILTIN_NAME.match(name):
        raise NotFound(f"no built-in DBC named {name!r}")
    path = resources.files("livedata").joinpath("dbc", f"{name}.dbc")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"no built-in DBC named {name!r}") from None


def format_can_id(arbitration_id: int, is_extended: bool) -> str:
    """``0x18FEF100`` for a 29-bit id, ``0x3A0`` for an 11-bit one."""
    return f"0x{arbitration_id:08X}" if is_extended else f"0x{arbitration_id:03X}"


@dataclass(frozen=True, slots=True)
class SignalInfo:
    """What a user needs to know to chart one signal."""

    name: str
    message: str
    unit: str
    minimum: float | None
    maximum: float | None
    choices: dict[int, str] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; choice keys become strings (JSON object keys must be)."""
        return {
            "name": self.name,
            "message": self.message,
            "unit": self.unit,
            "min": self.minimum,
            "max": self.maximum,
            "choices": (
                {str(k): v for k, v in self.choices.items()} if self.choices is not None else None
            ),
        }


@dataclass(slots=True)
class DecodeResult:
    """The outcome of decoding one batch.

    ``frames`` counts the frames decoded into values, ``unknown`` the frames whose id
    the DBC does not define, and ``errors`` holds one line per malformed frame, so
    ``frames + unknown + len(errors)`` is the size of the batch.
    """

    values: dict[str, Number] = field(default_factory=dict)
    frames: int = 0
    unknown: int = 0
    errors: list[str] = field(default_factory=list)


def _decimals(x: float) -> int:
    """How many decimal places ``x`` needs (at most 12)."""
    for digits in range(13):
        if abs(round(x, digits) - x) <= 1e-12 * max(1.0, abs(x)):
            return digits
    return 12


def _physical_range(signal: Signal) -> tuple[float, float]:
    """The physical values ``signal`` can carry: its DBC min/max within its raw range."""
    conv = signal.conversion
    if conv.is_float:
        raw_lo, raw_hi = -math.inf, math.inf
    else:
        if signal.is_signed:
            first, last = -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
        else:
            first, last = 0, (1 << signal.length) - 1
        a = first * conv.scale + conv.offset
        b = last * conv.scale + conv.offset
        raw_lo, raw_hi = min(a, b), max(a, b)
    lo = raw_lo if signal.minimum is None else max(raw_lo, signal.minimum)
    hi = raw_hi if signal.maximum is None else min(raw_hi, signal.maximum)
    if lo > hi:  # the DBC's min/max lies outside the raw range: trust the raw range
        return raw_lo, raw_hi
    return lo, hi


def _expand(tree: Sequence[Any]) -> list[tuple[dict[str, int], list[str]]]:
    """Every way to fill a cantools signal tree: (mux selector values, signal names)."""
    combos: list[tuple[dict[str, int], list[str]]] = [({}, [])]
    for item in tree:
        if isinstance(item, str):
            for _, names in combos:
                names.append(item)
            continue
        for selector, branches in item.items():
            grown: list[tuple[dict[str, int], list[str]]] = []
            for muxes, names in combos:
                for mux_value, subtree in sorted(branches.items()):
                    for sub_muxes, sub_names in _expand(subtree):
                        grown.append(
                            ({**muxes, selector: mux_value, **sub_muxes}, names + sub_names)
                        )
            combos = grown
    return combos


class _Codec:
    """One DBC message, with everything the per-frame path needs precomputed."""

    __slots__ = ("decode", "fields", "float_fields", "label", "length", "message", "variants")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.decode = message.decode_simple
        self.length = message.length
        self.label = (
            f"{format_can_id(message.frame_id, message.is_extended_frame)} ({message.name})"
        )
        selectors = {s.name for s in message.signals if s.is_multiplexer}
        fields: list[tuple[str, int | None]] = []
        float_fields: list[str] = []
        for s in message.signals:
            if s.name in selectors:
                continue
            conv = s.conversion
            if conv.is_float:
                float_fields.append(s.name)
                fields.append((s.name, None))
            elif isinstance(conv.scale, int) and isinstance(conv.offset, int):
                fields.append((s.name, None))  # cantools keeps these ints
            else:
                fields.append((s.name, max(_decimals(conv.scale), _decimals(conv.offset))))
        self.fields = tuple(fields)
        self.float_fields = tuple(float_fields)
        signals = {s.name: s for s in message.signals}
        self.variants = [
            (muxes, [(name, _physical_range(signals[name])) for name in names])
            for muxes, names in _expand(message.signal_tree)
        ]


class CanDecoder:
    """Decodes and encodes CAN frames with one DBC database; immutable, safe to share."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._codecs = [_Codec(m) for m in db.messages if not m.is_container]
        self._by_id: dict[int, _Codec] = {c.message.frame_id: c for c in self._codecs}
        infos = []
        for codec in self._codecs:
            m = codec.message
            for s in m.signals:
                if s.is_multiplexer:
                    continue
                choices = {int(k): str(v) for k, v in s.choices.items()} if s.choices else None
                infos.append(
                    SignalInfo(s.name, m.name, s.unit or "", s.minimum, s.maximum, choices)
                )
        self._signals = sorted(infos, key=lambda i: (i.name, i.message))

    @classmethod
    def from_dbc(cls, text: str) -> CanDecoder:
        """Load DBC text with cantools' strict checks.

        Raises :class:`~livedata.errors.DecodeError` naming the problem when the text
        is not a valid DBC (syntax errors, overlapping signals, signals outside their
        message) or defines no messages.
        """
        try:
            db = cantools.database.load_string(text, database_format="dbc", strict=True)
        except Exception as exc:  # cantools raises many kinds; all mean "bad DBC"
            detail = str(exc).strip() or type(exc).__name__
            raise DecodeError(f"invalid DBC: {detail}") from exc
        if not isinstance(db, Database):
            raise DecodeError("invalid DBC: not a CAN database")
        if not db.messages:
            raise DecodeError("invalid DBC: it defines no messages")
        return cls(db)

    @property
    def database(self) -> Database:
        return self._db

    def signals(self) -> list[SignalInfo]:
        """Every decodable signal, sorted by name (multiplexer selectors are left out)."""
        return list(self._signals)

    def decode(self, frames: Sequence[Frame]) -> DecodeResult:
        """Decode a batch of frames into one ``{signal: number}`` dict.

        Frames are applied in timestamp order (stable, so for equal timestamps the
        later frame in the batch wins): a signal sent several times keeps the value of
        its latest frame.  Values are numbers, choices are not applied (``gear`` is
        ``-1``, not ``"R"``); integer signals with scale 1 stay ints, scaled values are
        floats rounded to the resolution of their scale.  Multiplexer selectors are
        not returned.

        Never raises for bad input: unknown ids are counted in ``unknown``, malformed
        frames (too short, undefined multiplexer value, cantools errors, non-finite
        float signals) get one line each in ``errors``, and the rest of the batch is
        decoded.
        """
        result = DecodeResult()
        values = result.values
        errors = result.errors
        lookup = self._by_id
        decoded_frames = unknown = 0
        for frame in sorted(frames, key=_by_ts):
            codec = lookup.get(frame.arbitration_id)
            if codec is None:
                unknown += 1
                continue
            try:
                data = frame.data
                if len(data) < codec.length:
                    errors.append(
                        f"frame {codec.label}: {len(data)} bytes, expected {codec.length}"
                    )
                    continue
                decoded: dict[str, Any] = codec.decode(data, False, True)
            except Exception as exc:  # one bad frame must not stop the batch
                errors.append(f"frame {codec.label}: {str(exc) or type(exc).__name__}")
                continue
            if codec.float_fields and not all(
                math.isfinite(decoded[n]) for n in codec.float_fields if n in decoded
            ):
                errors.append(f"frame {codec.label}: non-finite float signal")
                continue
            for name, digits in codec.fields:
                if name in decoded:
                    value = decoded[name]
                    values[name] = value if digits is None else round(value, digits)
            decoded_frames += 1
        result.frames = decoded_frames
        result.unknown = unknown
        return result

    def encode(self, values: dict[str, float], ts: int) -> list[Frame]:
        """Encode a full set of signal values into one frame per message (per mux value).

        Multiplexed messages give one frame per multiplexer value, in ascending
        order.  Missing, non-numeric or non-finite values count as 0; every value is
        clamped into the signal's DBC min/max (and its raw range), so 0 becomes the
        minimum of a signal whose range excludes it.  Unused bits are sent as 1s, as
        J1939 asks.  ``is_extended`` comes from the DBC.
        """
        out: list[Frame] = []
        for codec in self._codecs:
            m = codec.message
            for muxes, fills in codec.variants:
                data: dict[str, float] = dict(muxes)
                for name, (lo, hi) in fills:
                    v = values.get(name, 0)
                    if not isinstance(v, int | float) or not math.isfinite(v):
                        v = 0
                    data[name] = lo if v < lo else hi if v > hi else v
                payload = m.encode(data, scaling=True, padding=True, strict=False)
                out.append(Frame(ts, m.frame_id, m.is_extended_frame, bytes(payload)))
        return out
