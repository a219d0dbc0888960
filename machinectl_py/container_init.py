"""The child side: what the container's first process does between fork() and exec().

Runs in a forked copy of pymachine that is PID 1 of the new PID namespace. It never
touches the D-Bus connection (sd-bus connections must not cross fork()) and never
returns: it execs the payload or _exits with docker's codes, after writing the reason
to the status pipe. The parent holds it on the `go` pipe, twice: until systemd has put it
in its scope (IN_SCOPE: the setup that needs the scope's cgroup may go on), then until
machined has registered the machine (RUN: the payload may run). So the payload never runs
outside its cgroup or unregistered, and the last steps of the setup overlap the registration.
"""

from __future__ import annotations

# _signal is the C module under `signal`, without the enum wrappers that make
# `import signal` cost ~3 ms (enum) on the start-up path.
import _signal as signal
import os

from machinectl_py import idmap, mounts
from machinectl_py import syscalls as sc
from machinectl_py.errors import EXIT_CANNOT_INVOKE, EXIT_ERROR, EXIT_NOT_FOUND
from machinectl_py.payload import (
    DEFAULT_PATH,
    IN_SCOPE,
    RUN,
    attach_stdio,
    confine,
    describe,
    finalize_and_exec,
    open_console,
    preload_console_modules,
    report,
    sealed_helper,
    send_console,
)
from machinectl_py.plan import Bind, cgroup_plan, own_hierarchies
from machinectl_py.record import Record
from machinectl_py.users import home_of, resolve_groups, resolve_user

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from machinectl_py.plan import CgroupLayout, Op, Overlay

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
PR_SET_NO_NEW_PRIVS = 38


class ChildPlan(Record):
    __slots__ = ("container_dir", "rootfs", "overlay", "ops", "cgroup_layout", "hostname", "private_network",
                 "argv", "env", "workdir", "user", "capability_mask", "stdin_devnull", "detached", "tty", "seccomp",
                 "read_only_root", "rlimits", "join_namespaces", "start_fd", "groups", "no_new_privileges",
                 "group_add", "sysctls", "oom_score_adj", "userns", "boot", "console_socket")
    _defaults = {"user": None, "stdin_devnull": True, "detached": False, "tty": False, "seccomp": b"",
                 "read_only_root": False, "rlimits": (), "join_namespaces": (), "start_fd": -1, "groups": None,
                 "no_new_privileges": False, "group_add": (), "sysctls": (), "oom_score_adj": None, "userns": None,
                 "boot": False, "console_socket": -1}
    container_dir: str  # cwd while mounting the overlay (its options use relative names)
    rootfs: str
    # None: `rootfs` is a directory used as it is (an OCI bundle's root), bound onto itself.
    overlay: Overlay | None
    ops: tuple[Op, ...]
    cgroup_layout: CgroupLayout
    hostname: str
    private_network: bool
    argv: tuple[str, ...]
    env: Mapping[str, str]
    workdir: str
    # USER[:GROUP] from -u or the image's config, resolved in the container's /etc/passwd;
    # None: root.
    user: str | None
    capability_mask: int
    stdin_devnull: bool
    # Detached (pymachine@NAME.service): the setup process exits once systemd supervises the
    # container, so the container must outlive its parent.
    detached: bool
    # -t: the payload's stdio is a pty of the container's own devpts; stdout_fd is then a
    # socket to the parent, which receives the pty's master through it.
    tty: bool
    # The policy's seccomp program (seccomp.py), installed last; b"": none.
    seccomp: bytes
    # --read-only: the overlay root remounted read-only once everything is mounted on it.
    read_only_root: bool
    # --ulimit: (RLIMIT_* number, soft, hard), -1 for no limit; set before the privileges drop.
    rlimits: tuple[tuple[int, int, int], ...]
    # The OCI runtime (oci/): namespaces to join instead of making new ones, (kind, path) with
    # kind network, ipc or uts (a Kubernetes pod's, made by the engine); an O_PATH fd of the
    # bundle's start FIFO, on which the init waits, once set up, for `start` (runc's
    # create/start split).
    join_namespaces: tuple[tuple[str, str], ...]
    start_fd: int
    # process.user.additionalGids: exactly these supplementary groups; None: the container's /etc/group.
    groups: tuple[int, ...] | None
    # --security-opt no-new-privileges (and OCI's process.noNewPrivileges), --group-add (names or
    # gids of the container's /etc/group), --sysctl as (path under /proc/sys, value): see security.py.
    no_new_privileges: bool
    group_add: tuple[str, ...]
    sysctls: tuple[tuple[str, str], ...]
    # --oom-score-adj: written to /proc/self/oom_score_adj (inherited), as runc does; a scope has
    # no OOMScoreAdjust= of its own (it starts no process).
    oom_score_adj: int | None
    # --userns=auto: (host base, size) of the container's ID range (idmap.py); None: the host's.
    userns: tuple[int, int] | None
    # --boot: systemd is the payload; on a host with v1 hierarchies its name=systemd one is
    # writable in the container's own subtree (plan.cgroup_plan).
    boot: bool
    # A detached boot's: the socket the init sends its console's pty master to (the setup
    # process copies the boot's messages to the journal until READY=1); -1: none.
    console_socket: int


