#!/usr/bin/env python3
"""CPU time per start, exec and detached start: the work, counted by the kernel, that a
loaded machine cannot blur.

Wall-clock figures (bench_start/bench_exec/bench_detached) swing by more than 5% on a
machine shared with other jobs: each command waits for CPUs they hold. The CPU time the
whole systemd test host spends (its cgroup's cpuacct.usage on a hybrid host, cpu.stat's
usage_usec on a pure v2 one: systemd, dbus-daemon, machined, journald, pymachine's
processes, the container) changes little with the load outside it, so this compares two
installs, or pymachine and its peer, by the work each command makes. Per command, alternating,
CPU ms per command (median of rounds of N) and the wall-clock median beside it:
  pymachine run --rm busybox true    against systemd-nspawn -q -D ROOTFS true
  pymachine exec NAME true           against runc --systemd-cgroup exec ID true
  pymachine run -d ... sleep         against systemd-run ... systemd-nspawn (as bench_detached)

    python3 bench/bench_cpu.py [--runs 10] [--rounds 5] [--bin DIR]
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

# Runs inside the host. The bench's own forks count on both sides alike.
DRIVER = r"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time
runs, rootfs, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[4])
def usage_ns():
    try:
        with open("/sys/fs/cgroup/cpuacct/cpuacct.usage") as f:
            return int(f.read())
    except FileNotFoundError:
        with open("/sys/fs/cgroup/cpu.stat") as f:
            return int(f.readline().split()[1]) * 1000
def run(cmd):
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, **kw).stdout
runc = shutil.which("runc")
bundle = tempfile.mkdtemp(prefix="bench-runc-")
sh("pymachine", "run", "-d", "--network", "host", "--name", "cpu-exec", "busybox", "sleep", "100000")
sh(runc, "spec", cwd=bundle)
spec = json.load(open(os.path.join(bundle, "config.json")))
spec["root"] = {"path": rootfs, "readonly": True}
spec["process"]["args"], spec["process"]["terminal"] = ["sleep", "100000"], False
spec["linux"]["cgroupsPath"] = "machine.slice:runc:cpu-exec"
json.dump(spec, open(os.path.join(bundle, "config.json"), "w"))
subprocess.run([runc, "--systemd-cgroup", "run", "-d", "cpu-exec"], cwd=bundle, check=True,
               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
seq = [0]  # unit names are not reused: a stopped transient unit may linger (failed) a while
def detached_py(i):
    return ["pymachine", "run", "-d", "--network", "host", "--name", f"cpb{seq[0] + i}", "busybox", "sleep", "100000"]
def detached_ns(i):
    return ["systemd-run", "--quiet", f"--unit=cnb{seq[0] + i}", "-p", "Type=notify", "-p", "NotifyAccess=all",
            "-p", "Delegate=yes", "-p", "Slice=machine.slice", "-p", "KillMode=mixed",
            "systemd-nspawn", "--keep-unit", "-q", "--read-only", "-M", f"cnb{seq[0] + i}", "-D", rootfs,
            "sleep", "100000"]
def clean_detached():
    for i in range(runs):
        subprocess.run(["pymachine", "rm", "-f", f"cpb{seq[0] + i}"], capture_output=True)
        subprocess.run(["systemctl", "stop", f"cnb{seq[0] + i}.service"], capture_output=True)
    seq[0] += runs
cases = {
    "start": (lambda i: ["pymachine", "run", "--rm", "--network", "host", "busybox", "true"]),
    "start-peer": (lambda i: ["systemd-nspawn", "-q", "-D", rootfs, "/bin/true"]),
    "exec": (lambda i: ["pymachine", "exec", "cpu-exec", "true"]),
    "exec-peer": (lambda i: [runc, "--systemd-cgroup", "exec", "cpu-exec", "true"]),
    "detached": detached_py,
    "detached-peer": detached_ns,
}
cpu = {k: [] for k in cases}
wall = {k: [] for k in cases}
try:
    for key, make in cases.items():  # warm up
        run(make(0))
    clean_detached()
    for _ in range(rounds):
        for key, make in cases.items():
            times = []
            time.sleep(1)  # the previous batch's teardown (stop hooks, journal) settles first
            before = usage_ns()
            for i in range(runs):
                t = time.perf_counter()
                run(make(i))
                times.append(time.perf_counter() - t)
            cpu[key].append((usage_ns() - before) / runs / 1e6)
            wall[key].append(statistics.median(times) * 1000)
            if key.startswith("detached"):
                clean_detached()
    print(json.dumps({"cpu": cpu, "wall": wall}))
finally:
    clean_detached()
    subprocess.run([runc, "--systemd-cgroup", "delete", "-f", "cpu-exec"], capture_output=True)
    shutil.rmtree(bundle, ignore_errors=True)
    subprocess.run(["pymachine", "rm", "-f", "cpu-exec"], capture_output=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10, help="commands per round (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, alternating the commands (default 5)")
    add_bin_option(ap)
    args = ap.parse_args()
    result = run_driver(args.bin, DRIVER, args.runs, "", str(args.rounds))
    if result is None:
        return 1
    cpu = {k: statistics.median(v) for k, v in result["cpu"].items()}
    wall = {k: statistics.median(v) for k, v in result["wall"].items()}
    print(f"CPU time of the whole test host per command, {args.rounds} rounds of {args.runs}, median "
          f"(wall-clock median beside it):")
    labels = {"start": ("run --rm busybox true", "systemd-nspawn -D ROOTFS true"),
              "exec": ("exec NAME true", "runc exec ID true"),
              "detached": ("run -d NAME sleep", "nspawn as a service")}
    for key, (ours, peer) in labels.items():
        print(f"  {ours:24} {cpu[key]:6.1f} ms CPU ({wall[key]:6.1f} ms)   {peer:30} {cpu[key + '-peer']:6.1f} ms "
              f"CPU ({wall[key + '-peer']:6.1f} ms)   ratio {cpu[key] / cpu[key + '-peer']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
