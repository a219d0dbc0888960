"""`pymachine network create|ls|inspect|rm|prune|connect|disconnect`: user networks.

A network is its definition, /etc/pymachine/networks/NAME.toml (subnet, gateway, internal;
hand-editable), and, while a container uses it, a bridge, leases and NAT rules (ipam.py,
netsetup.py). A network is in use while a container runs on it or a container's definition
names it (`--network NAME`): `rm` refuses then, `prune` leaves it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

from machinectl_py import formatting
from machinectl_py.args import APPEND, FLAG, Command, Group, Option, positional
from machinectl_py.errors import ConflictError, NotFoundError, PymachineError, UsageError

FORMAT = Option("--format -f", "format each network with a Go-template-like TEMPLATE ('{{ .Name }}'); the fields "
                "are those of `network inspect`", metavar="TEMPLATE")
CREATE = Command("pymachine network create", "pymachine network create [OPTIONS] NAME",
                 "Define a network: a bridge with NAT (made when a container first uses it). Without --subnet, "
                 "the first free /24 from 10.90.0.0/15. A subnet that overlaps another network or a route "
                 "of the host is refused.",
                 [Option("--subnet", "the network's IPv4 subnet, as 10.20.0.0/24; again for its IPv6 subnet "
                         "(with --ipv6), as fd20::/64", kind=APPEND, metavar="CIDR"),
                  Option("--ipv6", "give the network an IPv6 subnet too (default: a unique local /64 derived "
                         "from the name); its containers get the address that goes with their IPv4 one",
                         kind=FLAG),
                  Option("--gateway", "the bridge's address (default: the subnet's first)", metavar="IP"),
                  Option("--internal", "no NAT and no forwarding beyond the bridge: the containers reach only "
                         "each other (and the host's address on the bridge)", kind=FLAG)],
                 positionals=[positional("name", "network name: [a-zA-Z0-9][a-zA-Z0-9_.-]*")])
LS = Command("pymachine network ls", "pymachine network ls [OPTIONS]",
             "List networks (the default network pymachine always), with their containers.",
             [Option("--quiet -q", "names only", kind=FLAG), FORMAT])
INSPECT = Command("pymachine network inspect", "pymachine network inspect [OPTIONS] NAME [NAME...]",
                  "Show networks as JSON, in docker's fields (Name, Id, Created, Driver, Internal, IPAM, "
                  "Containers, Options).", [FORMAT], positionals=[positional("names", "network names", "+")])
RM = Command("pymachine network rm", "pymachine network rm NAME [NAME...]",
             "Remove networks no container uses (runs on or names in its definition).", [],
             positionals=[positional("names", "network names", "+")])
PRUNE = Command("pymachine network prune", "pymachine network prune",
                "Remove every user network no container uses (never the default network).", [])
CONNECT = Command("pymachine network connect", "pymachine network connect [OPTIONS] NETWORK CONTAINER",
                  "Connect a container to another network: a new interface (eth1, eth2...) with an "
                  "address from it, now if it runs, and at each start (kept in its definition, as docker's).",
                  [Option("--ip", "a static IPv4 address on the network", metavar="IP"),
                   Option("--alias", "another name of the container on this network (repeatable)",
                          kind=APPEND, metavar="ALIAS")],
                  positionals=[positional("network", "the network"), positional("container", "the container")])
DISCONNECT = Command("pymachine network disconnect", "pymachine network disconnect NETWORK CONTAINER",
                     "Disconnect a container from a network: its interface there and its address go, now "
                     "and at its next starts.",
                     [], positionals=[positional("network", "the network"), positional("container", "the container")])


def main(argv: list[str]) -> int:
    return Group("pymachine network", "Manage networks (/etc/pymachine/networks/NAME.toml).", [
        ("create", "define a network", _create),
        ("ls", "list networks", _ls),
        ("inspect", "show networks as JSON", _inspect),
        ("rm", "remove networks no container uses", _rm),
        ("prune", "remove every user network no container uses", _prune),
        ("connect", "connect a container to a network (kept)", _connect),
        ("disconnect", "disconnect a container from a network (kept)", _disconnect),
    ]).dispatch(argv)


def _create(argv: list[str]) -> int:
    from machinectl_py import netsetup

    args = CREATE.parse_or_help(argv)
    if args is None:
        return 0
    net = netsetup.create_network(args["name"], args["subnet"], args["gateway"], bool(args["internal"]),
                                  bool(args["ipv6"]))
    print(net.name)
    return 0


def users_of(name: str) -> list[str]:
    """Containers on the network now (live leases) or whose definition names it."""
    from machinectl_py import ipam, state

    users = {str(lease.get("name")) for lease in ipam.live_leases(name).values()}
    users.update(r.name for r in state.list_records() if _network_of(r.spec.network) == name
                 or name in (c.split(",", 1)[0] for c in r.spec.connections))
    return sorted(users)


def _network_of(mode: str) -> str | None:
    from machinectl_py import network

    return network.attached_network(mode)


def _known(name: str) -> None:
    from machinectl_py import ipam

    if not ipam.exists(name):
        raise NotFoundError(f"no such network: {name}", hint="see 'pymachine network ls'")


def inspect_data(name: str) -> dict[str, object]:
    from machinectl_py import ipam

    _known(name)
    net = ipam.load(name)
    try:
        created = os.stat(ipam.definition_path(name)).st_mtime
    except FileNotFoundError:
        created = time.time()
    containers = {}
    for ip, lease in sorted(ipam.live_leases(name).items()):
        containers[str(lease.get("name"))] = {
            "Name": lease.get("name"), "IPv4Address": f"{ip}/{net.subnet.prefixlen}",
            "IPv6Address": f"{net.address6(ip)}/{net.subnet6.prefixlen}" if net.subnet6 else "",
            "Interface": lease.get("ifname", "eth0"), "Aliases": lease.get("aliases") or [],
            "Ports": [f"{h or '0.0.0.0'}:{hp}->{p}/{proto}" for h, hp, p, proto in lease.get("ports") or []],  # type: ignore[attr-defined]
        }
    return {
        "Name": name, "Id": hashlib.sha256(name.encode()).hexdigest(),
        "Created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        "Scope": "local", "Driver": "bridge", "EnableIPv6": net.subnet6 is not None, "Internal": net.internal,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": str(net.subnet), "Gateway": str(net.gateway)}] + (
            [{"Subnet": str(net.subnet6), "Gateway": str(net.gateway6)}] if net.subnet6 else [])},
        "Containers": containers, "UsedBy": users_of(name),
        "Options": {"com.docker.network.bridge.name": net.bridge}, "Labels": {},
        "Definition": ipam.definition_path(name),
    }


def _ls(argv: list[str]) -> int:
    from machinectl_py import ipam

    args = LS.parse_or_help(argv)
    if args is None:
        return 0
    names = ipam.list_names()
    if args["quiet"]:
        print("\n".join(names))
        return 0
    data = [inspect_data(name) for name in names]
    if args["format"] is not None:
        for line in formatting.render_all(args["format"], data):
            print(line)
        return 0
    print(f"{'NETWORK NAME':<20}  {'DRIVER':<6}  {'SUBNET':<18}  {'GATEWAY':<15}  {'INTERNAL':<8}  CONTAINERS")
    for d in data:
        config = d["IPAM"]["Config"][0]  # type: ignore[index]
        print(f"{d['Name']:<20}  {d['Driver']:<6}  {config['Subnet']:<18}  {config['Gateway']:<15}  "
              f"{'yes' if d['Internal'] else 'no':<8}  {', '.join(d['Containers']) or '-'}")  # type: ignore[arg-type]
    return 0


def _inspect(argv: list[str]) -> int:
    args = INSPECT.parse_or_help(argv)
    if args is None:
        return 0
    out = [inspect_data(name) for name in args["names"]]
    if args["format"] is not None:
        for line in formatting.render_all(args["format"], out):
            print(line)
        return 0
    print(json.dumps(out, indent=2))
    return 0


def remove(name: str) -> None:
    from machinectl_py import ipam

    _known(name)
    if name == ipam.DEFAULT_NETWORK:
        raise UsageError(f"{name} is the default network and cannot be removed",
                         hint=f"edit {ipam.definition_path(name)} to change it")
    with ipam.locked():  # no container joins it meanwhile
        users = users_of(name)
        if users:
            raise ConflictError(f"network {name} is in use by {', '.join(users)}",
                                hint="remove the containers or disconnect them first")
        from machinectl_py import netsetup

        netsetup.forget(name)  # what a crashed container left: dead leases, an idle bridge
        os.unlink(ipam.definition_path(name))


def _rm(argv: list[str]) -> int:
    args = RM.parse_or_help(argv)
    if args is None:
        return 0
    failed = 0
    for name in args["names"]:
        try:
            remove(name)
            print(name)
        except PymachineError as e:
            print(f"pymachine: {e.message}", file=sys.stderr)
            failed = failed or e.exit_code
    return failed


def _prune(argv: list[str]) -> int:
    from machinectl_py import ipam

    if PRUNE.parse_or_help(argv) is None:
        return 0
    deleted = []
    for name in ipam.list_names():
        if name != ipam.DEFAULT_NETWORK and not users_of(name):
            try:
                remove(name)
                deleted.append(name)
            except ConflictError:
                pass  # a container started on it meanwhile
    if deleted:
        print("Deleted Networks:\n" + "\n".join(deleted))
    return 0


def _running_leader(container: str) -> int | None:
    """The init PID of a running container on a network, from its live lease; None for a
    container that is not running (refused unless its mode is bridge or a network's name)."""
    from machinectl_py import ipam, netsetup
    from machinectl_py.paths import container_path

    entries = netsetup.memberships().get(container)
    if entries:
        pid = entries[0][2].get("pid")
        if isinstance(pid, int) and ipam.holder_alive(entries[0][2]):
            return pid
    if not os.path.isdir(container_path(container)):
        raise NotFoundError(f"no such container: {container}")
    from machinectl_py import spec, state

    record = state.load(container)
    if record.state == "running" or not spec.attaches(record.spec.network):
        raise ConflictError(f"container {container} is not on a network",
                            hint="give it --network bridge or --network NAME (host, none, container:NAME and "
                                 "ns:PATH containers cannot be connected)")
    return None


def _keep(container: str, network: str, entry: str | None) -> bool:
    """The container's kept connections, with `network`'s replaced by `entry` (None: dropped):
    in its definition (authoritative, hand-editable) and its record. True if one changed."""
    from machinectl_py import config, spec, state

    record = state.load(container)
    current = config.load_definition(container) if config.definition_exists(container) else record.spec
    kept = tuple(c for c in current.connections if spec.parse_connection(c)[0] != network)
    new = current.replace(connections=kept + ((entry,) if entry else ()))
    if new == current:
        return False
    new.validate()
    if config.definition_exists(container):
        config.write_definition(new, exclusive=False)
    record.spec = new
    state.save_spec(record)
    return True


def _connect(argv: list[str]) -> int:
    from machinectl_py import netsetup, network, spec

    args = CONNECT.parse_or_help(argv)
    if args is None:
        return 0
    name, container = args["network"], args["container"]
    _known(name)
    ip = spec.validate_ip(args["ip"]) if args["ip"] else None
    aliases = tuple(spec.validate_alias(a) for a in args["alias"] or ())
    pid = _running_leader(container)
    if name == network.DEFAULT_NETWORK or name == "bridge":
        name = network.DEFAULT_NETWORK
    if pid is not None:
        netsetup.attach(name, container, pid, ip=ip, aliases=aliases, primary=False)
    try:
        _keep(container, name, spec.connection(name, ip, aliases))
    except BaseException:
        if pid is not None:
            netsetup.detach(name, container)  # nothing half-made: connected now means kept
        raise
    return 0


def _disconnect(argv: list[str]) -> int:
    from machinectl_py import ipam, netsetup, network
    from machinectl_py.paths import container_path

    args = DISCONNECT.parse_or_help(argv)
    if args is None:
        return 0
    name = network.DEFAULT_NETWORK if args["network"] == "bridge" else args["network"]
    container = args["container"]
    _known(name)
    exists, live = os.path.isdir(container_path(container)), ipam.lease_of(name, container) is not None
    if not exists and not live:
        raise NotFoundError(f"no such container: {container}")
    if live:
        netsetup.detach(name, container)
    kept = exists and _keep(container, name, None)
    if not live and not kept:
        raise PymachineError(f"container {container} is not connected to network {name}")
    return 0
