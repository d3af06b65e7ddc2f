"""Rate-limited logging: a repeated failure is one line with a count per interval."""

from __future__ import annotations

import logging

import pytest

from livedata.ratelog import RepeatFilter, Repeats, Throttled


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeats_give_one_line_per_interval_with_the_count_held_back() -> None:
    """The first occurrence gets a line, the next ones within the interval are held back,
    the first after the interval gets a line with their count; end reports the totals."""
    clock = Clock()
    repeats = Repeats(10.0, clock)
    assert repeats.occur("k") == 0
    assert [repeats.occur("k") for _ in range(5)] == [None] * 5
    clock.now += 10
    assert repeats.occur("k") == 5
    assert repeats.occur("other") == 0
    clock.now += 2.5
    assert repeats.end("k") == (7, 12.5)
    assert repeats.end("k") is None
    assert repeats.occur("k") == 0


def test_throttled_logs_a_failure_once_and_its_recovery_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,000 failures in a burst make one line; the recovery makes one line with the count;
    a recovery of something that was not failing logs nothing."""
    throttled = Throttled(logging.getLogger("livedata.test"), interval=60)
    with caplog.at_level(logging.INFO, "livedata.test"):
        for n in range(1000):
            throttled.failed("publish", "publish %d failed", n)
        throttled.recovered("publish", "publishing works again")
        throttled.recovered("publish", "publishing works again")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "publish 0 failed"
    assert lines[1].startswith("publishing works again (after 1000 failures in ")
    assert len(lines) == 2


def test_driver_lines_are_limited_and_tracebacks_shortened() -> None:
    """A driver logging the same failure with a traceback 500 times gets one one-line record;
    other loggers and INFO lines pass untouched."""
    repeat = RepeatFilter(("clickhouse_driver",), interval=60)

    def record(name: str, level: int = logging.WARNING) -> logging.LogRecord:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            info = (type(exc), exc, exc.__traceback__)
        return logging.LogRecord(
            name, level, __file__, 1, "Failed to connect to %s", ("h:9000",), info
        )

    passed = [
        r for r in (record("clickhouse_driver.connection") for _ in range(500)) if repeat.filter(r)
    ]
    assert len(passed) == 1
    assert passed[0].exc_info is None
    assert passed[0].getMessage() == (
        "Failed to connect to h:9000: ConnectionRefusedError: [Errno 111] Connection refused"
    )
    assert all(repeat.filter(record("livedata.ingest")) for _ in range(3))
    assert all(repeat.filter(record("clickhouse_driver", logging.INFO)) for _ in range(3))
