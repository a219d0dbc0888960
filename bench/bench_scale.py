#!/usr/bin/env python3
"""`ps`, `inspect` and starts as the number of running containers grows.

In one systemd test host (or on this host, if systemd is PID 1), detached `sleep` containers
are started one after another (`pymachine run -d`), each start timed. At each count of
--counts (default 10,100; 500 takes ~2 min more), with that many containers running, it times,
alternating, 10 runs of each (medians):
  pymachine ps            pymachine ps -a --json      pymachine inspect NAME
  pymachine status NAME   pymachine logs -n 5 NAME    pymachine run --rm busybox true
  machinectl list         podman ps (if podman is installed, with as many `sleep` containers)
and the start-cost curve: the median of the last ten starts before each count against the
10th start's band (starts 1-10). Ends by counting resident pymachine processes (target: none)
and removing every container outside the timing.

    python3 bench/bench_scale.py [--counts 10,100,500] [--bin /opt/pymachine/bin] [--baseline OLD/bin] [--no-podman]

--baseline times another install's `ps` and `inspect` alongside (an older pymachine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_exec import add_baseline_option, add_bin_option, run_driver  # noqa: E402

DRIVER = r"""
import json, os, shutil, subprocess, sys, tempfile, time
counts, rootfs = [int(c) for c in sys.argv[1].split(",")], sys.argv[2]
baseline = sys.argv[3] if len(sys.argv) > 3 else ""
podman = shutil.which("podman") if "no-podman" not in sys.argv[4:] else None
def run(cmd):
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
def timed(cmd):
    t = time.perf_counter()
    run(cmd)
    return time.perf_counter() - t
probes = {
    "ps": ["pymachine", "ps"],
    "ps -a --json": ["pymachine", "ps", "-a", "--json"],
    "inspect": ["pymachine", "inspect", "s0"],
    "status": ["pymachine", "status", "s0"],
    "logs -n 5": ["pymachine", "logs", "-n", "5", "s0"],
    "run --rm": ["pymachine", "run", "--rm", "--network", "host", "busybox", "true"],
    "machinectl list": ["machinectl", "list", "--no-pager"],
}
if baseline:
    probes["baseline ps"] = [baseline + "/pymachine", "ps"]
    probes["baseline inspect"] = [baseline + "/pymachine", "inspect", "s0"]
if podman:
    # podman's overlay driver refuses an overlayfs below it (the test host's /): its store goes
    # to the shared /tmp, a real file system.
    store = tempfile.mkdtemp(prefix="bench-podman-", dir="/tmp")
    podman = [podman, "--root", store + "/root", "--runroot", store + "/run", "--storage-driver", "overlay"]
    tar = store + "/busybox.tar"
    subprocess.run(["tar", "-C", rootfs, "-cf", tar, "."], check=True)
    run([*podman, "import", tar, "bench-busybox"])
    probes["podman ps"] = [*podman, "ps"]
    probes["podman inspect"] = [*podman, "inspect", "ps0"]
starts, podman_starts, results, started = [], [], {}, 0
try:
    for count in counts:
        while started < count:
            starts.append(timed(["pymachine", "run", "-d", "--network", "host", "--name", f"s{started}", "busybox",
                                 "sleep", "100000"]))
            if podman:
                podman_starts.append(timed([*podman, "run", "-d", "--network", "host", "--name", f"ps{started}",
                                            "bench-busybox", "sleep", "100000"]))
            started += 1
        times = {k: [] for k in probes}
        for _ in range(10):
            for key, cmd in probes.items():
                times[key].append(timed(cmd))
        results[count] = {"probes": times, "starts": starts[max(0, count - 10):count],
                          "podman_starts": podman_starts[max(0, count - 10):count]}
    procs = 0
    for pid in os.listdir("/proc"):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if pid.isdigit() and any(b"pymachine" in a for a in cmdline[:2]):
            procs += 1
    print(json.dumps({"results": results, "resident": procs}))
finally:
    for i in range(started):
        subprocess.run(["pymachine", "rm", "-f", f"s{i}"], capture_output=True)
        if podman:
            subprocess.run([*podman, "rm", "-f", "-t", "0", f"ps{i}"], capture_output=True)
    if podman:
        subprocess.run([*podman, "system", "reset", "-f"], capture_output=True)
        shutil.rmtree(store, ignore_errors=True)
"""


def _ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def report(data: Any) -> None:
    results: dict[str, Any] = data["results"]
    counts = list(results)
    first = _ms(results[counts[0]]["starts"])
    print("medians of 10, alternating; ms (ratio to the peer on its right)")
    for count in counts:
        med = {k: _ms(v) for k, v in results[count]["probes"].items()}
        start = _ms(results[count]["starts"])
        print(f"\n{count} running containers:")
        for key, value in med.items():
            print(f"  {key:<18} {value:8.1f}")
        if "machinectl list" in med:
            print(f"  ps / machinectl list          {med['ps'] / med['machinectl list']:6.2f}")
        if "baseline ps" in med:
            print(f"  ps / baseline ps              {med['ps'] / med['baseline ps']:6.2f}")
            print(f"  inspect / baseline inspect    {med['inspect'] / med['baseline inspect']:6.2f}")
        if "podman ps" in med:
            print(f"  ps / podman ps                {med['ps'] / med['podman ps']:6.2f}")
            print(f"  inspect / podman inspect      {med['inspect'] / med['podman inspect']:6.2f}")
        print(f"  run -d, starts {max(1, int(count) - 9)}-{count}: {start:6.1f} ms  "
              f"({start / first:.2f}x starts 1-10; target <= 1.20)")
        if results[count]["podman_starts"]:
            print(f"  podman run -d, same starts:  {_ms(results[count]['podman_starts']):6.1f} ms")
    print(f"\nresident pymachine processes with {counts[-1]} running: {data['resident']} (target: 0)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="10,100", help="comma-separated container counts (ascending)")
    add_bin_option(ap)
    add_baseline_option(ap)
    ap.add_argument("--no-podman", action="store_true", help="leave podman out even if it is installed")
    args = ap.parse_args()
    data = run_driver(args.bin, DRIVER, args.counts, args.baseline, *(["no-podman"] if args.no_podman else []))
    if data is None:
        return 1
    report(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
