"""A one-line progress display on stderr when it is a terminal; silent otherwise."""

from __future__ import annotations

import sys
import time


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"


class Progress:
    """Call with a byte count as work advances; `done()` ends the line."""

    INTERVAL = 0.1

    def __init__(self, label: str, total: int | None = None, *, enabled: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.count = 0
        self._start = time.monotonic()
        self._last = 0.0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._shown = False

    def stage(self, label: str, total: int | None) -> None:
        """A new part of the work (the archive, then each layer): a new line, counted from 0."""
        if self._shown:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
        self.label, self.total, self.count = label, total, 0
        self._start = time.monotonic()
        self._shown = False

    def __call__(self, n: int) -> None:
        self.count += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.INTERVAL:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.count / max(now - self._start, 1e-6)
        text = f"{self.label}: {human_size(self.count)}"
        if self.total:
            fraction = min(self.count / self.total, 1.0)
            filled = int(fraction * 30)
            bar = "=" * filled + " " * (30 - filled)
            text = f"{self.label}: [{bar}] {fraction:4.0%} {human_size(self.count)}"
        sys.stderr.write(f"\r{text} {human_size(rate)}/s\x1b[K")
        sys.stderr.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            self._draw(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()
