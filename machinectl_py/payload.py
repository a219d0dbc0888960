"""What every process pymachine starts inside a container shares, from both sides of the fork.

The container's init (container_init.py, for `run` and the unit's setup process) and a
command joining a running container (exec.py) end the same way, as runc's run init and exec
init share `setupConsole` and `finalizeNamespace`:

  child:  open_console (-t: a pty of the container's own devpts, its master sent to the
          parent) -> confine (seccomp filter, capabilities, user) -> finalize_and_exec (the
          status pipe on fd 3, every other fd above 2 closed, signal dispositions reset, the
          command looked up in the container's PATH and exec'd) -> report (why it could
          not, with docker's exit code, on fd 3)
  parent: read_status (the child's failure, if any) -> reap (its exit code, 128+N when
          killed by signal N); relay_from_socket / relay_pty for a terminal.

On the start path of `run`, the unit's setup process and `exec`: imports stay minimal (no
`signal`, `socket` or `contextlib` at import time; the terminal's modules load on use).
"""

from __future__ import annotations

import _signal
import os
import sys

from machinectl_py import syscalls as sc
from machinectl_py.errors import EXIT_CANNOT_INVOKE, EXIT_ERROR, EXIT_NOT_FOUND
from machinectl_py.users import drop_privileges

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import NoReturn

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STATUS_FD = 3  # where the status pipe waits for the exec (closed by it: O_CLOEXEC)
HELPER_FD = 4  # the sealed exec helper's memfd (see sealed_helper)
_F_ADD_SEALS = 1033
_F_SEAL_SEAL, _F_SEAL_SHRINK, _F_SEAL_GROW, _F_SEAL_WRITE = 1, 2, 4, 8
_TIOCSPTLCK = 0x40045431
_TIOCGPTPEER = 0x5441
_TIOCSCTTY = 0x540E
_ENOENT, _ENOTDIR = 2, 20
PR_SET_NO_NEW_PRIVS = 38
# What a container's starter writes on its held init's `go` pipe (launch.HeldInit,
# container_init.await_parent); EOF instead of either: abandon the start. Here, not in
# container_init, so that the starter need not import the init's side (mounts, idmaps).
IN_SCOPE = b"c"
RUN = b"g"
# Dispositions survive exec only when ignored (Python ignores SIGPIPE and SIGXFSZ); handlers
# the parent pymachine installed before the fork are reset by the exec itself.
_RESET_SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGPIPE,
                  _signal.SIGXFSZ, _signal.SIGCHLD)


# -- the child side ---------------------------------------------------------------------------


def report(status_fd: int, code: int, message: str) -> NoReturn:
    """Tell the parent why the command cannot run (`CODE:message`), and exit with CODE."""
    try:
        os.write(status_fd, f"{code}:{message}".encode()[:4000])
    except OSError:
        pass
    os._exit(code)


def describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename:
        return f"{e.strerror}: {e.filename}"
    return str(e) or type(e).__name__


def preload_console_modules() -> None:
    """open_console's and send_console's modules, loaded while the host's Python library is still
    reachable (before pivot_root or setns(CLONE_NEWNS) makes the container's root ours). They
    are the interpreter's built-in ones (`fcntl`, `_socket`; not `socket` or `struct`, files of
    the library): a booted init's root is pivoted by its setup helper, at a time of its own."""
    import _socket  # noqa: F401
    import fcntl  # noqa: F401


def _int_bytes(value: int) -> bytes:
    """A C int as ioctl(2) and SCM_RIGHTS take it (no `struct`)."""
    return value.to_bytes(4, sys.byteorder, signed=True)


def send_fd(sock_fd: int, fd: int) -> None:
    """`fd` over the unix socket `sock_fd` (SCM_RIGHTS, one byte of data), which is closed."""
    import _socket

    sock = _socket.socket(fileno=sock_fd)
    try:
        sock.sendmsg([b"m"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _int_bytes(fd))])
    finally:
        sock.close()


