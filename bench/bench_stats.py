#!/usr/bin/env python3
"""`pymachine stats --no-stream` over 50 running containers, against `systemd-cgtop -n 1` and
`podman stats --no-stream` (Debian's podman, if it runs here), side by side in one test host.

Each side's containers run `sleep` (pymachine: `run -d`, detached services; podman: `run -d
--network host` from the same busybox root imported as an image). Then the three commands are
timed in turns, ROUNDS times each, and the medians printed with pymachine/podman (target:
<= 0.5) and pymachine/cgtop. Cleans up outside the timing.

    python3 bench/bench_stats.py [--count 50] [--rounds 10] [--bin /opt/pymachine/bin]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_exec import add_bin_option, run_driver  # noqa: E402

DRIVER = r"""
import json, subprocess, sys, time
count, rounds = divmod(int(sys.argv[1]), 1000)  # COUNT * 1000 + ROUNDS
rootfs = sys.argv[2]
def run(cmd, **kw):
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kw)
# The test host's root is an overlay, where podman's overlay driver refuses to work: vfs.
PODMAN = ["podman", "--storage-driver", "vfs"]
def podman_setup():
    tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
    r = subprocess.run([*PODMAN, "import", "-", "localhost/benchbox"], stdin=tar.stdout, capture_output=True,
                       text=True)
    tar.wait()
    if r.returncode != 0:
        return f"podman import failed: {r.stderr.strip()[-200:]}"
    for i in range(count):
        r = run([*PODMAN, "run", "-d", "--network", "host", "--name", f"qs{i}", "localhost/benchbox",
                 "sleep", "100000"])
        if r.returncode != 0:
            return f"podman run failed: {r.stderr.strip()[-200:]}"
    return None
commands = {"pymachine": ["pymachine", "stats", "--no-stream"], "cgtop": ["systemd-cgtop", "-n", "1", "-b"],
            "podman": [*PODMAN, "stats", "--no-stream"]}
times = {k: [] for k in commands}
result = {}
try:
    for i in range(count):
        run(["pymachine", "run", "-d", "--network", "host", "--name", f"ps{i}", "busybox", "sleep", "100000"],
            check=True)
    problem = podman_setup()
    if problem:
        result["podman_error"] = problem
        del commands["podman"], times["podman"]
    listed = run(commands["pymachine"]).stdout.splitlines()
    result["pymachine_rows"] = len(listed) - 1
    for _ in range(rounds):
        for side, cmd in commands.items():
            t = time.perf_counter()
            r = run(cmd)
            times[side].append(time.perf_counter() - t)
            if r.returncode != 0:
                raise SystemExit(f"{side} failed: {r.stderr}")
    result["times"] = times
    print(json.dumps(result))
finally:
    for i in range(count):
        run(["pymachine", "rm", "-f", f"ps{i}"])
    run([*PODMAN, "rm", "-f", "-t", "0", *[f"qs{i}" for i in range(count)]])
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    add_bin_option(ap)
    args = ap.parse_args()
    result = run_driver(args.bin, DRIVER, args.count * 1000 + args.rounds)
    if result is None:
        return 1
    med = {k: statistics.median(v) * 1000 for k, v in result["times"].items()}
    print(f"stats over {args.count} running containers, {args.rounds} rounds in turns, median "
          f"(pymachine listed {result['pymachine_rows']}):")
    print(f"  pymachine stats --no-stream   {med['pymachine']:7.1f} ms")
    print(f"  systemd-cgtop -n 1 -b         {med['cgtop']:7.1f} ms   ratio {med['pymachine'] / med['cgtop']:.2f}")
    if "podman" in med:
        print(f"  podman stats --no-stream      {med['podman']:7.1f} ms   ratio {med['pymachine'] / med['podman']:.2f}"
              "   (target <= 0.50)")
    else:
        print(f"  podman: not measured ({result.get('podman_error')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
