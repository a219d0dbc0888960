"""Volumes: bind mounts, named and anonymous volumes, the volume verbs, and symlinked targets."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from testhost import LocalHost, TestHost

pytestmark = pytest.mark.integration

AnyHost = TestHost | LocalHost


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def run(host: AnyHost, *args: str) -> str:
    return host.run(["pymachine", "run", "--rm", *args], check=True).stdout


@pytest.fixture
def hostdir(host: AnyHost) -> Iterator[str]:
    path = f"/var/tmp/{unique('voltest')}"
    host.run(["sh", "-c", f"mkdir -p {path} && echo from-host > {path}/file"], check=True)
    yield path
    host.run(["rm", "-rf", path])


def test_bind_mounts_read_write_and_read_only(host: AnyHost, hostdir: str) -> None:
    assert run(host, "-v", f"{hostdir}:/data", "busybox", "sh", "-c", "cat /data/file; echo from-ctr > /data/new") \
        == "from-host\n"
    assert host.run(["cat", f"{hostdir}/new"], check=True).stdout == "from-ctr\n"
    r = host.run(["pymachine", "run", "--rm", "-v", f"{hostdir}:/data:ro", "busybox", "sh", "-c",
                  "cat /data/file; touch /data/nope"])
    assert r.stdout == "from-host\n" and r.returncode != 0 and "Read-only" in r.stderr
    assert host.run(["test", "-e", f"{hostdir}/nope"]).returncode == 1
    r = host.run(["pymachine", "run", "--rm", "-v", "/does/not/exist:/data", "busybox", "true"])
    assert r.returncode == 125 and "does not exist" in r.stderr


def test_named_volume_is_created_on_first_use_and_persists(host: AnyHost) -> None:
    vol = unique("vol")
    run(host, "-v", f"{vol}:/data", "busybox", "sh", "-c", "echo kept > /data/f")
    assert run(host, "-v", f"{vol}:/data:ro", "busybox", "cat", "/data/f") == "kept\n"
    assert vol in host.run(["pymachine", "volume", "ls", "-q"], check=True).stdout.split()
    info = json.loads(host.run(["pymachine", "volume", "inspect", vol], check=True).stdout)[0]
    assert info["Mountpoint"] == f"/var/lib/pymachine/volumes/{vol}/_data" and info["Anonymous"] is False
    assert host.run(["cat", f"{info['Mountpoint']}/f"], check=True).stdout == "kept\n"
    host.run(["pymachine", "volume", "rm", vol], check=True)
    assert host.run(["test", "-e", f"/var/lib/pymachine/volumes/{vol}"]).returncode == 1


def test_a_file_roots_creates_in_a_named_volume_is_owned_as_the_userns_mode_says(host: AnyHost) -> None:
    """In the suite's --userns default (tools/test runs it both ways): the volume's owner is the
    range of its first container, or root when that one has no user namespace (the README's
    User namespaces section)."""
    vol = unique("volown")
    try:
        out = run(host, "-v", f"{vol}:/v", "busybox", "sh", "-c",
                  "touch /v/f && stat -c %u:%g /v/f && cat /proc/self/uid_map").split()
        base = int(out[2])  # --userns=host: "0 0 4294967295"
        assert out[0] == "0:0"
        on_host = host.run(["stat", "-c", "%u:%g", f"/var/lib/pymachine/volumes/{vol}/_data/f"], check=True).stdout
        assert on_host == f"{base}:{base}\n"
        assert json.loads(host.run(["pymachine", "volume", "inspect", vol], check=True).stdout)[0]["UID"] == base
    finally:
        host.run(["pymachine", "volume", "rm", vol])


def test_anonymous_volume_lives_with_its_container(host: AnyHost) -> None:
    name = unique("anon")
    before = set(host.run(["pymachine", "volume", "ls", "-q"], check=True).stdout.split())
    # run --rm: the anonymous volume goes with the container.
    run(host, "-v", "/scratch", "busybox", "sh", "-c", "echo x > /scratch/f")
    assert set(host.run(["pymachine", "volume", "ls", "-q"], check=True).stdout.split()) == before
    # A detached container keeps its anonymous volume across restarts; rm -v removes it.
    host.run(["pymachine", "create", "--name", name, "-v", "/scratch", "busybox", "sh", "-c",
              "cat /scratch/f 2>/dev/null; date >> /scratch/f; exec sleep 1000"], check=True)
    try:
        data = json.loads(host.run(["pymachine", "inspect", name], check=True).stdout)[0]
        (mount,) = data["Mounts"]
        assert mount["Type"] == "volume" and mount["Destination"] == "/scratch" and len(mount["Name"]) == 64
        for _ in range(2):
            host.run(["pymachine", "start", name], check=True)
            host.run(["pymachine", "stop", "-t", "1", name], check=True)
        assert len(host.run(["cat", f"{mount['Source']}/f"], check=True).stdout.splitlines()) == 2
        r = host.run(["pymachine", "volume", "rm", mount["Name"]])
        assert r.returncode == 125 and "in use" in r.stderr
    finally:
        host.run(["pymachine", "rm", "-f", "-v", name], check=True)
    assert set(host.run(["pymachine", "volume", "ls", "-q"], check=True).stdout.split()) == before
    host.assert_no_leftovers(timeout=15)


def test_volume_create_without_a_name_makes_a_named_volume_with_a_generated_one(host: AnyHost) -> None:
    name = host.run(["pymachine", "volume", "create"], check=True).stdout.strip()
    try:
        assert len(name) == 64 and all(c in "0123456789abcdef" for c in name), name
        inspected = json.loads(host.run(["pymachine", "volume", "inspect", name], check=True).stdout)
        assert inspected[0]["Anonymous"] is False
    finally:
        host.run(["pymachine", "volume", "rm", name], check=True)


def test_prune_removes_unused_volumes(host: AnyHost) -> None:
    vol = unique("prune")
    host.run(["pymachine", "volume", "create", vol], check=True)
    assert vol in host.run(["pymachine", "volume", "prune"], check=True).stdout.split()
    assert vol not in host.run(["pymachine", "volume", "ls", "-q"], check=True).stdout.split()


def test_symlink_in_the_container_cannot_redirect_a_volume_onto_the_host(host: AnyHost, hostdir: str) -> None:
    """An image (here: the container's upper layer) makes the mount target a symlink to a host
    path; the mount must be refused, and nothing may appear on the host."""
    name = unique("evil")
    victim = f"{hostdir}-victim"
    host.run(["mkdir", "-p", victim], check=True)
    host.run(["pymachine", "create", "--name", name, "-v", f"{hostdir}:/evil/sub", "busybox", "true"], check=True)
    try:
        upper = f"/var/lib/pymachine/containers/{name}/upper"
        host.run(["mkdir", "-p", upper], check=True)
        host.run(["ln", "-s", victim, f"{upper}/evil"], check=True)
        r = host.run(["pymachine", "start", name])
        assert r.returncode == 125, r.stdout + r.stderr
        assert "symlink" in r.stderr or "not a directory" in r.stderr, r.stderr
        assert host.run(["ls", "-A", victim], check=True).stdout == "", "a mount point was made on the host"
        assert victim not in host.run(["findmnt", "-rn", "-o", "TARGET"]).stdout
    finally:
        host.run(["pymachine", "rm", "-f", name])
        host.run(["rm", "-rf", victim])
    host.assert_no_leftovers(timeout=15)