def open_console(sock_fd: int) -> int:
    """-t: open a pty in the container's devpts (we are inside its root now), send the master
    to the parent over `sock_fd`, make the slave our controlling terminal; returns the slave.
    Needs preload_console_modules() first."""
    import fcntl

    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, _int_bytes(0))
    slave: int = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    send_fd(sock_fd, master)
    os.close(master)
    if os.getsid(0) != os.getpid():
        os.setsid()  # a terminal is only ever the controlling terminal of a session leader
    fcntl.ioctl(slave, _TIOCSCTTY, 0)
    return slave


def send_console(sock_fd: int) -> None:
    """A detached boot's console: a pty of the container's devpts bound on /dev/console (as
    nspawn binds its console; not a link to pts/N, whose number a later session would reuse),
    whose master goes to the parent over `sock_fd`; not our stdio (the guest's systemd opens
    /dev/console itself). Needs preload_console_modules() first; we are in the container's
    root and mount namespace."""
    import fcntl

    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, _TIOCSPTLCK, _int_bytes(0))
        number = int.from_bytes(fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4), sys.byteorder)
        os.close(os.open(BOOT_CONSOLE, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        sc.mount(f"/dev/pts/{number}", BOOT_CONSOLE, None, sc.MS_BIND)
        send_fd(sock_fd, master)
    finally:
        os.close(master)


BOOT_CONSOLE = "/dev/console"
_TIOCGPTN = 0x80045430  # asm-generic/ioctls.h: the pty's number


def attach_stdio(stdin: int, stdout: int, stderr: int) -> None:
    """Make these fds 0, 1 and 2 (-1: leave that one as it is)."""
    for src, dst in ((stdin, 0), (stdout, 1), (stderr, 2)):
        if src != dst and src >= 0:
            os.dup2(src, dst)


def confine(seccomp: bytes, capability_mask: int, uid: int, gid: int, groups: list[int], *,
            no_new_privs: bool = False) -> None:
    """The container's seccomp filter, then its capabilities and user.

    The filter goes first, while we still hold CAP_SYS_ADMIN: without no_new_privs (which
    would disarm setuid programs in the container) installing one needs it. Nothing the
    filter denies is called from here to the exec. A non-root uid ends with no capability.
    no_new_privs (--security-opt no-new-privileges) last: setuid bits and file capabilities
    then grant nothing to the command or its children."""
    if seccomp:
        sc.seccomp_install(seccomp)
    drop_privileges(capability_mask, uid, gid, groups)
    if no_new_privs:
        sc.prctl(PR_SET_NO_NEW_PRIVS, 1)


def finalize_and_exec(argv: Sequence[str], env: Mapping[str, str], status_fd: int,
                      workdir: str | None = None, helper_fd: int = -1, go_fd: int = -1) -> NoReturn:
    """The last steps before the command, in the container: from here on only what the exec
    needs. No host file descriptor may reach the command (CVE-2024-21626): the status pipe
    moves to fd 3, which closes itself on exec, the helper (see sealed_helper) to fd 4, which
    closes on exec too, and every fd above them is closed. go_fd (exec's): everything up to
    the execve itself, the command's path included, is done before waiting for the parent's
    "g" on it (its cgroup attach), so that only the execve follows it; it closes on exec too."""
    if go_fd in (STATUS_FD, HELPER_FD):  # out of the way of the two below first
        go_fd = _dup_above(go_fd)
    if helper_fd == STATUS_FD:
        helper_fd = _dup_above(helper_fd)
    status_fd = _move_fd(status_fd, STATUS_FD)
    if helper_fd >= 0:
        helper_fd = _move_fd(helper_fd, HELPER_FD)
    if go_fd >= 0:
        go_fd = _move_fd(go_fd, GO_FD)
    sc.close_fds_from(GO_FD + 1 if go_fd >= 0 else STATUS_FD + 1 if helper_fd < 0 else HELPER_FD + 1)
    if workdir is not None:
        try:
            os.chdir(workdir)
        except OSError as e:
            report(status_fd, EXIT_CANNOT_INVOKE, f"cannot change to working directory {workdir}: {e.strerror}")
    for sig in _RESET_SIGNALS:
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, [])
    try:
        if helper_fd >= 0:
            exec_through_helper(helper_fd, list(argv), dict(env), status_fd, go_fd)
        _wait_go(go_fd)
        exec_in_path(list(argv), dict(env))
    except OSError as e:
        error = e
    not_found = error.errno in (_ENOENT, _ENOTDIR)
    report(status_fd, EXIT_NOT_FOUND if not_found else EXIT_CANNOT_INVOKE,
           f"cannot run {argv[0]!r}: {'executable file not found' if not_found else error.strerror}")


GO_FD = 5  # exec's go pipe (see finalize_and_exec)


def _dup_above(fd: int) -> int:
    """A close-on-exec copy of fd numbered above GO_FD, out of the way of the fds moved to 3-5,
    and the lowest such (a process.json's RLIMIT_NOFILE may be low); os.dup, not fcntl's
    F_DUPFD: no module to import once the container's root is ours."""
    held = []
    copy = os.dup(fd)
    while copy <= GO_FD:
        held.append(copy)
        copy = os.dup(fd)
    for spare in held:
        os.close(spare)
    return copy


def _wait_go(go_fd: int) -> None:
    """exec's last wait: the parent's "g" once the child is in the unit's cgroups; EOF: it
    could not attach us, and says why (no status from here)."""
    if go_fd >= 0:
        if os.read(go_fd, 1) != b"g":
            os._exit(EXIT_ERROR)
        os.close(go_fd)


def _move_fd(fd: int, target: int) -> int:
    """`fd` as close-on-exec `target` (dup3 refuses the same fd twice: then only the flag)."""
    if fd == target:
        os.set_inheritable(fd, False)
        return fd
    return os.dup2(fd, target, inheritable=False)


def sealed_helper() -> int:
    """The exec helper (machinectl_py/helper/exec_helper.c) in a sealed memfd; -1 where this
    build has none (an architecture it does not know).

    Why: the process that execs the container's command resolves a "#!" line with its own
    /proc/self/exe. For pymachine's own process that is the host's Python: a container file
    starting "#!/proc/self/exe" would run the host's Python inside the container, and a
    container process could reopen its /proc/PID/exe for writing (CVE-2019-5736's class).
    So the last exec is made by this static helper, run from an anonymous memfd sealed
    against writes, as runc runs from a sealed copy of itself: "#!/proc/self/exe" finds the
    helper again, never a host file. Called before the container's root becomes ours."""
    try:
        with open(os.path.join(os.path.dirname(__file__), "data", "exec-helper"), "rb") as f:
            code = f.read()
    except FileNotFoundError:
        return -1
    fd = os.memfd_create("pymachine-exec", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    view = memoryview(code)
    while view:
        view = view[os.write(fd, view):]
    import fcntl

    fcntl.fcntl(fd, _F_ADD_SEALS, _F_SEAL_SEAL | _F_SEAL_SHRINK | _F_SEAL_GROW | _F_SEAL_WRITE)
    return fd


def exec_through_helper(helper_fd: int, argv: list[str], env: dict[str, str], status_fd: int,
                        go_fd: int = -1) -> None:
    """Find the command in the container's PATH, then exec the helper (fexecve: execveat of
    the memfd) with PATH ARGV0 ARGS...; it execs the command, or reports `errno N` on the
    status pipe, which stays open for it (it marks it close-on-exec itself). Returns only
    by raising OSError."""
    path = argv[0] if "/" in argv[0] else find_in_path(argv[0], env)
    if not os.access(path, os.X_OK):  # ENOENT or EACCES named here, with the command's name
        raise PermissionError(13, "Permission denied", path) if os.path.exists(path) else \
            FileNotFoundError(_ENOENT, "not found", path)
    _wait_go(go_fd)
    os.set_inheritable(status_fd, True)
    os.execve(helper_fd, [path, *argv], env)


def find_in_path(name: str, env: dict[str, str]) -> str:
    """execvp(3)'s search, done before the exec: the first executable regular file of PATH;
    an existing but not executable one answers EACCES if nothing later is found."""
    denied: str | None = None
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory or ".", name)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if st.st_mode & 0o170000 != 0o100000:  # not a regular file
            continue
        if os.access(candidate, os.X_OK):
            return candidate
        denied = denied or candidate
    if denied is not None:
        raise PermissionError(13, "Permission denied", denied)
    raise FileNotFoundError(_ENOENT, "not found", name)


def exec_in_path(argv: list[str], env: dict[str, str]) -> NoReturn:
    """execvpe() in the container's PATH, without execvpe's lazy `import warnings`, which fails
    once the container's root is ours. Returns only by raising OSError."""
    if "/" in argv[0]:
        os.execve(argv[0], argv, env)
    first_error: OSError | None = None
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        try:
            os.execve(os.path.join(directory or ".", argv[0]), argv, env)
        except OSError as e:
            # ENOENT and ENOTDIR mean "look further"; anything else (EACCES) is the answer if
            # nothing later succeeds, as execvp(3) does.
            if first_error is None or (first_error.errno in (_ENOENT, _ENOTDIR) and e.errno not in (_ENOENT, _ENOTDIR)):
                first_error = e
    raise first_error or FileNotFoundError(_ENOENT, "not found", argv[0])


# -- the parent side --------------------------------------------------------------------------


def read_status(fd: int) -> tuple[int, str] | None:
    """Block until the child's status pipe closes (its exec, or its exit); None: it exec'd.
    Else (docker's exit code, why)."""
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    if not chunks:
        return None
    text = b"".join(chunks).decode(errors="replace")
    if text.startswith("errno ") and text[6:].isdigit():
        # The exec helper could not exec the command (exec_through_helper).
        number = int(text[6:])
        not_found = number in (_ENOENT, _ENOTDIR)
        return (EXIT_NOT_FOUND if not_found else EXIT_CANNOT_INVOKE,
                f"cannot run the command: {'executable file not found' if not_found else os.strerror(number)}")
    code_text, _, message = text.partition(":")
    return (int(code_text) if code_text.isdigit() else EXIT_ERROR), message


def reap(pid: int) -> int | None:
    """Wait for a child; its exit code as docker's (128+N if killed by signal N), None if it
    was reaped already."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            return None
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def stdio_pipes(interactive: bool) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The command's stdio as pipes (podman's way): (our ends: stdin's writer or -1, stdout's
    and stderr's readers; the child's: stdin (-1 without -i: the child opens the container's
    /dev/null), stdout, stderr). A
    process of the container holding its stdout after the command ended gets EPIPE, never
    the admin's terminal, which it could write on and read the next commands typed from."""
    in_r, in_w = os.pipe() if interactive else (-1, -1)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    return (in_w, out_r, err_r), (in_r, out_w, err_w)


def fork_stdin_relay(in_w: int) -> int:
    """`run -i` without -t: a process that copies our stdin into the container's stdin pipe
    until either ends, so the container never holds our terminal (see stdio_pipes). Ctrl-C
    is pymachine's to pass on, not the relay's to die of. Returns its PID."""
    pid = os.fork()
    if pid == 0:
        try:
            _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
            os.dup2(in_w, STATUS_FD)
            sc.close_fds_from(STATUS_FD + 1)
            while data := os.read(0, 65536):
                _write_all(STATUS_FD, data)
        except (OSError, KeyboardInterrupt):
            pass
        os._exit(0)
    return pid


def close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def relay_pipes(child: int, in_w: int, out_r: int, err_r: int) -> None:
    """Copy our stdin to the command's and its stdout and stderr to ours until it exits; then
    what is left in the pipes, and close them: a background process of the container keeps
    nothing of ours."""
    import select

    pidfd = os.pidfd_open(child)
    targets = {out_r: 1, err_r: 2}
    watched = [pidfd, out_r, err_r] + ([0] if in_w >= 0 else [])
    try:
        while out_r in watched or err_r in watched:
            ready, _, _ = select.select(watched, [], [])
            for fd in ready:
                if fd == pidfd:
                    continue
                if fd == 0:
                    data = os.read(0, 65536)
                    if not data or not _write_copy(in_w, data):
                        watched.remove(0)
                        os.close(in_w)
                        in_w = -1
                    continue
                data = os.read(fd, 65536)
                if not data:
                    watched.remove(fd)
                else:
                    _write_copy(targets[fd], data)
            if pidfd in ready:
                _drain(out_r, err_r, targets)
                break
    finally:
        close_all((pidfd, in_w, out_r, err_r))


def _drain(out_r: int, err_r: int, targets: dict[int, int]) -> None:
    """The command has exited: what it wrote is in the pipes; a background process's output
    may keep coming, so read only what is there now."""
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            _write_copy(targets[fd], data)


def console_socketpair() -> tuple[int, int]:
    """-t: (parent's end, child's end); the child sends the pty master it opens through it.
    `_socket`, not `socket` (~3 ms of imports): a detached boot's setup process makes one too."""
    import _socket

    parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    return parent.detach(), child.detach()


def relay_from_socket(sock_fd: int, child: int, *, stdin: bool, copy_fd: int = -1,
                      hold_console: bool = False) -> None:
    """Receive the pty master the child sends, then relay it to our terminal until it closes.

    copy_fd, if given, also gets everything the pty prints (`run -t`: the log forwarder's
    pipe, so the journal holds what the terminal showed; `exec` passes none, as docker).
    hold_console (`run -t --boot`): we hold the pty's other side open and relay until the child
    ends, because a booted systemd closes its stdio and reopens /dev/console (the pty): a
    moment without any open slave would read as the end of the session."""
    import socket

    sock = socket.socket(fileno=sock_fd)
    try:
        _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 1)
    finally:
        sock.close()
    if not fds:
        return  # the child failed before opening the pty: its status says why
    if not hold_console:
        relay_pty(fds[0], stdin=stdin, copy_fd=copy_fd)
        return
    import fcntl

    peer = fcntl.ioctl(fds[0], TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    pidfd = os.pidfd_open(child)
    try:
        relay_pty(fds[0], stdin=stdin, copy_fd=copy_fd, until_fd=pidfd)
    finally:
        os.close(pidfd)
        os.close(peer)


TIOCGPTPEER = 0x5441  # linux/tty.h: open the slave of a master by its fd (no path lookup)


def relay_pty(master: int, *, stdin: bool, copy_fd: int = -1, escape: bool = False,
              ignore_hangup: bool = False, until_fd: int = -1) -> None:
    """Copy our stdin to the pty and the pty to our stdout (and copy_fd), in raw mode, following
    the window size.

    Ctrl-C reaches the container as a byte on the terminal, and its line discipline turns it
    into SIGINT for the foreground process group inside. With `escape` (login, shell), Ctrl-]
    three times within a second ends the relay, as machinectl's sessions do; with
    `ignore_hangup` (login) a hangup does not: a getty hangs its terminal up (vhangup) before it
    prompts, and again at each new prompt. until_fd: the relay also ends when it turns readable
    (a pidfd: the process ended), after what the pty still holds."""
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

    presses: list[float] = []

    def escaped(data: bytes) -> bool:
        import time

        now = time.monotonic()
        presses[:] = [t for t in presses if now - t < 1.0] + [now] * data.count(b"\x1d")
        return len(presses) >= 3

    resize()
    previous = signal.signal(signal.SIGWINCH, resize)
    try:
        watched = [master] + ([0] if stdin else []) + ([until_fd] if until_fd >= 0 else [])
        while True:
            try:
                ready, _, _ = select.select(watched, [], [])
            except InterruptedError:
                continue
            if until_fd in ready:
                _drain_pty(master, copy_fd)
                break
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    data = b""  # EIO: every slave fd is closed, the command ended
                if not data and ignore_hangup:
                    import time

                    time.sleep(0.05)  # until the getty opens it again
                    continue
                if not data:
                    break
                _write_all(1, data)
                if copy_fd >= 0 and not _write_copy(copy_fd, data):
                    copy_fd = -1  # the forwarder is gone: the terminal still gets everything
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    watched.remove(0)
                elif escape and escaped(data):
                    break
                else:
                    _write_all(master, data)
    finally:
        signal.signal(signal.SIGWINCH, previous)
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        os.close(master)


def _drain_pty(master: int, copy_fd: int) -> None:
    """What the pty holds once its process ended, without waiting for more."""
    os.set_blocking(master, False)
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EAGAIN: nothing left; EIO: closed
            return
        if not data:
            return
        _write_all(1, data)
        if copy_fd >= 0:
            _write_copy(copy_fd, data)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _write_copy(fd: int, data: bytes) -> bool:
    try:
        _write_all(fd, data)
        return True
    except OSError:
        return False
