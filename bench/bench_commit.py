"""Commit against `tar -c` of the same upper dir, side by side in one run.

    python3 bench/bench_commit.py [--runs 5]

A container record (image: the built-in busybox) gets an upper dir holding a synthetic tree
(4000 small files, 96 MB of large ones) plus overlay whiteouts. After one untimed warm-up
round, each round runs, alternately, starting with no dirty pages (`sync`, untimed):

- `tar -cf OUT -C upper .` (GNU tar writing a file: with /dev/null it would skip reading);
- the same followed by `sync`, for information;
- `pymachine commit` (a new process: interpreter start-up included, byte code cached as in an
  installed copy). It walks the upper dir by fd, converts whiteouts, writes the layer's tar
  into the store's staging dir while hashing it (sha256 = diff_id), fsyncs the small metadata
  files and renames the layer and image into place. Like `tar -c`, and like docker and podman,
  it leaves the layer's data to the kernel's writeback (store.py: durability). The layer is
  removed again between rounds, untimed.

Prints medians, the throughput ratio against `tar -c` (the target: >= 0.8), and, for
information, the CPU time (user + sys, all threads) each one used and the load average:
commit spreads its work over two cores, so it is slowed down more than tar when other jobs
occupy them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from images_common import CHECKOUT, make_tree, pymachine, python, report, timed


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(name: str, upper: Path, out: Path, env: dict[str, str], tag: str) -> None:
    if name == "pymachine commit":
        pymachine("commit", "-q", "bench", tag, env=env)
        return
    subprocess.run(["tar", "-cf", out, "-C", upper, "."], check=True)
    if name.endswith("sync"):
        os.sync()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-commit-", dir="/var/tmp"))
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT), "PYMACHINE_STATE_DIR": str(work / "state")}
    # As installed: byte code cached (compiling the modules on every run is not what users pay).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    try:
        pymachine("image", "inspect", "busybox", env=env)  # creates the built-in image
        image_id = json.loads(subprocess.run(
            [python(), "-m", "machinectl_py", "image", "inspect", "busybox"],
            env=env, capture_output=True, text=True, check=True).stdout)[0]["Id"]
        cdir = work / "state" / "containers" / "bench"
        upper = cdir / "upper"
        upper.mkdir(parents=True)
        (cdir / "container.json").write_text(json.dumps({
            "name": "bench", "id": "be" * 16, "image": {"name": "busybox:latest", "id": image_id},
            "spec": {"name": "bench", "image": "busybox"}, "created": 0.0, "state": "exited",
        }))
        size = make_tree(upper)
        (upper / "etc").mkdir()
        for name in ("passwd", "group", "os-release"):
            os.mknod(upper / "etc" / name, stat.S_IFCHR, os.makedev(0, 0))
        results: dict[str, list[float]] = {"tar -c": [], "tar -c && sync": [], "pymachine commit": []}
        cpu: dict[str, list[float]] = {name: [] for name in results}
        out = work / "out.tar"
        load_before = os.getloadavg()[0]
        for i in range(-1, args.runs):  # round -1 warms up (page cache, byte code), untimed
            for name, times in results.items():
                cpu_before = children_cpu()
                elapsed = timed(functools.partial(run_one, name, upper, out, env, f"b:{i + 1}"))
                if i >= 0:
                    times.append(elapsed)
                    cpu[name].append(children_cpu() - cpu_before)  # `sync` itself costs no CPU here
                if name == "pymachine commit":
                    pymachine("image", "rm", f"b:{i + 1}", env=env)
                else:
                    out.unlink()
        report("commit", size, results, "pymachine commit", ["tar -c", "tar -c && sync"])
        print("  cpu (user+sys, medians): " + ", ".join(
            f"{name} {statistics.median(cpu[name]) * 1000:.0f} ms" for name in ("tar -c", "pymachine commit")))
        print(f"  load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
