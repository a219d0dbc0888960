"""stats' pure parts: docker's units, the unit object path."""

from __future__ import annotations

from machinectl_py.cmd_stats import binary_size, decimal_size
from machinectl_py.systemd import unit_cgroup, unit_object_path, unit_patterns


def test_dockers_units() -> None:
    assert binary_size(0) == "0B" and binary_size(1536) == "1.5KiB" and binary_size(64 << 20) == "64MiB"
    assert decimal_size(999) == "999B" and decimal_size(1200) == "1.2kB" and decimal_size(3_000_000) == "3MB"


def test_unit_object_path_is_systemds_escaping() -> None:
    assert unit_object_path("pymachine@web.service") == \
        "/org/freedesktop/systemd1/unit/pymachine_40web_2eservice"
    assert unit_object_path("machine-a1.scope") == "/org/freedesktop/systemd1/unit/machine_2da1_2escope"
    assert unit_object_path("1x.slice").startswith("/org/freedesktop/systemd1/unit/_31x")


def test_the_cgroup_systemd_gives_a_unit_of_a_slice() -> None:
    assert unit_cgroup("pymachine@web.service", "machine.slice") == "/machine.slice/pymachine@web.service"
    assert unit_cgroup("machine-a.scope", "machine-tenant-b.slice") == \
        "/machine.slice/machine-tenant.slice/machine-tenant-b.slice/machine-a.scope"
    assert unit_cgroup("x.service", "-.slice") == "/x.service"


def test_one_pattern_per_kind_of_unit() -> None:
    assert unit_patterns(["pymachine@a.service", "pymachine@b.service", "machine-c.scope", "other.scope"]) == \
        ["machine-*.scope", "other.scope", "pymachine@*.service"]
