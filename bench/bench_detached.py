#!/usr/bin/env python3
"""Starting 20 detached containers in sequence: `pymachine run -d` against systemd-nspawn.

In one systemd test host (or on this host, if systemd is PID 1), on the same busybox root
file system, each side starts N containers running `sleep`, one after another, each command
returning once its container runs:
  pymachine run -d --name pbN busybox sleep 100000    create + StartUnit(pymachine@pbN.service)
  systemd-run --unit nbN -p Type=notify ... systemd-nspawn --keep-unit -q --read-only -D ROOTFS sleep 100000
                                                     a service in machine.slice, registered with machined
Prints the total times and pymachine/nspawn (target: <= 0.8, issue #19). Cleans up outside the timing.

    python3 bench/bench_detached.py [--count 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_exec import add_bin_option, run_driver  # noqa: E402

DRIVER = r"""
import json, subprocess, sys, time
count, rootfs = int(sys.argv[1]), sys.argv[2]
def run(cmd):
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
def pymachine(i):
    return ["pymachine", "run", "-d", "--network", "host", "--name", f"pb{i}", "busybox", "sleep", "100000"]
def nspawn(i):
    return ["systemd-run", "--quiet", f"--unit=nb{i}", "-p", "Type=notify", "-p", "NotifyAccess=all",
            "-p", "Delegate=yes", "-p", "Slice=machine.slice", "-p", "KillMode=mixed",
            "systemd-nspawn", "--keep-unit", "-q", "--read-only", "-M", f"nb{i}", "-D", rootfs, "sleep", "100000"]
times = {}
try:
    for side, make in (("pymachine", pymachine), ("nspawn", nspawn)):
        t = time.perf_counter()
        for i in range(count):
            run(make(i))
        times[side] = time.perf_counter() - t
    print(json.dumps(times))
finally:
    for i in range(count):
        subprocess.run(["pymachine", "rm", "-f", f"pb{i}"], capture_output=True)
        subprocess.run(["systemctl", "stop", f"nb{i}.service"], capture_output=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=20)
    add_bin_option(ap)
    args = ap.parse_args()
    times = run_driver(args.bin, DRIVER, args.count)
    if times is None:
        return 1
    print(f"starting {args.count} detached containers in sequence (each returns once it runs):")
    each = {k: v / args.count * 1000 for k, v in times.items()}
    print(f"  pymachine run -d            {times['pymachine']:6.2f} s  ({each['pymachine']:.0f} ms each)")
    print(f"  systemd-nspawn (service)    {times['nspawn']:6.2f} s  ({each['nspawn']:.0f} ms each)")
    print(f"  ratio pymachine/nspawn      {times['pymachine'] / times['nspawn']:6.2f}   (target <= 0.80)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
