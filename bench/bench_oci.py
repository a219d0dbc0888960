#!/usr/bin/env python3
"""OCI runtime: create + start + wait + delete of a `true` bundle, pymachine-runc against runc.

In one systemd test host (or on this host, if systemd is PID 1), on the same bundle (the
busybox image's root, read-only), alternately, N times each, as containerd's shim sequences it:
  RUNTIME --systemd-cgroup --root DIR create --bundle B ID ; start ID ; (poll state until stopped) ; delete ID
runc gets cgroupsPath machine.slice:runc:ID (its systemd driver's scope); pymachine-runc makes
machine-ID.scope and registers the machine with machined. Prints the medians and the ratio
(target: <= 0.8).

    python3 bench/bench_oci.py [--runs 20] [--bin /opt/pymachine/bin]
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
import json, os, shutil, subprocess, sys, tempfile, time
runs, rootfs = int(sys.argv[1]), sys.argv[2]
work = tempfile.mkdtemp(prefix="bench-oci-")
runtimes = {"pymachine-runc": shutil.which("pymachine-runc"), "runc": shutil.which("runc")}
def run(*cmd):
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=work)
def state(runtime, root, cid):
    out = subprocess.run([runtime, "--root", root, "state", cid], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["status"]
try:
    bundles = {}
    for key, runtime in runtimes.items():
        bundle = os.path.join(work, key)
        os.mkdir(bundle)
        subprocess.run([runtime, "spec"], cwd=bundle, check=True)
        spec = json.load(open(os.path.join(bundle, "config.json")))
        spec["root"] = {"path": rootfs, "readonly": True}
        spec["process"]["args"] = ["true"]
        spec["process"]["terminal"] = False
        bundles[key] = (bundle, spec)
    times = {k: {step: [] for step in ("total", "create", "start", "wait", "delete")} for k in runtimes}
    for i in range(runs + 1):
        for key, runtime in runtimes.items():
            bundle, spec = bundles[key]
            cid = f"bench-oci-{i}"
            spec["linux"]["cgroupsPath"] = f"machine.slice:runc:{cid}" if key == "runc" else ""
            json.dump(spec, open(os.path.join(bundle, "config.json"), "w"))
            root = os.path.join(work, "root-" + key)
            base = [runtime, "--systemd-cgroup", "--root", root]
            marks = [time.perf_counter()]
            run(*base, "create", "--bundle", bundle, cid)
            marks.append(time.perf_counter())
            run(*base, "start", cid)
            marks.append(time.perf_counter())
            while state(runtime, root, cid) != "stopped":
                time.sleep(0.002)
            marks.append(time.perf_counter())
            run(*base, "delete", cid)
            marks.append(time.perf_counter())
            if i:  # the first round warms the caches
                times[key]["total"].append(marks[-1] - marks[0])
                for step, (a, b) in zip(("create", "start", "wait", "delete"), zip(marks, marks[1:])):
                    times[key][step].append(b - a)
    print(json.dumps(times))
finally:
    shutil.rmtree(work, ignore_errors=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    add_bin_option(ap)
    args = ap.parse_args()
    times = run_driver(args.bin, DRIVER, args.runs)
    if times is None:
        return 1
    med = {k: {step: statistics.median(v) * 1000 for step, v in steps.items()} for k, steps in times.items()}
    print(f"create+start+wait+delete of `true`, {args.runs} runs each, alternating, median:")
    print(f"  pymachine-runc       {med['pymachine-runc']['total']:7.1f} ms")
    print(f"  runc --systemd-cgroup {med['runc']['total']:6.1f} ms")
    print(f"  ratio                {med['pymachine-runc']['total'] / med['runc']['total']:7.2f}   (target <= 0.80)")
    print("per step (median ms):  " + "  ".join(f"{step:>7}" for step in ("create", "start", "wait", "delete")))
    for key in ("pymachine-runc", "runc"):
        print(f"  {key:20}  " + "  ".join(f"{med[key][step]:7.1f}" for step in ("create", "start", "wait", "delete")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
