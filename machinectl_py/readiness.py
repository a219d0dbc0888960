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

import os
import select
import socket

from machinectl_py.boot import parse_notify


class NotifySocket:
    """The guest's notify socket, bound at `path` (on the host) until closed."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        try:
            os.unlink(path)  # a previous run's, left by a kill -9
        except FileNotFoundError:
            pass
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(path)
        os.chmod(path, 0o600)

    def wait_ready(self, leader: int) -> tuple[bool, int | None]:
        """Block until the guest says READY=1 (True, None) or its init (our child) ends first
        (False, its wait status). STATUS= texts are passed on to our own NOTIFY_SOCKET."""
        pidfd = os.pidfd_open(leader)
        try:
            while True:
                readable, _, _ = select.select([self.sock.fileno(), pidfd], [], [])
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
            os.close(pidfd)

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def notify_systemd(message: str) -> None:
    """sd_notify(3) to the service manager that started us; nothing when it gave no socket."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto(message.encode(), target)
        except OSError:
            pass  # a status text is not worth failing the start for


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