def child_main(make_plan: Callable[[], ChildPlan], go_fd: int, status_fd: int, stdout_fd: int, stderr_fd: int,
               parent_pid: int) -> None:
    """Never returns. The plan is made here, in the child, while the parent asks systemd for
    the scope: its directories and the seccomp program are off the start's critical path."""
    code = EXIT_ERROR
    try:
        plan = make_plan()
        helper_fd = sealed_helper()  # while the host's files are reachable (payload.py says why)
        userns_fd = prepare(plan, go_fd, status_fd, parent_pid)
        code = EXIT_CANNOT_INVOKE
        if userns_fd >= 0:
            enter_userns(userns_fd, plan.detached)
        launch(plan, go_fd, status_fd, stdout_fd, stderr_fd, helper_fd)
    except BaseException as e:
        report(status_fd, code, describe(e))
    os._exit(code)


def prepare(plan: ChildPlan, go_fd: int, status_fd: int, parent_pid: int) -> int:
    """Everything done as host root; returns the fd of the user namespace to enter (-1: none)."""
    # If pymachine dies, the container dies with it (it is the init of its PID namespace).
    # (Had it died already, the `go` pipe below reads EOF and we exit.)
    sc.set_parent_death_signal(signal.SIGKILL)
    os.setsid()
    os.umask(0)
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC
    if plan.private_network and plan.userns is None:
        flags |= sc.CLONE_NEWNET  # with a user namespace: one it owns (mount_root)
    for kind, path in plan.join_namespaces:
        flags &= ~join_namespace(kind, path)
    sc.unshare(flags)
    # Nothing mounted from here on may propagate back to the host.
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    os.chdir(plan.container_dir)
    if plan.overlay is None:  # an OCI bundle's root, used as it is
        sc.mount(plan.rootfs, plan.rootfs, None, sc.MS_BIND | sc.MS_REC)
        userns_fd = bundle_userns(plan)
    else:
        userns_fd = mount_root(plan)
    if plan.sysctls:  # now that a private network's namespace exists (with a user namespace, its own)
        write_sysctls(plan.sysctls)
    with_idmaps = plan.userns is not None and plan.overlay is not None  # a bundle's: plain (set_up_root)
    set_up_root(plan, userns_fd if with_idmaps else -1)
    if plan.tty or plan.console_socket >= 0:
        preload_console_modules()  # after pivot_root the host's library is out of reach
    # Everything up to here runs while systemd makes the scope; only what needs the scope waits.
    mounts.pivot_into(plan.rootfs)
    # Wait until the parent has put us in the container's scope.
    await_parent(go_fd, IN_SCOPE)
    if plan.detached:
        sc.set_parent_death_signal(0)
    # Now our cgroup is the scope: a new cgroup namespace makes it the container's root.
    with open("/proc/self/cgroup") as f:
        layout = own_hierarchies(plan.cgroup_layout, f.read())
    sc.unshare(sc.CLONE_NEWCGROUP)
    mounts.apply("/", cgroup_plan(layout, writable_systemd=plan.boot))
    if plan.userns is not None:
        delegate_cgroup(layout, plan.userns[0])
    if plan.cgroup_layout.mode != "unified":
        mounts.remount_read_only("/", "/sys/fs/cgroup")
    os.umask(0o022)
    return userns_fd


