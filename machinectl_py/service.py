"""Detached containers: the unit pymachine@NAME.service and its short-lived setup process.

The template (units/pymachine@.service, rendered by `template_text()`) runs
`pymachine _service NAME` as a Type=forking service. That setup process builds the
container exactly as `pymachine run` does (fork_held_init: the container's init is held
on a pipe in fresh namespaces), registers the machine with machined (RegisterMachine:
the machine adopts this unit), releases the init, writes its PID to
/run/pymachine/NAME.pid (PIDFile=) and exits. The orphaned init becomes systemd's own
child, so systemd supervises it directly: it records the exit status, applies Restart=,
delivers stop signals and waits for them, and journald tags the unit's output. No
pymachine process stays resident. (With Type=notify and MAINPID= instead, systemd
would take the init for an "alien" process it cannot wait for, and `systemctl stop`
would SIGKILL it at once instead of granting the SIGTERM grace period.)

`pymachine _service-stopped NAME` (ExecStopPost=) records the exit in container.json.
"""

from __future__ import annotations

import os
import sys

from machinectl_py import payload, systemd
from machinectl_py.bus import Bus, BusError
from machinectl_py.errors import ConflictError, NotFoundError, PymachineError

# The setup process is on the path of every start: no typing, contextlib or socket imports
# (the `socket` module alone pulls in enum, ~5 ms); `_socket` is what it wraps.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from machinectl_py import state
    from machinectl_py.container_init import ChildPlan
    from machinectl_py.spec import ContainerSpec, Limits

SYSTEMD_DEST = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
TEMPLATE = "pymachine@.service"
UNIT_DIR = "/etc/systemd/system"
DROPIN = "50-pymachine.conf"
# The generator's, at every boot and reload: the Delegate= of the cgroup layout the host has
# now. It sorts after DROPIN, so it wins over the one `create` wrote in /etc, which names the
# layout the host had then (a distribution upgrade may have moved it from hybrid to unified).
DELEGATE_DROPIN = "60-pymachine-delegate.conf"
JOURNAL_STDOUT = "/run/systemd/journal/stdout"
UINT64_MAX = 2**64 - 1
JOB_TIMEOUT_USEC = systemd.JOB_TIMEOUT_USEC
LAST_ERROR = "last-error"
# Units whose state means "the container runs (or is about to)".
ACTIVE_STATES = ("active", "activating", "reloading", "deactivating")


def unit_name(name: str) -> str:
    # Container names are [a-zA-Z0-9-_.]: all valid in a unit's instance string as they are.
    return f"pymachine@{name}.service"


# -- the template ---------------------------------------------------------------------------


def template_text(executable: str = "/usr/bin/pymachine") -> str:
    """The shipped units/pymachine@.service, with ExecStart= pointing at `executable`."""
    shipped = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "units", TEMPLATE)
    try:
        with open(shipped) as f:
            text = f.read()
    except FileNotFoundError:  # a wheel ships no units/ directory
        text = _TEMPLATE_FALLBACK
    return text.replace("/usr/bin/pymachine ", f"{executable} ")


def this_executable() -> str:
    """How systemd should run this pymachine: this interpreter, isolated (-I), on the
    launcher installed beside it (bin/pymachine); `-m machinectl_py` when there is none
    (a checkout), which costs runpy's imports (~7 ms) on every start and stop."""
    launcher = os.path.join(os.path.dirname(sys.executable), "pymachine")
    if os.path.isfile(launcher):
        return f"{sys.executable} -I {launcher}"
    return f"{sys.executable} -I -m machinectl_py"


INSTALLED_MARK = "# Installed by pymachine: `pymachine create` and `start` keep ExecStart= pointing at themselves."


