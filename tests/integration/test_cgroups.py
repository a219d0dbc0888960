"""Cgroups as the host's systemd and kernel see them, on both cgroup layouts.

The same tests run in the namespace test host (hybrid: v1 controllers, cgroup2 at
/sys/fs/cgroup/unified) and in the QEMU guest of tools/vm (pure cgroup v2). Each test
detects the layout inside the host and asserts what must hold for it: the limits land in
the right files of the unit's cgroup, the container sees its own subtree through a cgroup
namespace, and machined and journald attribute the container to its unit the same way.
Values are read from cgroupfs itself, so a wrong mapping (MemoryMax sent with the wrong
value, a quota in the wrong unit) fails here even when `systemctl show` agrees with it.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from helpers import AnyHost, machine_names, pm, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]

# Unusual values, so that a default or a neighbouring value cannot pass by accident.
MEMORY_BYTES = 97 << 20
CPUS = "0.25"
CPU_QUOTA_USEC, CPU_PERIOD_USEC = 25_000, 100_000
PIDS = 23
LIMIT_ARGS = ("--memory", f"{MEMORY_BYTES >> 20}M", "--cpus", CPUS, "--pids-limit", str(PIDS))


@dataclass(frozen=True)
class Layout:
    """The host's cgroup layout: pure v2 (unified) or v1 controllers beside a cgroup2 (hybrid)."""

    unified: bool

    def memory_limit(self, cgroup: str) -> str:
        return f"/sys/fs/cgroup/{cgroup}/memory.max" if self.unified else \
            f"/sys/fs/cgroup/memory/{cgroup}/memory.limit_in_bytes"

    def pids_limit(self, cgroup: str) -> str:
        return f"/sys/fs/cgroup/{cgroup}/pids.max" if self.unified else f"/sys/fs/cgroup/pids/{cgroup}/pids.max"

    def cpu_files(self, cgroup: str) -> list[str]:
        if self.unified:
            return [f"/sys/fs/cgroup/{cgroup}/cpu.max"]
        # Debian mounts cpu and cpuacct together and links /sys/fs/cgroup/cpu to it.
        return [f"/sys/fs/cgroup/cpu/{cgroup}/cpu.cfs_quota_us", f"/sys/fs/cgroup/cpu/{cgroup}/cpu.cfs_period_us"]


def detect_layout(host: AnyHost) -> Layout:
    fstype = host.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], check=True).stdout.strip()
    if fstype == "cgroup2fs":
        return Layout(unified=True)
    unified_dir = host.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup/unified"]).stdout.strip()
    assert fstype == "tmpfs" and unified_dir == "cgroup2fs", (
        f"neither pure v2 nor hybrid: /sys/fs/cgroup is {fstype}, /sys/fs/cgroup/unified is {unified_dir or 'absent'}")
    return Layout(unified=False)


@pytest.fixture(scope="module")
def layout(host: AnyHost) -> Layout:
    return detect_layout(host)


def read(host: AnyHost, path: str) -> str:
    return host.run(["cat", path], check=True).stdout.strip()


def control_group(host: AnyHost, unit: str) -> str:
    """The unit's cgroup path relative to the hierarchy root, e.g. machine.slice/machine-x.scope."""
    path = host.run(["systemctl", "show", unit, "-p", "ControlGroup", "--value"], check=True).stdout.strip()
    assert path.startswith("/machine.slice/"), f"{unit} is in {path!r}, not in machine.slice"
    return path.lstrip("/")


def container_state(host: AnyHost, name: str) -> str:
    r = host.run(["cat", f"/var/lib/pymachine/containers/{name}/container.json"])
    return str(json.loads(r.stdout)["state"]) if r.returncode == 0 else ""


@contextmanager
def running(host: AnyHost, name: str, *args: str) -> Iterator[None]:
    """`pymachine run --rm --name NAME ARGS... busybox sleep 60` in the background until the block ends."""
    proc = host.popen(["pymachine", "run", "--rm", "--name", name, *args, "busybox", "sleep", "60"])
    try:
        wait_until(lambda: name in machine_names(host), what=f"machine {name} in machinectl list", timeout=60)
        wait_until(lambda: container_state(host, name) == "running", what=f"container {name} running", timeout=60)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def in_container(host: AnyHost, name: str, script: str) -> str:
    r = pm(host, "exec", name, "sh", "-c", script)
    assert r.returncode == 0, f"exec in {name} failed ({r.returncode}): {r.stderr.strip()}"
    return r.stdout


def test_limits_land_in_the_scope_cgroup(host: AnyHost, layout: Layout) -> None:
    with running(host, "cglim", *LIMIT_ARGS):
        cgroup = control_group(host, "machine-cglim.scope")
        assert read(host, layout.memory_limit(cgroup)) == str(MEMORY_BYTES)
        assert read(host, layout.pids_limit(cgroup)) == str(PIDS)
        cpu = [read(host, path) for path in layout.cpu_files(cgroup)]
        if layout.unified:
            assert cpu == [f"{CPU_QUOTA_USEC} {CPU_PERIOD_USEC}"]
        else:
            assert cpu == [str(CPU_QUOTA_USEC), str(CPU_PERIOD_USEC)]


