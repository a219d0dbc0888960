"""The limits of issue #15 on a real systemd, on both cgroup layouts: each lands in `systemctl
show` and in the kernel's own cgroup file; one systemd cannot apply on v1 is an error there."""

from __future__ import annotations

import pytest
from helpers import AnyHost, pm, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


def unified(host: AnyHost) -> bool:
    return host.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], check=True).stdout.strip() == "cgroup2fs"


def show(host: AnyHost, unit: str, prop: str) -> str:
    return host.run(["systemctl", "show", unit, "-p", prop, "--value"], check=True).stdout.strip()


def read(host: AnyHost, path: str) -> str:
    return host.run(["cat", path], check=True).stdout.strip()


def block_device(host: AnyHost) -> tuple[str, str]:
    """A disk of the machine (virtio, SCSI, NVMe...): (its node, MAJ:MIN). The test host's
    /dev has no disks: the node is made there, for the disk /sys/block names."""
    names = host.run(["ls", "/sys/block"], check=True).stdout.split()
    name = next((n for n in names if n.startswith(("vd", "sd", "nvme", "xvd", "hd"))), names[0])
    majmin = read(host, f"/sys/block/{name}/dev")
    if host.run(["test", "-b", f"/dev/{name}"]).returncode == 0:
        return f"/dev/{name}", majmin
    major, minor = majmin.split(":")
    host.run(["mknod", "/dev/pmtest-disk", "b", major, minor], check=False)
    return "/dev/pmtest-disk", majmin


def started(host: AnyHost, name: str, *args: str) -> str:
    r = pm(host, "run", "-d", "--name", name, *args, "busybox", "sleep", "300")
    assert r.returncode == 0, r.stderr
    unit = f"pymachine@{name}.service"
    wait_until(lambda: show(host, unit, "ActiveState") == "active", what=f"{unit} active", timeout=60)
    return unit


def test_device_rates_oom_score_and_slice_land_in_unit_and_kernel(host: AnyHost) -> None:
    dev, majmin = block_device(host)
    unit = started(host, "lim1", "--device-read-bps", f"{dev}:1M", "--device-write-bps", f"{dev}:77K",
                   "--oom-score-adj", "321", "--cgroup-parent", "machine-tenant.slice")
    try:
        assert show(host, unit, "IOReadBandwidthMax") == f"{dev} 1048576"
        assert show(host, unit, "IOWriteBandwidthMax") == f"{dev} {77 << 10}"
        assert show(host, unit, "OOMScoreAdjust") == "321"
        assert show(host, unit, "Slice") == "machine-tenant.slice"
        cgroup = show(host, unit, "ControlGroup")
        assert cgroup == "/machine.slice/machine-tenant.slice/pymachine@lim1.service"
        assert show(host, "machine-tenant.slice", "ActiveState") == "active"  # made by systemd on demand
        assert read(host, f"/proc/{show(host, unit, 'MainPID')}/oom_score_adj") == "321"
        if unified(host):
            io_max = read(host, f"/sys/fs/cgroup{cgroup}/io.max")
            assert f"{majmin} rbps=1048576 wbps={77 << 10}" in io_max
        else:
            assert read(host, f"/sys/fs/cgroup/blkio{cgroup}/blkio.throttle.read_bps_device") == f"{majmin} 1048576"
            assert read(host, f"/sys/fs/cgroup/blkio{cgroup}/blkio.throttle.write_bps_device") == f"{majmin} {77 << 10}"
        template = "{{ .HostConfig.OomScoreAdj }} {{ .HostConfig.CgroupParent }}"
        inspect = pm(host, "inspect", "lim1", "--format", template)
        assert inspect.stdout.strip() == "321 machine-tenant.slice"
    finally:
        pm(host, "rm", "-f", "lim1")


def test_a_foreground_container_gets_its_oom_score_and_slice(host: AnyHost) -> None:
    r = pm(host, "run", "--rm", "--name", "lim2", "--oom-score-adj", "17", "--slice", "machine-fg.slice",
           "busybox", "sh", "-c", "cat /proc/self/oom_score_adj")
    assert (r.returncode, r.stdout.strip()) == (0, "17"), r.stderr


