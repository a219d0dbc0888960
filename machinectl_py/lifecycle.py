"""A container's life, between the verbs and the mechanisms: one `Container` (its record, its
definition, its lock) with load_or_adopt, sync, start, stop, kill and remove.

The verb modules (cmd_*.py, exec.py, images/cli.py) only translate arguments into calls here,
and the unit's setup process (service.py) and stop hook (service_stop.py) use the same calls:
one path adopts a definition (a TOML file pymachine has not seen: written by hand, or by
`create` before a crash) and one keeps the record in line with an edited definition.

A detached container is the unit pymachine@NAME.service: `start` is systemd's StartUnit job,
`stop` its StopUnit job, both waited for through JobRemoved (subscribed before the call).
`start` and `remove` serialize on the container directory's lock: of two `start`s of one
container, one starts it and the other is told it runs already (or is being started). A
foreground container (`pymachine run`, machine-NAME.scope) is stopped and killed through
machined.

On the path of `start` (the client and the unit's setup process): no contextlib, typing or
socket at import time; the rest loads where it is used.
"""

from __future__ import annotations

import os

from machinectl_py import state
from machinectl_py.errors import BusError, ConflictError, NotFoundError, PymachineError, UsageError
from machinectl_py.state import ContainerLock
from machinectl_py.unit_template import unit_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from machinectl_py.bus import Bus
    from machinectl_py.spec import ContainerSpec

USEC = 1_000_000
# The setup process's last failure, in the container's directory: `start` reports it.
LAST_ERROR = "last-error"
# How long `rm` waits for the command that holds a container's lock (a `run` tearing down).
REMOVE_WAIT_SECONDS = 30