def test_limits_land_in_the_detached_service_cgroup(host: AnyHost, layout: Layout) -> None:
    host.run(["pymachine", "run", "-d", "--name", "cgsvc", *LIMIT_ARGS, "busybox", "sleep", "60"],
             check=True, timeout=120)
    try:
        wait_until(lambda: container_state(host, "cgsvc") == "running", what="container cgsvc running", timeout=60)
        cgroup = control_group(host, "pymachine@cgsvc.service")
        assert read(host, layout.memory_limit(cgroup)) == str(MEMORY_BYTES)
        assert read(host, layout.pids_limit(cgroup)) == str(PIDS)
    finally:
        host.run(["pymachine", "rm", "-f", "cgsvc"], timeout=120)


def test_without_options_the_cgroup_follows_the_unit(host: AnyHost, layout: Layout) -> None:
    """No --memory: no memory limit at all; no --pids-limit: pids.max is whatever TasksMax the unit has."""
    with running(host, "cgnolim"):
        cgroup = control_group(host, "machine-cgnolim.scope")
        memory = read(host, layout.memory_limit(cgroup))
        if layout.unified:
            assert memory == "max"
        else:
            assert int(memory) >= 1 << 62  # v1 spells "no limit" as a page-rounded LONG_MAX
        tasks_max = host.run(["systemctl", "show", "machine-cgnolim.scope", "-p", "TasksMax", "--value"],
                             check=True).stdout.strip()
        assert read(host, layout.pids_limit(cgroup)) == ("max" if tasks_max == "infinity" else tasks_max)


def test_the_container_sees_its_own_cgroup_subtree(host: AnyHost, layout: Layout) -> None:
    with running(host, "cgns", "--memory", f"{MEMORY_BYTES >> 20}M"):
        # The cgroup namespace is rooted at the scope: every hierarchy shows the container at "/".
        own = in_container(host, "cgns", "cat /proc/1/cgroup").splitlines()
        assert own and all(line.split(":", 2)[2] == "/" for line in own), own
        mounts = cgroup_mounts(in_container(host, "cgns", "cat /proc/self/mountinfo"))
        if layout.unified:
            # One cgroup2 mount of the namespace root (the scope), writable: the scope is delegated.
            assert list(mounts) == ["/sys/fs/cgroup"], mounts
            root, fstype, options = mounts["/sys/fs/cgroup"]
            assert (root, fstype) == ("/", "cgroup2") and "rw" in options.split(","), mounts
            assert read_inside(host, "cgns", "/sys/fs/cgroup/memory.max") == str(MEMORY_BYTES)
            # Nothing of the host's tree is visible: no siblings, no parents.
            assert in_container(host, "cgns", "test -e /sys/fs/cgroup/init.scope || echo absent").strip() == "absent"
        else:
            # nspawn's hybrid view: the v1 hierarchies read-only, the cgroup2 one writable, each at its root.
            assert mounts["/sys/fs/cgroup/unified"][:2] == ("/", "cgroup2"), mounts
            assert mounts["/sys/fs/cgroup/memory"][:2] == ("/", "cgroup"), mounts
            assert "ro" in mounts["/sys/fs/cgroup/memory"][2].split(","), mounts
            assert read_inside(host, "cgns", "/sys/fs/cgroup/memory/memory.limit_in_bytes") == str(MEMORY_BYTES)
        # The container's processes are all the cgroup holds: its own PIDs, as its PID namespace numbers them.
        procs_file = "/sys/fs/cgroup/cgroup.procs" if layout.unified else "/sys/fs/cgroup/unified/cgroup.procs"
        pids = in_container(host, "cgns", f"cat {procs_file}").split()
        assert "1" in pids and len(pids) < 5, pids