def test_v2_only_limits(host: AnyHost) -> None:
    """MemoryLow=, MemorySwapMax=, AllowedCPUs=, AllowedMemoryNodes=, IOWeight=, IO*IOPSMax=: in
    the kernel on v2; on v1 an error naming them, and nothing made."""
    dev, majmin = block_device(host)
    args = ("-m", "64M", "--memory-reservation", "16M", "--memory-swap", "96M", "--cpuset-cpus", "0",
            "--cpuset-mems", "0", "--blkio-weight", "500", "--device-read-iops", f"{dev}:55",
            "--device-write-iops", f"{dev}:66")
    if not unified(host):
        r = pm(host, "run", "-d", "--name", "lim3", *args, "busybox", "sleep", "300")
        assert r.returncode == 125 and "--memory-reservation, --memory-swap, --cpuset-cpus, --cpuset-mems, " \
            "--blkio-weight, --device-read-iops, --device-write-iops: not supported" in r.stderr, r.stderr
        assert pm(host, "inspect", "lim3").returncode != 0
        assert host.run(["test", "-e", "/etc/pymachine/machines/lim3.toml"]).returncode != 0
        return
    unit = started(host, "lim3", *args)
    try:
        cgroup = show(host, unit, "ControlGroup")
        assert show(host, unit, "MemoryLow") == str(16 << 20)
        assert read(host, f"/sys/fs/cgroup{cgroup}/memory.low") == str(16 << 20)
        assert show(host, unit, "MemorySwapMax") == str(32 << 20)
        assert read(host, f"/sys/fs/cgroup{cgroup}/memory.swap.max") == str(32 << 20)
        assert show(host, unit, "AllowedCPUs") == "0"
        assert read(host, f"/sys/fs/cgroup{cgroup}/cpuset.cpus") == "0"
        assert show(host, unit, "AllowedMemoryNodes") == "0"
        assert read(host, f"/sys/fs/cgroup{cgroup}/cpuset.mems") == "0"
        assert show(host, unit, "IOWeight") == "100"
        assert show(host, unit, "IOReadIOPSMax") == f"{dev} 55"
        assert f"{majmin} " in (io_max := read(host, f"/sys/fs/cgroup{cgroup}/io.max"))
        assert "riops=55 wiops=66" in io_max
    finally:
        pm(host, "rm", "-f", "lim3")


def test_a_device_limit_on_no_block_device_is_refused(host: AnyHost) -> None:
    r = pm(host, "run", "--rm", "--device-read-bps", "/dev/null:1M", "busybox", "true")
    assert r.returncode == 125 and "--device-read-bps: /dev/null is not a block device" in r.stderr


def test_kernel_memory_is_refused(host: AnyHost) -> None:
    r = pm(host, "run", "--rm", "--kernel-memory", "64M", "busybox", "true")
    assert r.returncode == 125 and "--kernel-memory is not supported" in r.stderr


def test_cpu_period_lands_in_unit_kernel_definition_and_inspect(host: AnyHost) -> None:
    """--cpu-period with --cpus: systemd grants the per-second quota per period (cpu.max on v2,
    cpu.cfs_* on v1); the definition keeps it and inspect shows docker's CpuPeriod."""
    unit = started(host, "lim5", "--cpus", "0.5", "--cpu-period", "50000")
    try:
        assert show(host, unit, "CPUQuotaPeriodUSec") == "50ms"
        cgroup = show(host, unit, "ControlGroup")
        if unified(host):
            assert read(host, f"/sys/fs/cgroup{cgroup}/cpu.max") == "25000 50000"
        else:
            assert read(host, f"/sys/fs/cgroup/cpu{cgroup}/cpu.cfs_period_us") == "50000"
            assert read(host, f"/sys/fs/cgroup/cpu{cgroup}/cpu.cfs_quota_us") == "25000"
        assert "cpu_period = 50000" in read(host, "/etc/pymachine/machines/lim5.toml")
        inspect = pm(host, "inspect", "lim5", "--format", "{{ .HostConfig.CpuPeriod }} {{ .HostConfig.NanoCpus }}")
        assert inspect.stdout.strip() == "50000 500000000"
    finally:
        pm(host, "rm", "-f", "lim5")
    r = pm(host, "run", "--rm", "--cpu-period", "999", "busybox", "true")
    assert r.returncode == 125 and "invalid CPU period '999'" in r.stderr, r.stderr
