"""The limits of issue #15: docker's flags, their unit properties, definitions and refusals."""

from __future__ import annotations

import pytest

from machinectl_py import config, settings
from machinectl_py.cmd_run import parse as parse_run
from machinectl_py.errors import UsageError
from machinectl_py.spec import ContainerSpec

ALL = ["--name", "web", "-m", "64M", "--memory-reservation", "32M", "--memory-swap", "128M",
       "--cpuset-cpus", "1,0", "--cpuset-mems", "0", "--blkio-weight", "300",
       "--device-read-bps", "/dev/sda:1M", "--device-write-bps", "/dev/sda:2M",
       "--device-read-iops", "/dev/sda:100", "--device-write-iops", "/dev/sdb:200",
       "--oom-score-adj", "-500", "--cgroup-parent", "machine-tenant.slice", "busybox"]


def parse(args: list[str]) -> ContainerSpec:
    spec = parse_run(args)
    assert spec is not None
    return spec


def test_every_limit_becomes_its_unit_property() -> None:
    spec = parse(ALL)
    lines = settings.dropin_lines(spec)
    for line in ("MemoryMax=67108864", "MemoryLow=33554432", "MemorySwapMax=67108864", "AllowedCPUs=0-1",
                 "AllowedMemoryNodes=0", "IOWeight=60", "IOReadBandwidthMax=/dev/sda 1048576",
                 "IOWriteBandwidthMax=/dev/sda 2097152", "IOReadIOPSMax=/dev/sda 100",
                 "IOWriteIOPSMax=/dev/sdb 200", "OOMScoreAdjust=-500", "Slice=machine-tenant.slice"):
        assert line in lines
    dbus = dict(p.dbus for p in settings.live_properties(spec))
    assert dbus["AllowedCPUs"] == ("ay", b"\x03") and dbus["IOReadBandwidthMax"] == ("a(st)", [("/dev/sda", 1 << 20)])
    scope = {p.name for p in settings.unit_properties(spec, scope=True)}
    assert "OOMScoreAdjust" not in scope and "Slice" not in scope  # the init and scope_properties set these


def test_a_definition_with_every_limit_reads_back() -> None:
    spec = parse(ALL)
    assert config.parse_definition("web", "web.toml", config.render_definition(spec)) == spec


def test_inspect_has_dockers_names() -> None:
    host = settings.inspect_fields(parse(ALL))["HostConfig"]
    assert host["MemorySwap"] == 128 << 20 and host["MemoryReservation"] == 32 << 20
    assert host["CpusetCpus"] == "0-1" and host["BlkioWeight"] == 300 and host["OomScoreAdj"] == -500
    assert host["BlkioDeviceReadBps"] == [{"Path": "/dev/sda", "Rate": 1 << 20}]
    assert host["CgroupParent"] == "machine-tenant.slice"


def test_unlimited_swap() -> None:
    spec = parse(["-m", "64M", "--memory-swap", "-1", "busybox"])
    assert "MemorySwapMax=infinity" in settings.dropin_lines(spec)


@pytest.mark.parametrize(("args", "message"), [
    (["--memory-swap", "1G"], "you should always set the memory limit"),
    (["-m", "64M", "--memory-swap", "32M"], "minimum memory swap limit"),
    (["-m", "64M", "--memory-reservation", "128M"], "memory reservation"),
    (["--kernel-memory", "64M"], "--kernel-memory is not supported"),
    (["--cpuset-cpus", "1-0"], "invalid value '1-0' for --cpuset-cpus"),
    (["--blkio-weight", "5"], "range of blkio weight is from 10 to 1000"),
    (["--device-read-bps", "sda:1M"], "invalid value 'sda:1M' for --device-read-bps"),
    (["--oom-score-adj", "1001"], "valid range is -1000 to 1000"),
    (["--slice", "/docker"], "invalid slice"),
    (["--slice", "a--b.slice"], "invalid slice"),
])
def test_bad_limits_are_one_clear_error(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse([*args, "busybox"])


def test_kernel_memory_in_a_definition_is_refused() -> None:
    with pytest.raises(UsageError, match=r"web\.toml:3: limits\.kernel_memory"):
        config.parse_definition("web", "web.toml", 'image = "busybox"\n[limits]\nkernel_memory = "64M"\n')


def test_v2_only_limits_are_refused_on_a_v1_host() -> None:
    spec = parse(["-m", "64M", "--memory-reservation", "32M", "--cpuset-cpus", "0", "--blkio-weight", "100",
                  "busybox"])
    with pytest.raises(UsageError, match="--memory-reservation, --cpuset-cpus, --blkio-weight: not supported"):
        settings.check_host_support(spec, unified_host=False)
    settings.check_host_support(spec, unified_host=True)
