"""The `bridge` mode's mechanism: a bridge per network, a veth per container, NAT through
nftables in pymachine's own table `inet pymachine`.

Runs in the parent (runtime.py, service.py) between the machine's registration and the
release of the held init, whose network namespace is already its own. Links, addresses and
routes go through rtnetlink in this process (netlink.py: one socket on the host, one opened in
the container's namespace), the ruleset through libnftables in this process (syscalls.nft_run;
`nft -f -` where the library is missing): no program is executed on the start and stop paths;
the README says why (import and call costs measured). Only pymachine's table is ever written:
it is regenerated whole, in one nft transaction, from the networks in use, and deleted when no
network is in use, so other tables (docker's, podman's, firewalld's) are never touched.

Teardown: the container's end of its veth lives in its namespace, so the kernel removes the
pair when the namespace dies (a dying container, a `kill -9` of pymachine). What is left is
the lease (freed at stop, rm and by `gc`; ignored once its holder is gone, see ipam.py), and
the bridge and nft table of a network with no lease left, removed with its last lease (after a
foreground `run`, by a detached child holding the lock: release(defer=True)).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import sys
import time
import zlib
from collections.abc import Callable

from machinectl_py import ipam, netlink, syscalls
from machinectl_py.errors import ConflictError, PymachineError, UsageError
from machinectl_py.network import split_port

NFT_TABLE = "pymachine"
EPHEMERAL = (32768, 61000)  # free host ports for `-p PORT` (Linux's ip_local_port_range)
NETNS_TIMEOUT = 10.0


def host_veth(name: str, network: str = ipam.DEFAULT_NETWORK) -> str:
    """The host side of a container's veth on a network: short (IFNAMSIZ), stable for the pair.
    `--network veth`: ve-NAME as nspawn's, ve-<crc32> where NAME is too long for a link."""
    if network == ipam.VETH_NETWORK:
        short = f"ve-{name}"
        return short if len(short) <= ipam.IFNAMSIZ else f"ve-{zlib.crc32(name.encode()):08x}"
    key = name if network == ipam.DEFAULT_NETWORK else f"{name}@{network}"
    return f"pmv{zlib.crc32(key.encode()):08x}"


def _run(argv: list[str], stdin: str | None = None, what: str = "") -> str:
    import subprocess  # `ip -j route` at `network create`, `nft` where libnftables is missing

    r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise PymachineError(f"{what or argv[0]}: {'; '.join(r.stderr.strip().splitlines()) or f'exit {r.returncode}'}")
    return r.stdout


_HOST: list[netlink.Socket] = []  # this process's netlink socket of its own namespace, opened once


def _host() -> netlink.Socket:
    if not _HOST:
        _HOST.append(netlink.Socket())
    return _HOST[0]


def _request(sock: netlink.Socket, message: tuple[int, bytes], what: str, create: bool = True) -> None:
    try:
        sock.request(message, what, create=create)
    except OSError as e:
        raise PymachineError(str(e.strerror)) from None


def _ifindex(sock: netlink.Socket, name: str) -> int:
    try:
        return sock.ifindex(name)
    except OSError as e:
        raise PymachineError(str(e.strerror)) from None


def link_exists(name: str) -> bool:
    try:
        _host().ifindex(name)
    except OSError as e:
        if e.errno == errno.ENODEV:
            return False
        raise PymachineError(str(e.strerror)) from None
    return True


def delete_link(name: str) -> None:
    """`ip link del NAME`, if it is there (a veth's peer goes with it)."""
    try:
        _host().request(netlink.del_link(name), f"remove {name}")
    except OSError as e:
        if e.errno != errno.ENODEV:
            raise PymachineError(str(e.strerror)) from None


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
    if net.point_to_point or link_exists(net.bridge):
        return
    sock, what = _host(), f"bridge {net.bridge}"
    _request(sock, netlink.new_bridge(net.bridge), what)
    index = _ifindex(sock, net.bridge)
    _request(sock, netlink.new_addr(index, str(net.gateway), net.subnet.prefixlen), what)
    if net.subnet6 is not None:
        _request(sock, netlink.new_addr(index, str(net.gateway6), net.subnet6.prefixlen, nodad=True), what)
    # 127.0.0.1 -> a published port: the output hook's DNAT sends a loopback-sourced packet out
    # of the bridge, which the kernel drops as martian unless the bridge allows it.
    _write_sysctl(f"/proc/sys/net/ipv4/conf/{net.bridge}/route_localnet")


