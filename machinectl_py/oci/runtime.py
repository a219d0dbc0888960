"""The OCI runtime's verbs, on pymachine's launch kit: the same held init (launch.HeldInit,
container_init) as `pymachine run`, in a transient scope registered with machined.

Why a scope and not a service: containerd's shim learns a container's exit by reaping its init
(the shim is a child subreaper, and runc's init is reparented to it when runc exits). A service's
main process is systemd's child; a scope adopts the process where it is, so the init stays the
shim's, as with runc, while its cgroup, limits and machine are systemd's.
"""

from __future__ import annotations

# _signal: `signal` without its enum wrappers (~3 ms of imports); see container_init.
import _signal as signal
import os
import time

from machinectl_py import journal
from machinectl_py.errors import EXIT_CANNOT_INVOKE, BusError, PymachineError
from machinectl_py.oci import store
from machinectl_py.oci.store import status_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from machinectl_py import systemd
    from machinectl_py.launch import HeldInit
    from machinectl_py.oci import config as oci_config

STOP_WAIT_SECONDS = 10
START_WAIT_SECONDS = 10


class OciError(PymachineError):
    pass


# -- create / start ------------------------------------------------------------------------------


def _fields(st: dict[str, Any]) -> bytes:
    return journal.container_fields(st["machine"], st["machine_id"], f"oci:{st['bundle']}")


def log_event(st: dict[str, Any], what: str) -> None:
    """A lifecycle line in the journal with docker's fields: `journalctl CONTAINER_NAME=ID`."""
    writer = journal.JournalWriter(_fields(st))
    writer.send(f"{what} {st['id']} ({st['unit']})".encode(), 6)
    writer.close()


def create(root: str, container_id: str, bundle: str, pid_file: str | None, console_socket: str | None) -> None:
    from machinectl_py.oci import config as oci_config

    try:
        oci_config.check_id(container_id)
    except oci_config.OciConfigError as e:
        raise OciError(str(e)) from None
    bundle = os.path.abspath(bundle)
    cfg = read_config(bundle, container_id)
    if cfg.terminal and not console_socket:
        raise OciError("cannot allocate tty if runc will detach without setting console socket")
    lock = store.claim(root, container_id)
    try:
        _create_locked(root, container_id, bundle, cfg, pid_file, console_socket)
    except BaseException:
        store.remove_from_index(oci_config.machine_name(container_id), root, container_id)
        store.remove(root, container_id)
        raise
    finally:
        os.close(lock)


def read_config(bundle: str, container_id: str) -> oci_config.OciConfig:
    from machinectl_py.oci import config as oci_config
    from machinectl_py.state import load_json

    try:
        with open(os.path.join(bundle, "config.json")) as f:
            raw = load_json(f.read())
    except FileNotFoundError:
        raise OciError(f"JSON specification file {os.path.join(bundle, 'config.json')} not found") from None
    except ValueError as e:
        raise OciError(f"config.json: {e}") from None
    try:
        cfg = oci_config.parse(raw, bundle, container_id)
    except oci_config.OciConfigError as e:
        raise OciError(str(e)) from None
    if os.path.islink(cfg.rootfs) or not os.path.isdir(cfg.rootfs):
        raise OciError(f"rootfs ({cfg.rootfs}) is not a directory (a symlink is refused, as by runc)")
    return cfg


