"""Executes the rootfs plan inside the container's mount namespace.

Every target is resolved under the container root one component at a time with
O_PATH|O_NOFOLLOW, so a symlink planted in an image cannot redirect a mount outside the
root; the mount is then made on /proc/self/fd/N, the very directory that was checked
(the runc fix for CVE-2021-30465). Missing directories are created the same way.
"""

from __future__ import annotations

import os
import stat

from machinectl_py import idmap
from machinectl_py import syscalls as sc
from machinectl_py.plan import (
    Bind,
    CgroupLayout,
    CgroupMount,
    DeviceNode,
    Mask,
    Mount,
    Op,
    Overlay,
    ReadOnly,
    Symlink,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

_O_PATH_DIR = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY
_O_PATH_ANY = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(OSError):
    pass


def open_in_root(root_fd: int, path: str, *, create: str | None = None) -> int:
    """Open `path` (absolute inside the root) as an O_PATH fd without following any symlink.

    create: None (must exist), "dir" (mkdir missing components) or "file" (parents as
    dirs, the last one as an empty file, for bind-mounting a file).
    """
    parts = [p for p in path.split("/") if p]
    if any(p == ".." for p in parts):
        raise UnsafePathError(22, "'..' in a container path", path)
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nfd = os.open(part, _O_PATH_ANY if last else _O_PATH_DIR, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise
                if last and create == "file":
                    os.close(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o644, dir_fd=fd))
                else:
                    os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, _O_PATH_ANY if last else _O_PATH_DIR, dir_fd=fd)
            except NotADirectoryError:
                raise UnsafePathError(20, "a path component is a symlink or not a directory", path) from None
            os.close(fd)
            fd = nfd
            if last and stat.S_ISLNK(os.fstat(fd).st_mode):
                raise UnsafePathError(40, "refusing to mount on a symlink", path)
        return fd
    except BaseException:
        os.close(fd)
        raise


def fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def mount_overlay(overlay: Overlay, target: str) -> None:
    """Mount the container root. Relative lowerdir names keep the option string short."""
    sc.mount("overlay", target, "overlay", 0, overlay.options())


def apply(root: str, ops: Iterable[Op], idmaps: idmap.Idmaps | None = None) -> None:
    """idmaps: the container's user namespace and its volume owners'; the binds are then
    idmapped (idmap.bind)."""
    root_fd = os.open(root, _O_PATH_DIR)
    try:
        for op in ops:
            try:
                _apply_one(root_fd, op, idmaps)
            except OSError as e:
                raise OSError(e.errno, f"setting up {op_target(op)} in the container: {e.strerror}",
                              e.filename) from e
    finally:
        os.close(root_fd)


def op_target(op: Op) -> str:
    if isinstance(op, (Mount, Bind, CgroupMount)):
        return op.target
    return op.path


