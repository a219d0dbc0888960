"""`pymachine exec`: run a command inside a running container.

The container is found from its record (its leader's PID and its unit, checked in /proc
once a pidfd pins the process), else through machined. The pidfd pins that very process,
so a recycled PID can never send us elsewhere. Then:

  parent (host)                               child
  setns(pidfd, PID)  -> only our children     (born in the container's PID namespace)
  fork, as soon as the container is found     PR_SET_DUMPABLE=0, first
  child into the unit's cgroups (written      from the host's files: the leader's environment
    beside the init: cgroupfs.join_unit;        and bounding set, the container's seccomp
    else systemd's AttachProcessesToUnit;       program (kept for its init's life); the sealed
    the kernel's RCU grace period here is       exec helper
    most of exec's wait)                      setns(pidfd, IPC|UTS|NET|CGROUP|MNT): root and cwd
                                                become the container's; its user namespace last;
                                                resolve -u from the container's /etc/passwd;
                                                chdir -w (checked inside the root); the filter,
                                                capabilities and ids; the command's path; every
                                                fd > 5 closed; wait on `go`
  go                                          exec (the helper, which execs the command)
  relay stdio, wait, return the command's exit code

The child is not dumpable, so no container process can reach this Python's /proc/PID/exe
while it runs, and its last exec is made by the sealed exec helper (payload.sealed_helper),
so a "#!/proc/self/exe" file finds no host executable either (CVE-2019-5736's class). It
holds no host fd when the command starts (CVE-2024-21626), and without -t its stdio is pipes
relayed by us (payload.stdio_pipes), never our terminal. Hot path: the parent imports only
what it needs before the fork (tests/unit/test_startup_imports.py); the README's "exec
against its floor" says where the time goes.
"""

from __future__ import annotations

import os
import sys

from machinectl_py import idmap, payload
from machinectl_py import syscalls as sc
from machinectl_py.args import APPEND, FLAG, Command, Option
from machinectl_py.errors import EXIT_CANNOT_INVOKE, EXIT_ERROR, NotFoundError, UsageError
from machinectl_py.users import home_of, resolve_user

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from machinectl_py.bus import Bus

    Raw = dict[str, Any]  # a container record as read: JSON values

# `signal` and `contextlib` cost ~6 ms of imports (enum, collections, functools) on this hot
# path; the C module under `signal` does all exec needs.
_signal: Any = __import__("_signal")

PR_SET_DUMPABLE = 4

EXEC = Command(
    "pymachine exec", "pymachine exec [OPTIONS] NAME COMMAND [ARG...]",
    "Run COMMAND in the running container NAME: in all its namespaces and in its unit's\n"
    "cgroup (attached by systemd), with the container's environment plus -e, as its user or -u.\n"
    "stdout and stderr stay apart; the exit status is COMMAND's own.",
    [
        Option("--interactive -i", "keep stdin attached", kind=FLAG),
        Option("--tty -t", "allocate a pseudo-terminal (in the container's /dev/pts)", kind=FLAG),
        Option("--env -e", "set an environment variable (repeatable); a bare KEY passes on its value here",
               kind=APPEND, metavar="KEY=VALUE"),
        Option("--workdir -w", "working directory inside the container (default: the container's)", metavar="DIR"),
        Option("--user -u", "user name or uid, USER[:GROUP] (resolved in the container's /etc/passwd); "
               "default: the container's own user (its -u, else the image's)", metavar="USER"),
    ],
    positionals=[("name", "container name")],
    rest=("argv", "the command and its arguments"),
    epilog="exit status:\n  COMMAND's own; 125 if pymachine failed, 126 if COMMAND could not be invoked, 127 if it "
           "was not found.",
)


class ExecOptions:
    __slots__ = ("name", "argv", "env", "workdir", "user", "tty", "interactive")

    def __init__(self, values: dict[str, Any]) -> None:
        self.name: str = values["name"]
        self.argv: list[str] = values["argv"]
        self.env: list[str] = values["env"]
        self.workdir: str | None = values["workdir"]
        self.user: str | None = values["user"]
        self.tty: bool = values["tty"]
        self.interactive: bool = values["interactive"]


