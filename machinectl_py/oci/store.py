"""The OCI runtime's state under --root (default /run/pymachine-runc): ROOT/ID/state.json, the
start FIFO ROOT/ID/exec.fifo while the container is created and not yet started, and a lock that
serializes the verbs on one ID: a POSIX lock on ROOT/ID/lock, which, unlike flock, the container's
init (forked while `create` holds it) does not inherit."""

from __future__ import annotations

import fcntl
import os

from machinectl_py.state import dump_json, load_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OCI_VERSION = "1.0.2"
DEFAULT_ROOT = "/run/pymachine-runc"
FIFO = "exec.fifo"
SECCOMP = "seccomp.bpf"  # linux.seccomp compiled, for exec
# Every container of every --root (containerd gives one per namespace), by machine name: a
# symlink to its ROOT/ID, so `pymachine ps` finds them all.
INDEX = "/run/pymachine-runc/machines"


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
        f.write(dump_json(state))
    os.rename(tmp, path)


def load(root: str, container_id: str) -> dict[str, Any]:
    try:
        with open(os.path.join(container_dir(root, container_id), "state.json")) as f:
            state: dict[str, Any] = load_json(f.read())
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
    for name in ("state.json", "state.json.tmp", FIFO, "resume.fifo", SECCOMP, "lock"):
        try:
            os.unlink(os.path.join(path, name))
        except FileNotFoundError:
            pass
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def add_to_index(machine: str, root: str, container_id: str) -> None:
    os.makedirs(INDEX, mode=0o700, exist_ok=True)
    link = os.path.join(INDEX, machine)
    tmp = f"{link}.{os.getpid()}.tmp"
    os.symlink(os.path.abspath(container_dir(root, container_id)), tmp)
    os.rename(tmp, link)


def remove_from_index(machine: str, root: str, container_id: str) -> None:
    """Only the link to this container (a later one of the same name may have replaced it)."""
    link = os.path.join(INDEX, machine)
    try:
        if os.readlink(link) == os.path.abspath(container_dir(root, container_id)):
            os.unlink(link)
    except OSError:
        pass


def indexed() -> list[tuple[dict[str, Any], str]]:
    """(state, root) of each indexed container; a link whose container is gone (deleted by a
    runtime killed midway, or a --root on a tmpfs since unmounted) is dropped."""
    try:
        names = sorted(os.listdir(INDEX))
    except OSError:  # none yet, or not root (the index is root's, 0700)
        return []
    out = []
    for name in names:
        link = os.path.join(INDEX, name)
        try:
            target = os.readlink(link)
            with open(os.path.join(target, "state.json")) as f:
                out.append((load_json(f.read()), os.path.dirname(target)))
        except (OSError, ValueError):
            if not name.endswith(".tmp"):
                try:
                    os.unlink(link)
                except OSError:
                    pass
    return out


def write_pid_file(path: str, pid: int) -> None:
    """Atomically, as runc: the shim reads it as soon as the command returns."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


# -- status: read-only, for `state` and `list` (no D-Bus, nothing heavy imported) ----------------


def start_time(pid: int) -> tuple[str, str] | None:
    """(state letter, start time in ticks) of /proc/PID/stat; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], fields[19]


def status_of(root: str, st: dict[str, Any]) -> str:
    """created, running, paused or stopped; a PID reused by another process counts as stopped."""
    proc = start_time(int(st["pid"]))
    if proc is None or proc[0] in ("Z", "X") or proc[1] != st["starttime"]:
        return "stopped"
    if os.path.exists(os.path.join(container_dir(root, st["id"]), FIFO)):
        return "created"
    if st.get("paused"):
        return "paused"
    return "running"


def oci_state(root: str, st: dict[str, Any]) -> dict[str, Any]:
    """The runtime spec's state: ociVersion, id, status, pid, bundle, annotations (with runc's
    additions rootfs, created and owner)."""
    status = status_of(root, st)
    state = {"ociVersion": OCI_VERSION, "id": st["id"], "pid": 0 if status == "stopped" else st["pid"],
             "status": status, "bundle": st["bundle"], "rootfs": st["rootfs"], "created": st["created"],
             "owner": ""}
    if st.get("annotations"):
        state["annotations"] = st["annotations"]  # omitted when empty, as runc does
    return state
