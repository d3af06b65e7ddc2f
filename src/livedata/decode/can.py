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
from operator import itemgetter
from typing import Any

import cantools
from cantools.database.can import Database, Message, Signal

from livedata.decode.compiled import MessageDecoder, compile_message, storable_as_decoded
from livedata.decode.dm1 import PGN_DM1, Dm1, parse_dm1
from livedata.decode.j1939 import frame_id as j1939_frame_id
from livedata.decode.j1939 import is_j1939, match_key, pgn_of
from livedata.decode.tp import PGN_TP_CM, PGN_TP_DT, Reassembler
from livedata.errors import DecodeError, NotFound
from livedata.model import Frame

__all__ = [
    "BusState",
    "CanDecoder",
    "DecodeResult",
    "SignalInfo",
    "builtin_dbc",
    "format_can_id",
]

Number = float | int

_BUILTIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}\Z")
_by_ts = itemgetter(0)  # Frame.ts


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
    resolution: float | None = None
    """The signal's scale (one raw step); ``None`` for IEEE float signals."""

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
            "resolution": self.resolution,
        }


@dataclass(slots=True)
class DecodeResult:
    """The outcome of decoding one batch.

    ``frames`` counts the frames used (decoded into values, or taken by the J1939
    transport protocol), ``unknown`` the frames whose id the DBC does not define,
    and ``errors`` holds one line per malformed frame and per failed TP session, so
    ``frames + unknown`` plus the malformed frames is the size of the batch.
    """

    values: dict[str, Number] = field(default_factory=dict)
    frames: int = 0
    unknown: int = 0
    errors: list[str] = field(default_factory=list)
    dm1: list[Dm1] = field(default_factory=list)
    """Each DM1 received (J1939 DBCs), in timestamp order."""
    reassembled: int = 0
    """Multi-packet messages completed in this batch."""


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
    """One DBC message: its compiled decoder and, for encoding, its multiplexer variants."""

    __slots__ = ("compiled", "decode", "label", "length", "message", "variants")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.compiled = compiled = compile_message(message)
        self.decode = compiled.decode
        self.length = compiled.length
        self.label = (
            f"{format_can_id(message.frame_id, message.is_extended_frame)} ({message.name})"
        )
        signals = {s.name: s for s in message.signals}
        self.variants = [
            (muxes, [(name, _physical_range(signals[name])) for name in names])
            for muxes, names in _expand(message.signal_tree)
        ]


_MISS: Any = object()
_Entry = tuple[Any, int, str]
"""(decode function, length or :data:`_TP`/:data:`_DM1`, label for error lines)."""
_TP = -1
"""``length`` of a TP.CM / TP.DT entry: such frames go to the reassembler."""
_DM1 = -2
"""``length`` of a DM1 entry: parsed into DTCs (and decoded with the DBC if it has DM1)."""
CACHE_MAX = 4_096
"""Distinct J1939 ids remembered with their match; beyond, the memory starts again."""


class BusState:
    """What one machine's bus carries over from one batch to the next: open TP sessions.

    Bounded: at most ``max_sessions`` sessions of at most 1,785 bytes each
    (see :mod:`livedata.decode.tp`).
    """

    __slots__ = ("reassembler",)

    def __init__(self, max_sessions: int = 32) -> None:
        self.reassembler = Reassembler(max_sessions=max_sessions)


