"""pymachine-runc with its real peers in the test host: runc on the same bundle, and containerd
(Debian's package, started as its own systemd service) running tasks through the runc v2 shim
with pymachine-runc as its runc binary (`ctr run --runc-binary`)."""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        ps = host.run(["pymachine", "ps"], check=True).stdout
        row = next(line for line in ps.splitlines() if line.startswith(cid + " "))
        assert "oci/containerd" in row and "running" in row and unit in row, ps
        [listed] = [e for e in json.loads(host.run(["pymachine", "ps", "--json"], check=True).stdout)
                    if e["name"] == cid]
        assert (listed["origin"], listed["command"]) == ("oci/containerd", ["busybox", "sleep", "1000"]), listed
        [inspected] = json.loads(host.run(["pymachine", "inspect", cid], check=True).stdout)
        assert (inspected["Origin"], inspected["State"]["Status"], inspected["Unit"]) == (
            "oci/containerd", "running", unit), inspected
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
    assert cid not in host.run(["pymachine", "ps", "-a"], check=True).stdout
    host.assert_no_leftovers(timeout=15)


def test_ctr_seccomp(host: AnyHost, containerd: str) -> None:
    """`ctr run --seccomp`: containerd's default profile in linux.seccomp, compiled and installed
    (mode 2, a filter) for an exec'd process too."""
    cid = f"sc-{secrets.token_hex(2)}"
    probe = ["busybox", "grep", "Seccomp:", "/proc/self/status"]
    try:
        host.run(["ctr", "run", "-d", "--seccomp", "--runc-binary", containerd, IMAGE, cid, "busybox", "sleep",
                  "1000"], check=True, timeout=60)
        r = host.run(["ctr", "task", "exec", "--exec-id", "s", cid, *probe], timeout=60)
        assert (r.returncode, r.stdout.split()) == (0, ["Seccomp:", "2"]), r.stderr
    finally:
        host.run(["ctr", "task", "kill", "-s", "SIGKILL", cid])
        wait_until(lambda: cid not in host.run(["ctr", "task", "ls"]).stdout
                   or "STOPPED" in host.run(["ctr", "task", "ls"]).stdout, what="the task to stop")
        host.run(["ctr", "task", "rm", "-f", cid])
        host.run(["ctr", "container", "rm", cid])
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


def run_once(host: AnyHost, runtime: str, bundle: Path, work: Path, *,
             during: list[str] | None = None, exec_flags: tuple[str, ...] = ()) -> tuple[str, str]:
    """create, start, (exec `during` while it runs), wait, delete: (the container's output, the exec's)."""
    cid, root = f"oci-{secrets.token_hex(3)}", str(work / f"root-{secrets.token_hex(2)}")
    base = [runtime, "--root", root]
    out = work / f"out-{secrets.token_hex(2)}"
    r = host.run(["sh", "-c", '"$@" </dev/null >"$0" 2>&1', str(out), *base, "create", "--bundle", str(bundle), cid])
    assert r.returncode == 0, (runtime, r.stderr, out.read_text())
    r = host.run([*base, "start", cid])
    assert r.returncode == 0, (runtime, r.stderr, out.read_text())
    exec_out = ""
    if during is not None:
        e = host.run([*base, "exec", *exec_flags, cid, *during])
        exec_out = e.stdout + e.stderr
        host.run([*base, "kill", cid, "KILL"])
    wait_until(lambda: json.loads(host.run([*base, "state", cid]).stdout)["status"] == "stopped",
               what="the container to stop")
    host.run([*base, "delete", cid], check=True)
    return out.read_text(), exec_out


def edit_spec(bundle: Path, change: Any) -> None:
    spec = json.loads((bundle / "config.json").read_text())
    change(spec)
    (bundle / "config.json").write_text(json.dumps(spec))


SECCOMP = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
           "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}]}


def test_seccomp_beside_runc(host: AnyHost, tmp_path: Path) -> None:
    """linux.seccomp: the container's process and an exec'd one get the filter (errnoRet 95,
    EOPNOTSUPP, where the read-only root would say EROFS), as with runc."""
    bundle = make_bundle(tmp_path / "bundle", [])
    seen = {}
    for runtime in ("runc", runc_binary(host)):
        write_spec(host, runtime, bundle, ["sh", "-c", "mkdir /x; echo up; exec sleep 100"])
        edit_spec(bundle, lambda spec: spec["linux"].__setitem__("seccomp", SECCOMP))
        seen[runtime] = run_once(host, runtime, bundle, tmp_path, during=["mkdir", "/y"])
    ours = seen[runc_binary(host)]
    assert "not supported" in ours[0] and "up" in ours[0] and "not supported" in ours[1], ours
    assert [o.replace("runc", "") for o in ours] == [o.replace("runc", "") for o in seen["runc"]], seen
    host.assert_no_leftovers(timeout=15)


