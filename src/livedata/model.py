"""Plain data that flows through the pipeline; no I/O here.

A machine sends :class:`DeviceMessage` objects (one per message type and second);
ingest turns each into one :class:`Record` of decoded values.  Records are what the
store keeps, what the log carries and what distribute publishes on the live channel
named by :func:`live_channel`.  Wherever a record goes through the log or to disk
(the Kafka log, the spill journal) it travels in one shape, the record envelope
``{"tenant", "chassis", "msgType", "ts", "kind", "values"}``, with one codec
(:func:`encode_records` and :func:`decode_records`).  A record read from the log keeps
its values as the JSON they arrived in (:attr:`Record.raw`) and parses them only when
``values`` is first read: distribute passes that JSON on to the live channel as it is,
and the alert role reads the values only of records a rule could match.  On a live
channel distribute publishes only what live readers use, ``ts``, ``values`` and the
channel's ``seq``/``epoch``
(:class:`~livedata.bus.base.LiveMessage`): as an object in process, encoded only where
a pub/sub leaves the process.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, TypeVar

import msgspec
import orjson
from pydantic import AfterValidator, Field

Value = float | int | str
"""A decoded value: numbers for signals, strings for text metrics."""


_T = TypeVar("_T")


def slot_constructor(cls: type[_T]) -> Callable[..., _T]:
    """A function making a ``cls`` (a slots dataclass) from every field, positionally in
    field order, by setting its slots directly: a frozen dataclass's ``__init__`` costs an
    ``object.__setattr__`` call per field (measured: 1.7x the time for 4-5 fields).
    The object is the same (equal, still frozen); defaults, ``__post_init__`` and any other
    ``__init__`` logic are skipped, so it is for classes without them.  Generated once per
    class from its field names (identifiers of our own classes, never input)."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if any(name.startswith("_") for name in names):
        raise TypeError(f"{cls.__name__}: field names starting with '_' are not supported")
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = ["    _obj = _new(_cls)"]
    for n, name in enumerate(names):
        namespace[f"_set{n}"] = getattr(cls, name).__set__
        lines.append(f"    _set{n}(_obj, {name})")
    lines.append("    return _obj")
    bound = ", ".join(f"{key}={key}" for key in namespace)  # locals, not global lookups
    lines.insert(0, f"def make({', '.join(names)}, *, {bound}):")
    exec(compile("\n".join(lines) + "\n", f"<constructor of {cls.__name__}>", "exec"), namespace)
    make: Callable[..., _T] = namespace["make"]
    return make


class MsgType(enum.StrEnum):
    """The message types of the reference system."""

    VEHICLE_CAN = "vehicle_can"
    """A batch of raw CAN frames; decoded with the machine's DBC file."""
    CLIENT_RAW_DATA = "client_raw_data"
    """A JSON object of ready values (app metrics, GPS); not decoded."""


class Kind(enum.StrEnum):
    """Whether a record is live or late: only ``realTime`` is pushed to browsers."""

    REALTIME = "realTime"
    BACKFILL = "backfill"


class Frame(NamedTuple):
    """One raw CAN frame as read from the bus (a named tuple: made a dozen times per
    message, at 2.4x the speed of a frozen dataclass)."""

    ts: int
    """Milliseconds since the epoch."""
    arbitration_id: int
    is_extended: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """What a device sends once per second for one message type.

    ``frames`` is set for ``vehicle_can``, ``values`` for ``client_raw_data``.
    The tenant and chassis come from the device link (the connection), never from
    the payload.
    """

    tenant: str
    chassis: str
    msg_type: MsgType
    ts: int
    kind: Kind = Kind.REALTIME
    frames: tuple[Frame, ...] = ()
    values: dict[str, Any] = field(default_factory=dict)
    payload: bytes | None = field(default=None, compare=False, repr=False)
    """The ``vehicle_can`` wire payload the frames were read from (:func:`livedata.codec.decode`
    keeps it), so the raw frames are stored without encoding them again; ``None`` for a
    message made in process."""


@dataclass(slots=True)
class Record:
    """Decoded values of one machine, message type and timestamp."""

    tenant: str
    chassis: str
    msg_type: str
    ts: int
    kind: Kind
    values: dict[str, Value]
    raw: bytes | None = field(default=None, compare=False, repr=False)
    """``values`` as a JSON object, for a record read from the log
    (:func:`decode_records`): such a record parses it on the first read of ``values``
    (``ValueError`` if the JSON is not an object of values); ``None`` for a record made
    in process."""

    @property
    def channel(self) -> str:
        return live_channel(self.tenant, self.chassis, self.msg_type)

    if not TYPE_CHECKING:  # for mypy, ``values`` is always set

        def __getattr__(self, name: str) -> Any:
            """Only called for an unset slot: ``values`` of a record decoded with its values
            left as JSON (parsed here, once)."""
            raw = self.raw
            if name != "values" or raw is None:
                raise AttributeError(name)
            values = orjson.loads(raw)
            if type(values) is not dict:
                raise ValueError("values is not an object")
            self.values = values
            return values