def parse(argv: list[str]) -> ExecOptions | None:
    """docker's form: options, NAME, then the command (options end at NAME)."""
    values = EXEC.parse_or_help(argv)
    if values is None:
        return None
    if not values["argv"]:
        raise EXEC.error("missing COMMAND")
    opts = ExecOptions(values)
    if opts.workdir is not None and not opts.workdir.startswith("/"):
        raise UsageError(f"invalid working directory {opts.workdir!r}: must be absolute")
    return opts


def find_machine(bus: Bus, name: str) -> tuple[int, str]:
    """(leader PID, unit) of the running container `name`, from machined."""
    from machinectl_py import machined

    props = machined.machine_properties(bus, name)
    if props is None:
        from machinectl_py.paths import container_path

        if not os.path.isdir(container_path(name)):
            raise NotFoundError(f"no such container: {name}", hint="see 'pymachine ps -a'")
        raise NotFoundError(f"container {name} is not running", hint="see 'pymachine ps -a'")
    if props.get("Service") != "pymachine":
        raise NotFoundError(f"machine {name} is not a pymachine container (registered by {props.get('Service')})")
    return int(props["Leader"]), str(props["Unit"])


def read_record(name: str) -> Raw | None:
    """The container's record as JSON values, read once; None if unreadable. Not a
    ContainerRecord: that takes state.py and spec.py (1-3 ms of imports and building a
    ContainerSpec, here) for the few fields exec reads: pid, unit and state here; user,
    privileged and security_opt in the child."""
    from machinectl_py.paths import container_path, is_machine_name
    from machinectl_py.record import load_json

    if not is_machine_name(name):
        from machinectl_py.spec import validate_name

        validate_name(name)  # a name is a path component under containers/: it says what is wrong
        return None
    try:
        with open(container_path(name, "container.json"), encoding="utf-8") as f:
            raw = load_json(f.read())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def find_from_record(name: str, raw: Raw | None = None) -> tuple[int, int, str, str] | None:
    """(pidfd of the leader, its PID, unit, its /proc/PID/cgroup) of the running container `name`,
    from its record and /proc, with no bus call (machined took two round trips through the bus
    daemon here); None when that cannot vouch for it: the caller then asks machined. The record's
    PID is the init pymachine started and, for a detached one, systemd's MainPID (PIDFile=);
    once the pidfd pins a process, it must be PID 1 of a namespace inside the container's unit,
    so a PID recycled since the record was written is refused, and a process that dies now
    fails setns()."""
    if raw is None:
        raw = read_record(name)
    if raw is None:
        return None
    pid, unit = raw.get("pid"), raw.get("unit")
    if not isinstance(pid, int) or not pid or not isinstance(unit, str) or not unit or raw.get("state") != "running":
        return None
    try:
        pidfd = sc.pidfd_open(pid)
    except OSError:
        return None
    try:
        cgroups = _init_cgroups(pid, unit)
        if cgroups is not None:
            return pidfd, pid, unit, cgroups
    except OSError:
        pass
    os.close(pidfd)
    return None


def _is_init_of(pid: int, unit: str) -> bool:
    """PID is PID 1 of its PID namespace and lives in UNIT's cgroup (or below: it is delegated)."""
    return _init_cgroups(pid, unit) is not None


def _init_cgroups(pid: int, unit: str) -> str | None:
    """/proc/PID/cgroup if _is_init_of(PID, UNIT), else None: the cgroups the exec'd process joins."""
    with open(f"/proc/{pid}/status") as f:
        nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
    if len(nspid) < 2 or nspid[-1] != "1":
        return None
    with open(f"/proc/{pid}/cgroup") as f:
        text = f.read()
    lines = text.splitlines()
    return text if any(f"/{unit}/" in line.split(":", 2)[-1] + "/" for line in lines) else None


def configured_user(raw: Raw | None) -> str | None:
    """The user the container's command runs as (its record: -u, else the image's User), which
    exec runs as too unless it has -u, as with docker; None: root (no readable record)."""
    user = raw.get("user") if raw is not None else None
    return user if isinstance(user, str) else None


