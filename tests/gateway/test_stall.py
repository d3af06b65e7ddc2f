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


class ManualTime:
    """The running loop's clock and timers, moved by the test: no real time passes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1_000.0
        self.timers: list[asyncio.TimerHandle] = []
        self.loop = asyncio.get_running_loop()
        monkeypatch.setattr(self.loop, "time", lambda: self.now)
        monkeypatch.setattr(self.loop, "call_at", self._call_at)

    def _call_at(self, when: float, callback: Any, *args: Any, **_: Any) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self.loop)
        self.timers.append(handle)
        return handle

    def fire_due(self, now: float) -> None:
        """Move the clock to ``now`` and run the timers due by then."""
        self.now = now
        for handle in list(self.timers):
            if handle.when() <= now and not handle.cancelled():
                self.timers.remove(handle)
                handle._run()


async def start_send(clock: StallClock) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """A send that completes when the returned event is set."""
    done = asyncio.Event()
    task = asyncio.create_task(clock.send(done.wait()))
    await asyncio.sleep(0)
    return done, task


async def finish(done: asyncio.Event, task: asyncio.Task[None]) -> None:
    done.set()
    await task


async def test_slow_but_progressing_sends_are_not_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sends each shorter than the timeout go on even when together they last much longer."""
    time = ManualTime(monkeypatch)
    clock = StallClock(10.0)
    send = await start_send(clock)  # at 1000: the clock is armed for 1010
    time.fire_due(1_008.0)
    await finish(*send)
    send = await start_send(clock)  # at 1008, the clock still armed for 1010
    time.fire_due(1_010.0)  # this send is 2 s old: the clock waits until 1018
    assert [t.when() for t in time.timers] == [1_018.0]
    time.fire_due(1_016.0)
    await finish(*send)
    send = await start_send(clock)
    time.fire_due(1_018.0)  # 2 s old again
    await finish(*send)
    clock.stop()


async def test_a_send_older_than_the_timeout_is_given_up_at_the_next_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After sends that progressed, one that waits the whole timeout raises Stalled."""
    time = ManualTime(monkeypatch)
    clock = StallClock(10.0)
    await finish(*await start_send(clock))
    _, task = await start_send(clock)
    time.fire_due(1_009.9)
    assert not task.done()
    time.fire_due(1_010.0)
    with pytest.raises(Stalled):
        await task


async def test_an_idle_connection_is_not_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time without any send is not a stall: the clock looks at sends in progress only."""
    time = ManualTime(monkeypatch)
    clock = StallClock(10.0)
    await finish(*await start_send(clock))
    time.fire_due(1_100.0)  # the clock fires while idle and is not armed again
    assert time.timers == []
    done, task = await start_send(clock)  # a new send arms it for its own deadline
    assert [t.when() for t in time.timers] == [1_110.0]
    await finish(done, task)
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
