"""The start kit of a new container, shared by `pymachine run` (runtime.py) and the unit's
setup process (service.py): its command and environment, its plan, and its init forked and
held in fresh namespaces until the caller has put it in its unit and registered it.

The release protocol (container_init.await_parent): the init makes its plan and mounts while
held on the `go` pipe; the caller tells it IN_SCOPE once systemd has put it in the unit's
cgroup, then RUN once machined has registered the machine; EOF instead abandons the start.
What the init and `exec` share after that (console, fd closing, exec, status, reaping) is
payload.py's.

The caller's side imports neither the init's side (container_init, mounts, idmap) nor the plan
(plan.py): the forked init imports them while systemd makes the unit, off the start's path.
"""

from __future__ import annotations

import os
import sys

from machinectl_py import images, network, payload
from machinectl_py import syscalls as sc
from machinectl_py.errors import PymachineError, UsageError
from machinectl_py.payload import IN_SCOPE, RUN
from machinectl_py.policy import Policy
from machinectl_py.spec import RLIMITS, ContainerSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from machinectl_py import plan
    from machinectl_py.bus import Bus
    from machinectl_py.container_init import ChildPlan


def command_for(spec: ContainerSpec, config: images.ImageConfig) -> tuple[str, ...]:
    """docker's rule: Entrypoint + (the given command, else the image's Cmd); --entrypoint
    replaces the image's Entrypoint and drops its Cmd. With --init, tini runs it. --boot: the
    image's /sbin/init, with the arguments given after the image."""
    if spec.boot:
        from machinectl_py import boot

        return boot.command(spec.command)
    if spec.entrypoint is not None:
        argv = spec.entrypoint + (spec.command or ())
    else:
        argv = tuple(config.entrypoint) + (spec.command if spec.command else tuple(config.cmd))
    if not argv:
        raise UsageError(f"no command given and image {spec.image!r} has none",
                         hint=f"pymachine run {spec.image} COMMAND")
    if spec.init:
        from machinectl_py.plan import INIT_PATH

        init_binary(spec)  # checked here, before anything is made
        return (INIT_PATH, "--", *argv)
    return argv


# Debian's tini package: the statically linked build runs in any image.
TINI = "/usr/bin/tini-static"


def init_binary(spec: ContainerSpec) -> str | None:
    """The host's tini for --init; an error naming the package when it is missing."""
    if not spec.init:
        return None
    if not os.access(TINI, os.X_OK):
        raise UsageError(f"--init needs {TINI}", hint="install Debian's tini package (apt-get install tini)")
    return TINI


def effective_user(spec: ContainerSpec, config: images.ImageConfig) -> str | None:
    """-u, else the image's User; None: root."""
    return spec.user or config.user or None


def environment(spec: ContainerSpec, config: images.ImageConfig) -> dict[str, str]:
    env = {"PATH": payload.DEFAULT_PATH, "container": "pymachine"}
    env.update(config.env)
    env.update(spec.env)
    env["HOSTNAME"] = spec.effective_hostname
    # HOME, when neither the image nor -e sets it, comes from the container's /etc/passwd
    # entry of the user it runs as (container_init.launch).
    if spec.tty:
        env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    return env


def layer_links(container_dir: str, layers: tuple[os.PathLike[str] | str, ...]) -> tuple[str, ...]:
    """Short relative names for the layers (l/0 = bottom): the overlay option string
    must fit in one page, and long store paths would cap images at a few dozen layers."""
    links = os.path.join(container_dir, "l")
    os.makedirs(links, exist_ok=True)
    names = []
    for i, layer in enumerate(layers):
        link = os.path.join(links, str(i))
        if not os.path.islink(link):
            os.symlink(layer, link)
        names.append(f"l/{i}")
    return tuple(reversed(names))  # overlayfs wants the top layer first


