"""`pymachine gc`: find and clean what an interrupted command left behind (debris.py says
what that is and how each kind is recognized)."""

from __future__ import annotations

import sys

from machinectl_py.errors import UsageError


def main(argv: list[str]) -> int:
    from machinectl_py.bus import Bus
    from machinectl_py.debris import GRACE_SECONDS, collect

    if argv and argv[0] in ("-h", "--help"):
        print("usage: pymachine gc [--grace SECONDS]\n\nClean what interrupted commands left behind "
              f"(see the README).\nDirectories younger than --grace (default {GRACE_SECONDS}) are left alone.")
        return 0
    grace: float = GRACE_SECONDS
    if argv[:1] == ["--grace"] and len(argv) == 2:
        try:
            grace = float(argv[1])
        except ValueError:
            raise UsageError(f"pymachine gc: invalid --grace {argv[1]!r}") from None
    elif argv:
        raise UsageError(f"pymachine gc: unexpected argument {argv[0]!r}", hint="see 'pymachine gc --help'")
    with Bus.system() as bus:
        for line in collect(bus, grace=grace):
            print(line)
    sys.stdout.flush()
    return 0
