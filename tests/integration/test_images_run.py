"""Containers from imported multi-layer images and from committed images, in the systemd test host.

The images are made outside by umoci and skopeo (in pytest's temp dir, which the test host
shares); everything else is `pymachine` inside the host, checked from inside the container
and with the image tools (inspect, export, skopeo).
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import wait_until
from images import build  # tests/images: pytest puts tests/ on sys.path
from testhost import LocalHost, TestHost

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]

AnyHost = TestHost | LocalHost


def pm(host: AnyHost, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = host.run(["pymachine", *args], timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"pymachine {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build.umoci_two_layers(tmp_path_factory.mktemp("umoci"))


@pytest.fixture
def image_name(host: AnyHost) -> Iterator[str]:
    """A unique image name, removed afterwards with whatever is tagged under it."""
    name = unique("img")
    yield name
    listed = json.loads(pm(host, "images", "--json").stdout)
    tags = [f"{r['Repository']}:{r['Tag']}" for r in listed if r["Repository"].startswith(name)]
    if tags:
        pm(host, "image", "rm", "-f", *tags, check=False)


def layers_of(host: AnyHost, ref: str) -> list[str]:
    out = pm(host, "image", "inspect", ref, "--format", "{{json .RootFS.Layers}}").stdout
    layers: list[str] = json.loads(out)
    return layers


CHECK_UMOCI = (
    "test -e /etc/doomed && echo doomed-visible || echo doomed-gone; cat /etc/added /keep; "
    "ls /data/old; echo FOO=$FOO"
)


def test_umoci_image_runs_with_its_layers_config_and_whiteouts(
    host: AnyHost, umoci_layout: Path, image_name: str
) -> None:
    pm(host, "image", "import", "-q", str(umoci_layout), "--name", f"{image_name}:1")
    assert layers_of(host, f"{image_name}:1") == build.oci_diff_ids(umoci_layout)
    # no command: the image's Cmd runs in its WorkingDir
    assert pm(host, "run", "--rm", f"{image_name}:1").stdout.splitlines() == ["from-cmd", "/data"]
    out = pm(host, "run", "--rm", f"{image_name}:1", "sh", "-c", CHECK_UMOCI).stdout.splitlines()
    assert out == ["doomed-gone", "added", "kept", "c", "FOO=bar"]


def test_the_images_user_runs_the_command_and_u_overrides_it(host: AnyHost, umoci_layout: Path, image_name: str,
                                                             tmp_path: Path) -> None:
    """An image whose config says User runs as that user (an OCI image made to drop root
    must not run as root), and -u overrides it."""
    import shutil

    layout = tmp_path / "layout"
    shutil.copytree(umoci_layout, layout, symlinks=True)
    build.run("umoci", "config", "--image", f"{layout}:latest", "--config.user=4242:4343")
    pm(host, "image", "import", "-q", str(layout), "--name", f"{image_name}:user")

    def ids(*run_args: str) -> dict[str, str]:
        out = pm(host, "run", "--rm", *run_args, f"{image_name}:user", "sh", "-c",
                 "cat /proc/self/status; echo HOME: $HOME").stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return {k: fields[k].split()[0] for k in ("Uid", "Gid", "CapEff", "HOME")}

    assert ids() == {"Uid": "4242", "Gid": "4343", "CapEff": "0000000000000000", "HOME": "/"}
    as_root = ids("-u", "0")
    assert as_root["Uid"] == "0" and as_root["HOME"] == "/root" and as_root["CapEff"] != "0000000000000000"
    # exec runs as the container's user too, unless it says otherwise (docker's rule)
    name = unique("user")
    proc = host.popen(["pymachine", "run", "--rm", "--name", name, f"{image_name}:user", "sh", "-c", "sleep 60"])
    try:
        wait_until(lambda: pm(host, "exec", name, "true", check=False).returncode == 0, what=f"{name} running")
        status = "cat /proc/self/status"
        assert "\nUid:\t4242\t" in pm(host, "exec", name, "sh", "-c", status).stdout
        assert "\nUid:\t0\t" in pm(host, "exec", "-u", "0", name, "sh", "-c", status).stdout
    finally:
        pm(host, "rm", "-f", name, check=False)
        proc.communicate(timeout=60)


def test_docker_archive_from_skopeo_runs(host: AnyHost, umoci_layout: Path, image_name: str,
                                         tmp_path: Path) -> None:
    archive = build.docker_archive(umoci_layout, tmp_path / "da.tar", f"{image_name}:da")
    pm(host, "image", "import", "-q", str(archive))
    out = pm(host, "run", "--rm", f"{image_name}:da", "sh", "-c", CHECK_UMOCI).stdout.splitlines()
    assert out[0] == "doomed-gone" and out[-1] == "FOO=bar"


CHANGES = (
    "echo new > /new; rm /keep; rm -r /data/old; mkdir -p /data/fresh; echo f > /data/fresh/f; "
    "rm /etc/passwd; mkdir /opaque; echo 1 > /opaque/one"
)
CHECK_CHANGES = (
    "cat /new /data/fresh/f; for p in /keep /data/old /etc/passwd /etc/doomed; do "
    "test -e $p && echo $p-visible || echo $p-gone; done; ls /data; echo FOO=$FOO"
)
EXPECTED = ["new", "f", "/keep-gone", "/data/old-gone", "/etc/passwd-gone", "/etc/doomed-gone",
            "fresh", "FOO=bar"]


def test_commit_keeps_exactly_the_changes_and_round_trips(
    host: AnyHost, umoci_layout: Path, image_name: str, tmp_path: Path
) -> None:
    base = f"{image_name}:base"
    pm(host, "image", "import", "-q", str(umoci_layout), "--name", base)
    container = unique("commit")
    pm(host, "run", "--name", container, base, "sh", "-c", CHANGES)
    try:
        committed = f"{image_name}:committed"
        image_id = pm(host, "commit", "-q", container, committed).stdout.strip()
        assert image_id.startswith("sha256:")
        layers = layers_of(host, committed)
        assert layers[:2] == build.oci_diff_ids(umoci_layout) and len(layers) == 3
        assert pm(host, "run", "--rm", committed, "sh", "-c", CHECK_CHANGES).stdout.splitlines() == EXPECTED
        # the image's config (Cmd, WorkingDir, Env) is kept by commit
        assert pm(host, "run", "--rm", committed).stdout.splitlines() == ["from-cmd", "/data"]
        # a used image cannot be removed
        refused = pm(host, "image", "rm", base, check=False)
        assert refused.returncode != 0 and container in refused.stderr
    finally:
        pm(host, "rm", container)
    # export (OCI), remove, import: same digests, and the whiteouts still delete
    exported = tmp_path / "committed-oci.tar"
    pm(host, "image", "export", committed, str(exported), "--format", "oci")
    pm(host, "image", "rm", committed, base)
    pm(host, "image", "import", "-q", str(exported), "--name", f"{image_name}:again")
    assert layers_of(host, f"{image_name}:again") == layers
    assert pm(host, "run", "--rm", f"{image_name}:again", "sh", "-c", CHECK_CHANGES).stdout.splitlines() == EXPECTED
    # and skopeo, which no one here wrote, reads the export with the same layers
    back = tmp_path / "back"
    build.run("skopeo", "copy", "--quiet", f"oci-archive:{exported}:committed", f"oci:{back}:x")
    assert build.oci_diff_ids(back) == layers


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return out.getvalue()


def many_layer_archive(tmp: Path, ref: str, count: int) -> Path:
    """A docker-archive: the busybox root, then `count` layers each adding /l/<i>."""
    root_tar = build.tar_rootfs(build.busybox_rootfs(tmp / "root"), tmp / "root.tar").read_bytes()
    layers = [root_tar] + [_tar({f"l/{i:03d}": f"{i}\n".encode()}) for i in range(count)]
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    members = {f"{d[7:]}.tar": layer for d, layer in zip(diff_ids, layers, strict=True)}
    members[config_name] = config
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [f"{d[7:]}.tar" for d in diff_ids]}]
    members["manifest.json"] = json.dumps(manifest).encode()
    path = tmp / "many.tar"
    path.write_bytes(_tar(members))
    return path


def test_an_image_of_many_layers_runs(host: AnyHost, image_name: str, tmp_path: Path) -> None:
    """121 layers: the store paths alone would overflow overlayfs's one-page option string."""
    archive = many_layer_archive(tmp_path, f"{image_name}:many", 120)
    pm(host, "image", "import", "-q", str(archive))
    assert len(layers_of(host, f"{image_name}:many")) == 121
    out = pm(host, "run", "--rm", f"{image_name}:many", "sh", "-c", "cat /l/* | wc -l; cat /l/119").stdout
    assert out.split() == ["120", "119"]


