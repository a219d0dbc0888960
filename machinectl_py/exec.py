"""`pymachine exec`: run a command inside a running container.

The container is found through machined (its leader's PID and its unit). A pidfd of the
leader pins that very process, so a recycled PID can never send us elsewhere. Then:

  parent (host)                               child
  setns(pidfd, PID)  -> only our children     (born in the container's PID namespace)
  fork                                        PR_SET_DUMPABLE=0
  AttachProcessesToUnit(unit, child)          setns(pidfd, IPC|UTS|NET|CGROUP|MNT): root and cwd
    (systemd moves the child into the          become the container's; resolve -u from the
     container's cgroup meanwhile)             container's /etc/passwd; chdir -w (checked inside
                                              the root); drop capabilities to the leader's
                                              bounding set; wait on `go`
  go                                          close every fd > 2; exec
  wait, return the command's exit code

The child is not dumpable until exec, so no container process can reach this Python's
/proc/PID/exe (CVE-2019-5736), and it holds no host fd when the command starts
(CVE-2024-21626). Hot path: imports stay minimal (the bench compares with `runc exec`).
"""

from __future__ import annotations

import os
import sys

from machinectl_py import syscalls as sc
from machinectl_py.errors import EXIT_CANNOT_INVOKE, EXIT_ERROR, EXIT_NOT_FOUND, NotFoundError, UsageError
from machinectl_py.users import drop_privileges, home_of, resolve_user

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from machinectl_py.bus import Bus

# `signal` and `contextlib` cost ~6 ms of imports (enum, collections, functools) on this hot
# path; the C module under `signal` does all exec needs.
_signal: Any = __import__("_signal")

PR_SET_DUMPABLE = 4
TIOCGPTPEER = 0x5441
TIOCSPTLCK = 0x40045431
TIOCSCTTY = 0x540E
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

USAGE = """\
usage: pymachine exec [OPTIONS] NAME COMMAND [ARG...]

Run COMMAND in the running container NAME: in all its namespaces and in its unit's
cgroup (attached by systemd), with the container's environment plus -e, as root or -u.
stdout and stderr stay apart; the exit status is COMMAND's own.

options:
  -i, --interactive      keep stdin attached
  -t, --tty              allocate a pseudo-terminal (in the container's /dev/pts)
  -e, --env KEY=VALUE    set an environment variable (repeatable); a bare KEY passes on its value here
  -w, --workdir DIR      working directory inside the container (default: the container's)
  -u, --user USER[:GROUP]  user name or uid (resolved in the container's /etc/passwd);
                           default: the container's own user (its -u, else the image's)
  --help                 show this help and exit
"""


class ExecOptions:
    __slots__ = ("name", "argv", "env", "workdir", "user", "tty", "interactive")

    def __init__(self) -> None:
        self.name = ""
        self.argv: list[str] = []
        self.env: list[str] = []
        self.workdir: str | None = None
        self.user: str | None = None
        self.tty = False
        self.interactive = False


_VALUE_OPTS = {"-e": "env", "--env": "env", "-w": "workdir", "--workdir": "workdir", "-u": "user", "--user": "user"}
_FLAG_OPTS = {"-i": "interactive", "--interactive": "interactive", "-t": "tty", "--tty": "tty"}