def ensure_template(bus: Bus) -> None:
    """Make sure systemd has a pymachine@.service template that runs this pymachine.

    A distro package ships it in /usr/lib/systemd/system: that one is left alone. A pip
    install gets it in /etc/systemd/system on first use, marked as ours, and rewritten when
    its ExecStart= points at another pymachine (another venv, an older install)."""
    path = os.path.join(UNIT_DIR, TEMPLATE)
    wanted = INSTALLED_MARK + "\n" + template_text(this_executable())
    try:
        with open(path) as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    if current is not None:
        # Ours: marked, or (written before the mark existed) the shipped file's first line.
        ours = current.startswith((INSTALLED_MARK, "# A detached pymachine container"))
        if not ours or current == wanted:
            return  # the admin's own file, or ours and up to date
    else:
        try:
            manager_call(bus, "GetUnitFileState", "s", TEMPLATE)
            return  # shipped by a package elsewhere (/usr/lib/systemd/system)
        except BusError as e:
            if e.name not in ("org.freedesktop.systemd1.NoSuchUnit", "org.freedesktop.DBus.Error.FileNotFound"):
                raise
    _write_atomic(path, wanted)
    manager_call(bus, "Reload")


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def dropin_dir(name: str) -> str:
    return os.path.join(UNIT_DIR, f"{unit_name(name)}.d")


def dropin_text(name: str, container_id: str, image_name: str, spec: ContainerSpec,
                device_allow: tuple[tuple[str, str], ...] = (), unified_host: bool = True) -> str:
    """Per-container unit settings: restart policy, limits, devices and docker's journal fields.

    Limits reach the kernel through systemd as unit properties (MemoryMax=, CPUQuota=,
    TasksMax=); systemd applies them when it starts the unit, before ExecStart= runs. On a
    host with v1 hierarchies the unit delegates only the controllers its settings use, as a
    `run` scope does (systemd.delegate_properties); an empty Delegate= first drops the
    template's "every controller"."""
    fields = (f"CONTAINER_ID={container_id[:12]} CONTAINER_ID_FULL={container_id} "
              f'"IMAGE_NAME={image_name}"')
    lines = [f"# Written by pymachine for container {name}; `pymachine rm {name}` removes it.",
             "[Service]", f"Restart={spec.restart}", f"LogExtraFields={fields}"]
    limits = spec.limits
    if limits.memory_max is not None:
        lines.append(f"MemoryMax={limits.memory_max}")
    if limits.cpu_quota_usec is not None:
        lines.append(f"CPUQuota={limits.cpu_quota_usec / 10_000:g}%")
    if limits.tasks_max is not None:
        lines.append(f"TasksMax={limits.tasks_max}")
    lines += [f"DeviceAllow={path} {access}" for path, access in device_allow]
    if not unified_host:
        lines += delegate_lines(limits, unified_host=False)
    return "\n".join(lines) + "\n"


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

    path = os.path.join(dropin_dir(name), DROPIN)
    text = dropin_text(name, container_id, image_name, spec, load_policy().device_allow,
                       unified_host=unified_cgroup_host())
    try:
        with open(path) as f:
            if f.read() == text:
                os.utime(path)  # up to date with the definition (see definition_is_newer)
                return
    except FileNotFoundError:
        pass
    _write_atomic(path, text)
    reload_if_needed(bus, name)


def reload_if_needed(bus: Bus, name: str) -> None:
    if unit_property(bus, unit_name(name), "Unit", "NeedDaemonReload"):
        manager_call(bus, "Reload")


def remove_dropin(name: str) -> None:
    import shutil

    shutil.rmtree(dropin_dir(name), ignore_errors=True)
    # Runtime properties that `systemctl set-property --runtime` may have left.
    shutil.rmtree(f"/run/systemd/system.control/{unit_name(name)}.d", ignore_errors=True)


# -- unit control over D-Bus ----------------------------------------------------------------------


def manager_call(bus: Bus, method: str, signature: str = "", *args: Any) -> list[Any]:
    return bus.call(SYSTEMD_DEST, SYSTEMD_PATH, MANAGER, method, signature, *args)


def manager_send(bus: Bus, method: str, signature: str = "", *args: Any) -> None:
    """A Manager call not waited for (its reply and errors are dropped); see Bus.send."""
    bus.send(SYSTEMD_DEST, SYSTEMD_PATH, MANAGER, method, signature, *args)


# One implementation of these lookups, in the systemd layer; the names here read better at
# the call sites of the unit's own code.
unit_object = systemd.unit_path
unit_property = systemd.get_unit_property


