"""Each detached container's drop-in: pymachine@NAME.service.d/50-pymachine.conf.

Per-container unit settings (restart policy, limits, devices and docker's journal fields)
on top of the template, written by `create` and `start` into /etc/systemd/system and, for
every definition, by pymachine-generator into the generator directory (dropin_text is the
one renderer of both).
"""

from __future__ import annotations

import os

from machinectl_py import systemd
from machinectl_py.unit_template import UNIT_DIR, unit_name, write_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:
    from machinectl_py.bus import Bus
    from machinectl_py.spec import ContainerSpec, Limits

DROPIN = "50-pymachine.conf"
# The generator's, at every boot and reload: the Delegate= of the cgroup layout the host has
# now. It sorts after DROPIN, so it wins over the one `create` wrote in /etc, which names the
# layout the host had then (a distribution upgrade may have moved it from hybrid to unified).
DELEGATE_DROPIN = "60-pymachine-delegate.conf"


def dropin_dir(name: str) -> str:
    return os.path.join(UNIT_DIR, f"{unit_name(name)}.d")


def dropin_path(name: str) -> str:
    return os.path.join(dropin_dir(name), DROPIN)


def dropin_text(name: str, container_id: str, image_name: str, spec: ContainerSpec,
                device_allow: tuple[tuple[str, str], ...] = (), unified_host: bool = True) -> str:
    """Per-container unit settings: the settings table's unit properties (Restart=, limits,
    KillSignal=, Limit*=...), devices and docker's journal fields.

    Limits reach the kernel through systemd as unit properties (MemoryMax=, CPUQuota=,
    TasksMax=); systemd applies them when it starts the unit, before ExecStart= runs. On a
    host with v1 hierarchies the unit delegates only the controllers its settings use, as a
    `run` scope does (systemd.delegate_properties); an empty Delegate= first drops the
    template's "every controller"."""
    fields = (f"CONTAINER_ID={container_id[:12]} CONTAINER_ID_FULL={container_id} "
              f'"IMAGE_NAME={image_name}"')
    from machinectl_py.settings import dropin_lines

    lines = [f"# Written by pymachine for container {name}; `pymachine rm {name}` removes it.",
             "[Service]", f"LogExtraFields={fields}",
             *(f"{prop}=yes" for prop, _ in systemd.accounting_properties(unified_host)), *dropin_lines(spec)]
    lines += device_lines(spec, device_allow)
    if not unified_host:
        lines += delegate_lines(spec.limits, unified_host=False)
    return "\n".join(lines) + "\n"


def device_lines(spec: ContainerSpec, device_allow: tuple[tuple[str, str], ...]) -> list[str]:
    """The scope's device list (security.device_allow) as drop-in lines; --privileged: every
    device (the empty DeviceAllow= drops the template's list)."""
    from machinectl_py import security

    if security.device_policy(spec) == "auto":
        return ["DevicePolicy=auto", "DeviceAllow="]
    return [f"DeviceAllow={path} {access}" for path, access in security.device_allow(spec, device_allow)]


def delegate_lines(limits: Limits, unified_host: bool) -> list[str]:
    """The unit's Delegate= for this host's cgroup layout (see systemd.delegate_properties); the
    empty assignment first drops what an earlier drop-in (or the template) said."""
    if unified_host:
        return ["Delegate=", "Delegate=yes"]
    return ["Delegate=", "Delegate=" + " ".join(systemd.v1_delegated_controllers(limits))]


def write_dropin(bus: Bus, name: str, container_id: str, image_name: str, spec: ContainerSpec) -> None:
    """Write the drop-in; reload systemd only if it has the unit loaded with an older one."""
    from machinectl_py.mounts import unified_cgroup_host
    from machinectl_py.policy import load_policy

    path = dropin_path(name)
    text = dropin_text(name, container_id, image_name, spec, load_policy().device_allow,
                       unified_host=unified_cgroup_host())
    try:
        with open(path) as f:
            if f.read() == text:
                os.utime(path)  # up to date with the definition (see definition_is_newer)
                return
    except FileNotFoundError:
        pass
    write_atomic(path, text)
    reload_if_needed(bus, name)


def reload_if_needed(bus: Bus, name: str) -> None:
    if systemd.get_unit_property(bus, unit_name(name), "Unit", "NeedDaemonReload"):
        systemd.call(bus, "Reload")


def remove_dropin(name: str) -> None:
    import shutil

    shutil.rmtree(dropin_dir(name), ignore_errors=True)
    # Runtime properties that `systemctl set-property --runtime` may have left.
    shutil.rmtree(f"/run/systemd/system.control/{unit_name(name)}.d", ignore_errors=True)


def runtime_dropin_dir(unit: str) -> str:
    """Where `systemctl set-property --runtime` and SetUnitProperties(runtime) write a unit's properties."""
    return f"/run/systemd/system.control/{unit}.d"


def runtime_dropins(unit: str) -> list[str]:
    try:
        names = sorted(os.listdir(runtime_dropin_dir(unit)))
    except FileNotFoundError:
        return []
    return [os.path.join(runtime_dropin_dir(unit), n) for n in names if n.endswith(".conf")]


def remove_runtime_settings(unit: str, properties: list[str]) -> bool:
    """Remove the runtime drop-ins (50-NAME.conf) of these properties: once the container's own
    drop-in holds the values, they would only shadow a later `update` or the definition. True if
    one was removed (systemd then wants a reload)."""
    removed = False
    for prop in properties:
        try:
            os.unlink(os.path.join(runtime_dropin_dir(unit), f"50-{prop}.conf"))
            removed = True
        except FileNotFoundError:
            pass
    return removed


def remove_control_settings(unit: str, properties: list[str]) -> bool:
    """As remove_runtime_settings, for `systemctl set-property` without --runtime (/etc)."""
    removed = False
    for prop in properties:
        try:
            os.unlink(f"/etc/systemd/system.control/{unit}.d/50-{prop}.conf")
            removed = True
        except FileNotFoundError:
            pass
    return removed


def is_stale(name: str) -> bool:
    """Is the drop-in missing, or older than the container's definition?"""
    return not os.path.exists(dropin_path(name)) or definition_is_newer(name, dropin_path(name))


def mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def definition_is_newer(name: str, than: str) -> bool:
    """Has NAME.toml changed since `than` was written? (Saves parsing it on every start.)"""
    from machinectl_py.paths import config_path

    definition = mtime(config_path("machines", f"{name}.toml"))
    if definition is None:
        return False
    other = mtime(than)
    return other is None or definition > other
