"""User networks: `pymachine network create/ls/inspect/rm/prune/connect/disconnect`, `--network
NAME`, names and aliases per network, `--ip`, `--internal`, `-P` and `-p PORT`. Checked with the
real clients (`ip -j`, `nft -j`, machinectl, HTTP) in the test host's own network namespace.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from helpers import HTTP_GET, AnyHost, pm
from images import build
from test_network import Snapshot, kill_when, leases, links, nft_tables, snapshot, unique
from testhost import UPLINK6_ADDRESS, UPLINK_ADDRESS

pytestmark = pytest.mark.integration


@pytest.fixture
def clean(host: AnyHost) -> Iterator[Snapshot]:
    """Links, tables and leases before the test; the same after it."""
    before = snapshot(host)
    assert "inet pymachine" not in before[1] and before[2] == {}, before
    yield before
    host.assert_no_leftovers(timeout=15)


@pytest.fixture
def networks(host: AnyHost) -> Iterator[list[str]]:
    """Names of the networks a test creates: removed afterwards (the containers first)."""
    made: list[str] = []
    yield made
    for name in made:
        pm(host, "network", "rm", name)
    assert not set(made) & set(pm(host, "network", "ls", "-q").stdout.split())


def create(host: AnyHost, made: list[str], *args: str) -> str:
    name = unique("net")
    made.append(name)
    r = pm(host, "network", "create", *args, name)
    assert r.returncode == 0 and r.stdout == f"{name}\n", r.stderr
    return name


def inspect(host: AnyHost, name: str) -> dict[str, object]:
    r = pm(host, "network", "inspect", name)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)[0]
    assert isinstance(data, dict)
    return data


def addr_of(host: AnyHost, container: str, ifname: str) -> list[str]:
    """The container's IPv4 addresses on ifname: `ip -j addr` in its namespace (busybox's ip has no -j)."""
    out = host.run(["sh", "-c", f"nsenter -t $(machinectl show -p Leader --value {container}) -n "
                    f"ip -j -4 addr show dev {ifname}"])
    if out.returncode != 0:
        return []
    return [a["local"] for link in json.loads(out.stdout) for a in link["addr_info"] if "local" in a]


def test_two_containers_on_a_user_network_reach_each_other_by_name_and_alias(
        host: AnyHost, clean: Snapshot, networks: list[str]) -> None:
    name = create(host, networks, "--subnet", "10.77.0.0/24")
    data = inspect(host, name)
    assert data["IPAM"] == {"Driver": "default", "Config": [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.1"}]}
    bridge = data["Options"]["com.docker.network.bridge.name"]  # type: ignore[index]
    assert bridge not in links(host), "the bridge is made when a container first uses the network"
    first, second = unique("db"), unique("app")
    try:
        r = pm(host, "run", "-d", "--name", first, "--network", name, "--network-alias", "database",
               "--ip", "10.77.0.50", "busybox", "sleep", "600")
        assert r.returncode == 0, r.stderr
        assert addr_of(host, first, "eth0") == ["10.77.0.50"]
        settings = json.loads(pm(host, "inspect", first).stdout)[0]["NetworkSettings"]
        assert settings["IPAddress"] == "10.77.0.50" and settings["Gateway"] == "10.77.0.1", settings
        assert settings["Networks"][name]["Aliases"] == ["database"], settings
        assert pm(host, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", first).stdout == "10.77.0.50\n"
        assert bridge in links(host)
        ruleset = json.loads(host.run(["nft", "-j", "list", "table", "inet", "pymachine"], check=True).stdout)
        assert "10.77.0.0" in json.dumps(ruleset), "the network's masquerade rule"
        assert nft_tables(host) == sorted([*clean[1], "inet pymachine"]), "only pymachine's table is added"
        r = pm(host, "run", "--rm", "--name", second, "--network", name, "--dns-search", "corp.example",
               "--dns-option", "ndots:2", "busybox", "sh", "-c",
               f"ping -c1 -W2 {first} >/dev/null && ping -c1 -W2 database >/dev/null && echo reached; "
               "cat /etc/resolv.conf")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("reached\n"), r.stdout
        assert "search corp.example" in r.stdout and "options ndots:2" in r.stdout
        assert f"\t{second}" not in pm(host, "exec", first, "cat", "/etc/hosts").stdout, "gone with the container"
        listed = pm(host, "network", "ls").stdout
        assert any(line.split()[0] == name and line.endswith(first) for line in listed.splitlines()), listed
        assert inspect(host, name)["Containers"][first]["IPv4Address"] == "10.77.0.50/24"  # type: ignore[index]
        r = pm(host, "network", "rm", name)
        assert r.returncode == 125 and r.stderr.splitlines()[0] == f"pymachine: network {name} is in use by {first}"
        taken = pm(host, "run", "--rm", "--network", name, "--ip", "10.77.0.50", "busybox", "true")
        assert taken.returncode == 125 and f"address 10.77.0.50 on network {name} is in use by {first}" in taken.stderr
    finally:
        pm(host, "rm", "-f", first)
    assert bridge not in links(host) and snapshot(host) == clean


def test_overlapping_subnets_and_unknown_networks_are_refused(
        host: AnyHost, clean: Snapshot, networks: list[str]) -> None:
    before = pm(host, "network", "ls", "-q").stdout
    r = pm(host, "network", "create", "--subnet", "10.89.7.0/24", unique("net"))
    assert r.returncode == 125 and r.stderr.splitlines()[0] == (
        "pymachine: subnet 10.89.7.0/24 overlaps network pymachine"), r.stderr
    r = pm(host, "network", "create", "--subnet", "10.231.0.0/16", unique("net"))
    assert r.returncode == 125 and r.stderr.splitlines()[0] == (
        "pymachine: subnet 10.231.0.0/16 overlaps the host's route to 10.231.0.0/24 (dev uplink0)"), r.stderr
    first = create(host, networks)
    assert inspect(host, first)["IPAM"]["Config"][0]["Subnet"] == "10.90.0.0/24"  # type: ignore[index]
    r = pm(host, "network", "create", "--subnet", "10.90.0.128/25", unique("net"))
    assert r.returncode == 125 and f"overlaps network {first}" in r.stderr
    assert pm(host, "network", "ls", "-q").stdout.split() == sorted([*before.split(), first])
    missing = unique("nosuch")
    r = pm(host, "run", "--rm", "--network", missing, "busybox", "true")
    assert r.returncode == 125 and r.stderr.splitlines()[0] == f"pymachine: no such network: {missing}", r.stderr
    r = pm(host, "run", "-d", "--name", unique("x"), "--network", missing, "busybox", "true")
    assert r.returncode == 125 and "no such network" in r.stderr
    assert pm(host, "ps", "-aq").stdout == "" or missing not in pm(host, "ps", "-a").stdout
    assert snapshot(host) == clean
    r = pm(host, "network", "prune")
    assert r.returncode == 0 and first in r.stdout.splitlines(), r.stdout
    networks.remove(first)


def test_an_internal_network_has_no_way_out(host: AnyHost, clean: Snapshot, networks: list[str]) -> None:
    name = create(host, networks, "--internal", "--subnet", "10.78.0.0/24")
    r = pm(host, "run", "--rm", "--network", name, "busybox", "sh", "-c",
           f"ping -c1 -W2 10.78.0.1 >/dev/null && echo gateway; ip route; ping -c1 -W2 {UPLINK_ADDRESS} || echo no-way")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("gateway\n") and "default" not in r.stdout and r.stdout.endswith("no-way\n"), r.stdout
    assert inspect(host, name)["Internal"] is True
    assert snapshot(host) == clean


def test_connect_and_disconnect_a_running_container(host: AnyHost, clean: Snapshot, networks: list[str]) -> None:
    name = create(host, networks, "--subnet", "10.79.0.0/24")
    web, client = unique("web"), unique("cli")
    try:
        r = pm(host, "run", "-d", "--name", web, "--network", "bridge", "busybox", "sleep", "600")
        assert r.returncode == 0, r.stderr
        r = pm(host, "network", "connect", "--ip", "10.79.0.9", "--alias", "www", name, web)
        assert r.returncode == 0, r.stderr
        assert addr_of(host, web, "eth1") == ["10.79.0.9"]
        assert addr_of(host, web, "eth0")[0].startswith("10.89."), "its first network stays"
        r = pm(host, "network", "connect", name, web)
        assert r.returncode == 125 and f"container {web} is already connected to network {name}" in r.stderr
        r = pm(host, "run", "--rm", "--name", client, "--network", name, "busybox", "sh", "-c",
               f"ping -c1 -W2 {web} >/dev/null && ping -c1 -W2 www >/dev/null && echo reached")
        assert r.stdout == "reached\n", (r.stdout, r.stderr)
        assert pm(host, "network", "disconnect", name, web).returncode == 0
        assert addr_of(host, web, "eth1") == []
        assert [lease["name"] for lease in leases(host).values()] == [web], "the bridge lease stays"
        r = pm(host, "network", "disconnect", name, web)
        assert r.returncode == 125 and f"container {web} is not connected to network {name}" in r.stderr
        r = pm(host, "network", "connect", name, unique("nosuch"))
        assert r.returncode == 125 and "no such container" in r.stderr
    finally:
        pm(host, "rm", "-f", web)
    assert snapshot(host) == clean


def test_a_connection_is_kept_across_restarts_until_disconnected(
        host: AnyHost, clean: Snapshot, networks: list[str]) -> None:
    """As docker: `network connect` is written to the container's definition (its `connections`
    key), so a restart joins the network again with the same --ip and aliases; `disconnect`
    removes it there too; a stopped container can be connected, and joins at its start."""
    name = create(host, networks, "--subnet", "10.78.0.0/24")
    web = unique("web")
    definition = f"/etc/pymachine/machines/{web}.toml"
    try:
        r = pm(host, "run", "-d", "--name", web, "--network", "bridge", "busybox", "sleep", "600")
        assert r.returncode == 0, r.stderr
        r = pm(host, "network", "connect", "--ip", "10.78.0.9", "--alias", "www", name, web)
        assert r.returncode == 0, r.stderr
        text = host.run(["cat", definition], check=True).stdout
        assert f'connections = ["{name},ip=10.78.0.9,alias=www"]' in text, text
        r = pm(host, "restart", web)
        assert r.returncode == 0, r.stderr
        assert addr_of(host, web, "eth1") == ["10.78.0.9"], "joined again at the restart"
        assert addr_of(host, web, "eth0")[0].startswith("10.89.")
        aliases = json.loads(pm(host, "inspect", web).stdout)[0]["NetworkSettings"]["Networks"][name]["Aliases"]
        assert aliases == ["www"]
        r = pm(host, "network", "rm", name)
        assert r.returncode == 125 and f"in use by {web}" in r.stderr, r.stderr
        assert pm(host, "network", "disconnect", name, web).returncode == 0
        assert "connections" not in host.run(["cat", definition], check=True).stdout
        assert pm(host, "restart", web).returncode == 0
        assert addr_of(host, web, "eth1") == [], "not joined again"
        assert pm(host, "stop", web).returncode == 0
        r = pm(host, "network", "connect", name, web)  # stopped: kept, joined at the start
        assert r.returncode == 0, r.stderr
        assert pm(host, "start", web).returncode == 0
        assert addr_of(host, web, "eth1")[0].startswith("10.78.0."), "joined at the start"
        assert pm(host, "stop", web).returncode == 0
        assert pm(host, "network", "disconnect", name, web).returncode == 0, "a stopped one: kept no more"
        r = pm(host, "network", "disconnect", name, web)
        assert r.returncode == 125 and f"container {web} is not connected to network {name}" in r.stderr
    finally:
        pm(host, "rm", "-f", web)
    assert snapshot(host) == clean


@pytest.fixture(scope="module")
def exposing_image(host: AnyHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """busybox with ExposedPorts 80/tcp and 53/udp (umoci config)."""
    layout = build.umoci_two_layers(tmp_path_factory.mktemp("umoci"))
    build.run("umoci", "config", "--image", f"{layout}:latest", "--config.exposedports=80/tcp",
              "--config.exposedports=53/udp")
    name = f"expose-{secrets.token_hex(3)}:1"
    r = pm(host, "image", "import", "-q", str(layout), "--name", name)
    assert r.returncode == 0, r.stderr
    yield name
    pm(host, "image", "rm", "-f", name)


def published(host: AnyHost, name: str) -> dict[str, int]:
    out = pm(host, "port", name).stdout
    return {line.split(" -> ")[0]: int(line.rsplit(":", 1)[1]) for line in out.splitlines()}


def test_publish_all_and_a_free_host_port(host: AnyHost, clean: Snapshot, exposing_image: str) -> None:
    name = unique("web")
    try:
        r = pm(host, "run", "-d", "--name", name, "--network", "bridge", "-P", "-p", "8081", exposing_image,
               "sh", "-c", "mkdir -p /www && echo all > /www/index.html && "
               "busybox httpd -p 8081 -h /www && exec busybox httpd -f -p 80 -h /www")
        assert r.returncode == 0, r.stderr
        ports = published(host, name)
        assert sorted(ports) == ["53/udp", "80/tcp", "8081/tcp"], ports
        assert all(32768 <= p < 61000 for p in ports.values())
        assert ports["80/tcp"] != ports["8081/tcp"], "distinct free host ports (per protocol)"
        for port in (ports["80/tcp"], ports["8081/tcp"]):
            page = host.run(["python3", "-c", HTTP_GET, f"http://127.0.0.1:{port}/"], check=True, timeout=60)
            assert page.stdout == "all\n"
        row = next(line for line in pm(host, "ps").stdout.splitlines() if line.startswith(name))
        assert f"0.0.0.0:{ports['80/tcp']}->80/tcp" in row, row
        fmt = pm(host, "ps", "--format", "{{.Names}} {{.Ports}}").stdout
        assert f"{name} " in fmt and f":{ports['8081/tcp']}->8081/tcp" in fmt
        assert pm(host, "inspect", "-f", "{{.HostConfig.PublishAllPorts}}", name).stdout.strip() == "true"
    finally:
        pm(host, "rm", "-f", name)
    assert snapshot(host) == clean


def test_container_and_ns_modes_join_another_namespace(host: AnyHost, clean: Snapshot) -> None:
    web = unique("web")
    try:
        r = pm(host, "run", "-d", "--name", web, "--network", "bridge", "busybox", "sh", "-c",
               "mkdir -p /www && echo shared > /www/index.html && exec httpd -f -p 80 -h /www")
        assert r.returncode == 0, r.stderr
        address = next(ip for ip, lease in leases(host).items() if lease["name"] == web)
        r = pm(host, "run", "--rm", "--network", f"container:{web}", "busybox", "sh", "-c",
               "ip -o -4 addr show eth0; wget -qO- http://127.0.0.1/; cat /etc/hosts")
        assert r.returncode == 0, r.stderr
        assert f"inet {address}/" in r.stdout and "shared\n" in r.stdout, r.stdout
        assert any(line.startswith(f"{address}\t") and web in line for line in r.stdout.splitlines()), r.stdout
        leader = host.run(["machinectl", "show", "-p", "Leader", "--value", web], check=True).stdout.strip()
        r = pm(host, "run", "--rm", "--network", f"ns:/proc/{leader}/ns/net", "busybox", "ip", "-o", "-4", "addr")
        assert r.returncode == 0 and f"inet {address}/" in r.stdout, (r.stdout, r.stderr)
        r = pm(host, "run", "--rm", "--network", f"container:{web}", "-p", "8080:80", "busybox", "true")
        assert r.returncode == 125 and "published ports need" in r.stderr, r.stderr
        assert [lease["name"] for lease in leases(host).values()] == [web], "joining takes no lease"
    finally:
        pm(host, "rm", "-f", web)
    r = pm(host, "run", "--rm", "--network", f"container:{web}", "busybox", "true")
    assert r.returncode == 125 and r.stderr.splitlines()[0] == f"pymachine: no such container: {web}", r.stderr
    r = pm(host, "run", "--rm", "--network", "ns:/run/netns/nosuch", "busybox", "true")
    assert r.returncode == 125 and "no such network namespace: /run/netns/nosuch" in r.stderr, r.stderr
    assert snapshot(host) == clean


def test_a_container_reaches_its_own_published_port_through_the_host(host: AnyHost, clean: Snapshot) -> None:
    """Hairpin to itself: with br_netfilter loaded (as in this test host) the DNAT happens at the
    bridge, and the frame goes back out of the port it came in on: the port has hairpin on."""
    web = unique("web")
    try:
        r = pm(host, "run", "-d", "--name", web, "--network", "bridge", "-p", "8090:80", "busybox", "sh", "-c",
               "mkdir -p /www && echo self > /www/index.html && exec httpd -f -p 80 -h /www")
        assert r.returncode == 0, r.stderr
        r = pm(host, "exec", web, "sh", "-c",
               f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {UPLINK_ADDRESS} 8090")
        assert r.stdout.endswith("self\n"), (r.stdout, r.stderr)
        port = next(link for link in links(host) if link.startswith("pmv"))
        detail = json.loads(host.run(["ip", "-j", "-d", "link", "show", port], check=True).stdout)[0]
        assert detail["linkinfo"]["info_slave_data"]["hairpin"] is True, detail
    finally:
        pm(host, "rm", "-f", web)
    assert snapshot(host) == clean


def test_veth_mode_is_a_point_to_point_pair_with_nat_and_ports(host: AnyHost, clean: Snapshot) -> None:
    """nspawn's --network-veth, addressed by pymachine: ve-NAME on the host, host0 inside, a /30."""
    web = unique("ve")
    try:
        r = pm(host, "run", "-d", "--name", web, "--network", "veth", "-p", "8095:80", "busybox", "sh", "-c",
               "mkdir -p /www && echo p2p > /www/index.html && exec httpd -f -p 80 -h /www")
        assert r.returncode == 0, r.stderr
        outside = json.loads(host.run(["ip", "-j", "-4", "addr", "show", "dev", f"ve-{web}"], check=True).stdout)
        assert [(a["local"], a["prefixlen"]) for a in outside[0]["addr_info"]] == [("10.88.0.1", 30)]
        assert addr_of(host, web, "host0") == ["10.88.0.2"]
        r = pm(host, "exec", web, "sh", "-c",
               f"ip route | grep ^default; ping -c1 -W2 {UPLINK_ADDRESS} >/dev/null && echo up")
        lines = r.stdout.splitlines()
        assert lines[0].startswith("default via 10.88.0.1 dev host0") and lines[1:] == ["up"], r.stdout
        for address in ("127.0.0.1", UPLINK_ADDRESS):
            page = host.run(["python3", "-c", HTTP_GET, f"http://{address}:8095/"], check=True, timeout=60)
            assert page.stdout == "p2p\n", address
        assert "10.88.0.2" in host.run(["machinectl", "list", "--no-legend", "--full"], check=True).stdout
    finally:
        pm(host, "rm", "-f", web)
    assert snapshot(host) == clean


