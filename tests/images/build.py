"""Real test images, made by tools no one here wrote: umoci (OCI layouts with real whiteouts),
skopeo (docker-archive and OCI conversions), GNU tar and debootstrap (root file systems).

Every builder writes into a directory the caller owns (a pytest tmp_path) and returns paths.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

BUSYBOX = "/bin/busybox"


def run(*argv: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def busybox_rootfs(root: Path) -> Path:
    """A minimal runnable tree: busybox plus its applet links under bin/."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in ("sh", "ls", "cat", "echo", "test", "true", "rm", "mkdir", "touch", "stat"):
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return root


def umoci_two_layers(work: Path, tag: str = "latest") -> Path:
    """OCI layout `work/layout`: layer 1 = busybox + /etc/doomed + /data/old/{a,b} + /keep;
    layer 2 deletes /etc/doomed (a `.wh.doomed` whiteout), replaces /data/old by a new dir
    with other content, and adds /etc/added. Config: Cmd, Env, WorkingDir set by umoci."""
    layout = work / "layout"
    image = f"{layout}:{tag}"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", image)
    b1 = work / "bundle1"
    run("umoci", "unpack", "--image", image, b1)
    root = busybox_rootfs(b1 / "rootfs")
    (root / "etc" / "doomed").write_text("delete me\n")
    (root / "keep").write_text("kept\n")
    (root / "data" / "old").mkdir(parents=True)
    (root / "data" / "old" / "a").write_text("a\n")
    (root / "data" / "old" / "b").write_text("b\n")
    run("umoci", "repack", "--image", image, b1)
    b2 = work / "bundle2"
    run("umoci", "unpack", "--image", image, b2)
    root = b2 / "rootfs"
    (root / "etc" / "doomed").unlink()
    shutil.rmtree(root / "data" / "old")
    (root / "data" / "old").mkdir()
    (root / "data" / "old" / "c").write_text("c\n")
    (root / "etc" / "added").write_text("added\n")
    run("umoci", "repack", "--image", image, b2)
    run("umoci", "config", "--image", image, "--config.cmd=/bin/sh", "--config.cmd=-c",
        "--config.cmd=echo from-cmd; pwd", "--config.workingdir=/data", "--config.env=FOO=bar")
    return layout


def oci_manifest(layout: Path) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest: dict[str, Any] = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return manifest


def oci_config(layout: Path) -> dict[str, Any]:
    config_digest = oci_manifest(layout)["config"]["digest"]
    config: dict[str, Any] = json.loads(
        (layout / "blobs" / "sha256" / str(config_digest).removeprefix("sha256:")).read_text()
    )
    return config


def oci_diff_ids(layout: Path) -> list[str]:
    return list(oci_config(layout)["rootfs"]["diff_ids"])


def docker_archive(layout: Path, out: Path, ref: str, tag: str = "latest") -> Path:
    """`docker save` format, written by skopeo from an OCI layout."""
    run("skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"docker-archive:{out}:{ref}")
    return out


def oci_archive(layout: Path, out: Path, tag: str = "latest") -> Path:
    """An OCI layout as one tar, written by skopeo."""
    run("skopeo", "copy", "--quiet", f"oci:{layout}:{tag}", f"oci-archive:{out}:{tag}")
    return out


def tar_rootfs(root: Path, out: Path, compress: str | None = None) -> Path:
    """A plain rootfs tarball made by GNU tar (numeric owners), optionally compressed."""
    flags = {None: [], "gzip": ["--gzip"], "xz": ["--xz"], "zstd": ["--zstd"]}[compress]
    run("tar", "--numeric-owner", "--xattrs", *flags, "-cf", out, "-C", root, ".")
    return out


def debootstrap_minbase(target: Path, mirror: str = "http://deb.debian.org/debian") -> Path:
    # The test session lives in the test host's network namespace (conftest); the mirror is
    # reached from the machine's own.
    netns = os.environ.get("PYMACHINE_TEST_MACHINE_NETNS_PATH")
    enter = ["nsenter", f"--net={netns}"] if netns else []
    run(*enter, "debootstrap", "--variant=minbase", "bookworm", target, mirror)
    return target


# The booting Debian image of tests/integration/test_boot.py: built once per machine by
# tools/mkimage-debian and kept between runs here, outside any test host's /tmp.
BOOT_IMAGE_CACHE = Path(os.environ.get("PYMACHINE_TEST_BOOT_CACHE", "/var/cache/pymachine-test/debian-boot"))
BOOT_IMAGE_ENV = "PYMACHINE_TEST_BOOT_IMAGE"  # a tar made elsewhere (the VM tier's, from its host)


def boot_image_tar() -> Path:
    """tools/mkimage-debian's tar: the one $PYMACHINE_TEST_BOOT_IMAGE names (it must exist), else
    the cached one, built (debootstrap from the machine's own network) when missing or stale."""
    given = os.environ.get(BOOT_IMAGE_ENV)
    if given:
        if not Path(given).is_file():
            raise FileNotFoundError(f"${BOOT_IMAGE_ENV}={given}: no such file")
        return Path(given)
    BOOT_IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    out = BOOT_IMAGE_CACHE / "debian.tar"
    env = dict(os.environ)
    netns = os.environ.get("PYMACHINE_TEST_MACHINE_NETNS_PATH")
    if netns:
        env["PYMACHINE_MKIMAGE_NETNS"] = netns
    checkout = Path(__file__).resolve().parents[2]
    subprocess.run([str(checkout / "tools" / "mkimage-debian"), "--tree", str(BOOT_IMAGE_CACHE / "tree"), str(out)],
                   check=True, env=env, timeout=1200)
    return out
