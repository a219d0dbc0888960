"""`pymachine update`: change a container's limits (and restart policy) while it runs.

docker update's flags; each limit is a unit property (settings.SETTINGS), set live through
systemd's SetUnitProperties on the container's unit (a `run` scope or a detached service)
and kept: in the record, and for a detached container in its definition and drop-in, so it
survives `systemctl daemon-reload` and a restart. What it does is lifecycle.update's.
"""

from __future__ import annotations

from machinectl_py import settings
from machinectl_py.args import Command

UPDATE = Command(
    "pymachine update", "pymachine update [OPTIONS] NAME [NAME...]",
    "Change the resource limits of containers, at once on a running one (systemd's\n"
    "SetUnitProperties on its unit) and for good: a detached container's definition and unit\n"
    "drop-in hold the new values. A value systemd or pymachine refuses changes nothing.",
    settings.update_options(), positionals=[("names", "container names", "+")],
    epilog="examples:\n  pymachine update --memory 128M --cpus 0.5 web\n  pymachine update --restart always web")


def main(argv: list[str]) -> int:
    from machinectl_py import lifecycle
    from machinectl_py.bus import Bus

    args = UPDATE.parse_or_help(argv)
    if args is None:
        return 0
    with Bus.system() as bus:
        for name in args["names"]:
            lifecycle.update(bus, name, args)
            print(name)
    return 0
