"""The stall clock of a connection: one timer per connection, not one per message.

Every transport (live WebSocket, SSE watch, Socket.IO) gives a client up when one
send makes no progress for ``seconds``.  ``asyncio.wait_for`` around each send did
that at the price of a task and a timer per message per client (on Python 3.11).
:class:`StallClock` instead notes when the send in progress started; one timer per
connection, armed by a send when none is armed, looks at it when it fires:

- the send in progress started ``seconds`` ago or more: the sending task is
  cancelled and :meth:`StallClock.send` raises :class:`Stalled` in it;
- a younger send is in progress: the timer is armed again for its deadline;
- nothing is being sent: the timer stays unarmed until the next send.

Under steady traffic that is one timer per connection per ``seconds``; the sends
themselves are awaited directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Stalled(Exception):
    """A client's socket accepted nothing for the stall timeout."""


class StallClock:
    """Gives up a send that waits longer than ``seconds``; see the module doc."""

    __slots__ = ("_since", "_stalled", "_task", "_timer", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._since: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._stalled = False

    async def send(self, sending: Awaitable[T]) -> T:
        """Await ``sending``; raises :class:`Stalled` if it waits ``seconds`` or more."""
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._since = now = loop.time()
        if self._timer is None:
            self._timer = loop.call_at(now + self.seconds, self._check)
        try:
            return await sending
        except asyncio.CancelledError:
            if not self._stalled or self._task is None:
                raise
            self._task.uncancel()
            raise Stalled(f"no progress for {self.seconds:g} s") from None
        finally:
            self._since = None

    def stop(self) -> None:
        """Disarm the timer (the connection ends)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        since, task = self._since, self._task
        if since is None or task is None or task.done():
            return
        loop = asyncio.get_running_loop()
        due = since + self.seconds
        if loop.time() >= due:
            self._stalled = True
            task.cancel()
        else:
            self._timer = loop.call_at(due, self._check)