def unit_properties(bus: Bus, unit: str, interface: str = "Unit") -> dict[str, Any]:
    """All properties of a loaded unit's interface; {} if systemd has not loaded it."""
    path = unit_object(bus, unit)
    if path is None:
        return {}
    try:
        props: dict[str, Any] = bus.call(SYSTEMD_DEST, path, "org.freedesktop.DBus.Properties", "GetAll", "s",
                                         f"org.freedesktop.systemd1.{interface}")[0]
    except BusError:
        return {}
    return props


# The job helpers live in the systemd layer; these names read better at the unit's call sites.
watch_jobs = systemd.watch_jobs
wait_job = systemd.wait_job
run_job = systemd.run_job


# -- the setup process (ExecStart=) -----------------------------------------------------------


def journal_stream(identifier: str, priority: int) -> int:
    """A stream to journald (the protocol systemd uses for StandardOutput=journal).

    journald attributes the stream to the unit of the process that connects, this one."""
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.connect(JOURNAL_STDOUT)
        s.shutdown(_socket.SHUT_RD)
        # identifier, unit id (empty: from our cgroup), priority, level prefix, syslog, kmsg, console
        s.sendall(f"{identifier}\n\n{priority}\n0\n0\n0\n0\n".encode())
        fd: int = s.detach()
        return fd
    except BaseException:
        s.close()
        raise


def write_pid_file(name: str, pid: int) -> None:
    """PIDFile= of the unit, written atomically (systemd reads it once we exit)."""
    from machinectl_py.paths import run_path

    os.makedirs(run_path(), mode=0o755, exist_ok=True)
    path = run_path(f"{name}.pid")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


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


def load_container(name: str) -> tuple[ContainerSpec, state.ContainerRecord]:
    """The definition (TOML, authoritative) and the container's record.

    `pymachine start` stores the parsed definition in the record, so the TOML is parsed
    here only when it changed after that (an edit followed by `systemctl start`)."""
    from machinectl_py import state
    from machinectl_py.paths import container_path

    try:
        record = state.load(name)
    except NotFoundError:
        return _adopt(name)
    if definition_is_newer(name, container_path(name, state.RECORD)):
        from machinectl_py import config

        spec = config.load_definition(name)
        if spec.volumes:
            from machinectl_py import volumes

            spec = volumes.create_anonymous(spec, record.spec)
        return spec, record
    return record.spec, record


def _adopt(name: str) -> tuple[ContainerSpec, state.ContainerRecord]:
    """`systemctl start pymachine@NAME` of a hand-written definition pymachine has never seen:
    make its state here, with the id pymachine-generator put in its drop-in (Restart= and
    CONTAINER_ID come from that drop-in, written at boot or daemon-reload)."""
    from machinectl_py import config, images, state

    if not config.definition_exists(name):
        raise NotFoundError(f"no such container: {name} (no definition {config.definition_path(name)})")
    spec = config.load_definition(name)
    if spec.volumes:
        from machinectl_py import volumes

        spec = volumes.create_anonymous(spec)
    image = images.resolve(spec.image)
    state.claim(name)
    try:
        record = state.ContainerRecord(name=name, id=_adopted_id(), image_name=image.name, image_id=image.id,
                                       spec=spec, created=state.now(), unit=unit_name(name))
        state.save(record)
    finally:
        state.release_claim(name)
    return spec, record


def _adopted_id() -> str:
    """The id pymachine-generator gave the definition (its drop-in passes it as
    $PYMACHINE_CONTAINER_ID and tags the journal with it), else a new one."""
    given = os.environ.get("PYMACHINE_CONTAINER_ID", "")
    if len(given) == 64 and all(c in "0123456789abcdef" for c in given):
        return given
    return os.urandom(32).hex()


def service_main(argv: list[str]) -> int:
    """`pymachine _service NAME`: ExecStart= of pymachine@NAME.service."""
    if len(argv) != 1:
        print("usage: pymachine _service NAME (run by pymachine@NAME.service)", file=sys.stderr)
        return 2
    name = argv[0]
    try:
        code = _setup(name)
    except PymachineError as e:
        _record_error(name, e.message)
        raise
    if code == 0:
        # Exit at once: systemd takes over the container's init (PIDFile=) when we are gone,
        # and a payload that ends before that would be taken for a failed start.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return code