def test_an_ipv6_network_gives_each_container_both_addresses(
        host: AnyHost, clean: Snapshot, networks: list[str]) -> None:
    name = create(host, networks, "--ipv6", "--subnet", "10.80.0.0/24", "--subnet", "fd80::/64")
    assert inspect(host, name)["EnableIPv6"] is True
    first = unique("six")
    try:
        r = pm(host, "run", "-d", "--name", first, "--network", name, "busybox", "sleep", "600")
        assert r.returncode == 0, r.stderr
        out = host.run(["sh", "-c", f"nsenter -t $(machinectl show -p Leader --value {first}) -n "
                        "ip -j -6 addr show dev eth0 scope global"], check=True).stdout
        assert [a["local"] for link in json.loads(out) for a in link["addr_info"] if "local" in a] == ["fd80::2"], out
        r = pm(host, "run", "--rm", "--network", name, "busybox", "sh", "-c",
               "ping -c1 -W2 fd80::1 >/dev/null && ping -c1 -W2 fd80::2 >/dev/null && echo reached; ip -6 route")
        assert r.stdout.startswith("reached\n") and "default via fd80::1" in r.stdout, (r.stdout, r.stderr)
        ruleset = host.run(["nft", "list", "table", "inet", "pymachine"], check=True).stdout
        assert "ip6 saddr fd80::/64 ip6 daddr != fd80::/64 masquerade" in ruleset, ruleset
    finally:
        pm(host, "rm", "-f", first)
    assert snapshot(host) == clean