def leader_environment(leader: int) -> dict[str, str]:
    """The container's environment: what its init started with."""
    with open(f"/proc/{leader}/environ", "rb") as f:
        raw = f.read()
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def leader_capabilities(leader: int) -> int:
    """The bounding set of the container's init: exec gets no capability the container lacks."""
    with open(f"/proc/{leader}/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    raise OSError(f"no CapBnd in /proc/{leader}/status")


def container_confinement(raw: Raw | None, caps: int) -> tuple[bytes, bool]:
    """The container's own seccomp program (its profile, for the capabilities it holds) and
    its no_new_privs, from its record: exec gets no syscall the container lacks. No readable
    record: pymachine's defaults (no --privileged, no --security-opt)."""
    from machinectl_py import seccomp_compile, security

    spec = raw.get("spec") if raw is not None else None
    spec = spec if isinstance(spec, dict) else {}
    security_opt = [opt for opt in spec.get("security_opt") or () if isinstance(opt, str)]
    choice = security.seccomp_choice_of(bool(spec.get("privileged")), security_opt)
    program = b"" if choice == security.UNCONFINED else seccomp_compile.program(choice, security.capability_names(caps))
    return program, security.no_new_privileges_of(security_opt)


EXEC_SECCOMP = "exec-seccomp"  # in the container's directory: see cached_confinement


def cached_confinement(name: str, raw: Raw | None, caps: int, leader: int) -> tuple[bytes, bool]:
    """container_confinement, kept in the container's directory for the life of its init: the
    file is keyed by the init's PID and start time, its bounding set and the record's two fields,
    so the next exec reads one file instead of importing the seccomp modules and reading and
    hashing the profile (1.5-2.3 ms of the child's preparation here). A container's filter is
    thus the one of its first exec until it restarts, as docker reads a profile at create."""
    if raw is None:
        return container_confinement(raw, caps)
    from machinectl_py.paths import container_path

    spec = raw.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    with open(f"/proc/{leader}/stat", "rb") as f:
        started = f.read().rpartition(b")")[2].split()[19]  # field 22, starttime
    key = f"{leader} {started.decode()} {caps:x} {bool(spec.get('privileged'))} {spec.get('security_opt')!r}\n"
    path = container_path(name, EXEC_SECCOMP)
    try:
        with open(path, "rb") as f:
            data = f.read()
        head, _, rest = data.partition(b"\n")
        if head + b"\n" == key.encode() and rest[:1] in (b"0", b"1"):
            return rest[1:], rest[:1] == b"1"
    except OSError:
        pass
    program, no_new_privs = container_confinement(raw, caps)
    temp = f"{path}.{os.getpid()}"
    try:
        with open(temp, "wb") as f:
            f.write(key.encode() + (b"1" if no_new_privs else b"0") + program)
        os.replace(temp, path)
    except OSError:  # the next exec works it out again
        try:
            os.unlink(temp)
        except OSError:
            pass
    return program, no_new_privs


def main(argv: list[str]) -> int:
    opts = parse(argv)
    if opts is None:
        return 0
    extra_env: dict[str, str] = {}
    if opts.env:
        from machinectl_py.spec import parse_env

        extra_env = parse_env(opts.env, os.environ)
    raw = read_record(opts.name)
    found = find_from_record(opts.name, raw) if raw is not None else None
    cgroups = None
    if found is None:
        from machinectl_py.bus import Bus

        with Bus.system() as machines:
            leader, unit = find_machine(machines, opts.name)
        pidfd = sc.pidfd_open(leader)
    else:
        pidfd, leader, unit, cgroups = found
    try:
        return Exec(opts, pidfd, leader, unit, raw, extra_env, cgroups).run()
    finally:
        os.close(pidfd)


class Exec:
    """The parent's side: fork as soon as the container is found, then attach the child to the
    unit's cgroups while it prepares (Exec.prepare_child): the attach waits for the kernel (an
    RCU grace period, 1.4-24 ms on the hybrid test host), so what the child needs (the
    container's environment, capabilities, seccomp program, user) is worked out beside that
    wait, not before the fork. On a pure v2 host the child is born in the cgroup (_fork)."""

    def __init__(self, opts: ExecOptions, pidfd: int, leader: int, unit: str, raw: Raw | None,
                 extra_env: dict[str, str], cgroups: str | None = None) -> None:
        self.opts = opts
        self.pidfd = pidfd
        self.leader = leader
        self.unit = unit
        self.raw = raw
        self.extra_env = extra_env
        self.cgroups = cgroups  # the leader's /proc/PID/cgroup, if already read
        self.child = 0

    def run(self) -> int:
        go_r, go_w = os.pipe()
        status_r, status_w = os.pipe()
        pty_parent, pty_child = payload.console_socketpair() if self.opts.tty else (-1, -1)
        # Without -t, pipes: never our own stdio, which may be the admin's terminal.
        ours, theirs = payload.stdio_pipes(self.opts.interactive) if not self.opts.tty else ((-1, -1, -1), None)
        # Our own PID namespace stays the host's; only the child is born in the container's.
        sc.setns(self.pidfd, sc.CLONE_NEWPID)
        self.child, attached = self._fork()
        if self.child == 0:
            sc.prctl(PR_SET_DUMPABLE, 0)  # first: we are in the container's PID namespace already
            os.close(go_w)
            os.close(status_r)
            if pty_parent >= 0:
                os.close(pty_parent)
                payload.preload_console_modules()  # after setns() the host's library is out of reach
            payload.close_all(ours)
            if theirs is not None:
                payload.attach_stdio(*theirs)  # the command's stdio: pipes to us
                payload.close_all(theirs)
            self.prepare_child(go_r, status_w, pty_child)
        if theirs is not None:
            payload.close_all(theirs)
        os.close(go_r)
        os.close(status_w)
        if pty_child >= 0:
            os.close(pty_child)
        try:
            if not attached:
                self._attach()
        except UsageError:
            os.close(go_w)
            payload.close_all(ours)
            payload.reap(self.child)
            failure = payload.read_status(status_r)
            if failure:  # it failed first (e.g. no such command): that is the answer
                print(f"pymachine exec: {failure[1]}", file=sys.stderr)
                return failure[0]
            raise
        try:
            os.write(go_w, b"g")
        except BrokenPipeError:
            pass  # the child failed while we attached it: its status says why
        os.close(go_w)
        if pty_parent >= 0:
            payload.relay_from_socket(pty_parent, self.child, stdin=self.opts.interactive)
        else:
            self._forward_signals()
            payload.relay_pipes(self.child, *ours)
        code = payload.reap(self.child)
        failure = payload.read_status(status_r)
        os.close(status_r)
        if failure:
            print(f"pymachine exec: {failure[1]}", file=sys.stderr)
            return failure[0]
        return EXIT_ERROR if code is None else code

    def prepare_child(self, go_r: int, status_w: int, pty_child: int) -> NoReturn:
        """In the child, before its setns(): what it needs from the container, from the host's
        files (the record, the leader's /proc, the seccomp cache); then _child."""
        try:
            if self.opts.user is None:
                self.opts.user = configured_user(self.raw)
            env = leader_environment(self.leader)
            env.update(self.extra_env)
            caps = leader_capabilities(self.leader)
            confinement = cached_confinement(self.opts.name, self.raw, caps, self.leader)
        except BaseException as e:  # told to the parent, which says it
            payload.report(status_w, EXIT_ERROR, payload.describe(e))
        _child(self.opts, self.pidfd, env, caps, confinement, go_r, status_w, pty_child)
        os._exit(EXIT_ERROR)  # _child never returns

    def _fork(self) -> tuple[int, bool]:
        """(os.fork()'s answer, whether the child was born in the unit's cgroup). On a pure
        cgroup v2 host, clone3(CLONE_INTO_CGROUP) into the cgroup _attach would write it into:
        the kernel places it at birth, without the grace period of a move. Anything refused
        (an old kernel, a unit whose cgroup holds no processes: a booted systemd's) forks
        plainly, and _attach moves the child as before."""
        from machinectl_py import cgroupfs

        directory = cgroupfs.unit_dir_v2(self.leader, self.unit, self.cgroups)
        if directory is not None:
            try:
                fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    pid = sc.fork_into_cgroup(fd)
                except OSError:
                    pid = -1
                os.close(fd)
                if pid >= 0:
                    return pid, True
        return os.fork(), False

    def _attach(self) -> None:
        """The child into the unit's cgroups: written beside the init (no bus round trip: systemd
        took 10-15 ms here, most of this command's time after the interpreter), else by systemd."""
        from machinectl_py import cgroupfs

        if cgroupfs.join_unit(self.child, self.leader, self.unit, self.cgroups):
            return
        from machinectl_py import systemd
        from machinectl_py.bus import Bus, BusError

        try:
            # Straight to systemd on its private socket: through the bus daemon, systemd's check
            # of our credentials for AttachProcessesToUnit costs it round trips to the daemon.
            with Bus.systemd() as bus:
                try:
                    systemd.attach_processes(bus, self.unit, [self.child])
                except BusError as e:
                    sub = _init_subcgroup(self.pidfd, self.unit) if "EBUSY" in e.name + e.message else None
                    if not sub:
                        raise
                    # A booted systemd (--boot) enabled controllers in the unit's cgroup: processes
                    # live only in its leaves, so the command joins the init's own (init.scope).
                    systemd.attach_processes(bus, self.unit, [self.child], sub)
        except BusError as e:
            raise UsageError(f"cannot attach to {self.unit}: {e}") from None

    def _forward_signals(self) -> None:
        def forward(signum: int, _frame: object) -> None:
            try:
                os.kill(self.child, signum)
            except ProcessLookupError:
                pass  # it has just exited; waitpid() reports how

        for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT):
            _signal.signal(sig, forward)


