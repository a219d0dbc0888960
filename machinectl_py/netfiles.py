"""/etc/hosts and /etc/resolv.conf of a container with a network namespace of its own.

Written under /run/pymachine/netfiles/NAME/ before the container's init is forked and bound
over the image's files (plan.Bind, is_file). The resolver is the host's upstream one: the
127.0.0.53 stub of systemd-resolved listens in the host's namespace only, so its upstream list
(/run/systemd/resolve/resolv.conf) is used when it exists, as docker and nspawn do, and
loopback servers are left out of /etc/resolv.conf; `--dns` replaces the servers. /etc/hosts
names the container itself and, on a network, every other container there (kept current as
containers join and leave: netsetup calls refresh() under the networks' lock). Files are
rewritten in place, never renamed over: a bind mount holds the inode it was made with.
"""

from __future__ import annotations

import os

from machinectl_py.paths import run_path
from machinectl_py.plan import Bind

UPSTREAM = ("/run/systemd/resolve/resolv.conf", "/etc/resolv.conf")
HOSTS_BASE = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def files_dir(name: str) -> str:
    return run_path("netfiles", name)


def prepare(name: str, hostname: str, add_hosts: tuple[str, ...], dns: tuple[str, ...],
            search: tuple[str, ...] = (), options: tuple[str, ...] = ()) -> list[Bind]:
    """The container's two files, written now; their bind ops for its plan."""
    path = files_dir(name)
    os.makedirs(path, mode=0o755, exist_ok=True)
    _write_in_place(os.path.join(path, "names"), "\n".join([hostname, *add_hosts]) + "\n")
    _write_in_place(os.path.join(path, "hosts"), hosts_text(name, hostname, None, {}, add_hosts))
    _write_in_place(os.path.join(path, "resolv.conf"), resolv_text(dns, _upstream(), search, options))
    return [Bind(source=os.path.join(path, "hosts"), target="/etc/hosts", is_file=True),
            Bind(source=os.path.join(path, "resolv.conf"), target="/etc/resolv.conf", is_file=True)]


def remove(name: str) -> None:
    from machinectl_py.state import remove_tree  # not shutil: it imports bz2 and lzma, ~3 ms

    remove_tree(files_dir(name))


def _upstream() -> str:
    for path in UPSTREAM:
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            continue
    return ""


def resolv_text(dns: tuple[str, ...], upstream: str, search: tuple[str, ...] = (),
                options: tuple[str, ...] = ()) -> str:
    """--dns servers, or the upstream file's servers that are reachable from another namespace
    (not loopback), with its search and options lines unless --dns-search, --dns-option
    replace them (as docker: each flag replaces the host's line of its kind)."""
    lines = []
    for line in upstream.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            if not dns and not words[1].startswith("127.") and words[1] != "::1":
                lines.append(f"nameserver {words[1]}")
        elif (words[0] in ("search", "domain") and not search) or (words[0] == "options" and not options):
            lines.append(" ".join(words))
    lines += [f"nameserver {server}" for server in dns]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return ("# Written by pymachine (the host's upstream servers; --dns, --dns-search, --dns-option replace "
            "them)\n" + "\n".join(lines) + "\n")


def hosts_text(name: str, hostname: str, address: str | None, peers: dict[str, str],
               add_hosts: tuple[str, ...]) -> str:
    """localhost, the container's own names (on its address, else on 127.0.1.1), the other
    containers of its network, then --add-host NAME:IP entries."""
    own = " ".join(dict.fromkeys([hostname, name]))
    lines = [HOSTS_BASE.rstrip("\n"), f"{address or '127.0.1.1'}\t{own}"]
    lines += [f"{ip}\t{peer}" for peer, ip in sorted(peers.items()) if peer != name]
    for entry in add_hosts:
        host, _, ip = entry.partition(":")
        lines.append(f"{ip}\t{host}")
    return "\n".join(lines) + "\n"


def refresh(name: str, address: str | None, peers: dict[str, str]) -> None:
    """Rewrite container `name`'s /etc/hosts with its address and its network's containers."""
    path = files_dir(name)
    try:
        with open(os.path.join(path, "names")) as f:
            hostname, *add_hosts = f.read().splitlines()
    except (OSError, ValueError):
        return  # not a container with our files (or gone meanwhile)
    _write_in_place(os.path.join(path, "hosts"), hosts_text(name, hostname, address, peers, tuple(add_hosts)))


def _write_in_place(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)
