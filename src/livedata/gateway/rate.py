"""Rate control for one live subscription: at most N messages a second, aggregated.

Sans-I/O: :meth:`RateLimiter.add` takes each message's values as they arrive,
:meth:`RateLimiter.flush` (called every ``1 / max_rate`` seconds by the
connection) returns the LIVE_DATA message that sums up the interval, or ``None``
when nothing arrived.  Modes:

``last``    the newest value of each field (the plain protocol, thinned out)
``avg``     the mean of each numeric field over the interval (strings: the newest)
``minmax``  ``{"min": …, "max": …}`` per numeric field, so a 100 Hz signal watched
            at 2 Hz keeps every spike

Every flushed message carries the ``ts``, ``seq`` and ``epoch`` of the newest
message of the interval and ``"count"``: how many messages it sums up.  Memory is
constant per subscription (running sums, not a list).
"""

from __future__ import annotations

from typing import Any

MODES = ("last", "avg", "minmax")
MAX_RATE = 100.0
MIN_RATE = 0.01
"""One message per 100 s at the least (a tiny maxRate would silence the subscription)."""


class RateLimiter:
    def __init__(self, fields: tuple[str, ...], max_rate: float, mode: str = "last") -> None:
        if mode not in MODES:
            raise ValueError(f"aggregate must be one of {', '.join(MODES)}")
        if not MIN_RATE <= max_rate <= MAX_RATE:
            raise ValueError(f"maxRate must be from {MIN_RATE:g} to {MAX_RATE:g}")
        self.fields = fields
        self.interval = 1.0 / max_rate
        self.mode = mode
        self._reset()

    def _reset(self) -> None:
        self.count = 0
        self.head: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.lows: dict[str, float] = {}
        self.highs: dict[str, float] = {}

    def add(self, values: dict[str, Any], head: dict[str, Any]) -> None:
        """Take one message of the channel (its values and ts/seq/epoch)."""
        self.count += 1
        self.head = head
        for name in self.fields:
            if name not in values:
                continue
            value = values[name]
            self.last[name] = value
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.sums[name] = self.sums.get(name, 0.0) + value
                self.counts[name] = self.counts.get(name, 0) + 1
                if name not in self.lows or value < self.lows[name]:
                    self.lows[name] = value
                if name not in self.highs or value > self.highs[name]:
                    self.highs[name] = value

    def flush(self) -> dict[str, Any] | None:
        """The message for the interval that ends now, or ``None`` if it was empty."""
        if not self.count:
            return None
        payload: dict[str, Any]
        if self.mode == "avg":
            payload = {
                name: self.sums[name] / self.counts[name] if name in self.counts else value
                for name, value in self.last.items()
            }
        elif self.mode == "minmax":
            payload = {
                name: {"min": self.lows[name], "max": self.highs[name]}
                if name in self.lows
                else value
                for name, value in self.last.items()
            }
        else:
            payload = dict(self.last)
        message = {"type": "LIVE_DATA", "payload": payload, **self.head, "count": self.count}
        self._reset()
        return message