def parse(argv: list[str]) -> ExecOptions | None:
    """docker's form: options, NAME, then the command (options end at NAME)."""
    opts = ExecOptions()
    args = list(argv)
    while args and args[0].startswith("-") and args[0] != "-":
        arg = args.pop(0)
        if arg == "--":
            break
        if arg == "--help":
            sys.stdout.write(USAGE)
            return None
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if not arg.startswith("--") and len(arg) > 2:
            if all(f"-{c}" in _FLAG_OPTS for c in arg[1:]):  # bundled flags: -it
                for c in arg[1:]:
                    setattr(opts, _FLAG_OPTS[f"-{c}"], True)
                continue
            name, eq, inline = arg[:2], "=", arg[2:]  # -eK=V
        if name in _FLAG_OPTS and not eq:
            setattr(opts, _FLAG_OPTS[name], True)
        elif name in _VALUE_OPTS:
            if not eq:
                if not args:
                    raise UsageError(f"pymachine exec: option {name} needs a value")
                inline = args.pop(0)
            dest = _VALUE_OPTS[name]
            if dest == "env":
                opts.env.append(inline)
            else:
                setattr(opts, dest, inline)
        else:
            raise UsageError(f"pymachine exec: unknown option {arg!r}", hint="see 'pymachine exec --help'")
    if len(args) < 2:
        raise UsageError("pymachine exec: expected NAME COMMAND [ARG...]", hint="see 'pymachine exec --help'")
    opts.name, opts.argv = args[0], args[1:]
    if opts.workdir is not None and not opts.workdir.startswith("/"):
        raise UsageError(f"invalid working directory {opts.workdir!r}: must be absolute")
    return opts


def find_machine(bus: Bus, name: str) -> tuple[int, str]:
    """(leader PID, unit) of the running container `name`, from machined."""
    from machinectl_py import machined

    path = machined.machine_path(bus, name)
    if path is None:
        raise NotFoundError(f"container {name} is not running", hint="see 'pymachine ps -a'")
    props = machined.machine_properties(bus, path)
    if props.get("Service") != "pymachine":
        raise NotFoundError(f"machine {name} is not a pymachine container (registered by {props.get('Service')})")
    return int(props["Leader"]), str(props["Unit"])


def configured_user(name: str) -> str | None:
    """The user the container's command runs as (its record: -u, else the image's User), which
    exec runs as too unless it has -u, as with docker; None: root."""
    from machinectl_py import state

    try:
        return state.load(name).user
    except (NotFoundError, OSError, ValueError, KeyError):
        return None  # no readable record: root, as before records kept the user


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


def main(argv: list[str]) -> int:
    opts = parse(argv)
    if opts is None:
        return 0
    from machinectl_py.spec import parse_env

    extra_env = parse_env(opts.env, os.environ)
    from machinectl_py.bus import Bus, BusError

    with Bus.system() as bus:
        leader, unit = find_machine(bus, opts.name)
        if opts.user is None:
            opts.user = configured_user(opts.name)
        pidfd = sc.pidfd_open(leader)
        try:
            env = leader_environment(leader)
            env.update(extra_env)
            caps = leader_capabilities(leader)
            from machinectl_py.policy import load_policy

            command = Exec(opts, pidfd, unit, env, caps)
            policy = load_policy()  # the container's own seccomp filter, too
            command.seccomp = sc.seccomp_filter(policy.seccomp_deny, policy.seccomp_deny_user_namespaces)
            return command.run(bus, BusError)
        finally:
            os.close(pidfd)


