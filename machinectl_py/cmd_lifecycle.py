"""`pymachine start|stop|restart|kill|rm`: arguments in, calls on the lifecycle layer out.

What each verb does to a container (systemd jobs on pymachine@NAME.service, machined for a
foreground `run`, the container's lock) is lifecycle.py's.
"""

from __future__ import annotations

import sys

from machinectl_py.errors import PymachineError, UsageError

# `contextlib` (functools, collections: ~5 ms) stays off the start path: `start` is timed
# against nspawn; the verbs off that path import argparse where they use it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import NoReturn


def _parser(verb: str, description: str) -> argparse.ArgumentParser:
    # argparse costs ~13 ms to import: only the verbs off the start path use it.
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")

    return Parser(prog=f"pymachine {verb}", description=description)


START_USAGE = """\
usage: pymachine start NAME [NAME...]

Start detached containers as their systemd units (pymachine@NAME.service) and return once
each runs; a container that cannot start is an error that says why.
"""


def main_start(argv: list[str]) -> int:
    from machinectl_py import lifecycle

    if not argv or any(a.startswith("-") for a in argv):
        if "--help" in argv or "-h" in argv:
            sys.stdout.write(START_USAGE)
            return 0
        raise UsageError("pymachine start: expected NAME [NAME...]", hint="see 'pymachine start --help'")
    for name in argv:
        lifecycle.start(name)
        print(name)
    return 0


def main_stop(argv: list[str]) -> int:
    from machinectl_py import lifecycle
    from machinectl_py.bus import Bus

    p = _parser("stop", "Stop containers: SIGTERM to their init, SIGKILL after the timeout.")
    p.add_argument("-t", "--time", type=float, default=10.0, metavar="SECONDS",
                   help="seconds to wait before SIGKILL (default 10)")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    with Bus.system() as bus:
        for name in args.names:
            lifecycle.stop(bus, name, args.time)
            print(name)
    return 0


def main_restart(argv: list[str]) -> int:
    from machinectl_py import lifecycle
    from machinectl_py.bus import Bus

    p = _parser("restart", "Stop, then start detached containers.")
    p.add_argument("-t", "--time", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    for name in args.names:
        with Bus.system() as bus:
            lifecycle.restart(bus, name, args.time)
        print(name)
    return 0


def parse_signal(text: str) -> int:
    import signal

    name = text.upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"invalid signal {text!r}", hint="use a name such as TERM, KILL, HUP or a number") from None


def main_kill(argv: list[str]) -> int:
    from machinectl_py import lifecycle
    from machinectl_py.bus import Bus

    p = _parser("kill", "Send a signal to the container's init (PID 1 inside).")
    p.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    sig = parse_signal(args.signal)
    with Bus.system() as bus:
        for name in args.names:
            lifecycle.kill(bus, name, sig)
            print(name)
    return 0


def main_rm(argv: list[str]) -> int:
    from machinectl_py import lifecycle
    from machinectl_py.bus import Bus

    p = _parser("rm", "Remove containers: definition, unit drop-in, state and upper layer.")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("-v", "--volumes", action="store_true", help="also remove its anonymous volumes")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    failed = 0
    with Bus.system() as bus:
        for name in args.names:
            try:
                lifecycle.remove(bus, name, force=args.force, volumes=args.volumes)
                print(name)
            except PymachineError as e:
                print(f"pymachine: {e.message}", file=sys.stderr)
                failed = 1
    return 125 if failed else 0
