"""`--network bridge`: a veth on the default network's bridge, an address leased under a lock,
NAT in pymachine's own nft table, and nothing left after stop, rm, a dying container or a
kill -9 of pymachine. Checked with the real clients (`ip -j`, `nft -j`, machinectl, HTTP).

Everything here happens in the test host's own network namespace (tools/testhost.py: lo and a
fake uplink), never in the machine's: the test host must have one, or these tests fail.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
from collections.abc import Callable, Iterator

import pytest
from helpers import HTTP_GET, AnyHost, pm, wait_until
from testhost import UPLINK_ADDRESS, TestHost

pytestmark = pytest.mark.integration

LEASES = "/run/pymachine/networks/pymachine.json"
LOCK = "/run/pymachine/networks/lock"
SUBNET_PREFIX = "10.89."


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def links(host: AnyHost) -> list[str]:
    return sorted(link["ifname"] for link in json.loads(host.run(["ip", "-j", "link"], check=True).stdout))


def nft_tables(host: AnyHost) -> list[str]:
    out = json.loads(host.run(["nft", "-j", "list", "tables"], check=True).stdout)["nftables"]
    return sorted(f"{t['table']['family']} {t['table']['name']}" for t in out if "table" in t)


def leases(host: AnyHost) -> dict[str, dict[str, object]]:
    r = host.run(["cat", LEASES])
    return json.loads(r.stdout) if r.returncode == 0 else {}


Snapshot = tuple[list[str], list[str], dict[str, dict[str, object]]]


def settled(host: AnyHost) -> None:
    """Wait for pymachine's network work to be done: `run`'s exit leaves the kernel's part (the
    bridge, the table) to a child that holds the networks' lock until it is done (netsetup.release)."""
    host.run(["sh", "-c", f"[ ! -e {LOCK} ] || flock {LOCK} true"], check=True, timeout=60)


def snapshot(host: AnyHost) -> Snapshot:
    settled(host)
    return links(host), nft_tables(host), leases(host)


@pytest.fixture
def clean(host: AnyHost) -> Iterator[Snapshot]:
    """The network state before the test; after it, the same again (after gc at worst)."""
    if isinstance(host, TestHost):
        mine = host.run(["readlink", "/proc/self/ns/net"], check=True).stdout.strip()
        # the machine's own namespace, which pytest left for the test host's (conftest)
        assert mine != os.environ["PYMACHINE_TEST_MACHINE_NETNS"]
    before = snapshot(host)
    assert "inet pymachine" not in before[1] and before[2] == {}, before
    yield before
    host.assert_no_leftovers(timeout=15)


