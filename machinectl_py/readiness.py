"""A booted container's readiness: the guest's sd_notify messages, received by the setup process.

A detached `--boot` container's setup process (service.py) binds a datagram socket, which the
container sees at /run/host/notify (its NOTIFY_SOCKET, as nspawn's `--notify-ready=yes` gives
it), and waits for READY=1 before it exits: pymachine@NAME.service (Type=forking) becomes
active then, so `pymachine start` and `systemctl start` return once the guest is up. The
guest's STATUS= texts are passed on to systemd (the setup process is the unit's control
process; NotifyAccess=exec), so `systemctl status pymachine@NAME` shows them. The host's own
notify socket never enters the container. If the guest's init exits first, its wait status is
the answer.
"""

from __future__ import annotations

# `_socket`, the C module under `socket`: the unit's setup process of every boot imports this,
# and `socket` (with selectors and enum) costs it ~2-3 ms.
import _socket
import os
import select
import sys

from machinectl_py.boot import console_lines, parse_notify


class NotifySocket:
    """The guest's notify socket, bound at `path` (on the host) until closed."""

    def __init__(self, path: str, owner: int | None = None) -> None:
        """owner: the host ID of the container's root (--userns=auto), who must write to it; the
        socket is bound plainly (not idmapped, which tmpfs takes only from Linux 6.3), so it shows
        as root's inside on every kernel."""
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        try:
            os.unlink(path)  # a previous run's, left by a kill -9
        except FileNotFoundError:
            pass
        self.path = path
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        if owner is not None:
            os.chown(path, owner, owner)

    def wait_ready(self, leader: int, console: int = -1) -> tuple[bool, int | None]:
        """Block until the guest says READY=1 (True, None) or its init (our child) ends first
        (False, its wait status). STATUS= texts are passed on to our own NOTIFY_SOCKET.
        console: the master of the guest's console pty (-1: none), whose lines go to our
        stdout (the unit's journal stream, so `pymachine logs` has the boot) until then."""
        pidfd = os.pidfd_open(leader)
        copy = ConsoleCopy(console, leader) if console >= 0 else None
        try:
            while True:
                fds = [self.sock.fileno(), pidfd]
                if copy is not None and copy.live:
                    fds.append(console)
                pause = None if copy is None or copy.live else 0.1
                readable, _, _ = select.select(fds, [], [], pause)
                if copy is not None:
                    copy.pump(console in readable)
                if self.sock.fileno() in readable:
                    fields = parse_notify(self.sock.recv(4096))
                    if "STATUS" in fields:
                        notify_systemd(f"STATUS={fields['STATUS']}")
                    if fields.get("READY") == "1":
                        return True, None
                elif pidfd in readable:
                    _, status = os.waitpid(leader, 0)
                    return False, status
        finally:
            if copy is not None:
                copy.close()
            os.close(pidfd)

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class ConsoleCopy:
    """The guest's console, copied line by line to our stdout while we wait for READY=1, as
    nspawn's service copies it to its journal. We hold the pty's slave open too: a booted systemd
    opens /dev/console for each message, and without any open slave the master reads EIO. A
    hangup (a getty's vhangup) still can: then the master rests for 0.1 s (`live` False).
    Once the guest is up, its /dev/console is taken away (take_console) and the pty let go:
    nothing stays to read it."""

    def __init__(self, master: int, leader: int) -> None:
        import fcntl

        from machinectl_py.payload import TIOCGPTPEER

        self.master = master
        self.leader = leader
        os.set_blocking(master, False)
        self.peer = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        self.pending = b""
        self.live = True

    def pump(self, readable: bool) -> None:
        """Read what the console has (readable), or wake it after a rest."""
        if not readable:
            self.live = True
            return
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:
            self.live = False  # EIO: no slave open for now (a hangup)
            return
        self.pending += data
        done, _, self.pending = self.pending.rpartition(b"\n")
        if done:
            _write_all(1, console_lines(done + b"\n"))

    def close(self) -> None:
        """The rest of the console, then the pty is let go: the guest's later messages (and a
        console getty) get a hangup; they are in its own journal."""
        while self.live:
            try:
                self.pump(True)
                if not select.select([self.master], [], [], 0)[0]:
                    break
            except OSError:
                break
        if self.pending:
            _write_all(1, console_lines(self.pending + b"\n"))
        take_console(self.leader)
        os.close(self.peer)
        os.close(self.master)


def take_console(leader: int) -> None:
    """Unmount and remove the guest's /dev/console (a child of ours in its mount namespace, where
    paths are the container's): its console getty, hung up when we let the pty go, then finds
    no console (ConditionPathExists=/dev/console) and stays down instead of failing. Best
    effort: a guest that has gone or moved its /dev keeps what it has. Not waited for: the
    unit turns active when we exit, which follows at once; the child, reparented then, is
    reaped by systemd. It holds its copy of the pty's master until it is done, so the guest's
    hangup still comes after its console is gone."""
    from machinectl_py import syscalls as sc
    from machinectl_py.payload import BOOT_CONSOLE

    try:
        pidfd = os.pidfd_open(leader)
    except OSError:
        return
    pid = os.fork()
    if pid == 0:
        try:
            sc.setns(pidfd, sc.CLONE_NEWNS)
            try:
                sc.umount(BOOT_CONSOLE, sc.MNT_DETACH | _UMOUNT_NOFOLLOW)
            except OSError:
                pass  # not a mount (any more): the file goes all the same
            os.unlink(BOOT_CONSOLE)
        finally:
            os._exit(0)
    os.close(pidfd)


_UMOUNT_NOFOLLOW = 8  # linux/mount.h


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass  # the journal gone: the boot goes on


def receive_console(sock_fd: int) -> int:
    """The console pty's master the init sent over `sock_fd` (payload.send_console), -1 when it
    sent none; the socket stays the caller's to close."""
    if sock_fd < 0:
        return -1
    sock = _socket.socket(fileno=os.dup(sock_fd))
    try:
        _msg, ancillary, _flags, _addr = sock.recvmsg(16, _socket.CMSG_SPACE(4), _socket.MSG_CMSG_CLOEXEC)
    finally:
        sock.close()
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder, signed=True)
    return -1


def notify_systemd(message: str) -> None:
    """sd_notify(3) to the service manager that started us; nothing when it gave no socket."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        s.sendto(message.encode(), target)
    except OSError:
        pass  # a status text is not worth failing the start for
    finally:
        s.close()


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