def _record_error(name: str, message: str) -> None:
    from machinectl_py.paths import container_path

    try:
        with open(container_path(name, LAST_ERROR), "w") as f:
            f.write(message + "\n")
    except OSError:
        pass


def _setup(name: str) -> int:
    from machinectl_py import images, state
    from machinectl_py.container_init import IN_SCOPE, RUN
    from machinectl_py.launch import (
        abandon_held_init,
        build_child_plan,
        command_for,
        effective_user,
        environment,
        fork_held_init,
        rootfs_of,
        tell_init,
    )
    from machinectl_py.policy import load_policy

    spec, record = load_container(name)
    try:
        os.unlink(os.path.join(record.dir_path, LAST_ERROR))
    except FileNotFoundError:
        pass
    policy = load_policy()
    image = images.resolve(record.image_name)  # the fast path: by name, from the runtime index
    if image.id != record.image_id:  # retagged since create: the container keeps its image
        image = images.resolve(record.image_id)
    argv = command_for(spec, image.config)
    env = environment(spec, image.config)
    record.user = effective_user(spec, image.config)  # saved with the running state below
    binds = []
    if spec.volumes:
        from machinectl_py import volumes

        binds = volumes.bind_ops(spec)

    def make_plan() -> ChildPlan:
        return build_child_plan(spec, image, record.dir_path, policy, env, argv, binds=binds, detached=True)

    dropin = os.path.join(dropin_dir(name), DROPIN)
    if (spec.limits.memory_max or spec.limits.cpu_quota_usec or spec.limits.tasks_max) and \
            (not os.path.exists(dropin) or definition_is_newer(name, dropin)):
        # Started by systemctl with a definition newer than its drop-in: its limits go to the
        # unit as runtime properties now, before the container exists.
        with Bus.system() as bus:
            from machinectl_py.systemd import limit_properties

            manager_call(bus, "SetUnitProperties", "sba(sv)", unit_name(name), True, limit_properties(spec.limits))
    err_fd = journal_stream(name, 3)
    # stdout stays the service's own journal stream (priority info); stderr gets its own at err.
    leader, go_w, status_r = fork_held_init(make_plan, 1, err_fd)
    os.close(err_fd)
    released = False
    try:
        with Bus.system() as bus:
            unit = unit_name(name)
            # Forked in the unit's cgroup: the init may finish its setup while machined registers it.
            tell_init(go_w, IN_SCOPE)
            try:
                _register(bus, name, record.id, leader, rootfs_of(record.dir_path), unit)
            except PymachineError as e:
                released = True  # `go` is closed below: the init exits, or has failed already
                early = abandon_held_init(name, go_w, status_r)
                payload.reap(leader)
                raise (early or e) from None
            # Record and PID file first: once released, the payload may end at any time.
            record.state, record.pid, record.started = "running", leader, state.now()
            record.exit_code, record.finished, record.unit = None, None, unit
            state.save(record)
            write_pid_file(name, leader)
            tell_init(go_w, RUN)
            released = True
            os.close(go_w)
            failure = payload.read_status(status_r)
            if failure:
                code, message = failure
                _record_error(name, message)
                print(f"pymachine: {name}: {message}", file=sys.stderr)
                payload.reap(leader)
                record.state, record.exit_code, record.finished, record.pid = "exited", code, state.now(), None
                state.save(record)
                return code
            return 0
    finally:
        if not released:
            os.close(go_w)  # EOF on `go`: the held init exits without running anything
            payload.reap(leader)
        os.close(status_r)


def _register(bus: Bus, name: str, container_id: str, leader: int, root: str, unit: str) -> None:
    """RegisterMachine. On a restart (Restart=), machined may still hold the machine of this
    unit's previous run, being closed (the unit never went inactive): unregister it, or wait
    for machined to finish closing it, for a few seconds."""
    import time

    from machinectl_py import machined

    deadline = time.monotonic() + 5
    while True:
        try:
            machined.register_machine(bus, name, container_id, leader, root)
            return
        except BusError as e:
            holder = _machine_unit(bus, name)
            if "exists" not in e.message or holder not in (unit, None) or time.monotonic() > deadline:
                raise PymachineError(f"cannot register machine {name} with systemd-machined: {e.message}"
                                     + (f" (held by {holder})" if holder else "")) from None
            if holder == unit:
                try:
                    bus.call(*machined.MACHINED, "UnregisterMachine", "s", name)
                except BusError:
                    pass
            time.sleep(0.05)


