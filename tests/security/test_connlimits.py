"""The connection gate and the repeated-failure log, sans I/O."""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
from collections.abc import Callable

import pytest

from livedata.errors import ConfigError
from livedata.gateway.connlimits import (
    ConnectionGate,
    Deadlines,
    RepeatLog,
    accept_batch,
    default_limit,
)
from livedata.gateway.server import event_loop_factory


def test_gate_admits_up_to_the_limit_then_evicts_the_oldest_idle() -> None:
    """At the limit a newcomer pushes out the connection idle the longest."""
    gate = ConnectionGate(3)
    for conn in ("a", "b", "c"):
        assert gate.opened(conn).admit
    gate.busy("a")
    admission = gate.opened("d")
    assert admission.admit and admission.evict == "b"
    assert len(gate) == 3 and gate.evicted == 1


def test_gate_never_evicts_busy_connections_and_refuses_when_all_are_busy() -> None:
    """Requests in progress and WebSockets stay; the newcomer is refused instead."""
    gate = ConnectionGate(2)
    for conn in ("a", "b"):
        gate.opened(conn)
        gate.busy(conn)
    admission = gate.opened("c")
    assert not admission.admit and admission.evict is None
    assert gate.refused == 1 and len(gate) == 2
    gate.idle("a")  # a keep-alive connection between requests may give way again
    assert gate.opened("c").evict == "a"


def test_gate_idle_order_follows_the_last_request() -> None:
    """A connection that just finished a request is the last to be evicted."""
    gate = ConnectionGate(3)
    for conn in ("a", "b", "c"):
        gate.opened(conn)
    gate.busy("a")
    gate.idle("a")
    assert gate.opened("d").evict == "b"
    assert gate.opened("e").evict == "c"
    assert gate.opened("f").evict == "a"


def test_gate_forgets_closed_connections() -> None:
    """Closing frees a place; closing twice or an unknown one is harmless."""
    gate = ConnectionGate(1)
    gate.opened("a")
    gate.closed("a")
    gate.closed("a")
    gate.closed("zz")
    gate.idle("zz")  # an unknown connection never becomes idle
    assert len(gate) == 0 and gate.idle_count == 0
    assert gate.opened("b").evict is None


def test_gate_limit_must_be_positive() -> None:
    """A zero limit is a configuration error."""
    with pytest.raises(ValueError):
        ConnectionGate(0)


def test_default_limit_keeps_descriptors_free() -> None:
    """90 % of the fd limit, at least 256 descriptors kept free, at least 16 connections."""
    assert default_limit(20_000) == 18_000
    assert default_limit(1024) == 768
    assert default_limit(100) == 16


def test_repeat_log_reports_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """10,000 failures in a burst make one line, the next line carries the count."""
    logger = logging.getLogger("livedata.test.repeat")
    repeat = RepeatLog(logger, "accept failed", interval=10.0)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logged = [repeat.event("EMFILE", now=100.0 + n / 1000) for n in range(10_000)]
        assert repeat.event(now=111.0)
    assert sum(logged) == 1
    assert len(caplog.records) == 2
    assert "(1 times" in caplog.records[0].getMessage()
    assert "(10000 times" in caplog.records[1].getMessage()


def _queue(*items: object) -> Callable[[], object]:
    """An ``accept`` that returns or raises ``items`` in turn, then finds the queue empty."""
    pending = list(items)

    def accept() -> object:
        if not pending:
            raise BlockingIOError(errno.EAGAIN, "empty")
        item = pending.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    return accept


def test_accept_batch_takes_at_most_the_batch_per_call() -> None:
    """A full queue gives ``limit`` connections per call, the rest on later calls."""
    accept = _queue(*range(10))
    assert accept_batch(accept, 4) == ([0, 1, 2, 3], None)
    assert accept_batch(accept, 4) == ([4, 5, 6, 7], None)
    assert accept_batch(accept, 4) == ([8, 9], None)
    assert accept_batch(accept, 4) == ([], None)


def test_accept_batch_skips_aborted_connections_within_the_batch() -> None:
    """A connection the client gave up is skipped but counts against the batch."""
    aborted = ConnectionAbortedError(errno.ECONNABORTED, "aborted")
    accept = _queue("a", aborted, aborted, "b", "c")
    assert accept_batch(accept, 3) == (["a"], None)
    assert accept_batch(accept, 3) == (["b", "c"], None)


def test_accept_batch_stops_at_out_of_descriptors_and_raises_other_errors() -> None:
    """EMFILE ends the batch and is returned with what was accepted before it; EBADF raises."""
    emfile = OSError(errno.EMFILE, "Too many open files")
    assert accept_batch(_queue("a", emfile, "b"), 8) == (["a"], emfile)
    with pytest.raises(OSError, match="bad"):
        accept_batch(_queue(OSError(errno.EBADF, "bad")), 8)


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto and uvloop give uvloop's loop when installed, asyncio asyncio's; uvloop missing is a
    configuration error for ``uvloop`` and falls back to asyncio for ``auto``."""
    uvloop = pytest.importorskip("uvloop")
    for choice, kind in (("auto", uvloop.Loop), ("uvloop", uvloop.Loop), ("asyncio", None)):
        loop = event_loop_factory(choice)()
        try:
            assert isinstance(loop, kind) if kind else not isinstance(loop, uvloop.Loop)
        finally:
            loop.close()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` sees when absent
    assert event_loop_factory("auto") is asyncio.new_event_loop
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        event_loop_factory("uvloop")


def test_deadlines_expire_in_order_a_batch_at_a_time() -> None:
    """Late connections come out oldest first, at most ``limit`` per call; stopped or
    restarted clocks are not (or later) reported."""
    deadlines = Deadlines(10.0)
    for n in range(6):
        deadlines.start(f"c{n}", now=float(n))
    deadlines.stop("c1")
    deadlines.start("c2", now=20.0)  # its next request began: the clock restarts
    assert deadlines.next_due() == 10.0
    assert deadlines.expired(now=9.9, limit=10) == []
    assert deadlines.expired(now=14.0, limit=2) == ["c0", "c3"]
    assert deadlines.expired(now=14.0, limit=2) == ["c4"]
    assert len(deadlines) == 2 and "c5" in deadlines and "c4" not in deadlines
    assert deadlines.expired(now=30.0, limit=10) == ["c5", "c2"]
    assert deadlines.next_due() is None
