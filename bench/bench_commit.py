"""Commit against `tar -c` of the same upper dir, side by side in one run.

    python3 bench/bench_commit.py [--runs 5]

A container record (image: the built-in busybox) gets an upper dir holding a synthetic tree
(4000 small files, 96 MB of large ones) plus overlay whiteouts. Each round runs, alternately:
`tar -cf OUT -C upper .` (GNU tar writing a file: with /dev/null it would skip reading),
the same followed by `sync`, and `pymachine commit` (walks the upper dir by fd, converts
whiteouts, hashes, writes the unpacked layer and its tar-split, syncs, registers the image;
the layer is removed again between rounds, untimed). Prints medians and throughput ratios.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from images_common import CHECKOUT, make_tree, pymachine, python, report, timed


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
        out = work / "out.tar"
        for i in range(-1, args.runs):  # round -1 warms up (page cache, byte code), untimed
            for name, times in results.items():
                elapsed = timed(functools.partial(run_one, name, upper, out, env, f"b:{i + 1}"))
                if i >= 0:
                    times.append(elapsed)
                if name == "pymachine commit":
                    pymachine("image", "rm", f"b:{i + 1}", env=env)
                else:
                    out.unlink()
        report("commit", size, results, "pymachine commit", ["tar -c", "tar -c && sync"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