def remove_bridge(net: ipam.Network) -> None:
    if not net.point_to_point:
        delete_link(net.bridge)


WILDCARDS = ("", "0.0.0.0", "::")


class Published:
    """One published port of a running container: host side (ip or all, port) -> its address
    (and its IPv6 address, on a network with an IPv6 subnet)."""

    __slots__ = ("bridge", "address", "host_ip", "host_port", "port", "proto", "address6")

    def __init__(self, bridge: str, address: str, host_ip: str, host_port: int, port: int, proto: str,
                 address6: str | None = None) -> None:
        self.bridge, self.address, self.host_ip = bridge, address, host_ip
        self.host_port, self.port, self.proto, self.address6 = host_port, port, proto, address6

    def dnat(self) -> list[str]:
        """Its DNAT rules: IPv4 unless HOSTIP is IPv6, IPv6 (on both families' addresses of the
        host, as docker publishes) where the container has an IPv6 address and HOSTIP allows."""
        rules, v6_host = [], ":" in self.host_ip
        match = f"fib daddr type local {self.proto} dport {self.host_port}"
        if not v6_host:
            daddr = f"ip daddr {self.host_ip} " if self.host_ip not in WILDCARDS else ""
            rules.append(f"{daddr}{match} dnat ip to {self.address}:{self.port}")
        if self.address6 is not None and (v6_host or not self.host_ip):
            # Not ::1: the kernel routes no IPv6 loopback packet to another namespace (there is no
            # route_localnet in IPv6), so [::1]:PORT is left to say "connection refused".
            daddr = f"ip6 daddr {self.host_ip} " if self.host_ip not in WILDCARDS else "ip6 daddr != ::1 "
            rules.append(f"{daddr}{match} dnat ip6 to [{self.address6}]:{self.port}")
        return rules


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
            if net.subnet6 is not None:
                nat.append(f"ip6 saddr {net.subnet6} ip6 daddr != {net.subnet6} masquerade")
        nat.append(f'oifname "{net.bridge}" ip saddr 127.0.0.0/8 masquerade')
        nat.append(f'oifname "{net.bridge}" ip saddr {net.subnet} ct status dnat masquerade')
        if net.subnet6 is not None:
            nat.append(f'oifname "{net.bridge}" ip6 saddr {net.subnet6} ct status dnat masquerade')
    dnat = [rule for p in published for rule in p.dnat()]
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
    script, what = ruleset(networks, _published(networks)), f"nft table inet {NFT_TABLE}"
    try:
        syscalls.nft_run(script)
    except syscalls.NftUnavailable:
        _run(["nft", "-f", "-"], stdin=script, what=what)
    except OSError as e:
        lines = str(e.strerror).splitlines()
        raise PymachineError(f"{what}: {'; '.join([x for x in lines if x.startswith('Error')] or lines)}") from None
    if any(not net.internal for net in networks):
        # Routing between the bridge and the uplink (per network namespace, as docker does).
        _write_sysctl("/proc/sys/net/ipv4/ip_forward")
        if any(net.subnet6 is not None and not net.internal for net in networks):
            _write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding")


def _write_sysctl(path: str) -> None:
    with open(path, "w") as f:
        f.write("1")


def _published(networks: list[ipam.Network]) -> list[Published]:
    out = []
    for net in networks:
        for address, lease in sorted(ipam.read_leases(net.name).items()):
            address6 = net.address6(address)
            for host_ip, host_port, port, proto in lease.get("ports") or []:  # type: ignore[attr-defined]
                out.append(Published(net.bridge, address, host_ip, host_port, port, proto,
                                     str(address6) if address6 is not None else None))
    return out


