#!/usr/bin/env python3
"""Exec latency: `pymachine exec C true` against `runc exec` and `nsenter`, side by side.

In one systemd test host (or on this host, if systemd is PID 1): a detached pymachine
container (pymachine@NAME.service) and a runc container (systemd cgroup driver) on the same
busybox root file system, each running `sleep`. Then, alternately, N times each:
  pymachine exec NAME true            joins all namespaces + the unit's cgroup (via systemd)
  runc --systemd-cgroup exec ID true  joins all namespaces + the container's cgroup
  nsenter -t PID -a true              joins the namespaces only (the floor)
Prints the medians and pymachine/runc (target: <= 0.5).

    python3 bench/bench_exec.py [--runs 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import testhost  # noqa: E402

# Runs inside the host: prepares both containers, times the commands, cleans up.
DRIVER = r"""
import json, os, shutil, subprocess, sys, tempfile, time
runs, rootfs = int(sys.argv[1]), sys.argv[2]
baseline = sys.argv[3] if len(sys.argv) > 3 else ""
name = "bench-exec"
def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, **kw).stdout
subprocess.run(["pymachine", "rm", "-f", name], capture_output=True)
sh("pymachine", "run", "-d", "--network", "host", "--name", name, "busybox", "sleep", "100000")
leader = sh("pymachine", "inspect", "--format", "{{ .State.Pid }}", name).strip()
cmds = {"pymachine": ["pymachine", "exec", name, "true"], "nsenter": ["nsenter", "-t", leader, "-a", "true"]}
if baseline:
    cmds["baseline"] = [baseline + "/pymachine", "exec", name, "true"]
bundle = tempfile.mkdtemp(prefix="bench-runc-")
runc = shutil.which("runc")
try:
    if runc:
        sh(runc, "spec", cwd=bundle)
        spec = json.load(open(os.path.join(bundle, "config.json")))
        spec["root"] = {"path": rootfs, "readonly": True}
        spec["process"]["args"] = ["sleep", "100000"]
        spec["process"]["terminal"] = False
        spec["linux"]["cgroupsPath"] = "machine.slice:runc:bench-exec"
        json.dump(spec, open(os.path.join(bundle, "config.json"), "w"))
        subprocess.run([runc, "--systemd-cgroup", "run", "-d", "bench-exec"], cwd=bundle, check=True,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cmds["runc"] = [runc, "--systemd-cgroup", "exec", "bench-exec", "true"]
    times = {k: [] for k in cmds}
    for cmd in cmds.values():
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
    for _ in range(runs):
        for key, cmd in cmds.items():
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)
            times[key].append(time.perf_counter() - t)
    print(json.dumps(times))
finally:
    if runc:
        subprocess.run([runc, "--systemd-cgroup", "delete", "-f", "bench-exec"], capture_output=True)
    shutil.rmtree(bundle, ignore_errors=True)
    subprocess.run(["pymachine", "rm", "-f", name], capture_output=True)
"""


def shared_paths(*bin_dirs: str) -> list[str]:
    """The test host's default shared paths, plus the installs being timed if outside them."""
    import tempfile

    paths = [tempfile.gettempdir(), str(ROOT)]
    for bin_dir in bin_dirs:
        install = str(Path(bin_dir).resolve().parent)
        if not any(install.startswith(p) for p in paths):
            paths.append(install)
    return paths


def busybox_rootfs(host: testhost.TestHost | testhost.LocalHost) -> str:
    prep = host.run(["python3", "-c", "from machinectl_py.images import resolve; "
                     "print(resolve('busybox').layers[0])"], timeout=120)
    rootfs = prep.stdout.strip().splitlines()[-1] if prep.returncode == 0 and prep.stdout.strip() else ""
    if not rootfs:
        raise SystemExit(f"bench: cannot prepare the busybox image:\n{prep.stdout}{prep.stderr}")
    return rootfs


def add_bin_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--bin", metavar="DIR", default=str(ROOT / ".venv" / "bin"),
                    help="where the pymachine to time is (default: the checkout's .venv/bin; an editable "
                         "install there adds ~40 ms of import hooks to every pymachine process)")


def add_baseline_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--baseline", metavar="DIR", default="",
                    help="another install's bin dir (an older pymachine), timed alternating with --bin")


def run_driver(bin_dir: str, driver: str, count: int | str, baseline: str = "", *extra_args: str) -> Any:
    """Boot a test host with `bin_dir` first on PATH, run DRIVER COUNT ROOTFS [BASELINE [EXTRA...]]
    inside, return the JSON it prints last; None (after saying why) if it failed."""
    with testhost.get_host(path_prepend=[bin_dir] if Path(bin_dir).is_dir() else [],
                           shared_paths=shared_paths(*[d for d in (bin_dir, baseline) if d])) as host:
        extra = [str(Path(baseline).resolve()) if baseline else "", *extra_args] if baseline or extra_args else []
        result = host.run(["python3", "-c", driver, str(count), busybox_rootfs(host), *extra], timeout=1800)
    if result.returncode != 0:
        print(f"bench: a run failed:\n{result.stdout}{result.stderr}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    add_bin_option(ap)
    add_baseline_option(ap)
    args = ap.parse_args()
    times = run_driver(args.bin, DRIVER, args.runs, args.baseline)
    if times is None:
        return 1
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"exec latency, {args.runs} runs each, alternating, median:")
    print(f"  pymachine exec NAME true      {med['pymachine']:7.1f} ms")
    if "baseline" in med:
        print(f"  baseline pymachine exec       {med['baseline']:7.1f} ms   ({args.baseline})")
    if "runc" in med:
        print(f"  runc exec ID true             {med['runc']:7.1f} ms")
    print(f"  nsenter -t PID -a true        {med['nsenter']:7.1f} ms")
    if "runc" in med:
        print(f"  ratio pymachine/runc          {med['pymachine'] / med['runc']:7.2f}   (target <= 0.70)")
    else:
        print("  runc is not installed: no ratio (apt-get install runc)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
