"""User namespaces (--userns): each container's root is an unprivileged host UID of its own
range, while files on disk (layers, upper dir, bind mounts) keep the owners seen inside, and a
named volume's are its owner's range's (the first container with a range that mounted it)."""

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


def test_bind_mounted_host_files_keep_their_owners(host: AnyHost, tmp_path: Path) -> None:
    """The README: a host path bound with -v is idmapped with the container's own mapping, so a
    host file of uid 1000 is uid 1000's inside, and a file the container's root makes there is
    root's on the host."""
    vol = tmp_path / "vol"  # pytest's temp root: a real file system, shared with the test host
    vol.mkdir()
    host.run(["chown", "1000:1000", str(vol)], check=True)
    out = pm(host, "run", "--rm", "--userns=auto", "-v", f"{vol}:/v", "busybox", "sh", "-c",
             "stat -c %u /v; touch /v/by-root; stat -c %u /v/by-root").stdout
    assert out == "1000\n0\n"
    assert host.run(["stat", "-c", "%u:%g", str(vol / "by-root")], check=True).stdout == "0:0\n"


def volume_path(name: str, *parts: str) -> str:
    return "/".join((f"/var/lib/pymachine/volumes/{name}/_data", *parts))


def owners(host: AnyHost, *paths: str) -> list[str]:
    return host.run(["stat", "-c", "%u:%g", *paths], check=True).stdout.split()


MAKE_FILES = ("touch /v/by-root && touch /v/by-1000 && chown 1000:1000 /v/by-1000 && "
              "stat -c %u:%g /v /v/by-root /v/by-1000 && cat /proc/self/uid_map")


def test_a_file_roots_creates_in_a_volume_is_the_volume_owners_and_root_only_with_userns_host(
        host: AnyHost) -> None:
    """The issue's words: a file created in a volume by the container's root appears owned by
    root on the host only for --userns=host, and by the volume's owner as mapped otherwise (the
    range of the first container with a user namespace that mounted it)."""
    auto, plain = unique("unsvol"), unique("unsvolh")
    try:
        out = pm(host, "run", "--rm", "--userns=auto", "-v", f"{auto}:/v", "busybox", "sh", "-c", MAKE_FILES
                 ).stdout.split()
        assert out[:3] == ["0:0", "0:0", "1000:1000"]  # its own, inside
        base = int(out[4])
        assert base >= POOL_START and base not in host_ids(host)
        assert owners(host, volume_path(auto), volume_path(auto, "by-root"), volume_path(auto, "by-1000")) == \
            [f"{base}:{base}", f"{base}:{base}", f"{base + 1000}:{base + 1000}"]
        info = json.loads(pm(host, "volume", "inspect", auto).stdout)[0]
        assert (info["UID"], info["GID"], info["UidMap"]) == (base, base, [f"0:{base}:65536"])
        # the container is gone (run --rm), its range is not: the volume holds it
        assert claims(host)[base] == [f"volume:{auto}"]
        out = pm(host, "run", "--rm", "--userns=host", "-v", f"{plain}:/v", "busybox", "sh", "-c", MAKE_FILES
                 ).stdout.split()
        assert out[:3] == ["0:0", "0:0", "1000:1000"]
        assert owners(host, volume_path(plain, "by-root"), volume_path(plain, "by-1000")) == ["0:0", "1000:1000"]
        assert json.loads(pm(host, "volume", "inspect", plain).stdout)[0]["UID"] == 0
        # a --userns=host container sees the host's IDs as they are
        assert pm(host, "run", "--rm", "--userns=host", "-v", f"{auto}:/v", "busybox", "stat", "-c", "%u",
                  "/v/by-root").stdout == f"{base}\n"
    finally:
        pm(host, "volume", "rm", auto, plain, check=False)
    assert base not in claims(host)  # `volume rm` freed the range