class Container:
    """A container pymachine has a record of (container.json)."""

    __slots__ = ("record",)

    def __init__(self, record: state.ContainerRecord) -> None:
        self.record = record

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def unit(self) -> str:
        return self.record.unit or unit_name(self.name)

    @property
    def is_foreground(self) -> bool:
        """Made by `pymachine run`: its unit is machine-NAME.scope, not pymachine@NAME.service."""
        return bool(self.record.unit and self.record.unit.startswith("machine-"))

    # -- making one ---------------------------------------------------------------------------

    @classmethod
    def load(cls, name: str) -> Container:
        return cls(state.load(name))

    @classmethod
    def create(cls, spec: ContainerSpec, *, bus: Bus | None = None, write_definition: bool = True,
               container_id: str | None = None) -> Container:
        """Make the container's definition, record and (given a bus) template and drop-in; all
        or nothing. Without a bus (the unit's setup process, already started by systemd) the
        unit's files are left to `start` and the generator."""
        from machinectl_py import config, images
        from machinectl_py.launch import command_for, effective_user

        spec = spec.validate()
        if spec.tty or spec.interactive:
            raise UsageError("a detached container has no terminal: -i/-t work with `pymachine run` and `exec`")
        if bus is not None:
            from machinectl_py.mounts import unified_cgroup_host
            from machinectl_py.settings import check_host_support

            check_host_support(spec, unified_cgroup_host())
        image = images.resolve(spec.image)
        command_for(spec, image.config)  # fails now, not at start, when there is no command at all
        if write_definition and config.definition_exists(spec.name):
            raise ConflictError(f"a definition for {spec.name!r} exists already: {config.definition_path(spec.name)}",
                                hint=f"start it with 'pymachine start {spec.name}' or remove it with "
                                     f"'pymachine rm {spec.name}'")
        if bus is not None:
            from machinectl_py.unit_template import ensure_template

            ensure_template(bus)
        state.claim(spec.name)
        try:
            spec = _create_volumes(spec)
            if write_definition:
                config.write_definition(spec, exclusive=True)
            record = state.ContainerRecord(
                name=spec.name, id=container_id or os.urandom(32).hex(), image_name=image.name, image_id=image.id,
                spec=spec, created=state.now(), unit=unit_name(spec.name), user=effective_user(spec, image.config))
            state.save(record)
            if bus is not None:
                from machinectl_py.dropins import write_dropin

                write_dropin(bus, spec.name, record.id, image.name, spec)
            _event("create", record)
            return cls(record)
        except BaseException:
            _undo_create(spec, definition=write_definition)
            raise
        finally:
            state.release_claim(spec.name)

    @classmethod
    def load_or_adopt(cls, name: str, *, bus: Bus | None = None, container_id: str | None = None) -> Container:
        """The container's record; for a definition pymachine has never seen (written by hand,
        never started), the record made now, with `container_id` if given (see create)."""
        from machinectl_py import config

        try:
            return cls.load(name)
        except NotFoundError:
            if not config.definition_exists(name):
                raise NotFoundError(f"no such container: {name} (no definition {config.definition_path(name)})"
                                    ) from None
        try:
            return cls.create(config.load_definition(name), bus=bus, write_definition=False,
                              container_id=container_id)
        except ConflictError:
            return cls.load(name)  # another command adopted it meanwhile

    # -- keeping it in line with its definition ----------------------------------------------

    def sync(self) -> ContainerSpec:
        """The definition (TOML, authoritative) into the record, if it changed since the record
        was saved (an admin edited it); the TOML is not parsed otherwise. Returns the spec."""
        from machinectl_py import config
        from machinectl_py.dropins import definition_is_newer
        from machinectl_py.paths import container_path

        record = self.record
        if definition_is_newer(self.name, container_path(self.name, state.RECORD)):
            record.spec = _create_volumes(config.load_definition(self.name), record.spec)
            state.save_spec(record)
        return record.spec

    def sync_unit(self, bus: Bus) -> None:
        """The template, the record and the drop-in in line with the definition; the drop-in is
        left alone when the definition has not changed since it was written."""
        from machinectl_py import dropins
        from machinectl_py.unit_template import ensure_template

        ensure_template(bus)
        self.sync()
        if dropins.is_stale(self.name):
            dropins.write_dropin(bus, self.name, self.record.id, self.record.image_name, self.record.spec)

    # -- start, stop, kill ------------------------------------------------------------------------

    def require_service(self) -> None:
        if self.is_foreground:
            raise ConflictError(f"container {self.name} was made by `pymachine run` (a foreground container)",
                                hint="create a detached one with `pymachine create` or `pymachine run -d`")

    def start(self, bus: Bus | None = None) -> None:
        """Start the unit and wait for its job: a container that cannot start is an error that
        says why. On `bus` if given (`run -d` creates and starts on one connection)."""
        from machinectl_py.bus import Bus

        self.require_service()
        if bus is not None:
            with ContainerLock(self.name, wait=False):
                self._start(bus)
            return
        # Every call here is systemd's: straight to it (Bus.systemd), no bus daemon in between.
        with ContainerLock(self.name, wait=False), Bus.systemd() as own:
            self._start(own)

    def _start(self, bus: Bus) -> None:
        from machinectl_py import systemd

        ensure_not_running(bus, self.name)
        self.sync_unit(bus)
        unit = unit_name(self.name)
        # An explicit start resets the unit's start rate limit (and a failed state), as
        # `systemctl reset-failed` does. Not waited for: systemd handles one connection's
        # calls in order, so it is done before StartUnit (and its error does not matter).
        systemd.send(bus, "ResetFailedUnit", "s", unit)  # a unit that is not loaded has nothing to reset
        started_before = self.record.started
        result = systemd.run_job(bus, "StartUnit", unit)
        if result != "done" and not self._ended_at_once(started_before):
            raise PymachineError(f"container {self.name} failed to start: {self._failure_reason(bus, result)}",
                                 hint=f"see 'pymachine logs {self.name}' and 'systemctl status {unit}'")

    def _ended_at_once(self, started_before: float | None) -> bool:
        """The payload ran and ended before systemd read the PID file, which systemd takes for
        a failed start ('protocol'; its exit code is lost): the setup process reported no
        error, and recorded this start (its stop hook then recorded the end, or removed a
        `--rm` container). docker's `start` succeeds there too."""
        if read_last_error(self.name):
            return False
        try:
            record = state.load(self.name)
        except NotFoundError:
            return self.record.spec.remove
        return record.started is not None and record.started != started_before and record.state == "exited"

    def _failure_reason(self, bus: Bus, result: str | None) -> str:
        from machinectl_py import systemd

        text = read_last_error(self.name)
        if text:
            try:
                os.unlink(_removed_error_path(self.name))  # a removed container's, read now
            except FileNotFoundError:
                pass
            return text
        props = systemd.unit_properties(bus, unit_name(self.name), "Service")
        if props:
            return f"{unit_name(self.name)}: result {props.get('Result')}, exit status {props.get('ExecMainStatus')}"
        return f"job {result or 'timed out'}"

    def stop(self, bus: Bus, timeout: float | None = None) -> None:
        """The stop signal, then SIGKILL after `timeout`; without one, the container's own
        --stop-timeout (docker's rule), else 10 s."""
        from machinectl_py.spec import signal_number

        spec = self.record.spec
        if timeout is None:
            timeout = float(spec.stop_timeout if spec.stop_timeout is not None else DEFAULT_STOP_TIMEOUT)
        if self.is_foreground:
            _stop_foreground(bus, self.name, timeout, signal_number(spec.effective_stop_signal))
        else:
            stop_service(bus, self.name, timeout)

    def kill(self, bus: Bus, signal: int) -> None:
        kill(bus, self.name, signal)

    def record_exit(self, code: int | None, oom_killed: bool = False) -> None:
        """The unit ended (its ExecStopPost=): how, in the record."""
        record = self.record
        record.state, record.exit_code, record.finished, record.pid = "exited", code, state.now(), None
        record.oom_killed = oom_killed
        state.save_state(record)

    # -- removal ----------------------------------------------------------------------------------

    def remove_files(self) -> None:
        """Everything of a stopped container: definition, drop-in, anonymous volumes, state dir."""
        from machinectl_py import config, volumes
        from machinectl_py.dropins import remove_dropin
        from machinectl_py.launch import disconnect_network

        disconnect_network(self.name)
        config.remove_definition(self.name)
        remove_dropin(self.name)
        volumes.remove_anonymous(self.record.spec)
        state.remove_dir(self.name)

    def remove(self, bus: Bus, *, force: bool, volumes: bool) -> None:
        """Stop it (with `force`; else a running one is refused), wait for the command that uses
        its directory, then remove it; its anonymous volumes only with `volumes`."""
        from machinectl_py import systemd

        lock = _lock_for_removal(bus, self.name, self.unit, force)
        if lock is None:
            return  # its own `run --rm` removed it meanwhile
        try:
            self.record = state.load(self.name)  # as its last owner left it
            if systemd.unit_is_active(bus, self.unit):  # started by systemctl meanwhile
                if not force:
                    raise _running(self.name)
                stop(bus, self.name, 0)
            if not volumes:
                self.record.spec = self.record.spec.replace(volumes=())  # keep anonymous volumes unless -v
            self.remove_files()
            _event("destroy", self.record)
            systemd.send(bus, "ResetFailedUnit", "s", unit_name(self.name))
            try:
                from machinectl_py.dropins import reload_if_needed

                reload_if_needed(bus, self.name)
            except Exception:
                pass  # the unit's files are gone; systemd notices on its next reload
        finally:
            lock.release()


