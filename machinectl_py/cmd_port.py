"""`pymachine port NAME [PORT[/PROTO]]`: the container's published ports, as docker prints them."""

from __future__ import annotations

import os
import sys

from machinectl_py.args import Command, positional
from machinectl_py.errors import NotFoundError

PORT = Command("pymachine port", "pymachine port CONTAINER [PORT[/PROTO]]",
               "List the container's published ports: PORT/PROTO -> HOSTIP:HOSTPORT (running containers).", [],
               positionals=[positional("container", "the container's name"),
                            positional("port", "only this port (default protocol tcp)", "?")])


def main(argv: list[str]) -> int:
    from machinectl_py import ipam

    args = PORT.parse_or_help(argv)
    if args is None:
        return 0
    name, wanted = args["container"], args["port"]
    if wanted and "/" not in wanted:
        wanted += "/tcp"
    lines, known = [], False
    for network in ipam.networks_with_leases():
        for lease in ipam.read_leases(network).values():
            if lease.get("name") != name or not ipam.holder_alive(lease):
                continue
            known = True
            for host_ip, host_port, port, proto in lease.get("ports") or []:  # type: ignore[attr-defined]
                if wanted in (None, f"{port}/{proto}"):
                    lines.append(f"{port}/{proto} -> {host_ip or '0.0.0.0'}:{host_port}")
    if not known:
        from machinectl_py.paths import container_path

        if not os.path.isdir(container_path(name)):
            raise NotFoundError(f"no such container: {name}")
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0