# --boot with a user namespace (nspawn's inner and outer child): the init is born in its user
# namespace (idmap.spawn_init) and waits while a host-root helper, born into its PID namespace,
# mounts its root in its mount namespace. What they tell each other on their pipes:
IN_CGROUP = b"c"  # helper -> init: you are in the unit's cgroup: make your cgroup namespace; init -> helper: done
SET_UP = b"d"  # helper -> init: your root is the container's


def boot_init_main(plan: ChildPlan, go_fd: int, status_fd: int, stdout_fd: int, stderr_fd: int, to_init: int,
                   from_init: int, unused: tuple[int, ...]) -> None:
    """The init of a booted OS with a user namespace, root of it only, PID 1 of the PID namespace
    it owns. Never returns: it execs the payload once boot_setup_main has set its namespaces up
    (or exits, quietly if the setup failed: the helper says why on the status pipe)."""
    code = EXIT_ERROR
    try:
        for fd in unused:
            os.close(fd)
        os.setsid()
        helper_fd = sealed_helper()  # while the host's files are reachable (payload.py says why)
        if plan.tty or plan.console_socket >= 0:
            preload_console_modules()
        await_parent(to_init, IN_CGROUP)
        if not plan.detached:
            sc.set_parent_death_signal(signal.SIGKILL)  # we are our starter's child by now
        sc.unshare(sc.CLONE_NEWCGROUP)  # rooted at the unit's cgroup
        os.write(from_init, IN_CGROUP)
        await_parent(to_init, SET_UP)
        os.close(to_init)
        os.close(from_init)
        os.chdir("/")
        os.umask(0o022)
        code = EXIT_CANNOT_INVOKE
        launch(plan, go_fd, status_fd, stdout_fd, stderr_fd, helper_fd)
    except BaseException as e:
        report(status_fd, code, describe(e))
    os._exit(code)