def test_commit_of_a_running_container_freezes_it(host: AnyHost, image_name: str) -> None:
    container = unique("frozen")
    proc = host.popen(["pymachine", "run", "--name", container, "busybox", "sh", "-c",
                       "echo during > /during; sleep 30"])
    try:
        deadline = time.monotonic() + 20
        while host.run(["machinectl", "show", container]).returncode != 0:
            assert time.monotonic() < deadline, "the container did not start"
            time.sleep(0.1)
        time.sleep(0.5)
        pm(host, "commit", "-q", container, f"{image_name}:live")
        unit = host.run(["machinectl", "show", "-p", "Unit", "--value", container], check=True).stdout.strip()
        state = host.run(["systemctl", "show", unit, "-p", "FreezerState", "--value"], check=True).stdout
        assert state.strip() == "running", "the container must be thawed after the commit"
        assert pm(host, "run", "--rm", f"{image_name}:live", "cat", "/during").stdout == "during\n"
    finally:
        host.run(["machinectl", "terminate", container])
        proc.communicate(timeout=30)
        pm(host, "rm", container, check=False)


FREEZE_PROBE = r"""
import json, os, subprocess, sys, time
from machinectl_py.freezer import frozen_unit

def show(*argv):
    return subprocess.check_output(argv, text=True).strip()

name = sys.argv[1]
leader = int(show("machinectl", "show", "-p", "Leader", "--value", name))
unit = show("machinectl", "show", "-p", "Unit", "--value", name)
pure_v2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")

def cgroup_path(hierarchy):
    # "unified": the cgroup2 line (id 0); else the v1 hierarchy holding that controller
    for line in open(f"/proc/{leader}/cgroup"):
        hid, controllers, path = line.rstrip("\n").split(":", 2)
        if (hierarchy == "unified" and hid == "0") or hierarchy in controllers.split(","):
            return path
    return None

def freezer():
    # pure v2: the unit's cgroup (systemd's FreezeUnit); hybrid: the v1 freezer (freezer.py's fallback)
    if pure_v2:
        path = cgroup_path("unified")
        events = dict(line.split() for line in open(f"/sys/fs/cgroup{path}/cgroup.events"))
        return {"cgroup": path, "frozen": events["frozen"] == "1"}
    path = cgroup_path("freezer")
    try:
        state = open(f"/sys/fs/cgroup/freezer{path}/freezer.state").read().strip()
    except (FileNotFoundError, TypeError):
        state = "no-freezer"
    return {"cgroup": path, "frozen": state == "FROZEN", "v1": state}

def count():
    try:
        return open(f"/proc/{leader}/root/count").read().strip()
    except FileNotFoundError:
        return ""

def advances(since, timeout):
    deadline = time.monotonic() + timeout
    while count() in ("", since):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True

result = {"pure_v2": pure_v2, "counting": advances("", 20)}
result["before"] = {**freezer(), "unit": show("systemctl", "show", "-p", "FreezerState", "--value", unit)}
with frozen_unit(unit):
    result["during"] = {**freezer(), "unit": show("systemctl", "show", "-p", "FreezerState", "--value", unit)}
    first = count()
    time.sleep(1)
    result["stopped"] = count() == first
result["after"] = {**freezer(), "unit": show("systemctl", "show", "-p", "FreezerState", "--value", unit)}
result["resumed"] = advances(first, 20)
print(json.dumps(result))
"""


