"""The rootfs plan: what the container's root looks like, as a list of operations.

Built without side effects from the spec, the policy and the host's cgroup layout, so it
can be unit-tested and printed (`PYMACHINE_DEBUG=1`). machinectl_py.mounts executes it,
in order, inside the container's private mount namespace. Targets are paths inside the
container root; the executor resolves them without following symlinks (an image whose
/proc is a symlink must not redirect a mount onto the host: CVE-2019-19921).

On the start-up path (`run` and `start` import it; tests/unit/test_startup_imports.py
guards it): it imports nothing heavy at the top, and its annotations' names come in under
`TYPE_CHECKING = False`, because `typing` alone costs 8-10 ms to import here.
"""

from __future__ import annotations

from machinectl_py.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from machinectl_py.policy import Policy

# The mount flags the plan names (linux/mount.h), as plain ints: the plan stays pure data and
# never loads the compiled syscall module. tests/unit/test_plan.py checks them against it.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_STRICTATIME = 0x1000000

NOSUID_NODEV = MS_NOSUID | MS_NODEV
NOSUID_NODEV_NOEXEC = NOSUID_NODEV | MS_NOEXEC


class Overlay(Record):
    """The container root: image layers (relative link names, top first) under the upper dir."""

    __slots__ = ('lowers', 'upper', 'work', 'volatile')
    _defaults = {'volatile': False}

    lowers: tuple[str, ...]  # top layer first, as overlayfs wants them
    upper: str
    work: str
    # For --rm containers: the upper layer is thrown away, so overlayfs may skip syncing
    # the host file system when the container's mount namespace goes (a journal commit,
    # milliseconds on the teardown path). Linux 5.10+.
    volatile: bool

    def options(self) -> str:
        # redirect_dir and metacopy stay off: with them the upper dir alone no longer holds
        # a container's changes, and `commit` reads exactly the upper dir.
        return (f"lowerdir={':'.join(self.lowers)},upperdir={self.upper},workdir={self.work},"
                "redirect_dir=off,metacopy=off" + (",volatile" if self.volatile else ""))



class Mount(Record):
    __slots__ = ('target', 'fstype', 'source', 'flags', 'data')
    _defaults = {'flags': 0, 'data': None}
    target: str
    fstype: str
    source: str
    flags: int
    data: str | None



class Bind(Record):
    __slots__ = ('source', 'target', 'read_only', 'is_file', 'ids', 'idmapped')
    _defaults = {'read_only': False, 'is_file': False, 'ids': None, 'idmapped': True}
    source: str  # a host path
    target: str
    read_only: bool
    is_file: bool
    # With a user namespace: (first, size) when on-disk first+N is the container's N (a volume
    # owned by a range, volumes.py); None: the container's own mapping, on-disk N is its N.
    ids: tuple[int, int] | None
    # With a user namespace, bound idmapped where the file system allows it (its owners kept as
    # seen inside); False: always bound plainly (--boot's notify socket, chowned to the range).
    idmapped: bool



class DeviceNode(Record):
    __slots__ = ('path', 'major', 'minor', 'mode')
    _defaults = {'mode': 0o666}
    path: str
    major: int
    minor: int
    mode: int



class Symlink(Record):
    __slots__ = ('path', 'points_to')
    path: str
    points_to: str



class Mask(Record):
    """Hide a path: /dev/null over a file, an empty read-only tmpfs over a directory."""

    __slots__ = ('path',)

    path: str



class ReadOnly(Record):
    """Bind a path onto itself and remount it read-only."""

    __slots__ = ('path',)

    path: str



class CgroupMount(Record):
    """One cgroup hierarchy inside the container's cgroup namespace.

    fstype "cgroup2" for the unified hierarchy, "cgroup" with the controller list as
    options for a v1 hierarchy. Mounted after the container joined its scope.
    """

    __slots__ = ('target', 'fstype', 'options', 'read_only')

    target: str
    fstype: str
    options: str | None
    read_only: bool



Op = Mount | Bind | DeviceNode | Symlink | Mask | ReadOnly | CgroupMount

