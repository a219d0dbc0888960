#!/usr/bin/env python3
"""Start latency: `pymachine run --rm busybox true` against `systemd-nspawn -q -D ROOTFS /bin/true`.

Both run alternately in one systemd test host (or on this host, if systemd is PID 1), on the
same busybox root file system, doing the same work: a scope in machine.slice and a machined
registration, the command as PID 1 of fresh namespaces, teardown. Prints both medians and
their ratio (target: pymachine / nspawn <= 0.6).

    python3 bench/bench_start.py [--runs 25] [--pymachine PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import testhost  # noqa: E402

# Runs inside the host: times each command with the same subprocess overhead.
DRIVER = r"""
import json, os, statistics, subprocess, sys, time
runs, pymachine, rootfs = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cmds = {
    "pymachine": [pymachine, "run", "--rm", "busybox", "true"],
    "nspawn": ["systemd-nspawn", "-q", "-D", rootfs, "/bin/true"],
}
times = {k: [] for k in cmds}
for name, cmd in cmds.items():  # warm up caches (page cache, image store, policy cache)
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
for _ in range(runs):
    for name, cmd in cmds.items():
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
        times[name].append(time.perf_counter() - t)
print(json.dumps(times))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--pymachine", default="pymachine", help="the pymachine command to time (default: from PATH)")
    args = ap.parse_args()
    import json
    import statistics

    venv_bin = ROOT / ".venv" / "bin"
    with testhost.get_host(path_prepend=[str(venv_bin)] if venv_bin.is_dir() else []) as host:
        # The busybox image's single layer is the rootfs both runtimes get.
        # (python3 is the venv's: its bin dir comes first on PATH inside.)
        prep = host.run(["python3", "-c", "from machinectl_py.images import resolve; "
                         "print(resolve('busybox').layers[0])"], timeout=120)
        rootfs = prep.stdout.strip().splitlines()[-1] if prep.returncode == 0 else ""
        if not rootfs:
            print(f"bench: cannot prepare the busybox image:\n{prep.stdout}{prep.stderr}", file=sys.stderr)
            return 1
        driver = host.run(["python3", "-c", DRIVER, str(args.runs), args.pymachine, rootfs], timeout=1800)
        if driver.returncode != 0:
            print(f"bench: a run failed:\n{driver.stdout}{driver.stderr}", file=sys.stderr)
            return 1
    times = json.loads(driver.stdout.strip().splitlines()[-1])
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"start latency, {args.runs} runs each, alternating, median:")
    print(f"  pymachine run --rm busybox true   {med['pymachine']:7.1f} ms")
    print(f"  systemd-nspawn -q -D ROOTFS true  {med['nspawn']:7.1f} ms")
    print(f"  ratio pymachine/nspawn            {med['pymachine'] / med['nspawn']:7.2f}   (target <= 0.60)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
