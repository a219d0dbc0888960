"""`pymachine port NAME [PORT[/PROTO]]`: the container's published ports, as docker prints them."""

from __future__ import annotations

import os
import sys

from machinectl_py.args import Command, positional
from machinectl_py.errors import NotFoundError
from machinectl_py.network import host_address

PORT = Command("pymachine port", "pymachine port CONTAINER [PORT[/PROTO]]",
               "List the container's published ports: PORT/PROTO -> HOSTIP:HOSTPORT (running containers).", [],
               positionals=[positional("container", "the container's name"),
                            positional("port", "only this port (default protocol tcp)", "?")])


def published() -> dict[str, list[tuple[str, int, int, str]]]:
    """container -> its published ports (host ip, host port, port, proto), of running containers."""
    from machinectl_py import ipam

    out: dict[str, list[tuple[str, int, int, str]]] = {}
    for network in ipam.networks_with_leases():
        for lease in ipam.read_leases(network).values():
            if ipam.holder_alive(lease):
                ports = out.setdefault(str(lease.get("name")), [])
                ports += [(str(h), int(hp), int(p), str(proto))
                          for h, hp, p, proto in lease.get("ports") or []]  # type: ignore[attr-defined]
    return out


def ports_text(ports: list[tuple[str, int, int, str]]) -> str:
    """docker ps's PORTS: 0.0.0.0:8080->80/tcp, ..."""
    return ", ".join(f"{host_address(h)}:{hp}->{p}/{proto}" for h, hp, p, proto in ports)


def main(argv: list[str]) -> int:
    args = PORT.parse_or_help(argv)
    if args is None:
        return 0
    name, wanted = args["container"], args["port"]
    if wanted and "/" not in wanted:
        wanted += "/tcp"
    mine = published().get(name)
    lines = [f"{port}/{proto} -> {host_address(host_ip)}:{host_port}"
             for host_ip, host_port, port, proto in mine or [] if wanted in (None, f"{port}/{proto}")]
    if mine is None:
        from machinectl_py.paths import container_path

        if not os.path.isdir(container_path(name)):
            raise NotFoundError(f"no such container: {name}")
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0