def test_bridge_run_gets_an_address_a_route_and_leaves_nothing(host: AnyHost, clean: Snapshot) -> None:
    script = f"ip -o -4 addr show eth0; ip route | grep ^default; ping -c1 -W2 {UPLINK_ADDRESS} >/dev/null && echo up"
    r = pm(host, "run", "--rm", "--network", "bridge", "busybox", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"inet {SUBNET_PREFIX}" in lines[0] and "/16" in lines[0], lines
    assert lines[1].startswith("default via 10.89.0.1 dev eth0"), lines
    assert lines[2] == "up", "the test host's uplink address answers through the bridge"
    assert snapshot(host) == clean


def test_detached_web_answers_on_its_address_stop_rm_leave_nothing(host: AnyHost, clean: Snapshot) -> None:
    name = unique("web")
    try:
        r = pm(host, "run", "-d", "--name", name, "--network", "bridge", "busybox", "sh", "-c",
               "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www")
        assert r.returncode == 0, r.stderr
        held = leases(host)
        assert [lease["name"] for lease in held.values()] == [name], held
        address = next(iter(held))
        assert address.startswith(SUBNET_PREFIX)
        page = host.run(["python3", "-c", HTTP_GET, f"http://{address}/"], check=True)
        assert page.stdout == "hello\n"
        listed = host.run(["machinectl", "list", "--no-legend", "--no-pager", "--full"], check=True).stdout
        assert address in listed, listed
        tables = nft_tables(host)
        assert tables == sorted([*clean[1], "inet pymachine"]), "only pymachine's table is added"
        assert pm(host, "stop", "-t", "1", name).returncode == 0
        assert leases(host) == {}, "stop frees the lease"
    finally:
        pm(host, "rm", "-f", name)
    assert snapshot(host) == clean


def test_concurrent_starts_get_distinct_addresses(host: AnyHost, clean: Snapshot) -> None:
    """20 starts at once, all running together: 20 leases, 20 addresses, as machined sees them."""
    n, prefix = 20, unique("par")
    names = [f"{prefix}-{i}" for i in range(n)]
    starts = " ".join(f'pymachine run -d --name {name} --network bridge busybox sleep 600 >/dev/null & p="$p $!";'
                      for name in names)
    try:
        # each start's own exit status (a bare `wait` would return 0 whatever they did)
        r = host.run(["sh", "-c", f"{starts} for pid in $p; do wait $pid || exit 1; done"], timeout=600)
        assert r.returncode == 0, r.stderr
        held = leases(host)
        assert sorted(str(lease["name"]) for lease in held.values()) == sorted(names), held
        listed = host.run(["machinectl", "list", "--no-legend", "--no-pager", "--full"], check=True).stdout
        seen = {line.split()[0]: line.split()[-1] for line in listed.splitlines() if line.startswith(prefix)}
        assert sorted(seen) == sorted(names) and len(set(seen.values())) == n, seen
        assert set(seen.values()) == set(held), (seen, held)
    finally:
        host.run(["sh", "-c", " ".join(f"pymachine rm -f {name} >/dev/null &" for name in names) + " wait"],
                 timeout=600)
    assert snapshot(host) == clean


def kill_when(host: AnyHost, argv: list[str], *ready: tuple[Callable[[], bool], str]) -> None:
    """Start `argv` (a pymachine command), wait for each (condition, what) in turn, SIGKILL it,
    then wait for its veth to go (the kernel's, with the container's namespace)."""
    proc = host.popen(argv)
    try:
        for condition, what in ready:
            wait_until(condition, what=what)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: not any(link.startswith("pmv") for link in links(host)), what="the veth to go")


def test_gc_frees_what_a_killed_pymachine_left(host: AnyHost, clean: Snapshot) -> None:
    # The init dies with pymachine (its parent-death signal), and its veth with its namespace.
    kill_when(host, ["pymachine", "run", "--rm", "--network", "bridge", "busybox", "sleep", "100"],
              (lambda: bool(leases(host)), "the lease"),
              (lambda: any(link.startswith("pmv") for link in links(host)), "the veth"))
    assert leases(host), "nobody freed the lease: pymachine was killed"
    r = pm(host, "gc")
    assert r.returncode == 0, r.stderr
    assert snapshot(host) == clean, r.stdout
    # the --rm container's record, state directory and /etc/hosts files went too
    assert host.run(["ls", "/var/lib/pymachine/containers"]).stdout.split() == [], r.stdout
    assert host.run(["ls", "/run/pymachine/netfiles"]).stdout.split() == [], r.stdout


