#!/usr/bin/env python3
"""Host memory per idle detached container: what the manager keeps resident, pymachine against
systemd-nspawn (its supervisor stays resident for the container's life).

In one systemd test host (or on this host, if systemd is PID 1): N idle containers (`sleep`)
per side, on the same busybox root file system. For every process in each container's unit,
the proportional set size (Pss from /proc/PID/smaps_rollup) is summed separately for the
payload (`sleep`) and for everything else (the manager's resident processes). Prints the
resident manager processes and their PSS per container (target for pymachine: none).

    python3 bench/bench_idle.py [--count 10]
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
import json, os, subprocess, sys, time
count, rootfs = int(sys.argv[1]), sys.argv[2]
def run(cmd):
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
def pids_of(unit):
    cgroup = subprocess.run(["systemctl", "show", "-p", "ControlGroup", "--value", unit],
                            capture_output=True, text=True).stdout.strip()
    for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup"):
        pids = []
        try:
            for line in subprocess.run(["find", root + cgroup, "-name", "cgroup.procs"],
                                       capture_output=True, text=True).stdout.split():
                pids += [int(p) for p in open(line).read().split()]
        except OSError:
            continue
        if pids:
            return pids
    return []
def pss_kib(pid):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0
def measure(units):
    manager = payload = resident = 0
    for unit in units:
        for pid in pids_of(unit):
            comm = open(f"/proc/{pid}/comm").read().strip()
            if comm == "sleep":
                payload += pss_kib(pid)
            else:
                manager += pss_kib(pid)
                resident += 1
    return {"manager_kib": manager, "payload_kib": payload, "manager_processes": resident}
def pymachine_processes():
    # A pymachine process runs the console script (python3 .../pymachine ARGS) or `-m machinectl_py`.
    found = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")[:3]
        except OSError:
            continue
        if any(a.endswith(b"/pymachine") or a in (b"pymachine", b"machinectl_py") for a in argv):
            found += 1
    return found
result = {}
try:
    for i in range(count):
        run(["pymachine", "run", "-d", "--network", "host", "--name", f"pi{i}", "busybox", "sleep", "100000"])
        run(["systemd-run", "--quiet", f"--unit=ni{i}", "-p", "Type=notify", "-p", "NotifyAccess=all",
             "-p", "Delegate=yes", "-p", "Slice=machine.slice", "systemd-nspawn", "--keep-unit", "-q",
             "--read-only", "-M", f"ni{i}", "-D", rootfs, "sleep", "100000"])
    time.sleep(1)
    result["pymachine"] = measure([f"pymachine@pi{i}.service" for i in range(count)])
    result["nspawn"] = measure([f"ni{i}.service" for i in range(count)])
    result["pymachine"]["anywhere"] = pymachine_processes()
    print(json.dumps(result))
finally:
    for i in range(count):
        subprocess.run(["pymachine", "rm", "-f", f"pi{i}"], capture_output=True)
        subprocess.run(["systemctl", "stop", f"ni{i}.service"], capture_output=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10)
    add_bin_option(ap)
    args = ap.parse_args()
    r = run_driver(args.bin, DRIVER, args.count)
    if r is None:
        return 1
    n = args.count
    print(f"host memory per idle detached container ({n} idle `sleep` containers each):")
    for side in ("pymachine", "nspawn"):
        m = r[side]
        print(f"  {side:<10} resident manager processes: {m['manager_processes'] / n:4.1f} per container, "
              f"{m['manager_kib'] / n / 1024:5.2f} MiB PSS per container (payload: {m['payload_kib'] / n:.0f} KiB)")
    print(f"  pymachine processes anywhere on the host while the {n} containers run: {r['pymachine']['anywhere']}"
          "   (target: 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
