"""The stall clock: one timer per connection gives up a send that makes no progress."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from livedata.gateway.stall import StallClock, Stalled


class CountingTimers:
    """Counts the timers the running loop is asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        loop = asyncio.get_running_loop()
        call_at = loop.call_at

        def counted(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
            self.count += 1
            return call_at(when, callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_at", counted)


async def test_many_sends_arm_one_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thousand sends, some of which wait, arm one timer between them, not one each."""
    timers = CountingTimers(monkeypatch)
    clock = StallClock(30.0)
    for n in range(1_000):
        assert await clock.send(asyncio.sleep(0, n)) == n
    clock.stop()
    assert timers.count == 1


async def test_a_send_that_waits_too_long_raises_stalled() -> None:
    """A send that makes no progress for the timeout raises Stalled in the sending task."""
    clock = StallClock(0.05)
    with pytest.raises(Stalled):
        await clock.send(asyncio.Event().wait())
    task = asyncio.current_task()
    assert task is not None and not task.cancelling()


async def test_slow_but_progressing_sends_are_not_given_up() -> None:
    """Sends each shorter than the timeout go on even when together they last much longer."""
    clock = StallClock(0.1)
    for _ in range(8):
        await clock.send(asyncio.sleep(0.04))
    clock.stop()


async def test_an_idle_connection_is_not_given_up() -> None:
    """Time without any send is not a stall: the clock looks at sends in progress only."""
    clock = StallClock(0.05)
    await clock.send(asyncio.sleep(0))
    await asyncio.sleep(0.15)
    await clock.send(asyncio.sleep(0))
    clock.stop()


async def test_cancelling_the_sender_is_not_a_stall() -> None:
    """Cancelling the sending task from outside cancels it; it is not reported as Stalled."""
    clock = StallClock(30.0)
    task = asyncio.create_task(clock.send(asyncio.Event().wait()))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    clock.stop()
