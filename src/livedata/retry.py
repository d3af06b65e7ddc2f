"""One backoff schedule for every reconnect and retry loop.

::

    delays = backoff(0.5, 5.0)
    while True:
        try:
            await do_it()
        except BackendError:
            await asyncio.sleep(next(delays))
            continue
        delays = backoff(0.5, 5.0)  # success: the next failure starts short again

Under stress: the delay doubles from ``first`` to ``most`` and stays there, so a
long outage costs one attempt per ``most`` seconds and a short one is noticed
within about ``first``.  ``jitter`` (a fraction) shortens each delay at random, so a
fleet of processes that lost the same engine does not come back in step.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff(first: float, most: float, *, jitter: float = 0.0) -> Iterator[float]:
    """``first``, ``2*first``, ``4*first`` … seconds, never more than ``most``, each shortened
    by up to ``jitter`` × itself at random; endless."""
    if not (first > 0 and most > 0):
        raise ValueError(f"backoff delays must be positive, not {first} and {most}")
    if not 0 <= jitter < 1:
        raise ValueError(f"backoff jitter is a fraction in [0, 1), not {jitter}")
    delay = min(first, most)
    while True:
        yield delay * (1 - random.uniform(0, jitter)) if jitter else delay
        delay = min(delay * 2, most)
