#!/usr/bin/env python3
"""Booting an OS container until its systemd says READY=1: `pymachine run -d -b` against
`systemd-nspawn -b --notify-ready=yes` as a Type=notify service, on the same Debian tree.

In one systemd test host (or on this host, if systemd is PID 1), alternating, each command
returning once the guest's systemd has sent READY=1 (its boot is done), one machine per side
booted again and again (its first boot, which commits the machine id and makes the journal, is
not timed; nspawn's tree keeps what its first boot wrote, and so does the container's upper dir):
  pymachine start pb                               the unit becomes active on the guest's READY=1
  systemd-run --unit nb -p Type=notify -p NotifyAccess=all ... systemd-nspawn --keep-unit -q -b
      --notify-ready=yes [-U] -M nb -D TREE        nspawn's own readiness, passed on by its unit
Both with a user namespace (--userns auto, the default: pymachine's default, nspawn -U as its own
systemd-nspawn@.service runs it) or both without (--userns host: nspawn without -U).
pymachine's machine is in the host's network, as nspawn's (the bridge's cost is bench_network's).
The image is tools/mkimage-debian's, cached as for the tests (tests/images/build.py); nspawn boots
its tree (inside the test host, writes go to the test host's overlay, not to the cache). Each
machine is stopped outside the timing. Prints the medians and pymachine/nspawn
(target: <= 0.9).

    python3 bench/bench_boot.py [--runs 5] [--userns auto|host]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

import testhost  # noqa: E402
from images import build  # noqa: E402

DRIVER = r"""
import json, subprocess, sys, time
runs, tar, tree, userns = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def run(cmd):
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
run(["pymachine", "image", "import", tar, "--name", "debian-boot"])
run(["pymachine", "create", "--name", "pb", "-b", "--network", "host", f"--userns={userns}", "debian-boot"])
NSPAWN = ["systemd-run", "--quiet", "--unit=nb", "-p", "Type=notify", "-p", "NotifyAccess=all",
          "-p", "Delegate=yes", "-p", "Slice=machine.slice", "-p", "KillMode=mixed",
          "-p", "CollectMode=inactive-or-failed", "systemd-nspawn", "--keep-unit", "-q", "-b", "--notify-ready=yes",
          "-M", "nb", *(["-U"] if userns == "auto" else []), "-D", tree]
start = {"pymachine": ["pymachine", "start", "pb"], "nspawn": NSPAWN}
stop = {"pymachine": ["pymachine", "stop", "pb"], "nspawn": ["systemctl", "stop", "nb.service"]}
times = {"pymachine": [], "nspawn": []}
try:
    for i in range(runs + 1):
        for side in ("pymachine", "nspawn") if i % 2 == 0 else ("nspawn", "pymachine"):
            t = time.perf_counter()
            run(start[side])
            if i:  # the first boot of each (machine id committed, journal made) is not timed
                times[side].append(time.perf_counter() - t)
            subprocess.run(stop[side], capture_output=True)
finally:
    subprocess.run(["pymachine", "rm", "-f", "pb"], capture_output=True)
    subprocess.run(["systemctl", "stop", "nb.service"], capture_output=True)
print(json.dumps(times))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--userns", choices=("auto", "host"), default="auto")
    args = ap.parse_args()
    tar = build.boot_image_tar()
    tree = build.BOOT_IMAGE_CACHE / "tree"
    shared = [str(ROOT)]  # not the cache: the test host sees it through its overlay, writes stay there
    with testhost.get_host(path_prepend=[str(ROOT / ".venv" / "bin")], shared_paths=shared) as host:
        # nspawn writes to its tree: inside a test host, to the overlay's copy of the cache.
        result = host.run(["python3", "-c", DRIVER, str(args.runs), str(tar), str(tree), args.userns], timeout=1800)
    if result.returncode != 0:
        print(f"bench: a run failed:\n{result.stdout}{result.stderr}", file=sys.stderr)
        return 1
    import json

    times = json.loads(result.stdout.strip().splitlines()[-1])
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"boot until READY=1, {args.runs} runs each, alternating, --userns={args.userns}, median (min-max):")
    for side, label in (("pymachine", "pymachine start (--boot)"), ("nspawn", "systemd-nspawn -b (service)")):
        lo, hi = min(times[side]) * 1000, max(times[side]) * 1000
        print(f"  {label:30s} {med[side]:7.0f} ms  ({lo:.0f}-{hi:.0f})")
    print(f"  ratio pymachine/nspawn         {med['pymachine'] / med['nspawn']:7.2f}   (target <= 0.90)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
