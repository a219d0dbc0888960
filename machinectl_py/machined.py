"""systemd-machined's side: register containers so machinectl sees and controls them.

On the start-up path (`run`, `start` and `exec` import it; tests/unit/test_startup_imports.py
guards it): it imports nothing heavy at the top, and its annotations' names come in under
`TYPE_CHECKING = False`, because `typing` alone costs 8-10 ms to import here.
"""

from __future__ import annotations

from machinectl_py.bus import BusError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from machinectl_py.bus import Bus

MACHINED = ("org.freedesktop.machine1", "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager")
SERVICE = "pymachine"
MACHINE_INTERFACE = "org.freedesktop.machine1.Machine"
NO_SUCH_MACHINE = "org.freedesktop.machine1.NoSuchMachine"
MACHINE_EXISTS = "org.freedesktop.machine1.MachineExists"


def machine_id_bytes(container_id: str) -> bytes:
    """machined wants 0 or 16 bytes; the first 32 hex digits of the container id."""
    return bytes.fromhex(container_id[:32])


def watch_removal(bus: Bus) -> None:
    """Subscribe to MachineRemoved; call before anything that may remove the machine."""
    bus.add_match(f"type='signal',sender='{MACHINED[0]}',interface='{MACHINED[2]}',member='MachineRemoved',"
                  f"path='{MACHINED[1]}'")


def watch_machines(bus: Bus) -> None:
    """Subscribe to MachineNew and MachineRemoved of every machine."""
    for member in ("MachineNew", "MachineRemoved"):
        bus.add_match(f"type='signal',sender='{MACHINED[0]}',interface='{MACHINED[2]}',member='{member}',"
                      f"path='{MACHINED[1]}'")


def register_machine(bus: Bus, name: str, container_id: str, leader: int, root: str) -> str:
    """RegisterMachine: no new scope; the machine adopts the unit the leader runs in
    (machine-NAME.scope for `run`, pymachine@NAME.service for a detached container)."""
    reply = bus.call(*MACHINED, "RegisterMachine", "sayssus", name, machine_id_bytes(container_id),
                     SERVICE, "container", leader, root)
    return str(reply[0])


def _machine_call(bus: Bus, method: str, signature: str, *args: Any) -> bool:
    """A Manager call on one machine; False if machined has no such machine (any more)."""
    try:
        bus.call(*MACHINED, method, signature, *args)
        return True
    except BusError as e:
        if e.name == NO_SUCH_MACHINE:
            return False
        raise


def terminate_machine(bus: Bus, name: str) -> bool:
    return _machine_call(bus, "TerminateMachine", "s", name)


def request_termination(bus: Bus, name: str) -> None:
    """TerminateMachine, its reply not waited for (an error, such as no such machine, is dropped)."""
    bus.send(*MACHINED, "TerminateMachine", "s", name)


def unregister_machine(bus: Bus, name: str) -> bool:
    return _machine_call(bus, "UnregisterMachine", "s", name)


def kill_machine(bus: Bus, name: str, signal: int, who: str = "all") -> bool:
    return _machine_call(bus, "KillMachine", "ssi", name, who, signal)


def machine_exists(bus: Bus, name: str) -> bool:
    return _machine_call(bus, "GetMachine", "s", name)


def machine_path(bus: Bus, name: str) -> str | None:
    """The machine's object path (GetMachine); None if machined has no such machine."""
    try:
        return str(bus.call(*MACHINED, "GetMachine", "s", name)[0])
    except BusError as e:
        if e.name == NO_SUCH_MACHINE:
            return None
        raise


def machine_unit(bus: Bus, name: str) -> str | None:
    """The unit a machine runs in; None if there is no such machine (or machined cannot tell)."""
    try:
        path = machine_path(bus, name)
        return None if path is None else str(bus.get_property(MACHINED[0], path, MACHINE_INTERFACE, "Unit"))
    except BusError:
        return None


def list_machines(bus: Bus) -> list[tuple[str, str, str, str]]:
    rows: list[Any] = bus.call(*MACHINED, "ListMachines")[0]
    return [(str(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def wait_removed(bus: Bus, name: str, timeout_usec: int) -> bool:
    """Wait for MachineRemoved(name); True if it came (or the machine is already gone)."""
    if bus.wait_for_signal(lambda _p, _i, member, args: member == "MachineRemoved" and args[:1] == [name],
                           timeout_usec):
        return True
    return not machine_exists(bus, name)


def machine_properties(bus: Bus, name: str) -> dict[str, Any] | None:
    """The machine's properties (Name, Service, Leader, Unit...); None if machined has no such machine."""
    path = machine_path(bus, name)
    return None if path is None else bus.get_all(MACHINED[0], path, MACHINE_INTERFACE)
