"""Network modes of a container: what each one means for its namespaces and capabilities.

Pure (no syscalls): `launch` asks it which namespace to make and which capabilities the mode
takes away. Modes: `host` shares the host's network namespace (opt-in: no network isolation);
`none` gives the container its own namespace with only `lo` (`private` is its older alias);
`bridge` adds a veth on the default network's bridge, with an address, a route and NAT
(ipam.py, netsetup.py), a user network's NAME the same on that network's bridge;
`container:NAME` joins another running container's namespace and `ns:PATH` a namespace file's
(launch.joined_network_namespace).
"""

from __future__ import annotations

from machinectl_py.errors import UsageError
from machinectl_py.policy import CAPABILITIES

MODES = ("bridge", "host", "none", "private", "veth")
DEFAULT_NETWORK = "pymachine"  # ipam.DEFAULT_NETWORK, without importing it on the start path
VETH_NETWORK = "veth"  # ipam.VETH_NETWORK: the point-to-point pairs' address pool


def is_private(mode: str) -> bool:
    """True if the container gets a new network namespace of its own (every mode but host,
    container:NAME and ns:PATH: a user network's name too)."""
    return mode != "host" and not joins(mode)


def joins(mode: str) -> bool:
    """container:NAME and ns:PATH join a network namespace that exists already."""
    return mode.startswith(("container:", "ns:"))


def capability_mask(mode: str, mask: int, cap_add: frozenset[str] = frozenset()) -> int:
    """The policy's capability mask, less what the network mode forbids.

    With `host`, CAP_NET_RAW on the host's own interfaces means AF_PACKET sockets that capture
    the host's traffic and forged packets from the host's addresses: dropped unless the user
    asks for it by name (the hook for `--cap-add NET_RAW`: pass the added names in cap_add)."""
    if mode == "host" and "NET_RAW" not in cap_add:
        return mask & ~(1 << CAPABILITIES["NET_RAW"])
    return mask


def attached_network(mode: str) -> str | None:
    """The network a container in this mode is connected to, if any: `bridge` is the default
    network's, any name but host, none and private a user network's."""
    if mode == "bridge":
        return DEFAULT_NETWORK
    return None if mode in ("host", "none", "private") or joins(mode) else mode


# -- published ports: `-p [HOSTIP:][HOSTPORT:]PORT[/tcp|udp]`, with ranges --------------------------
# Kept as canonical strings "HOSTIP:HOSTPORT:PORT/PROTO" (HOSTIP and HOSTPORT may be empty: every
# address, a free port picked at start), one per port: ranges are expanded when parsed. An IPv6
# HOSTIP is written in brackets, as docker's `-p [::]:8080:80`: "[fd00::1]:8080:80/tcp".

PROTOCOLS = ("tcp", "udp")


