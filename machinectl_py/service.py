"""`pymachine _service NAME`: the setup process of pymachine@NAME.service (its ExecStart=).

The template (units/pymachine@.service) runs it as a Type=forking service. It builds the
container exactly as `pymachine run` does (launch.py: the container's init is held on a pipe
in fresh namespaces), registers the machine with machined (RegisterMachine: the machine
adopts this unit), releases the init, writes its PID to /run/pymachine/NAME.pid (PIDFile=)
and exits. The orphaned init becomes systemd's own child, so systemd supervises it directly:
it records the exit status, applies Restart=, delivers stop signals and waits for them, and
journald tags the unit's output. No pymachine process stays resident. (With Type=notify and
MAINPID= instead, systemd would take the init for an "alien" process it cannot wait for, and
`systemctl stop` would SIGKILL it at once instead of granting the SIGTERM grace period.)

A booted systemd (--boot) is released before the registration, which is made while it boots;
the setup process then waits for its READY=1 (readiness.py) before it exits.

The container comes from the lifecycle layer (lifecycle.Container: a definition never seen
is adopted, an edited one synced), as for `pymachine start`. service_stop.py is ExecStopPost=.
"""

from __future__ import annotations

import os
import sys

from machinectl_py import lifecycle, payload
from machinectl_py.bus import Bus, BusError
from machinectl_py.errors import PymachineError
from machinectl_py.unit_template import unit_name

# The setup process is on the path of every start: no typing, contextlib or socket imports
# (the `socket` module alone pulls in enum, ~5 ms); `_socket` is what it wraps.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from machinectl_py import state
    from machinectl_py.container_init import ChildPlan
    from machinectl_py.readiness import NotifySocket

JOURNAL_STDOUT = "/run/systemd/journal/stdout"


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
        lifecycle.record_error(name, e.message)
        raise
    if code == 0:
        # Exit at once: systemd takes over the container's init (PIDFile=) when we are gone,
        # and a payload that ends before that would be taken for a failed start.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return code


