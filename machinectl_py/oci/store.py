"""The OCI runtime's state under --root (default /run/pymachine-runc): ROOT/ID/state.json, the
start FIFO ROOT/ID/exec.fifo while the container is created and not yet started, and a lock that
serializes the verbs on one ID: a POSIX lock on ROOT/ID/lock, which, unlike flock, the container's
init (forked while `create` holds it) does not inherit."""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

DEFAULT_ROOT = "/run/pymachine-runc"
FIFO = "exec.fifo"


class StoreError(Exception):
    pass


def container_dir(root: str, container_id: str) -> str:
    return os.path.join(root, container_id)


def claim(root: str, container_id: str) -> int:
    """Make ROOT/ID (exclusively: a second create of the ID fails) and lock it; the lock's fd."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    path = container_dir(root, container_id)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise StoreError(f"container with id exists: {container_id}") from None
    return lock(root, container_id)


def lock(root: str, container_id: str) -> int:
    path = container_dir(root, container_id)
    try:
        fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except (FileNotFoundError, NotADirectoryError):
        raise StoreError(f"container does not exist: {container_id}") from None
    fcntl.lockf(fd, fcntl.LOCK_EX)
    return fd


def save(root: str, container_id: str, state: dict[str, Any]) -> None:
    path = os.path.join(container_dir(root, container_id), "state.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.rename(tmp, path)


def load(root: str, container_id: str) -> dict[str, Any]:
    try:
        with open(os.path.join(container_dir(root, container_id), "state.json")) as f:
            state: dict[str, Any] = json.load(f)
            return state
    except (FileNotFoundError, NotADirectoryError):
        raise StoreError(f"container does not exist: {container_id}") from None


def ids(root: str) -> list[str]:
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [n for n in names if os.path.exists(os.path.join(root, n, "state.json"))]


def remove(root: str, container_id: str) -> None:
    path = container_dir(root, container_id)
    for name in ("state.json", "state.json.tmp", FIFO, "resume.fifo", "lock"):
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def write_pid_file(path: str, pid: int) -> None:
    """Atomically, as runc: the shim reads it as soon as the command returns."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)
