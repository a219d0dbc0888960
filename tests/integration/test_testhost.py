"""The systemd test host itself: it boots a real systemd, runs commands in its cgroup tree, and
leaves nothing behind on the real host, whether stopped, failed, killed or terminated."""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from testhost import (
    STATE_BASE,
    UPLINK,
    UPLINK6_CIDR,
    UPLINK_ADDRESS,
    UPLINK_CIDR,
    UPLINK_PEER,
    UPLINK_PEER_CIDR,
    HostCommandError,
    LocalHost,
    TestHost,
    TestHostError,
    cgroup_hierarchies,
    clean_stale,
    get_host,
    is_pure_cgroup2,
    process_alive,
    process_start_time,
    systemd_is_pid1,
)

pytestmark = pytest.mark.integration

AnyHost = TestHost | LocalHost
TESTHOST_PY = Path(__file__).resolve().parents[2] / "tools" / "testhost.py"
MEMORY_MAX = 64 * 1024 * 1024


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def wait_for(predicate: object, timeout: float = 5.0, what: str = "condition") -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@functools.cache
def slowdown() -> float:
    """How many times slower than a plain machine this one starts processes (about 10 under the VM
    tier's emulation): the time bounds of boots and teardowns scale with it."""
    best = min(_python_start_seconds() for _ in range(3))
    return max(1.0, best / 0.05)


def _python_start_seconds() -> float:
    began = time.monotonic()
    subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
    return time.monotonic() - began


# -- the session host ---------------------------------------------------------------------------


def test_boot_reaches_running(host: AnyHost, capsys: pytest.CaptureFixture[str]) -> None:
    state = host.run(["systemctl", "is-system-running"]).stdout.strip()
    failed = host.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"]).stdout
    if isinstance(host, TestHost):
        assert state == "running", f"state {state!r}, failed units:\n{failed}"
        assert host.boot_seconds is not None and host.boot_seconds < 30
        with capsys.disabled():
            print(f"\n[testhost] boot to running: {host.boot_seconds:.2f} s")
    else:
        assert state in ("running", "degraded"), state
    assert host.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_idle_host_costs_no_cpu(host: AnyHost) -> None:
    if not isinstance(host, TestHost):
        assert host.pid == 1
        return
    assert host._launcher is not None
    processes = [host._launcher.pid, host.pid]
    before = [cpu_ticks(pid) for pid in processes]
    time.sleep(1)
    used = [cpu_ticks(pid) - b for pid, b in zip(processes, before, strict=True)]
    assert max(used) <= os.sysconf("SC_CLK_TCK") // 20, f"launcher, PID 1 used {used} ticks in 1 s"


def test_machined_answers_on_the_system_bus(host: AnyHost) -> None:
    call = host.run(
        ["busctl", "call", "org.freedesktop.machine1", "/org/freedesktop/machine1",
         "org.freedesktop.machine1.Manager", "ListMachines"],
        timeout=30,
    )
    assert call.returncode == 0, call.stderr
    assert call.stdout.startswith("a(ssso) "), call.stdout
    assert host.run(["systemctl", "is-active", "systemd-machined.service"]).stdout.strip() == "active"


def test_commands_get_a_clean_environment(host: AnyHost, tmp_path: Path) -> None:
    script = 'echo "$PATH|$LANG|$SYSTEMD_PAGER|$SYSTEMD_COLORS|$EXTRA|$(pwd)"; cat'
    r = host.run(["sh", "-c", script], env={"EXTRA": "x y"}, cwd=str(tmp_path), input="from stdin")
    path, lang, pager, colors, extra, cwd = r.stdout.splitlines()[0].split("|")
    assert path.split(":")[0] == host.path_prepend[0]
    assert (lang, pager, colors, extra, cwd) == ("C.UTF-8", "cat", "0", "x y", str(tmp_path))
    assert r.stdout.splitlines()[1] == "from stdin"


def test_check_raises_with_the_output(host: AnyHost) -> None:
    with pytest.raises(HostCommandError) as caught:
        host.run(["sh", "-c", "echo out-text; echo err-text >&2; exit 3"], check=True)
    assert caught.value.returncode == 3
    assert "out-text" in str(caught.value) and "err-text" in str(caught.value)


def test_timeout_kills_the_command_inside(host: AnyHost) -> None:
    marker = unique("testhost-timeout")
    with pytest.raises(subprocess.TimeoutExpired):
        host.run(["bash", "-c", f"exec -a {marker} sleep 60"], timeout=0.5)
    wait_for(lambda: host.run(["pgrep", "-f", marker]).returncode == 1, what=f"{marker} to die")