def _setup(name: str) -> int:
    from machinectl_py import dropins, images, state, systemd
    from machinectl_py.launch import (
        HeldInit,
        NetworkSetup,
        boot_userns,
        build_child_plan,
        command_for,
        effective_user,
        environment,
        init_speaks_notify,
        network_binds,
        rootfs_of,
    )
    from machinectl_py.policy import load_policy

    container = lifecycle.Container.load_or_adopt(name, container_id=_adopted_id())
    spec, record = container.sync(), container.record
    lifecycle.clear_error(name)
    policy = load_policy()
    image = images.resolve(record.image_name)  # the fast path: by name, from the runtime index
    if image.id != record.image_id:  # retagged since create: the container keeps its image
        image = images.resolve(record.image_id)
    argv = command_for(spec, image.config)
    env = environment(spec, image.config)
    record.user = effective_user(spec, image.config)  # saved with the running state below
    from machinectl_py import security, userns

    record.userns = id_range = userns.for_container(name, security.userns_mode(spec), record.userns)  # saved below too
    binds = []
    if spec.volumes:
        from machinectl_py import volumes

        binds = volumes.bind_ops(spec, id_range)  # a volume's first container may give it its owner
    binds += network_binds(spec)

    notify = _notify_socket(record.id, id_range) if spec.boot and init_speaks_notify(image) else None
    if spec.boot:
        from machinectl_py import boot

        env = boot.environment(env, record.id, notify=notify is not None)
    notify_path = notify.path if notify else None
    # The guest's console until it is up (readiness.py): its pty's master comes over this pair.
    console_r, console_w = payload.console_socketpair() if notify is not None and not spec.tty else (-1, -1)

    def make_plan() -> ChildPlan:
        return build_child_plan(spec, image, record.dir_path, policy, env, argv, binds=binds, detached=True,
                                userns=id_range, notify_socket=notify_path, console_socket=console_w)

    # The settings table (~1 ms of imports) only when the drop-in is stale, which is rare.
    live = []
    if dropins.is_stale(name):
        from machinectl_py.settings import live_properties

        live = [p.dbus for p in live_properties(spec)]
    if live:
        # Started by systemctl with a definition newer than its drop-in: its limits go to the
        # unit as runtime properties now, before the container exists.
        with Bus.system() as bus:
            systemd.call(bus, "SetUnitProperties", "sba(sv)", unit_name(name), True, live)
    err_fd = journal_stream(name, 3)
    # stdout stays the service's own journal stream (priority info); stderr gets its own at err.
    init = HeldInit(make_plan, 1, err_fd, boot_userns=boot_userns(spec, id_range))
    leader = init.pid
    os.close(err_fd)
    if console_w >= 0:
        os.close(console_w)  # the init's now: EOF once it has sent the master, or failed
    settled = False  # the init was released (systemd waits for it) or is reaped
    released = False  # a booted systemd, released before its registration (below)
    net = NetworkSetup(spec, leader, image.config.exposed_ports)  # while machined registers it
    booting = notify is not None
    try:
        # Forked in the unit's cgroup: the init may finish its setup while machined registers it.
        init.in_scope()
        if booting:
            # A booted systemd is released before machined registers it: the unit becomes active
            # only on its READY=1, a few hundred ms later, so its registration, record and PID
            # file are made while it boots (the bus, machined and the state files are off the
            # boot's path); a registration that fails stops it. Its network comes first.
            try:
                net.join()
            except PymachineError as e:
                early = init.abandon(name)
                payload.reap(leader)
                settled = True
                raise (early or e) from None
            init.release(reap_setup=False)
            released = True
        with Bus.system() as bus:
            unit = unit_name(name)
            try:
                try:
                    _register(bus, name, record.id, leader, rootfs_of(record.dir_path), unit)
                except BaseException:
                    net.settle()
                    raise
                net.join()
            except PymachineError as e:
                if released:
                    _kill(leader)
                early = init.abandon(name)  # the init exits, or has failed already
                payload.reap(leader)
                settled = True
                raise (early or e) from None
            # Record and PID file first: once released, the payload may end at any time.
            record.state, record.pid, record.started = "running", leader, state.now()
            record.exit_code, record.finished, record.unit = None, None, unit
            state.save_state(record)
            write_pid_file(name, leader)
            if not released:
                init.release()
            settled = True
            net.start_proxies(bus, unit)
            from machinectl_py.journal import container_event

            container_event("start", record)
            failure = init.failure()
            if failure:
                code, message = failure
                lifecycle.record_error(name, message)
                print(f"pymachine: {name}: {message}", file=sys.stderr)
                payload.reap(leader)
                record.state, record.exit_code, record.finished, record.pid = "exited", code, state.now(), None
                state.save_state(record)
                return code
        if notify is not None:  # the bus closed: nothing of it on the way from READY=1 to our exit
            return _await_boot(name, record, notify, leader, console_r)
        return 0
    finally:
        net.settle()  # done already, unless the bus failed: nothing is left half made
        init.close()  # before the release, EOF on `go`: the held init exits without running anything
        if not settled:
            if released:
                _kill(leader)  # the bus failed: a guest that is not registered does not stay
            payload.reap(leader)
        if notify is not None:
            notify.close()
        if console_r >= 0:
            os.close(console_r)


def _kill(pid: int) -> None:
    """SIGKILL to a released init that cannot be kept (our child: reaped by the caller)."""
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def _notify_socket(container_id: str, userns: tuple[int, int] | None) -> NotifySocket:
    """--boot with systemd as the init: the socket its READY=1 comes to (readiness.py); with a
    user namespace, the container root's."""
    from machinectl_py.paths import run_path
    from machinectl_py.readiness import NotifySocket

    return NotifySocket(run_path("notify", container_id[:12]), owner=userns[0] if userns else None)


def _await_boot(name: str, record: state.ContainerRecord, notify: NotifySocket, leader: int,
                console_socket: int) -> int:
    """--boot: the unit becomes active (we exit) when the guest says READY=1 (readiness.py);
    until then its console's output goes to our stdout, the unit's journal stream."""
    from machinectl_py import state
    from machinectl_py.readiness import describe_exit, receive_console

    ready, status = notify.wait_ready(leader, receive_console(console_socket))
    if ready:
        return 0
    assert status is not None
    message = f"the container's init ended before it was ready: {describe_exit(status)}"
    lifecycle.record_error(name, message)
    print(f"pymachine: {name}: {message}", file=sys.stderr)
    record.state, record.finished, record.pid = "exited", state.now(), None
    record.exit_code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    state.save_state(record)
    return record.exit_code or 1


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
            holder = machined.machine_unit(bus, name)
            if "exists" not in e.message or holder not in (unit, None) or time.monotonic() > deadline:
                raise PymachineError(f"cannot register machine {name} with systemd-machined: {e.message}"
                                     + (f" (held by {holder})" if holder else "")) from None
            if holder == unit:
                try:
                    machined.unregister_machine(bus, name)
                except BusError:
                    pass
            time.sleep(0.05)


def _machine_unit(bus: Bus, name: str) -> str | None:
    from machinectl_py import machined

    return machined.machine_unit(bus, name)
