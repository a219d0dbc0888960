"""`pymachine update`: new limits live on the unit and in the kernel, kept in the definition and
drop-in of a detached container (through daemon-reload and a restart); a refused value changes
nothing anywhere."""

from __future__ import annotations

import signal

import pytest
from helpers import AnyHost, machine_names, pm, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


def unified(host: AnyHost) -> bool:
    return host.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], check=True).stdout.strip() == "cgroup2fs"


def show(host: AnyHost, unit: str, prop: str) -> str:
    return host.run(["systemctl", "show", unit, "-p", prop, "--value"], check=True).stdout.strip()


def kernel_memory_max(host: AnyHost, unit: str) -> str:
    cgroup = show(host, unit, "ControlGroup")
    path = f"/sys/fs/cgroup{cgroup}/memory.max" if unified(host) else \
        f"/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes"
    return host.run(["cat", path], check=True).stdout.strip()


def kernel_cpu_quota(host: AnyHost, unit: str) -> str:
    cgroup = show(host, unit, "ControlGroup")
    if unified(host):
        return host.run(["cat", f"/sys/fs/cgroup{cgroup}/cpu.max"], check=True).stdout.split()[0]
    return host.run(["cat", f"/sys/fs/cgroup/cpu{cgroup}/cpu.cfs_quota_us"], check=True).stdout.strip()


def definition(host: AnyHost, name: str) -> str:
    return host.run(["cat", f"/etc/pymachine/machines/{name}.toml"], check=True).stdout


def test_update_a_detached_container_live_and_for_good(host: AnyHost) -> None:
    unit = "pymachine@upd1.service"
    assert pm(host, "run", "-d", "--name", "upd1", "--memory", "64M", "busybox", "sleep", "300").returncode == 0
    try:
        r = pm(host, "update", "upd1", "--memory", "128M", "--cpus", "0.5")
        assert (r.returncode, r.stdout) == (0, "upd1\n"), r.stderr
        assert show(host, unit, "MemoryMax") == str(128 << 20)
        assert show(host, unit, "CPUQuotaPerSecUSec") == "500ms"
        assert kernel_memory_max(host, unit) == str(128 << 20)
        assert kernel_cpu_quota(host, unit) == "50000"
        fmt = "{{ .HostConfig.Memory }} {{ .HostConfig.NanoCpus }}"
        assert pm(host, "inspect", "upd1", "--format", fmt).stdout.strip() == f"{128 << 20} 500000000"
        assert "memory = 134217728" in definition(host, "upd1") and "cpus = 0.5" in definition(host, "upd1")
        # Only pymachine's drop-in holds the values: no runtime drop-in to shadow a later change.
        assert "system.control" not in show(host, unit, "DropInPaths")
        host.run(["systemctl", "daemon-reload"], check=True)
        assert show(host, unit, "MemoryMax") == str(128 << 20)
        assert pm(host, "restart", "upd1", "-t", "1").returncode == 0
        assert show(host, unit, "MemoryMax") == str(128 << 20) and kernel_memory_max(host, unit) == str(128 << 20)
        assert show(host, unit, "CPUQuotaPerSecUSec") == "500ms"
    finally:
        pm(host, "rm", "-f", "upd1")


def test_a_refused_value_changes_nothing(host: AnyHost) -> None:
    unit = "pymachine@upd2.service"
    assert pm(host, "run", "-d", "--name", "upd2", "--memory", "64M", "busybox", "sleep", "300").returncode == 0
    try:
        before = definition(host, "upd2")
        for args, error in ((["--memory-swap", "32M"], "minimum memory swap limit"),
                            (["--memory", "1M"], "the minimum is 6M"),
                            (["--kernel-memory", "8M"], "--kernel-memory is not supported"),
                            ([], "you must provide one or more flags")):
            r = pm(host, "update", "upd2", *args)
            assert r.returncode == 125 and error in r.stderr and len(r.stderr.splitlines()) <= 2, r.stderr
            assert definition(host, "upd2") == before
            assert show(host, unit, "MemoryMax") == str(64 << 20) == kernel_memory_max(host, unit)
        assert pm(host, "update", "nosuch", "--memory", "64M").returncode == 125
    finally:
        pm(host, "rm", "-f", "upd2")


def test_update_a_foreground_container(host: AnyHost) -> None:
    proc = host.popen(["pymachine", "run", "--rm", "--name", "upd3", "--memory", "64M", "busybox", "sleep", "300"])
    try:
        wait_until(lambda: "upd3" in machine_names(host), what="machine upd3", timeout=60)
        r = pm(host, "update", "upd3", "--memory", "80M", "--pids-limit", "33")
        assert r.returncode == 0, r.stderr
        assert show(host, "machine-upd3.scope", "MemoryMax") == str(80 << 20)
        assert kernel_memory_max(host, "machine-upd3.scope") == str(80 << 20)
        assert show(host, "machine-upd3.scope", "TasksMax") == "33"
        assert pm(host, "inspect", "upd3", "--format", "{{ .HostConfig.Memory }}").stdout.strip() == str(80 << 20)
        r = pm(host, "update", "upd3", "--restart", "always")
        assert r.returncode == 125 and ("foreground" in r.stderr or "--rm" in r.stderr), r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