def test_ports_are_published_on_the_hosts_ipv6_addresses_too(
        host: AnyHost, clean: Snapshot, networks: list[str]) -> None:
    """As docker: `-p 8091:80` on a network with an IPv6 subnet answers on the host's IPv6
    addresses (the fake uplink's, the bridge's) besides its IPv4 ones; `-p [V6]:...` only there.
    `-p [::1]:...` is refused in words (the kernel routes no IPv6 loopback packet to another
    namespace); a port published on every address answers on [::1] through systemd's socket
    proxy, which connects to the container's IPv6 address."""
    name = create(host, networks, "--ipv6", "--subnet", "10.82.0.0/24", "--subnet", "fd82::/64")
    web, other = unique("web6"), unique("web6b")
    page = "mkdir -p /www && echo six > /www/index.html && exec httpd -f -p 80 -h /www"
    try:
        r = pm(host, "run", "-d", "--name", web, "--network", name, "-p", "8091:80", "busybox", "sh", "-c", page)
        assert r.returncode == 0, r.stderr
        for url in (f"http://[{UPLINK6_ADDRESS}]:8091/", "http://[fd82::1]:8091/", f"http://{UPLINK_ADDRESS}:8091/",
                    "http://127.0.0.1:8091/", "http://[::1]:8091/"):
            got = host.run(["python3", "-c", HTTP_GET, url])
            assert got.stdout == "six\n", (url, got.stdout, got.stderr)
        r = pm(host, "exec", web, "sh", "-c", f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {UPLINK6_ADDRESS} 8091")
        assert r.stdout.endswith("six\n"), ("hairpin over IPv6", r.stdout, r.stderr)
        r = pm(host, "run", "-d", "--name", other, "--network", name, "-p", f"[{UPLINK6_ADDRESS}]:8092:80",
               "busybox", "sh", "-c", page)
        assert r.returncode == 0, r.stderr
        got = host.run(["python3", "-c", HTTP_GET, f"http://[{UPLINK6_ADDRESS}]:8092/"])
        assert got.stdout == "six\n", got.stderr
        ruleset = host.run(["nft", "list", "table", "inet", "pymachine"], check=True).stdout
        assert f"ip6 daddr {UPLINK6_ADDRESS} fib daddr type local tcp dport 8092 dnat ip6 to [fd82::3]:80" in ruleset
        assert "dport 8092 dnat ip to" not in ruleset, ruleset
        assert pm(host, "port", other).stdout == f"80/tcp -> [{UPLINK6_ADDRESS}]:8092\n"
        proxy = host.run(["systemctl", "show", "-p", "ExecStart", f"pymachine-proxy-{web}-8091.service"]).stdout
        assert "fd82::2:80" in proxy, proxy
        assert host.run(["systemctl", "cat", f"pymachine-proxy-{other}-8092.socket"]).returncode != 0, \
            "a port published on one address only gets no [::1] side"
        r = pm(host, "run", "--rm", "--network", name, "-p", "[::1]:8093:80", "busybox", "true")
        assert r.returncode == 125 and "::1 cannot be published" in r.stderr, r.stderr
        r = pm(host, "run", "--rm", "-p", f"[{UPLINK6_ADDRESS}]:8093:80", "busybox", "true")
        assert r.returncode == 125 and "has no IPv6 subnet" in r.stderr, r.stderr
    finally:
        pm(host, "rm", "-f", web, other)
    assert snapshot(host) == clean


def test_a_crash_leaves_nothing_that_gc_or_a_hand_removed_definition_trips_over(
        host: AnyHost, clean: Snapshot, networks: list[str]) -> None:
    """A kill -9 leaves a lease whose holder is gone (and the container's record): `network rm`
    refuses while the record names the network; with the definition removed by hand, the next
    start on another network still works and `gc` frees the dead lease and the bridge."""
    name = create(host, networks, "--subnet", "10.81.0.0/24")
    bridge = inspect(host, name)["Options"]["com.docker.network.bridge.name"]  # type: ignore[index]
    victim = unique("crash")
    # the lease, and its record (saved while systemd makes the scope; the lease may come first)
    kill_when(host, ["pymachine", "run", "--rm", "--name", victim, "--network", name, "busybox", "sleep", "100"],
              (lambda: bool(_leases_of(host, name)), "the lease"),
              (lambda: pm(host, "inspect", victim).returncode == 0, "the container's record"))
    assert _leases_of(host, name) and bridge in links(host), "left by the kill"
    r = pm(host, "network", "rm", name)
    assert r.returncode == 125 and f"network {name} is in use by {victim}" in r.stderr, r.stderr
    host.run(["rm", f"/etc/pymachine/networks/{name}.toml"], check=True)  # by hand
    networks.remove(name)
    r = pm(host, "run", "--rm", "--network", "bridge", "busybox", "true")
    assert r.returncode == 0, r.stderr
    pm(host, "rm", "-f", victim)
    pm(host, "gc")
    assert not _leases_of(host, name) and bridge not in links(host)
    assert snapshot(host) == clean


def _leases_of(host: AnyHost, network: str) -> dict[str, dict[str, object]]:
    r = host.run(["cat", f"/run/pymachine/networks/{network}.json"])
    return json.loads(r.stdout) if r.returncode == 0 else {}
