from pathlib import Path

from machinectl_py import plan
from machinectl_py.images import ImageConfig
from machinectl_py.launch import command_for, environment, layer_links
from machinectl_py.mounts import detect_cgroup_layout
from machinectl_py.policy import load_policy
from machinectl_py.runtime import scope_name
from machinectl_py.spec import ContainerSpec

HYBRID = """\
30 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:6 - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:7 - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:8 - cgroup cgroup rw,memory
"""
UNIFIED = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def test_detect_unified() -> None:
    assert detect_cgroup_layout(UNIFIED).mode == "unified"
    assert plan.cgroup_plan(detect_cgroup_layout(UNIFIED)) == [
        plan.CgroupMount("/sys/fs/cgroup", "cgroup2", "nsdelegate", read_only=False)]


def test_detect_hybrid() -> None:
    layout = detect_cgroup_layout(HYBRID)
    assert layout.mode == "hybrid" and layout.unified_dir == "unified"
    assert ("memory", "memory") in layout.v1
    assert ("systemd", "xattr,name=systemd") in layout.v1
    assert ("cpu", "cpu,cpuacct") in layout.links and ("cpuacct", "cpu,cpuacct") in layout.links
    ops = plan.cgroup_plan(layout)
    assert isinstance(ops[0], plan.Mount) and ops[0].fstype == "tmpfs"
    v1 = [op for op in ops if isinstance(op, plan.CgroupMount) and op.fstype == "cgroup"]
    assert v1 and all(op.read_only for op in v1)


def test_own_hierarchies_drop_those_where_the_init_is_not_in_its_unit() -> None:
    """A v1 hierarchy whose controller the scope does not use has the init at the root: mounted
    inside, it would show the host's whole tree. Links to a dropped hierarchy go with it."""
    pids = "35 30 0:31 / /sys/fs/cgroup/pids rw,nosuid shared:9 - cgroup cgroup rw,pids\n"
    layout = detect_cgroup_layout(HYBRID + pids)
    scope = "/machine.slice/machine-web.scope"
    proc = f"5:pids:{scope}/sub\n4:memory:{scope}\n3:cpu,cpuacct:/\n1:name=systemd:{scope}\n0::{scope}\n"
    own = plan.own_hierarchies(layout, proc)
    assert [name for name, _ in own.v1] == ["systemd", "memory", "pids"]
    assert own.links == () and own.unified_dir == "unified" and own.mode == "hybrid"
    parent_only = proc.replace(f"4:memory:{scope}", "4:memory:/machine.slice")
    assert "memory" not in dict(plan.own_hierarchies(layout, parent_only).v1)
    everywhere = proc.replace("3:cpu,cpuacct:/", f"3:cpu,cpuacct:{scope}")
    assert plan.own_hierarchies(layout, everywhere) == layout
    unified = detect_cgroup_layout(UNIFIED)
    assert plan.own_hierarchies(unified, f"0::{scope}\n") is unified


def test_overlay_options_keep_upper_complete() -> None:
    ov = plan.Overlay(("l/1", "l/0"), "upper", "work")
    assert ov.options() == "lowerdir=l/1:l/0,upperdir=upper,workdir=work,redirect_dir=off,metacopy=off"


def test_base_plan_order_and_content() -> None:
    ops = plan.base_plan(load_policy())
    targets = [plan.describe(op) for op in ops]
    kinds = {type(op).__name__ for op in ops}
    assert {"Mount", "DeviceNode", "Symlink", "Mask", "ReadOnly"} <= kinds
    mounts = [op.target for op in ops if isinstance(op, plan.Mount)]
    assert mounts[:3] == ["/proc", "/sys", "/dev"]
    assert {"/dev/pts", "/dev/shm", "/run", "/tmp"} <= set(mounts)
    sys_mount = next(op for op in ops if isinstance(op, plan.Mount) and op.target == "/sys")
    assert sys_mount.flags & plan.MS_RDONLY
    # proc must be mounted before anything under it is masked
    first_mask = next(i for i, op in enumerate(ops) if isinstance(op, plan.Mask))
    assert first_mask > mounts.index("/proc")
    nodes = {op.path for op in ops if isinstance(op, plan.DeviceNode)}
    assert nodes == {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}
    assert any("kcore" in t for t in targets)


def test_layer_links_are_short_and_top_first(tmp_path: Path) -> None:
    layers = tuple(tmp_path / f"layer-with-a-long-name-{i:03d}" for i in range(200))
    names = layer_links(str(tmp_path), layers)
    assert names[0] == "l/199" and names[-1] == "l/0"
    assert (tmp_path / "l" / "0").resolve() == layers[0]
    # 200 layers still fit in one page of mount options
    assert len(plan.Overlay(names, "upper", "work").options()) < 4096


def test_command_and_environment() -> None:
    cfg = ImageConfig(entrypoint=("/init",), cmd=("serve",), env={"A": "1", "PATH": "/x"}, workdir="/srv")
    spec = ContainerSpec(name="t", image="i")
    assert command_for(spec, cfg) == ("/init", "serve")
    assert command_for(ContainerSpec(name="t", image="i", command=("run",)), cfg) == ("/init", "run")
    env = environment(ContainerSpec(name="t", image="i", env={"A": "2"}), cfg)
    assert env["A"] == "2" and env["PATH"] == "/x" and env["HOSTNAME"] == "t"


def test_scope_name_escapes_dashes() -> None:
    assert scope_name("t1") == "machine-t1.scope"
    assert scope_name("my-box") == "machine-my\\x2dbox.scope"


def test_plan_mount_flags_are_the_kernels() -> None:
    """plan.py spells its MS_* flags as plain ints so it never loads the compiled module."""
    from machinectl_py import syscalls as sc

    for flag in ("MS_RDONLY", "MS_NOSUID", "MS_NODEV", "MS_NOEXEC", "MS_STRICTATIME"):
        assert getattr(plan, flag) == getattr(sc, flag), flag