def loopback6_targets(network: str, name: str) -> list[tuple[int, str]]:
    """(host port, the container's ADDRESS:PORT) of each TCP port `name` publishes on every
    address of the host (as docker's `-p 8080:80` and `-p [::]:8080:80`): their [::1] side is
    systemd-socket-proxyd's (systemd.loopback6_proxy_units). Its IPv6 address where it has one,
    unbracketed (the proxy splits HOST:PORT at the last colon and resolves HOST as it is)."""
    net = ipam.load(network)
    targets = []
    for address, lease in ipam.read_leases(network).items():
        if lease.get("name") != name:
            continue
        address6 = net.address6(address)
        to = address6 if address6 is not None else address
        for host_ip, host_port, port, proto in lease.get("ports") or []:  # type: ignore[attr-defined]
            if proto == "tcp" and host_ip in ("", "::"):
                targets.append((int(host_port), f"{to}:{port}"))
    return targets


def _networks_in_use(extra: ipam.Network | None = None) -> list[ipam.Network]:
    names = set(ipam.networks_with_leases())
    # A network whose definition is gone (removed by hand) has no live lease: `network rm`
    # refuses otherwise. Its rules go; its dead leases are freed by the next release.
    nets = [net for net in map(_load_quietly, sorted(names)) if net is not None]
    if extra is not None and extra.name not in names:
        nets.append(extra)
    return nets


def _load_quietly(name: str) -> ipam.Network | None:
    try:
        return ipam.load(name)
    except PymachineError:
        return None


def _taken_ports() -> dict[tuple[int, str], tuple[str, str]]:
    """(host port, proto) -> (host ip, container) of every live lease on every network."""
    taken = {}
    for network in ipam.networks_with_leases():
        for lease in ipam.read_leases(network).values():
            if ipam.holder_alive(lease):
                for host_ip, host_port, _, proto in lease.get("ports") or []:  # type: ignore[attr-defined]
                    taken[(host_port, proto)] = (host_ip, str(lease.get("name")))
    return taken


