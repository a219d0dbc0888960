#!/usr/bin/env python3
"""What each module kept off the start-up path would cost a start (issue #12, item 5).

tests/unit/test_startup_imports.py keeps these modules out of `run`, `start` and `exec`; a
trick that saves less than 0.5 ms is not worth its rule. For each module this imports it
alone in a fresh `python3 -IS` (how the installed command starts) and prints the CPU time
of the import, the minimum over --runs, beside the interpreter's own start for scale.

    python3 bench/bench_modules.py [--runs 15]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

# The start-up rules' modules (tests/unit/test_startup_imports.py HEAVY) and `signal`
# (runtime.py, forwarder.py, container_init.py avoid it).
MODULES = ["json", "re", "typing", "pathlib", "dataclasses", "argparse", "asyncio", "contextlib", "enum",
           "collections", "socket", "subprocess", "shutil", "tomllib", "hashlib", "secrets", "signal"]
PROBE = "import time\nt = time.process_time()\nimport {0}\nprint(time.process_time() - t)"
THRESHOLD_MS = 0.5


def import_cost(python: str, module: str, runs: int) -> float:
    """The least CPU time (ms) that importing module alone took in a fresh interpreter."""
    out = [float(subprocess.run([python, "-IS", "-c", PROBE.format(module)], capture_output=True,
                                text=True, check=True).stdout) for _ in range(runs)]
    return min(out) * 1000


def interpreter_start(python: str, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([python, "-IS", "-c", "pass"], check=True)
        best = min(best, time.perf_counter() - t)
    return best * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--python", default="/usr/bin/python3")
    args = parser.parse_args()
    print(f"python3 -IS -c pass: {interpreter_start(args.python, args.runs):.1f} ms (wall, least of {args.runs})")
    below = []
    for module in MODULES:
        cost = import_cost(args.python, module, args.runs)
        print(f"import {module:12s} {cost:6.2f} ms CPU")
        if cost < THRESHOLD_MS:
            below.append(module)
    print("below 0.5 ms (rule not worth keeping): " + (", ".join(below) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