class Exec:
    def __init__(self, opts: ExecOptions, pidfd: int, unit: str, env: dict[str, str], caps: int) -> None:
        self.opts = opts
        self.pidfd = pidfd
        self.unit = unit
        self.env = env
        self.caps = caps
        self.seccomp = b""
        self.child = 0

    def run(self, bus: Bus, bus_error: type[Exception]) -> int:
        from machinectl_py.systemd import attach_processes

        go_r, go_w = os.pipe()
        status_r, status_w = os.pipe()
        pty_parent, pty_child = -1, -1
        if self.opts.tty:
            import socket

            pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            pty_parent, pty_child = pair[0].detach(), pair[1].detach()
        # Our own PID namespace stays the host's; only the child is born in the container's.
        sc.setns(self.pidfd, sc.CLONE_NEWPID)
        self.child = os.fork()
        if self.child == 0:
            os.close(go_w)
            os.close(status_r)
            if pty_parent >= 0:
                os.close(pty_parent)
                # Loaded now: after setns() the host's Python library is out of reach.
                import fcntl  # noqa: F401
                import struct  # noqa: F401
            _child(self.opts, self.pidfd, self.env, self.caps, self.seccomp, go_r, status_w, pty_child)
        os.close(go_r)
        os.close(status_w)
        if pty_child >= 0:
            os.close(pty_child)
        try:
            attach_processes(bus, self.unit, [self.child])
        except bus_error as e:
            os.close(go_w)
            self._reap()
            raise UsageError(f"cannot attach to {self.unit}: {e}") from None
        try:
            os.write(go_w, b"g")
        except BrokenPipeError:
            pass  # the child failed while we attached it: its status says why
        os.close(go_w)
        if pty_parent >= 0:
            relay_from_socket(pty_parent, self.child, stdin=self.opts.interactive)
        else:
            self._forward_signals()
        code = self._reap()
        failure = _read_all(status_r)
        os.close(status_r)
        if failure:
            code_text, _, message = failure.partition(":")
            print(f"pymachine exec: {message}", file=sys.stderr)
            return int(code_text) if code_text.isdigit() else EXIT_ERROR
        return code

    def _forward_signals(self) -> None:
        def forward(signum: int, _frame: object) -> None:
            try:
                os.kill(self.child, signum)
            except ProcessLookupError:
                pass  # it has just exited; waitpid() reports how

        for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT):
            _signal.signal(sig, forward)

    def _reap(self) -> int:
        while True:
            try:
                _, status = os.waitpid(self.child, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                return EXIT_ERROR
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _report(status_fd: int, code: int, message: str) -> None:
    try:
        os.write(status_fd, f"{code}:{message}".encode()[:4000])
    finally:
        os._exit(code)


def _child(opts: ExecOptions, pidfd: int, env: dict[str, str], caps: int, seccomp: bytes, go_fd: int, status_fd: int,
           pty_sock: int) -> None:
    """Never returns. Imports nothing after setns(): the host's Python library is out of reach then."""
    code = EXIT_ERROR
    try:
        sc.prctl(PR_SET_DUMPABLE, 0)
        # Everything up to the exec happens while systemd attaches us to the unit (it takes
        # ~10 ms on a hybrid cgroup host); only the exec waits for `go`.
        sc.setns(pidfd, sc.CLONE_NEWIPC | sc.CLONE_NEWUTS | sc.CLONE_NEWNET | sc.CLONE_NEWCGROUP | sc.CLONE_NEWNS)
        os.close(pidfd)
        # setns(CLONE_NEWNS) made the container's root our root and cwd: paths below resolve
        # inside it, and '..' cannot climb out of a root.
        uid, gid, groups = resolve_user(opts.user) if opts.user else (0, 0, [])
        workdir = opts.workdir or _container_cwd()
        code = EXIT_CANNOT_INVOKE
        try:
            os.chdir(workdir)
        except OSError as e:
            _report(status_fd, code, f"cannot change to working directory {workdir}: {e.strerror}")
        if os.getcwd().startswith("(unreachable)"):
            _report(status_fd, code, f"working directory {workdir} is outside the container")
        if pty_sock >= 0:
            _attach_pty(pty_sock)
        elif not opts.interactive:
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            os.close(devnull)
        if seccomp:
            sc.seccomp_install(seccomp)  # while we still hold CAP_SYS_ADMIN (see container_init.launch)
        drop_privileges(caps, uid, gid, groups)
        env.setdefault("PATH", DEFAULT_PATH)
        if opts.tty:
            env.setdefault("TERM", os.environ.get("TERM", "xterm"))
        if uid != 0:
            env["HOME"] = home_of(uid) or "/"
        if os.read(go_fd, 1) != b"g":  # EOF: systemd could not attach us; the parent says why
            os._exit(EXIT_ERROR)
        status_fd = os.dup2(status_fd, 3, inheritable=False)
        sc.close_fds_from(4)  # no host fd reaches the command (go_fd included); fd 3 closes on exec
        # Dispositions survive exec only when ignored: Python ignores SIGPIPE and SIGXFSZ.
        for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGPIPE,
                    _signal.SIGXFSZ):
            _signal.signal(sig, _signal.SIG_DFL)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
        try:
            exec_in_path(opts.argv, env)
        except OSError as e:
            not_found = e.errno in (2, 20)  # ENOENT, ENOTDIR
            _report(status_fd, EXIT_NOT_FOUND if not_found else EXIT_CANNOT_INVOKE,
                    f"cannot run {opts.argv[0]!r}: {'executable file not found' if not_found else e.strerror}")
    except SystemExit:
        raise
    except BaseException as e:
        message = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e)
        _report(status_fd, code, message or type(e).__name__)
    os._exit(code)


