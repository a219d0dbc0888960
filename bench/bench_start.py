#!/usr/bin/env python3
"""Start latency: `pymachine run --rm busybox true` against `systemd-nspawn -q -D ROOTFS /bin/true`.

Both run alternately in one systemd test host (or on this host, if systemd is PID 1), on the
same busybox root file system, doing the same work: a scope in machine.slice and a machined
registration, the command as PID 1 of fresh namespaces, teardown. Prints both medians and
their ratio (target: pymachine / nspawn <= 0.6). Beside them, each with and without a user
namespace: pymachine's default (--userns=auto) and --userns=host, nspawn's own default (none)
and `--private-users=pick` (on a copy of the root, which nspawn may chown or map).

pymachine runs with --network host, as nspawn without --network-*: the bridge's cost is
bench_network.py's.

    python3 bench/bench_start.py [--runs 25] [--bin DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_exec import add_bin_option, run_driver  # noqa: E402

# Runs inside the host: times each command with the same subprocess overhead.
DRIVER = r"""
import json, os, statistics, subprocess, sys, time
import tempfile
runs, rootfs = int(sys.argv[1]), sys.argv[2]
picked = os.path.join(tempfile.mkdtemp(dir="/var/tmp"), "rootfs")
subprocess.run(["cp", "-a", rootfs, picked], check=True)
cmds = {
    "pymachine": ["pymachine", "run", "--rm", "--network", "host", "busybox", "true"],
    "pymachine-host": ["pymachine", "run", "--rm", "--network", "host", "--userns=host", "busybox", "true"],
    "nspawn": ["systemd-nspawn", "-q", "-D", rootfs, "/bin/true"],
    "nspawn-pick": ["systemd-nspawn", "-q", "--private-users=pick", "-D", picked, "/bin/true"],
}
times = {k: [] for k in cmds}
for name, cmd in cmds.items():  # warm up caches (page cache, image store, policy cache)
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
for _ in range(runs):
    for name, cmd in cmds.items():
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
        times[name].append(time.perf_counter() - t)
subprocess.run(["rm", "-rf", os.path.dirname(picked)], check=True)
print(json.dumps(times))
"""


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(q1, median, q3) in ms."""
    import statistics

    q1, median, q3 = statistics.quantiles(values, n=4)
    return q1 * 1000, median * 1000, q3 * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=25)
    add_bin_option(ap)
    args = ap.parse_args()
    times = run_driver(args.bin, DRIVER, args.runs)
    if times is None:
        return 1
    stats = {k: quartiles(v) for k, v in times.items()}
    print(f"start latency, {args.runs} runs each, alternating, median (quartiles):")
    # The default (--userns=auto) against nspawn's own default is the figure; the other two
    # show what a user namespace costs each.
    labels = {"pymachine": "pymachine run --rm --network host busybox true (--userns=auto)",
              "pymachine-host": "  the same with --userns=host                ",
              "nspawn": "systemd-nspawn -q -D ROOTFS true              ",
              "nspawn-pick": "  the same with --private-users=pick         "}
    for key, label in labels.items():
        q1, median, q3 = stats[key]
        print(f"  {label}  {median:7.1f} ms  ({q1:.1f}-{q3:.1f})")
    ratio = stats["pymachine"][1] / stats["nspawn"][1]
    print(f"  ratio pymachine/nspawn                           {ratio:7.2f}   (target <= 0.60)")
    pick = stats["pymachine"][1] / stats["nspawn-pick"][1]
    print(f"  ratio, both with a user namespace                {pick:7.2f}")
    host = stats["pymachine-host"][1] / stats["nspawn"][1]
    print(f"  ratio, neither with one                          {host:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
