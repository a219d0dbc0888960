"""`pymachine start|stop|restart|kill|rm`: a detached container's life, through its unit.

Every verb is a systemd job or call on pymachine@NAME.service (StartUnit, StopUnit,
KillUnit), waited for through JobRemoved (subscribed before the call). `start` and `rm`
serialize on a lock of the container's directory: of two `start`s of one container, one
starts it and the other is told it runs already (or is being started).
"""

from __future__ import annotations

import os
import sys

from machinectl_py.errors import ConflictError, NotFoundError, PymachineError, UsageError
from machinectl_py.state import ContainerLock  # the lock lives with the container's directory

# `contextlib` (functools, collections: ~5 ms) stays off the start path: `start` is timed
# against nspawn; the verbs off that path import it where they use it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import NoReturn

    from machinectl_py import state
    from machinectl_py.bus import Bus

USEC = 1_000_000


def _parser(verb: str, description: str) -> argparse.ArgumentParser:
    # argparse costs ~13 ms to import: only the verbs off the start path use it.
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")

    return Parser(prog=f"pymachine {verb}", description=description)


# -- start ----------------------------------------------------------------------------------------


def start_container(name: str) -> None:
    from machinectl_py import service
    from machinectl_py.bus import Bus
    from machinectl_py.cmd_create import load_or_adopt, sync_unit

    record = load_or_adopt(name)
    _require_service(record)
    with ContainerLock(name, wait=False), Bus.system() as bus:
        service.ensure_not_running(bus, name)
        sync_unit(bus, record)
        unit = service.unit_name(name)
        # An explicit start resets the unit's start rate limit (and a failed state), as
        # `systemctl reset-failed` does. Not waited for: systemd handles one connection's
        # calls in order, so both are done before StartUnit (and their errors do not matter).
        service.manager_send(bus, "LoadUnit", "s", unit)
        service.manager_send(bus, "ResetFailedUnit", "s", unit)
        result = service.run_job(bus, "StartUnit", unit)
        if result != "done":
            raise PymachineError(f"container {name} failed to start: {_failure_reason(bus, name, result)}",
                                 hint=f"see 'pymachine logs {name}' and 'systemctl status {unit}'")


def _require_service(record: state.ContainerRecord) -> None:
    if record.unit and record.unit.startswith("machine-"):
        raise ConflictError(f"container {record.name} was made by `pymachine run` (a foreground container)",
                            hint="create a detached one with `pymachine create` or `pymachine run -d`")


def _failure_reason(bus: Bus, name: str, result: str | None) -> str:
    from machinectl_py import service
    from machinectl_py.paths import container_path

    try:
        with open(container_path(name, service.LAST_ERROR)) as f:
            text = f.read().strip()
        if text:
            return text
    except OSError:
        pass
    props = service.unit_properties(bus, service.unit_name(name), "Service")
    if props:
        return (f"{service.unit_name(name)}: result {props.get('Result')}, "
                f"exit status {props.get('ExecMainStatus')}")
    return f"job {result or 'timed out'}"


START_USAGE = """\
usage: pymachine start NAME [NAME...]

Start detached containers as their systemd units (pymachine@NAME.service) and return once
each runs; a container that cannot start is an error that says why.
"""


def main_start(argv: list[str]) -> int:
    if not argv or any(a.startswith("-") for a in argv):
        if "--help" in argv or "-h" in argv:
            sys.stdout.write(START_USAGE)
            return 0
        raise UsageError("pymachine start: expected NAME [NAME...]", hint="see 'pymachine start --help'")
    for name in argv:
        start_container(name)
        print(name)
    return 0


# -- stop / restart ---------------------------------------------------------------------------------


