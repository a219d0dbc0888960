"""Networks and address leases for the `bridge` mode.

A network is a subnet with a gateway, served by one Linux bridge. Its definition is a small
TOML file, `/etc/pymachine/networks/NAME.toml` (hand-editable, like container definitions);
the default network `pymachine` is written on first use. Leases live under /run (a reboot
forgets them, as it forgets the containers' namespaces): `/run/pymachine/networks/NAME.json`
maps each leased address to its holder, the container's name and its init's PID and start
time. Every change happens under one exclusive flock (`networks/lock`: leases, bridges and
pymachine's nft table change together) and is written atomically
(a temporary file renamed over the old one), so concurrent starts get distinct addresses and a
`kill -9` at any step leaves either the old file or the new one. A lease whose holder is gone
(PID dead, or reused by another process) is free: the next allocation or `gc` drops it.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from machinectl_py.errors import ConflictError, UsageError
from machinectl_py.paths import config_path, run_path

DEFAULT_NETWORK = "pymachine"
DEFAULT_SUBNET = "10.89.0.0/16"
# `--network veth` (nspawn's --network-veth): no bridge, a pair per container, each with a /30
# of this pool (the host side .1, the container .2). Built in, never a definition on disk.
VETH_NETWORK = "veth"
VETH_SUBNET = "10.88.0.0/16"
# Linux names links with at most 15 characters.
IFNAMSIZ = 15


class Network:
    __slots__ = ("name", "subnet", "gateway", "internal", "subnet6")

    def __init__(self, name: str, subnet: str, gateway: str | None = None, internal: bool = False,
                 subnet6: str | None = None) -> None:
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError as e:
            raise UsageError(f"network {name}: invalid subnet {subnet!r}: {e}") from None
        if net.num_addresses < 4:
            raise UsageError(f"network {name}: subnet {subnet} is too small", hint="use a /30 or larger")
        gw = ipaddress.IPv4Address(gateway) if gateway else net.network_address + 1
        if gw not in net or gw in (net.network_address, net.broadcast_address):
            raise UsageError(f"network {name}: gateway {gw} is not a host address of {net}")
        self.name, self.subnet, self.gateway, self.internal = name, net, gw, internal
        self.subnet6 = _subnet6(name, subnet6) if subnet6 else None

    @property
    def gateway6(self) -> ipaddress.IPv6Address | None:
        return self.subnet6.network_address + 1 if self.subnet6 else None

    def address6(self, address: str) -> ipaddress.IPv6Address | None:
        """A container's IPv6 address: its IPv4 address's offset in the subnet, in subnet6 (no
        lease of its own: the IPv4 lease holds both)."""
        if self.subnet6 is None:
            return None
        return self.subnet6.network_address + (int(ipaddress.IPv4Address(address)) - int(self.subnet.network_address))

    @property
    def point_to_point(self) -> bool:
        return self.name == VETH_NETWORK

    @property
    def bridge(self) -> str:
        """pm-NAME, or pm-<crc32 of NAME> where NAME is too long for a link name (IFNAMSIZ):
        two long names never share a bridge by sharing a prefix. The veth pool has no bridge:
        "ve-*" matches its host-side links in nft rules."""
        if self.point_to_point:
            return "ve-*"
        short = f"pm-{self.name}"
        return short if len(short) <= IFNAMSIZ else f"pm-{zlib.crc32(self.name.encode()):08x}"

    def to_toml(self) -> str:
        return (f'subnet = "{self.subnet}"\ngateway = "{self.gateway}"\n'
                f"internal = {'true' if self.internal else 'false'}\n"
                + (f'subnet6 = "{self.subnet6}"\n' if self.subnet6 else ""))


def _subnet6(name: str, subnet6: str) -> ipaddress.IPv6Network:
    try:
        net = ipaddress.IPv6Network(subnet6)
    except ValueError as e:
        raise UsageError(f"network {name}: invalid IPv6 subnet {subnet6!r}: {e}") from None
    if net.prefixlen > 120:
        raise UsageError(f"network {name}: IPv6 subnet {subnet6} is too small", hint="use a /64 (or up to /120)")
    return net


def ula_subnet(name: str) -> str:
    """An IPv6 /64 for `--ipv6` without a v6 --subnet: a unique local one derived from the name."""
    h = zlib.crc32(name.encode())
    return str(ipaddress.IPv6Network(f"fd89:{h >> 16:x}:{h & 0xFFFF:x}::/64"))


def definition_path(name: str) -> str:
    return config_path("networks", f"{name}.toml")


def load(name: str) -> Network:
    """The network's definition; the default network is written on first use."""
    if name == VETH_NETWORK:
        return Network(name, VETH_SUBNET)
    path = definition_path(name)
    try:
        with open(path, "rb") as f:
            data = f.read()
        raw = _as_written(data)
        if raw is None:  # edited by hand: TOML in full
            import tomllib

            raw = tomllib.loads(data.decode())
    except FileNotFoundError:
        if name != DEFAULT_NETWORK:
            raise UsageError(f"no such network: {name}", hint="see 'pymachine network ls'") from None
        net = Network(name, DEFAULT_SUBNET)
        save(net)
        return net
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read network {name} ({path}): {e}") from None
    gateway, subnet6 = raw.get("gateway"), raw.get("subnet6")
    return Network(name, str(raw.get("subnet", "")), None if gateway is None else str(gateway),
                   bool(raw.get("internal", False)), None if subnet6 is None else str(subnet6))