def test_freezing_really_stops_the_container_and_restores_it(host: AnyHost) -> None:
    """Both cgroup layouts: on pure v2 systemd's FreezeUnit freezes the unit's cgroup (cgroup.events
    `frozen 1`, FreezerState `frozen`); on a hybrid host freezer.py falls back to the v1 freezer
    (systemd, which does not know about it, keeps saying `running`). Either way a counter in the
    container stops while frozen and runs again afterwards."""
    container = unique("freeze")
    counter = "i=0; while :; do i=$((i+1)); echo $i > /count; sleep 0.05; done"
    proc = host.popen(["pymachine", "run", "--name", container, "--rm", "busybox", "sh", "-c", counter])
    try:
        deadline = time.monotonic() + 20
        while host.run(["machinectl", "show", container]).returncode != 0:
            assert time.monotonic() < deadline, "the container did not start"
            time.sleep(0.1)
        checkout = str(Path(__file__).resolve().parents[2])
        out = host.run(["python3", "-c", FREEZE_PROBE, container], env={"PYTHONPATH": checkout}, check=True)
        r = json.loads(out.stdout)
        assert r["counting"], out.stdout
        assert not r["before"]["frozen"] and r["before"]["unit"] == "running", out.stdout
        assert r["during"]["frozen"] and r["stopped"], out.stdout
        assert not r["after"]["frozen"] and r["after"]["unit"] == "running" and r["resumed"], out.stdout
        assert r["after"]["cgroup"] == r["before"]["cgroup"], out.stdout  # processes back where they were
        # systemd itself froze the unit on v2; on hybrid it cannot, and the v1 freezer did
        assert r["during"]["unit"] == ("frozen" if r["pure_v2"] else "running"), out.stdout
    finally:
        host.run(["machinectl", "terminate", container])
        proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def debian_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Debian root file system (debootstrap --variant=minbase), tarred by GNU tar."""
    work = tmp_path_factory.mktemp("debootstrap")
    root = build.debootstrap_minbase(work / "root")
    return build.tar_rootfs(root, work / "debian.tar")


@pytest.mark.slow
def test_debootstrap_rootfs_imports_runs_and_exports_byte_for_byte(
    host: AnyHost, debian_tarball: Path, image_name: str, tmp_path: Path
) -> None:
    pm(host, "image", "import", "-q", str(debian_tarball), "--name", f"{image_name}:debian")
    digest = "sha256:" + hashlib.sha256(debian_tarball.read_bytes()).hexdigest()
    assert layers_of(host, f"{image_name}:debian") == [digest]
    out = pm(host, "run", "--rm", f"{image_name}:debian", "sh", "-c",
             ". /etc/os-release; echo $ID; dpkg-query -W -f '${Package}\\n' dpkg; test -c /dev/null && echo dev")
    assert out.stdout.split() == ["debian", "dpkg", "dev"]
    # the layer's original tar comes back byte for byte (device nodes of /dev included, though
    # they were never created in the store)
    exported = tmp_path / "debian-export.tar"
    pm(host, "image", "export", f"{image_name}:debian", str(exported))
    with tarfile.open(exported) as outer:
        member = outer.extractfile(digest[7:] + ".tar")
        assert member is not None
        assert hashlib.sha256(member.read()).hexdigest() == digest[7:]
