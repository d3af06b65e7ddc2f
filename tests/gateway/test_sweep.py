"""One loop timer for many connections' clocks (``gateway/sweep.py``)."""

from __future__ import annotations

import asyncio
import time

import pytest

from livedata.gateway.sweep import BATCH, Sweep
from livedata.gateway.wsserver import PING_BATCH


@pytest.mark.parametrize("batch", [BATCH, PING_BATCH])
async def test_expired_clocks_go_out_a_batch_per_loop_turn(batch: int) -> None:
    """600 clocks expired together are handed out in start order, at most the sweep's
    batch (BATCH by default, PING_BATCH for keep-alive pings) per loop turn; a stopped
    clock is not; a restarted one goes to the end."""
    turns: list[list[int]] = [[]]
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def next_turn() -> None:
        if turns[-1]:
            turns.append([])
        if not done.is_set():
            loop.call_soon(next_turn)

    def expire(conn: int) -> None:
        turns[-1].append(conn)

    sweep = Sweep(0.01, expire) if batch == BATCH else Sweep(0.01, expire, batch)
    for conn in range(600):
        sweep.start(conn, loop)
    sweep.stop(7)
    sweep.start(3, loop)
    time.sleep(0.02)  # noqa: ASYNC251  (the loop is held until every clock has run out)
    loop.call_soon(next_turn)
    while len(sweep):  # noqa: ASYNC110  (counting loop turns)
        await asyncio.sleep(0)
    done.set()
    handed = [t for t in turns if t]
    full, rest = divmod(599, batch)
    assert [len(t) for t in handed] == [batch] * full + [rest]
    assert [c for t in handed for c in t] == [c for c in range(600) if c not in (3, 7)] + [3]
