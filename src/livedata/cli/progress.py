"""A progress line for long command-line work (imports, exports), on standard error.

On a terminal the line is redrawn in place at most five times a second; otherwise
(a pipe, a log file) one line is printed at most every ``every`` seconds, and the
last state always, so a log shows how the work went without thousands of lines.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class ProgressBar:
    """``label  42.0%  1,234,567 frames  12,345 rows  210,000 frames/s  ETA 0:00:04``."""

    def __init__(
        self, label: str, unit: str, stream: TextIO | None = None, every: float | None = None
    ) -> None:
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = every if every is not None else (0.2 if self.tty else 2.0)
        self._shown = -self.every
        self._line = ""

    def update(
        self, count: int, rows: int, done: int, total: int, elapsed: float, *, final: bool = False
    ) -> None:
        """Show ``count`` units and ``rows`` rows after ``elapsed`` s; ``done``/``total`` for ETA."""
        now = time.monotonic()
        if not final and now - self._shown < self.every:
            return
        self._shown = now
        rate = count / elapsed if elapsed > 0 else 0.0
        parts = [self.label]
        if total > 0:
            parts.append(f"{min(100.0, 100.0 * done / total):5.1f}%")
        parts += [f"{count:,} {self.unit}", f"{rows:,} rows", f"{rate:,.0f} {self.unit}/s"]
        if final:
            parts.append(f"in {_duration(elapsed)}")
        elif total > 0 and done > 0:
            parts.append(f"ETA {_duration(elapsed * (total - done) / done)}")
        line = "  ".join(parts)
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self._line)) + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._line = line
