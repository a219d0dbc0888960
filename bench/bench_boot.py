#!/usr/bin/env python3
"""Booting an OS container until its systemd says READY=1: `pymachine start` against
`systemd-nspawn -b --notify-ready=yes` as a Type=notify service, on the same Debian tree.

In one systemd test host (or on this host, if systemd is PID 1), alternating, each command
returning once the guest's systemd has sent READY=1 (its boot is done), one machine per side
booted again and again (its first boot, which commits the machine id, makes the journal and,
for nspawn -U, chowns the tree, is not timed; nspawn's trees keep what their first boot wrote,
and so does the container's upper dir):
  pymachine start pb                               the unit becomes active on the guest's READY=1
  systemd-run --unit nb -p Type=notify -p NotifyAccess=all ... systemd-nspawn --keep-unit -q -b
      --notify-ready=yes -M nb -D TREE             nspawn's default: no user namespace
  the same with -U (nu, on a copy of TREE)         as nspawn's own systemd-nspawn@.service runs it
pymachine runs with its default, a user namespace (--userns auto), or with --userns host.
pymachine's machine is in the host's network, as nspawn's (the bridge's cost is bench_network's).
The image is tools/mkimage-debian's, cached as for the tests (tests/images/build.py); nspawn boots
its tree (inside the test host, writes go to the test host's overlay, not to the cache). Each
machine is stopped outside the timing.

Prints the medians, pymachine/nspawn and pymachine/nspawn -U (target: <= 0.9), and where the
time goes, from the timestamps systemd keeps (read after each boot, outside the timing): the
command until the unit starts (the host's systemd's InactiveExitTimestamp: the client's own
start and its D-Bus calls), until the guest's PID 1 runs (the guest's UserspaceTimestamp: the
unit's setup, pymachine's setup process or nspawn itself), the guest's boot (until its
FinishTimestamp, when it sends READY=1), and from there until the command returns.

    python3 bench/bench_boot.py [--runs 7] [--userns auto|host] [--bin DIR]

Time it with an installed pymachine (--bin /opt/pymachine/bin, as tools/install-and-demo makes
it): the checkout's editable .venv adds an import hook to both pymachine processes of a start.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import testhost  # noqa: E402
from bench_exec import add_bin_option, shared_paths  # noqa: E402
from images import build  # noqa: E402

DRIVER = r"""
import json, subprocess, sys, time
runs, tar, tree, userns = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def run(cmd):
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
def show(cmd, *props):
    out = subprocess.run([*cmd, *(f"-p{p}" for p in props)], capture_output=True, text=True).stdout
    return {k: int(v) for k, _, v in (line.partition("=") for line in out.splitlines()) if v.isdigit()}
run(["pymachine", "image", "import", tar, "--name", "debian-boot"])
run(["pymachine", "create", "--name", "pb", "-b", "--network", "host", f"--userns={userns}", "debian-boot"])
tree_u = "/var/tmp/bench-boot-tree-U"  # nspawn -U chowns its tree: its own copy (in the overlay)
run(["rm", "-rf", tree_u])
run(["cp", "-a", tree, tree_u])
def nspawn(machine, root, *extra):
    return ["systemd-run", "--quiet", f"--unit={machine}", "-p", "Type=notify", "-p", "NotifyAccess=all",
            "-p", "Delegate=yes", "-p", "Slice=machine.slice", "-p", "KillMode=mixed",
            "-p", "CollectMode=inactive-or-failed", "systemd-nspawn", "--keep-unit", "-q", "-b",
            "--notify-ready=yes", "-M", machine, *extra, "-D", root]
sides = {  # name: (machine, unit, start, stop)
    "pymachine": ("pb", "pymachine@pb.service", ["pymachine", "start", "pb"], ["pymachine", "stop", "pb"]),
    "nspawn": ("nb", "nb.service", nspawn("nb", tree), ["systemctl", "stop", "nb.service"]),
    "nspawn -U": ("nu", "nu.service", nspawn("nu", tree_u, "-U"), ["systemctl", "stop", "nu.service"]),
}
order = list(sides)
times = {side: [] for side in sides}
phases = {side: [] for side in sides}
try:
    for i in range(runs + 1):
        for side in order[i % 3:] + order[:i % 3]:  # each side first in turn
            machine, unit, start, stop = sides[side]
            t0 = time.monotonic_ns() // 1000
            run(start)
            t1 = time.monotonic_ns() // 1000
            if i:  # the first boot of each (machine id committed, journal made, -U's chown) is not timed
                times[side].append((t1 - t0) / 1e6)
                host = show(["systemctl", "show", unit], "InactiveExitTimestampMonotonic")
                guest = show(["systemctl", "-M", machine, "show"], "UserspaceTimestampMonotonic",
                             "FinishTimestampMonotonic")
                unit_start, pid1 = host["InactiveExitTimestampMonotonic"], guest["UserspaceTimestampMonotonic"]
                finish = guest["FinishTimestampMonotonic"]
                phases[side].append([(unit_start - t0) / 1000, (pid1 - unit_start) / 1000, (finish - pid1) / 1000,
                                     (t1 - finish) / 1000])
            subprocess.run(stop, capture_output=True)
finally:
    subprocess.run(["pymachine", "rm", "-f", "pb"], capture_output=True)
    for machine in ("nb", "nu"):
        subprocess.run(["systemctl", "stop", f"{machine}.service"], capture_output=True)
    subprocess.run(["rm", "-rf", tree_u], capture_output=True)
print(json.dumps({"times": times, "phases": phases}))
"""

PHASES = ("command -> unit starts", "unit starts -> guest PID 1", "guest PID 1 -> READY=1",
          "READY=1 -> command returns")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--userns", choices=("auto", "host"), default="auto",
                    help="pymachine's user namespace mode (default: auto, pymachine's default)")
    add_bin_option(ap)
    args = ap.parse_args()
    tar = build.boot_image_tar()
    tree = build.BOOT_IMAGE_CACHE / "tree"
    # Not the cache: the test host sees it through its overlay, writes stay there.
    shared = shared_paths(args.bin)
    bin_dir = str(Path(args.bin).resolve())
    with testhost.get_host(path_prepend=[bin_dir], shared_paths=shared) as host:
        result = host.run(["python3", "-c", DRIVER, str(args.runs), str(tar), str(tree), args.userns], timeout=1800)
    if result.returncode != 0:
        print(f"bench: a run failed:\n{result.stdout}{result.stderr}", file=sys.stderr)
        return 1
    out = json.loads(result.stdout.strip().splitlines()[-1])
    times, phases = out["times"], out["phases"]
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"boot until READY=1, {args.runs} runs each, alternating, pymachine --userns={args.userns}, "
          f"median (min-max):")
    labels = {"pymachine": f"pymachine start (--userns={args.userns})", "nspawn": "systemd-nspawn -b (service)",
              "nspawn -U": "systemd-nspawn -b -U (service)"}
    for side, label in labels.items():
        lo, hi = min(times[side]) * 1000, max(times[side]) * 1000
        print(f"  {label:36s} {med[side]:7.0f} ms  ({lo:.0f}-{hi:.0f})")
    for side in ("nspawn", "nspawn -U"):
        print(f"  ratio pymachine/{side:19s} {med['pymachine'] / med[side]:7.2f}   (target <= 0.90)")
    print("where the time goes (medians, ms):")
    print(f"  {'':30s} " + " ".join(f"{side:>10s}" for side in labels))
    for i, phase in enumerate(PHASES):
        cells = " ".join(f"{statistics.median(p[i] for p in phases[side]):10.1f}" for side in labels)
        print(f"  {phase:30s} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
