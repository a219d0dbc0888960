"""`pymachine start|stop|restart|kill|rm`: arguments in, calls on the lifecycle layer out.

What each verb does to a container (systemd jobs on pymachine@NAME.service, machined for a
foreground `run`, the container's lock) is lifecycle.py's.
"""

from __future__ import annotations

import sys

from machinectl_py.args import FLAG, Command, Option
from machinectl_py.errors import PymachineError

NAMES = [("names", "container names", "+")]


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


TIME = Option("--time -t", "seconds to wait after the stop signal before SIGKILL (default: the container's "
              "--stop-timeout, else 10)", metavar="SECONDS", convert=_seconds)
START = Command("pymachine start", "pymachine start NAME [NAME...]",
                "Start detached containers as their systemd units (pymachine@NAME.service) and return once\n"
                "each runs; a container that cannot start is an error that says why. A definition written\n"
                "by hand is adopted on its first start.", [], positionals=NAMES)
STOP = Command("pymachine stop", "pymachine stop [OPTIONS] NAME [NAME...]",
               "Stop containers: their stop signal (SIGTERM unless --stop-signal) to their init, SIGKILL to\n"
               "all of them after the timeout. Works on a foreground `run` too, which then exits 128+N.",
               [TIME], positionals=NAMES)
RESTART = Command("pymachine restart", "pymachine restart [OPTIONS] NAME [NAME...]",
                  "Stop, then start detached containers.", [TIME], positionals=NAMES)
KILL = Command("pymachine kill", "pymachine kill [OPTIONS] NAME [NAME...]",
               "Send a signal to the container's init (PID 1 inside).",
               [Option("--signal -s", "signal name or number (default KILL)", metavar="SIGNAL", default="KILL")],
               positionals=NAMES)
RM = Command("pymachine rm", "pymachine rm [OPTIONS] NAME [NAME...]",
             "Remove containers: definition, unit drop-in, state and upper layer.",
             [Option("--force -f", "kill a running container first", kind=FLAG),
              Option("--volumes -v", "also remove its anonymous volumes", kind=FLAG)],
             positionals=NAMES)


def main_start(argv: list[str]) -> int:
    from machinectl_py import lifecycle

    args = START.parse_or_help(argv)
    if args is None:
        return 0
    for name in args["names"]:
        lifecycle.start(name)
        print(name)
    return 0


def main_stop(argv: list[str]) -> int:
    from machinectl_py import lifecycle
    from machinectl_py.bus import Bus

    args = STOP.parse_or_help(argv)
    if args is None:
        return 0
    with Bus.system() as bus:
        for name in args["names"]:
            lifecycle.stop(bus, name, args["time"])
            print(name)
    return 0


def main_restart(argv: list[str]) -> int:
    from machinectl_py import lifecycle
    from machinectl_py.bus import Bus

    args = RESTART.parse_or_help(argv)
    if args is None:
        return 0
    for name in args["names"]:
        with Bus.system() as bus:
            lifecycle.restart(bus, name, args["time"])
        print(name)
    return 0


def parse_signal(text: str) -> int:
    from machinectl_py.spec import parse_signal as signal_name
    from machinectl_py.spec import signal_number

    if text.isdigit() and 0 < int(text) < 65:
        return int(text)
    return signal_number(signal_name(text))


def main_kill(argv: list[str]) -> int:
    from machinectl_py import lifecycle
    from machinectl_py.bus import Bus

    args = KILL.parse_or_help(argv)
    if args is None:
        return 0
    sig = parse_signal(args["signal"])
    with Bus.system() as bus:
        for name in args["names"]:
            lifecycle.kill(bus, name, sig)
            print(name)
    return 0


def main_rm(argv: list[str]) -> int:
    from machinectl_py import lifecycle
    from machinectl_py.bus import Bus

    args = RM.parse_or_help(argv)
    if args is None:
        return 0
    failed = 0
    with Bus.system() as bus:
        for name in args["names"]:
            try:
                lifecycle.remove(bus, name, force=args["force"], volumes=args["volumes"])
                print(name)
            except PymachineError as e:
                print(f"pymachine: {e.message}", file=sys.stderr)
                failed = 1
    return 125 if failed else 0