class CanDecoder:
    """Decodes and encodes CAN frames with one DBC database; immutable, safe to share.

    Matching a frame to a DBC message:

    - a DBC that is not J1939 matches exact ids;
    - a J1939 DBC (``j1939=None``: as the DBC says, see
      :func:`livedata.decode.j1939.is_j1939`) matches 29-bit frames by parameter
      group: the message with the frame's exact id if there is one, else one of
      the same PGN and source address, else the first of the same PGN -- so
      priority and source address are ignored (and the destination of PDU1 groups).
      With ``separate_sources`` a frame from another source address than the DBC
      message's writes ``<signal>.0x<SA>`` (``engine_rpm.0x01``) instead of
      ``<signal>``; without it every source writes the one field, latest wins.
      TP.CM/TP.DT frames are reassembled (:mod:`livedata.decode.tp`) and the whole
      message decoded like a frame of its PGN; DM1 (PGN 65226, single or
      multi-packet) is parsed into :attr:`DecodeResult.dm1` whether or not the DBC
      defines it.  11-bit frames always match exactly.

    The matches of J1939 ids are memoised per id (at most :data:`CACHE_MAX`, the
    only state that changes; a lost race recomputes the same entry).  Under stress: a
    new id costs one PGN lookup; with ``separate_sources`` a new (message, source
    address) pair also compiles that message once more with its suffixed names
    (about 0.1 ms), so a device cycling through thousands of source addresses and
    priorities costs that per distinct id until the memory starts again.
    """

    def __init__(
        self, db: Database, *, j1939: bool | None = None, separate_sources: bool = False
    ) -> None:
        self._db = db
        self.j1939 = is_j1939(db) if j1939 is None else j1939
        self.separate_sources = separate_sources
        self._codecs = [_Codec(m) for m in db.messages if not m.is_container]
        self._by_id: dict[int, _Codec] = {c.message.frame_id: c for c in self._codecs}
        self._by_pgn: dict[int, list[_Codec]] = {}
        if self.j1939:
            for codec in self._codecs:
                if codec.message.is_extended_frame:
                    self._by_pgn.setdefault(match_key(codec.message.frame_id), []).append(codec)
        self._exact: dict[int, _Entry | None] = {
            fid: (c.decode, c.length, c.label) for fid, c in self._by_id.items()
        }
        self._cache = dict(self._exact)
        infos = []
        for codec in self._codecs:
            m = codec.message
            for s in m.signals:
                if s.is_multiplexer:
                    continue
                choices = {int(k): str(v) for k, v in s.choices.items()} if s.choices else None
                infos.append(
                    SignalInfo(
                        s.name,
                        m.name,
                        s.unit or "",
                        s.minimum,
                        s.maximum,
                        choices,
                        None if s.conversion.is_float else abs(s.conversion.scale),
                    )
                )
        self._signals = sorted(infos, key=lambda i: (i.name, i.message))
        self.storable = all(
            storable_as_decoded(s)
            for codec in self._codecs
            for s in codec.message.signals
            if not s.is_multiplexer
        )
        """Whether every value :meth:`decode` gives is already as the stores keep it (see
        :func:`~livedata.decode.compiled.storable_as_decoded`): then ingest need not check
        them (:func:`~livedata.store.base.normalised`)."""

    @classmethod
    def from_dbc(
        cls, text: str, *, j1939: bool | None = None, separate_sources: bool = False
    ) -> CanDecoder:
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
        return cls(db, j1939=j1939, separate_sources=separate_sources)

    @property
    def database(self) -> Database:
        return self._db

    def compiled_messages(self) -> list[MessageDecoder]:
        """Each message's decoder (``compiled`` says whether it is generated code or cantools)."""
        return [c.compiled for c in self._codecs]

    def spn_names(self) -> dict[int, str]:
        """SPN -> signal name, from the DBC's ``SPN`` signal attributes (J1939 DBCs carry them)."""
        names: dict[int, str] = {}
        for codec in self._codecs:
            for s in codec.message.signals:
                attribute = (s.dbc.attributes if s.dbc is not None else {}).get("SPN")
                if attribute is not None and isinstance(attribute.value, int):
                    names.setdefault(attribute.value, s.name)
        return names

    def signals(self) -> list[SignalInfo]:
        """Every decodable signal, sorted by name (multiplexer selectors are left out)."""
        return list(self._signals)

    def _resolve(self, can_id: int, extended: bool = True) -> _Entry | None:
        """The entry of an id not seen before: J1939 matching of 29-bit ids, memoised."""
        if not self.j1939 or not extended or can_id > 0x1FFFFFFF:
            return None
        pgn = pgn_of(can_id)
        sa = can_id & 0xFF
        entry: _Entry | None
        if pgn in (PGN_TP_CM, PGN_TP_DT):
            entry = (None, _TP, f"0x{can_id:08X} (TP)")
        else:
            candidates = self._by_pgn.get(pgn, [])
            codec = next((c for c in candidates if c.message.frame_id & 0xFF == sa), None)
            if codec is None and candidates:
                codec = candidates[0]
            if codec is None:
                entry = None
            elif self.separate_sources and codec.message.frame_id & 0xFF != sa:
                compiled = compile_message(codec.message, f".0x{sa:02X}")
                entry = (compiled.decode, compiled.length, codec.label)
            else:
                entry = (codec.decode, codec.length, codec.label)
            if pgn == PGN_DM1:
                entry = (entry, _DM1, f"0x{can_id:08X} (DM1)")
        if len(self._cache) >= CACHE_MAX + len(self._exact):
            self._cache = dict(self._exact)
        self._cache[can_id] = entry
        return entry

    def _lookup(self, can_id: int) -> _Entry | None:
        entry: _Entry | None = self._cache.get(can_id, _MISS)
        return self._resolve(can_id) if entry is _MISS else entry

    def decode(self, frames: Sequence[Frame], state: BusState | None = None) -> DecodeResult:
        """Decode a batch of frames into one ``{signal: number}`` dict.

        Frames are applied in timestamp order (stable, so for equal timestamps the
        later frame in the batch wins): a signal sent several times keeps the value of
        its latest frame.  Values are numbers, choices are not applied (``gear`` is
        ``-1``, not ``"R"``); integer signals with scale 1 stay ints, scaled values are
        floats rounded to the resolution of their scale.  Multiplexer selectors are
        not returned.

        ``state`` is the machine's :class:`BusState`, so that J1939 multi-packet
        messages spread over several batches are reassembled; without it a
        session must start and end within the batch.  Sessions that have timed
        out by the batch's last timestamp are abandoned at its end.

        Never raises for bad input: unknown ids are counted in ``unknown``, malformed
        frames (too short, undefined multiplexer value, cantools errors, non-finite
        float signals) and failed TP sessions get one line each in ``errors``, and
        the rest of the batch is decoded.  ``frames`` counts the frames used
        (decoded, or taken by the transport protocol).
        """
        result = DecodeResult()
        values = result.values
        errors = result.errors
        cache = self._cache
        unknown = bad = 0
        ordered = sorted(frames, key=_by_ts)
        for frame in ordered:
            _, ident, extended, data = frame  # a named tuple: unpacking beats attributes
            entry = cache.get(ident, _MISS)
            if entry is _MISS:
                entry = self._resolve(ident, extended)
            if entry is None:
                unknown += 1
                continue
            decode, length, label = entry
            if len(data) != length:
                if length < 0:
                    if state is None:
                        state = BusState()
                    bad += self._special(frame, entry, state, result)
                    continue
                if len(data) < length:
                    errors.append(f"frame {label}: {len(data)} bytes, expected {length}")
                    bad += 1
                    continue
                data = data[:length]
            try:
                reason = decode(data, values)
            except Exception as exc:  # one bad frame must not stop the batch
                reason = str(exc) or type(exc).__name__
            if reason is not None:
                errors.append(f"frame {label}: {reason}")
                bad += 1
        if state is not None and ordered:
            errors.extend(state.reassembler.expire(ordered[-1].ts))
        result.frames = len(ordered) - unknown - bad
        result.unknown = unknown
        return result

    def _special(self, frame: Frame, entry: _Entry, state: BusState, result: DecodeResult) -> int:
        """A TP or DM1 frame; returns 1 if the frame itself was malformed, else 0."""
        inner, kind, label = entry
        if kind == _DM1:
            return self._payload(frame.ts, frame.arbitration_id, frame.data, inner, label, result)
        done, errors = state.reassembler.feed(frame.ts, frame.arbitration_id, frame.data)
        result.errors.extend(errors)
        if done is not None:
            result.reassembled += 1
            can_id = j1939_frame_id(done.pgn, done.sa, done.da)
            target = self._lookup(can_id)
            if target is None:
                result.errors.append(
                    f"TP message PGN {done.pgn} from 0x{done.sa:02X}: not in the DBC"
                )
            elif target[1] == _DM1:
                self._payload(done.ts, can_id, done.data, target[0], target[2], result)
            else:
                self._payload(done.ts, can_id, done.data, target, target[2], result)
        return 0

    @staticmethod
    def _payload(
        ts: int,
        can_id: int,
        data: bytes,
        entry: _Entry | None,
        label: str,
        result: DecodeResult,
    ) -> int:
        """Decode a DM1 or reassembled payload; 1 if it was malformed, else 0."""
        bad = 0
        if pgn_of(can_id) == PGN_DM1:
            try:
                result.dm1.append(parse_dm1(ts, can_id & 0xFF, data))
            except ValueError as exc:
                result.errors.append(f"frame {label}: {exc}")
                bad = 1
        if entry is None:
            return bad
        decode, length, label = entry
        if len(data) < length:
            result.errors.append(f"frame {label}: {len(data)} bytes, expected {length}")
            return 1
        try:
            reason = decode(data[:length], result.values)
        except Exception as exc:  # one bad message must not stop the batch
            reason = str(exc) or type(exc).__name__
        if reason is not None:
            result.errors.append(f"frame {label}: {reason}")
            return 1
        return bad

    def decode_frame(self, arbitration_id: int, data: bytes) -> dict[str, Number]:
        """One frame's values, like cantools' ``decode_message(..., decode_choices=False)``.

        Values are rounded as in :meth:`decode` and multiplexer selectors left out;
        J1939 ids match as in :meth:`decode` (TP and DM1 frames are not values:
        they raise).  Raises :class:`~livedata.errors.DecodeError` for an unknown id
        or a malformed frame (the batch path counts these instead).
        """
        entry = self._cache.get(arbitration_id, _MISS)
        if entry is _MISS:
            entry = self._resolve(arbitration_id)
        if entry is None:
            raise DecodeError(f"unknown frame id 0x{arbitration_id:X}")
        decode, length, label = entry
        if len(data) != length:
            if length < 0:
                raise DecodeError(f"frame {label} is not a value frame")
            if len(data) < length:
                raise DecodeError(f"frame {label}: {len(data)} bytes, expected {length}")
            data = data[:length]
        values: dict[str, Number] = {}
        reason = decode(data, values)
        if reason is not None:
            raise DecodeError(f"frame {label}: {reason}")
        return values

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
