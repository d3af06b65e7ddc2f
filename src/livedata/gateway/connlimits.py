"""Connection-level limits, sans I/O: how many connections, and which one gives way.

:func:`accept_batch` takes at most a batch of connections from a listening socket,
so one loop turn never accepts a whole flood (the server's listener calls it once
per turn while the socket is readable).

One :class:`ConnectionGate` per server process decides, for every accepted TCP
connection, whether it may stay.  The server layer (today uvicorn's protocols in
:mod:`livedata.gateway.server`; a dedicated live WebSocket server can use the same
gate) tells it when a connection opens, starts or finishes a request, and closes.

Under stress:

- at most ``limit`` connections are open.  The limit is set below the process's
  file-descriptor limit (:func:`default_limit`), so ``accept()`` never fails with
  ``EMFILE`` because of clients and the databases can still open their files;
- when a new connection arrives at the limit, the connection that has been **idle**
  the longest gives way (idle: no request in progress -- never sent a complete
  request head, or between two keep-alive requests).  A request being served, a
  live WebSocket or an SSE stream is never closed for a newcomer, so a flood of
  idle connections cannot starve ``/healthz`` or a login: each newcomer pushes
  out the oldest idle attacker;
- when every connection is busy, the newcomer is refused (HTTP 503 and closed at
  once, counted in ``livedata_connections_refused_total{reason}``).

:class:`Deadlines` keeps one deadline per connection (same timeout for all, so in
arrival order) for a single periodic sweep, instead of a timer per connection;
the sweep hands out at most a batch per call, so a burst of expired connections
is closed over several loop turns.

:class:`RepeatLog` logs a repeated failure once per interval with a count instead
of once per event.
"""

from __future__ import annotations

import errno
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

FD_RESERVE_MIN = 256
"""File descriptors kept free for databases, logs and outgoing connections (at least)."""


def raise_fd_limit() -> int:
    """Raise the soft file-descriptor limit to the hard one; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def default_limit(fd_limit: int) -> int:
    """Connections allowed under ``fd_limit`` descriptors: 90 %, keeping at least
    :data:`FD_RESERVE_MIN` free (and at least 16 connections)."""
    reserve = max(FD_RESERVE_MIN, fd_limit // 10)
    return max(16, fd_limit - reserve)


OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
"""``accept()`` errors that retrying at once cannot fix: the caller pauses accepting."""


def accept_batch(accept: Callable[[], T], limit: int) -> tuple[list[T], OSError | None]:
    """Call ``accept`` at most ``limit`` times: (what it returned, the error that stopped it).

    Stops early when the queue is empty (``BlockingIOError``) or when ``accept``
    runs out of descriptors or memory (:data:`OUT_OF_RESOURCES`: returned, so the
    caller can pause instead of retrying in a busy loop); a connection the client
    gave up while it waited (``ECONNABORTED``) or an interrupted call counts as an
    attempt and is skipped.  Anything else is raised."""
    accepted: list[T] = []
    for _ in range(limit):
        try:
            accepted.append(accept())
        except BlockingIOError:
            break
        except (ConnectionAbortedError, InterruptedError):
            continue
        except OSError as exc:
            if exc.errno in OUT_OF_RESOURCES:
                return accepted, exc
            raise
    return accepted, None


@dataclass(frozen=True, slots=True)
class Admission:
    """The gate's answer for a new connection."""

    admit: bool
    evict: Hashable | None = None
    """An idle connection the caller must close to make room (``None``: none)."""


class ConnectionGate:
    """Open connections of one process, at most ``limit``; the oldest idle gives way."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the connection limit must be at least 1")
        self.limit = limit
        self._open: set[Hashable] = set()
        self._idle: OrderedDict[Hashable, None] = OrderedDict()
        self.evicted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._open)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def opened(self, conn: Hashable) -> Admission:
        """A new connection (idle until its first request head is complete)."""
        evict: Hashable | None = None
        if len(self._open) >= self.limit:
            if not self._idle:
                self.refused += 1
                return Admission(False)
            evict, _ = self._idle.popitem(last=False)
            self._open.discard(evict)
            self.evicted += 1
        self._open.add(conn)
        self._idle[conn] = None
        return Admission(True, evict)

    def busy(self, conn: Hashable) -> None:
        """``conn`` started a request (or became a WebSocket): it is not evicted."""
        self._idle.pop(conn, None)

    def idle(self, conn: Hashable) -> None:
        """``conn`` finished its request and waits for the next (keep-alive)."""
        if conn in self._open:
            self._idle.pop(conn, None)
            self._idle[conn] = None

    def closed(self, conn: Hashable) -> None:
        self._open.discard(conn)
        self._idle.pop(conn, None)


class Deadlines:
    """Connections that must finish something (their request head) within ``timeout`` s.

    All share one timeout, so insertion order is deadline order: adding, removing and
    taking the expired ones cost O(1) each, with no timer per connection."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._due: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, conn: Hashable) -> bool:
        return conn in self._due

    def start(self, conn: Hashable, now: float) -> None:
        """``conn``'s clock starts now (restarts if it was running)."""
        self._due.pop(conn, None)
        self._due[conn] = now + self.timeout

    def stop(self, conn: Hashable) -> None:
        self._due.pop(conn, None)

    def expired(self, now: float, limit: int) -> list[Hashable]:
        """At most ``limit`` connections whose deadline has passed, oldest first (removed)."""
        out: list[Hashable] = []
        while self._due and len(out) < limit:
            conn, due = next(iter(self._due.items()))
            if due > now:
                break
            del self._due[conn]
            out.append(conn)
        return out

    def next_due(self) -> float | None:
        """The earliest deadline, or ``None`` when no clock runs."""
        return next(iter(self._due.values()), None)


class RepeatLog:
    """Logs a repeated event once per ``interval`` seconds, with how often it happened."""

    def __init__(self, logger: logging.Logger, message: str, interval: float = 10.0) -> None:
        self.logger, self.message, self.interval = logger, message, interval
        self._count = 0
        self._next = 0.0

    def event(self, detail: str = "", now: float | None = None) -> bool:
        """Count one event; log (and return True) when the interval has passed."""
        now = time.monotonic() if now is None else now
        self._count += 1
        if now < self._next:
            return False
        self.logger.warning(
            "%s (%d times since the last report)%s",
            self.message,
            self._count,
            f": {detail}" if detail else "",
        )
        self._count = 0
        self._next = now + self.interval
        return True
