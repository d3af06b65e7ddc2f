"""Rate-limited logging: a repeated failure is logged once with a count per interval.

A failure that repeats (a store that refuses every write, a pub/sub that is down for
every message, a driver that logs each failed connect) would otherwise write one line
per event: thousands a minute, burying everything else.  Two ways in, one core
(:class:`Repeats`):

* :class:`Throttled` -- for livedata's own failure lines.  ``failed(key, ...)`` logs
  the first failure of ``key`` at once, then at most one line per ``interval``
  (60 s) saying how many more there were; ``recovered(key, ...)`` logs one line when
  a failing ``key`` works again, with the count and duration of the failure, and
  nothing when it was not failing.
* :class:`RepeatFilter` -- a filter on the log handler for drivers' own loggers
  (aiokafka, clickhouse_driver, ...), installed by :func:`livedata.observe.setup_logging`:
  records of one logger with the same message template are let through once per
  interval with the count of the ones held back, and their tracebacks are reduced to
  the exception's one-line text.

Under stress: memory is one small entry per distinct failing key (keys are fixed
strings or templates, never per-message values), forgotten on recovery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

INTERVAL_S = 60.0
"""Default interval between two lines of one repeated failure."""

DRIVER_LOGGERS = ("aiokafka", "kafka", "clickhouse_driver", "asyncpg", "redis", "aiomqtt")
"""Loggers of drivers whose per-event lines :class:`RepeatFilter` limits."""


@dataclass(slots=True)
class _Run:
    first: float
    """When the failure began (monotonic)."""
    logged: float
    """When its last line was let through."""
    total: int = 1
    held: int = 0
    """Failures since the last line that was let through."""


class Repeats:
    """The sans-I/O core: which occurrence of a repeated event gets a line, and its count."""

    def __init__(self, interval: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._runs: dict[Hashable, _Run] = {}

    def occur(self, key: Hashable) -> int | None:
        """Count one occurrence; the number held back since the last line when this one gets
        a line (0 for the first), ``None`` when it is held back."""
        now = self.clock()
        run = self._runs.get(key)
        if run is None:
            self._runs[key] = _Run(now, now)
            return 0
        run.total += 1
        if now - run.logged < self.interval:
            run.held += 1
            return None
        held, run.held, run.logged = run.held, 0, now
        return held

    def end(self, key: Hashable) -> tuple[int, float] | None:
        """Forget ``key``: (occurrences, seconds since the first) if it was repeating."""
        run = self._runs.pop(key, None)
        if run is None:
            return None
        return run.total, self.clock() - run.first

    def failing(self, key: Hashable) -> bool:
        return key in self._runs


def _more(held: int, interval: float) -> str:
    return f" ({held} more like this in the last {interval:g} s)" if held else ""


class Throttled:
    """A logger's failure lines, limited per key (see the module doc)."""

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL_S) -> None:
        self.log = logger
        self.repeats = Repeats(interval)

    def failed(self, key: Hashable, msg: str, *args: object, level: int = logging.WARNING) -> None:
        """Log a failure of ``key`` unless one was logged less than ``interval`` ago."""
        held = self.repeats.occur(key)
        if held is not None and self.log.isEnabledFor(level):
            self.log.log(level, msg + _more(held, self.repeats.interval), *args)

    def recovered(self, key: Hashable, msg: str, *args: object) -> None:
        """Log (INFO) that ``key`` works again, if it was failing."""
        ended = self.repeats.end(key)
        if ended is not None:
            count, seconds = ended
            self.log.info(msg + f" (after {count} failures in {seconds:.1f} s)", *args)

    def failing(self, key: Hashable) -> bool:
        return self.repeats.failing(key)


class RepeatFilter(logging.Filter):
    """A handler filter: limits each (logger, level, message template) of WARNING and above
    from the loggers ``names`` (and their children) to one line per interval, with the
    count held back; their tracebacks become one line."""

    def __init__(self, names: tuple[str, ...] = DRIVER_LOGGERS, interval: float = INTERVAL_S):
        super().__init__()
        self.names = names
        self.repeats = Repeats(interval)

    def _covers(self, name: str) -> bool:
        return any(name == n or name.startswith(n + ".") for n in self.names)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not self._covers(record.name):
            return True
        held = self.repeats.occur((record.name, record.levelno, str(record.msg)))
        if held is None:
            return False
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        if held:
            record.msg = f"{record.getMessage()}{_more(held, self.repeats.interval)}"
            record.args = None
        return True
