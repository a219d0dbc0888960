"""Pull from a local registry against `skopeo copy docker://... oci:DIR` and `podman pull`, side by side.

    python3 bench/bench_pull.py [--runs 3] [--layer-mb 40] [--layers 5]

Starts Debian's docker-registry on 127.0.0.1 (plain HTTP, storage in a temp dir), makes an
OCI layout of LAYERS gzip layers of LAYER_MB each (half random bytes, half text, so gzip has
work to do on both sides) and puts it into the registry with skopeo. Then, alternately, each
round (after one untimed warm-up) times:

- `skopeo copy docker://REG/bench/pull:1 oci:DIR:1`: downloads and verifies the compressed
  blobs into an OCI layout (which is not yet usable as a root file system: nothing unpacked);
- the same, then GNU tar unpacking every layer into one tree and `sync`: a usable tree by hand;
- `podman pull` (Debian's podman, when installed) into an empty store of its own (`--root`,
  overlay driver): downloaded, verified and unpacked, ready to run, but not synced;
- `pymachine pull REG/bench/pull:1`: downloads, verifies, decompresses and unpacks every layer
  into an empty store (`PYMACHINE_STATE_DIR` in the temp dir), synced, ready to run.

Both start from no dirty pages (`sync`, untimed). Prints medians and the time ratios (pymachine's time
over each peer's: the target is <= 0.8 against a usable image, i.e. skopeo + tar and podman).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from images_common import CHECKOUT, python, report, timed


def make_layout(root: Path, layers: int, layer_mb: int) -> int:
    """An OCI layout written directly (tar by GNU tar, gzip by Python's gzip module); returns
    the uncompressed size of all layers."""
    rng = random.Random(7)
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return "sha256:" + digest, len(data)

    diff_ids, descriptors, total = [], [], 0
    for i in range(layers):
        tree = root.parent / f"tree{i}"
        (tree / f"layer{i}").mkdir(parents=True)
        for j in range(8):
            size = (layer_mb << 20) // 8
            data = rng.randbytes(size) if j % 2 else (b"pymachine pulls layers %d\n" % j) * (size // 26)
            (tree / f"layer{i}" / f"file{j}").write_bytes(data)
        tar = subprocess.run(["tar", "--numeric-owner", "-cf", "-", "-C", tree, "."],
                             check=True, capture_output=True).stdout
        shutil.rmtree(tree)
        total += len(tar)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        digest, size = put(gzip.compress(tar, compresslevel=6, mtime=0))
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
                            "size": size})
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config_digest, config_size = put(json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                           "size": config_size}, "layers": descriptors}
    manifest_digest, manifest_size = put(json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": "1"}}]}
    (root / "index.json").write_text(json.dumps(index))
    return total


def start_registry(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    (work / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {work / 'storage'}\n"
        f"http:\n  addr: {address}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(work / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://{address}/v2/", timeout=1).close()
            return proc, address
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("docker-registry did not start")


def remove_store(target: Path) -> None:
    """A run's store; podman's with `podman system reset` (it may hold mounts under its root)."""
    if (target / "root").is_dir() and shutil.which("podman"):
        subprocess.run(["podman", "--root", f"{target}/root", "--runroot", f"{target}/run", "--storage-driver",
                        "overlay", "--events-backend", "file", "system", "reset", "--force"],
                       check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(target, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--layer-mb", type=int, default=40)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pull-", dir="/var/tmp"))
    proc = None
    try:
        size = make_layout(work / "layout", args.layers, args.layer_mb)
        proc, address = start_registry(work)
        ref = f"{address}/bench/pull:1"
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{work / 'layout'}:1",
                        f"docker://{ref}"], check=True)
        env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
        commands: dict[str, Callable[[Path], list[str]]] = {
            "skopeo copy docker:// oci:": lambda target: ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                                          f"docker://{ref}", f"oci:{target}:1"],
            "pymachine pull": lambda target: [python(), "-m", "machinectl_py", "pull", "-q", "--tls-verify=false",
                                              ref],
        }
        # skopeo's layout unpacked into one tree by GNU tar, layer after layer, then synced (as
        # pull syncs before its rename): what "a usable image" costs by hand.
        unpack = ("import json,sys; d=sys.argv[1]; m=json.load(open(d+'/index.json'))['manifests'][0]['digest'];"
                  "print(' '.join(d+'/blobs/sha256/'+x['digest'][7:] for x in "
                  "json.load(open(d+'/blobs/sha256/'+m[7:]))['layers']))")
        # Debian's podman into a store of its own (overlay driver, as podman uses by default as root):
        # pulled and unpacked, ready to run, but not synced (containers/storage leaves that to writeback).
        if shutil.which("podman"):
            commands["podman pull"] = lambda target: [
                "podman", "--root", f"{target}/root", "--runroot", f"{target}/run", "--storage-driver", "overlay",
                "--events-backend", "file", "pull", "-q", "--tls-verify=false", ref]
        commands["skopeo copy + tar -xz + sync"] = lambda target: [
            "sh", "-c", f'mkdir -p {target} && skopeo copy --quiet --src-tls-verify=false '
            f'docker://{ref} oci:{target}/oci:1 && mkdir {target}/root && '
            f'for b in $(python3 -c "{unpack}" {target}/oci); do tar -xzf $b -C {target}/root; done && sync']
        results: dict[str, list[float]] = {name: [] for name in commands}
        for i in range(args.runs + 1):
            for n, (name, argv) in enumerate(commands.items()):
                target = work / f"run{i}-{n}"
                run_env = {**env, "PYMACHINE_STATE_DIR": str(target)}
                elapsed = timed(functools.partial(subprocess.run, argv(target), check=True, env=run_env,
                                                  stdout=subprocess.DEVNULL))
                if i:  # the first round warms the caches
                    results[name].append(elapsed)
                remove_store(target)
        report(f"pull ({args.layers} layers)", size, results, "pymachine pull",
               [name for name in commands if name != "pymachine pull"], time_ratio=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