def _machine_unit(bus: Bus, name: str) -> str | None:
    from machinectl_py import machined

    try:
        path = str(bus.call(*machined.MACHINED, "GetMachine", "s", name)[0])
        return str(bus.call(machined.MACHINED[0], path, "org.freedesktop.DBus.Properties", "Get", "ss",
                            "org.freedesktop.machine1.Machine", "Unit")[0])
    except BusError:
        return None


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


def stopped_main(argv: list[str]) -> int:
    """`pymachine _service-stopped NAME`: ExecStopPost=, records how the container ended."""
    from machinectl_py import state

    if len(argv) != 1:
        return 2
    name = argv[0]
    try:
        record = state.load(name)
    except NotFoundError:
        return 0  # removed while it ran
    from machinectl_py.paths import run_path

    try:
        os.unlink(run_path(f"{name}.pid"))
    except FileNotFoundError:
        pass
    code = exit_code_from_env(os.environ)
    if code is None:
        code = _exit_code_from_unit(name)
    if code is None:
        code = record.exit_code  # the setup process failed and said how (it is no main process)
    record.state = "exited"
    record.exit_code = code
    record.finished = state.now()
    record.pid = None
    state.save(record)
    if record.spec.remove:  # run -d --rm
        remove_container(name, record)
    return 0


def _exit_code_from_unit(name: str) -> int | None:
    """ExecMainCode/ExecMainStatus of the unit (CLD_EXITED=1, CLD_KILLED=2, CLD_DUMPED=3)."""
    try:
        with Bus.system() as bus:
            props = unit_properties(bus, unit_name(name), "Service")
    except BusError:
        return None
    code, status = props.get("ExecMainCode"), int(props.get("ExecMainStatus") or 0)
    if code == 1:
        return status
    if code in (2, 3):
        return 128 + status
    return None


def remove_container(name: str, record: Any) -> None:
    """Everything of a stopped container: definition, drop-in, anonymous volumes, state dir."""
    from machinectl_py import config, state, volumes

    config.remove_definition(name)
    remove_dropin(name)
    volumes.remove_anonymous(record.spec)
    state.remove_dir(name)


def is_active(bus: Bus, name: str) -> bool:
    return unit_property(bus, unit_name(name), "Unit", "ActiveState") in ACTIVE_STATES


def ensure_not_running(bus: Bus, name: str) -> None:
    state_now = unit_property(bus, unit_name(name), "Unit", "ActiveState")
    if state_now in ACTIVE_STATES:
        raise ConflictError(f"container {name} is already running ({unit_name(name)} is {state_now})",
                            hint=f"stop it first: pymachine stop {name}")


_TEMPLATE_FALLBACK = """\
[Unit]
Description=pymachine container %i
PartOf=machines.target
Before=machines.target
After=network.target systemd-machined.service
Wants=systemd-machined.service
RequiresMountsFor=/var/lib/pymachine
# The exit status is recorded in container.json by ExecStopPost=: a failed unit need not linger.
CollectMode=inactive-or-failed

[Service]
Type=forking
PIDFile=/run/pymachine/%i.pid
ExecStart=/usr/bin/pymachine _service %i
ExecStopPost=/usr/bin/pymachine _service-stopped %i
KillMode=mixed
Delegate=yes
Slice=machine.slice
TimeoutStartSec=90
TimeoutStopSec=10
StandardInput=null
StandardOutput=journal
StandardError=journal
SyslogIdentifier=%i
LogExtraFields=CONTAINER_NAME=%i
LogExtraFields=CONTAINER_TAG=%i
DevicePolicy=closed
DeviceAllow=/dev/net/tun rwm
DeviceAllow=char-pts rw

[Install]
WantedBy=machines.target
"""