def stop_container(bus: Bus, name: str, timeout: float) -> None:
    """StopUnit: SIGTERM to the container's init (KillMode=mixed); SIGKILL to all after `timeout`."""
    from machinectl_py import service

    unit = service.unit_name(name)
    if not service.is_active(bus, name):
        return
    service.watch_jobs(bus)
    job = str(service.manager_call(bus, "StopUnit", "ss", unit, "replace")[0])
    result = service.wait_job(bus, job, int(timeout * USEC))
    if result is None:
        try:
            service.manager_call(bus, "KillUnit", "ssi", unit, "all", 9)  # SIGKILL
        except Exception:
            pass  # it ended meanwhile: the job says so
        result = service.wait_job(bus, job, service.JOB_TIMEOUT_USEC)
    if result not in ("done", None):
        raise PymachineError(f"stopping {unit} failed: job {result}")
    service.manager_send(bus, "ResetFailedUnit", "s", unit)


def _stop_any(bus: Bus, name: str, timeout: float | None) -> None:
    """Stop a detached container, or a foreground one through machined. Without -t, the
    container's own --stop-timeout (docker's rule), else 10 s."""
    from machinectl_py import config, state
    from machinectl_py.spec import signal_number

    try:
        record = state.load(name)
    except NotFoundError:
        if not config.definition_exists(name):
            raise
        # Defined but never started by pymachine (or its start was killed before the
        # record): only its unit can be running.
        stop_container(bus, name, 10.0 if timeout is None else timeout)
        return
    spec = record.spec
    grace = timeout if timeout is not None else float(spec.stop_timeout if spec.stop_timeout is not None else 10)
    if record.unit and record.unit.startswith("machine-"):
        _stop_foreground(bus, name, grace, signal_number(spec.stop_signal or "SIGTERM"))
        return
    stop_container(bus, name, grace)


def _stop_foreground(bus: Bus, name: str, timeout: float, stop_signal: int) -> None:
    """A `pymachine run` in another terminal: the stop signal (SIGTERM unless --stop-signal) to the
    container's init, SIGKILL to all of
    it after the timeout (docker stop's rule; the scope's own stop would wait its 10 s). That
    run then tears down and exits 128+N; this returns once machined has dropped the machine."""
    import signal

    from machinectl_py import machined

    machined.watch_removal(bus)
    if (timeout > 0 and machined.kill_machine(bus, name, stop_signal, who="leader")
            and machined.wait_removed(bus, name, int(timeout * USEC))):
        return
    if machined.kill_machine(bus, name, signal.SIGKILL, who="all"):
        machined.wait_removed(bus, name, 10 * USEC)


def main_stop(argv: list[str]) -> int:
    from machinectl_py.bus import Bus

    p = _parser("stop", "Stop containers: SIGTERM to their init, SIGKILL after the timeout.")
    p.add_argument("-t", "--time", type=float, default=None, metavar="SECONDS",
                   help="seconds to wait before SIGKILL (default: the container's --stop-timeout, else 10)")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    with Bus.system() as bus:
        for name in args.names:
            _stop_any(bus, name, args.time)
            print(name)
    return 0


def main_restart(argv: list[str]) -> int:
    from machinectl_py import state
    from machinectl_py.bus import Bus

    p = _parser("restart", "Stop, then start detached containers.")
    p.add_argument("-t", "--time", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    for name in args.names:
        _require_service(state.load(name))
        with Bus.system() as bus:
            stop_container(bus, name, args.time)
        start_container(name)
        print(name)
    return 0


# -- kill -------------------------------------------------------------------------------------------


def parse_signal(text: str) -> int:
    import signal

    name = text.upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"invalid signal {text!r}", hint="use a name such as TERM, KILL, HUP or a number") from None


def main_kill(argv: list[str]) -> int:
    from machinectl_py import machined
    from machinectl_py.bus import Bus

    p = _parser("kill", "Send a signal to the container's init (PID 1 inside).")
    p.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    sig = parse_signal(args.signal)
    with Bus.system() as bus:
        for name in args.names:
            if not machined.kill_machine(bus, name, sig, who="leader"):
                raise NotFoundError(f"container {name} is not running")
            print(name)
    return 0