def test_sysctl_beside_runc(host: AnyHost, tmp_path: Path) -> None:
    """linux.sysctl: namespaced ones written in the container's namespaces (the host's unchanged);
    one that is not namespaced is refused in one line, by both."""
    bundle = make_bundle(tmp_path / "bundle", [])
    host_shmmax = host.run(["cat", "/proc/sys/kernel/shmmax"], check=True).stdout
    outputs = []
    for runtime in ("runc", runc_binary(host)):
        write_spec(host, runtime, bundle, ["cat", "/proc/sys/kernel/shmmax", "/proc/sys/net/ipv4/ip_forward"])
        edit_spec(bundle, lambda spec: spec["linux"].__setitem__(
            "sysctl", {"kernel.shmmax": "12345", "net.ipv4.ip_forward": "1"}))
        outputs.append(run_once(host, runtime, bundle, tmp_path)[0])
        edit_spec(bundle, lambda spec: spec["linux"].__setitem__("sysctl", {"kernel.panic": "1"}))
        r = host.run([runtime, "--root", str(tmp_path / "refused"), "create", "--bundle", str(bundle), "refused"])
        assert r.returncode != 0, runtime
    assert outputs == ["12345\n1\n", "12345\n1\n"], outputs
    assert host.run(["cat", "/proc/sys/kernel/shmmax"], check=True).stdout == host_shmmax
    host.assert_no_leftovers(timeout=15)


HOOK = "cat > {dir}/{kind}.json"


def test_hooks_beside_runc(host: AnyHost, tmp_path: Path) -> None:
    """hooks: each kind runs once, with the OCI state on its stdin, at the same point of the
    lifecycle as runc's (the status it is told), createContainer and startContainer inside the
    container's namespaces (startContainer in its root: its /bin/sh, its mounts; createContainer,
    as runc's before the pivot, with the runtime's files), the others in the runtime's."""
    bundle = make_bundle(tmp_path / "bundle", [])
    seen: dict[str, dict[str, dict[str, Any]]] = {}
    for runtime in ("runc", runc_binary(host)):
        out = tmp_path / f"hooks-{len(seen)}"
        out.mkdir()

        def add_hooks(spec: dict[str, Any], out: Path = out) -> None:
            spec["mounts"].append({"destination": "/hooks", "type": "bind", "source": str(out),
                                   "options": ["rbind", "rw"]})
            spec["hooks"] = {kind: [{"path": "/bin/sh", "args": ["sh", "-c", HOOK.format(
                dir="/hooks" if kind == "startContainer" else out, kind=kind)]}]
                for kind in ("prestart", "createRuntime", "createContainer", "startContainer", "poststart",
                             "poststop")}
        write_spec(host, runtime, bundle, ["true"])
        edit_spec(bundle, add_hooks)
        run_once(host, runtime, bundle, tmp_path)
        seen[runtime] = {p.stem: json.loads(p.read_text()) for p in out.iterdir()}
    ours, theirs = seen[runc_binary(host)], seen["runc"]
    assert set(ours) == set(theirs) == {"prestart", "createRuntime", "createContainer", "startContainer",
                                        "poststart", "poststop"}, (ours, theirs)
    # runc tells poststart "created" (its exec FIFO is still there then); the runtime spec says running.
    assert ours.pop("poststart")["status"] == "running" and theirs.pop("poststart")["status"] in ("created", "running")
    for kind in ours:
        assert ours[kind]["status"] == theirs[kind]["status"], (kind, ours[kind], theirs[kind])
        assert set(ours[kind]) == set(theirs[kind]), (kind, ours[kind], theirs[kind])
        assert (ours[kind].get("pid", 0) > 0) == (theirs[kind].get("pid", 0) > 0), kind
    host.assert_no_leftovers(timeout=15)


