"""The SSE watch protocol (Machbase Neo's ``/db/watch``), sans I/O.

What a watch request means and what goes on the wire, with no server in sight:

- :func:`parse_query` turns the request's query string into :class:`WatchParams`
  (``period``, ``keep-alive``, ``timeformat``, ``tz``, ``tag`` …, bounded and checked:
  :class:`~livedata.errors.InputError` naming the parameter otherwise);
- :class:`EventId` is the ``id:`` of every event and the ``Last-Event-ID`` a client
  resumes with (:meth:`EventId.parse` answers ``None`` for anything it does not
  understand, never raises);
- :func:`encode_events`, :func:`encode_gap`, :data:`KEEP_ALIVE` are the bytes of the
  ``id:``/``event:``/``data:`` blocks; :func:`data_block` is one event's ``data:``
  line alone, which does not depend on the client, so a stream's fan-out encodes it
  once and every client of the same tags shares it;
- :data:`SSE_FRAMING` and :data:`CHUNKED_SSE` (the same as HTTP/1.1 chunks, for a
  body the server writes to its transport itself: :func:`chunk`) frame events for
  the fan-out core's outbox; a :class:`Batch` is one period's events framed once per
  framing, all in one write or one by one, shared by every stream of a group;
- :func:`error_body` is the JSON error a refused request gets before any stream
  starts (:data:`ERROR_STATUS` maps each code to its HTTP status);
- :class:`EventParser` is the other side (bytes in, :class:`Event` out, following
  the HTML living standard's event-stream rules) for tests and benchmarks.

Under stress: untrusted input is bounded before it is parsed: the query string
(:data:`MAX_QUERY`), the number of tags (:data:`MAX_TAGS`) and their length, the
``Last-Event-ID`` (:data:`MAX_EVENT_ID`); :class:`EventParser` holds at most
``max_line`` bytes of an unfinished line and ``max_data`` of an unfinished event
(:class:`~livedata.errors.InputError` beyond).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from livedata.errors import InputError

MAX_QUERY = 16_384
"""Characters of a watch request's query string at most."""
MAX_TAGS = 100
MAX_TAG_LENGTH = 200
MAX_ROWS_DEFAULT = 20
MAX_ROWS_LIMIT = 100
PERIOD_DEFAULT = 3.0
PERIOD_MIN = 1.0
DURATION_MAX = 3_600.0
KEEPALIVE_DEFAULT = 30.0
KEEPALIVE_MIN = 1.0
MAX_EVENT_ID = 4_096
"""Characters of a ``Last-Event-ID`` at most (longer ones are not understood: a gap)."""
TS_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Response headers of a stream (no caching, no proxy buffering)."""
KEEP_ALIVE = b": keep-alive\n\n"
"""The comment sent when nothing else was sent for ``keep-alive``."""

ERROR_STATUS = {
    "bad_request": 400,
    "not_found": 404,
    "too_many_streams": 503,
    "too_busy": 503,
    "unavailable": 503,
}
"""HTTP status of each error code a watch request can get before its stream starts."""


class TooLarge(InputError):
    code = "too_large"


# --------------------------------------------------------------------------- parameters

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str, name: str) -> float:
    """A Go duration (``1m30s``, ``500ms``; a bare number is seconds) in seconds."""
    raw = text.strip()
    if len(raw) > 64:
        raise InputError(f"{name} is too long")
    if re.fullmatch(r"\d+(?:\.\d+)?", raw):
        return float(raw)
    pos, total = 0, 0.0
    while pos < len(raw):
        match = _DURATION_PART.match(raw, pos)
        if match is None:
            raise InputError(f"{name} {text!r} is not a duration such as 500ms, 3s or 1m")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not raw:
        raise InputError(f"{name} is empty: give a duration such as 3s")
    return total


def _bounded_duration(text: str | None, name: str, default: float, minimum: float) -> float:
    if text is None:
        return default
    value = parse_duration(text, name)
    if value < minimum:
        raise InputError(f"{name} {text!r} is below the minimum of {minimum:g}s")
    if value > DURATION_MAX:
        raise InputError(f"{name} {text!r} is above the maximum of {DURATION_MAX:g}s")
    return value


def parse_tz(text: str | None) -> tzinfo | None:
    """``UTC`` (default), ``Local`` (``None``: the server's zone) or an IANA name."""
    if text is None or text.upper() == "UTC":
        return UTC
    if text.lower() == "local":
        return None
    if len(text) > 64:
        raise InputError("tz is too long")
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(
            f"unknown tz {text!r}: use UTC, Local or a location such as Asia/Seoul"
        ) from None


_MS_PER = {"s": 1000, "ms": 1, "us": 0.001, "ns": 0.000001}
_DEFAULT_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\Z")


@dataclass(frozen=True, slots=True)
class TimeFormat:
    """How TIME is written out and read in: ``s``, ``ms``, ``us``, ``ns`` or ``default``."""

    name: str
    tz: tzinfo | None

    @classmethod
    def parse(cls, timeformat: str | None, tz: str | None) -> TimeFormat:
        name = (timeformat or "ns").lower()
        if name not in ("s", "ms", "us", "ns", "default"):
            raise InputError(f"unknown timeformat {timeformat!r}: use s, ms, us, ns or default")
        return cls(name, parse_tz(tz))

    def format(self, ts_ms: int) -> int | str:
        if self.name == "ms":
            return ts_ms
        if self.name == "s":
            return ts_ms // 1000
        if self.name == "us":
            return ts_ms * 1000
        if self.name == "ns":
            return ts_ms * 1_000_000
        seconds, millis = divmod(ts_ms, 1000)
        when = datetime.fromtimestamp(seconds, self.tz)
        text = when.strftime("%Y-%m-%d %H:%M:%S")
        return f"{text}.{millis:03d}".rstrip("0") if millis else text

    def to_ms(self, raw: object) -> int:
        """A TIME value as given by a writer, in milliseconds since the epoch."""
        if self.name == "default":
            match = _DEFAULT_TIME.match(raw.strip()) if isinstance(raw, str) else None
            if match is None:
                raise ValueError(f"TIME {raw!r} is not like 2006-01-02 15:04:05.999")
            year, month, day, hour, minute, second = (int(p) for p in match.groups()[:6])
            try:
                when = datetime(year, month, day, hour, minute, second, tzinfo=self.tz)
            except ValueError as exc:
                raise ValueError(f"TIME {raw!r}: {exc}") from None
            millis = int((match.group(7) or "0").ljust(3, "0")[:3])
            ms = int(when.timestamp()) * 1000 + millis
        else:
            if isinstance(raw, bool):
                raise ValueError(f"TIME {raw!r} is not a number of {self.name}")
            if isinstance(raw, str) and re.fullmatch(r"\d+(?:\.\d+)?", raw.strip()):
                raw = float(raw) if "." in raw else int(raw)
            if isinstance(raw, int):
                divisor = {"s": 1, "ms": 1, "us": 1000, "ns": 1_000_000}[self.name]
                ms = raw * 1000 if self.name == "s" else raw // divisor
            elif isinstance(raw, float) and math.isfinite(raw):
                ms = int(raw * _MS_PER[self.name])
            else:
                raise ValueError(f"TIME {raw!r} is not a number of {self.name}")
        if not 0 <= ms <= TS_MAX_MS:
            raise ValueError(f"TIME {raw!r} is out of range")
        return ms


def _int_param(text: str | None, name: str, default: int) -> int:
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{name} {text[:40]!r} is not an integer") from None


@dataclass(frozen=True, slots=True)
class WatchParams:
    """A watch request's parameters, checked (see :func:`parse_query`)."""

    period: float = PERIOD_DEFAULT
    keep_alive: float = KEEPALIVE_DEFAULT
    fmt: TimeFormat = TimeFormat("ns", UTC)
    tags: tuple[str, ...] = ()
    max_rows: int = MAX_ROWS_DEFAULT
    parallelism: int = 0

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> WatchParams:
        """The parameters of (name, value) pairs; the last of a repeated name wins, except
        ``tag`` (repeatable, each also comma-separated)."""
        single: dict[str, str] = {}
        tags: list[str] = []
        for name, value in pairs:
            if name == "tag":
                tags.extend(t.strip() for t in value.split(",") if t.strip())
                if len(tags) > 4 * MAX_TAGS:
                    break
            else:
                single[name] = value
        period = _bounded_duration(single.get("period"), "period", PERIOD_DEFAULT, PERIOD_MIN)
        keep_alive = _bounded_duration(
            single.get("keep-alive"), "keep-alive", KEEPALIVE_DEFAULT, KEEPALIVE_MIN
        )
        fmt = TimeFormat.parse(single.get("timeformat"), single.get("tz"))
        max_rows = _int_param(single.get("max-rows"), "max-rows", MAX_ROWS_DEFAULT)
        if not 1 <= max_rows <= MAX_ROWS_LIMIT:
            raise InputError(f"max-rows {max_rows} is out of range: 1 to {MAX_ROWS_LIMIT}")
        parallelism = _int_param(single.get("parallelism"), "parallelism", 0)
        if parallelism < 0:
            raise InputError("parallelism must be 0 or more")
        unique = list(dict.fromkeys(tags))
        if len(unique) > MAX_TAGS:
            raise InputError(f"{len(unique)} tags; at most {MAX_TAGS} per stream")
        if any(len(t) > MAX_TAG_LENGTH for t in unique):
            raise InputError(f"a tag name is longer than {MAX_TAG_LENGTH} characters")
        return cls(period, keep_alive, fmt, tuple(unique), max_rows, parallelism)


def parse_query(query: str | bytes) -> WatchParams:
    """The :class:`WatchParams` of a request's query string (``a=1&tag=x&tag=y``)."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    if len(text) > MAX_QUERY:
        raise TooLarge(f"the query string is longer than {MAX_QUERY} characters")
    return WatchParams.from_pairs(parse_qsl(text, keep_blank_values=True))


# --------------------------------------------------------------------------- event ids


Mark = tuple[str, int] | None
"""A position in one pub/sub channel: (its epoch, the seq of a message), or unknown."""
_RESUME = re.compile(r"[0-9A-Za-z_.~]+\Z")


@dataclass(frozen=True, slots=True)
class EventId:
    """``{epoch}-{prev}-{cover}-{index}[-{resume}]``.

    The event's period covered positions ``(prev, cover]`` of the gateway process's
    sources, numbered in that process's ``epoch``; ``index`` is its place in the
    period.  ``resume`` (tag tables) says the same in the pub/sub's own terms, so any
    gateway can resume the stream: per source channel, in the stream's order, the
    position at the period's start and at its end (see :func:`format_marks`).
    """

    epoch: str
    prev: int
    cover: int
    index: int = 0
    resume: str = ""

    def __str__(self) -> str:
        base = f"{self.epoch}-{self.prev}-{self.cover}-{self.index}"
        return f"{base}-{self.resume}" if self.resume else base

    @classmethod
    def parse(cls, text: str | None) -> EventId | None:
        """The id a client sent, or ``None`` when absent or not understood."""
        if not text or len(text) > MAX_EVENT_ID:
            return None
        parts = text.strip().split("-")
        if len(parts) not in (4, 5) or not parts[0] or not parts[0].isalnum():
            return None
        resume = parts[4] if len(parts) == 5 else ""
        if len(parts) == 5 and not _RESUME.match(resume):
            return None
        try:
            prev, cover, index = int(parts[1]), int(parts[2]), int(parts[3])
        except ValueError:
            return None
        if not 0 <= prev <= cover or index < 0:
            return None
        return cls(parts[0], prev, cover, index, resume)


def format_marks(start: Sequence[Mark], end: Sequence[Mark]) -> str:
    """``{epochs}~{start seqs}~{end seqs}``: dotted, one per channel (``_`` = unknown);
    the epochs once when every channel has the same."""
    epochs = [(m or ("_", 0))[0] for m in end]
    epoch_part = epochs[0] if epochs and len(set(epochs)) == 1 else ".".join(epochs)

    def seqs(marks: Sequence[Mark]) -> str:
        return ".".join("_" if m is None else str(m[1]) for m in marks)

    return f"{epoch_part}~{seqs(start)}~{seqs(end)}"


def parse_marks(text: str, channels: int) -> tuple[list[Mark], list[Mark]] | None:
    """The (start, end) positions of :func:`format_marks` for ``channels`` channels,
    or ``None`` when ``text`` does not describe that many."""
    parts = text.split("~")
    if len(parts) != 3 or channels < 1:
        return None
    epochs = parts[0].split(".")
    if len(epochs) == 1:
        epochs *= channels
    starts, ends = parts[1].split("."), parts[2].split(".")
    if not len(epochs) == len(starts) == len(ends) == channels:
        return None

    def marks(seqs: list[str]) -> list[Mark] | None:
        out: list[Mark] = []
        for epoch, seq in zip(epochs, seqs, strict=True):
            if seq == "_" or epoch == "_":
                out.append(None)
            elif seq.isdigit():
                out.append((epoch, int(seq)))
            else:
                return None
        return out

    start, end = marks(starts), marks(ends)
    return None if start is None or end is None else (start, end)


# --------------------------------------------------------------------------- framing

Event = tuple[str | None, Any]
"""(event name or ``None`` for a plain message, JSON data)."""


def data_block(data: Any) -> bytes:
    """The ``data:`` line of one event and the blank line ending it (JSON has no newline)."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


def event_block(event_id: EventId | str, name: str | None, block: bytes) -> bytes:
    """One whole event: its ``id:``, its ``event:`` when named, then ``block`` (a data block)."""
    head = b"id: " + str(event_id).encode() + b"\n"
    if name:
        head += b"event: " + name.encode() + b"\n"
    return head + block


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk (``Transfer-Encoding: chunked``; not empty)."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


class SseFraming:
    """The fan-out core's framing of SSE (:class:`~livedata.gateway.fanout.Framing`).

    ``payload`` is an event's JSON data; ``head`` is ``{"id": …, "event": name or None}``
    (``None``: a bare ``data:`` block).  The bytes depend on nothing else, so every
    stream of the same events shares them.  With ``chunked`` each piece of the stream
    is also one HTTP/1.1 chunk: the body a server writes to its transport itself
    (:data:`CHUNKED_SSE`); without, the events alone (an ASGI server chunks them).
    """

    __slots__ = ("chunked",)

    def __init__(self, chunked: bool = False) -> None:
        self.chunked = chunked

    def frame(self, payload: bytes, head: dict[str, Any] | None) -> bytes:
        block = b"data: " + payload + b"\n\n"
        if head is not None:
            block = event_block(head["id"], head["event"], block)
        return chunk(block) if self.chunked else block

    def wrap(self, events: bytes) -> bytes:
        """``events`` (whole events, unframed) as this framing sends them in one write."""
        return chunk(events) if self.chunked and events else events


SSE_FRAMING = SseFraming()
CHUNKED_SSE = SseFraming(chunked=True)

Frame = tuple[bytes, bytes, dict[str, Any]]
"""(payload, wire bytes, head) of one event: what a stream offers its outbox."""


def frames(
    events: Sequence[Event], epoch: str, prev: int, cover: int, start: int = 0, resume: str = ""
) -> list[Frame]:
    """The events of one period covering ``(prev, cover]`` from index ``start`` on, framed."""
    out = []
    for index in range(start, len(events)):
        name, data = events[index]
        payload = orjson.dumps(data)
        head = {"id": str(EventId(epoch, prev, cover, index, resume)), "event": name}
        out.append((payload, SSE_FRAMING.frame(payload, head), head))
    return out


def encode_events(
    events: Sequence[Event], epoch: str, prev: int, cover: int, start: int = 0
) -> bytes:
    """The bytes of :func:`frames`."""
    return b"".join(wire for _, wire, _ in frames(events, epoch, prev, cover, start))


class Batch:
    """The frames of one period (or of a stream's start), framed for each framing once.

    Every stream of a watch group gets the same :class:`Batch`: a stream whose outbox
    writes straight through gets :meth:`joined` (all events in one write, the same
    bytes object for every stream of that framing); one that is behind gets the
    events one by one (:meth:`wires`) into its outbox.  ``counts`` is how many events
    of each name (``message`` for unnamed ones) it holds.
    """

    __slots__ = ("_joined", "_wires", "counts", "frames")

    def __init__(self, frames: list[Frame]) -> None:
        self.frames = frames
        self._joined: dict[SseFraming, bytes] = {}
        self._wires: dict[SseFraming, list[bytes]] = {}
        counts: dict[str, int] = {}
        for _, _, head in frames:
            name = head["event"] or "message"
            counts[name] = counts.get(name, 0) + 1
        self.counts = list(counts.items())

    def __len__(self) -> int:
        return len(self.frames)

    def joined(self, framing: SseFraming) -> bytes:
        """Every event, in one write of ``framing``."""
        out = self._joined.get(framing)
        if out is None:
            out = self._joined[framing] = framing.wrap(b"".join(w for _, w, _ in self.frames))
        return out

    def wires(self, framing: SseFraming) -> list[bytes]:
        """Each event alone, as ``framing`` sends it."""
        out = self._wires.get(framing)
        if out is None:
            out = self._wires[framing] = [framing.wrap(w) for _, w, _ in self.frames]
        return out


def gap_event(last_event_id: str | None, message: str) -> Event:
    """``event: gap``: what the client missed cannot be sent; it fills the hole from history."""
    lost = last_event_id[:MAX_EVENT_ID] if last_event_id is not None else None
    return "gap", {"code": "gap", "message": message, "lastEventId": lost}


def encode_gap(epoch: str, at: int, last_event_id: str | None, message: str) -> bytes:
    """The bytes of a :func:`gap_event` at position ``at``."""
    return encode_events([gap_event(last_event_id, message)], epoch, at, at)


def error_body(code: str, message: str) -> tuple[int, bytes]:
    """(HTTP status, JSON body) of a request refused before its stream starts."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return ERROR_STATUS.get(code, 400), body


# --------------------------------------------------------------------------- the client side


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    """One event as a client sees it (``event`` is ``message`` when unnamed)."""

    event: str
    data: str
    id: str | None


class EventParser:
    """Bytes of an event stream in, :class:`ParsedEvent` out (comments are counted only).

    ``feed(chunk)`` returns the events completed by ``chunk``; ``last_id`` is what a
    browser would send as ``Last-Event-ID``.
    """

    def __init__(self, max_line: int = 1 << 20, max_data: int = 1 << 22) -> None:
        self.max_line, self.max_data = max_line, max_data
        self._buffer = b""
        self._data: list[str] = []
        self._size = 0
        self._event = ""
        self.last_id: str | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> list[ParsedEvent]:
        self._buffer += chunk
        out: list[ParsedEvent] = []
        while True:
            cut = self._buffer.find(b"\n")
            if cut < 0:
                if len(self._buffer) > self.max_line:
                    raise InputError(f"an event-stream line is longer than {self.max_line} bytes")
                return out
            line = self._buffer[:cut].rstrip(b"\r").decode("utf-8", "replace")
            self._buffer = self._buffer[cut + 1 :]
            event = self._line(line)
            if event is not None:
                out.append(event)

    def _line(self, line: str) -> ParsedEvent | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = ParsedEvent(self._event or "message", "\n".join(self._data), self.last_id)
            self._data, self._size, self._event = [], 0, ""
            return event
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._size += len(value)
            if self._size > self.max_data:
                raise InputError(f"an event is longer than {self.max_data} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


__all__ = [
    "CHUNKED_SSE",
    "ERROR_STATUS",
    "HEADERS",
    "KEEP_ALIVE",
    "MEDIA_TYPE",
    "SSE_FRAMING",
    "Batch",
    "Event",
    "EventId",
    "EventParser",
    "Frame",
    "Mark",
    "ParsedEvent",
    "SseFraming",
    "TimeFormat",
    "TooLarge",
    "WatchParams",
    "chunk",
    "data_block",
    "encode_events",
    "encode_gap",
    "error_body",
    "event_block",
    "format_marks",
    "frames",
    "gap_event",
    "parse_duration",
    "parse_marks",
    "parse_query",
    "parse_tz",
]