# -- update: new limits, live and persisted -------------------------------------------------------


def update(bus: Bus, name: str, args: dict[str, Any]) -> list[str]:
    """`update`: the new limits (and restart policy) live through SetUnitProperties on the running
    unit, then persisted: a foreground container's record; a detached one's definition, record
    and drop-in. Everything is checked before anything changes, and systemd checks its part
    before it applies any, so a refused value changes nothing anywhere. Returns the flags given."""
    from machinectl_py import settings, systemd
    from machinectl_py.mounts import unified_cgroup_host

    container = Container.load_or_adopt(name, bus=bus)
    old = container.record.spec if container.is_foreground else container.sync()
    new, given = settings.updated_spec(old, args)
    if not given:
        raise UsageError("update: you must provide one or more flags when using this command",
                         hint="pymachine update --memory 128M NAME")
    if container.is_foreground and new.restart != old.restart:
        raise UsageError(f"update {name}: --restart: a foreground container (`pymachine run`) has no restart "
                         "policy")
    settings.check_host_support(new, unified_cgroup_host())
    props = settings.live_properties(new)
    if props and systemd.unit_is_active(bus, container.unit):
        try:
            systemd.set_unit_properties(bus, container.unit, [p.dbus for p in props])
        except BusError as e:
            raise UsageError(f"update {name}: systemd refused the new limits: {e.message}") from None
    _persist_update(bus, container, new, [settings.unit_property_name(p) for p in props])
    _event("update", container.record)
    return given