def test_namespaces_are_private_including_the_network(host: AnyHost) -> None:
    names = ("net", "mnt", "pid", "cgroup")
    inside = host.run(["readlink", *(f"/proc/self/ns/{ns}" for ns in names)]).stdout.split()
    outside = [os.readlink(f"/proc/self/ns/{ns}") for ns in names]
    if isinstance(host, TestHost):
        # pytest's thread joined the host's network namespace (conftest): compare with the one it left
        outside[0] = os.environ["PYMACHINE_TEST_MACHINE_NETNS"]
        assert all(i != o for i, o in zip(inside, outside, strict=True)), (inside, outside)
        assert host.run(["hostname"]).stdout.strip() == "pymachine-testhost"
    else:
        assert inside == outside, "LocalHost runs commands on this machine itself"


def test_the_network_is_lo_and_the_fake_uplink(host: AnyHost) -> None:
    """Bridges, veths and nft rules of the tests live only here: lo, and a veth pair as the uplink
    (the VM tier's guest sets up the same with `testhost.py fake-network`)."""
    links = json.loads(host.run(["ip", "-j", "addr"], check=True).stdout)
    addrs = {link["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]
             for link in links}
    assert addrs["lo"] == ["127.0.0.1/8"]
    assert addrs[UPLINK] == [UPLINK_CIDR] and addrs[UPLINK_PEER] == [UPLINK_PEER_CIDR]
    six = {link["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                            if a["family"] == "inet6" and a.get("scope") == "global"] for link in links}
    assert six[UPLINK] == [UPLINK6_CIDR], "an IPv6 address of the host, for ports published on IPv6"
    route = json.loads(host.run(["ip", "-j", "route", "show", "default"], check=True).stdout)
    assert route[0]["dev"] == UPLINK
    if isinstance(host, TestHost):
        assert set(addrs) == {"lo", UPLINK, UPLINK_PEER}, addrs
        # A server inside answers a client inside, on the uplink's address too.
        script = (f"import socket; s = socket.create_server(('{UPLINK_ADDRESS}', 0)); "
                  "c = socket.create_connection(s.getsockname()); print(s.accept()[1][0])")
        assert host.run(["python3", "-c", script], check=True).stdout.strip() == UPLINK_ADDRESS


def test_tmp_path_is_shared_and_the_rest_of_tmp_is_not(host: AnyHost, tmp_path: Path) -> None:
    (tmp_path / "from-outside").write_text("out")
    host.run(["sh", "-c", f"cat {tmp_path}/from-outside > {tmp_path}/from-inside"], check=True)
    assert (tmp_path / "from-inside").read_text() == "out"
    private = Path("/tmp", unique("testhost-private"))
    try:
        host.run(["sh", "-c", f"echo in > {private} && cat {private}"], check=True)
        assert private.exists() == isinstance(host, LocalHost), "writes to /tmp must stay in the test host"
    finally:
        private.unlink(missing_ok=True)


def test_scope_enforces_memory_max(host: AnyHost) -> None:
    unit = unique("testhost-mem") + ".scope"
    # Inside the scope: report its MemoryMax and the kernel's limit in its own cgroup (v1 or v2).
    script = (
        f"systemctl show -p MemoryMax --value {unit}; "
        "if [ -f /sys/fs/cgroup/cgroup.controllers ]; then "
        "  d=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup); cat $d/memory.max || ls $d; "
        "else cat /sys/fs/cgroup/memory$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)"
        "/memory.limit_in_bytes; fi"
    )
    r = host.run(["systemd-run", "--quiet", "--scope", f"--unit={unit}", "-p", "MemoryMax=64M",
                  "sh", "-c", script], check=True)
    assert r.stdout.split() == [str(MEMORY_MAX), str(MEMORY_MAX)]


def test_process_started_in_the_host_can_be_moved_into_a_scope(host: AnyHost) -> None:
    unit = unique("testhost-adopt") + ".scope"
    proc = host.popen(["sleep", "60"])
    try:
        pid_inside = proc.host_ns_pid
        assert pid_inside is not None
        call = host.run(
            ["busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
             "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))",
             unit, "fail", "2", "PIDs", "au", "1", str(pid_inside), "MemoryMax", "t", str(MEMORY_MAX), "0"],
        )
        assert call.returncode == 0, call.stderr
        wait_for(lambda: host.run(["systemctl", "is-active", unit]).stdout.strip() == "active", what=unit)
        shown = host.run(["systemctl", "show", "-p", "MemoryMax", "-p", "ControlGroup", unit]).stdout
        assert f"MemoryMax={MEMORY_MAX}" in shown
        # Seen from the real host: the process really sits in the scope's cgroup.
        assert proc.inner_pid is not None
        assert f"/{unit}" in Path(f"/proc/{proc.inner_pid}/cgroup").read_text()
        host.run(["systemctl", "stop", unit], check=True)
        assert proc.wait(10) != 0
    finally:
        proc.kill()
        proc.wait()


def test_journal_receives_logger_and_systemd_cat(host: AnyHost) -> None:
    tag = unique("testhost-log")
    host.run(["logger", "-t", tag, "via-logger"], check=True)
    host.run(["systemd-cat", "-t", tag], input="via-systemd-cat\n", check=True)

    def logged() -> bool:
        r = host.run(["journalctl", "--no-pager", "-o", "cat", "-t", tag])
        return "via-logger" in r.stdout and "via-systemd-cat" in r.stdout

    wait_for(logged, what=f"journal entries tagged {tag}")


def test_leftovers_sees_a_machine_scope(host: AnyHost) -> None:
    unit = unique("machine-testhost") + ".scope"
    proc = host.popen(["systemd-run", "--quiet", "--scope", f"--unit={unit}", "sleep", "60"])
    try:
        wait_for(lambda: any(unit in found for found in host.leftovers()), what=f"{unit} in leftovers()")
        with pytest.raises(AssertionError, match=unit):
            host.assert_no_leftovers(timeout=0)
    finally:
        proc.kill()
        proc.wait()
    host.assert_no_leftovers()


# -- separate test hosts: teardown leaves nothing ---------------------------------------------------


@pytest.fixture
def state_base() -> Iterator[Path]:
    """A private state base, so that test hosts started by other sessions (which clean stale state)
    cannot hide a leftover, nor clean up what a test wants to see cleaned by its own code."""
    base = STATE_BASE.with_name(unique("pymachine-testhost-test"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def mount_table() -> list[str]:
    """The real host's mounts (mount id, mount point, source): what must never change."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return sorted(" ".join(line.split()[i] for i in (0, 4)) for line in lines)


def processes_in_mount_namespace(ns: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/mnt") == ns:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def unit_load_state(unit: str) -> str:
    shown = subprocess.run(["systemctl", "show", "-p", "LoadState,ActiveState", "--value", unit],
                           capture_output=True, text=True, timeout=30)
    return " ".join(shown.stdout.split())


def assert_nothing_left(state_dir: Path, cgroups: list[str], pids: list[int], scope: str | None = None) -> None:
    assert not state_dir.exists(), f"{state_dir} left behind"
    assert cgroups and not [cg for cg in cgroups if os.path.exists(cg)], "cgroups left behind"
    assert not [pid for pid in pids if process_start_time(pid) is not None], "processes left behind"
    assert not [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(state_dir) in line], "mounts left behind"
    if scope:  # pure v2 under systemd: the delegated scope is gone from systemd too
        assert unit_load_state(scope) == "not-found inactive", f"{scope} left behind"


def assert_memory_max_is_enforced(h: TestHost) -> None:
    """Controllers reach the host's systemd: a scope's MemoryMax lands in its cgroup (v1 or v2)."""
    script = (
        "if [ -f /sys/fs/cgroup/cgroup.controllers ]; then "
        "  d=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup); cat $d/memory.max || ls $d; "
        "else cat /sys/fs/cgroup/memory$(sed -n 's/^[0-9]*:memory://p' /proc/self/cgroup)"
        "/memory.limit_in_bytes; fi"
    )
    r = h.run(["systemd-run", "--quiet", "--scope", "-p", "MemoryMax=64M", "sh", "-c", script])
    if r.stdout.split() != [str(MEMORY_MAX)]:
        tree = h.run(["sh", "-c", "cat /proc/self/cgroup; findmnt /sys/fs/cgroup; for d in /sys/fs/cgroup "
                      "/sys/fs/cgroup/*/; do echo $d $(cat $d/cgroup.controllers) / $(cat $d/cgroup.subtree_control); "
                      "done; systemctl show -p DefaultMemoryAccounting"])
        raise AssertionError(f"{r.stdout}\n{r.stderr}\n{tree.stdout}\n{tree.stderr}")


def test_stopped_host_leaves_nothing_behind(state_base: Path) -> None:
    mounts_before = mount_table()
    h = TestHost(state_base=state_base)
    background: subprocess.Popen[str] | None = None
    try:
        h.start()
        assert mount_table() == mounts_before, "booting changed the real host's mount table"
        mnt_ns = os.readlink(f"/proc/{h.pid}/ns/mnt")
        background = h.popen(["systemd-run", "--quiet", "--scope", "sleep", "300"])
        wait_for(lambda: h.run(["pgrep", "-x", "sleep"]).returncode == 0, what="sleep in a scope")
        pids = [h.pid, background.pid, *processes_in_mount_namespace(mnt_ns)]
        cgroups, state_dir = list(h._cgroup_dirs), h.state_dir
        assert any(os.path.isdir(os.path.join(cg, "system.slice")) for cg in h._root_cgroups)
        assert_memory_max_is_enforced(h)
    finally:
        h.stop()
    assert background is not None
    background.wait(5)
    h.stop()  # idempotent
    assert_nothing_left(state_dir, cgroups, pids, h.scope)
    assert processes_in_mount_namespace(mnt_ns) == []
    assert mount_table() == mounts_before


def test_failed_boot_raises_quickly_and_leaves_nothing(state_base: Path) -> None:
    h = TestHost(systemd="/nonexistent/systemd", state_base=state_base)
    began = time.monotonic()
    with pytest.raises(TestHostError, match="cannot execute /nonexistent/systemd"):
        h.start(timeout=30)
    assert time.monotonic() - began < 5 * slowdown()
    assert_nothing_left(h.state_dir, h._cgroup_dirs, [h.pid])


def test_boot_that_never_finishes_times_out_and_leaves_nothing(state_base: Path, tmp_path: Path) -> None:
    hanging_init = tmp_path / "hanging-init"
    hanging_init.write_text("#!/bin/sh\necho hanging init is up\nexec sleep 600\n")
    hanging_init.chmod(0o755)
    h = TestHost(systemd=str(hanging_init), state_base=state_base, shared_paths=[str(tmp_path)])
    began = time.monotonic()
    with pytest.raises(TestHostError, match=r"(?s)timed out.*hanging init is up"):
        h.start(timeout=2 * slowdown())
    assert time.monotonic() - began < 10 * slowdown()
    assert_nothing_left(h.state_dir, h._cgroup_dirs, [h.pid])


OWNER = f"""
import signal, sys, time
from pathlib import Path
# A program that takes Ctrl-C as Python's default does, even when started with SIGINT ignored
# (as a shell's background job is: `(cmd &)` ran CI that way once, and the owner never died).
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {str(TESTHOST_PY.parent)!r})
import testhost
h = testhost.TestHost(state_base=Path(sys.argv[1]))
h.start()
print(h.state_dir, h.pid, h.scope or "-", *h._cgroup_dirs, flush=True)
time.sleep(120)
"""


@dataclass
class Owner:
    """A separate process that boots a test host and then idles."""

    proc: subprocess.Popen[str]
    state_dir: Path
    pid: int  # the host's PID 1
    scope: str | None
    cgroups: list[str]


def start_owner(state_base: Path) -> Owner:
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(state_base)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    fields = proc.stdout.readline().split()
    assert fields, f"the owner process failed (status {proc.wait(10)})"
    scope = None if fields[2] == "-" else fields[2]
    return Owner(proc, Path(fields[0]), int(fields[1]), scope, fields[3:])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_owner_tears_the_host_down(sig: signal.Signals, state_base: Path) -> None:
    owner = start_owner(state_base)
    owner.proc.send_signal(sig)
    # Died of the signal, after tearing down (within the teardown's own bounds: the launcher
    # gets 10 s, each cgroup tree 10 s).
    assert owner.proc.wait(60) == -sig
    assert_nothing_left(owner.state_dir, owner.cgroups, [owner.pid], owner.scope)


def test_killed_owner_takes_the_host_along_and_next_start_cleans_up(state_base: Path) -> None:
    owner = start_owner(state_base)
    start = process_start_time(owner.pid)
    owner.proc.kill()
    owner.proc.wait()
    # The parent death signal chain (owner -> launcher -> PID 1) ends the host at once ...
    wait_for(lambda: not process_alive(owner.pid, start), what="PID 1 of the orphaned host to die")
    # (systemd removes an emptied scope, its delegated subtree included, on its own)
    assert owner.state_dir.exists() and (owner.scope or all(os.path.isdir(cg) for cg in owner.cgroups))
    # ... and what the owner could not remove is cleaned by the next start.
    with TestHost(state_base=state_base) as next_host:
        assert_nothing_left(owner.state_dir, owner.cgroups, [owner.pid], owner.scope)
        assert [p.name for p in state_base.iterdir()] == [next_host.id]
    assert clean_stale(state_base) == []


CONTAINER_OWNER = f"""
import json, subprocess, sys
from pathlib import Path
sys.path.insert(0, {str(TESTHOST_PY.parent)!r})
import testhost
# Another process of the "container", sharing the owner's cgroup.
sidecar = subprocess.Popen(["sleep", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    with testhost.TestHost(state_base=Path(sys.argv[1]), v2_delegation="own") as h:
        memory = h.run(["systemd-run", "--quiet", "--scope", "-p", "MemoryMax=64M", "sh", "-c",
                        "cat /sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)/memory.max"], check=True)
        cgroup_of = lambda pid: Path(f"/proc/{{pid}}/cgroup").read_text().split(":", 2)[2].strip()
        found = dict(memory=memory.stdout.strip(), owner=cgroup_of("self"), sidecar=cgroup_of(sidecar.pid),
                     launcher=cgroup_of(h._launcher.pid), pid1=cgroup_of(h.pid), scope=h.scope,
                     cgroups=h._cgroup_dirs, state_dir=str(h.state_dir), pids=[h.pid, h._launcher.pid])
finally:
    sidecar.kill()
print(json.dumps(found))
"""


def test_v2_host_in_a_container_cgroup_passes_controllers_down(state_base: Path) -> None:
    """Pure v2 without systemd managing the tree (a container): the host's subtree is a child of the
    caller's own cgroup, whose processes move to a leaf so that it may pass its controllers down."""
    # Justified skip: the path under test exists only on pure v2, and CI runs this test there (the
    # v2 tier, tools/vm/run-tests); a hybrid host has no v2 controllers to delegate.
    if not is_pure_cgroup2(cgroup_hierarchies()):
        pytest.skip("pure cgroup v2 only (CI runs it in the v2 tier): a hybrid host has no v2 controllers "
                    "to delegate")
    argv = [sys.executable, "-c", CONTAINER_OWNER, str(state_base)]
    container = "/"
    if systemd_is_pid1():
        # The container's cgroup: a scope systemd delegates, holding the owner and its sidecar.
        scope = unique("testhost-container") + ".scope"
        argv = ["systemd-run", "--quiet", "--scope", "--collect", f"--unit={scope}", "-p", "Delegate=yes", *argv]
        container = f"/system.slice/{scope}"
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120 * slowdown())
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert found["memory"] == str(MEMORY_MAX) and found["scope"] is None
    container = container if systemd_is_pid1() else os.path.dirname(found["owner"])
    base = f"{container.rstrip('/')}/pymachine-testhost-{Path(found['state_dir']).name}"
    assert (found["owner"], found["sidecar"]) == (f"{container.rstrip('/')}/init",) * 2
    assert found["launcher"] == f"{base}/supervisor"
    assert found["pid1"].startswith(f"{base}/payload/"), found["pid1"]  # in init.scope by now
    assert found["cgroups"] == [f"/sys/fs/cgroup{base}"]
    assert_nothing_left(Path(found["state_dir"]), found["cgroups"], found["pids"])


def test_cli_runs_a_command_and_exits_with_its_status(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(TESTHOST_PY), "run", "--path-prepend", "/opt/extra", "--",
         "sh", "-c", 'echo "$PATH"; systemctl is-system-running; pwd; exit 7'],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 7, r.stderr
    path, state, cwd = r.stdout.split()
    assert path.startswith("/opt/extra:") and state == "running" and cwd == str(tmp_path)
    local = isinstance(get_host(), LocalHost)  # PYMACHINE_TEST_HOST may force either
    assert r.stderr.startswith("testhost: systemd is PID 1" if local else "testhost: booted in"), r.stderr


def test_fixture_fails_loudly_when_the_host_cannot_boot() -> None:
    """A host that cannot boot is an error for every test using it, never a skip."""
    env = {**os.environ, "PYMACHINE_TEST_HOST": "namespace",
           "PYMACHINE_TESTHOST_SYSTEMD": "/nonexistent/systemd"}
    tests = [f"{__file__}::{name}" for name in (
        "test_boot_reaches_running", "test_journal_receives_logger_and_systemd_cat")]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *tests],
        env=env, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2],
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "the systemd test host did not boot" in r.stdout
    assert "cannot execute /nonexistent/systemd" in r.stdout
    assert "2 errors" in r.stdout and "skipped" not in r.stdout, r.stdout