DEV_NODES = (
    DeviceNode("/dev/null", 1, 3), DeviceNode("/dev/zero", 1, 5), DeviceNode("/dev/full", 1, 7),
    DeviceNode("/dev/random", 1, 8), DeviceNode("/dev/urandom", 1, 9), DeviceNode("/dev/tty", 5, 0),
)
DEV_LINKS = (
    Symlink("/dev/fd", "/proc/self/fd"), Symlink("/dev/stdin", "/proc/self/fd/0"),
    Symlink("/dev/stdout", "/proc/self/fd/1"), Symlink("/dev/stderr", "/proc/self/fd/2"),
    Symlink("/dev/ptmx", "pts/ptmx"),
)


class CgroupLayout(Record):
    """How the host mounts cgroups: 'unified' (pure v2) or 'hybrid'/'legacy' with v1 hierarchies.

    v1 is a list of (directory name under /sys/fs/cgroup, mount options) for each v1
    hierarchy, e.g. ("memory", "memory") or ("systemd", "none,name=systemd").
    """

    __slots__ = ('mode', 'v1', 'unified_dir', 'links')
    _defaults = {'v1': (), 'unified_dir': None, 'links': ()}

    mode: str
    v1: tuple[tuple[str, str], ...]
    unified_dir: str | None  # where cgroup2 sits in hybrid mode ("unified")
    links: tuple[tuple[str, str], ...]  # e.g. ("cpuacct", "cpu,cpuacct")



DEFAULT_SHM_BYTES = 64 * 1024**2
# Where --init puts the tiny init (tini) in the container: /dev is the container's own tmpfs,
# so the image's tree is not touched; the bind is read-only, so the container cannot write
# through it to the host's file (the lesson of CVE-2019-5736).
INIT_PATH = "/dev/init"
# --tmpfs flags that are mount flags, not tmpfs data.
_TMPFS_FLAGS = {"ro": MS_RDONLY, "noexec": MS_NOEXEC, "nosuid": MS_NOSUID, "nodev": MS_NODEV,
                "strictatime": MS_STRICTATIME}
_TMPFS_CLEARS = {"rw": MS_RDONLY, "exec": MS_NOEXEC, "suid": MS_NOSUID, "dev": MS_NODEV}


def tmpfs_mount(target: str, options: str) -> Mount:
    """A --tmpfs: nosuid and nodev unless asked otherwise (as docker), size= and mode= as data."""
    flags = NOSUID_NODEV
    data = []
    for option in (o for o in options.split(",") if o):
        if option in _TMPFS_FLAGS:
            flags |= _TMPFS_FLAGS[option]
        elif option in _TMPFS_CLEARS:
            flags &= ~_TMPFS_CLEARS[option]
        elif "=" in option:
            data.append(option)
        # atime flags and the like: the kernel's defaults
    return Mount(target, "tmpfs", "tmpfs", flags, ",".join(data) or None)


def base_plan(policy: Policy, *, binds: Sequence[Bind] = (), shm_size: int | None = None,
              tmpfs: Sequence[tuple[str, str]] = (), init: str | None = None) -> list[Op]:
    """Everything mounted before the container joins its scope: /proc, /sys, /dev, /run, /tmp,
    then the volumes and tmpfs mounts the container asked for, and the tiny init's file with --init."""
    ops: list[Op] = [
        Mount("/proc", "proc", "proc", NOSUID_NODEV_NOEXEC),
        Mount("/sys", "sysfs", "sysfs", NOSUID_NODEV_NOEXEC | MS_RDONLY),
        Mount("/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=4m"),
        *DEV_NODES,
        Mount("/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620,gid=5"),
        Mount("/dev/shm", "tmpfs", "shm", NOSUID_NODEV_NOEXEC,
              f"mode=1777,size={(shm_size or DEFAULT_SHM_BYTES) // 1024}k"),
        Mount("/dev/mqueue", "mqueue", "mqueue", NOSUID_NODEV_NOEXEC),
        *DEV_LINKS,
        Mount("/run", "tmpfs", "tmpfs", NOSUID_NODEV, "mode=755,size=65536k"),
        Mount("/tmp", "tmpfs", "tmpfs", NOSUID_NODEV, "mode=1777"),
    ]
    ops += [Mask(p) for p in policy.masked_paths]
    ops += [ReadOnly(p) for p in policy.readonly_paths]
    ops += list(binds)
    ops += [tmpfs_mount(target, options) for target, options in tmpfs]
    if init is not None:
        ops.append(Bind(source=init, target=INIT_PATH, read_only=True, is_file=True))
    return ops


