"""The live progress line that ``map(verbose=True)`` shows while it waits.

On a terminal it redraws one line in place; elsewhere (a log file, Jupyter's
captured stderr) it prints a fresh line at most every ``interval`` seconds, so
logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

from .storage import Progress

BAR_WIDTH = 24


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe(progress: Progress, elapsed: float) -> str:
    """One line: bar, counts, rate and time left."""
    total = max(progress.total, 1)
    filled = BAR_WIDTH * progress.finished // total
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    parts = [f"[{bar}] {progress.finished}/{progress.total} finished"]
    if progress.running:
        parts.append(f"{progress.running} running")
    if progress.failed:
        parts.append(f"{progress.failed} failed")
    if progress.lost:
        parts.append(f"{progress.lost} lost")
    if progress.cancelled:
        parts.append(f"{progress.cancelled} cancelled")
    text = "sheepdog: " + ", ".join(parts)
    if progress.finished and elapsed > 0:
        rate = progress.finished / elapsed
        left = (progress.total - progress.finished) / rate
        text += f" | {rate:.1f}/s | elapsed {_clock(elapsed)}"
        if not progress.complete:
            text += f", about {_clock(left)} left"
    return text


class ProgressDisplay:
    """Shows a request's progress on ``stream`` (stderr by default)."""

    def __init__(self, stream: Optional[TextIO] = None, interval: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval
        self.started = time.monotonic()
        self._last_shown = -float("inf")
        self._last_text = ""

    def update(self, progress: Progress) -> None:
        now = time.monotonic()
        text = describe(progress, now - self.started)
        if self.interactive:
            padding = " " * max(0, len(self._last_text) - len(text))
            self.stream.write("\r" + text + padding)
            self.stream.flush()
        elif progress.complete or now - self._last_shown >= self.interval:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_shown = now
        self._last_text = text

    def close(self) -> None:
        if self.interactive and self._last_text:
            self.stream.write("\n")
            self.stream.flush()