# -- rm ---------------------------------------------------------------------------------------------


def remove(bus: Bus, name: str, *, force: bool, volumes: bool) -> None:
    from machinectl_py import config, service, state
    from machinectl_py.paths import container_path

    try:
        record = state.load(name)
    except NotFoundError:
        # A hand-written definition never started, or a start killed before it wrote the
        # record (a directory without one). Only the unit can run then.
        defined = config.definition_exists(name)
        if (defined or os.path.isdir(container_path(name))) and _unit_active(bus, service.unit_name(name)):
            if not force:
                raise ConflictError(f"container {name} is running",
                                    hint=f"stop it first, or use 'pymachine rm -f {name}'") from None
            stop_container(bus, name, 0)
        removed = _remove_debris(name)
        if defined:
            config.remove_definition(name)
            service.remove_dropin(name)
        if defined or removed:
            return
        raise
    unit = record.unit or service.unit_name(name)
    lock = _lock_for_removal(bus, name, unit, force)
    if lock is None:
        return  # its own `run --rm` removed it meanwhile
    try:
        record = state.load(name)  # as its last owner left it
        if _unit_active(bus, unit):  # started by systemctl meanwhile
            if not force:
                raise ConflictError(f"container {name} is running",
                                    hint=f"stop it first, or use 'pymachine rm -f {name}'")
            _stop_any(bus, name, 0)
        if not volumes:
            record.spec = record.spec.replace(volumes=())  # keep anonymous volumes unless -v
        service.remove_container(name, record)
        service.manager_send(bus, "ResetFailedUnit", "s", service.unit_name(name))
        try:
            service.reload_if_needed(bus, name)
        except Exception:
            pass  # the unit's files are gone; systemd notices on its next reload
    finally:
        lock.release()


REMOVE_WAIT_SECONDS = 30


def _lock_for_removal(bus: Bus, name: str, unit: str, force: bool) -> ContainerLock | None:
    """The container's lock, taken for `rm`. A foreground `run` holds it for its whole life and
    `start` while it starts: a running container is refused (or, with -f, killed), and then its
    owner is waited for, so the directory is never removed under a command still using it.
    None: the directory is gone (a `run --rm` removed it on its way out)."""
    import time

    deadline = time.monotonic() + REMOVE_WAIT_SECONDS
    while True:
        if _unit_active(bus, unit):
            if not force:
                raise ConflictError(f"container {name} is running",
                                    hint=f"stop it first, or use 'pymachine rm -f {name}'")
            _stop_any(bus, name, 0)
        lock = ContainerLock(name, wait=False)
        try:
            lock.acquire()
            return lock
        except NotFoundError:
            return None
        except ConflictError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _remove_debris(name: str) -> bool:
    """Remove a container directory without a record, unless a command holds it (ContainerLock:
    ConflictError). True if there was one."""
    from machinectl_py import state
    from machinectl_py.paths import container_path

    if not os.path.isdir(container_path(name)):
        return False
    with ContainerLock(name, wait=False):
        state.remove_dir(name)
    return True


def _unit_active(bus: Bus, unit: str) -> bool:
    from machinectl_py import service

    return service.unit_property(bus, unit, "Unit", "ActiveState") in service.ACTIVE_STATES


def main_rm(argv: list[str]) -> int:
    from machinectl_py.bus import Bus

    p = _parser("rm", "Remove containers: definition, unit drop-in, state and upper layer.")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("-v", "--volumes", action="store_true", help="also remove its anonymous volumes")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    failed = 0
    with Bus.system() as bus:
        for name in args.names:
            try:
                remove(bus, name, force=args.force, volumes=args.volumes)
                print(name)
            except PymachineError as e:
                print(f"pymachine: {e.message}", file=sys.stderr)
                failed = 1
    return 125 if failed else 0