def owned_by_range(ops: Sequence[Op], base: int) -> list[Op]:
    """With a user namespace: the tmpfs mounts (/dev, /run, /tmp, --tmpfs...) belong to the
    container's root (host `base`) and devpts' tty group is the container's gid 5; made by host
    root, they would otherwise show as nobody's inside, unwritable by the container's root."""
    owned: list[Op] = []
    for op in ops:
        if isinstance(op, Mount) and op.fstype == "tmpfs":
            op = op.replace(data=",".join(filter(None, (op.data, f"uid={base},gid={base}"))))
        elif isinstance(op, Mount) and op.fstype == "devpts" and op.data:
            op = op.replace(data=op.data.replace("gid=5", f"gid={base + 5}"))
        owned.append(op)
    return owned


def own_hierarchies(layout: CgroupLayout, proc_cgroup: str) -> CgroupLayout:
    """The layout less the v1 hierarchies the container has no cgroup of its own in.

    proc_cgroup is the init's /proc/self/cgroup once it is in its unit's cgroup, before its
    cgroup namespace is made. In a hierarchy whose controller the unit does not use, systemd
    leaves the init in an ancestor (the root, usually): a cgroup namespace made there, and
    a mount of that hierarchy, would show the container the host's whole tree. The unit's own
    cgroup is where systemd's hierarchy (name=systemd) has the init; on pure v2 there is
    nothing to filter."""
    if layout.mode == "unified":
        return layout
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            paths[controller] = path
    unit = paths.get("name=systemd")
    if unit is None:
        return layout

    def own(options: str) -> bool:
        known = [paths[o] for o in options.split(",") if o in paths]
        return all(p == unit or p.startswith(unit.rstrip("/") + "/") for p in known)

    v1 = tuple((name, options) for name, options in layout.v1 if own(options))
    kept = {name for name, _ in v1}
    links = tuple((link, target) for link, target in layout.links if target in kept)
    return CgroupLayout(layout.mode, v1, layout.unified_dir, links)


def cgroup_plan(layout: CgroupLayout, writable_systemd: bool = False, owner: int | None = None) -> list[Op]:
    """The container's view of /sys/fs/cgroup, mounted inside its cgroup namespace.

    Pure v2: one cgroup2 mount, writable, since the scope is delegated (Delegate=yes) and
    the namespace shows only the container's own subtree. Hybrid: a tmpfs with each
    hierarchy mounted again (v1 ones read-only), as systemd-nspawn does; the caller passes
    only the hierarchies the container has its own cgroup in (own_hierarchies). With
    `writable_systemd` (--boot), systemd's own hierarchy (name=systemd) is writable, as nspawn
    mounts it for a booted systemd on such a host: the container's systemd makes its units'
    cgroups there, inside the unit's delegated cgroup (the namespace's root). `owner`: the
    host ID of the container root that owns the hybrid tmpfs (--boot with a user namespace).
    """
    root = "/sys/fs/cgroup"
    if layout.mode == "unified":
        return [CgroupMount(root, "cgroup2", "nsdelegate", read_only=False)]
    data = "mode=755" if owner is None else f"mode=755,uid={owner},gid={owner}"
    ops: list[Op] = [Mount(root, "tmpfs", "tmpfs", NOSUID_NODEV_NOEXEC, data)]
    for name, options in layout.v1:
        writable = writable_systemd and "name=systemd" in options.split(",")
        ops.append(CgroupMount(f"{root}/{name}", "cgroup", options, read_only=not writable))
    if layout.unified_dir:
        ops.append(CgroupMount(f"{root}/{layout.unified_dir}", "cgroup2", None, read_only=False))
    ops += [Symlink(f"{root}/{link}", target) for link, target in layout.links]
    return ops


def describe(op: Op) -> str:
    """One line per op, for --debug output."""
    return f"{type(op).__name__.lower()}: " + ", ".join(f"{n}={getattr(op, n)!r}" for n in op.__slots__)
