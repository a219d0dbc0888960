"""`pymachine gc`: find and clean what an interrupted command left behind (debris.py says
what that is and how each kind is recognized)."""

from __future__ import annotations

import sys

from machinectl_py.args import Command, Option
from machinectl_py.debris import GRACE_SECONDS

GC = Command("pymachine gc", "pymachine gc [OPTIONS]",
             "Clean what interrupted commands left behind: container directories without a record,\n"
             "units and drop-ins without a container, temporary files of dead writers (see the README).",
             [Option("--grace", f"leave alone directories younger than SECONDS (default {GRACE_SECONDS})",
                     metavar="SECONDS", convert=float, default=float(GRACE_SECONDS))])


def main(argv: list[str]) -> int:
    from machinectl_py.bus import Bus
    from machinectl_py.debris import collect

    args = GC.parse_or_help(argv)
    if args is None:
        return 0
    with Bus.system() as bus:
        for line in collect(bus, grace=args["grace"]):
            print(line)
    sys.stdout.flush()
    return 0
