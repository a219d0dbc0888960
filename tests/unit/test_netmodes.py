"""Network modes: which get a namespace of their own, which capabilities they take away."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from machinectl_py import ipam, netfiles, netsetup, network, spec
from machinectl_py.errors import ConflictError, UsageError
from machinectl_py.policy import CAPABILITIES

NET_RAW = 1 << CAPABILITIES["NET_RAW"]
CHOWN = 1 << CAPABILITIES["CHOWN"]


def test_modes_match_the_spec_check() -> None:
    assert set(network.MODES) == set(spec.NETWORK_MODES)


def test_none_and_its_alias_private_get_a_namespace_host_does_not() -> None:
    assert network.is_private("none") and network.is_private("private")
    assert not network.is_private("host")


def test_host_mode_drops_net_raw_unless_added() -> None:
    mask = NET_RAW | CHOWN
    assert network.capability_mask("host", mask) == CHOWN
    assert network.capability_mask("host", mask, frozenset({"NET_RAW"})) == mask
    assert network.capability_mask("none", mask) == mask


def test_leases_are_distinct_and_freed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("PYMACHINE_CONFIG_DIR", str(tmp_path / "etc"))
    net = ipam.load(ipam.DEFAULT_NETWORK)  # written on first use
    assert (tmp_path / "etc/networks/pymachine.toml").read_text().startswith('subnet = "10.89.0.0/16"')
    me = os.getpid()
    with ipam.locked():
        first = ipam.allocate(net, "a", me)
        second = ipam.allocate(net, "b", me)
        again = ipam.allocate(net, "a", me)  # a restart replaces its own lease
    assert (str(first), str(second)) == ("10.89.0.2", "10.89.0.3") and again == first
    assert ipam.lease_of("pymachine", "b") == "10.89.0.3"
    with ipam.locked():
        assert not ipam.release("pymachine", "a")
        assert ipam.release("pymachine", "b")
    assert not (tmp_path / "run/networks/pymachine.json").exists()


def test_a_lease_whose_holder_is_gone_is_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_RUN_DIR", str(tmp_path))
    ipam.write_leases("n", {"10.0.0.2": {"name": "dead", "pid": 2**22 + 1, "start": 1}})
    net = ipam.Network("n", "10.0.0.0/29")
    with ipam.locked():
        assert str(ipam.allocate(net, "x", os.getpid())) == "10.0.0.2"
        assert ipam.release("n", None) is False  # x's holder (this process) lives


@pytest.mark.parametrize(("subnet", "gateway", "error"), [
    ("10.0.0.0/33", None, "invalid subnet"), ("10.0.0.0/31", None, "too small"),
    ("10.0.0.0/24", "10.0.1.1", "not a host address"), ("10.0.0.0/24", "10.0.0.255", "not a host address"),
])
def test_bad_networks_are_refused(subnet: str, gateway: str | None, error: str) -> None:
    with pytest.raises(UsageError, match=error):
        ipam.Network("n", subnet, gateway)


def test_ruleset_is_only_pymachines_table() -> None:
    empty = netsetup.ruleset([])
    assert empty == "table inet pymachine\ndelete table inet pymachine\n"
    text = netsetup.ruleset([ipam.Network("pymachine", "10.89.0.0/16"), ipam.Network("app", "10.90.0.0/24",
                                                                                    internal=True)])
    assert "ip saddr 10.89.0.0/16 ip daddr != 10.89.0.0/16 masquerade" in text
    assert "ip daddr != 10.90.0.0/24 masquerade" not in text and 'iifname "pm-app" oifname != "pm-app" drop' in text
    tables = [line for line in text.splitlines() if line.startswith("table")]
    assert tables == ["table inet pymachine", "table inet pymachine {"]
    assert netsetup.host_veth("web") == netsetup.host_veth("web") and len(netsetup.host_veth("web")) <= 15


@pytest.mark.parametrize(("items", "ports"), [
    (["8080:80"], (":8080:80/tcp",)),
    (["127.0.0.1:8080:80/udp"], ("127.0.0.1:8080:80/udp",)),
    (["80"], ("::80/tcp",)),
    (["10.0.0.1::53/udp"], ("10.0.0.1::53/udp",)),
    (["8080-8081:80-81"], (":8080:80/tcp", ":8081:81/tcp")),
    (["[::]:8080:80"], ("[::]:8080:80/tcp",)),
    (["[fd31::2]::53/udp"], ("[fd31::2]::53/udp",)),
])
def test_ports_parse_to_one_canonical_string_each(items: list[str], ports: tuple[str, ...]) -> None:
    assert network.parse_ports(items) == ports
    _, _, inner, proto = network.split_port(ports[0])
    assert inner in (80, 53) and proto in ("tcp", "udp")


@pytest.mark.parametrize("item", ["0", "70000", "8080:80/sctp", "1.2.3:80:80", "80-79", "8080-8082:80-81", "x:80",
                                  "[::1]:8080:80", "[fd31::2:8080:80", "[x]:8080:80", "[::]:1:8080:80", "::1:80:80"])
def test_bad_ports_are_usage_errors(item: str) -> None:
    with pytest.raises(UsageError, match="port"):
        network.parse_ports([item])


def test_ports_need_the_bridge() -> None:
    with pytest.raises(UsageError, match="published ports need") as caught:
        spec.ContainerSpec(name="a", image="i", network="host", ports=(":8080:80/tcp",)).validate()
    assert caught.value.hint == "add --network bridge"
    spec.ContainerSpec(name="a", image="i", network="bridge", ports=(":8080:80/tcp",)).validate()
    assert network.ports_inspect((":8080:80/tcp",)) == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}


def test_published_ports_dnat_from_outside_and_from_the_host() -> None:
    nets = [ipam.Network("pymachine", "10.89.0.0/16")]
    text = netsetup.ruleset(nets, [netsetup.Published("pm-pymachine", "10.89.0.2", "", 8080, 80, "tcp"),
                                   netsetup.Published("pm-pymachine", "10.89.0.3", "127.0.0.1", 53, 53, "udp")])
    rule = "fib daddr type local tcp dport 8080 dnat ip to 10.89.0.2:80"
    assert text.count(rule) == 2, "prerouting (others, hairpin) and output (the host itself)"
    assert "ip daddr 127.0.0.1 fib daddr type local udp dport 53 dnat ip to 10.89.0.3:53" in text
    assert 'oifname "pm-pymachine" ip saddr 127.0.0.0/8 masquerade' in text


def test_ipv6_host_ports_split_without_brackets_and_show_with_them() -> None:
    assert network.split_port("[fd31::2]:8080:80/tcp") == ("fd31::2", 8080, 80, "tcp")
    assert network.host_address("fd31::2") == "[fd31::2]" and network.host_address("") == "0.0.0.0"


def test_published_ports_dnat_ipv6_too_on_a_network_with_an_ipv6_subnet() -> None:
    """As docker: a port published on every address answers on the host's IPv6 ones as well
    (not ::1, which the kernel routes to no other namespace); [V6] only on IPv6, IPV4 only on IPv4."""
    nets = [ipam.Network("app", "10.80.0.0/24", subnet6="fd80::/64")]
    pubs = [netsetup.Published("pm-app", "10.80.0.2", "", 8080, 80, "tcp", "fd80::2"),
            netsetup.Published("pm-app", "10.80.0.2", "fd31::2", 8081, 80, "tcp", "fd80::2"),
            netsetup.Published("pm-app", "10.80.0.2", "10.231.0.2", 8082, 80, "tcp", "fd80::2"),
            netsetup.Published("pm-app", "10.80.0.2", "::", 8083, 80, "tcp", "fd80::2")]
    text = netsetup.ruleset(nets, pubs)
    assert text.count("fib daddr type local tcp dport 8080 dnat ip to 10.80.0.2:80") == 2
    assert text.count("ip6 daddr != ::1 fib daddr type local tcp dport 8080 dnat ip6 to [fd80::2]:80") == 2
    assert text.count("ip6 daddr fd31::2 fib daddr type local tcp dport 8081 dnat ip6 to [fd80::2]:80") == 2
    assert "dport 8081 dnat ip to" not in text and "dport 8082 dnat ip6" not in text
    assert "dport 8083 dnat ip to" not in text
    assert text.count("ip6 daddr != ::1 fib daddr type local tcp dport 8083 dnat ip6 to [fd80::2]:80") == 2
    assert 'oifname "pm-app" ip6 saddr fd80::/64 ct status dnat masquerade' in text
    v4_only = netsetup.Published("pm-pymachine", "10.89.0.2", "", 8080, 80, "tcp")
    assert v4_only.dnat() == ["fib daddr type local tcp dport 8080 dnat ip to 10.89.0.2:80"]


def test_a_published_host_port_is_taken_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_RUN_DIR", str(tmp_path))
    net = ipam.Network("n", "10.0.0.0/24")
    with ipam.locked():
        ipam.allocate(net, "web", os.getpid(), netsetup.resolve_ports("web", (":8080:80/tcp", "::81/tcp")))
        with pytest.raises(ConflictError, match="host port 8080/tcp is already published by container web"):
            netsetup.resolve_ports("web2", (":8080:80/tcp",))
        assert netsetup.resolve_ports("web2", (":8080:80/udp",)) == [["", 8080, 80, "udp"]]
        picked = netsetup.resolve_ports("web2", ("::80/tcp",))[0][1]
        assert isinstance(picked, int) and netsetup.EPHEMERAL[0] < picked < netsetup.EPHEMERAL[1]


def test_a_published_ports_ipv6_loopback_side_is_a_socket_unit_and_systemds_proxy_bound_to_the_container() -> None:
    from machinectl_py import systemd

    unit, socket, aux = systemd.loopback6_proxy_units("pymachine@web.service", "web", 8080, "10.89.0.2:80",
                                                      "/usr/lib/systemd/systemd-socket-proxyd")
    assert unit == "pymachine-proxy-web-8080.socket"
    props = dict(socket)
    assert props["Listen"] == ("a(ss)", [("Stream", "[::1]:8080")])
    assert props["BindIPv6Only"] == ("s", "ipv6-only")
    assert props["BindsTo"] == ("as", ["pymachine@web.service"]) and "After" not in props  # listening at once
    [(service, service_props)] = aux
    assert service == "pymachine-proxy-web-8080.service"
    exec_start = dict(service_props)["ExecStart"]
    assert exec_start == ("a(sasb)", [("/usr/lib/systemd/systemd-socket-proxyd",
                                       ["/usr/lib/systemd/systemd-socket-proxyd", "10.89.0.2:80"], False)])
    assert dict(service_props)["BindsTo"] == ("as", ["pymachine@web.service"])
    assert dict(service_props)["DynamicUser"] == ("b", True)


def test_resolv_conf_is_the_upstream_servers_never_a_loopback_stub() -> None:
    upstream = "# stub\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"
    text = netfiles.resolv_text((), upstream)
    assert "127.0.0.53" not in text and "nameserver 192.0.2.53" in text
    assert "search corp.example" in text and "options edns0" in text
    mine = netfiles.resolv_text(("10.0.0.53",), upstream)
    assert "192.0.2.53" not in mine and "nameserver 10.0.0.53" in mine


def test_hosts_name_the_container_its_peers_and_added_hosts() -> None:
    text = netfiles.hosts_text("web", "www", "10.89.0.2", {"web": "10.89.0.2", "db": "10.89.0.3"},
                               ("cache:10.0.0.9",))
    assert text.splitlines()[0] == "127.0.0.1\tlocalhost"
    assert "10.89.0.2\twww web" in text and "10.89.0.3\tdb" in text and "10.0.0.9\tcache" in text
    assert text.count("10.89.0.2") == 1
    assert "127.0.1.1\tweb" in netfiles.hosts_text("web", "web", None, {}, ())


@pytest.mark.parametrize("bad", [["x"], ["name:"], [":10.0.0.1"], ["na me:10.0.0.1"]])
def test_bad_host_entries_are_refused(bad: list[str]) -> None:
    with pytest.raises(UsageError, match="invalid host entry"):
        network.parse_add_hosts(bad)
    with pytest.raises(UsageError, match="invalid DNS server"):
        network.parse_dns(["dns.example"])


# -- user networks ------------------------------------------------------------------------------


def test_user_network_names_are_modes_that_attach() -> None:
    assert network.attached_network("bridge") == "pymachine" and network.attached_network("app") == "app"
    assert network.attached_network("host") is None and network.attached_network("none") is None
    assert network.is_private("app") and not spec.attaches("private")
    for bad in ("host", "bridge", "-x", "a/b", "", "x" * 65):
        with pytest.raises(UsageError, match="invalid network name"):
            spec.validate_network_name(bad)
    spec.ContainerSpec(name="a", image="i", network="app", ports=(":80:80/tcp",), ip="10.90.0.5").validate()
    with pytest.raises(UsageError, match="--ip needs the bridge or a user network"):
        spec.ContainerSpec(name="a", image="i", network="none", ip="10.0.0.2").validate()


def test_long_network_names_get_distinct_bridges() -> None:
    assert ipam.Network("app", "10.1.0.0/24").bridge == "pm-app"
    first, second = ipam.Network("frontend-net-1", "10.1.0.0/24"), ipam.Network("frontend-net-2", "10.2.0.0/24")
    assert first.bridge != second.bridge and len(first.bridge) <= ipam.IFNAMSIZ
    assert netsetup.host_veth("web", "a") != netsetup.host_veth("web", "b") != netsetup.host_veth("web")


def test_overlapping_subnets_are_found_and_a_free_one_picked() -> None:
    import ipaddress

    taken = {"network pymachine": ipaddress.IPv4Network("10.89.0.0/16"),
             "network app": ipaddress.IPv4Network("10.90.0.0/24"),
             "the host's route to 10.90.1.0/24 (dev eth0)": ipaddress.IPv4Network("10.90.1.0/24")}
    assert ipam.overlap(ipaddress.IPv4Network("10.89.3.0/24"), taken) == "network pymachine"
    assert ipam.overlap(ipaddress.IPv4Network("10.0.0.0/8"), taken) == "network pymachine"
    assert ipam.overlap(ipaddress.IPv4Network("10.91.0.0/24"), taken) is None
    assert str(ipam.free_subnet(taken)) == "10.90.2.0/24"


def test_create_refuses_an_overlap_and_rm_a_network_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from machinectl_py import cmd_network

    monkeypatch.setenv("PYMACHINE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("PYMACHINE_CONFIG_DIR", str(tmp_path / "etc"))
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setattr(netsetup, "host_routes", lambda version=4: {})  # no `ip route` here: tested live
    net = netsetup.create_network("app", [], None, False)
    assert str(net.subnet) == "10.90.0.0/24"
    assert (tmp_path / "etc/networks/app.toml").read_text() == (
        'subnet = "10.90.0.0/24"\ngateway = "10.90.0.1"\ninternal = false\n')
    with pytest.raises(ConflictError, match=r"subnet 10\.90\.0\.0/25 overlaps network app"):
        netsetup.create_network("web", ["10.90.0.0/25"], None, False)
    with pytest.raises(ConflictError, match="network app already exists"):
        netsetup.create_network("app", [], None, False)
    assert not (tmp_path / "etc/networks/web.toml").exists()
    me = {"name": "c", "pid": os.getpid(), "start": ipam.process_start_time(os.getpid())}
    ipam.write_leases("app", {"10.90.0.2": me})
    with pytest.raises(ConflictError, match="network app is in use by c"):
        cmd_network.remove("app")
    ipam.write_leases("app", {})
    cmd_network.remove("app")
    assert ipam.list_names() == ["pymachine"]


def test_a_static_address_must_be_free_and_in_the_subnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_RUN_DIR", str(tmp_path))
    net = ipam.Network("n", "10.0.0.0/24")
    with ipam.locked():
        assert str(ipam.allocate(net, "a", os.getpid(), ip="10.0.0.9", aliases=("db",))) == "10.0.0.9"
        assert str(ipam.allocate(net, "b", os.getpid())) == "10.0.0.2"
        with pytest.raises(ConflictError, match=r"address 10\.0\.0\.9 on network n is in use by a"):
            ipam.allocate(net, "c", os.getpid(), ip="10.0.0.9")
        with pytest.raises(ConflictError, match="in use by the gateway"):
            ipam.allocate(net, "c", os.getpid(), ip="10.0.0.1")
        with pytest.raises(UsageError, match="not a host address of network n"):
            ipam.allocate(net, "c", os.getpid(), ip="10.0.1.9")
    assert ipam.read_leases("n")["10.0.0.9"]["aliases"] == ["db"]


def test_publish_all_takes_the_images_exposed_ports_not_those_p_publishes() -> None:
    assert network.publish_all((":8080:80/tcp",), ("80/tcp", "53/udp", "8443", "bogus/tcp", "70000/tcp")) == (
        "::53/udp", "::8443/tcp")


def test_dns_search_and_options_replace_the_hosts_lines() -> None:
    upstream = "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"
    text = netfiles.resolv_text((), upstream, ("a.example", "b.example"), ("ndots:2",))
    assert "search a.example b.example" in text and "corp.example" not in text
    assert "options ndots:2" in text and "edns0" not in text and "nameserver 192.0.2.53" in text
    with pytest.raises(UsageError, match="invalid DNS option"):
        network.parse_dns_options(["ndots: 2"])


def test_container_and_ns_modes_join_without_a_namespace_or_a_network() -> None:
    for mode in ("container:web", "ns:/run/netns/blue"):
        assert spec.validate_network(mode) == mode
        assert not network.is_private(mode) and network.attached_network(mode) is None
        assert network.joins(mode) and not spec.attaches(mode)
    for bad in ("container:a/b", "container:", "ns:relative/path"):
        with pytest.raises(UsageError, match="invalid"):
            spec.validate_network(bad)
    with pytest.raises(UsageError, match="needs a network of the container's own"):
        spec.ContainerSpec(name="a", image="i", network="container:web",
                           sysctls={"net.ipv4.ip_forward": "1"}).validate()


def test_veth_pairs_get_a_slash_30_each_and_nspawns_link_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_RUN_DIR", str(tmp_path))
    net = ipam.load("veth")  # built in: no definition on disk
    assert net.point_to_point and network.attached_network("veth") == "veth"
    with ipam.locked():
        first, second = ipam.allocate(net, "a", os.getpid()), ipam.allocate(net, "b", os.getpid())
    assert (str(first), str(second)) == ("10.88.0.2", "10.88.0.6")
    assert str(ipam.p2p_gateway(str(second))) == "10.88.0.5"
    assert netsetup.host_veth("web", "veth") == "ve-web"
    assert netsetup.host_veth("a-very-long-name", "veth").startswith("ve-") and len(
        netsetup.host_veth("a-very-long-name", "veth")) <= ipam.IFNAMSIZ
    text = netsetup.ruleset([net])
    assert 'oifname "ve-*" ip saddr 10.88.0.0/16 ct status dnat masquerade' in text
    assert "ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade" in text
    with pytest.raises(UsageError, match="--ip needs the bridge or a user network"):
        spec.ContainerSpec(name="a", image="i", network="veth", ip="10.88.0.2").validate()
    with pytest.raises(UsageError, match="invalid network name"):
        spec.validate_network_name("veth")


def test_an_ipv6_subnet_goes_with_the_ipv4_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("PYMACHINE_CONFIG_DIR", str(tmp_path / "etc"))
    monkeypatch.setattr(netsetup, "host_routes", lambda version=4: {})
    net = netsetup.create_network("six", ["10.70.0.0/24", "fd70::/64"], None, False, ipv6=True)
    assert ipam.load("six").subnet6 == net.subnet6 and str(net.gateway6) == "fd70::1"
    assert str(net.address6("10.70.0.9")) == "fd70::9"
    assert "ip6 saddr fd70::/64 ip6 daddr != fd70::/64 masquerade" in netsetup.ruleset([net])
    with pytest.raises(ConflictError, match="subnet fd70::/48 overlaps network six"):
        netsetup.create_network("seven", ["fd70::/48"], None, False, ipv6=True)
    with pytest.raises(UsageError, match="needs --ipv6"):
        netsetup.create_network("seven", ["fd71::/64"], None, False)
    auto = netsetup.create_network("eight", [], None, False, ipv6=True)
    assert auto.subnet6 is not None and auto.subnet6.prefixlen == 64 and str(auto.subnet6).startswith("fd89:")


def test_kept_connections_parse_and_render_back() -> None:
    assert spec.parse_connection("app") == ("app", None, ())
    assert spec.parse_connection("app,ip=10.0.0.9,alias=www,alias=w2") == ("app", "10.0.0.9", ("www", "w2"))
    assert spec.connection("app", "10.0.0.9", ("www",)) == "app,ip=10.0.0.9,alias=www"
    assert spec.connection("app", None, ()) == "app"
    for bad in ("app,ip=x", "app,mtu=9000", "bridge", "app,ip=10.0.0.1,ip=10.0.0.2", ""):
        with pytest.raises(UsageError):
            spec.parse_connection(bad)
    with pytest.raises(UsageError, match="named twice"):
        spec.validate_connections(["app", "app,alias=x"])


def test_connections_need_a_network_of_the_containers_own_and_not_the_same_one() -> None:
    spec.ContainerSpec(name="a", image="i", network="bridge", connections=("app",)).validate()
    with pytest.raises(UsageError, match="connections need"):
        spec.ContainerSpec(name="a", image="i", network="host", connections=("app",)).validate()
    with pytest.raises(UsageError, match="own network pymachine"):
        spec.ContainerSpec(name="a", image="i", network="bridge", connections=("pymachine",)).validate()
    with pytest.raises(UsageError, match="own network app"):
        spec.ContainerSpec(name="a", image="i", network="app", connections=("app,ip=10.0.0.2",)).validate()


def test_a_definition_as_written_is_read_without_tomllib_and_a_hand_edited_one_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_CONFIG_DIR", str(tmp_path))
    net = ipam.Network("app", "10.80.0.0/24", "10.80.0.254", True, "fd80::/64")
    ipam.save(net)
    assert ipam._as_written(Path(ipam.definition_path("app")).read_bytes()) == {
        "subnet": "10.80.0.0/24", "gateway": "10.80.0.254", "internal": True, "subnet6": "fd80::/64"}
    loaded = ipam.load("app")
    assert (str(loaded.subnet), str(loaded.gateway), loaded.internal, str(loaded.subnet6)) == \
        ("10.80.0.0/24", "10.80.0.254", True, "fd80::/64")
    Path(ipam.definition_path("app")).write_text('# mine\nsubnet = "10.81.0.0/24"  # edited\ninternal = false\n')
    assert ipam._as_written(Path(ipam.definition_path("app")).read_bytes()) is None
    assert str(ipam.load("app").subnet) == "10.81.0.0/24"
    Path(ipam.definition_path("app")).write_text('subnet = "10.81.0.0/24\n')
    with pytest.raises(UsageError, match="cannot read network app"):
        ipam.load("app")
