"""pymachine-runc with its real peers in the test host: runc on the same bundle, and containerd
(Debian's package, started as its own systemd service) running tasks through the runc v2 shim
with pymachine-runc as its runc binary (`ctr run --runc-binary`)."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import machine_names, wait_until
from images import build
from testhost import LocalHost, TestHost

pytestmark = pytest.mark.integration

AnyHost = TestHost | LocalHost
IMAGE = "docker.io/library/test:latest"
CONTAINERD_CONFIG = "version = 2\n"


def runc_binary(host: AnyHost) -> str:
    return host.run(["sh", "-c", "command -v pymachine-runc"], check=True).stdout.strip()


def make_bundle(where: Path, args: list[str]) -> Path:
    (where / "rootfs").mkdir(parents=True)
    build.busybox_rootfs(where / "rootfs")
    for applet in ("sleep", "hostname", "ps"):
        (where / "rootfs" / "bin" / applet).symlink_to("busybox")
    return where


def write_spec(host: AnyHost, runtime: str, bundle: Path, args: list[str]) -> None:
    (bundle / "config.json").unlink(missing_ok=True)
    host.run([runtime, "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    (bundle / "config.json").write_text(json.dumps(spec))


def test_bundle_lifecycle_beside_runc(host: AnyHost, tmp_path: Path) -> None:
    """spec, create, state, start, state, delete: the same shapes and statuses as runc's."""
    bundle = make_bundle(tmp_path / "bundle", [])
    ours = runc_binary(host)
    seen: dict[str, list[dict[str, object]]] = {}
    for runtime in ("runc", ours):
        write_spec(host, runtime, bundle, ["sh", "-c", "echo started"])
        cid = f"oci-{secrets.token_hex(3)}"
        root = str(tmp_path / f"root-{len(seen)}")
        base = [runtime, "--root", root]
        # As the shim does, the container's stdio is not the caller's pipe (the held init keeps it open).
        out = tmp_path / f"out-{len(seen)}"
        host.run(["sh", "-c", '"$@" </dev/null >"$0" 2>&1', str(out), *base, "create", "--bundle", str(bundle),
                  "--pid-file", str(tmp_path / "pid"), cid], check=True)
        created = json.loads(host.run([*base, "state", cid], check=True).stdout)
        assert int((tmp_path / "pid").read_text()) == created["pid"] > 0
        if runtime == ours:
            assert cid in machine_names(host), "a created container is a machine already"
        host.run([*base, "start", cid], check=True)
        wait_until(lambda base=base, cid=cid: json.loads(host.run([*base, "state", cid]).stdout)["status"]  # type: ignore[misc]
                   == "stopped", what="the container to stop")
        stopped = json.loads(host.run([*base, "state", cid], check=True).stdout)
        assert out.read_text() == "started\n"
        host.run([*base, "delete", cid], check=True)
        gone = host.run([*base, "state", cid])
        assert gone.returncode != 0
        seen[runtime] = [created, stopped]
    runc_created, runc_stopped = seen["runc"]
    ours_created, ours_stopped = seen[ours]
    assert set(runc_created) == set(ours_created), "the same state fields as runc's"
    assert (ours_created["status"], ours_stopped["status"]) == (runc_created["status"], runc_stopped["status"])
    host.assert_no_leftovers(timeout=15)


def test_usage_errors(host: AnyHost, tmp_path: Path) -> None:
    ours = runc_binary(host)
    for argv in (["no-such-command"], ["create", "--no-such-flag", "x"], ["state", "nonexistent"],
                 ["create", "--bundle", str(tmp_path), "x"]):
        r = host.run([ours, "--root", str(tmp_path / "root"), *argv])
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, (argv, r.stderr)
    assert not (tmp_path / "root" / "x").exists(), "a failed create leaves nothing"


