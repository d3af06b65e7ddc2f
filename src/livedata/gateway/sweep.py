"""One loop timer for a clock that many connections run: :class:`Sweep`.

Every connection of a server that waits for the same kind of thing with the same
timeout (its request head, the next request on a keep-alive connection, the pong to
a keep-alive ping, the peer's close frame) has its deadline in one
:class:`~livedata.gateway.connlimits.Deadlines` (insertion order is deadline order,
so starting, stopping and taking the expired cost O(1) each), and one timer of the
event loop serves all of them: no ``call_later`` per connection, no timer object
per idle connection, no timer heap of thousands of entries to keep in order.

The sweep runs at the earliest deadline, at most every ``interval`` seconds
(``timeout / 10``, 1 s at most), so an expired connection is handled within 10 %
of its timeout (1 s at most) after its deadline; it hands at most ``batch``
(default :data:`BATCH`) expired connections to ``expire`` per loop turn and
continues on the next turn, so 10,000 connections opened together and expiring
together do not stop the loop for everyone else.  A sweep whose ``expire`` costs
the loop more than its own call (a keep-alive ping is cheap to send, but its pong
is read and parsed in the next turn) takes a smaller ``batch``: the work of a
second's deadlines then goes out in many short turns with the other connections'
I/O between them, instead of a few long ones every second (the 1 s interval
gathers all the deadlines of that second into one sweep).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

from livedata.gateway.connlimits import Deadlines

BATCH = 256
"""Expired connections one sweep hands out per loop turn at most."""


class Sweep:
    """The deadlines of many connections with one ``timeout``, and one timer for them all.

    ``start(conn, loop)`` starts (or restarts) ``conn``'s clock, ``stop(conn)`` stops it;
    when it runs out, ``expire(conn)`` is called once (see the module doc for when),
    at most ``batch`` of them per loop turn.
    """

    __slots__ = ("_loop", "_timer", "batch", "deadlines", "expire", "interval")

    def __init__(self, timeout: float, expire: Callable[[Any], None], batch: int = BATCH) -> None:
        self.deadlines = Deadlines(timeout)
        self.expire = expire
        self.batch = batch
        self.interval = min(1.0, timeout / 10)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Handle | None = None

    @property
    def timeout(self) -> float:
        return self.deadlines.timeout

    def __len__(self) -> int:
        return len(self.deadlines)

    def __contains__(self, conn: Hashable) -> bool:
        return conn in self.deadlines

    def start(self, conn: Hashable, loop: asyncio.AbstractEventLoop) -> None:
        """``conn``'s clock starts now (restarts if it was running)."""
        now = loop.time()
        self.deadlines.start(conn, now)
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_at(now + self.deadlines.timeout, self._sweep)

    def stop(self, conn: Hashable) -> None:
        self.deadlines.stop(conn)

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        expired = self.deadlines.expired(loop.time(), self.batch)
        for conn in expired:
            self.expire(conn)
        if self._timer is not None:  # expire() started a clock, which armed the timer
            self._timer.cancel()
            self._timer = None
        if len(expired) == self.batch:
            self._timer = loop.call_soon(self._sweep)
        elif (due := self.deadlines.next_due()) is not None:
            self._timer = loop.call_at(max(due, loop.time() + self.interval), self._sweep)