def _create_locked(root: str, container_id: str, bundle: str, cfg: oci_config.OciConfig, pid_file: str | None,
                   console_socket: str | None) -> None:
    from machinectl_py import payload
    from machinectl_py.container_init import ChildPlan
    from machinectl_py.launch import HeldInit, _cgroup_layout
    from machinectl_py.oci.config import machine_name

    cdir = store.container_dir(root, container_id)
    fifo = os.path.join(cdir, store.FIFO)
    os.mkfifo(fifo, 0o600)
    if cfg.userns is not None:
        os.chown(fifo, cfg.userns[0], cfg.userns[0])  # the init opens it as the namespace's root, as runc's
    start_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
    os.set_inheritable(start_fd, True)
    console = _connect(console_socket) if cfg.terminal and console_socket else -1
    name = machine_name(container_id)
    program = _seccomp_program(cdir, cfg)
    child = ChildPlan(
        container_dir=bundle, rootfs=cfg.rootfs, overlay=None, ops=cfg.ops, cgroup_layout=_cgroup_layout(),
        hostname=cfg.hostname or ("" if any(k == "uts" for k, _ in cfg.join_namespaces) else name),
        private_network=cfg.private_network, argv=cfg.args, env=cfg.env,
        workdir=cfg.cwd, user=cfg.user, groups=cfg.groups, capability_mask=cfg.capability_mask,
        stdin_devnull=False, detached=True,
        tty=cfg.terminal, read_only_root=cfg.readonly_root, rlimits=cfg.rlimits, join_namespaces=cfg.join_namespaces,
        start_fd=start_fd, no_new_privileges=cfg.no_new_privs, seccomp=program, sysctls=cfg.sysctls,
        userns=cfg.userns)
    init = HeldInit(lambda: child, console if console >= 0 else 1, console if console >= 0 else 2)
    os.close(start_fd)
    if console >= 0:
        os.close(console)
    st: dict[str, Any] = {
        "id": container_id, "pid": init.pid, "bundle": bundle, "rootfs": cfg.rootfs,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "annotations": cfg.annotations,
        "unit": cfg.unit, "slice": cfg.slice, "machine": name, "machine_id": os.urandom(16).hex(), "starttime": "",
        "args": list(cfg.args), "no_new_privs": cfg.no_new_privs, "rlimits": [list(r) for r in cfg.rlimits],
        "hooks": _hooks_json(cfg),
    }
    try:
        proc = store.start_time(init.pid)
        st["starttime"] = proc[1] if proc else ""
        if cfg.oom_score_adj is not None:
            with open(f"/proc/{init.pid}/oom_score_adj", "w") as f:
                f.write(str(cfg.oom_score_adj))
        _make_machine(cfg, st, init)
        init.release()
        failure = init.failure()  # EOF once the init waits on the start FIFO
        if failure is not None:
            raise OciError(failure[1])
        for kind in ("prestart", "createRuntime", "createContainer"):
            run_hooks(st, kind, "creating")
        store.save(root, container_id, st)
        store.add_to_index(name, root, container_id)
        if pid_file:
            store.write_pid_file(pid_file, init.pid)
    except BaseException:
        init.close()
        _kill(init.pid)
        payload.reap(init.pid)
        _end_unit(st)
        raise
    log_event(st, "created")


def _seccomp_program(cdir: str, cfg: oci_config.OciConfig) -> bytes:
    """linux.seccomp compiled (seccomp_compile: libseccomp, cached by the profile's hash), and
    kept beside the state for `exec`, whose processes get the container's filter too."""
    if cfg.seccomp is None:
        return b""
    from machinectl_py import seccomp_compile

    try:
        program = seccomp_compile.oci_program(cfg.seccomp)
    except PymachineError as e:
        raise OciError(f"config.json: linux.seccomp: {e.message}") from None
    with open(os.path.join(cdir, store.SECCOMP), "wb") as f:
        f.write(program)
    return program


# -- hooks ---------------------------------------------------------------------------------------


def _hooks_json(cfg: oci_config.OciConfig) -> dict[str, list[dict[str, Any]]]:
    return {kind: [{"path": h.path, "args": list(h.args), "env": list(h.env), "timeout": h.timeout} for h in hooks]
            for kind, hooks in cfg.hooks.items() if hooks}


# Hooks run in the container's namespaces, as runc runs them from its init: createContainer
# before the pivot (its path and files the runtime's tree, as runc's are), so here in all of
# the container's namespaces but the mount namespace; startContainer after the pivot (its path
# resolved in the container's root), so in its mount namespace too. The others run in
# pymachine's own (the runtime namespace).
IN_CONTAINER = {"createContainer": False, "startContainer": True}


def run_hooks(st: dict[str, Any], kind: str, status: str, *, warn_only: bool = False) -> None:
    """The config's hooks of `kind`, one after the other, each with the OCI state on its stdin.
    A failure (non-zero exit, timeout, no such program) fails the step, or with `warn_only`
    (poststart, poststop: the runtime spec's "log a warning") is printed and the rest run."""
    import sys

    for hook in st.get("hooks", {}).get(kind, []):
        try:
            _run_hook(st, kind, status, hook)
        except OciError as e:
            if not warn_only:
                raise
            print(f"pymachine-runc: warning: {e.message}", file=sys.stderr)