@pytest.fixture(scope="module")
def containerd(host: AnyHost, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """containerd as the test host's own systemd service, its state on a tmpfs, with an image
    built here imported (a docker-archive made by umoci and skopeo)."""
    work = tmp_path_factory.mktemp("ctr-image")
    layout = build.umoci_two_layers(work)
    archive = build.docker_archive(layout, work / "image.tar", IMAGE)
    for path in ("/var/lib/containerd", "/run/containerd"):
        host.run(["mkdir", "-p", path, "/etc/containerd"], check=True)
    host.run(["mount", "-t", "tmpfs", "tmpfs", "/var/lib/containerd"], check=True)
    host.run(["sh", "-c", f"printf '{CONTAINERD_CONFIG}' > /etc/containerd/config.toml"], check=True)
    host.run(["systemctl", "restart", "containerd"], check=True)
    host.run(["ctr", "images", "import", str(archive)], check=True, timeout=120)
    yield runc_binary(host)
    host.run(["systemctl", "stop", "containerd"])
    host.run(["umount", "-l", "/var/lib/containerd"])
    shutil.rmtree(work, ignore_errors=True)


def test_ctr_run_exit_code(host: AnyHost, containerd: str) -> None:
    r = host.run(["ctr", "run", "--rm", "--runc-binary", containerd, IMAGE, f"t1-{secrets.token_hex(2)}",
                  "sh", "-c", "echo hi; exit 3"], timeout=60)
    assert (r.returncode, r.stdout) == (3, "hi\n"), r.stderr
    host.assert_no_leftovers(timeout=15)


def test_ctr_detached_task(host: AnyHost, containerd: str) -> None:
    """A detached task is a machine and a scope named after it; exec, ps and kill work through the
    shim; after kill and rm nothing is left."""
    cid = f"t2-{secrets.token_hex(2)}"
    host.run(["ctr", "run", "-d", "--memory-limit", str(64 * 1024 * 1024), "--runc-binary", containerd, IMAGE,
              cid, "busybox", "sleep", "1000"], check=True, timeout=60)
    try:
        assert cid in machine_names(host)
        unit = "machine-" + cid.replace("-", "\\x2d") + ".scope"
        show = host.run(["systemctl", "show", "-p", "ActiveState,MemoryMax", unit], check=True).stdout
        assert "ActiveState=active" in show and f"MemoryMax={64 * 1024 * 1024}" in show, show
        r = host.run(["ctr", "task", "exec", "--exec-id", "x", cid, "sh", "-c", "echo in-exec; exit 4"], timeout=60)
        assert (r.returncode, r.stdout) == (4, "in-exec\n"), r.stderr
        ps = host.run(["ctr", "task", "ps", cid], check=True).stdout
        assert len(ps.splitlines()) >= 2, ps
        journal = host.run(["journalctl", "-q", "--no-pager", f"CONTAINER_NAME={cid}"]).stdout
        assert f"started {cid}" in journal, journal
        host.run(["ctr", "task", "pause", cid], check=True)
        assert f"{cid}" in host.run(["ctr", "task", "ls"]).stdout.split("PAUSED")[0]
        host.run(["ctr", "task", "resume", cid], check=True)
        r = host.run(["ctr", "task", "exec", "--exec-id", "y", cid, "true"], timeout=60)
        assert r.returncode == 0, r.stderr
        host.run(["ctr", "task", "kill", "-s", "SIGKILL", cid], check=True)
        wait_until(lambda: "STOPPED" in host.run(["ctr", "task", "ls"]).stdout, what="the task to stop")
    finally:
        host.run(["ctr", "task", "rm", "-f", cid])
        host.run(["ctr", "container", "rm", cid])
    assert cid not in machine_names(host)
    host.assert_no_leftovers(timeout=15)


def test_ctr_shared_network_namespace(host: AnyHost, containerd: str) -> None:
    """Two containers in one network, IPC and UTS namespace, as the containers of a Kubernetes
    pod: the second joins the first's by path (linux.namespaces[].path)."""
    first, second = f"n1-{secrets.token_hex(2)}", f"n2-{secrets.token_hex(2)}"
    run = ["ctr", "run", "-d", "--runc-binary", containerd]
    try:
        host.run([*run, IMAGE, first, "busybox", "sleep", "1000"], check=True, timeout=60)
        pid = host.run(["sh", "-c", f"ctr task ls | awk '$1 == \"{first}\" {{print $2}}'"], check=True).stdout.strip()
        host.run([*run, *(f"--with-ns={kind}:/proc/{pid}/ns/{ns}" for kind, ns in
                           (("network", "net"), ("ipc", "ipc"), ("uts", "uts"))),
                  IMAGE, second, "busybox", "sleep", "1000"], check=True, timeout=60)
        script = "for ns in net ipc uts; do busybox readlink /proc/self/ns/$ns; done"
        nss = [host.run(["ctr", "task", "exec", "--exec-id", "n", name, "sh", "-c", script],
                        check=True).stdout for name in (first, second)]
        assert nss[0] == nss[1] and nss[0].startswith("net:"), nss
        host_net = host.run(["readlink", "/proc/self/ns/net"], check=True).stdout
        assert host_net.strip() not in nss[0], "a network namespace of its own, not the host's"
        assert {first, second} <= set(machine_names(host))
    finally:
        for name in (first, second):
            host.run(["ctr", "task", "kill", "-s", "SIGKILL", name])
        for name in (first, second):
            wait_until(lambda name=name: "RUNNING" not in host.run(["ctr", "task", "ls"]).stdout,  # type: ignore[misc]
                       what="the tasks to stop")
            host.run(["ctr", "task", "rm", "-f", name])
            host.run(["ctr", "container", "rm", name])
    host.assert_no_leftovers(timeout=15)


CONSOLE_DRIVER = r"""
import array, os, socket, subprocess, sys
runtime, root, bundle, cid, sock_path = sys.argv[1:6]
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sock_path)
server.listen(1)
proc = subprocess.Popen([runtime, "--root", root, "create", "--bundle", bundle, "--console-socket", sock_path, cid],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
conn, _ = server.accept()
msg, fds, _, _ = socket.recv_fds(conn, 1024, 1)
assert proc.wait(60) == 0, "create failed"
subprocess.run([runtime, "--root", root, "start", cid], check=True)
out = b""
while b"done" not in out:
    try:
        chunk = os.read(fds[0], 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
print(out.decode(errors="replace"))
"""


def test_console_socket(host: AnyHost, tmp_path: Path) -> None:
    """terminal: true with --console-socket: the init's pty master reaches the socket's owner (as
    containerd's shim receives it), and the process has a terminal."""
    bundle = make_bundle(tmp_path / "bundle", [])
    ours = runc_binary(host)
    write_spec(host, ours, bundle, ["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo on-a-tty; echo done"])
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = True
    (bundle / "config.json").write_text(json.dumps(spec))
    cid, root = f"tty-{secrets.token_hex(2)}", str(tmp_path / "root")
    r = host.run(["python3", "-c", CONSOLE_DRIVER, ours, root, str(bundle), cid, str(tmp_path / "console.sock")],
                 timeout=90)
    assert r.returncode == 0 and "on-a-tty" in r.stdout, (r.stdout, r.stderr)
    wait_until(lambda: json.loads(host.run([ours, "--root", root, "state", cid]).stdout)["status"] == "stopped",
               what="the container to stop")
    host.run([ours, "--root", root, "delete", cid], check=True)
    host.assert_no_leftovers(timeout=15)