def reapply(bus: Bus, container: Container, drifted: list[str]) -> None:
    """`explain --fix`: the definition's limits onto the unit and the kernel again. The drop-ins
    `systemctl set-property` left for the drifted properties go (runtime and persistent), the
    values are set live, and a detached container's unit is reloaded from pymachine's own
    drop-in (which also makes systemd write every cgroup attribute again)."""
    from machinectl_py import dropins, settings, systemd

    spec = container.record.spec if container.is_foreground else container.sync()
    key_of = {name: key for name, key, _ in settings.LIMIT_PROPERTIES}
    props = settings.live_properties(spec)
    if props and systemd.unit_is_active(bus, container.unit):
        systemd.set_unit_properties(bus, container.unit, [p.dbus for p in props])
    if container.is_foreground:
        return  # a transient scope's values live in its control drop-ins: keep those just written
    keys = [key_of.get(name, name) for name in drifted] + [settings.unit_property_name(p) for p in props]
    dropins.remove_runtime_settings(container.unit, keys)
    dropins.remove_control_settings(container.unit, keys)
    dropins.write_dropin(bus, container.name, container.record.id, container.record.image_name, spec)
    dropins.reload_if_needed(bus, container.name)


def _persist_update(bus: Bus, container: Container, spec: ContainerSpec, prop_names: list[str]) -> None:
    from machinectl_py import config, dropins

    record = container.record
    record.spec = spec
    if container.is_foreground:
        state.save_spec(record)
        return
    config.write_definition(spec, exclusive=False)
    state.save_spec(record)
    dropins.remove_runtime_settings(container.unit, prop_names)
    dropins.write_dropin(bus, container.name, record.id, record.image_name, spec)
    dropins.reload_if_needed(bus, container.name)


# -- the verbs' entry points, for containers with or without a record ----------------------------


def _event(action: str, record: state.ContainerRecord, **attributes: str) -> None:
    from machinectl_py.journal import container_event

    container_event(action, record, **attributes)


def create_and_start(spec: ContainerSpec) -> Container:
    """`run -d`: create, then start."""
    from machinectl_py.bus import Bus

    if spec.tty or spec.interactive:
        raise UsageError("-d cannot be combined with -i/-t", hint="use `pymachine exec -it NAME sh` afterwards")
    from machinectl_py.launch import check_network

    check_network(spec)  # a published port in use: refused before the container exists
    # One connection (a second costs its handshake and Hello), straight to systemd: create
    # and start call only systemd, and through dbus-daemon systemd asks the daemon for our
    # credentials at each call, and the daemon relays the job's signals.
    with Bus.systemd() as bus:
        container = Container.create(spec, bus=bus)
        container.start(bus)
    return container