def _run_hook(st: dict[str, Any], kind: str, status: str, hook: dict[str, Any]) -> None:
    import subprocess

    from machinectl_py.state import dump_json

    state = {"ociVersion": store.OCI_VERSION, "id": st["id"], "status": status, "bundle": st["bundle"]}
    if status != "stopped":
        state["pid"] = st["pid"]  # runc omits a zero pid
    if st.get("annotations"):
        state["annotations"] = st["annotations"]
    from machinectl_py import syscalls as sc

    pidfd = sc.pidfd_open(int(st["pid"])) if kind in IN_CONTAINER else -1
    enter = _container_namespaces(pidfd, IN_CONTAINER[kind]) if pidfd >= 0 else None
    what = f"{kind} hook {hook['path']}"
    try:
        r = subprocess.run(hook["args"], executable=hook["path"], input=dump_json(state).encode(),
                           env=dict(e.partition("=")[::2] for e in hook["env"]), capture_output=True,
                           timeout=hook.get("timeout"), preexec_fn=enter,
                           cwd=None if kind == "startContainer" else st["bundle"])
    except subprocess.TimeoutExpired:
        raise OciError(f"{what} did not finish in {hook['timeout']} s") from None
    except (OSError, subprocess.SubprocessError) as e:
        raise OciError(f"{what}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    if r.returncode != 0:
        said = r.stderr.decode(errors="replace").strip().splitlines()
        raise OciError(f"{what} failed with exit status {r.returncode}" + (f": {said[-1]}" if said else ""))


def _container_namespaces(pidfd: int, mount: bool) -> Any:
    """A preexec function: the hook joins the container's namespaces (its user namespace last,
    if it has one); with `mount`, its root too, so its path and its files are the container's."""
    from machinectl_py import idmap
    from machinectl_py import syscalls as sc

    def enter() -> None:
        flags = sc.CLONE_NEWIPC | sc.CLONE_NEWUTS | sc.CLONE_NEWNET | sc.CLONE_NEWCGROUP
        sc.setns(pidfd, flags | (sc.CLONE_NEWNS if mount else 0))
        idmap.join(pidfd)
        if mount:
            os.chdir("/")

    return enter


def _connect(path: str) -> int:
    """The console socket (containerd's): the init sends its pty's master through it."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise OciError(f"cannot connect to the console socket {path}: {e.strerror}") from None
    fd = sock.detach()
    os.set_inheritable(fd, True)
    return fd


def scope_properties(cfg: oci_config.OciConfig, pid: int) -> list[systemd.Property]:
    """The scope of an OCI container: in the slice of cgroupsPath, delegated as machined makes
    every machine's scope (on a host with v1 hierarchies, with the controllers its limits use)."""
    from machinectl_py import systemd
    from machinectl_py.mounts import unified_cgroup_host

    props: list[systemd.Property] = [
        ("Description", ("s", f"pymachine OCI container {cfg.unit}")),
        ("Slice", ("s", cfg.slice)),
        ("PIDs", ("au", [pid])),
        ("CollectMode", ("s", "inactive-or-failed")),
    ]
    if unified_cgroup_host():
        props.append(("Delegate", ("b", True)))
    else:
        uses_cpu = any(name.startswith("CPU") for name, _ in cfg.properties)
        controllers = [*systemd.V1_DELEGATED_CONTROLLERS, *(["cpu"] if uses_cpu else [])]
        props.append(("DelegateControllers", ("as", controllers)))
    if not any(name == "TasksMax" for name, _ in cfg.properties):
        props.append(("TasksMax", ("t", systemd.DEFAULT_TASKS_MAX)))
    return props + list(cfg.properties)


def _make_machine(cfg: oci_config.OciConfig, st: dict[str, Any], init: HeldInit) -> None:
    from machinectl_py import machined, systemd
    from machinectl_py.bus import Bus
    from machinectl_py.launch import in_unit_cgroup

    with Bus.systemd() as pid1:
        try:
            job = systemd.start_scope(pid1, cfg.unit, scope_properties(cfg, init.pid))
            systemd.wait_scope_started(pid1, cfg.unit, job)
        except BusError as e:
            raise OciError(f"cannot create the container's scope {cfg.unit}: {e.message}") from None
    if not in_unit_cgroup(init.pid, cfg.unit):
        failure = init.abandon(st["id"])
        raise failure or OciError(f"the container's init never reached {cfg.unit}")
    init.in_scope()
    with Bus.system() as bus:
        try:
            machined.register_machine(bus, st["machine"], st["machine_id"], init.pid, cfg.rootfs)
        except BusError as e:
            raise OciError(f"cannot register machine {st['machine']} with systemd-machined: {e.message}") from None


def start(root: str, container_id: str) -> None:
    lock = store.lock(root, container_id)
    try:
        st = store.load(root, container_id)
        status = status_of(root, st)
        if status != "created":
            raise OciError(f"cannot start a container that has {'stopped' if status == 'stopped' else 'started'}"
                           if status != "running" else "cannot start an already running container")
        fifo = os.path.join(store.container_dir(root, container_id), store.FIFO)
        try:
            run_hooks(st, "startContainer", "created")
        except OciError:
            _kill(int(st["pid"]))  # the runtime spec: a failed startContainer hook stops the container
            raise
        _release(fifo)
        os.unlink(fifo)
    finally:
        os.close(lock)
    log_event(st, "started")
    run_hooks(st, "poststart", "running", warn_only=True)


def _release(fifo: str) -> None:
    """Open the start FIFO for reading: the init, blocked opening it for writing, goes on; its
    byte says it did."""
    import select

    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        deadline = time.monotonic() + START_WAIT_SECONDS
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0] and os.read(fd, 1):
                return
        raise OciError("the container's init did not take the start")
    finally:
        os.close(fd)