def test_same_name_again_right_after_run_rm_and_rm(host: AnyHost, clean: Snapshot) -> None:
    """`run`'s exit frees the lease at once and leaves the kernel's part (the bridge, the table)
    to a child holding the networks' lock: a start right after, with the same name (so the same
    host-side veth name) and the same published port, waits for it and works."""
    name = unique("again")
    once = f"pymachine run --rm --name {name} --network bridge busybox true"
    r = host.run(["sh", "-c", f"{once} && cat {LEASES} 2>/dev/null; {once} && {once} && echo ok"], timeout=120)
    assert r.returncode == 0 and r.stdout == "ok\n", (r.stdout, r.stderr)  # no lease file between them
    # run's stdio becomes /dev/null only at its very end, after the container's output and status
    r = pm(host, "run", "--rm", "--network", "bridge", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n"), r
    try:
        for _ in range(2):
            r = pm(host, "run", "-d", "--name", name, "-p", "18090:80", "busybox", "httpd", "-f", "-p", "80")
            assert r.returncode == 0, r.stderr
            assert pm(host, "rm", "-f", name).returncode == 0
            assert leases(host) == {}, "rm frees the lease before it returns"
    finally:
        pm(host, "rm", "-f", name)
    assert snapshot(host) == clean


def test_gc_removes_the_bridge_and_table_a_killed_teardown_left(host: AnyHost, clean: Snapshot) -> None:
    """A teardown killed after it freed the last lease and before the kernel's part (its child's
    work, see netsetup.release) leaves an idle bridge and pymachine's table: gc removes both."""
    # the table is written beside the veth (netsetup.attach): wait for both
    kill_when(host, ["pymachine", "run", "--rm", "--network", "bridge", "busybox", "sleep", "100"],
              (lambda: any(link.startswith("pmv") for link in links(host)), "the veth"),
              (lambda: "inet pymachine" in nft_tables(host), "the table"))
    host.run(["rm", LEASES], check=True)  # as the teardown had freed it
    left = snapshot(host)
    assert "pm-pymachine" in left[0] and "inet pymachine" in left[1] and left[2] == {}, left
    r = pm(host, "gc")
    assert r.returncode == 0, r.stderr
    assert "removed bridge pm-pymachine (of no network)" in r.stdout, r.stdout
    assert "removed nft table inet pymachine (of no network)" in r.stdout, r.stdout
    assert snapshot(host) == clean, r.stdout


def http(host: AnyHost, url: str) -> str:
    return host.run(["python3", "-c", HTTP_GET, url], check=True, timeout=60).stdout


def test_published_port_done_when(host: AnyHost, clean: Snapshot) -> None:
    """The issue's sequence: a published port answers on 127.0.0.1, localhost, the test host's
    other address and from another container (hairpin); a second publisher of the same host
    port fails before anything exists; stop and rm leave links, rules and leases as before."""
    name, second = unique("web"), unique("web")
    try:
        # One connection to [::1] right after `run -d` returns, from the same shell (bash's
        # /dev/tcp: no client to start): its socket listens by then.
        r = host.run(["bash", "-c", f"pymachine run -d --name {name} --network bridge -p 8080:80 busybox sh -c "
                      "'mkdir -p /www && echo page > /www/index.html && exec httpd -f -p 80 -h /www' && "
                      "exec 3<>/dev/tcp/::1/8080"])
        assert r.returncode == 0, r.stderr
        for address in ("[::1]", "127.0.0.1", "localhost", UPLINK_ADDRESS):
            assert http(host, f"http://{address}:8080/") == "page\n", address
        assert proxy_units(host) == [f"pymachine-proxy-{name}-8080.service", f"pymachine-proxy-{name}-8080.socket"]
        proxy = host.run(["systemctl", "show", "-p", "MainPID", "--value", f"pymachine-proxy-{name}-8080.service"],
                         check=True).stdout.strip()
        assert host.run(["stat", "-c", "%u", f"/proc/{proxy}"], check=True).stdout.strip() != "0", "not root"
        hairpin = pm(host, "run", "--rm", "--network", "bridge", "busybox", "sh", "-c",
                     f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {UPLINK_ADDRESS} 8080")
        assert hairpin.stdout.endswith("page\n"), hairpin
        assert pm(host, "port", name).stdout == "80/tcp -> 0.0.0.0:8080\n"
        before_second = snapshot(host)
        r = pm(host, "run", "-d", "--name", second, "--network", "bridge", "-p", "8080:80", "busybox", "true")
        assert r.returncode == 125 and r.stderr.splitlines()[0] == (
            f"pymachine: host port 8080/tcp is already published by container {name}"), r.stderr
        assert second not in pm(host, "ps", "-a").stdout and snapshot(host) == before_second
        assert nft_tables(host) == sorted([*clean[1], "inet pymachine"])
        assert pm(host, "stop", "-t", "1", name).returncode == 0
        wait_until(lambda: not proxy_units(host), what="the [::1] proxy to stop with its container")
        assert pm(host, "start", name).returncode == 0
        assert http(host, "http://[::1]:8080/") == "page\n", "a restart publishes [::1] again"
    finally:
        pm(host, "rm", "-f", name)
    assert snapshot(host) == clean
    assert not proxy_units(host)


def proxy_units(host: AnyHost) -> list[str]:
    out = host.run(["systemctl", "list-units", "--all", "--no-legend", "--plain", "pymachine-proxy-*"]).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def test_a_foreground_containers_port_answers_on_ipv6_loopback(host: AnyHost, clean: Snapshot) -> None:
    """No DNAT rule reaches [::1] (the kernel routes no IPv6 loopback packet to another
    namespace): systemd's socket proxy serves it, socket-activated, bound to the scope."""
    name = unique("fg")
    script = ("mkdir -p /www && echo fg > /www/index.html && httpd -p 80 -h /www && "
              "while [ ! -e /www/done ]; do sleep 0.1; done")
    run = host.popen(["pymachine", "run", "--rm", "--name", name, "-p", "8087:80", "-p", "8088:80", "busybox", "sh",
                      "-c", script])
    try:
        wait_until(lambda: {f"pymachine-proxy-{name}-{port}.socket" for port in (8087, 8088)} <= set(proxy_units(host)),
                   what="the proxies' sockets")
        assert http(host, "http://[::1]:8087/") == "fg\n" and http(host, "http://[::1]:8088/") == "fg\n"
        pm(host, "exec", name, "touch", "/www/done")
        assert run.wait(60) == 0
    finally:
        if run.poll() is None:
            run.kill()
    wait_until(lambda: not proxy_units(host), what="the proxy to stop with the scope")
    assert snapshot(host) == clean


def test_ports_without_the_bridge_are_refused(host: AnyHost, clean: Snapshot) -> None:
    r = pm(host, "run", "--rm", "--network", "host", "-p", "8080:80", "busybox", "true")
    assert r.returncode == 125 and "published ports need" in r.stderr, r.stderr
    assert snapshot(host) == clean


def test_names_and_resolver_on_the_bridge(host: AnyHost, clean: Snapshot) -> None:
    """Containers on a network find each other by name (kept current in /etc/hosts); the
    resolver is the host's upstream one, never a loopback stub; --dns and --add-host apply."""
    first, second = unique("alpha"), unique("beta")
    try:
        r = pm(host, "run", "-d", "--name", first, "--network", "bridge", "busybox", "sleep", "600")
        assert r.returncode == 0, r.stderr
        r = pm(host, "run", "--rm", "--name", second, "--network", "bridge", "--dns", "10.231.0.1",
               "--add-host", "db.example:10.1.2.3", "busybox", "sh", "-c",
               f"ping -c1 -W2 {first} >/dev/null && echo reached; cat /etc/resolv.conf /etc/hosts")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("reached\n"), r.stdout
        assert "nameserver 10.231.0.1" in r.stdout and "127.0.0.53" not in r.stdout
        assert "10.1.2.3\tdb.example" in r.stdout and f"\t{first}" in r.stdout
        address = next(ip for ip, lease in leases(host).items() if lease["name"] == first)
        own = pm(host, "exec", first, "cat", "/etc/hosts", "/etc/resolv.conf").stdout
        assert any(line.startswith(f"{address}\t") and first in line.split() for line in own.splitlines()), own
        assert second not in own, "the second container left: its name is gone from the first's hosts"
        assert "127.0.0.53" not in own and "127.0.0.1\tlocalhost" in own
    finally:
        pm(host, "rm", "-f", first)
    assert snapshot(host) == clean
    assert host.run(["ls", "/run/pymachine/netfiles"]).stdout.strip() == ""
