"""The built-in `busybox` image, made on first use from the host's busybox-static, without network.

It is built as a tar (deterministic: fixed order, owners and times taken from the busybox
binary) and imported through the same path as any archive, so it is content-addressed like
every other image: the same host busybox always gives the same layer and image id.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import subprocess
import tarfile

from machinectl_py.errors import UsageError
from machinectl_py.images import archive
from machinectl_py.images.errors import ImageError
from machinectl_py.images.store import Store, canonical_json, normalize_reference

BUSYBOX = "/bin/busybox"
NAME = "busybox:latest"
DIRS = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "etc": 0o755,
    "dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755, "tmp": 0o1777, "root": 0o700,
    "home": 0o755, "var": 0o755, "var/tmp": 0o1777,
}
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def is_builtin(ref: str) -> bool:
    with contextlib.suppress(UsageError):
        return normalize_reference(ref) == NAME
    return False


def _busybox_version(binary: str) -> str:
    out = subprocess.run([binary], capture_output=True, text=True, check=False).stdout
    words = out.split()
    return words[1].lstrip("v") if len(words) > 1 and words[0] == "BusyBox" else "unknown"


def _applets(binary: str) -> list[str]:
    result = subprocess.run([binary, "--list-full"], capture_output=True, text=True, check=False)
    if result.returncode == 0 and result.stdout.strip():
        return sorted(set(result.stdout.split()))
    result = subprocess.run([binary, "--list"], capture_output=True, text=True, check=True)
    return sorted({"bin/" + a for a in result.stdout.split()})


def build_tar(out: io.BufferedWriter | io.BytesIO, binary: str = BUSYBOX) -> dict[str, str]:
    """Write the rootfs tar; returns facts for the config (version, created)."""
    st = os.stat(binary)
    if not (st.st_mode & 0o111):
        raise ImageError(f"{binary} is not executable")
    mtime = int(st.st_mtime)
    version = _busybox_version(binary)
    applets = [a for a in _applets(binary) if a != "bin/busybox" and "/" in a and ".." not in a]
    os_release = (
        f'NAME="BusyBox"\nID=busybox\nVERSION_ID={version}\n'
        f'PRETTY_NAME="BusyBox {version} (pymachine built-in)"\nHOME_URL="https://busybox.net/"\n'
    )

    def info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.size, ti.mtime, ti.linkname = kind, mode, size, mtime, link
        ti.uname = ti.gname = ""
        return ti

    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(set(DIRS) | {a.rsplit("/", 1)[0] for a in applets}):
            tar.addfile(info(d + "/", tarfile.DIRTYPE, DIRS.get(d, 0o755)))
        with open(binary, "rb") as f:
            tar.addfile(info("bin/busybox", tarfile.REGTYPE, 0o755, st.st_size), f)
        for applet in applets:
            depth = applet.count("/")
            tar.addfile(info(applet, tarfile.SYMTYPE, 0o777, link="../" * depth + "bin/busybox"))
        for name, text, mode in (
            ("etc/passwd", PASSWD, 0o644),
            ("etc/group", GROUP, 0o644),
            ("etc/os-release", os_release, 0o644),
        ):
            data = text.encode()
            tar.addfile(info(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))
    created = datetime.datetime.fromtimestamp(mtime, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"version": version, "created": created}


def _config(diff_id: str, created: str, version: str) -> bytes:
    from machinectl_py.images import DEFAULT_PATH_ENV
    from machinectl_py.images.formats import host_architecture

    return canonical_json({
        "architecture": host_architecture(),
        "os": "linux",
        "created": created,
        "config": {"Env": [DEFAULT_PATH_ENV], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [
            {"created": created, "created_by": f"pymachine built-in busybox {version} from {BUSYBOX}"}
        ],
    })


def ensure_busybox(store: Store | None = None, binary: str = BUSYBOX) -> str:
    """Create (or find) the built-in image; returns its id."""
    if not os.path.exists(binary):
        raise ImageError(f"the built-in busybox image needs {binary}", hint="apt-get install busybox-static")
    store = (store or Store()).ensure()
    with store.gc_shared(), store.staging() as staging:
        tar_path = staging.path / "busybox.tar"
        with open(tar_path, "wb") as f:
            facts = build_tar(f, binary)
        layer_path, layer_fd = staging.mkdir("layer")
        try:
            with open(tar_path, "rb") as f:
                diff_id, size, stats = archive.extract_layer(f, layer_fd)
            from machinectl_py.images.store import write_layer_info

            write_layer_info(layer_fd, diff_id, size, stats)
        finally:
            os.close(layer_fd)
        raw = _config(diff_id, facts["created"], facts["version"])
        with store.write_lock():
            store.install_layers({} if store.has_layer(diff_id) else {diff_id: layer_path})
            image_id = store.write_image(raw)
            store.set_tags(image_id, [NAME])
    return image_id