def test_the_container_mounts_only_hierarchies_it_has_its_own_cgroup_in(host: AnyHost, layout: Layout) -> None:
    """On v1 hierarchies a controller the scope does not use leaves the leader at the root: a
    mount of that hierarchy would show the container the host's whole tree. So each v1
    hierarchy is mounted inside exactly when the leader's cgroup in it is the scope's, and
    the scope delegates only the controllers it uses (cpu only with a CPU quota), so that
    systemd does not realize cpu for every unit at each start. On v2: every controller."""
    for name, args in (("cgown", ()), ("cgowncpu", ("--cpus", CPUS))):
        with running(host, name, *args):
            unit = f"machine-{name}.scope"
            delegated = host.run(["systemctl", "show", unit, "-p", "DelegateControllers", "--value"],
                                 check=True).stdout.split()
            if layout.unified:
                assert {"cpu", "memory", "pids"} <= set(delegated), delegated
                continue
            assert {"memory", "pids", "devices"} <= set(delegated), delegated
            assert ("cpu" in delegated) == bool(args), delegated
            cgroup = "/" + control_group(host, unit)
            leader = host.run(["machinectl", "show", name, "-p", "Leader", "--value"], check=True).stdout.strip()
            inside = cgroup_mounts(in_container(host, name, "cat /proc/self/mountinfo"))
            for line in read(host, f"/proc/{leader}/cgroup").splitlines():
                _, controllers, path = line.split(":", 2)
                if not controllers or controllers.startswith("name="):
                    continue
                mounted = [m for m in inside if set(m.rsplit("/", 1)[1].split(",")) == set(controllers.split(","))]
                if path == cgroup:
                    assert mounted, f"{controllers}: the container has its own cgroup there, yet no mount: {inside}"
                else:
                    assert not mounted, f"{controllers}: the leader is in {path}, yet it is mounted inside"
            assert any(m.endswith("/memory") for m in inside) and any(m.endswith("/pids") for m in inside)
            assert any(m.rsplit("/", 1)[1].startswith("cpu") for m in inside) == bool(args), inside


def test_a_detached_container_is_delegated_as_a_run_scope_is(host: AnyHost, layout: Layout) -> None:
    r = pm(host, "run", "-d", "--name", "cgdeleg", "busybox", "sleep", "60")
    assert r.returncode == 0, r.stderr
    try:
        shown = dict(line.split("=", 1) for line in host.run(
            ["systemctl", "show", "pymachine@cgdeleg.service", "-p", "Delegate", "-p", "DelegateControllers"],
            check=True).stdout.splitlines())
        assert shown["Delegate"] == "yes", shown
        delegated = set(shown["DelegateControllers"].split())
        if layout.unified:
            assert {"cpu", "memory", "pids"} <= delegated, shown
        else:
            assert {"memory", "pids", "devices"} <= delegated and "cpu" not in delegated, shown
            mounts = cgroup_mounts(in_container(host, "cgdeleg", "cat /proc/self/mountinfo"))
            assert "/sys/fs/cgroup/memory" in mounts and "/sys/fs/cgroup/cpu" not in mounts, mounts
    finally:
        pm(host, "rm", "-f", "cgdeleg")


def test_delegation_lets_the_container_make_sub_cgroups_on_v2_only(host: AnyHost, layout: Layout) -> None:
    with running(host, "cgdel"):
        target = "/sys/fs/cgroup/child" if layout.unified else "/sys/fs/cgroup/memory/child"
        r = pm(host, "exec", "cgdel", "sh", "-c", f"mkdir {target} && rmdir {target}")
        if layout.unified:
            assert r.returncode == 0, r.stderr
        else:
            assert r.returncode != 0, "a v1 hierarchy is writable inside the container"


def test_machined_and_journald_attribute_the_container_to_its_scope(host: AnyHost, layout: Layout) -> None:
    with running(host, "cgattr"):
        cgroup = control_group(host, "machine-cgattr.scope")
        show = dict(line.split("=", 1) for line in host.run(
            ["machinectl", "show", "cgattr", "-p", "Unit", "-p", "Leader"], check=True).stdout.splitlines())
        assert show["Unit"] == "machine-cgattr.scope"
        leader_cgroups = read(host, f"/proc/{show['Leader']}/cgroup").splitlines()
        # systemd tracks its units in the cgroup2 hierarchy on v2 and in its name=systemd hierarchy on hybrid.
        if layout.unified:
            assert leader_cgroups == [f"0::/{cgroup}"]
        else:
            assert any(line.endswith(f":name=systemd:/{cgroup}") for line in leader_cgroups), leader_cgroups
    r = pm(host, "run", "--rm", "--name", "cgjour", "busybox", "echo", "cg-journal-line")
    assert r.returncode == 0, r.stderr
    raw = host.run(["journalctl", "CONTAINER_NAME=cgjour", "-o", "json", "--no-pager"], check=True).stdout
    entries = [e for e in map(json.loads, raw.splitlines()) if e.get("MESSAGE") == "cg-journal-line"]
    assert entries, raw
    assert entries[0]["_SYSTEMD_UNIT"] == "machine-cgjour.scope"
    assert entries[0]["_SYSTEMD_CGROUP"] == "/machine.slice/machine-cgjour.scope"


def cgroup_mounts(mountinfo: str) -> dict[str, tuple[str, str, str]]:
    """Mount point -> (root in its file system, fstype, mount options) of each cgroup mount."""
    found: dict[str, tuple[str, str, str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        separator = fields.index("-")
        fstype = fields[separator + 1]
        if fstype in ("cgroup", "cgroup2"):
            found[fields[4]] = (fields[3], fstype, fields[5])
    return found


def read_inside(host: AnyHost, name: str, path: str) -> str:
    return in_container(host, name, f"cat {path}").strip()
