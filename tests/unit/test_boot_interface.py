"""--boot's pure parts: the container interface (boot.py), its settings, its cgroup view."""

from __future__ import annotations

import pytest

from machinectl_py import boot, plan, security, settings
from machinectl_py.errors import UsageError
from machinectl_py.images import ImageConfig
from machinectl_py.launch import command_for
from machinectl_py.mounts import detect_cgroup_layout
from machinectl_py.policy import load_policy
from machinectl_py.spec import ContainerSpec

LEGACY = """\
30 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:6 - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/memory rw,nosuid shared:8 - cgroup cgroup rw,memory
"""
ID = "0123456789abcdef" * 4


def spec(**kw: object) -> ContainerSpec:
    return ContainerSpec(name="deb", image="debian", **kw)


def test_container_interface_environment_and_command() -> None:
    env = boot.environment({"PATH": "/bin", "HOSTNAME": "deb", "container": "docker"}, ID, notify=True)
    assert env["container"] == "pymachine"
    assert env["container_uuid"] == "01234567-89ab-cdef-0123-456789abcdef"
    assert env["NOTIFY_SOCKET"] == "/run/host/notify" and "HOSTNAME" not in env
    assert "NOTIFY_SOCKET" not in boot.environment({}, ID, notify=False)
    config = ImageConfig(entrypoint=["/docker-entrypoint"], cmd=["nginx"])
    assert command_for(spec(boot=True), config) == ("/sbin/init",)
    assert command_for(spec(boot=True, command=("--log-level=debug",)), config) == (
        "/sbin/init", "--log-level=debug")


def test_boot_ops_and_boot_id() -> None:
    ops = boot.ops("/etc/os-release", "/c/container-manager", "/c/boot_id", "/run/pymachine/notify/x", console=True)
    binds = {op.target: op for op in ops if isinstance(op, plan.Bind)}
    assert binds["/run/host/os-release"].read_only and binds["/run/host/container-manager"].read_only
    assert binds["/proc/sys/kernel/random/boot_id"].source == "/c/boot_id"
    assert binds["/run/host/notify"].source == "/run/pymachine/notify/x"
    assert plan.Symlink("/dev/console", "pts/0") in ops
    assert not any(isinstance(op, plan.Symlink) for op in boot.ops("a", "b", "c", None, console=False))
    text = boot.new_boot_id(bytes(16))
    assert text == "00000000-0000-4000-8000-000000000000\n"


def test_notify_messages() -> None:
    assert boot.parse_notify(b"READY=1\nSTATUS=Startup finished in 1.5s.\nnoise") == {
        "READY": "1", "STATUS": "Startup finished in 1.5s."}


def test_exit_codes_of_a_booted_os() -> None:
    assert boot.exit_code(130) == 0  # SIGINT: halt or power-off inside
    assert boot.exit_code(129) == 129 and boot.exit_code(None) is None


def test_name_systemd_is_writable_only_for_boot() -> None:
    layout = detect_cgroup_layout(LEGACY)
    ro = {op.target: op.read_only for op in plan.cgroup_plan(layout) if isinstance(op, plan.CgroupMount)}
    rw = {op.target: op.read_only for op in plan.cgroup_plan(layout, writable_systemd=True)
          if isinstance(op, plan.CgroupMount)}
    assert ro == {"/sys/fs/cgroup/systemd": True, "/sys/fs/cgroup/memory": True}
    assert rw == {"/sys/fs/cgroup/systemd": False, "/sys/fs/cgroup/memory": True}


def test_unit_properties_and_stop_signal() -> None:
    lines = settings.dropin_lines(spec(boot=True))
    assert "KillSignal=SIGRTMIN+3" in lines and "RestartForceExitStatus=SIGHUP" in lines
    assert "NotifyAccess=exec" in lines
    assert spec(boot=True).effective_stop_signal == "SIGRTMIN+3"
    assert spec().effective_stop_signal == "SIGTERM"
    own = settings.dropin_lines(spec(boot=True, stop_signal="SIGTERM"))
    assert "KillSignal=SIGTERM" in own and "KillSignal=SIGRTMIN+3" not in own
    scope = [p.name for p in settings.unit_properties(spec(boot=True), scope=True)]
    assert "KillSignal" in scope and "RestartForceExitStatus" not in scope
    assert not any("SIGRTMIN" in line for line in settings.dropin_lines(spec()))


def test_capabilities_are_nspawns_plus_the_policys() -> None:
    caps = security.capabilities(spec(boot=True), load_policy())
    assert caps >= boot.NSPAWN_CAPABILITIES and len(boot.NSPAWN_CAPABILITIES) == 26
    assert "SYS_ADMIN" not in security.capabilities(spec(), load_policy())
    assert "SYS_ADMIN" not in security.capabilities(spec(boot=True, cap_drop=("SYS_ADMIN",)), load_policy())


@pytest.mark.parametrize("kw", [{"entrypoint": ("/bin/sh",)}, {"init": True}])
def test_boot_refuses_entrypoint_and_init(kw: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="--boot"):
        spec(boot=True, **kw).validate()


def test_boot_takes_the_default_user_namespace_and_opts_out_with_host() -> None:
    """A booted OS gets the same default as any container (nspawn's own unit runs -U)."""
    assert security.userns_mode(spec(boot=True).validate()) is None
    assert security.userns_mode(spec(boot=True, userns="auto").validate()) == "auto"
    assert security.userns_mode(spec(boot=True, userns="host").validate()) == "host"
    assert security.userns_mode(spec(boot=True, privileged=True).validate()) == "host"


def test_hybrid_cgroup_view_of_a_booted_os_with_a_user_namespace() -> None:
    """With a user namespace, the /sys/fs/cgroup tmpfs is the range root's (nspawn -U mounts it
    inside the namespace); name=systemd stays the only writable v1 hierarchy."""
    layout = detect_cgroup_layout(LEGACY)
    tmpfs = plan.cgroup_plan(layout, writable_systemd=True, owner=1879048192)[0]
    assert isinstance(tmpfs, plan.Mount) and tmpfs.data == "mode=755,uid=1879048192,gid=1879048192"
    assert plan.cgroup_plan(layout)[0] == plan.Mount("/sys/fs/cgroup", "tmpfs", "tmpfs",
                                                      plan.NOSUID_NODEV_NOEXEC, "mode=755")


def test_the_notify_socket_is_bound_plainly() -> None:
    """Chowned to the range's root and never idmapped (tmpfs can be only from Linux 6.3): it shows
    as root's inside on every kernel."""
    ops = boot.ops("a", "b", "c", "/run/pymachine/notify/x", console=False)
    notify = next(op for op in ops if isinstance(op, plan.Bind) and op.target == "/run/host/notify")
    assert not notify.idmapped
    assert all(op.idmapped for op in ops if isinstance(op, plan.Bind) and op is not notify)


def test_console_lines_as_a_log_holds_them() -> None:
    """A detached boot's console in the journal: the text a terminal would show last on each line,
    without colours, carriage returns or empty lines."""
    data = (b"\x1b[0;1;39mWelcome to \x1b[0mDebian!\r\n\r\n"
            b"[  OK  ] Started \x1b[0;1;39mJournal\x1b[0m.\r\n"
            b"[     ] A start job is running for x (1s / 90s)\r\x1b[K[  OK  ] Reached target Basic System.\r\n"
            b"partial")
    assert boot.console_lines(data) == (b"Welcome to Debian!\n[  OK  ] Started Journal.\n"
                                        b"[  OK  ] Reached target Basic System.\n")