# --- the record envelope: one wire shape for the log and the spill journal


_KINDS = {kind.value: kind for kind in Kind}
"""A kind by its wire name: a dict lookup costs a quarter of ``Kind(name)``."""


class _Envelope(msgspec.Struct):
    """The envelope as :func:`decode_records` reads it: ``values`` kept as JSON, not parsed."""

    tenant: str
    chassis: str
    msgType: str  # the wire name
    ts: int
    kind: str
    values: msgspec.Raw


_ENVELOPES = msgspec.json.Decoder(list[_Envelope])
_OBJECT = ord("{")


def _with_raw_values(envelope: _Envelope) -> Record:
    """The record of an envelope, ``values`` left as JSON (see :attr:`Record.raw`);
    ``ValueError`` if they are not an object."""
    raw = bytes(envelope.values)
    if raw[0] != _OBJECT:
        raise ValueError("values is not an object")
    record = Record.__new__(Record)
    record.tenant, record.chassis, record.msg_type = (
        envelope.tenant,
        envelope.chassis,
        envelope.msgType,
    )
    record.ts, record.kind, record.raw = envelope.ts, _KINDS[envelope.kind], raw
    return record


def from_envelope(obj: dict[str, Any]) -> Record:
    """The record of a decoded envelope; ``KeyError``/``ValueError``/``TypeError`` if it is not one."""
    values = obj["values"]
    if type(values) is not dict:
        raise TypeError("values is not an object")
    return Record(
        obj["tenant"], obj["chassis"], obj["msgType"], obj["ts"], _KINDS[obj["kind"]], values
    )


def encode_records(records: Sequence[Record]) -> bytes:
    """Records as one JSON array of envelopes: a Kafka batch value, a spill-journal row.

    One ``orjson.dumps`` for the whole batch (``kind`` is a ``StrEnum``: orjson writes its
    value), the envelopes made inline: a third of the CPU of one call per record."""
    return orjson.dumps(
        [
            {
                "tenant": r.tenant,
                "chassis": r.chassis,
                "msgType": r.msg_type,
                "ts": r.ts,
                "kind": r.kind,
                "values": r.values,
            }
            for r in records
        ]
    )


def decode_records(data: bytes | str, *, values_as_json: bool = False) -> list[Record]:
    """The records of :func:`encode_records` (or of one envelope alone, or the arrays
    ``[tenant, chassis, msg_type, ts, kind, values]`` a spill journal written before the
    envelope kept); ``KeyError``/``ValueError``/``TypeError`` if it is none of these.

    ``values_as_json`` (the log's consumers): the envelopes of :func:`encode_records` are
    read without parsing their values; each record keeps its values' JSON
    (:attr:`Record.raw`, a copy of its slice of ``data``) and parses it when ``values`` is
    first read, so a reader that needs the values of few records (or none: distribute
    publishes that JSON as it is) pays for those only.  A reader that needs every
    record's values (the spill journal's drainer) parses the batch at once: parsing each
    record's values on its own costs about 1.7x as much.  Values that are not a JSON
    object are refused here either way.  Other shapes (an envelope alone, the old arrays,
    JSON with spaces) are parsed whole."""
    if values_as_json and data[:2] in (b"[{", "[{"):
        try:
            envelopes = _ENVELOPES.decode(data)
        except RecursionError:  # msgspec's answer to JSON nested too deep; orjson's is this
            raise ValueError("JSON nested too deep") from None
        return [_with_raw_values(envelope) for envelope in envelopes]
    obj = orjson.loads(data)
    if type(obj) is dict:
        return [from_envelope(obj)]
    if type(obj) is not list:
        raise TypeError("not a record envelope or a list of them")
    if obj and type(obj[0]) is list:
        records = [
            Record(tenant, chassis, msg_type, ts, _KINDS[kind], values)
            for tenant, chassis, msg_type, ts, kind, values in obj
        ]
        if any(type(record.values) is not dict for record in records):
            raise TypeError("values is not an object")
        return records
    return [from_envelope(item) for item in obj]


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")


def valid_id(value: str) -> bool:
    """Whether ``value`` may name a tenant, machine, message type or field."""
    return bool(_ID.match(value))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def plain_text(value: str) -> str:
    """``value`` if it has no control characters (NUL, line breaks, terminal escapes);
    ``ValueError`` otherwise.  For names shown in pages, logs and CSV exports."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (NUL, line breaks, escapes)")
    return value


Name = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(plain_text)]
"""A name given by a user (group, DBC file, token, rule): 1-200 characters, no controls."""
Unit = Annotated[str, Field(max_length=32), AfterValidator(plain_text)]


def live_channel(tenant: str, chassis: str, msg_type: str) -> str:
    """The pub/sub channel of the reference system."""
    return f"live-stream/{tenant}/consumer-{chassis}/{msg_type}"