def rootfs_of(cdir: str) -> str:
    """Where the container's root is mounted (in its own mount namespace only)."""
    return os.path.join(cdir, "rootfs")


def build_child_plan(spec: ContainerSpec, image: images.ResolvedImage, cdir: str, policy: Policy,
                     env: Mapping[str, str], argv: tuple[str, ...], *, binds: Sequence[plan.Bind] = (),
                     detached: bool = False, userns: tuple[int, int] | None = None,
                     notify_socket: str | None = None, console_socket: int = -1) -> ChildPlan:
    """Runs in the forked init (see HeldInit): makes the container dir's parts too.
    userns: the container's ID range (--userns=auto), from userns.acquire; notify_socket: with
    --boot, the socket the guest's READY=1 goes to (readiness.py); console_socket: a detached
    boot's, where the init sends its console's pty (readiness.py copies the boot's messages)."""
    from machinectl_py import plan
    from machinectl_py.container_init import ChildPlan

    for sub in ("upper", "work", "rootfs"):
        os.makedirs(os.path.join(cdir, sub), mode=0o755, exist_ok=True)
    ops = [*plan.base_plan(policy, binds=binds, shm_size=spec.shm_size, tmpfs=tuple(spec.tmpfs.items()),
                           init=init_binary(spec)), *device_nodes(spec)]
    if spec.boot:
        ops += boot_ops(cdir, notify_socket, spec.tty)
    child_plan = ChildPlan(
        container_dir=cdir,
        rootfs=rootfs_of(cdir),
        overlay=plan.Overlay(layer_links(cdir, image.layers), "upper", "work", volatile=spec.remove),
        ops=tuple(plan.owned_by_range(ops, userns[0]) if userns else ops),
        cgroup_layout=_cgroup_layout(),
        hostname=spec.effective_hostname,
        private_network=network.is_private(spec.network),
        join_namespaces=joined_network_namespace(spec.network),
        argv=argv,
        env=dict(env),
        workdir=spec.workdir or image.config.workdir or "/",
        user=effective_user(spec, image.config),
        **security_fields(spec, policy),
        detached=detached,
        tty=spec.tty,
        stdin_devnull=not (spec.tty or spec.interactive),
        read_only_root=spec.read_only,
        rlimits=tuple((RLIMITS[name], soft, hard) for name, (soft, hard) in spec.ulimits.items()),
        oom_score_adj=spec.oom_score_adj,
        userns=userns,
        boot=spec.boot,
        console_socket=console_socket,
    )
    if os.environ.get("PYMACHINE_DEBUG"):
        for op in child_plan.ops:
            print(plan.describe(op), file=sys.stderr)
    return child_plan


def boot_ops(cdir: str, notify_socket: str | None, console: bool) -> list[plan.Op]:
    """--boot's /run/host files (the manager's name written here, in the container's dir) and
    console (boot.py)."""
    from machinectl_py import boot

    manager = os.path.join(cdir, "container-manager")
    with open(manager, "w") as f:
        f.write(boot.MANAGER + "\n")
    boot_id = os.path.join(cdir, "boot_id")
    with open(boot_id, "w") as f:
        f.write(boot.new_boot_id(os.urandom(16)))
    os_release = next((p for p in boot.HOST_OS_RELEASE if os.path.exists(p)), "/dev/null")
    return boot.ops(os_release, manager, boot_id, notify_socket, console)


def init_speaks_notify(image: images.ResolvedImage) -> bool:
    """--boot: does the image's /sbin/init (the top layer that has it) lead to systemd? Read in
    the layers as they are (links not followed): a usr-merged /sbin resolves to usr/sbin."""
    from machinectl_py import boot

    for layer in reversed(image.layers):
        for path in ("sbin/init", "usr/sbin/init"):
            full = os.path.join(layer, path)
            try:
                return boot.is_systemd(os.readlink(full))
            except FileNotFoundError:
                continue
            except OSError:  # not a link: systemd itself only if so named (it never is)
                if os.path.lexists(full):
                    return boot.is_systemd(full)
    return False


