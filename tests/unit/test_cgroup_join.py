"""exec's placement of a new process beside a delegated unit's init: where systemd's
AttachProcessesToUnit(UNIT, "") would put it, and never a cgroup outside UNIT and the slices above."""

from __future__ import annotations

from machinectl_py.cgroupfs import unit_placement

UNIT = "pymachine@web.service"
HYBRID = """9:name=systemd:/machine.slice/pymachine@web.service/payload
8:pids:/machine.slice/pymachine@web.service
7:blkio:/
5:devices:/machine.slice/pymachine@web.service
4:memory:/machine.slice/pymachine@web.service
1:cpu:/machine.slice
0::/machine.slice/pymachine@web.service/payload
"""


def test_hybrid_the_units_own_cgroup_and_the_slices_systemd_realized() -> None:
    u = "/machine.slice/pymachine@web.service"
    assert unit_placement(HYBRID, UNIT, unified_host=False) == [
        (f"/sys/fs/cgroup/systemd{u}/cgroup.procs", u),  # the payload's sub-cgroup: the unit's own instead
        (f"/sys/fs/cgroup/pids{u}/cgroup.procs", u),
        ("/sys/fs/cgroup/blkio/cgroup.procs", "/"),
        (f"/sys/fs/cgroup/devices{u}/cgroup.procs", u),
        (f"/sys/fs/cgroup/memory{u}/cgroup.procs", u),
        ("/sys/fs/cgroup/cpu/machine.slice/cgroup.procs", "/machine.slice"),
        (f"/sys/fs/cgroup/unified{u}/cgroup.procs", u),
    ]


def test_pure_v2() -> None:
    text = "0::/machine.slice/machine-web.scope/init.scope\n"
    assert unit_placement(text, "machine-web.scope", unified_host=True) == [
        ("/sys/fs/cgroup/machine.slice/machine-web.scope/cgroup.procs", "/machine.slice/machine-web.scope")]


def test_anything_else_is_left_to_systemd() -> None:
    # Not in the unit at all; a unit name only as a prefix of another; a sibling slice's cgroup.
    assert unit_placement("0::/user.slice/session-1.scope\n", UNIT, unified_host=True) is None
    assert unit_placement("0::/machine.slice/pymachine@web.service-x\n", UNIT, unified_host=True) is None
    assert unit_placement("1:cpu:/user.slice\n0::/machine.slice/pymachine@web.service\n", UNIT,
                          unified_host=False) is None
    assert unit_placement("", UNIT, unified_host=True) is None