def create(spec: ContainerSpec) -> Container:
    from machinectl_py.bus import Bus
    from machinectl_py.launch import check_network

    check_network(spec, ports=False)  # a user network that does not exist: refused before it is made

    with Bus.system() as bus:
        return Container.create(spec, bus=bus)


def start(name: str) -> None:
    from machinectl_py.bus import Bus

    try:
        container = Container.load(name)
    except NotFoundError:
        with Bus.system() as bus:
            container = Container.load_or_adopt(name, bus=bus)
    container.start()


DEFAULT_STOP_TIMEOUT = 10


def restart(bus: Bus, name: str, timeout: float | None) -> None:
    container = Container.load(name)
    container.require_service()
    container.stop(bus, timeout)
    Container.load(name).start()  # as its stop hook left it


def stop(bus: Bus, name: str, timeout: float | None) -> None:
    """Stop a detached container, or a foreground one through machined."""
    from machinectl_py import config

    try:
        container = Container.load(name)
    except NotFoundError:
        if not config.definition_exists(name):
            raise
        # Defined but never started by pymachine (or its start was killed before the
        # record): only its unit can be running.
        stop_service(bus, name, DEFAULT_STOP_TIMEOUT if timeout is None else timeout)
        return
    container.stop(bus, timeout)
    _event("stop", container.record)


def stop_service(bus: Bus, name: str, timeout: float) -> None:
    """StopUnit: SIGTERM to the container's init (KillMode=mixed); SIGKILL to all after `timeout`."""
    from machinectl_py import systemd

    unit = unit_name(name)
    if not systemd.unit_is_active(bus, unit):
        return
    systemd.watch_jobs(bus)
    job = str(systemd.call(bus, "StopUnit", "ss", unit, "replace")[0])
    result = systemd.wait_job(bus, job, int(timeout * USEC))
    if result is None:
        try:
            systemd.call(bus, "KillUnit", "ssi", unit, "all", 9)  # SIGKILL
        except Exception:
            pass  # it ended meanwhile: the job says so
        result = systemd.wait_job(bus, job, systemd.JOB_TIMEOUT_USEC)
    if result not in ("done", None):
        raise PymachineError(f"stopping {unit} failed: job {result}")
    systemd.send(bus, "ResetFailedUnit", "s", unit)


def _stop_foreground(bus: Bus, name: str, timeout: float, stop_signal: int) -> None:
    """A `pymachine run` in another terminal: the stop signal (SIGTERM unless --stop-signal) to
    the container's init, SIGKILL to all of
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


def kill(bus: Bus, name: str, signal: int) -> None:
    """`signal` to the container's init (PID 1 inside)."""
    from machinectl_py import machined

    if not machined.kill_machine(bus, name, signal, who="leader"):
        state.load(name)  # no record: "no such container"
        raise NotFoundError(f"container {name} is not running")
    try:
        _event("kill", state.load(name), signal=str(signal))
    except NotFoundError:
        pass


def remove(bus: Bus, name: str, *, force: bool, volumes: bool) -> None:
    from machinectl_py import config, systemd
    from machinectl_py.paths import container_path

    try:
        container = Container.load(name)
    except NotFoundError:
        # A hand-written definition never started, or a start killed before it wrote the
        # record (a directory without one). Only the unit can run then.
        defined = config.definition_exists(name)
        if (defined or os.path.isdir(container_path(name))) and systemd.unit_is_active(bus, unit_name(name)):
            if not force:
                raise _running(name) from None
            stop_service(bus, name, 0)
        removed = _remove_debris(name)
        if defined:
            from machinectl_py.dropins import remove_dropin

            config.remove_definition(name)
            remove_dropin(name)
        if defined or removed:
            return
        raise
    container.remove(bus, force=force, volumes=volumes)


def ensure_not_running(bus: Bus, name: str) -> None:
    from machinectl_py import systemd

    state_now = systemd.get_unit_property(bus, unit_name(name), "Unit", "ActiveState")
    if state_now in systemd.ACTIVE_STATES:
        raise ConflictError(f"container {name} is already running ({unit_name(name)} is {state_now})",
                            hint=f"stop it first: pymachine stop {name}")


