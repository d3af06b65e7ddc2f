"""One loop timer for many connections' clocks (``gateway/sweep.py``)."""

from __future__ import annotations

import asyncio
import time

from livedata.gateway.sweep import BATCH, Sweep


async def test_expired_clocks_go_out_a_batch_per_loop_turn() -> None:
    """600 clocks expired together are handed out in start order, at most BATCH per
    loop turn; a stopped clock is not; a restarted one goes to the end."""
    turns: list[list[int]] = [[]]
    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def next_turn() -> None:
        if turns[-1]:
            turns.append([])
        if not done.is_set():
            loop.call_soon(next_turn)

    sweep = Sweep(0.01, lambda conn: turns[-1].append(conn))
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
    assert [len(t) for t in handed] == [BATCH, BATCH, 599 - 2 * BATCH]
    assert [c for t in handed for c in t] == [c for c in range(600) if c not in (3, 7)] + [3]