def _as_written(data: bytes) -> dict[str, object] | None:
    """The definition as to_toml() writes it (`key = "text"` and `key = true|false` lines), read
    without tomllib (~5 ms of imports on every start); None for anything else."""
    raw: dict[str, object] = {}
    for line in data.decode(errors="replace").splitlines():
        key, sep, value = line.partition(" = ")
        if not sep or not key.isidentifier():
            return None
        if value in ("true", "false"):
            raw[key] = value == "true"
        elif len(value) >= 2 and value[0] == value[-1] == '"' and not set(value[1:-1]) & {'"', "\\"}:
            raw[key] = value[1:-1]
        else:
            return None
    return raw


def exists(name: str) -> bool:
    return name == DEFAULT_NETWORK or os.path.exists(definition_path(name))


def list_names() -> list[str]:
    """Every defined network, the default one included (defined or not yet)."""
    try:
        names = {f[:-5] for f in os.listdir(config_path("networks")) if f.endswith(".toml")}
    except FileNotFoundError:
        names = set()
    return sorted(names | {DEFAULT_NETWORK})


def overlap(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network,
            others: Mapping[str, ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str | None:
    """The first of `others` (what -> subnet) that overlaps `subnet`, if any (one IP version)."""
    for what, other in others.items():
        if subnet.version == other.version and subnet.overlaps(other):
            return what
    return None


# Where `network create` without --subnet looks for a free /24: 10.90.0.0/24 onwards (the
# default network has 10.89.0.0/16), as docker walks its default address pools.
AUTO_POOL = ipaddress.IPv4Network("10.90.0.0/15")


def free_subnet(taken: dict[str, ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    for candidate in AUTO_POOL.subnets(new_prefix=24):
        if overlap(candidate, taken) is None:
            return candidate
    raise UsageError(f"no free /24 left in {AUTO_POOL}", hint="give one with --subnet")


def save(net: Network) -> None:
    path = definition_path(net.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_atomic(path, net.to_toml())


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def leases_path(network: str) -> str:
    return run_path("networks", f"{network}.json")


@contextmanager
def locked() -> Iterator[int]:
    """Hold the networks' lock: leases, bridges and pymachine's nft table change under it. Yields
    the lock file's descriptor: a child forked meanwhile shares the lock (an flock belongs to the
    open file), and holds it after this process has let go (netsetup.release's deferred work)."""
    os.makedirs(run_path("networks"), exist_ok=True)
    fd = os.open(run_path("networks", "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def read_leases(network: str) -> dict[str, dict[str, object]]:
    try:
        with open(leases_path(network)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def write_leases(network: str, leases: dict[str, dict[str, object]]) -> None:
    if not leases:
        try:
            os.unlink(leases_path(network))
        except FileNotFoundError:
            pass
        return
    os.makedirs(run_path("networks"), exist_ok=True)
    _write_atomic(leases_path(network), json.dumps(leases, indent=1, sort_keys=True) + "\n")


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a PID's holder from a later process reusing it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def holder_alive(lease: dict[str, object]) -> bool:
    pid, start = lease.get("pid"), lease.get("start")
    return isinstance(pid, int) and pid > 0 and process_start_time(pid) == start


def allocate(net: Network, name: str, pid: int, ports: list[list[object]] | None = None, *,
             ip: str | None = None, aliases: tuple[str, ...] = (), ifname: str = "eth0") -> ipaddress.IPv4Address:
    """Lease a free address of `net` (or `ip`, if free) to container `name` whose init is `pid`.
    Caller holds the lock. A container holds one lease per network: a restart replaces its old one."""
    leases = {addr: lease for addr, lease in read_leases(net.name).items()
              if lease.get("name") != name and holder_alive(lease)}
    taken = {*leases, str(net.gateway)}
    candidates = (_p2p_hosts(net) if net.point_to_point else net.subnet.hosts())
    host = _static(net, ip, taken, leases) if ip else next((h for h in candidates if str(h) not in taken), None)
    if host is None:
        raise UsageError(f"network {net.name}: no free address in {net.subnet}")
    lease: dict[str, object] = {"name": name, "pid": pid, "start": process_start_time(pid), "ifname": ifname}
    if ports:
        lease["ports"] = ports
    if aliases:
        lease["aliases"] = list(aliases)
    leases[str(host)] = lease
    write_leases(net.name, leases)
    return host


def _p2p_hosts(net: Network) -> Iterator[ipaddress.IPv4Address]:
    """The container side (.2) of each /30 of the veth pool."""
    for block in net.subnet.subnets(new_prefix=30):
        yield block.network_address + 2


def p2p_gateway(address: str) -> ipaddress.IPv4Address:
    """The host side of a veth container's /30."""
    return ipaddress.IPv4Address(address) - 1


def _static(net: Network, ip: str, taken: set[str], leases: dict[str, dict[str, object]]) -> ipaddress.IPv4Address:
    try:
        host = ipaddress.IPv4Address(ip)
    except ValueError:
        raise UsageError(f"invalid --ip {ip!r}: not an IPv4 address") from None
    if host not in net.subnet or host in (net.subnet.network_address, net.subnet.broadcast_address):
        raise UsageError(f"--ip {ip} is not a host address of network {net.name} ({net.subnet})")
    if ip in taken:
        holder = leases.get(ip, {}).get("name", "the gateway")
        raise ConflictError(f"address {ip} on network {net.name} is in use by {holder}")
    return host


def release(network: str, name: str | None) -> bool:
    """Free the leases of container `name` (and any whose holder is gone). Caller holds the lock.
    True if the network has no lease left."""
    leases = read_leases(network)
    kept = {ip: lease for ip, lease in leases.items() if lease.get("name") != name and holder_alive(lease)}
    if kept != leases:
        write_leases(network, kept)
    return not kept


def live_leases(network: str) -> dict[str, dict[str, object]]:
    return {ip: lease for ip, lease in read_leases(network).items() if holder_alive(lease)}


def lease_of(network: str, name: str) -> str | None:
    for ip, lease in read_leases(network).items():
        if lease.get("name") == name:
            return ip
    return None


def networks_with_leases() -> list[str]:
    try:
        return sorted(f[:-5] for f in os.listdir(run_path("networks")) if f.endswith(".json"))
    except FileNotFoundError:
        return []