# -- kill / delete / pause -----------------------------------------------------------------------


def parse_signal(text: str) -> int:
    if text.isdigit():
        number = int(text)
        if 0 < number < 65:
            return number
    else:
        import signal as signals  # the enum of names

        name = text.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name in signals.Signals.__members__:
            return int(signals.Signals[name])
    raise OciError(f"unknown signal {text!r}")


def kill(root: str, container_id: str, sig: int, kill_all: bool) -> None:
    from machinectl_py import systemd
    from machinectl_py.bus import Bus

    st = store.load(root, container_id)
    status = status_of(root, st)
    if kill_all:
        with Bus.systemd() as pid1:
            try:
                systemd.kill_unit(pid1, st["unit"], sig)
            except BusError as e:
                if status != "stopped":
                    raise OciError(f"cannot signal {st['unit']}: {e.message}") from None
        return
    if status == "stopped":
        raise OciError("container not running")
    os.kill(int(st["pid"]), sig)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def delete(root: str, container_id: str, force: bool) -> None:
    try:
        lock = store.lock(root, container_id)
    except store.StoreError:
        if force:
            return  # runc: delete --force of an unknown container is no error
        raise
    try:
        st = store.load(root, container_id)
        status = status_of(root, st)
        if status not in ("stopped", "created") and not force:
            raise OciError(f"cannot delete container {container_id} that is not stopped: {status}")
        if status != "stopped":
            if status == "paused":
                _thaw(os.path.join(store.container_dir(root, container_id), RESUME_FIFO))
            from machinectl_py import systemd
            from machinectl_py.bus import Bus

            with Bus.systemd() as pid1:
                _quiet(lambda: systemd.kill_unit(pid1, st["unit"], signal.SIGKILL))
            _kill(int(st["pid"]))
            _wait_stopped(root, st)
        _end_unit(st)
        run_hooks(st, "poststop", "stopped", warn_only=True)
        store.remove_from_index(st["machine"], root, container_id)
        store.remove(root, container_id)
    finally:
        os.close(lock)
    log_event(st, "deleted")


def _wait_stopped(root: str, st: dict[str, Any]) -> None:
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while status_of(root, st) != "stopped" and time.monotonic() < deadline:
        time.sleep(0.01)


