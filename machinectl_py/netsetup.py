"""The `bridge` mode's mechanism: a bridge per network, a veth per container, NAT through
nftables in pymachine's own table `inet pymachine`.

Runs in the parent (runtime.py, service.py) between the machine's registration and the
release of the held init, whose network namespace is already its own. Links and addresses go
through iproute2 (`ip -b -`: one batch per namespace) and the ruleset through `nft -f -`; the
README says why (import and call costs measured). Only pymachine's table is ever written:
it is regenerated whole, in one nft transaction, from the networks in use, and deleted when no
network is in use, so other tables (docker's, podman's, firewalld's) are never touched.

Teardown: the container's end of its veth lives in its namespace, so the kernel removes the
pair when the namespace dies (a dying container, a `kill -9` of pymachine). What is left is
the lease (freed at stop, rm and by `gc`; ignored once its holder is gone, see ipam.py), and
the bridge and nft table of a network with no lease left, removed with its last lease.
"""

from __future__ import annotations

import os
import subprocess
import time
import zlib

from machinectl_py import ipam
from machinectl_py.errors import ConflictError, PymachineError

NFT_TABLE = "pymachine"
EPHEMERAL = (32768, 61000)  # free host ports for `-p PORT` (Linux's ip_local_port_range)
NETNS_TIMEOUT = 10.0


def host_veth(name: str) -> str:
    """The host side of a container's veth: short (IFNAMSIZ), stable for the name."""
    return f"pmv{zlib.crc32(name.encode()):08x}"


def _run(argv: list[str], stdin: str | None = None, what: str = "") -> str:
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        # `ip -b` ends with "Command failed -:N": the line before it says what failed.
        detail = [line for line in r.stderr.strip().splitlines() if not line.startswith("Command failed")]
        raise PymachineError(f"{what or argv[0]}: {'; '.join(detail) or f'exit {r.returncode}'}")
    return r.stdout


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _wait_own_netns(pid: int) -> None:
    """The held init unshares its network namespace first thing; wait until it has."""
    ours = os.stat("/proc/self/ns/net").st_ino
    deadline = time.monotonic() + NETNS_TIMEOUT
    while True:
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != ours:
                return
        except FileNotFoundError:
            raise PymachineError("the container's init exited before its network was set up") from None
        if time.monotonic() > deadline:
            raise PymachineError("the container's init made no network namespace")
        time.sleep(0.001)


def ensure_bridge(net: ipam.Network) -> None:
    if link_exists(net.bridge):
        return
    _run(["ip", "-b", "-"], what=f"bridge {net.bridge}", stdin=(
        f"link add {net.bridge} type bridge\n"
        f"addr add {net.gateway}/{net.subnet.prefixlen} dev {net.bridge}\n"
        f"link set {net.bridge} up\n"))
    # 127.0.0.1 -> a published port: the output hook's DNAT sends a loopback-sourced packet out
    # of the bridge, which the kernel drops as martian unless the bridge allows it.
    _write_sysctl(f"/proc/sys/net/ipv4/conf/{net.bridge}/route_localnet")


def remove_bridge(net: ipam.Network) -> None:
    if link_exists(net.bridge):
        _run(["ip", "link", "del", net.bridge], what=f"remove bridge {net.bridge}")


class Published:
    """One published port of a running container: host side (ip or all, port) -> its address."""

    __slots__ = ("bridge", "address", "host_ip", "host_port", "port", "proto")

    def __init__(self, bridge: str, address: str, host_ip: str, host_port: int, port: int, proto: str) -> None:
        self.bridge, self.address, self.host_ip = bridge, address, host_ip
        self.host_port, self.port, self.proto = host_port, port, proto

    def dnat(self) -> str:
        daddr = f"ip daddr {self.host_ip} " if self.host_ip else ""
        return (f"{daddr}fib daddr type local {self.proto} dport {self.host_port} "
                f"dnat ip to {self.address}:{self.port}")


def ruleset(networks: list[ipam.Network], published: list[Published] = []) -> str:  # noqa: B006 (never mutated)
    """pymachine's whole table for the networks in use (pure: tested without root). The first
    two lines make `delete table` succeed whether or not the table exists, in one transaction.

    Published ports: DNAT in prerouting (from other hosts and from containers: hairpin) and in
    output (from the host itself, 127.0.0.1 included: the bridge has route_localnet, and
    loopback sources are masqueraded to the gateway on their way out). A DNATed connection
    from the network itself is masqueraded too, so the answer comes back through the host."""
    lines = [f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}"]
    if not networks:
        return "\n".join(lines) + "\n"
    nat, forward = [], []
    for net in networks:
        if net.internal:
            # No way out: neither NAT nor forwarding beyond its own bridge.
            forward.append(f'iifname "{net.bridge}" oifname != "{net.bridge}" drop')
            forward.append(f'oifname "{net.bridge}" iifname != "{net.bridge}" drop')
        else:
            nat.append(f"ip saddr {net.subnet} ip daddr != {net.subnet} masquerade")
        nat.append(f'oifname "{net.bridge}" ip saddr 127.0.0.0/8 masquerade')
        nat.append(f'oifname "{net.bridge}" ip saddr {net.subnet} ct status dnat masquerade')
    dnat = [p.dnat() for p in published]
    lines += [f"table inet {NFT_TABLE} {{",
              "  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;",
              *(f"    {rule}" for rule in dnat), "  }",
              "  chain output {", "    type nat hook output priority -100; policy accept;",
              *(f"    {rule}" for rule in dnat), "  }",
              "  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;",
              *(f"    {rule}" for rule in nat), "  }",
              "  chain forward {", "    type filter hook forward priority filter; policy accept;",
              *(f"    {rule}" for rule in forward), "  }",
              "}"]
    return "\n".join(lines) + "\n"