def test_two_containers_with_ranges_sharing_a_volume_see_each_others_files_as_their_own(host: AnyHost) -> None:
    """Two containers of different ranges: each sees the other's files with the owners it made
    them with, and what either one's root makes is the volume owner's on the host. The owner
    keeps its range after its container is gone, and no new container gets it."""
    vol, a, b, c = unique("unsshare"), unique("unsa"), unique("unsb"), unique("unsc")
    try:
        for name in (a, b):
            pm(host, "run", "-d", "--userns=auto", "--name", name, "-v", f"{vol}:/v", "busybox", "sleep", "300")
        base_a, base_b = (int(pm(host, "exec", n, "cat", "/proc/self/uid_map").stdout.split()[1]) for n in (a, b))
        assert base_a != base_b
        pm(host, "exec", a, "sh", "-c", "echo a > /v/from-a && echo a > /v/a-1000 && chown 1000:1000 /v/a-1000")
        pm(host, "exec", b, "sh", "-c", "echo b > /v/from-b && echo b > /v/b-1000 && chown 1000:1000 /v/b-1000")
        for name in (a, b):
            assert pm(host, "exec", name, "stat", "-c", "%u:%g", "/v/from-a", "/v/a-1000", "/v/from-b", "/v/b-1000"
                      ).stdout.split() == ["0:0", "1000:1000", "0:0", "1000:1000"]
            assert pm(host, "exec", name, "cat", "/v/from-a", "/v/from-b").stdout == "a\nb\n"
        for name in (a, b):  # each one's root may write the other's files, as its own
            pm(host, "exec", name, "sh", "-c", f"echo {name} >> /v/from-a && echo {name} >> /v/b-1000")
        assert host.run(["cat", volume_path(vol, "from-a")], check=True).stdout == f"a\n{a}\n{b}\n"
        # on the host, all of it is the volume owner's: the first container's range
        assert owners(host, *(volume_path(vol, f) for f in ("from-a", "a-1000", "from-b", "b-1000"))) == \
            [f"{base_a}:{base_a}", f"{base_a + 1000}:{base_a + 1000}"] * 2
        pm(host, "rm", "-f", a)
        assert claims(host)[base_a] == [f"volume:{vol}"]
        pm(host, "run", "-d", "--userns=auto", "--name", c, "busybox", "sleep", "300")
        base_c = int(pm(host, "exec", c, "cat", "/proc/self/uid_map").stdout.split()[1])
        assert base_c not in (base_a, base_b)
        pm(host, "exec", b, "sh", "-c", "touch /v/after-a")
        assert owners(host, volume_path(vol, "after-a")) == [f"{base_a}:{base_a}"]
        r = pm(host, "volume", "rm", vol, check=False)
        assert r.returncode == 125 and "in use" in r.stderr
    finally:
        pm(host, "rm", "-f", a, b, c, check=False)
        pm(host, "volume", "rm", vol, check=False)
    assert base_a not in claims(host) and base_b not in claims(host)


def test_rm_v_frees_the_range_an_anonymous_volume_held(host: AnyHost) -> None:
    name = unique("unsanon")
    pm(host, "run", "-d", "--userns=auto", "--name", name, "-v", "/scratch", "busybox", "sh", "-c",
       "touch /scratch/f && exec sleep 300")
    try:
        base = int(pm(host, "exec", name, "cat", "/proc/self/uid_map").stdout.split()[1])
        (mount,) = json.loads(pm(host, "inspect", name).stdout)[0]["Mounts"]
        assert claims(host)[base] == [name, f"volume:{mount['Name']}"]
        assert json.loads(pm(host, "volume", "inspect", mount["Name"]).stdout)[0]["UID"] == base
    finally:
        pm(host, "rm", "-f", "-v", name)
    assert base not in claims(host)
    assert pm(host, "volume", "inspect", mount["Name"], check=False).returncode != 0


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


def test_gc_frees_the_range_of_a_vanished_or_half_owned_volume(host: AnyHost) -> None:
    """What a kill -9 leaves: the hold of a volume `volume rm` had removed before it let go of
    its range, and the hold of a volume whose first mount was cut before its owner was recorded
    (it shares the range first, then records it: volumes.owner_of)."""
    slot = 0x7FFD0000
    vol = unique("unshalf")
    pm(host, "volume", "create", vol)
    try:
        for holder in ("volume:ghost-vol", f"volume:{vol}"):
            host.run(["sh", "-c", f"mkdir -p /var/lib/pymachine/userns && "
                      f"echo {holder} > /var/lib/pymachine/userns/{slot}"], check=True)
            out = pm(host, "gc").stdout
            assert (f"freed user ID range {slot}-{slot + 65535} of removed volume ghost-vol" in out
                    if holder == "volume:ghost-vol" else
                    f"freed user ID range {slot}-{slot + 65535} that volume {vol} held without owning it" in out), out
            assert host.run(["test", "-e", f"/var/lib/pymachine/userns/{slot}"]).returncode == 1
        # the volume is still undecided: its first container owns it
        base = int(pm(host, "run", "--rm", "--userns=auto", "-v", f"{vol}:/v", "busybox", "sh", "-c",
                      "touch /v/f && cat /proc/self/uid_map").stdout.split()[1])
        assert owners(host, volume_path(vol, "f")) == [f"{base}:{base}"]
    finally:
        pm(host, "volume", "rm", vol, check=False)


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
        assert sorted(base for base, holders in claims(host).items() if set(holders) & set(names)) == \
            [b for b, _ in ranges]
    finally:
        pm(host, "rm", "-f", *names, check=False)
    assert not set(names) & {h for holders in claims(host).values() for h in holders}


def claims(host: AnyHost) -> dict[int, list[str]]:
    """The pool's claims: base -> its holders (userns.py's files: the container, then volumes)."""
    out = host.run(["grep", "-r", "", "/var/lib/pymachine/userns"]).stdout
    found: dict[int, list[str]] = {}
    for path, _, holder in (line.partition(":") for line in out.splitlines()):
        if Path(path).name.isdigit():
            found.setdefault(int(Path(path).name), []).append(holder)
    return found


def test_ports_below_1024_in_the_hosts_network_need_userns_host(host: AnyHost) -> None:
    """The README's rule: in the host's network the container's root is an unprivileged UID of
    the host's network namespace (no port below 1024); in a network of its own it is root there."""
    refused = pm(host, "run", "--rm", "--userns=auto", "--network", "host", "busybox", "httpd", "-p", "80",
                 check=False)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    for args in (("--userns=auto", "--network", "none"), ("--userns=auto",), ("--userns=host", "--network", "host")):
        assert pm(host, "run", "--rm", *args, "busybox", "httpd", "-p", "80").returncode == 0
