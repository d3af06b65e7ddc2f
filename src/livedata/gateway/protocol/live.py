"""The live WebSocket protocol, sans-I/O: client messages in, events out.

:class:`LiveSession` is fed each client message (``receive_text`` / ``receive_bytes``
with the time it arrived) and answers with one event:

- :class:`Subscribe`: a valid ``INIT_FIELD_LIST`` (fields, optional ``since``,
  optional rate control); its ``warning`` is an ``unknown_fields`` error to send
  first (the known fields are kept);
- :class:`Reply`: a recoverable error to send; the connection and the previous
  field list stay;
- :class:`Fatal`: an error to send, then close with ``close_code``.

It owns no socket, task or clock: the asyncio layer
(:mod:`livedata.gateway.live`) moves the bytes.  The messages, codes and close
codes are documented in :mod:`livedata.gateway.live`.

Under stress: a client message costs at most :data:`MAX_MESSAGE` bytes of parsing;
more than :data:`RATE_MAX` messages in :data:`RATE_WINDOW` seconds is fatal
(``rate_limited``, 1008), and the session keeps at most that many timestamps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from livedata import observe
from livedata.gateway.rate import RateLimiter
from livedata.model import MsgType, valid_id

MAX_MESSAGE = 64 * 1024
MAX_FIELDS = 500
RATE_WINDOW = 10.0
RATE_MAX = 20
CLOSE_NOT_FOUND = 4404


def error(code: str, message: str) -> str:
    """The ERROR message (and count it by code)."""
    observe.CLIENT_ERRORS.labels(code).inc()
    return orjson.dumps({"type": "ERROR", "code": code, "message": message}).decode()


@dataclass(frozen=True, slots=True)
class Reply:
    """A recoverable error: send ``text``; nothing else changes."""

    text: str


@dataclass(frozen=True, slots=True)
class Fatal:
    """Send the error ``code``/``message``, then close with ``close_code``."""

    code: str
    message: str
    close_code: int

    @property
    def text(self) -> str:
        return error(self.code, self.message)


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Replace the subscription: ``fields``; recover after ``since``; thin out with ``limiter``."""

    fields: tuple[str, ...]
    since: tuple[str, int] | None
    limiter: RateLimiter | None
    warning: str | None = None


Event = Subscribe | Reply | Fatal


def parse_field_list(payload: Any) -> tuple[str, ...]:
    """Validate an INIT_FIELD_LIST payload; raises ``ValueError(code, message)``."""
    if not isinstance(payload, list) or not all(isinstance(f, str) for f in payload):
        raise ValueError("invalid_field_list", "payload must be a list of field names (strings)")
    if len(payload) > MAX_FIELDS:
        raise ValueError("too_many_fields", f"{len(payload)} fields; at most {MAX_FIELDS}")
    bad = [f for f in payload if not valid_id(f)]
    if bad:
        raise ValueError("invalid_field_list", f"invalid field names: {bad[:5]}")
    return tuple(dict.fromkeys(payload))


def parse_since(value: Any) -> tuple[str, int] | None:
    """Validate the optional ``since`` of INIT_FIELD_LIST; raises ``ValueError(code, message)``."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("epoch"), str)
        or len(value["epoch"]) > 64
        or not isinstance(value.get("seq"), int)
        or isinstance(value["seq"], bool)
        or value["seq"] < 0
    ):
        raise ValueError("invalid_since", 'since must be {"epoch": "<string>", "seq": <int >= 0>}')
    return value["epoch"], value["seq"]


def parse_rate(fields: tuple[str, ...], data: dict[str, Any]) -> RateLimiter | None:
    """The rate control an INIT_FIELD_LIST asks for (``maxRate``, ``aggregate``), if any."""
    max_rate, mode = data.get("maxRate"), data.get("aggregate", "last")
    if max_rate is None:
        if "aggregate" in data:
            raise ValueError("invalid_rate", "aggregate needs maxRate")
        return None
    if not isinstance(max_rate, int | float) or isinstance(max_rate, bool):
        raise ValueError("invalid_rate", "maxRate must be a number of messages per second")
    try:
        return RateLimiter(fields, float(max_rate), str(mode))
    except ValueError as exc:
        raise ValueError("invalid_rate", str(exc)) from None


def check_msg_type(msg_type: str | None) -> Fatal | None:
    """``not_found`` (4404) for a ``msgType`` query parameter that is not a message type."""
    if msg_type in set(MsgType):
        return None
    return Fatal(
        "not_found",
        f"unknown msgType {msg_type!r}: use one of {', '.join(MsgType)}",
        CLOSE_NOT_FOUND,
    )


class LiveSession:
    """One connection's client side of the protocol, after the machine was found."""

    __slots__ = ("known", "msg_type", "recent")

    def __init__(self, msg_type: str, known: Iterable[str]) -> None:
        self.msg_type = msg_type
        self.known = frozenset(known)
        self.recent: list[float] = []
        """Arrival times of the client's messages in the last RATE_WINDOW seconds (a list:
        at most RATE_MAX + 1 of them, and an idle connection keeps no deque block)."""

    def _limited(self, now: float) -> Fatal | None:
        recent = self.recent
        recent.append(now)
        old = 0
        while now - recent[old] > RATE_WINDOW:
            old += 1
        if old:
            del recent[:old]
        if len(recent) > RATE_MAX:
            return Fatal("rate_limited", f"more than {RATE_MAX} messages in 10 s", 1008)
        return None

    def receive_bytes(self, data: bytes, now: float) -> Event:
        """A binary message: not part of the protocol."""
        return self._limited(now) or Fatal(
            "unsupported_data", "binary messages are not supported", 1003
        )

    def receive_text(self, text: str, now: float) -> Event:
        """A text message from the client, received at ``now`` (seconds, monotonic)."""
        limited = self._limited(now)
        if limited is not None:
            return limited
        if len(text) > MAX_MESSAGE or len(text.encode()) > MAX_MESSAGE:
            return Fatal("message_too_big", f"messages are limited to {MAX_MESSAGE} bytes", 1009)
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            return Reply(error("invalid_json", "message is not valid JSON"))
        if not isinstance(data, dict) or data.get("type") != "INIT_FIELD_LIST":
            kind = data.get("type") if isinstance(data, dict) else None
            return Reply(
                error("unknown_type", f"unknown message type {kind!r}; expected INIT_FIELD_LIST")
            )
        try:
            fields = parse_field_list(data.get("payload"))
            since = parse_since(data.get("since"))
            limiter = parse_rate(fields, data)
        except ValueError as exc:
            code, message = exc.args
            return Reply(error(code, message))
        unknown = [f for f in fields if f not in self.known]
        warning = (
            error("unknown_fields", f"{self.msg_type} has no fields {unknown[:20]}")
            if unknown
            else None
        )
        return Subscribe(fields, since, limiter, warning)
