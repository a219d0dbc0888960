"""`pymachine shell` and `pymachine login`: a session in a booted (`--boot`) container.

Both ask systemd-machined, as `machinectl shell` and `machinectl login` do: machined opens a
pty in the container's own devpts and has the container's systemd start the session on it
(OpenMachineShell: a transient container-shell@N.service of the user's shell, through PAM;
OpenMachineLogin: container-getty@N.service, a login prompt). pymachine relays our terminal
to the pty's master until the session ends (shell) or Ctrl-] is pressed three times within a
second (both). A container without its own systemd and D-Bus (not booted) has neither.
"""

from __future__ import annotations

import os

from machinectl_py.args import Command
from machinectl_py.errors import NotFoundError, PymachineError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from machinectl_py.bus import Bus

SHELL = Command(
    "pymachine shell", "pymachine shell NAME [USER] [-- COMMAND [ARG...]]",
    "Open a shell of USER (default root) in a booted container (--boot), run by the container's\n"
    "own systemd as `machinectl shell` does; with COMMAND, run that instead of the login shell.\n"
    "Press Ctrl-] three times within a second to leave.",
    [],
    positionals=[("name", "container name"), ("user", "user in the container (default root)", "?")],
)
LOGIN = Command(
    "pymachine login", "pymachine login NAME",
    "A login prompt (getty) of a booted container (--boot), as `machinectl login` gives it.\n"
    "Press Ctrl-] three times within a second to leave.",
    [],
    positionals=[("name", "container name")],
)


def main_shell(argv: list[str]) -> int:
    command: list[str] = []
    if "--" in argv:  # the command after "--" is never taken for USER
        argv, command = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    values = SHELL.parse_or_help(argv)
    if values is None:
        return 0
    name, user = str(values["name"]), str(values.get("user") or "")
    if command and not command[0].startswith("/"):
        raise PymachineError(f"the command must be an absolute path, not {command[0]!r}")
    env = [f"TERM={os.environ.get('TERM', 'vt220')}"]
    return _session(name, lambda bus: _shell(bus, name, user, command, env))


def main_login(argv: list[str]) -> int:
    values = LOGIN.parse_or_help(argv)
    if values is None:
        return 0
    name = str(values["name"])
    from machinectl_py import machined

    return _session(name, lambda bus: machined.open_login(bus, name), login=True)


def _shell(bus: Bus, name: str, user: str, command: list[str], env: list[str]) -> int:
    from machinectl_py import machined

    path = command[0] if command else ""
    return machined.open_shell(bus, name, user, path, command, env)


def _session(name: str, open_pty: Callable[[Bus], int], login: bool = False) -> int:
    from machinectl_py import machined, payload
    from machinectl_py.bus import Bus, BusError

    with Bus.system() as bus:
        try:
            master = open_pty(bus)
        except BusError as e:
            if e.name == machined.NO_SUCH_MACHINE:
                raise NotFoundError(f"no such running container: {name}") from None
            raise PymachineError(f"{name}: {e.message} (is it booted with --boot, its systemd and D-Bus up?)"
                                 ) from None
    payload.relay_pty(master, stdin=True, escape=True, ignore_hangup=login)
    return 0
