"""Import throughput against `tar -x` of the same layer, side by side in one run.

    python3 bench/bench_import.py [--runs 5] [--tar LAYER.tar]

Without --tar, a synthetic layer is made (4000 small files, 96 MB of large ones). Each round
runs, alternately: `tar -xf LAYER -C fresh-dir`, the same followed by `sync`, and
`pymachine image import LAYER` into a fresh store (pymachine parses, hashes, unpacks by fd
with the hostile-input checks, records the tar-split and syncs before the layer becomes
visible). Prints medians and the throughput ratios; the target is >= 0.8.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from images_common import CHECKOUT, make_tree, pymachine, report, timed


def run_one(name: str, layer: Path, target: Path, env: dict[str, str]) -> None:
    if name == "pymachine image import":
        pymachine("image", "import", "-q", str(layer), env={**env, "PYMACHINE_STATE_DIR": str(target)})
        return
    subprocess.run(["tar", "-xf", layer, "-C", target], check=True)
    if name.endswith("sync"):
        os.sync()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tar", type=Path, help="a layer tar to use instead of the synthetic one")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-import-", dir="/var/tmp"))
    try:
        if args.tar:
            layer = args.tar
        else:
            make_tree(work / "tree")
            layer = work / "layer.tar"
            subprocess.run(["tar", "--numeric-owner", "-cf", layer, "-C", work / "tree", "."], check=True)
            shutil.rmtree(work / "tree")
        size = layer.stat().st_size
        env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
        results: dict[str, list[float]] = {"tar -x": [], "tar -x && sync": [], "pymachine image import": []}
        for i in range(args.runs):
            for name in results:
                target = work / f"run{i}-{len(results[name])}-{name.split()[0]}"
                target.mkdir()
                results[name].append(timed(functools.partial(run_one, name, layer, target, env)))
                shutil.rmtree(target)
        report("import", size, results, "pymachine image import", ["tar -x", "tar -x && sync"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