def _quiet(action: Any) -> None:
    try:
        action()
    except BusError:
        pass


def _gone(st: dict[str, Any]) -> bool:
    """Whether systemd and machined are done with the container already (the usual case when
    the engine deletes an exited one): its scope's cgroup and machined's record of the machine
    are gone. Then `delete` needs no bus connection (two fewer round trips and handshakes).
    False when in doubt (a cgroup layout not recognized)."""
    if os.path.exists(f"/run/systemd/machines/{st['machine']}"):
        return False
    slice_ = st.get("slice") or "machine.slice"
    parts = slice_.removesuffix(".slice").split("-")
    slice_path = "/".join("-".join(parts[:i + 1]) + ".slice" for i in range(len(parts))) if slice_ != "-.slice" else ""
    known = False
    for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"):
        if os.path.isdir(f"{base}/{slice_path}"):
            known = True
            if os.path.exists(f"{base}/{slice_path}/{st['unit']}"):
                return False
    return known


def _end_unit(st: dict[str, Any]) -> None:
    """The machine and its scope, gone: nothing is left of the container in systemd."""
    from machinectl_py import machined, systemd
    from machinectl_py.bus import Bus

    if not st.get("unit") or _gone(st):
        return
    with Bus.system() as bus:
        _quiet(lambda: machined.terminate_machine(bus, st["machine"]))
    with Bus.systemd() as pid1:
        _quiet(lambda: systemd.run_job(pid1, "StopUnit", st["unit"], timeout_usec=STOP_WAIT_SECONDS * 1_000_000))


RESUME_FIFO = "resume.fifo"


def pause(root: str, container_id: str, frozen: bool) -> None:
    """pause/resume: systemd's FreezeUnit, held by a small helper process (freezer.frozen_unit)
    until `resume` opens the resume FIFO: on a hybrid host systemd cannot freeze a unit, and the
    helper uses the v1 freezer hierarchy instead, which only a process that stays can undo."""
    lock = store.lock(root, container_id)
    try:
        st = store.load(root, container_id)
        status = status_of(root, st)
        if status != ("running" if frozen else "paused"):
            raise OciError(f"container not {'running' if frozen else 'paused'}: {status}")
        fifo = os.path.join(store.container_dir(root, container_id), RESUME_FIFO)
        if frozen:
            _freeze(st["unit"], fifo)
        else:
            _thaw(fifo)
        st["paused"] = frozen
        store.save(root, container_id, st)
    finally:
        os.close(lock)


def _freeze(unit: str, fifo: str) -> None:
    from machinectl_py import payload

    os.mkfifo(fifo, 0o600)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setsid()
        if os.fork() == 0:
            _hold_frozen(unit, fifo, w)
        os._exit(0)
    os.close(w)
    payload.reap(pid)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    if answer != b"frozen":
        if os.path.exists(fifo):
            os.unlink(fifo)
        raise OciError(answer.decode(errors="replace") or f"cannot freeze {unit}")


def _hold_frozen(unit: str, fifo: str, report_fd: int) -> None:
    """The helper: never returns."""
    from machinectl_py import freezer

    code = 0
    try:
        for fd in (0, 1, 2):
            devnull = os.open("/dev/null", os.O_RDWR)
            os.dup2(devnull, fd)
            os.close(devnull)
        with freezer.frozen_unit(unit):
            os.write(report_fd, b"frozen")
            os.close(report_fd)
            report_fd = -1
            with open(fifo, "rb") as f:  # blocks until `resume` opens it
                f.read()
    except BaseException as e:
        code = 1
        if report_fd >= 0:
            os.write(report_fd, (e.message if isinstance(e, PymachineError) else str(e)).encode())
    finally:
        if os.path.exists(fifo):
            os.unlink(fifo)
        os._exit(code)