def test_failing_hook_fails_create(host: AnyHost, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", [])
    ours = runc_binary(host)
    write_spec(host, ours, bundle, ["true"])
    edit_spec(bundle, lambda spec: spec.__setitem__(
        "hooks", {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 7"]}]}))
    r = host.run(["sh", "-c", '"$@" </dev/null', "x", ours, "--root", str(tmp_path / "root"), "create", "--bundle",
                  str(bundle), "failing"])
    assert r.returncode != 0 and "createRuntime hook /bin/sh failed with exit status 7: nope" in r.stderr, r.stderr
    assert not (tmp_path / "root" / "failing").exists()
    host.assert_no_leftovers(timeout=15)


def test_user_namespace_beside_runc(host: AnyHost, tmp_path: Path) -> None:
    """linux.uidMappings/gidMappings: the process runs in a user namespace with the mapping, on a
    root the engine chowned to it, as with runc."""
    # The mapped root must reach the bundle: pytest's directories are root's, 0700, for the test
    # (changed as the test host sees them: its /tmp is an overlay of ours).
    dirs = [d for d in (tmp_path, *tmp_path.parents) if str(d).startswith(tempfile.gettempdir() + "/")]
    modes = {d: d.stat().st_mode & 0o7777 for d in dirs}
    try:
        for d in dirs:
            host.run(["chmod", f"{modes[d] | 0o011:o}", str(d)], check=True)
        _user_namespace_beside_runc(host, tmp_path)
    finally:
        for d, mode in modes.items():
            host.run(["chmod", f"{mode:o}", str(d)])
            d.chmod(mode)
    host.assert_no_leftovers(timeout=15)


def _user_namespace_beside_runc(host: AnyHost, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle", [])
    host.run(["chown", "-R", "-h", "100000:100000", str(bundle / "rootfs")], check=True)
    mapping = [{"containerID": 0, "hostID": 100000, "size": 65536}]

    def userns(spec: dict[str, Any]) -> None:
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = spec["linux"]["gidMappings"] = mapping
    outputs = []
    for runtime in (runc_binary(host), "runc"):
        write_spec(host, runtime, bundle, ["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map; stat -c %u /bin"])
        edit_spec(bundle, userns)
        outputs.append(run_once(host, runtime, bundle, tmp_path)[0])
    assert outputs[0] == outputs[1], outputs
    assert outputs[1].split() == ["0", "100000", "65536", "0", "100000", "65536", "0"], outputs


def test_exec_process_confinement_beside_runc(host: AnyHost, tmp_path: Path) -> None:
    """exec: ARGS get the container's noNewPrivileges and rlimits; a process.json's own are
    honoured; as runc does."""
    bundle = make_bundle(tmp_path / "bundle", [])
    probe = ["sh", "-c", "busybox grep NoNewPrivs /proc/self/status; ulimit -n"]
    process = {"args": probe, "cwd": "/", "user": {"uid": 0, "gid": 0}, "noNewPrivileges": False,
               "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
               "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 77, "hard": 77}]}
    (tmp_path / "process.json").write_text(json.dumps(process))
    seen = {}
    for runtime in ("runc", runc_binary(host)):
        write_spec(host, runtime, bundle, ["sleep", "100"])
        given = run_once(host, runtime, bundle, tmp_path, during=[],
                         exec_flags=("--process", str(tmp_path / "process.json")))[1]
        inherited = run_once(host, runtime, bundle, tmp_path, during=probe)[1]
        seen[runtime] = (given, inherited)
    ours = seen[runc_binary(host)]
    assert ours[0].split() == ["NoNewPrivs:", "0", "77"], ours
    assert ours[1].split() == ["NoNewPrivs:", "1", "1024"], ours
    assert ours == seen["runc"], seen
    host.assert_no_leftovers(timeout=15)


def test_missing_executable_fails_create_beside_runc(host: AnyHost, tmp_path: Path) -> None:
    """As runc's, `create` (not `start`) fails when the process's executable is not in the
    container's PATH, and leaves nothing."""
    bundle = make_bundle(tmp_path / "bundle", [])
    for runtime in ("runc", runc_binary(host)):
        write_spec(host, runtime, bundle, ["no-such-program", "x"])
        root = tmp_path / f"root-{runtime.rpartition('/')[2]}"
        r = host.run(["sh", "-c", '"$@" </dev/null', "x", runtime, "--root", str(root), "create", "--bundle",
                      str(bundle), "missing"])
        assert r.returncode != 0 and "executable file not found in $PATH" in r.stderr, (runtime, r.stderr)
        assert host.run([runtime, "--root", str(root), "state", "missing"]).returncode != 0, runtime
    host.assert_no_leftovers(timeout=15)