def _child(opts: ExecOptions, pidfd: int, env: dict[str, str], caps: int, confinement: tuple[bytes, bool], go_fd: int,
           status_fd: int, pty_sock: int) -> None:
    """Never returns. Imports nothing after setns(): the host's Python library is out of reach then."""
    code = EXIT_ERROR
    try:
        sc.prctl(PR_SET_DUMPABLE, 0)
        helper_fd = payload.sealed_helper()  # before setns: the host's files are out of reach after
        # Everything up to the exec happens while systemd attaches us to the unit (it takes
        # ~10 ms on a hybrid cgroup host); only the exec waits for `go`.
        sc.setns(pidfd, sc.CLONE_NEWIPC | sc.CLONE_NEWUTS | sc.CLONE_NEWNET | sc.CLONE_NEWCGROUP | sc.CLONE_NEWNS)
        idmap.join(pidfd)  # its user namespace last, if it has one
        os.close(pidfd)
        # setns(CLONE_NEWNS) made the container's root our root and cwd: paths below resolve
        # inside it, and '..' cannot climb out of a root.
        uid, gid, groups = resolve_user(opts.user) if opts.user else (0, 0, [])
        workdir = opts.workdir or _container_cwd()
        code = EXIT_CANNOT_INVOKE
        try:
            os.chdir(workdir)
        except OSError as e:
            payload.report(status_fd, code, f"cannot change to working directory {workdir}: {e.strerror}")
        if os.getcwd().startswith("(unreachable)"):
            payload.report(status_fd, code, f"working directory {workdir} is outside the container")
        if pty_sock >= 0:
            slave = payload.open_console(pty_sock)
            payload.attach_stdio(slave, slave, slave)
            if slave > 2:
                os.close(slave)
        elif not opts.interactive:
            devnull = os.open("/dev/null", os.O_RDONLY)  # the container's
            os.dup2(devnull, 0)
            os.close(devnull)
        seccomp, no_new_privs = confinement  # the container's filter, and the leader's bounding set:
        payload.confine(seccomp, caps, uid, gid, groups, no_new_privs=no_new_privs)
        env.setdefault("PATH", payload.DEFAULT_PATH)
        if opts.tty:
            env.setdefault("TERM", os.environ.get("TERM", "xterm"))
        if uid != 0:
            env["HOME"] = home_of(uid) or "/"
        # Waits for `go` (our cgroup attach) right before the execve, with the command's path found:
        # closes go_fd and every host fd.
        payload.finalize_and_exec(opts.argv, env, status_fd, helper_fd=helper_fd, go_fd=go_fd)
    except SystemExit:
        raise
    except BaseException as e:
        payload.report(status_fd, code, payload.describe(e))
    os._exit(code)


def _init_subcgroup(pidfd: int, unit: str) -> str | None:
    """The cgroup of the container's init below its unit's (pure cgroup v2), e.g. "/init.scope"."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as f:
            pid = next(line.split()[1] for line in f if line.startswith("Pid:"))
        with open(f"/proc/{pid}/cgroup") as f:
            path = next(line.rstrip("\n").split(":", 2)[2] for line in f if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    _, found, sub = path.partition(f"/{unit}/")
    return f"/{sub}" if found else None  # systemd wants it absolute, from the unit's cgroup


def _container_cwd() -> str:
    """The container's working directory: its init's, read from the container's own /proc."""
    try:
        path = os.readlink("/proc/1/cwd")
    except OSError:
        return "/"
    return path if path.startswith("/") else "/"