def security_fields(spec: ContainerSpec, policy: Policy) -> dict[str, object]:
    """The ChildPlan fields of docker's security flags (security.py): capabilities kept, the
    seccomp program (compiled once per profile, seccomp_compile.py), no_new_privs, extra
    groups and sysctls."""
    from machinectl_py import seccomp_compile, security

    caps = security.capabilities(spec, policy)
    choice = security.seccomp_choice(spec)
    mask = security.capability_mask(caps)
    if spec.privileged or spec.boot:
        # "every capability" (and nspawn's set for --boot) is every one we have to give
        mask &= own_bounding_set()
    # The host's network: no NET_RAW unless asked for by name, ALL or --privileged (network.py).
    asked = caps if spec.privileged or security.ALL in spec.cap_add else frozenset(spec.cap_add)
    mask = network.capability_mask(spec.network, mask, asked)
    return {
        "capability_mask": mask,
        "seccomp": b"" if choice == security.UNCONFINED else seccomp_compile.program(choice, caps),
        "no_new_privileges": security.no_new_privileges(spec),
        "group_add": spec.group_add,
        "sysctls": security.sysctl_items(spec.sysctls),
    }


def own_bounding_set() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return 0


def device_nodes(spec: ContainerSpec) -> tuple[plan.Op, ...]:
    """--device: the host's node bound at its path in the container's /dev. A bind, not
    mknod: the unit's device list (DeviceAllow= without "m") applies to the setup process
    of a detached container too, and a bind needs no mknod there (nor in a user namespace)."""
    from machinectl_py import security
    from machinectl_py.plan import Bind

    binds: list[plan.Op] = []
    for host, target, _perms in map(security.split_device, spec.devices):
        security.device_numbers(host)  # still a device node
        binds.append(Bind(host, target, is_file=True))
    return tuple(binds)


