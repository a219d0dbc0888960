"""The thin layer over raw system calls: every failure raises OSError(errno, strerror, path).

Nothing above this module calls the kernel directly for namespaces, mounts or
capabilities. Errno is never remapped: callers catch OSError and add one clause of
context (see runtime.py).
"""

from __future__ import annotations

import os

from machinectl_py._sys import ffi, lib  # libc only: not _native, which loads libsystemd

CLONE_NEWNS: int = lib.CLONE_NEWNS
CLONE_NEWUTS: int = lib.CLONE_NEWUTS
CLONE_NEWIPC: int = lib.CLONE_NEWIPC
CLONE_NEWPID: int = lib.CLONE_NEWPID
CLONE_NEWNET: int = lib.CLONE_NEWNET
CLONE_NEWCGROUP: int = lib.CLONE_NEWCGROUP
CLONE_NEWUSER: int = lib.CLONE_NEWUSER

MS_RDONLY: int = lib.MS_RDONLY
MS_NOSUID: int = lib.MS_NOSUID
MS_NODEV: int = lib.MS_NODEV
MS_NOEXEC: int = lib.MS_NOEXEC
MS_REMOUNT: int = lib.MS_REMOUNT
MS_BIND: int = lib.MS_BIND
MS_REC: int = lib.MS_REC
MS_PRIVATE: int = lib.MS_PRIVATE
MS_STRICTATIME: int = lib.MS_STRICTATIME
MNT_DETACH: int = lib.MNT_DETACH


def _fail(op: str, path: str | None = None) -> OSError:
    err = ffi.errno
    return OSError(err, f"{op}: {os.strerror(err)}", path)


def _cstr(value: str | None) -> object:
    return ffi.NULL if value is None else value.encode()


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    if lib.mount(_cstr(source), target.encode(), _cstr(fstype), flags, _cstr(data)) != 0:
        raise _fail(f"mount {fstype or 'bind'} {source or ''} (flags {flags:#x}{', ' + data if data else ''})",
                    target)


def umount(target: str, flags: int = 0) -> None:
    if lib.umount2(target.encode(), flags) != 0:
        raise _fail("umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    if lib.pm_pivot_root(new_root.encode(), put_old.encode()) != 0:
        raise _fail("pivot_root", new_root)


def unshare(flags: int) -> None:
    if lib.unshare(flags) != 0:
        raise _fail(f"unshare({flags:#x})")


def fork_into_cgroup(cgroup_fd: int) -> int:
    """os.fork() with the child born in the cgroup directory `cgroup_fd` (pure cgroup v2)."""
    pid: int = lib.pm_fork_into_cgroup(cgroup_fd)
    if pid < 0:
        raise _fail("clone3(CLONE_INTO_CGROUP)")
    return pid


def setns(fd: int, nstype: int = 0) -> None:
    if lib.setns(fd, nstype) != 0:
        raise _fail("setns", f"fd {fd}")


def sethostname(name: str) -> None:
    raw = name.encode()
    if lib.sethostname(raw, len(raw)) != 0:
        raise _fail("sethostname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    rc: int = lib.prctl(option, arg2, arg3, arg4, arg5)
    if rc < 0:
        raise _fail(f"prctl({option})")
    return rc


def set_parent_death_signal(sig: int) -> None:
    prctl(lib.PR_SET_PDEATHSIG, sig)


def drop_bounding_capability(cap: int) -> None:
    prctl(lib.PR_CAPBSET_DROP, cap)


def capset_keep(mask: int) -> None:
    """Reduce the effective, permitted and inheritable sets to `mask`."""
    if lib.pm_capset_keep(mask) != 0:
        raise _fail("capset")


def syncfs(path: str) -> None:
    """syncfs(2) on the file system holding directory `path`: unlike sync(2) it leaves other
    file systems (and, on a shared machine, other people's dirty pages elsewhere) alone."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if lib.syncfs(fd) != 0:
            raise _fail("syncfs", path)
    finally:
        os.close(fd)


def close_fds_from(first: int) -> None:
    """Close every file descriptor >= first (so no host fd reaches a container)."""
    if lib.pm_close_range(first, 0xFFFFFFFF, 0) != 0:
        os.closerange(first, 65536)


def pidfd_open(pid: int) -> int:
    fd: int = lib.pm_pidfd_open(pid, 0)
    if fd < 0:
        raise _fail("pidfd_open", f"pid {pid}")
    return fd


def seccomp_install(program: bytes) -> None:
    """Install a classic-BPF seccomp filter (8-byte struct sock_filter instructions)."""
    if len(program) % 8 or not 0 < len(program) // 8 <= 4096:
        raise ValueError(f"a seccomp program of {len(program)} bytes is not 1-4096 instructions")
    if lib.pm_seccomp_install(program, len(program) // 8) != 0:
        raise _fail("seccomp")


OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_FDCWD = -100


def open_tree_clone(path: str) -> int:
    """open_tree(OPEN_TREE_CLONE): a detached copy of the mount at `path` (not its submounts), as an fd."""
    fd: int = lib.pm_open_tree(_AT_FDCWD, path.encode(), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)
    if fd < 0:
        raise _fail("open_tree", path)
    return fd


def mount_setattr_idmap(mount_fd: int, userns_fd: int, path: str = "") -> None:
    """mount_setattr(MOUNT_ATTR_IDMAP): the detached mount shows its files' owners through the
    user namespace's mapping (on-disk 0 is the namespace's 0)."""
    if lib.pm_mount_setattr_idmap(mount_fd, userns_fd) != 0:
        raise _fail("mount_setattr(MOUNT_ATTR_IDMAP)", path)


def set_fs_ids(uid: int, gid: int) -> None:
    """setfsuid/setfsgid, keeping every capability effective (see _build_native.py)."""
    if lib.pm_set_fs_ids(uid, gid) != 0:
        raise _fail(f"setfsuid({uid})")


def move_mount(mount_fd: int, target: str) -> None:
    """move_mount(2): attach the detached mount `mount_fd` (from open_tree_clone) at `target`."""
    if lib.pm_move_mount(mount_fd, target.encode()) != 0:
        raise _fail("move_mount", target)


class NftUnavailable(OSError):
    """libnftables cannot be opened here: the caller runs `nft -f -` instead."""


def nft_run(script: str) -> None:
    """Apply an nft script (what `nft -f -` reads) through libnftables, in this process and in
    one transaction; a refusal raises OSError with nft's own message."""
    err = ffi.new("char[]", 4096)
    rc = lib.pm_nft_run(script.encode(), err, 4096)
    if rc == -2:
        raise NftUnavailable(0, "libnftables.so.1 cannot be opened")
    if rc != 0:
        raise OSError(0, ffi.string(err).decode(errors="replace").strip() or "nft refused the ruleset")