def apply_ruleset(networks: list[ipam.Network]) -> None:
    _run(["nft", "-f", "-"], stdin=ruleset(networks, _published(networks)), what=f"nft table inet {NFT_TABLE}")
    if any(not net.internal for net in networks):
        # Routing between the bridge and the uplink (per network namespace, as docker does).
        _write_sysctl("/proc/sys/net/ipv4/ip_forward")


def _write_sysctl(path: str) -> None:
    with open(path, "w") as f:
        f.write("1")


def _published(networks: list[ipam.Network]) -> list[Published]:
    out = []
    for net in networks:
        for address, lease in sorted(ipam.read_leases(net.name).items()):
            for host_ip, host_port, port, proto in lease.get("ports") or []:  # type: ignore[attr-defined]
                out.append(Published(net.bridge, address, host_ip, host_port, port, proto))
    return out


def _networks_in_use(extra: ipam.Network | None = None) -> list[ipam.Network]:
    names = set(ipam.networks_with_leases())
    nets = [ipam.load(n) for n in sorted(names)]
    if extra is not None and extra.name not in names:
        nets.append(extra)
    return nets


def _taken_ports() -> dict[tuple[int, str], tuple[str, str]]:
    """(host port, proto) -> (host ip, container) of every live lease on every network."""
    taken = {}
    for network in ipam.networks_with_leases():
        for lease in ipam.read_leases(network).values():
            if ipam.holder_alive(lease):
                for host_ip, host_port, _, proto in lease.get("ports") or []:  # type: ignore[attr-defined]
                    taken[(host_port, proto)] = (host_ip, str(lease.get("name")))
    return taken


def resolve_ports(name: str, ports: tuple[str, ...]) -> list[list[object]]:
    """The container's ports as [host ip, host port, port, proto], free host ports picked for
    `-p PORT`. A host port another container publishes is refused. Caller holds the lock."""
    from machinectl_py.network import split_port

    taken = {k: v for k, v in _taken_ports().items() if v[1] != name}
    resolved: list[list[object]] = []
    for port in ports:
        host_ip, host_port, inner, proto = split_port(port)
        if host_port == 0:
            host_port = next(p for p in range(EPHEMERAL[0], EPHEMERAL[1]) if (p, proto) not in taken)
        other = taken.get((host_port, proto))
        if other is not None and (not other[0] or not host_ip or other[0] == host_ip):
            raise ConflictError(f"host port {host_port}/{proto} is already published by container {other[1]}")
        taken[(host_port, proto)] = (host_ip, name)
        resolved.append([host_ip, host_port, inner, proto])
    return resolved


def check_ports(name: str, ports: tuple[str, ...]) -> None:
    """Before anything starts: refuse a host port another running container publishes."""
    if ports and ipam.networks_with_leases():
        with ipam.locked():
            resolve_ports(name, ports)


def attach(network: str, name: str, pid: int, ports: tuple[str, ...] = ()) -> str:
    """Connect container `name` (init `pid`) to `network`: lease, bridge, NAT and published
    ports, veth, address, route. Returns its address. On failure its lease is freed again."""
    net = ipam.load(network)
    _wait_own_netns(pid)
    with ipam.locked():
        address = ipam.allocate(net, name, pid, resolve_ports(name, ports))
        try:
            ensure_bridge(net)
            apply_ruleset(_networks_in_use(net))
            _add_veth(net, name, pid, str(address))
        except BaseException:
            _release_locked(network, name)
            raise
        refresh_hosts(network)
    return str(address)


def refresh_hosts(network: str) -> None:
    """Every container of the network gets the others' names in its /etc/hosts."""
    from machinectl_py import netfiles

    peers = {str(lease.get("name")): ip for ip, lease in ipam.read_leases(network).items()}
    for peer, ip in peers.items():
        netfiles.refresh(peer, ip, peers)


def _add_veth(net: ipam.Network, name: str, pid: int, address: str) -> None:
    host = host_veth(name)
    if link_exists(host):  # a previous run's, whose namespace is being torn down
        _run(["ip", "link", "del", host], what=f"remove stale {host}")
    _run(["ip", "-b", "-"], what=f"veth {host}", stdin=(
        # By path, not PID: our children share the container's PID namespace (launch.HeldInit
        # unshared it for the init), where the kernel would read a PID as one of its own.
        f"link add {host} type veth peer name eth0 netns /proc/{pid}/ns/net\n"
        f"link set {host} master {net.bridge}\n"
        f"link set {host} up\n"))
    _run(["nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-b", "-"], what="the container's eth0", stdin=(
        f"addr add {address}/{net.subnet.prefixlen} dev eth0\n"
        "link set eth0 up\n"
        f"route add default via {net.gateway} dev eth0\n"))


def _release_locked(network: str, name: str | None) -> None:
    if ipam.release(network, name):
        remove_bridge(ipam.load(network))
        apply_ruleset(_networks_in_use())
    else:
        refresh_hosts(network)


def release(name: str | None) -> None:
    """Free container `name`'s leases (None: only leases whose holder is gone), then the bridges
    and rules no container uses any more. Best effort per network; the first error is raised."""
    with ipam.locked():
        if link_exists(host_veth(name or "")) and name:
            subprocess.run(["ip", "link", "del", host_veth(name)], capture_output=True)
        for network in ipam.networks_with_leases():
            _release_locked(network, name)