def connect_network(spec: ContainerSpec, leader: int, exposed: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """bridge or a user network: the held init's namespace gets its veth, address and route
    (before release). Returns the published ports' [::1] proxies to start (host port, target)."""
    name = network.attached_network(spec.network)
    if name is None:
        return []
    from machinectl_py import netsetup  # json (the leases): only for a container on a network

    ports = tuple(spec.ports)  # a list when read back from the definition
    if spec.publish_all:
        ports += network.publish_all(ports, tuple(exposed))
    netsetup.attach(name, spec.name, leader, ports, ip=spec.ip, aliases=spec.network_aliases)
    from machinectl_py.spec import parse_connection

    for item in spec.connections:  # kept by `network connect`: eth1, eth2... again
        other, ip, aliases = parse_connection(item)
        netsetup.attach(other, spec.name, leader, ip=ip, aliases=aliases, primary=False)
    return netsetup.loopback6_targets(name, spec.name) if ports else []


class NetworkSetup:
    """connect_network() in a thread from the moment the init is forked, while systemd makes
    the scope and machined registers the machine (those are waits on D-Bus): join() before the
    init is released, and before any teardown (a failed start frees what it made)."""

    def __init__(self, spec: ContainerSpec, leader: int, exposed: tuple[str, ...] = ()) -> None:
        self.task = None
        self.name = spec.name
        self.loopback6: list[tuple[int, str]] = []  # known after join()
        if network.attached_network(spec.network) is not None:
            from machinectl_py import netsetup

            def connect() -> None:
                self.loopback6 = connect_network(spec, leader, exposed)

            self.task = netsetup.Background(connect)

    def join(self) -> None:
        """Wait for it; its failure is raised here."""
        if self.task is not None:
            self.task.join()

    def start_proxies(self, bus: Bus, owner: str) -> None:
        """After join(): the published ports' [::1] sides, bound to the container's unit."""
        if self.loopback6:
            from machinectl_py import systemd

            systemd.start_loopback6_proxies(bus, owner, self.name, self.loopback6)

    def settle(self) -> None:
        """Wait for it, its failure dropped: the start fails for another reason already."""
        try:
            self.join()
        except Exception:
            pass  # the caller's error is the one to report


def joined_network_namespace(mode: str) -> tuple[tuple[str, str], ...]:
    """container:NAME, ns:PATH: the ("network", path) the init joins instead of making one."""
    if mode.startswith("ns:"):
        if not os.path.exists(mode[3:]):
            from machinectl_py.errors import NotFoundError

            raise NotFoundError(f"no such network namespace: {mode[3:]}")
        return (("network", mode[3:]),)
    if mode.startswith("container:"):
        return (("network", f"/proc/{running_init(mode[10:])}/ns/net"),)
    return ()


def running_init(name: str) -> int:
    """The init PID of running container `name`: its record's, if that PID is still PID 1 of
    a PID namespace (not a PID recycled since)."""
    from machinectl_py import state
    from machinectl_py.errors import ConflictError

    record = state.load(name)  # NotFoundError: no such container
    pid = record.pid if record.state == "running" else 0
    try:
        with open(f"/proc/{pid}/status") as f:
            nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
    except OSError:
        nspid = []
    if not pid or len(nspid) < 2 or nspid[-1] != "1":
        raise ConflictError(f"container {name} is not running: its network namespace cannot be joined")
    return pid


def network_binds(spec: ContainerSpec) -> list[plan.Bind]:
    """bridge, NAME: the container's /etc/hosts and /etc/resolv.conf, written now (netfiles.py);
    container:NAME: that container's, if it has them."""
    if spec.network.startswith("container:"):
        from machinectl_py.paths import run_path
        from machinectl_py.plan import Bind

        files = run_path("netfiles", spec.network[10:])
        return [Bind(source=os.path.join(files, f), target=f"/etc/{f}", is_file=True)
                for f in ("hosts", "resolv.conf") if os.path.exists(os.path.join(files, f))]
    if network.attached_network(spec.network) is None:
        return []
    from machinectl_py import netfiles

    return netfiles.prepare(spec.name, spec.effective_hostname, spec.add_hosts, spec.dns, spec.dns_search,
                            spec.dns_options)


def check_network(spec: ContainerSpec, ports: bool = True) -> None:
    """Before anything is made: a user network that does not exist, or a host port another
    container publishes, fails the start here."""
    joined_network_namespace(spec.network)  # container:NAME running, ns:PATH there
    name = network.attached_network(spec.network)
    others = [item.split(",", 1)[0] for item in spec.connections]  # spec.parse_connection's network
    for wanted in ([name] if name is not None else []) + others:
        if wanted not in (network.DEFAULT_NETWORK, network.VETH_NETWORK):
            from machinectl_py import paths

            if not os.path.exists(paths.config_path("networks", f"{wanted}.toml")):
                from machinectl_py.errors import NotFoundError

                raise NotFoundError(f"no such network: {wanted}", hint="see 'pymachine network ls'")
    if spec.ports and ports:
        from machinectl_py import netsetup

        netsetup.check_ports(spec.name, spec.ports, name or network.DEFAULT_NETWORK)


def disconnect_network(name: str, *, defer: bool = False) -> None:
    """Free the container's lease, and its network's bridge and rules if it was the last
    (defer: the kernel's part by a detached child, see netsetup.release)."""
    from machinectl_py.paths import run_path

    if os.path.isdir(run_path("netfiles", name)):
        from machinectl_py import netfiles

        netfiles.remove(name)
    try:
        leases = [f for f in os.listdir(run_path("networks")) if f.endswith(".json")]
    except FileNotFoundError:
        return  # no container was ever on a network since boot: nothing to import or do
    if leases:
        from machinectl_py import netsetup

        netsetup.release(name, defer=defer)


def finish_network(detach: bool = True) -> None:
    """The end of a foreground `run`: the kernel's part of its network teardown, if it left one
    (netsetup.finish_deferred; detach=False on the way out with an error)."""
    if "machinectl_py.netsetup" in sys.modules:
        from machinectl_py import netsetup

        netsetup.finish_deferred(detach)


def boot_userns(spec: ContainerSpec, userns: tuple[int, int] | None) -> tuple[int, int, bool] | None:
    """--boot with a user namespace: (base, size, private network) for HeldInit, whose init is then
    born in its user namespace (idmap.spawn_init); None otherwise."""
    if not spec.boot or userns is None:
        return None
    return (*userns, network.is_private(spec.network))


class HeldInit:
    """The container's init, forked into a new PID namespace and held on its `go` pipe until
    the caller releases it (the release protocol above). Owns the parent's ends of both pipes.

    The child makes its own plan (make_plan, e.g. a partial build_child_plan): that work then
    overlaps systemd's making of the unit, which needs only the child's PID. A plan that
    cannot be made is a failure the child reports on the status pipe, like any other."""

    def __init__(self, make_plan: Callable[[], ChildPlan], out_w: int, err_w: int, in_r: int = -1,
                 boot_userns: tuple[int, int, bool] | None = None) -> None:
        """boot_userns: --boot with a user namespace (launch.boot_userns): the init is born in
        it, and a host-root helper sets it up (_spawn_booted)."""
        self._setup_pid = 0
        if boot_userns is not None:
            self._spawn_booted(make_plan(), out_w, err_w, in_r, boot_userns)
            return
        go_r, go_w = os.pipe()
        status_r, status_w = os.pipe()
        # unshare(CLONE_NEWPID) changes only where our *next* child goes: that child is
        # PID 1 of the new namespace, and we stay its parent so it can die with us.
        parent = os.getpid()
        own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        sc.unshare(sc.CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            from machinectl_py.container_init import child_main

            os.close(go_w)
            os.close(status_r)
            if in_r >= 0:  # `run -i` without -t: stdin is a pipe from us (payload.fork_stdin_relay)
                os.dup2(in_r, 0)
            child_main(make_plan, go_r, status_w, out_w, err_w, parent)
        # Our later children (ip, nft, ...) go back to our own PID namespace: in the init's,
        # fork fails with ENOMEM once the init is dead (teardown), and PIDs would read as its own.
        sc.setns(own_pid_ns, sc.CLONE_NEWPID)
        os.close(own_pid_ns)
        os.close(go_r)
        os.close(status_w)
        self.pid = pid
        self._go_w = self._run_w = go_w
        self._status_r = status_r

    def _spawn_booted(self, plan: ChildPlan, out_w: int, err_w: int, in_r: int,
                      boot_userns: tuple[int, int, bool]) -> None:
        """nspawn's split: the init (container_init.boot_init_main) is born in its user
        namespace, PID 1 of a PID namespace that namespace owns, so the guest's reboot() works;
        a host-root helper (boot_setup_main) born into that PID namespace mounts its root. The
        plan is made here, before both (neither could make it: the init is not host root)."""
        from machinectl_py import idmap
        from machinectl_py.container_init import boot_init_main, boot_setup_main

        setup_go_r, setup_go_w = os.pipe()  # IN_SCOPE, to the helper
        run_r, run_w = os.pipe()  # RUN, to the init
        status_r, status_w = os.pipe()  # both write their failure; EOF once it exec'd and the helper exited
        to_init_r, to_init_w = os.pipe()
        from_init_r, from_init_w = os.pipe()
        ours = (setup_go_w, run_w, status_r)

        def init_main() -> None:
            if in_r >= 0:
                os.dup2(in_r, 0)
            boot_init_main(plan, run_r, status_w, out_w, err_w, to_init_r, from_init_w,
                           (*ours, setup_go_r, to_init_w, from_init_r))

        base, size, private = boot_userns
        userns_fd, pid = idmap.spawn_init(base, size, private, init_main)
        pidfd = os.pidfd_open(pid)
        own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        try:
            sc.setns(pidfd, sc.CLONE_NEWPID)
            helper = os.fork()
            if helper == 0:
                boot_setup_main(plan, setup_go_r, status_w, to_init_w, from_init_r, pidfd, pid, userns_fd,
                                (*ours, run_r, to_init_r, from_init_w))
            sc.setns(own_pid_ns, sc.CLONE_NEWPID)
        finally:
            for fd in (own_pid_ns, pidfd, userns_fd, setup_go_r, run_r, status_w, to_init_r, to_init_w,
                       from_init_r, from_init_w):
                os.close(fd)
        self.pid = pid
        self._setup_pid = helper
        self._go_w, self._run_w = setup_go_w, run_w
        self._status_r = status_r

    def in_scope(self) -> None:
        """It is in its unit's cgroup: the setup that needs the cgroup may go on."""
        self._tell(IN_SCOPE)

    def release(self, reap_setup: bool = True) -> None:
        """The machine is registered: the payload may run. A booted init's setup helper is done
        by now (it ends before the init waits for this): reaped, or it would stay a zombie in
        the container's PID namespace; reap_setup=False leaves that to failure() (a booted
        systemd released before its registration: the helper may still be mounting its cgroups
        while machined registers it)."""
        self._tell(RUN)
        self._close_go()
        if reap_setup:
            self._reap_setup()

    def failure(self) -> tuple[int, str] | None:
        """Block until the init execs the payload or fails; (exit code, why) if it failed.
        Closes the status pipe."""
        failure = payload.read_status(self._status_r)
        self._close_status()
        self._reap_setup()
        return failure

    def abandon(self, name: str) -> PymachineError | None:
        """The start is abandoned before the payload ran: EOF on `go` makes the held init exit
        without running anything. If the init had failed on its own already (a hostile image,
        a missing mount source), that is the real reason, so it is returned, with the init's
        exit code, to be raised instead of the error that followed from it (machined cannot
        register a leader that is gone)."""
        self._close_go()
        failure = self.failure()
        if failure is None:
            return None
        error = PymachineError(f"{name}: {failure[1]}")
        error.exit_code = failure[0]
        return error

    def close(self) -> None:
        """Close what is still open; EOF on `go` before the release: the init exits."""
        self._close_go()
        self._close_status()
        self._reap_setup()

    def _tell(self, what: bytes) -> None:
        # An init that failed on its own is gone: its status pipe says why, so a broken pipe
        # here is not the error.
        try:
            os.write(self._run_w if what == RUN else self._go_w, what)
        except BrokenPipeError:
            pass

    def _close_go(self) -> None:
        for fd in {self._go_w, self._run_w}:
            if fd >= 0:
                os.close(fd)
        self._go_w = self._run_w = -1

    def _reap_setup(self) -> None:
        """A booted init's setup helper (_spawn_booted) has exited, or exits on EOF on `go`."""
        if self._setup_pid:
            payload.reap(self._setup_pid)
            self._setup_pid = 0

    def _close_status(self) -> None:
        if self._status_r >= 0:
            os.close(self._status_r)
            self._status_r = -1


def in_unit_cgroup(pid: int, unit: str) -> bool:
    """Is `pid` (alive, or dead and not yet reaped) in the cgroup of `unit`? On v1 and v2 alike
    systemd's own hierarchy names the unit as the cgroup path's last component."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            paths = [line.rstrip("\n").split(":", 2)[2] for line in f]
    except (OSError, IndexError):
        return False
    return any(path.endswith("/" + unit) for path in paths)


def _cgroup_layout() -> plan.CgroupLayout:
    from machinectl_py.mounts import detect_cgroup_layout

    return detect_cgroup_layout()