def boot_setup_main(plan: ChildPlan, go_fd: int, status_fd: int, to_init: int, from_init: int, init_pidfd: int,
                    init_pid: int, userns_fd: int, unused: tuple[int, ...]) -> None:
    """The host-root helper of boot_init_main's init, born into its PID namespace (so the /proc
    it mounts is that namespace's): in the init's mount, UTS, IPC and network namespaces it does
    what prepare() does for any container (the same plan), pivot_root included, which moves the
    init's root too; then, once the init is in its unit's cgroup, its cgroup view. Mounts made
    here belong to the init's mount namespace, unlocked, as nspawn's inner child's own are.
    Never returns; a failure goes on the status pipe."""
    code = EXIT_ERROR
    try:
        for fd in unused:
            os.close(fd)
        assert plan.overlay is not None and plan.userns is not None
        base = plan.userns[0]
        sc.set_parent_death_signal(signal.SIGKILL)
        os.umask(0)
        sc.setns(init_pidfd, sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        os.chdir(plan.container_dir)
        idmap.mount_overlay(plan.overlay, plan.rootfs, plan.container_dir, userns_fd, base)
        if plan.sysctls:
            write_sysctls(plan.sysctls)
        # On the init, not on us: PID 1 of our PID namespace for its rlimits; its host PID for
        # its OOM score (the host's /proc, until pivot_root).
        set_up_root(plan, userns_fd, rlimit_pid=1, oom_pid=str(init_pid))
        mounts.pivot_into(plan.rootfs)
        await_parent(go_fd, IN_SCOPE)
        os.write(to_init, IN_CGROUP)
        await_parent(from_init, IN_CGROUP)
        sc.setns(init_pidfd, sc.CLONE_NEWCGROUP)
        with open("/proc/1/cgroup") as f:
            layout = own_hierarchies(plan.cgroup_layout, f.read())
        mounts.apply("/", cgroup_plan(layout, writable_systemd=True, owner=base))
        delegate_cgroup(layout, base, boot=True)
        os.write(to_init, SET_UP)
        code = 0
    except BaseException as e:
        report(status_fd, code, describe(e))
    os._exit(code)


def set_up_root(plan: ChildPlan, userns_fd: int, rlimit_pid: int = 0, oom_pid: str = "self") -> None:
    """The plan's mounts on the root (its volumes and binds idmapped through `userns_fd`, -1 for
    none: an OCI bundle's binds are plain, as runc's, the engine owns the IDs of what it gives),
    a read-only root, then the init's rlimits, OOM score, host name and loopback."""
    idmaps = None
    if userns_fd >= 0:
        assert plan.userns is not None
        base = plan.userns[0]
        owners = (op.ids for op in plan.ops if isinstance(op, Bind) and op.ids is not None)
        idmaps = idmap.Idmaps(userns_fd, base, owners)
        # The mount points and device nodes made on the idmapped root are the container
        # root's: the host's root has no ID on it (EOVERFLOW).
        sc.set_fs_ids(base, base)
    try:
        mounts.apply(plan.rootfs, plan.ops, idmaps)
    finally:
        if idmaps is not None:
            idmaps.close()
            sc.set_fs_ids(0, 0)
            sc.set_parent_death_signal(signal.SIGKILL)  # a change of fsuid cleared it
    if plan.read_only_root:
        mounts.remount_root_read_only(plan.rootfs)
    if plan.rlimits:
        set_rlimits(plan.rlimits, rlimit_pid)
    if plan.oom_score_adj is not None:
        set_oom_score_adj(plan.oom_score_adj, oom_pid)
    if plan.hostname:  # "": a joined UTS namespace keeps its own
        sc.sethostname(plan.hostname)
    if plan.private_network:
        bring_up_loopback()


def mount_root(plan: ChildPlan) -> int:
    """The overlay root; with a user namespace, over idmapped layers (idmap.py), and the
    namespace's fd for the mounts and the entry that follow (and, with a private network,
    the network namespace it owns joined)."""
    assert plan.overlay is not None
    if plan.userns is None:
        mounts.mount_overlay(plan.overlay, plan.rootfs)
        return -1
    userns_fd, netns_fd = idmap.make_userns(*plan.userns, private_network=plan.private_network)
    if netns_fd >= 0:
        sc.setns(netns_fd, sc.CLONE_NEWNET)
        os.close(netns_fd)
    idmap.mount_overlay(plan.overlay, plan.rootfs, plan.container_dir, userns_fd, plan.userns[0])
    return userns_fd


def bundle_userns(plan: ChildPlan) -> int:
    """An OCI bundle's user namespace (linux.uidMappings), -1 without: its root directory is
    used as it is (the engine chowned it to the mapping, as for runc), and a private network's
    namespace is the user namespace's own, as in mount_root."""
    if plan.userns is None:
        return -1
    userns_fd, netns_fd = idmap.make_userns(*plan.userns, private_network=plan.private_network)
    if netns_fd >= 0:
        sc.setns(netns_fd, sc.CLONE_NEWNET)
        os.close(netns_fd)
    return userns_fd


def delegate_cgroup(layout: CgroupLayout, base: int, boot: bool = False) -> None:
    """The container's root owns its cgroup v2 subtree (on a hybrid host: the unified one);
    with --boot on a host with v1 hierarchies also its name=systemd subtree, which the guest's
    systemd manages (nspawn -U chowns both)."""
    if layout.mode == "unified":
        idmap.delegate_cgroup("/sys/fs/cgroup", base)
        return
    if layout.unified_dir:
        idmap.delegate_cgroup(f"/sys/fs/cgroup/{layout.unified_dir}", base)
    if boot:
        for name, options in layout.v1:
            if "name=systemd" in options.split(","):
                idmap.delegate_cgroup(f"/sys/fs/cgroup/{name}", base)


def enter_userns(userns_fd: int, detached: bool) -> None:
    """Last step as host root: from here on the init is root of its user namespace only."""
    idmap.enter(userns_fd)
    os.close(userns_fd)
    if not detached:
        sc.set_parent_death_signal(signal.SIGKILL)  # the change of credentials cleared it


def write_sysctls(sysctls: tuple[tuple[str, str], ...]) -> None:
    """--sysctl: written right after unshare, through the host's /proc: a namespaced sysctl
    file acts on the writer's namespace (IPC ones on our new IPC namespace, net.* on our new
    network namespace; security.py admits no other), and the container's /proc/sys is
    mounted read-only later."""
    for path, value in sysctls:
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as e:
            raise OSError(e.errno, f"sysctl {path.removeprefix('/proc/sys/').replace('/', '.')}={value}: "
                          f"{e.strerror}") from None


def set_oom_score_adj(value: int, pid: str = "self") -> None:
    """--oom-score-adj on the init (inherited by everything it starts). Going below the
    inherited value takes CAP_SYS_RESOURCE, which a namespaced host may not have."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as e:
        raise OSError(e.errno, f"--oom-score-adj {value}: cannot write /proc/self/oom_score_adj: {e.strerror}"
                      ) from None


def set_rlimits(rlimits: tuple[tuple[int, int, int], ...], pid: int = 0) -> None:
    """--ulimit, as runc sets process.rlimits: on the init, before the exec (inherited from there)."""
    import resource

    for number, soft, hard in rlimits:
        resource.prlimit(pid, number, (resource.RLIM_INFINITY if soft < 0 else soft,
                                       resource.RLIM_INFINITY if hard < 0 else hard))


def await_parent(go_fd: int, expected: bytes) -> None:
    """Block until the parent sends `expected`; on EOF (it abandoned the start) exit quietly:
    the parent reports why."""
    if os.read(go_fd, 1) != expected:
        os._exit(EXIT_ERROR)


def launch(plan: ChildPlan, go_fd: int, status_fd: int, stdout_fd: int, stderr_fd: int, helper_fd: int = -1) -> None:
    uid, gid, groups = resolve_user(plan.user) if plan.user else (0, 0, [])
    if plan.groups is not None:
        groups = list(plan.groups)
    groups = groups + [g for g in resolve_groups(plan.group_add) if g not in groups]
    env = dict(plan.env)
    if "HOME" not in env:
        env["HOME"] = home_of(uid) or ("/root" if uid == 0 else "/")
    console = -1
    if plan.start_fd >= 0:
        if plan.tty:
            console = open_console(stdout_fd)  # its master reaches the console socket at create, as runc's
        look_up(plan.argv[0], env, status_fd)
        await_start(plan.start_fd, status_fd)
    if plan.console_socket >= 0:
        send_console(plan.console_socket)
    confine(plan.seccomp, plan.capability_mask, uid, gid, groups, no_new_privs=plan.no_new_privileges)
    stdin = os.open("/dev/null", os.O_RDONLY) if plan.stdin_devnull else 0
    if plan.tty:
        stdin = stdout_fd = stderr_fd = console if console >= 0 else open_console(stdout_fd)
    # The machine is registered: from here on, only what the exec needs.
    await_parent(go_fd, RUN)
    os.close(go_fd)
    attach_stdio(stdin, stdout_fd, stderr_fd)
    finalize_and_exec(plan.argv, env, status_fd, plan.workdir, helper_fd)


def join_namespace(kind: str, path: str) -> int:
    """linux.namespaces' `path`: join the namespace the engine made (a pod's); its CLONE_ flag."""
    flag = {"network": sc.CLONE_NEWNET, "ipc": sc.CLONE_NEWIPC, "uts": sc.CLONE_NEWUTS}[kind]
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, flag)
    finally:
        os.close(fd)
    return flag


def look_up(name: str, env: Mapping[str, str], status_fd: int) -> None:
    """As runc's create, fail `create` (not the later `start`) when the process's executable is
    not in the container: an absolute path, or a name in its PATH (a relative path with a slash
    resolves against the working directory, at the exec)."""
    if "/" in name and not name.startswith("/"):
        return
    paths = [name] if "/" in name else [os.path.join(d or ".", name) for d in env.get("PATH", DEFAULT_PATH).split(":")]
    if not any(os.path.isfile(p) and os.access(p, os.X_OK) for p in paths):
        report(status_fd, EXIT_NOT_FOUND, f"cannot run {name!r}: executable file not found in $PATH")


def await_start(start_fd: int, status_fd: int) -> None:
    """runc's create/start split: set up and held, the init tells its creator so by closing the
    status pipe (stderr takes its place: a later failure to exec is printed there), then blocks
    opening the start FIFO for writing until `start` opens it for reading. The FIFO is reached
    through /proc/self/fd of the O_PATH fd opened on the host before pivot_root."""
    os.dup2(2, status_fd)
    fd = os.open(f"/proc/self/fd/{start_fd}", os.O_WRONLY | os.O_CLOEXEC)
    os.write(fd, b"0")
    os.close(fd)
    os.close(start_fd)


def bring_up_loopback() -> None:
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))