def _apply_one(root_fd: int, op: Op, idmaps: idmap.Idmaps | None = None) -> None:
    if isinstance(op, Mount):
        _with_target(root_fd, op.target, "dir",
                     lambda t: sc.mount(op.source, t, op.fstype, op.flags, op.data))
    elif isinstance(op, CgroupMount):
        flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | (sc.MS_RDONLY if op.read_only else 0)
        _with_target(root_fd, op.target, "dir",
                     lambda t: sc.mount("cgroup", t, op.fstype, flags, op.options))
    elif isinstance(op, DeviceNode):
        dir_fd, name = _parent(root_fd, op.path)
        try:
            os.mknod(name, stat.S_IFCHR | op.mode, os.makedev(op.major, op.minor), dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    elif isinstance(op, Symlink):
        dir_fd, name = _parent(root_fd, op.path)
        try:
            os.symlink(op.points_to, name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    elif isinstance(op, Bind):
        _bind(root_fd, op, idmaps)
    elif isinstance(op, Mask):
        _mask(root_fd, op.path)
    elif isinstance(op, ReadOnly):
        _read_only(root_fd, op.path)


def _with_target(root_fd: int, path: str, create: str, action: object) -> None:
    fd = open_in_root(root_fd, path, create=create)
    try:
        action(fd_path(fd))  # type: ignore[operator]
    finally:
        os.close(fd)


def _parent(root_fd: int, path: str) -> tuple[int, str]:
    parent, _, name = path.rstrip("/").rpartition("/")
    return open_in_root(root_fd, parent or "/", create="dir"), name


def _bind(root_fd: int, op: Bind, idmaps: idmap.Idmaps | None = None) -> None:
    src_fd = os.open(op.source, os.O_PATH | os.O_CLOEXEC)
    try:
        is_dir = stat.S_ISDIR(os.fstat(src_fd).st_mode)
        fd = open_in_root(root_fd, op.target, create="dir" if is_dir else "file")
        try:
            if not (idmaps is not None and op.idmapped
                    and idmap.bind(fd_path(src_fd), fd_path(fd), idmaps.fd(op.ids))):
                sc.mount(fd_path(src_fd), fd_path(fd), None, sc.MS_BIND | sc.MS_REC)
        finally:
            os.close(fd)
        if op.read_only:
            _remount_read_only(root_fd, op.target)
    finally:
        os.close(src_fd)


def _mask(root_fd: int, path: str) -> None:
    try:
        fd = open_in_root(root_fd, path)
    except FileNotFoundError:
        return  # nothing to hide
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            sc.mount("tmpfs", fd_path(fd), "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                     "size=0,mode=755")
        else:
            sc.mount("/dev/null", fd_path(fd), None, sc.MS_BIND)
    finally:
        os.close(fd)


def _read_only(root_fd: int, path: str) -> None:
    try:
        fd = open_in_root(root_fd, path)
    except FileNotFoundError:
        return
    try:
        sc.mount(fd_path(fd), fd_path(fd), None, sc.MS_BIND | sc.MS_REC)
    finally:
        os.close(fd)
    _remount_read_only(root_fd, path)


def _remount_read_only(root_fd: int, path: str) -> None:
    # Reopen: the fd must name the new bind mount, not the directory under it.
    fd = open_in_root(root_fd, path)
    try:
        sc.mount(None, fd_path(fd), None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV)
    finally:
        os.close(fd)


def remount_read_only(root: str, path: str) -> None:
    root_fd = os.open(root, _O_PATH_DIR)
    try:
        _remount_read_only(root_fd, path)
    finally:
        os.close(root_fd)


def remount_root_read_only(root: str) -> None:
    """--read-only: the overlay root becomes read-only; the mounts on it (/dev, /run, /tmp,
    volumes) keep their own flags. Setuid programs keep working, as with docker's --read-only."""
    sc.mount(None, root, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)


def pivot_into(root: str) -> None:
    """Make `root` the process's /, and detach the old root entirely.

    pivot_root(".", ".") stacks the old root on top of the new one; unmounting "."
    lazily then drops it (the trick runc uses, no temporary directory needed).
    """
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")


def unified_cgroup_host() -> bool:
    """Pure cgroup v2: /sys/fs/cgroup is the cgroup2 root itself (one stat, for the hot path)."""
    return os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def detect_cgroup_layout(mountinfo: str | None = None) -> CgroupLayout:
    """Read the host's /proc/self/mountinfo and describe its cgroup mounts."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    v1: list[tuple[str, str]] = []
    unified_dir = None
    for line in mountinfo.splitlines():
        fields = line.split()
        sep = fields.index("-")
        mountpoint, fstype, super_opts = fields[4], fields[sep + 1], fields[sep + 3]
        if mountpoint == "/sys/fs/cgroup" and fstype == "cgroup2":
            return CgroupLayout("unified")
        if not mountpoint.startswith("/sys/fs/cgroup/"):
            continue
        name = mountpoint.removeprefix("/sys/fs/cgroup/")
        if fstype == "cgroup2":
            unified_dir = name
        elif fstype == "cgroup":
            wanted = [o for o in super_opts.split(",") if o not in ("rw", "ro") and not o.startswith("release_agent")]
            v1.append((name, ",".join(wanted)))
    links = tuple(
        (alias, name) for name, _ in v1 if "," in name for alias in name.split(",") if alias != name
    )
    return CgroupLayout("hybrid" if unified_dir else "legacy", tuple(v1), unified_dir, links)
