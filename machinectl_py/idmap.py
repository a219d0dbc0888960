"""A container's user namespace, made and entered by its init; its idmapped mounts.

The init makes every mount as host root (in its own mount namespace) and enters the user
namespace last, just before it drops its privileges: so the mounts, the cgroup namespace and
the hostname need no capability inside the namespace, and the container's root holds
capabilities over nothing but its own user namespace.

The image's layers, the upper dir, bind-mounted host paths and root's volumes are mounted
idmapped with the container's mapping (on-disk UID u is the container's u, host UID base+u):
files on disk keep the image's owners, so commit, export and layer sharing see what they saw
without a user namespace. A volume owned by a range (volumes.py) is mounted with a mapping of
its own (Idmaps): on-disk owner+u is the container's u.
overlayfs does its upper-dir work with its mounter's credentials, so it is mounted with
fsuid/fsgid = the range's root. overlayfs takes idmapped layers since Linux 5.19; older kernels than 6.18
only when they are attached to the mounter's mount namespace (mount_overlay says how).
"""

from __future__ import annotations

import errno
import os

from machinectl_py import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from machinectl_py.plan import Overlay


def make_userns(base: int, size: int, private_network: bool = False, first: int = 0) -> tuple[int, int]:
    """fds of a new user namespace mapping container 0..size-1 (`first`..first+size-1) to host
    base.., and with
    `private_network` of a new network namespace it owns (-1 without): a helper child unshares
    them and waits while we (host root) write the maps. A network namespace owned by the
    container's user namespace is what gives its root CAP_NET_RAW (ping) there and nowhere else."""
    from machinectl_py.userns import map_line  # here, not at the top: exec imports this module for join()

    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            sc.unshare(sc.CLONE_NEWUSER)
            if private_network:
                sc.unshare(sc.CLONE_NEWNET)  # owned by the new user namespace
            # Our PID as the mounted /proc numbers it: the init that forked us is PID 1 of a
            # new PID namespace, but /proc is still the host's.
            os.write(ready_w, os.readlink("/proc/self").encode())
            os.read(done_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        proc_pid = os.read(ready_r, 32).decode()
        write_maps(proc_pid, map_line(base, size, first))
        netns_fd = os.open(f"/proc/{proc_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC) if private_network else -1
        return os.open(f"/proc/{proc_pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC), netns_fd
    finally:
        os.close(ready_r)
        os.close(done_w)  # the helper exits
        os.waitpid(pid, 0)


def write_maps(proc_pid: str, line: str) -> None:
    """The UID and GID maps of the new user namespace of the helper `proc_pid` (as its
    /proc names it; anything else: the helper failed before it could say)."""
    if not proc_pid.isdigit():
        raise OSError(errno.EPERM, "cannot make a user namespace")
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/{proc_pid}/{name}", "w") as f:
            f.write(line + "\n")


PR_SET_CHILD_SUBREAPER = 36


def spawn_init(base: int, size: int, private_network: bool, init_main: Callable[[], None]) -> tuple[int, int]:
    """--boot with a user namespace: the container's init born *in* it, as nspawn's inner child
    is cloned, PID 1 of a PID namespace that the user namespace owns (the guest's reboot() needs
    CAP_SYS_BOOT over that owner), with a mount, UTS, IPC (and a private network's) namespace
    of the user namespace's own too (systemd mounts, sets its host name, mounts /dev/mqueue).
    Returns the user namespace's fd and the init's PID.

    A helper child makes the user namespace (we, host root, write its maps), becomes its root,
    makes the others and forks the init, which runs init_main() (never returning), and exits:
    the init is reparented to us, a child subreaper (as the init we fork ourselves is our
    child). The init is never host root: the host-root work in its namespaces is done for it
    (container_init.boot_setup_main)."""
    from machinectl_py.userns import map_line

    sc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    flags = sc.CLONE_NEWPID | sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC
    if private_network:
        flags |= sc.CLONE_NEWNET
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, os.readlink("/proc/self").encode() + b"\n")
            if os.read(done_r, 1) != b"m":
                os._exit(1)
            os.setgroups([])
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
            sc.unshare(flags)  # owned by the new user namespace
            init = os.fork()
            if init == 0:
                os.close(ready_w)
                os.close(done_r)
                init_main()
                os._exit(1)
            os.write(ready_w, f"{init}\n".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    userns_fd = -1
    try:
        with os.fdopen(os.dup(ready_r), "rb") as ready:
            helper = ready.readline().decode().strip()
            write_maps(helper, map_line(base, size))
            userns_fd = os.open(f"/proc/{helper}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
            os.write(done_w, b"m")
            init_pid = ready.readline().decode().strip()
        if not init_pid.isdigit():
            raise OSError(errno.EPERM, "cannot start the container's init in its user namespace")
        return userns_fd, int(init_pid)
    except BaseException:
        if userns_fd >= 0:
            os.close(userns_fd)
        raise
    finally:
        os.close(ready_r)
        os.close(done_w)
        os.waitpid(pid, 0)  # the helper: its exit hands the init to us


def idmapped_clone(path: str, userns_fd: int) -> int:
    """A detached idmapped copy of the directory or file at `path`."""
    fd = sc.open_tree_clone(path)
    try:
        sc.mount_setattr_idmap(fd, userns_fd, path)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            raise OSError(e.errno, f"{path}: its file system cannot be mounted idmapped on this kernel "
                          f"({os.uname().release}); use --userns=host", path) from None
        raise
    return fd


def mount_overlay(overlay: Overlay, target: str, container_dir: str, userns_fd: int, base: int) -> None:
    """The container root over idmapped layers and an idmapped upper dir (whose work dir is on
    the same idmapped mount, as overlayfs requires).

    overlayfs takes private clones of its layers' mounts, and Debian 12's 6.1 (unlike 6.18)
    has clone_private_mount() refuse a mount outside the caller's mount namespace: a detached
    open_tree() copy gives EINVAL ("overlayfs: failed to clone upperpath" in dmesg). So each
    idmapped copy is attached first, over its own source, in the init's private mount
    namespace, and taken off again once the overlay holds its clones. The overlay itself goes
    on the target as it was before (an O_PATH fd taken first), beside those attachments, not on
    them: taking them off leaves it in place."""
    sources = [os.path.join(container_dir, lower) for lower in overlay.lowers] + [container_dir]
    fds: list[int] = []
    attached: list[str] = []
    target_fd = os.open(target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for source in sources:
            fds.append(idmapped_clone(source, userns_fd))
        for fd, source in zip(fds, sources, strict=True):
            sc.move_mount(fd, source)
            attached.append(source)
        own = fds[-1]
        lowers = ":".join(f"/proc/self/fd/{fd}" for fd in fds[:-1])
        options = overlay.options().replace(f"lowerdir={':'.join(overlay.lowers)},", f"lowerdir={lowers},", 1)
        os.fchdir(own)  # upperdir= and workdir= are relative: inside the idmapped copy
        sc.set_fs_ids(base, base)
        try:
            sc.mount("overlay", f"/proc/self/fd/{target_fd}", "overlay", 0, options)
        except OSError as e:
            if e.errno == errno.EINVAL:
                raise OSError(e.errno, f"this kernel's overlayfs ({os.uname().release}) refuses idmapped layers "
                              "(it needs Linux 5.19 or later), which --userns=auto needs: use --userns=host",
                              target) from None
            raise
        finally:
            sc.set_fs_ids(0, 0)
    finally:
        os.chdir("/")
        for source in reversed(attached):
            sc.umount(source, sc.MNT_DETACH)
        os.chdir(container_dir)
        for fd in fds:
            os.close(fd)
        os.close(target_fd)


class Idmaps:
    """The user namespaces binds are idmapped with: the container's own, and one per volume
    owner its binds name (plan.Bind.ids), mapping on-disk first..first+size-1 to the
    container's 0..size-1 (host base..). Made up front, while the init's fsuid is still root."""

    def __init__(self, own_fd: int, base: int, owners: Iterable[tuple[int, int]]) -> None:
        self.own_fd = own_fd
        self.made: dict[tuple[int, int], int] = {}
        try:
            for first, size in set(owners):
                self.made[first, size] = make_userns(base, size, first=first)[0]
        except BaseException:
            self.close()
            raise

    def fd(self, ids: tuple[int, int] | None) -> int:
        return self.own_fd if ids is None else self.made[ids]

    def close(self) -> None:
        for fd in self.made.values():
            os.close(fd)
        self.made = {}


def bind(source: str, target_path: str, userns_fd: int) -> bool:
    """Bind `source` idmapped at `target_path` (a /proc/self/fd/N of the checked target): host
    files keep their owners as seen inside. False when the source's file system cannot be
    idmapped (the caller binds it plainly: its files then show as nobody inside)."""
    try:
        fd = idmapped_clone(source, userns_fd)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        raise
    try:
        sc.move_mount(fd, target_path)
    finally:
        os.close(fd)
    return True


# The files of a cgroup that its delegate writes (systemd's delegation doc), v2's and v1's
# (name=systemd for --boot on a hybrid host): the ones nspawn chowns.
_DELEGATED_FILES = ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads", "cgroup.clone_children",
                    "memory.oom.group", "memory.reclaim", "notify_on_release", "tasks")


def delegate_cgroup(path: str, base: int) -> None:
    """Give the container's root its cgroup (its namespace's root at `path`), as nspawn does:
    a systemd or container engine inside can then make and fill sub-cgroups."""
    try:
        os.chown(path, base, base)
    except OSError as e:
        if e.errno in (errno.EROFS, errno.ENOENT):
            return  # v1-only hierarchies are read-only in the container: nothing to delegate
        raise
    for name in _DELEGATED_FILES:
        try:
            os.chown(os.path.join(path, name), base, base)
        except FileNotFoundError:
            pass


def enter(userns_fd: int) -> None:
    """Join the container's user namespace as its root: from here on every capability we hold
    is the namespace's, none the host's."""
    sc.setns(userns_fd, sc.CLONE_NEWUSER)
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def join(pidfd: int) -> bool:
    """`exec`: join the user namespace of the process `pidfd` names, as its root, after its
    other namespaces (joining those needs the host's capabilities). False: it has none of its
    own (--userns=host: the kernel refuses to join one's own user namespace)."""
    try:
        sc.setns(pidfd, sc.CLONE_NEWUSER)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    return True
