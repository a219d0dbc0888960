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


class LayerRow:
    """One layer's line of a LayerProgress; call it with byte counts as the layer downloads."""

    def __init__(self, owner: LayerProgress, label: str, total: int) -> None:
        self.owner = owner
        self.label = label
        self.total = total
        self.count = 0
        self.status = "waiting"
        self.started = time.monotonic()
        self.resumed = 0

    def start(self, resumed: int) -> None:
        self.started = time.monotonic()
        self.resumed = resumed
        self.status = f"resuming at {human_size(resumed)}" if resumed else "downloading"
        self.owner.changed()

    def __call__(self, n: int) -> None:
        self.count += n
        self.owner.changed()

    def finish(self, status: str) -> None:
        self.status = status
        self.count = self.total
        self.owner.finished(self)

    def text(self) -> str:
        if self.status in ("waiting", "pulled", "exists"):
            return f"{self.label}: {self.status} {human_size(self.total)}"
        fraction = min(self.count / self.total, 1.0) if self.total else 1.0
        bar = "=" * int(fraction * 30)
        return f"{self.label}: [{bar:<30}] {fraction:4.0%} {human_size(self.count)}/{human_size(self.total)}"


class LayerProgress:
    """Per-layer progress of a pull or push, from several threads. On a terminal: one line per
    layer, redrawn in place; otherwise one line per layer when it is done; `quiet`: nothing."""

    INTERVAL = 0.1

    def __init__(self, *, quiet: bool = False, tty: bool | None = None) -> None:
        import threading

        self.quiet = quiet
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.rows: list[LayerRow] = []
        self._lock = threading.Lock()
        self._drawn = 0
        self._last = 0.0

    def row(self, digest: str, total: int) -> LayerRow:
        row = LayerRow(self, digest.removeprefix("sha256:")[:12], total)
        self.rows.append(row)
        return row

    def note(self, label: str, status: str) -> None:
        """A layer with nothing to transfer (already in the store, or on the registry)."""
        if self.quiet:
            return
        with self._lock:
            self._clear()
            sys.stderr.write(f"{label.removeprefix('sha256:')[:12]}: {status}\n")
            self._drawn = 0

    def changed(self) -> None:
        if self.quiet or not self.tty:
            return
        now = time.monotonic()
        if now - self._last < self.INTERVAL:
            return
        with self._lock:
            self._last = now
            self._draw()

    def finished(self, row: LayerRow) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.tty:
                self._draw()
            else:
                elapsed = time.monotonic() - row.started
                resumed = f" (resumed at {human_size(row.resumed)})" if row.resumed else ""
                sys.stderr.write(f"{row.label}: {row.status} {human_size(row.total)} in {elapsed:.1f}s{resumed}\n")
                sys.stderr.flush()

    def _clear(self) -> None:
        if self.tty and self._drawn:
            sys.stderr.write(f"\x1b[{self._drawn}F\x1b[J")

    def _draw(self) -> None:
        self._clear()
        sys.stderr.write("".join(f"{r.text()}\x1b[K\n" for r in self.rows))
        sys.stderr.flush()
        self._drawn = len(self.rows)

    def done(self) -> None:
        if self.quiet or not self.tty:
            return
        with self._lock:
            self._draw()
            self._drawn = 0
