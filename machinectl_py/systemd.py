"""systemd's side: unit properties (pure builders) and the few Manager calls pymachine makes.

Every resource limit reaches the kernel through systemd as a unit property (the
"systemd cgroup driver"); pymachine never writes cgroup files itself.
"""

from __future__ import annotations

from machinectl_py.bus import BusError
from machinectl_py.spec import Limits

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    from machinectl_py.bus import Bus

    Property: TypeAlias = tuple[str, tuple[str, Any]]

SYSTEMD = ("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
MACHINE_SLICE = "machine.slice"
UINT64_MAX = 2**64 - 1
STOP_TIMEOUT_USEC = 10_000_000  # docker stop's default grace period



def limit_properties(limits: Limits) -> list[Property]:
    """Resource limits as unit properties: MemoryMax, CPUQuotaPerSecUSec, TasksMax."""
    props: list[Property] = []
    if limits.memory_max is not None:
        props.append(("MemoryMax", ("t", limits.memory_max)))
    if limits.cpu_quota_usec is not None:
        props.append(("CPUQuotaPerSecUSec", ("t", limits.cpu_quota_usec)))
    if limits.tasks_max is not None:
        props.append(("TasksMax", ("t", limits.tasks_max)))
    return props


def device_properties(device_allow: tuple[tuple[str, str], ...]) -> list[Property]:
    """DevicePolicy=closed plus the policy's allow-list, as systemd-nspawn sets for its scopes."""
    return [("DevicePolicy", ("s", "closed")), ("DeviceAllow", ("a(ss)", list(device_allow)))]


def scope_properties(name: str, limits: Limits, device_allow: tuple[tuple[str, str], ...],
                     extra_pids: tuple[int, ...] = ()) -> list[Property]:
    """Properties for machine-NAME.scope (machined adds PIDs=[leader] and Delegate=yes)."""
    props: list[Property] = [
        ("Description", ("s", f"pymachine container {name}")),
        ("Slice", ("s", MACHINE_SLICE)),
        ("CollectMode", ("s", "inactive-or-failed")),
        ("TimeoutStopUSec", ("t", STOP_TIMEOUT_USEC)),
    ]
    if extra_pids:
        props.append(("PIDs", ("au", list(extra_pids))))
    return props + device_properties(device_allow) + limit_properties(limits)


def call(bus: Bus, method: str, signature: str = "", *args: Any) -> list[Any]:
    return bus.call(*SYSTEMD, method, signature, *args)


def freeze_unit(bus: Bus, unit: str) -> None:
    call(bus, "FreezeUnit", "s", unit)


def thaw_unit(bus: Bus, unit: str) -> None:
    call(bus, "ThawUnit", "s", unit)


def unit_path(bus: Bus, unit: str) -> str | None:
    try:
        return str(call(bus, "GetUnit", "s", unit)[0])
    except BusError as e:
        if e.name == "org.freedesktop.systemd1.NoSuchUnit":
            return None
        raise


def get_unit_property(bus: Bus, unit: str, interface: str, prop: str) -> Any:
    path = unit_path(bus, unit)
    if path is None:
        return None
    return bus.call("org.freedesktop.systemd1", path, "org.freedesktop.DBus.Properties", "Get", "ss",
                    f"org.freedesktop.systemd1.{interface}", prop)[0]