def exec_in_path(argv: list[str], env: dict[str, str]) -> None:
    """execvpe() without its lazy `import warnings`, which fails once we are in the container."""
    if "/" in argv[0]:
        os.execve(argv[0], argv, env)
    first_error: OSError | None = None
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        try:
            os.execve(os.path.join(directory or ".", argv[0]), argv, env)
        except OSError as e:
            # ENOENT and ENOTDIR mean "look further"; anything else (EACCES) is the answer if
            # nothing later succeeds, as execvp(3) does.
            if first_error is None or (first_error.errno in (2, 20) and e.errno not in (2, 20)):
                first_error = e
    raise first_error or FileNotFoundError(2, "not found", argv[0])


def _container_cwd() -> str:
    """The container's working directory: its init's, read from the container's own /proc."""
    try:
        path = os.readlink("/proc/1/cwd")
    except OSError:
        return "/"
    return path if path.startswith("/") else "/"


def _attach_pty(sock_fd: int) -> None:
    """Open a pty in the container's own devpts, send the master to the parent, and make
    the slave our controlling terminal and stdio."""
    import fcntl
    import socket
    import struct

    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    sock = socket.socket(fileno=sock_fd)
    socket.send_fds(sock, [b"m"], [master])
    sock.close()
    os.close(master)
    os.setsid()
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def relay_from_socket(sock_fd: int, child: int, *, stdin: bool, copy_fd: int = -1) -> None:
    """Receive the pty master the child sends, then relay it to our terminal until it closes.

    copy_fd, if given, also gets everything the pty prints (`run -t`: the log forwarder's
    pipe, so the journal holds what the terminal showed; `exec` passes none, as docker)."""
    import socket

    sock = socket.socket(fileno=sock_fd)
    try:
        _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 1)
    finally:
        sock.close()
    if not fds:
        return  # the child failed before opening the pty: its status says why
    relay_pty(fds[0], stdin=stdin, copy_fd=copy_fd)


def relay_pty(master: int, *, stdin: bool, copy_fd: int = -1) -> None:
    """Copy our stdin to the pty and the pty to our stdout (and copy_fd), in raw mode, following
    the window size.

    Ctrl-C reaches the container as a byte on the terminal, and its line discipline turns it
    into SIGINT for the foreground process group inside."""
    import contextlib
    import select
    import signal
    import termios
    import tty

    saved = None
    if stdin and os.isatty(0):
        saved = termios.tcgetattr(0)
        tty.setraw(0)

    def resize(_signum: int = 0, _frame: object = None) -> None:
        if os.isatty(1):
            with contextlib.suppress(OSError):
                termios.tcsetwinsize(master, termios.tcgetwinsize(1))

    resize()
    previous = signal.signal(signal.SIGWINCH, resize)
    try:
        watched = [master] + ([0] if stdin else [])
        while True:
            try:
                ready, _, _ = select.select(watched, [], [])
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""  # EIO: every slave fd is closed, the command ended
                if not data:
                    break
                _write_all(1, data)
                if copy_fd >= 0 and not _write_copy(copy_fd, data):
                    copy_fd = -1  # the forwarder is gone: the terminal still gets everything
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    watched.remove(0)
                else:
                    _write_all(master, data)
    finally:
        signal.signal(signal.SIGWINCH, previous)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _write_copy(fd: int, data: bytes) -> bool:
    try:
        _write_all(fd, data)
        return True
    except OSError:
        return False
