"""User namespaces (--userns): each container's root is an unprivileged host UID of its own
range, while files on disk (layers, upper dir, volumes) keep the owners seen inside."""

from __future__ import annotations

import io
import itertools
import json
import secrets
import subprocess
import tarfile
from pathlib import Path

import pytest
from testhost import LocalHost, TestHost

pytestmark = pytest.mark.integration

AnyHost = TestHost | LocalHost
POOL_START = 0x70000000  # userns.POOL_START, written out: the README documents it


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def pm(host: AnyHost, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return host.run(["pymachine", *args], check=check)


def host_ids(host: AnyHost) -> set[int]:
    ids: set[int] = set()
    for path, fields in (("/etc/passwd", (2, 3)), ("/etc/group", (2,))):
        for line in host.run(["cat", path], check=True).stdout.splitlines():
            parts = line.split(":")
            ids.update(int(parts[i]) for i in fields if len(parts) > i and parts[i].isdigit())
    return ids


def test_root_inside_is_an_unprivileged_range_outside(host: AnyHost) -> None:
    assert pm(host, "run", "--rm", "--userns=auto", "busybox", "id").stdout.startswith("uid=0(root) gid=0(root)")
    name = unique("uns")
    pm(host, "run", "-d", "--userns=auto", "--name", name, "busybox", "sleep", "300")
    try:
        pid = pm(host, "inspect", name, "--format", "{{ .State.Pid }}").stdout.strip()
        # the init's map, read from the host: container 0..65535 is a range of no host user
        start, base, size = (int(f) for f in host.run(["cat", f"/proc/{pid}/uid_map"], check=True).stdout.split())
        assert (start, size) == (0, 65536) and base >= POOL_START
        assert not host_ids(host) & set(range(base, base + size))
        assert host.run(["stat", "-c", "%u", f"/proc/{pid}"], check=True).stdout.strip() == str(base)
        info = json.loads(pm(host, "inspect", name).stdout)[0]
        assert info["HostConfig"]["UsernsMode"] == "auto"
        assert info["IdMappings"] == {"UidMap": [f"0:{base}:65536"], "GidMap": [f"0:{base}:65536"]}
        # exec joins it; machinectl still sees the machine
        assert pm(host, "exec", name, "id", "-u").stdout == "0\n"
        assert pm(host, "exec", name, "cat", "/proc/self/uid_map").stdout.split() == ["0", str(base), "65536"]
        assert f"Leader: {pid}" in host.run(["machinectl", "status", name], check=True).stdout
        # a restart keeps the range; rm frees it
        pm(host, "stop", "-t", "0", name)
        pm(host, "start", name)
        assert json.loads(pm(host, "inspect", name).stdout)[0]["IdMappings"] == info["IdMappings"]
        assert host.run(["cat", f"/var/lib/pymachine/userns/{base}"], check=True).stdout == f"{name}\n"
    finally:
        pm(host, "rm", "-f", name)
    assert host.run(["test", "-e", f"/var/lib/pymachine/userns/{base}"]).returncode == 1


def test_two_containers_get_different_ranges_and_host_has_none(host: AnyHost) -> None:
    maps = {pm(host, "run", "--rm", "--userns=auto", "busybox", "cat", "/proc/self/uid_map").stdout.split()[1]
            for _ in range(2)}
    assert len(maps) <= 2  # sequential --rm runs may reuse a freed range
    a, b = unique("ua"), unique("ub")
    try:
        for name in (a, b):
            pm(host, "run", "-d", "--userns=auto", "--name", name, "busybox", "sleep", "300")
        bases = {pm(host, "exec", n, "cat", "/proc/self/uid_map").stdout.split()[1] for n in (a, b)}
        assert len(bases) == 2
    finally:
        pm(host, "rm", "-f", a, b)
    assert pm(host, "run", "--rm", "--userns=host", "busybox", "cat", "/proc/self/uid_map").stdout.split() == \
        ["0", "0", "4294967295"]
    small = pm(host, "run", "--rm", "--userns=auto:size=1000", "busybox", "cat", "/proc/self/uid_map").stdout
    assert small.split()[2] == "1000"


def test_bad_userns_value_is_one_line_and_exit_125(host: AnyHost) -> None:
    r = pm(host, "run", "--rm", "--userns=keep-id", "busybox", "true", check=False)
    assert r.returncode == 125 and r.stderr.splitlines()[0] == "pymachine: invalid --userns value 'keep-id'"


def test_volume_files_keep_their_owners(host: AnyHost, tmp_path: Path) -> None:
    """The README: volumes are idmapped, so a file the container's root makes is root's on the
    host too, and a host file of uid 1000 is uid 1000's inside."""
    vol = tmp_path / "vol"  # pytest's temp root: a real file system, shared with the test host
    vol.mkdir()
    host.run(["chown", "1000:1000", str(vol)], check=True)
    out = pm(host, "run", "--rm", "--userns=auto", "-v", f"{vol}:/v", "busybox", "sh", "-c",
             "stat -c %u /v; touch /v/by-root; stat -c %u /v/by-root").stdout
    assert out == "1000\n0\n"
    assert host.run(["stat", "-c", "%u:%g", str(vol / "by-root")], check=True).stdout == "0:0\n"
    named = unique("unsvol")
    try:
        pm(host, "run", "--rm", "--userns=auto", "-v", f"{named}:/v", "busybox", "sh", "-c",
           "touch /v/f && chown 1000 /v/f")
        path = f"/var/lib/pymachine/volumes/{named}/_data/f"
        assert host.run(["stat", "-c", "%u", path], check=True).stdout == "1000\n"
    finally:
        pm(host, "volume", "rm", named, check=False)


def test_commit_keeps_the_uids_inside(host: AnyHost, tmp_path: Path) -> None:
    name, image = unique("unscommit"), unique("unsimg")
    pm(host, "run", "--userns=auto", "--name", name, "busybox", "sh", "-c",
       "echo r > /by-root && echo u > /by-1000 && chown 1000:1000 /by-1000")
    try:
        pm(host, "commit", "-q", name, image)
    finally:
        pm(host, "rm", name)
    exported = tmp_path / "userns-commit.tar"
    pm(host, "image", "export", image, str(exported), "--format", "oci")
    owners: dict[str, tuple[int, int]] = {}
    with tarfile.open(exported) as outer:
        for member in outer.getmembers():
            if member.isfile() and member.name.startswith("blobs/"):
                data = outer.extractfile(member).read()  # type: ignore[union-attr]
                try:
                    with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                        owners.update({m.name.lstrip("./"): (m.uid, m.gid) for m in layer.getmembers()})
                except tarfile.ReadError:
                    continue  # a JSON blob
    assert owners["by-root"] == (0, 0) and owners["by-1000"] == (1000, 1000)
    # and a container of that image sees them so, with or without a user namespace
    for mode in ("auto", "host"):
        assert pm(host, "run", "--rm", f"--userns={mode}", image, "stat", "-c", "%u", "/by-root", "/by-1000"
                  ).stdout == "0\n1000\n"
    pm(host, "image", "rm", image)


def test_cgroup_is_delegated_to_the_containers_root(host: AnyHost) -> None:
    script = ("d=/sys/fs/cgroup/unified; [ -d $d ] || d=/sys/fs/cgroup; stat -c %u $d; "
              "mkdir $d/sub && echo $$ > $d/sub/cgroup.procs && echo moved")
    assert pm(host, "run", "--rm", "--userns=auto", "busybox", "sh", "-c", script).stdout == "0\nmoved\n"


def test_gc_frees_the_range_of_a_vanished_container(host: AnyHost) -> None:
    slot = 0x7FFD0000  # the pool's last slot: a live container would not have it
    host.run(["sh", "-c", f"mkdir -p /var/lib/pymachine/userns && echo ghost-x > /var/lib/pymachine/userns/{slot}"],
             check=True)
    out = pm(host, "gc").stdout
    assert f"freed user ID range {slot}-{slot + 65535} of removed container ghost-x" in out
    assert host.run(["test", "-e", f"/var/lib/pymachine/userns/{slot}"]).returncode == 1


def test_twenty_concurrent_starts_get_twenty_separate_ranges_all_freed_after(host: AnyHost) -> None:
    """20 `run -d --userns=auto` at once, all running together: 20 distinct ranges that do not
    overlap one another or the host's users; `rm` frees every claim."""
    names = [unique(f"unsc{i}") for i in range(20)]
    try:
        procs = [host.popen(["pymachine", "run", "-d", "--userns=auto", "--name", n, "busybox", "sleep", "300"])
                 for n in names]
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        ranges = []
        for n in names:
            pid = pm(host, "inspect", n, "--format", "{{ .State.Pid }}").stdout.strip()
            start, base, size = (int(f) for f in host.run(["cat", f"/proc/{pid}/uid_map"], check=True).stdout.split())
            assert (start, size) == (0, 65536)
            ranges.append((base, base + size))
        ranges.sort()
        assert len({base for base, _ in ranges}) == 20
        assert all(end <= following for (_, end), (following, _) in itertools.pairwise(ranges))
        ids = host_ids(host)
        assert not any(base <= i < end for base, end in ranges for i in ids)
        assert sorted(base for base, owner in claims(host).items() if owner in names) == [b for b, _ in ranges]
    finally:
        pm(host, "rm", "-f", *names, check=False)
    assert not set(names) & set(claims(host).values())


def claims(host: AnyHost) -> dict[int, str]:
    """The pool's claims: base -> container name (userns.py's files)."""
    out = host.run(["grep", "-r", "", "/var/lib/pymachine/userns"]).stdout
    return {int(Path(path).name): owner for path, _, owner in (line.partition(":") for line in out.splitlines())}


def test_ports_below_1024_in_the_hosts_network_need_userns_host(host: AnyHost) -> None:
    """The README's rule: in the host's network the container's root is an unprivileged UID of
    the host's network namespace (no port below 1024); in a network of its own it is root there."""
    refused = pm(host, "run", "--rm", "--userns=auto", "--network", "host", "busybox", "httpd", "-p", "80",
                 check=False)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    for args in (("--userns=auto", "--network", "none"), ("--userns=auto",), ("--userns=host", "--network", "host")):
        assert pm(host, "run", "--rm", *args, "busybox", "httpd", "-p", "80").returncode == 0
