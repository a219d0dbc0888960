"""Shared parts of the image benchmarks: a synthetic tree, timing, and the report."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def make_tree(root: Path, small_files: int = 4000, large_files: int = 12, large_size: int = 8 << 20) -> int:
    """A layer-like tree: many small files in nested dirs, some large ones, symlinks. Returns bytes."""
    rng = random.Random(42)
    total = 0
    for i in range(small_files):
        d = root / f"usr/share/d{i % 97}/s{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.choice((0, 100, 700, 2000, 4096, 9000, 30000))
        (d / f"file{i}").write_bytes(rng.randbytes(size))
        total += size
        if i % 10 == 0:
            (d / f"link{i}").symlink_to(f"file{i}")
    (root / "usr/lib").mkdir(parents=True, exist_ok=True)
    for i in range(large_files):
        (root / f"usr/lib/big{i}.so").write_bytes(rng.randbytes(large_size))
        total += large_size
    return total


def python() -> str:
    """The project's venv (tools/test makes it), else this interpreter. Interpreter start-up is
    part of every pymachine command, so it matters: a pyenv python with many .pth files starts in
    ~200 ms, Debian's in ~20 ms."""
    venv = CHECKOUT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def pymachine(*args: str, env: dict[str, str]) -> None:
    subprocess.run([python(), "-m", "machinectl_py", *args], check=True, env=env, stdout=subprocess.DEVNULL)


def timed(fn: Callable[[], object]) -> float:
    os.sync()  # start each run with no dirty pages from the previous one
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def report(title: str, size: int, results: dict[str, list[float]], ours: str, theirs: list[str],
           time_ratio: bool = False) -> None:
    """Medians, then a ratio per peer: throughput ours / theirs (1.0 = as fast; import's and
    commit's targets are >= 0.8), or with `time_ratio` time ours / theirs (pull's target is <= 0.8)."""
    print(f"{title}: {size / 1e6:.0f} MB, {len(results[ours])} alternating runs, medians:")
    medians = {name: statistics.median(times) for name, times in results.items()}
    for name, value in medians.items():
        print(f"  {name:<34} {value * 1000:8.0f} ms  {size / value / 1e6:7.0f} MB/s")
    for other in theirs:
        if time_ratio:
            print(f"  time ratio {ours} / {other}: {medians[ours] / medians[other]:.2f}")
        else:
            print(f"  throughput ratio {ours} / {other}: {medians[other] / medians[ours]:.2f}")
