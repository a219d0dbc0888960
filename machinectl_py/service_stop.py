"""`pymachine _service-stopped NAME`: the stop hook of pymachine@NAME.service (ExecStopPost=).

Records how the container ended (docker's exit code: 128+N when killed by signal N) in its
record, removes the PID file, and removes a `run -d --rm` container.
"""

from __future__ import annotations

import os

from machinectl_py import lifecycle, systemd
from machinectl_py.bus import Bus, BusError
from machinectl_py.errors import NotFoundError
from machinectl_py.unit_template import unit_name


def stopped_main(argv: list[str]) -> int:
    """`pymachine _service-stopped NAME`: ExecStopPost=, records how the container ended."""
    if len(argv) != 1:
        return 2
    name = argv[0]
    try:
        container = lifecycle.Container.load(name)
    except NotFoundError:
        return 0  # removed while it ran
    from machinectl_py.paths import run_path

    try:
        os.unlink(run_path(f"{name}.pid"))
    except FileNotFoundError:
        pass
    from machinectl_py.launch import disconnect_network

    disconnect_network(name)  # its namespace is gone with its init: the lease (and idle bridge) go too
    code = exit_code_from_env(os.environ)
    if code is None:
        code = _exit_code_from_unit(name)
    if code is None:
        code = container.record.exit_code  # the setup process failed and said how (it is no main process)
    if container.record.spec.boot:
        from machinectl_py.boot import exit_code

        code = exit_code(code)
    container.record_exit(code, oom_killed=was_oom_killed(os.environ))
    record_end_events(container.record)
    if container.record.spec.remove:  # run -d --rm
        lifecycle.keep_error_beyond_removal(name)
        container.remove_files()
    return 0


def record_end_events(record: object) -> None:
    """docker's events at a container's end: oom (if so), then die with its exit code."""
    from machinectl_py.journal import container_event

    if getattr(record, "oom_killed", False):
        container_event("oom", record)
    container_event("die", record, exitCode=str(getattr(record, "exit_code", None)))


def was_oom_killed(env: dict[str, str] | os._Environ[str]) -> bool:
    """systemd says so on v2 ($SERVICE_RESULT=oom-kill, from memory.events); on a v1 host it
    cannot, so the memory cgroup's own count says it (this hook runs in the unit's cgroup, in
    its .control sub-cgroup when the unit is delegated)."""
    from machinectl_py import cgroupfs

    if env.get("SERVICE_RESULT") == "oom-kill":
        return True
    cgroup = cgroupfs.cgroup_of("self")
    if cgroup is None:
        return False
    return cgroupfs.oom_kills(cgroup.removesuffix("/.control")) > 0


def exit_code_from_env(env: dict[str, str] | os._Environ[str]) -> int | None:
    """systemd's $EXIT_CODE/$EXIT_STATUS -> docker's code (128+N when killed by signal N)."""
    import signal

    kind = env.get("EXIT_CODE", "")
    status = env.get("EXIT_STATUS", "")
    if kind == "exited" and status.isdigit():
        return int(status)
    if kind in ("killed", "dumped"):
        try:
            return 128 + int(signal.Signals[f"SIG{status}"])
        except KeyError:
            return 128 + int(status) if status.isdigit() else None
    return None


def _exit_code_from_unit(name: str) -> int | None:
    """ExecMainCode/ExecMainStatus of the unit (CLD_EXITED=1, CLD_KILLED=2, CLD_DUMPED=3)."""
    try:
        with Bus.system() as bus:
            props = systemd.unit_properties(bus, unit_name(name), "Service")
    except BusError:
        return None
    code, status = props.get("ExecMainCode"), int(props.get("ExecMainStatus") or 0)
    if code == 1:
        return status
    if code in (2, 3):
        return 128 + status
    return None