def _thaw(fifo: str) -> None:
    """Open the resume FIFO: the helper thaws the unit, removes the FIFO and exits."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        return  # no helper waits: nothing is frozen
    os.close(fd)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while os.path.exists(fifo) and time.monotonic() < deadline:
        time.sleep(0.01)


def processes(root: str, container_id: str) -> list[tuple[int, str]]:
    from machinectl_py import systemd
    from machinectl_py.bus import Bus

    st = store.load(root, container_id)
    if status_of(root, st) == "stopped":
        return []
    with Bus.systemd() as pid1:
        try:
            return [(pid, cmd) for _, pid, cmd in systemd.unit_processes(pid1, st["unit"])]
        except BusError as e:
            raise OciError(f"cannot list the processes of {st['unit']}: {e.message}") from None


# -- exec ----------------------------------------------------------------------------------------


def _exec_rlimits(rlimits: tuple[tuple[int, int, int], ...], status_fd: int) -> None:
    """process.rlimits of an exec, set in its child (whose failure is reported, never raised)."""
    from machinectl_py import payload
    from machinectl_py.container_init import set_rlimits

    try:
        set_rlimits(rlimits)
    except (OSError, ValueError) as e:
        payload.report(status_fd, EXIT_CANNOT_INVOKE, f"process.rlimits: {e}")


def _saved_seccomp(root: str, container_id: str) -> bytes:
    try:
        with open(os.path.join(store.container_dir(root, container_id), store.SECCOMP), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def exec_process(root: str, container_id: str, process: dict[str, Any], *, console_socket: str | None,
                 pid_file: str | None, detach: bool) -> int:
    """runc exec: a process joins the running container (exec.py's child: setns, its user, its
    cwd, the container's capabilities bound), attached to the container's scope."""
    from machinectl_py import exec as joining
    from machinectl_py import payload, systemd
    from machinectl_py import syscalls as sc
    from machinectl_py.bus import Bus
    from machinectl_py.oci import config as oci_config

    st = store.load(root, container_id)
    if status_of(root, st) not in ("running", "created"):
        raise OciError(f"cannot exec in a stopped container: {container_id}")
    try:
        parsed = oci_config.parse_process(process)
    except oci_config.OciConfigError as e:
        raise OciError(str(e)) from None
    if parsed.terminal and not console_socket:
        raise OciError("cannot allocate tty if runc will detach without setting console socket")
    opts = joining.ExecOptions({"name": container_id, "argv": list(parsed.args), "env": [], "workdir": parsed.cwd,
                                "user": parsed.user, "tty": parsed.terminal, "interactive": True})
    pidfd = sc.pidfd_open(int(st["pid"]))
    console = _connect(console_socket) if parsed.terminal and console_socket else -1
    go_r, go_w = os.pipe()
    status_r, status_w = os.pipe()
    caps = parsed.capability_mask if parsed.capability_mask >= 0 else joining.leader_capabilities(int(st["pid"]))
    # The container's filter and, unless process.json says, its noNewPrivileges and rlimits, as
    # runc's exec (which copies the container's process for ARGS).
    nnp = bool(st.get("no_new_privs")) if parsed.no_new_privs is None else parsed.no_new_privs
    confinement = (_saved_seccomp(root, container_id), nnp)
    rlimits = parsed.rlimits if parsed.rlimits is not None else tuple(
        (int(n), int(soft), int(hard)) for n, soft, hard in st.get("rlimits", []))
    sc.setns(pidfd, sc.CLONE_NEWPID)
    child = os.fork()
    if child == 0:
        os.close(go_w)
        os.close(status_r)
        if console >= 0:
            payload.preload_console_modules()
        if rlimits:
            _exec_rlimits(rlimits, status_w)
        joining._child(opts, pidfd, dict(parsed.env), caps, confinement, go_r, status_w, console)
    for fd in (go_r, status_w, pidfd, *([console] if console >= 0 else [])):
        os.close(fd)
    try:
        with Bus.systemd() as pid1:
            systemd.attach_processes(pid1, st["unit"], [child])
    except BusError as e:
        os.close(go_w)
        payload.reap(child)
        raise OciError(f"cannot attach to {st['unit']}: {e.message}") from None
    os.write(go_w, b"g")
    os.close(go_w)
    failure = payload.read_status(status_r)
    os.close(status_r)
    if failure is not None:
        payload.reap(child)
        raise OciError(failure[1])
    if pid_file:
        store.write_pid_file(pid_file, child)
    if detach:
        return 0
    code = payload.reap(child)
    return 1 if code is None else code