def bound_ports(proto: str) -> set[int]:
    """Local ports bound in this network namespace (/proc/net/tcp, tcp6, udp, udp6): a free
    host port for `-p PORT` is none of them (a DNAT rule would hide a host service)."""
    ports = set()
    for path in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            with open(path) as f:
                next(f, None)
                for line in f:
                    ports.add(int(line.split()[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def resolve_ports(name: str, ports: tuple[str, ...]) -> list[list[object]]:
    """The container's ports as [host ip, host port, port, proto], free host ports picked for
    `-p PORT`. A host port another container publishes is refused. Caller holds the lock."""
    taken = {k: v for k, v in _taken_ports().items() if v[1] != name}
    resolved: list[list[object]] = []
    for port in ports:
        host_ip, host_port, inner, proto = split_port(port)
        if host_port == 0:
            bound = bound_ports(proto)
            host_port = next(p for p in range(EPHEMERAL[0], EPHEMERAL[1])
                             if (p, proto) not in taken and p not in bound)
        other = taken.get((host_port, proto))
        if other is not None and (other[0] in WILDCARDS or host_ip in WILDCARDS or other[0] == host_ip):
            raise ConflictError(f"host port {host_port}/{proto} is already published by container {other[1]}")
        taken[(host_port, proto)] = (host_ip, name)
        resolved.append([host_ip, host_port, inner, proto])
    return resolved


def check_ports(name: str, ports: tuple[str, ...], network: str = ipam.DEFAULT_NETWORK) -> None:
    """Before anything starts: refuse a host port another running container publishes, and an
    IPv6 host address on a network without an IPv6 subnet."""
    if any(":" in split_port(p)[0] for p in ports) and ipam.load(network).subnet6 is None:
        raise UsageError(f"network {network} has no IPv6 subnet: a port cannot be published on an IPv6 address",
                         hint="use a network made with --ipv6")
    if ports and ipam.networks_with_leases():
        with ipam.locked():
            resolve_ports(name, ports)


def attach(network: str, name: str, pid: int, ports: tuple[str, ...] = (), *, ip: str | None = None,
           aliases: tuple[str, ...] = (), primary: bool = True) -> str:
    """Connect container `name` (init `pid`) to `network`: lease, bridge, NAT and published
    ports, veth, address (and, on its primary network, the default route). Returns its address.
    On failure its lease is freed again."""
    net = ipam.load(network)
    with ipam.locked():
        ifname = ("host0" if net.point_to_point else "eth0") if primary else _next_ifname(name, network)
        address = ipam.allocate(net, name, pid, resolve_ports(name, ports), ip=ip, aliases=aliases, ifname=ifname)
        try:
            ensure_bridge(net)
            # The table (~10-20 ms of the kernel's, registering its hooks) meanwhile: it does not
            # need the container's namespace, which may still be in the making.
            rules = Background(lambda: apply_ruleset(_networks_in_use(net)))
            try:
                _wait_own_netns(pid)
                if net.point_to_point:
                    _add_p2p(net, name, pid, str(address))
                else:
                    _add_veth(net, name, pid, str(address), ifname, primary)
            finally:
                rules.join()
        except BaseException:
            _release_locked(network, name)
            raise
        refresh_hosts()
    return str(address)


def _next_ifname(name: str, network: str) -> str:
    """eth1, eth2...: the first name none of the container's other leases uses."""
    used = {"eth0"}
    for other in ipam.networks_with_leases():
        for lease in ipam.live_leases(other).values():
            if lease.get("name") == name:
                if other == network:
                    raise ConflictError(f"container {name} is already connected to network {network}")
                used.add(str(lease.get("ifname", "eth0")))
    return next(f"eth{i}" for i in range(1, 1 + len(used) + 1) if f"eth{i}" not in used)


def memberships() -> dict[str, list[tuple[str, str, dict[str, object]]]]:
    """container -> [(network, address, lease)] of every live lease."""
    out: dict[str, list[tuple[str, str, dict[str, object]]]] = {}
    for network in ipam.networks_with_leases():
        for ip, lease in sorted(ipam.live_leases(network).items()):
            out.setdefault(str(lease.get("name")), []).append((network, ip, lease))
    return out


def refresh_hosts() -> None:
    """Every container on a network gets, in its /etc/hosts, the names and aliases of the other
    containers of each network it is on. Caller holds the lock."""
    from machinectl_py import netfiles

    members = memberships()
    by_network: dict[str, dict[str, str]] = {}
    for peer, entries in members.items():
        for network, ip, lease in entries:
            names = by_network.setdefault(network, {})
            names[peer] = ip
            for alias in lease.get("aliases") or []:  # type: ignore[attr-defined]
                names.setdefault(str(alias), ip)
    for container, entries in members.items():
        own = next((ip for _, ip, lease in entries if lease.get("ifname", "eth0") == "eth0"), entries[0][1])
        peers: dict[str, str] = {}
        for network, _, _ in entries:
            peers.update({n: ip for n, ip in by_network[network].items() if n != container})
        netfiles.refresh(container, own, peers)


def _add_veth(net: ipam.Network, name: str, pid: int, address: str, ifname: str = "eth0",
              primary: bool = True) -> None:
    host, sock = host_veth(name, net.name), _host()
    delete_link(host)  # a previous run's, whose namespace is being torn down
    with _Netns(pid) as (fd, inside):
        _request(sock, netlink.new_veth(host, ifname, fd, master=_ifindex(sock, net.bridge)), f"veth {host}")
        # A container reaching its own published port through a host address: where
        # br_netfilter is loaded, the DNAT happens at the bridge and the frame must go back out
        # of the port it came in on, which a bridge refuses without hairpin (as docker sets it).
        _request(sock, netlink.bridge_port_hairpin(_ifindex(sock, host)), f"hairpin on {host}", create=False)
        what = f"the container's {ifname}"
        index = _ifindex(inside, ifname)
        _request(inside, netlink.set_up(index), what, create=False)
        _request(inside, netlink.new_addr(index, address, net.subnet.prefixlen), what)
        if net.subnet6 is not None:  # the IPv6 address that goes with the IPv4 lease (ipam.Network.address6)
            _request(inside, netlink.new_addr(index, str(net.address6(address)), net.subnet6.prefixlen,
                                              nodad=True), what)
        # An internal network has no way out: no default route (the forward chain drops the rest).
        if primary and not net.internal:
            _request(inside, netlink.new_default_route(index, str(net.gateway)), what)
            if net.gateway6 is not None:
                _request(inside, netlink.new_default_route(index, str(net.gateway6)), what)


def _add_p2p(net: ipam.Network, name: str, pid: int, address: str) -> None:
    """`--network veth`: ve-NAME on the host with the /30's .1, host0 in the container with
    its .2 and the default route through .1 (nspawn's pair, addressed by pymachine)."""
    host, gateway, sock = host_veth(name, net.name), str(ipam.p2p_gateway(address)), _host()
    delete_link(host)  # a previous run's, whose namespace is being torn down
    with _Netns(pid) as (fd, inside):
        _request(sock, netlink.new_veth(host, "host0", fd), f"veth {host}")
        _request(sock, netlink.new_addr(_ifindex(sock, host), gateway, 30), f"veth {host}")
        _write_sysctl(f"/proc/sys/net/ipv4/conf/{host}/route_localnet")  # 127.0.0.1 -> a published port
        index = _ifindex(inside, "host0")
        _request(inside, netlink.set_up(index), "the container's host0", create=False)
        _request(inside, netlink.new_addr(index, address, 30), "the container's host0")
        _request(inside, netlink.new_default_route(index, gateway), "the container's host0")


class _Netns:
    """The container's network namespace, as an fd (for the veth's peer) and a netlink socket
    opened in it. By path, not PID: our children share the container's PID namespace
    (launch.HeldInit unshared it for the init), but this process reads the host's /proc."""

    def __init__(self, pid: int) -> None:
        self.path = f"/proc/{pid}/ns/net"

    def __enter__(self) -> tuple[int, netlink.Socket]:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise PymachineError(f"the container's network namespace: {e.strerror}") from None
        try:
            self.sock = netlink.socket_in(self.fd)
        except OSError as e:
            os.close(self.fd)
            raise PymachineError(f"the container's network namespace: {e.strerror}") from None
        return self.fd, self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        os.close(self.fd)


def _release_locked(network: str, name: str | None, veth: str | None = None) -> None:
    """Free `name`'s lease (and dead holders') on `network` and remove its host-side `veth`;
    the bridge goes with the last lease; the table is rewritten (published ports of the freed
    leases go with them). Caller holds the lock."""
    links, rules = _free_lease(network, name, veth)
    _kernel_teardown(links, rules)
    refresh_hosts()


def _free_lease(network: str, name: str | None, veth: str | None) -> tuple[list[str], bool]:
    """The file side of a release: the leases go now. Returns what the kernel still has to
    remove: the links (`veth`, and the bridge with the last lease) and whether the table needs
    rewriting."""
    before = ipam.read_leases(network)
    links, last = [veth] if veth else [], ipam.release(network, name)
    if last:
        net = _load_quietly(network)
        if net is not None and not net.point_to_point:
            links.append(net.bridge)
    return links, last or ipam.read_leases(network) != before


def _kernel_teardown(links: list[str], rules: bool) -> None:
    """The links go in one request, while the table is rewritten in another thread: the kernel
    waits for RCU grace periods in each (~10-40 ms), and these overlap."""
    if not rules:
        delete_links(links)
        return
    task = Background(lambda: apply_ruleset(_networks_in_use()))
    try:
        delete_links(links)
    finally:
        task.join()


def _detached(lock_fd: int, fn: Callable[[], None]) -> bool:
    """fn() in a detached child that holds the networks' lock until it is done (it shares the
    lock's open file); False if it could not be forked (the caller does the work itself). Not
    waited for: the caller exits next (a zombie until then), and then init reaps it.

    Its stdio is /dev/null and every other descriptor is closed, so that no pipe a waiter reads
    stays open after the caller exits; its own session, so that a terminal's signals do not
    reach it."""
    try:
        if os.fork():
            return True
    except OSError:
        return False
    try:
        _detach_stdio(lock_fd)
        _HOST.clear()  # its socket was closed with the rest
        fn()
    except BaseException:  # nobody is left to tell: `gc` and the next start clean up
        pass
    os._exit(0)


def _detach_stdio(lock_fd: int) -> None:
    import _signal

    os.setsid()
    for sig in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(sig, _signal.SIG_IGN)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, set())
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.dup2(lock_fd, 3)
    syscalls.close_fds_from(4)


class Background:
    """fn() in a thread of its own (_thread: `threading` is not imported for this); join()
    waits for it and raises what it raised. The network's kernel work (netlink, nft) waits for
    RCU grace periods with the GIL released, so it overlaps the caller's own waits."""

    def __init__(self, fn: Callable[[], None]) -> None:
        import _thread

        self.fn = fn
        self.error: BaseException | None = None
        self.done = _thread.allocate_lock()
        self.done.acquire()
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        try:
            self.fn()
        except BaseException as e:  # handed to join()
            self.error = e
        finally:
            self.done.release()

    def join(self) -> None:
        self.done.acquire()
        self.done.release()
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def delete_links(names: list[str]) -> None:
    """`ip link del` of each link that is there, in one request: the kernel then waits once for
    all (its RCU grace periods and reference counts), not once per link. They are put in a link
    group of a random number above 2^31 (none of the host's own links has one) and the group is
    deleted; a link already gone is skipped (a container's host-side veth: the kernel takes the
    pair with the container's namespace)."""
    if len(names) < 2:
        for name in names:
            delete_link(name)
        return
    group, marked = int.from_bytes(os.urandom(4), "little") | 0x80000000, 0
    for name in names:
        try:
            _host().request(netlink.set_group(name, group), f"remove {name}")
            marked += 1
        except OSError as e:
            if e.errno != errno.ENODEV:
                raise PymachineError(str(e.strerror)) from None
    if marked:
        _request(_host(), netlink.del_group(group), f"remove {', '.join(names)}", create=False)


_PENDING: list[tuple[int, Callable[[], None]]] = []  # a deferred release: (the lock, held by a dup; the work)


def release(name: str | None, *, defer: bool = False) -> None:
    """Free container `name`'s leases (None: only leases whose holder is gone), then the bridges
    and rules no container uses any more, all networks' links in one request.

    defer (`run`'s exit): the leases and /etc/hosts files change now; what the kernel still has
    to do (removing the bridge, the host end of the veth if the kernel has not yet, and the
    table: ~35-50 ms of its RCU grace periods) waits, with the lock held, for finish_deferred()
    at the very end of `run`, which leaves it to a detached child. So the next pymachine command
    that touches networks waits for it, and `ip link` shows the bridge for that moment after
    `run` has returned, as nspawn's veth outlives nspawn until the kernel has cleaned the
    namespace up."""
    _finish_pending(detach=False)  # never two: the lock is held by the first
    with ipam.locked() as lock:
        links: list[str] = []
        rules = False
        for network in ipam.networks_with_leases():
            veth = host_veth(name, network) if name and ipam.lease_of(network, name) else None
            more, changed = _free_lease(network, name, veth)
            links, rules = links + more, rules or changed
        refresh_hosts()
        if not links and not rules:
            return
        if defer:
            _PENDING.append((os.dup(lock), lambda: _kernel_teardown(links, rules)))  # the dup keeps it locked
            return
        _kernel_teardown(links, rules)


def finish_deferred(detach: bool = True) -> None:
    """The end of `run`: the work release(defer=True) left, by a detached child that holds the
    lock until it is done (detach), or here (an error is on its way out: its message must reach
    stderr, which the child's fork would not let us keep).

    Our stdin, stdout and stderr become /dev/null first: the child is forked with them, and a
    caller that reads our output to its end (`$(...)`, a pipe) would otherwise wait until the
    child has been scheduled and closed its copies (~20 ms at a load average of 5)."""
    _finish_pending(detach)


def _finish_pending(detach: bool) -> None:
    if not _PENDING:
        return
    lock, work = _PENDING.pop()
    try:
        if detach:
            sys.stdout.flush()
            sys.stderr.flush()
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
            if _detached(lock, work):
                return
        work()
    except PymachineError as e:  # the container's status stays the command's: said, as a teardown's error
        print(f"pymachine: {e}", file=sys.stderr)
    finally:
        os.close(lock)


def remove_orphan_bridges() -> list[str]:
    """`gc`: pymachine's bridges (pm-*) of no network in use, as a network removed by hand
    leaves them (its definition named the bridge)."""
    with ipam.locked():
        return _remove_orphan_bridges()


def _remove_orphan_bridges() -> list[str]:
    in_use = {net.bridge for net in _networks_in_use()}
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return []
    orphans = [n for n in names
               if n.startswith("pm-") and n not in in_use and os.path.isdir(f"/sys/class/net/{n}/bridge")]
    for bridge in orphans:
        try:
            delete_link(bridge)
        except PymachineError:
            pass
    return orphans


def remove_idle_table() -> bool:
    """`gc`: pymachine's nft table while no network is in use (a teardown killed between freeing
    the last lease and its kernel work, see release). True if it was there."""
    with ipam.locked():
        if _networks_in_use() or not _table_exists():
            return False
        apply_ruleset([])
        return True


def _table_exists() -> bool:
    try:
        syscalls.nft_run(f"list table inet {NFT_TABLE}")
    except syscalls.NftUnavailable:
        import subprocess

        return subprocess.run(["nft", "list", "table", "inet", NFT_TABLE], capture_output=True).returncode == 0
    except OSError:
        return False
    return True


def forget(network: str) -> None:
    """`network rm`, under the lock: its dead holders' leases, and its bridge if left over."""
    dead = ipam.read_leases(network)
    if not ipam.release(network, None):
        raise ConflictError(f"network {network} is in use")
    remove_bridge(ipam.load(network))
    if dead:  # their published ports' rules go too
        apply_ruleset(_networks_in_use())


def detach(network: str, name: str) -> None:
    """`network disconnect`: the container's veth on this network and its lease go."""
    with ipam.locked():
        if ipam.lease_of(network, name) is None:
            raise PymachineError(f"container {name} is not connected to network {network}")
        _release_locked(network, name, host_veth(name, network))


def host_routes(version: int = 4) -> dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The routes of this network namespace (`ip -j route`), pymachine's bridges, the default
    route, link-local and multicast aside: a new network's subnet must overlap none of them."""
    import json

    out: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
    argv = ["ip", "-j", f"-{version}", "route", "show", "table", "all"]
    for route in json.loads(_run(argv, what="ip route") or "[]"):
        dst, dev = str(route.get("dst", "")), str(route.get("dev", ""))
        if dst in ("", "default") or dev.startswith("pm-") or route.get("type", "unicast") not in ("unicast", "local"):
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if net.is_link_local or net.is_multicast:
            continue
        if route.get("type") == "local" and (net.is_loopback or net.prefixlen == net.max_prefixlen):
            continue  # the host's own addresses and 127/8: their subnets are listed as unicast routes
        out[f"the host's route to {dst} (dev {dev})"] = net
    return out


def create_network(name: str, subnets: list[str], gateway: str | None, internal: bool,
                   ipv6: bool = False) -> ipam.Network:
    """Write a new network's definition: its subnet (or a free /24), and with ipv6 its IPv6
    subnet (or a unique local /64), must overlap no other network and no route of the host."""
    from machinectl_py.spec import validate_network_name

    validate_network_name(name)
    subnet, subnet6 = _split_subnets(subnets, ipv6)
    with ipam.locked():
        if ipam.exists(name) and (name != ipam.DEFAULT_NETWORK or os.path.exists(ipam.definition_path(name))):
            raise ConflictError(f"network {name} already exists")
        others = [ipam.load(n) for n in ipam.list_names() if n != name]
        taken: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {f"network {n.name}": n.subnet
                                                                           for n in others}
        taken.update({f"network {n.name}": n.subnet6 for n in others if n.subnet6})
        taken.update(host_routes(4))
        if ipv6:
            taken.update(host_routes(6))
        v4 = {k: v for k, v in taken.items() if isinstance(v, ipaddress.IPv4Network)}
        net = ipam.Network(name, subnet or str(ipam.free_subnet(v4)), gateway, internal,
                           (subnet6 or ipam.ula_subnet(name)) if ipv6 else None)
        for mine in (net.subnet, net.subnet6):
            clash = ipam.overlap(mine, {k: v for k, v in taken.items() if v.version == mine.version}) if mine else None
            if clash is not None:
                raise ConflictError(f"subnet {mine} overlaps {clash}", hint="choose another --subnet")
        ipam.save(net)
    return net


def _split_subnets(subnets: list[str], ipv6: bool) -> tuple[str | None, str | None]:
    """--subnet given once or twice: at most one IPv4 and one IPv6 subnet (this needs --ipv6)."""
    v4 = [s for s in subnets if ":" not in s]
    v6 = [s for s in subnets if ":" in s]
    if len(v4) > 1 or len(v6) > 1:
        raise UsageError("at most one IPv4 and one IPv6 --subnet")
    if v6 and not ipv6:
        raise UsageError(f"the IPv6 subnet {v6[0]} needs --ipv6")
    return (v4[0] if v4 else None), (v6[0] if v6 else None)
