"""`--network bridge`: a veth on the default network's bridge, an address leased under a lock,
NAT in pymachine's own nft table, and nothing left after stop, rm, a dying container or a
kill -9 of pymachine. Checked with the real clients (`ip -j`, `nft -j`, machinectl, HTTP).

Everything here happens in the test host's own network namespace (tools/testhost.py: lo and a
fake uplink), never in the machine's: the test host must have one, or these tests fail.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
from collections.abc import Iterator

import pytest
from helpers import AnyHost, pm, wait_until
from testhost import UPLINK_ADDRESS, TestHost

pytestmark = pytest.mark.integration

LEASES = "/run/pymachine/networks/pymachine.json"
SUBNET_PREFIX = "10.89."
HTTP_GET = """
import sys, time, urllib.request
for _ in range(50):
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
            sys.stdout.write(r.read().decode()); sys.exit(0)
    except OSError as e:
        last = e; time.sleep(0.1)
sys.exit(f"no answer: {last}")
"""


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


def snapshot(host: AnyHost) -> Snapshot:
    return links(host), nft_tables(host), leases(host)


@pytest.fixture
def clean(host: AnyHost) -> Iterator[Snapshot]:
    """The network state before the test; after it, the same again (after gc at worst)."""
    if isinstance(host, TestHost):
        mine = host.run(["readlink", "/proc/self/ns/net"], check=True).stdout.strip()
        assert mine != subprocess.run(["readlink", "/proc/self/ns/net"], capture_output=True, text=True).stdout.strip()
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
    n = 20
    script = (f"for i in $(seq {n}); do pymachine run --rm --network bridge busybox sh -c "
              "'ip -o -4 addr show eth0; sleep 2' > /tmp/pmnet.$i 2>&1 & done; wait; "
              "cat /tmp/pmnet.*; rm -f /tmp/pmnet.*")
    r = host.run(["sh", "-c", script], timeout=600)
    addresses = [line.split()[3] for line in r.stdout.splitlines() if " inet " in line]
    assert len(addresses) == n, r.stdout
    assert len(set(addresses)) == n, sorted(addresses)
    assert snapshot(host) == clean


def test_gc_frees_what_a_killed_pymachine_left(host: AnyHost, clean: Snapshot) -> None:
    proc = host.popen(["pymachine", "run", "--rm", "--network", "bridge", "busybox", "sleep", "100"])
    try:
        wait_until(lambda: bool(leases(host)), what="the lease")
        wait_until(lambda: any(link.startswith("pmv") for link in links(host)), what="the veth")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # The init died with pymachine (its parent-death signal), and its veth with its namespace.
    wait_until(lambda: not any(link.startswith("pmv") for link in links(host)), what="the veth to go")
    assert leases(host), "nobody freed the lease: pymachine was killed"
    r = pm(host, "gc")
    assert r.returncode == 0, r.stderr
    assert snapshot(host) == clean, r.stdout