def record_error(name: str, message: str) -> None:
    """The setup process's failure, for `start` to report (see LAST_ERROR)."""
    from machinectl_py.paths import container_path

    try:
        with open(container_path(name, LAST_ERROR), "w") as f:
            f.write(message + "\n")
    except OSError:
        pass


def _removed_error_path(name: str) -> str:
    from machinectl_py.paths import run_path

    return run_path(f"{name}.{LAST_ERROR}")


def keep_error_beyond_removal(name: str) -> None:
    """A `run -d --rm` container that failed to start is removed by its stop hook before
    `start` reads why: its error moves to the run directory (read and removed by `start`,
    cleared at the name's next start, gone at reboot)."""
    from machinectl_py.paths import container_path, run_path

    try:
        with open(container_path(name, LAST_ERROR)) as f:
            text = f.read()
        os.makedirs(run_path(), mode=0o755, exist_ok=True)
        with open(_removed_error_path(name), "w") as f:  # another file system: no rename
            f.write(text)
    except OSError:
        pass


def unread_errors_of_removed(older_than: float) -> list[str]:
    """The last errors of removed `--rm` containers that no `start` read (a `systemctl start`
    of one, say), older than `older_than` seconds: for `gc`."""
    import time

    from machinectl_py.paths import container_path, run_path

    suffix = f".{LAST_ERROR}"
    try:
        entries = [e for e in os.listdir(run_path()) if e.endswith(suffix)]
    except OSError:
        return []
    found = []
    for entry in entries:
        path = run_path(entry)
        try:
            old = time.time() - os.stat(path).st_mtime > older_than
        except FileNotFoundError:
            continue
        if old and not os.path.isdir(container_path(entry.removesuffix(suffix))):
            found.append(path)
    return found


def clear_error(name: str) -> None:
    from machinectl_py.paths import container_path

    for path in (container_path(name, LAST_ERROR), _removed_error_path(name)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def read_last_error(name: str) -> str:
    from machinectl_py.paths import container_path

    for path in (container_path(name, LAST_ERROR), _removed_error_path(name)):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            continue
    return ""


def _running(name: str) -> ConflictError:
    return ConflictError(f"container {name} is running", hint=f"stop it first, or use 'pymachine rm -f {name}'")


def _create_volumes(spec: ContainerSpec, previous: ContainerSpec | None = None) -> ContainerSpec:
    """The spec with its anonymous volumes made (kept from `previous` where it had them)."""
    if not spec.volumes:
        return spec
    from machinectl_py import volumes

    return volumes.create_anonymous(spec, previous)


def _undo_create(spec: ContainerSpec, *, definition: bool) -> None:
    from machinectl_py import config

    try:
        if definition:
            config.remove_definition(spec.name)
        from machinectl_py.dropins import remove_dropin

        remove_dropin(spec.name)
        if spec.volumes:
            from machinectl_py import volumes

            volumes.remove_anonymous(spec)
    except Exception:
        pass  # the original error is the one to report
    state.remove_dir(spec.name)


def _lock_for_removal(bus: Bus, name: str, unit: str, force: bool) -> ContainerLock | None:
    """The container's lock, taken for `rm`. A foreground `run` holds it for its whole life and
    `start` while it starts: a running container is refused (or, with -f, killed), and then its
    owner is waited for, so the directory is never removed under a command still using it.
    None: the directory is gone (a `run --rm` removed it on its way out)."""
    import time

    from machinectl_py import systemd

    deadline = time.monotonic() + REMOVE_WAIT_SECONDS
    while True:
        if systemd.unit_is_active(bus, unit):
            if not force:
                raise _running(name)
            stop(bus, name, 0)
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
    from machinectl_py.paths import container_path

    if not os.path.isdir(container_path(name)):
        return False
    with ContainerLock(name, wait=False):
        state.remove_dir(name)
    return True