def parse_ports(items: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    ports: list[str] = []
    for item in items:
        ports += _parse_port(item)
    return tuple(ports)


def _parse_port(item: str) -> list[str]:
    spec, _, proto = item.partition("/")
    proto = proto or "tcp"
    if proto not in PROTOCOLS:
        raise UsageError(f"invalid port {item!r}: protocol {proto!r}", hint="use tcp or udp")
    host_ip, spec = _host_ip(spec, item)
    parts = spec.split(":")
    if len(parts) > (2 if host_ip else 3):
        raise UsageError(f"invalid port {item!r}", hint="use [HOSTIP:][HOSTPORT:]PORT[/tcp|udp]")
    if len(parts) == 3:
        host_ip = parts.pop(0)
        if host_ip and not _is_ipv4(host_ip):
            raise UsageError(f"invalid port {item!r}: {host_ip!r} is not an IPv4 address",
                             hint="write an IPv6 address in brackets: [::]:8080:80")
    host = parts[0] if len(parts) == 2 else ""
    inner = _port_range(parts[-1], item)
    outer = _port_range(host, item) if host else [0] * len(inner)
    if len(outer) != len(inner):
        raise UsageError(f"invalid port {item!r}: the host and container ranges differ in length")
    shown = f"[{host_ip}]" if ":" in host_ip else host_ip
    return [f"{shown}:{h or ''}:{c}/{proto}" for h, c in zip(outer, inner, strict=True)]


def _host_ip(spec: str, item: str) -> tuple[str, str]:
    """A leading [IPv6] host address: (the address, the rest after its colon); else ("", spec)."""
    if not spec.startswith("["):
        return "", spec
    address, sep, rest = spec[1:].partition("]:")
    if not sep or not _is_ipv6(address):
        raise UsageError(f"invalid port {item!r}: {address!r} is not an IPv6 address")
    if address == "::1" or address.lower().startswith("::ffff:"):
        # The kernel routes a connection from ::1 to no other namespace (loopback is strict in
        # IPv6: there is no route_localnet), so a DNAT rule for it would never answer.
        raise UsageError(f"invalid port {item!r}: {address} cannot be published",
                         hint="publish without an address or on [::]: such a TCP port answers on [::1] too")
    return address, rest


def _is_ipv6(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _port_range(text: str, item: str) -> list[int]:
    first, _, last = text.partition("-")
    try:
        low, high = int(first), int(last or first)
    except ValueError:
        raise UsageError(f"invalid port {item!r}", hint="use [HOSTIP:][HOSTPORT:]PORT[/tcp|udp]") from None
    if not 1 <= low <= high <= 65535:
        raise UsageError(f"invalid port {item!r}: ports are 1-65535, ranges low-high")
    return list(range(low, high + 1))


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and int(p) <= 255 and str(int(p)) == p for p in parts)


def publish_all(ports: tuple[str, ...], exposed: tuple[str, ...]) -> tuple[str, ...]:
    """-P: the image's ExposedPorts ("80/tcp", "53/udp", "8080") on free host ports, less the
    container ports -p publishes already. Malformed entries are skipped (they come from the image)."""
    published = {split_port(p)[2:] for p in ports}
    out = []
    for item in exposed:
        number, _, proto = item.partition("/")
        proto = proto or "tcp"
        if number.isdigit() and 1 <= int(number) <= 65535 and proto in PROTOCOLS \
                and (int(number), proto) not in published:
            out.append(f"::{int(number)}/{proto}")
    return tuple(out)


def split_port(port: str) -> tuple[str, int, int, str]:
    """A canonical port -> (host ip or "" (IPv6 without its brackets), host port or 0, container
    port, protocol)."""
    spec, _, proto = port.partition("/")
    host_ip, host, inner = spec.rsplit(":", 2)
    return host_ip.strip("[]"), int(host or 0), int(inner), proto


def host_address(host_ip: str) -> str:
    """A published port's host side as docker shows it: 0.0.0.0 for every address, [v6]."""
    return f"[{host_ip}]" if ":" in host_ip else host_ip or "0.0.0.0"


def ports_inspect(ports: tuple[str, ...]) -> dict[str, list[dict[str, str]]]:
    """docker's HostConfig.PortBindings."""
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in ports:
        host_ip, host, inner, proto = split_port(port)
        bindings.setdefault(f"{inner}/{proto}", []).append({"HostIp": host_ip, "HostPort": str(host or "")})
    return bindings


# -- names: --dns SERVER, --add-host NAME:IP -----------------------------------------------------


def _is_ip(text: str) -> bool:
    return _is_ipv4(text) or (":" in text and all(c in "0123456789abcdefABCDEF:." for c in text))


def parse_dns(items: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    for item in items:
        if not _is_ip(item):
            raise UsageError(f"invalid DNS server {item!r}: not an IP address")
    return tuple(items)


def parse_dns_search(items: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    for item in items:
        if not item or any(c.isspace() for c in item) or len(item) > 253:
            raise UsageError(f"invalid DNS search domain {item!r}")
    return tuple(items)


def parse_dns_options(items: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """resolv.conf options: ndots:N, timeout:N, edns0... one word each."""
    for item in items:
        if not item or any(c.isspace() for c in item):
            raise UsageError(f"invalid DNS option {item!r}", hint="one word each, as ndots:2 or edns0")
    return tuple(items)


def parse_add_hosts(items: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """NAME:IP each (docker's --add-host); IPv6 addresses keep their colons."""
    for item in items:
        name, _, ip = item.partition(":")
        if not name or not _is_ip(ip) or any(c.isspace() for c in name):
            raise UsageError(f"invalid host entry {item!r}", hint="use NAME:IP")
    return tuple(items)
