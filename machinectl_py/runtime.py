"""`pymachine run`: the life of a foreground container (the start kit it shares with the
unit's setup process is launch.py's).

validate -> resolve image -> claim the container dir -> fork the log forwarder ->
fork the container (held) -> systemd starts machine-NAME.scope with both in it ->
machined registers the machine -> release -> wait -> tear down in reverse. Each step's
undo runs in a `finally`, so a failure anywhere leaves nothing behind.
"""

from __future__ import annotations

# _signal is the C module under `signal`, without the enum wrappers that make
# `import signal` cost ~3 ms (enum) on the start-up path.
import _signal as signal
import os
import sys

from machinectl_py import cgroupfs, images, machined, payload, state, systemd
from machinectl_py.bus import ERRORS_NO_SERVICE, Bus, BusError
from machinectl_py.errors import PymachineError
from machinectl_py.journal import container_event, container_fields
from machinectl_py.launch import (
    HeldInit,
    NetworkSetup,
    boot_userns,
    build_child_plan,
    check_network,
    command_for,
    disconnect_network,
    effective_user,
    environment,
    finish_network,
    in_unit_cgroup,
    network_binds,
    rootfs_of,
)
from machinectl_py.policy import Policy, load_policy
from machinectl_py.spec import ContainerSpec
from machinectl_py.systemd import scope_properties

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from machinectl_py import plan
    from machinectl_py.container_init import ChildPlan

REMOVAL_TIMEOUT_USEC = 15_000_000
KILL_GRACE_SECONDS = 3
SIGRTMIN_3 = 37  # systemd's halt request (signal.SIGRTMIN is 34 on Linux)
HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def scope_name(name: str) -> str:
    # machined escapes names for unit names; our names ([a-zA-Z0-9-_.]) only need '-' escaped.
    return f"machine-{name.replace('-', chr(92) + 'x2d')}.scope"


class ForegroundRun:
    """One `pymachine run`: owns the processes, the machine and the container dir."""

    def __init__(self, spec: ContainerSpec) -> None:
        self.spec = spec.validate()
        self.container_id = os.urandom(32).hex()
        self.leader = 0
        self.exposed: tuple[str, ...] = ()
        self.forwarder = 0
        self.signalled = 0
        self.scope_started = False
        self.machine_registered = False
        self.released = False  # the payload was allowed to run
        self.cancelled_by = 0  # a signal that arrived before it was
        self.rebooted = False  # --boot: the guest asked for a reboot (its init ended by SIGHUP)
        self.dir_removed = False  # by the teardown (--rm): _run's cleanup has nothing left to do

    def run(self) -> int:
        # From here on Ctrl-C and SIGTERM never cut a step in half: before the payload
        # runs they cancel the start, after it they are passed on to it.
        self._install_signal_handlers()
        # Connect first: the bus daemon authenticates us (a few ms) while we prepare the
        # container, and the MachineRemoved match is queued ahead of the scope and the machine.
        bus = Bus.system()
        # systemd's own calls (the scope's job) go straight to it on its private socket.
        self.pid1 = Bus.systemd()
        try:
            machined.watch_removal(bus)
            code = self._run(bus)
        except BaseException:
            finish_network(detach=False)  # its error's message still goes to stderr
            raise
        finally:
            self.pid1.close()
            bus.close()
        finish_network()  # the last thing: our stdio is /dev/null after it
        return code

    def _run(self, bus: Bus) -> int:
        spec = self.spec
        check_network(spec)
        policy = load_policy()
        image = images.resolve(spec.image)
        self.exposed = image.config.exposed_ports  # -P publishes them
        argv = command_for(spec, image.config)
        env = environment(spec, image.config)
        if spec.boot:
            from machinectl_py import boot

            env = boot.environment(env, self.container_id, notify=False)
        # Locked for the run's whole life: `rm -f` kills the container, then waits for this
        # process to finish its teardown and its last record before it removes the directory.
        cdir = state.claim(spec.name)
        keep_dir = False
        try:
            from machinectl_py import security, userns

            id_range = userns.for_container(spec.name, security.userns_mode(spec), None)
            binds: list[plan.Bind] = []
            if spec.volumes:  # after the range: a volume's first container may give it its owner
                from machinectl_py import volumes

                spec = self.spec = volumes.create_anonymous(spec)
                binds = volumes.bind_ops(spec, id_range)
            net_binds = network_binds(spec)
            binds += net_binds
            record = state.ContainerRecord(
                name=spec.name, id=self.container_id, image_name=image.name, image_id=image.id,
                spec=spec, created=state.now(), unit=scope_name(spec.name), user=effective_user(spec, image.config),
                userns=id_range)

            def make_plan() -> ChildPlan:
                return build_child_plan(spec, image, cdir, policy, env, argv, binds=binds, userns=id_range)

            code = self._start_and_wait(bus, record, make_plan, rootfs_of(cdir), policy, image.name)
            while self.rebooted:
                # As nspawn in the foreground: a reboot inside sets the container up again, in the
                # same directory (the guest keeps its files, its machine id and its journal).
                self._reset_for_reboot(cdir)
                stale = len(net_binds)  # the teardown took the network's files: written again
                net_binds = network_binds(spec)
                binds[len(binds) - stale:] = net_binds
                code = self._start_and_wait(bus, record, make_plan, rootfs_of(cdir), policy, image.name)
            keep_dir = not spec.remove
            return code
        finally:
            if not keep_dir:
                if not self.dir_removed:  # a second time: the UID range's pool read and locked again
                    state.remove_dir(spec.name)
                if spec.volumes:
                    from machinectl_py import volumes

                    volumes.remove_anonymous(spec)
            state.release_claim(spec.name)

    def _reset_for_reboot(self, cdir: str) -> None:
        """Between two boots: the last one is torn down (its machine and scope gone); a signal
        from now on cancels the next start, as one before any payload ran. The overlay's work
        dir goes: after a `volatile` mount (--rm) overlayfs refuses it until its
        work/incompat/volatile is gone; the next mount makes it again."""
        import shutil

        self.rebooted = self.scope_started = self.machine_registered = self.released = False
        self.signalled = self.cancelled_by = 0
        shutil.rmtree(os.path.join(cdir, "work"), ignore_errors=True)

    def _start_and_wait(self, bus: Bus, record: state.ContainerRecord, make_plan: Callable[[], ChildPlan],
                        rootfs: str, policy: Policy, image_name: str) -> int:
        spec = self.spec
        hold_w = journal_copy = in_w = stdin_relay = -1
        init: HeldInit | None = None
        try:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            hold_r, hold_w = os.pipe()
            self.forwarder = self._fork_forwarder(out_r, err_r, hold_r, (out_w, err_w, hold_w, *state.claim_fds()),
                                                  image_name)
            for fd in (out_r, err_r, hold_r):
                os.close(fd)
            tty_parent, tty_child = payload.console_socketpair() if spec.tty else (-1, -1)
            child_out, child_err = (tty_child, tty_child) if spec.tty else (out_w, err_w)
            # -i without -t: stdin through a pipe (payload.stdio_pipes says why). Its relay is
            # forked before the init: after HeldInit's unshare, our children are born in the
            # container's PID namespace.
            in_r, in_w = os.pipe() if spec.interactive and not spec.tty else (-1, -1)
            if in_w >= 0:
                stdin_relay = payload.fork_stdin_relay(in_w)
                os.close(in_w)
                in_w = -1
            init = HeldInit(make_plan, child_out, child_err, in_r, boot_userns(spec, record.userns))
            payload.close_all((in_r,))
            self.leader = init.pid
            # -t: the pty relay below keeps out_w to copy what the terminal shows to the journal.
            journal_copy = out_w if spec.tty else -1
            if journal_copy < 0:
                os.close(out_w)
            os.close(err_w)
            if tty_child >= 0:
                os.close(tty_child)

            # Hold Ctrl-C/SIGTERM while sd-bus waits for replies: a signal would end that
            # wait with EINTR and lose the reply. Our handler runs right after, and cancels.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
            try:
                self._make_machine(bus, rootfs, policy, record, init)
            except PymachineError as e:
                raise (init.abandon(spec.name) or e) from None
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            if self.cancelled_by:
                # Ctrl-C or SIGTERM during setup: the payload never runs.
                init.close()
                code = 128 + self.cancelled_by
                record.state, record.exit_code, record.finished = "exited", code, state.now()
                if not spec.remove:
                    state.save_state(record)
                return code
            # The payload may run now: it is in its scope, under its limits, and registered.
            init.release()
            self.released = True
            record.state, record.pid, record.started = "running", self.leader, state.now()
            state.save_state(record)
            container_event("start", record)
            if tty_parent >= 0:
                payload.relay_from_socket(tty_parent, self.leader, stdin=spec.interactive, copy_fd=journal_copy,
                                          hold_console=spec.boot)
                os.close(journal_copy)  # EOF: the forwarder flushes the last line
                journal_copy = -1
            failure = init.failure()
            code = self._wait_leader()
            record.oom_killed = self._oom_killed()
            if failure:
                code, message = failure
                print(f"pymachine: {spec.name}: {message}", file=sys.stderr)
            record.state, record.exit_code, record.finished, record.pid = "exited", code, state.now(), None
            if record.oom_killed:
                container_event("oom", record)
            container_event("die", record, exitCode=str(code))
        finally:
            if init is not None:
                init.close()
            payload.close_all((in_w,))
            if stdin_relay > 0:
                _end_relay(stdin_relay)
            if journal_copy >= 0:
                os.close(journal_copy)
            self._teardown(bus, hold_w)
        if not spec.remove:
            state.save_state(record)
        return code

    def _make_machine(self, bus: Bus, rootfs: str, policy: Policy, record: state.ContainerRecord,
                      init: HeldInit) -> None:
        """machine-NAME.scope with the held init and the forwarder in it, under its limits; then
        the machine registered with machined, which adopts the scope. This is the order of
        machined's own CreateMachine, with two fewer D-Bus hops (see systemd.start_scope).
        The container's first record is saved while systemd's job runs, and the init finishes
        its setup in the scope (its cgroup namespace and mounts) while machined registers it."""
        spec = self.spec
        unit = scope_name(spec.name)
        unified = cgroupfs.unified()
        from machinectl_py.settings import check_host_support

        check_host_support(spec, unified)
        props = scope_properties(spec, policy.device_allow, (self.leader, self.forwarder), unified_host=unified)
        net = NetworkSetup(spec, self.leader, self.exposed)  # overlaps the scope's and machined's work
        try:
            self._scope_and_machine(bus, rootfs, unit, props, record, init)
        except BaseException:
            net.settle()
            raise
        net.join()  # a failure here abandons the start like any other
        net.start_proxies(self.pid1, unit)

    def _scope_and_machine(self, bus: Bus, rootfs: str, unit: str, props: list[systemd.Property],
                           record: state.ContainerRecord, init: HeldInit) -> None:
        spec = self.spec
        try:
            job = systemd.start_scope(self.pid1, unit, props)
            state.save(record)
            systemd.wait_scope_started(self.pid1, unit, job)
        except BusError as e:
            raise PymachineError(f"cannot create the container's scope {unit}: {e.message}",
                                 hint=_hint_for(e)) from None
        self.scope_started = True
        # machined finds the machine's unit from the leader's cgroup. An init that died before
        # systemd could move it (it failed on its own) is still in *our* cgroup, maybe the
        # user's session: registered there, the machine would belong to that unit, and a
        # terminate would stop it. Such an init is a failed start (its status says why).
        if not in_unit_cgroup(self.leader, unit):
            raise PymachineError(f"the container's init never reached {unit}")
        init.in_scope()
        try:
            machined.register_machine(bus, spec.name, self.container_id, self.leader, rootfs)
        except BusError as e:
            raise PymachineError(f"cannot register machine {spec.name} with systemd-machined: {e.message}",
                                 hint=_hint_for(e)) from None
        self.machine_registered = True

    def _oom_killed(self) -> bool:
        """Did the OOM killer kill in the scope? Its memory cgroup says so, read through the
        forwarder, which is still in it (systemd records no result for a scope's OOM kill on v1)."""
        cgroup = cgroupfs.cgroup_of(self.forwarder) if self.forwarder else None
        return cgroup is not None and cgroupfs.oom_kills(cgroup) > 0

    def _teardown(self, bus: Bus, hold_w: int) -> None:
        """Undo in reverse: the container, then the forwarder (the scope's last process),
        then the machine and its scope. Each step runs even if one before failed."""
        self._kill_and_reap_leader()
        try:
            # The kernel's part (the bridge with the last lease) is left to the end of run() and
            # not waited for (finish_network); after a reboot inside, the next start needs it.
            disconnect_network(self.spec.name, defer=not self.rebooted)
        except PymachineError as e:
            print(f"pymachine: {self.spec.name}: {e}", file=sys.stderr)
        if hold_w >= 0:
            os.close(hold_w)  # the forwarder flushes what is left and exits
        if self.forwarder:
            self._reap(self.forwarder)
            self.forwarder = 0
        if self.machine_registered:
            self._end_machine(bus)
        elif self.scope_started:
            self._stop_scope()
        if self.spec.remove and not self.rebooted:
            # The container's mount namespace died with its init: nothing uses the dir now
            # (after a reboot inside, the next boot does).
            state.remove_dir(self.spec.name)
            self.dir_removed = True
        if self.machine_registered:
            machined.wait_removed(bus, self.spec.name, REMOVAL_TIMEOUT_USEC)

    def _stop_scope(self) -> None:
        """The scope was made but the machine not registered: stop it and wait, so that no
        unit is left when we exit (its processes are gone or going already)."""
        try:
            systemd.run_job(self.pid1, "StopUnit", scope_name(self.spec.name), timeout_usec=REMOVAL_TIMEOUT_USEC)
        except BusError:
            pass  # already collected

    def _fork_forwarder(self, out_r: int, err_r: int, hold_r: int, parent_fds: tuple[int, ...],
                        image_name: str) -> int:
        fields = container_fields(self.spec.name, self.container_id, image_name)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for fd in parent_fds:
                    os.close(fd)
                from machinectl_py.forwarder import forward

                code = forward(out_r, err_r, fields, terminal=not self.spec.tty)
                os.read(hold_r, 1)  # returns when pymachine closes its end
            finally:
                os._exit(code)
        return pid

    def _install_signal_handlers(self) -> None:
        def forward_signal(signum: int, _frame: object) -> None:
            if not self.released:
                self.cancelled_by = self.cancelled_by or signum  # setup stops before the payload starts
            elif self.leader:
                self.signalled += 1
                # Second Ctrl-C, or no exit within the grace period: kill the whole container.
                sig = signum if self.signalled == 1 else signal.SIGKILL
                if sig in (signal.SIGINT, signal.SIGTERM) and self.spec.boot:
                    sig = SIGRTMIN_3  # a booted systemd halts on it (SIGINT would reboot it)
                try:
                    os.kill(self.leader, sig)
                except ProcessLookupError:
                    pass
                signal.alarm(self._grace_seconds())

        def kill_now(_signum: int, _frame: object) -> None:
            if self.leader:
                try:
                    os.kill(self.leader, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, forward_signal)
        signal.signal(signal.SIGALRM, kill_now)

    def _grace_seconds(self) -> int:
        """How long a stop signal may take before SIGKILL: 3 s for a command; a booted OS halts
        its services first, so its stop timeout (default 10 s), as `pymachine stop` grants it."""
        if not self.spec.boot:
            return KILL_GRACE_SECONDS
        return self.spec.stop_timeout if self.spec.stop_timeout is not None else 10

    def _wait_leader(self) -> int:
        _, status = os.waitpid(self.leader, 0)
        signal.alarm(0)
        if os.WIFSIGNALED(status):
            code = 128 + os.WTERMSIG(status)
            # reboot(2) in a PID namespace ends its init by SIGHUP; one we passed on is not that.
            self.rebooted = self.spec.boot and os.WTERMSIG(status) == signal.SIGHUP and not self.signalled
            if self.spec.boot:
                from machinectl_py.boot import exit_code

                return exit_code(code) or 0  # a halt inside: a clean end
            return code
        return os.WEXITSTATUS(status)

    def _kill_and_reap_leader(self) -> None:
        if self.leader:
            try:
                os.kill(self.leader, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap(self.leader)
            self.leader = 0

    @staticmethod
    def _reap(pid: int) -> None:
        payload.reap(pid)

    def _end_machine(self, bus: Bus) -> None:
        """Every process of the container is gone: ask machined to terminate the machine; the
        caller waits for MachineRemoved once it has removed the container dir meanwhile.
        Left alone the scope would stop too, but only once systemd learns it is empty from
        cgroup.events, which the kernel signals at most every HZ/100 jiffies (12 ms with
        HZ=250): a container that lived less than that, `true` say, waited out the rest. The
        stop job checks the cgroup there and then. So it is asked for only once the forwarder
        has exited too: asked for while the forwarder still ran (to overlap its exit), the
        stop job waited for systemd to learn of the empty scope, and MachineRemoved came ~9 ms
        after the request instead of ~5 (tried on 2026-12-06). Not waited for: a machine that
        is gone already (machinectl terminate) sent its MachineRemoved, which is queued for us."""
        machined.request_termination(bus, self.spec.name)


def _end_relay(pid: int) -> None:
    """The container's stdin relay outlives the container only while blocked reading ours."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    payload.reap(pid)


def _hint_for(e: BusError) -> str | None:
    if e.name == machined.MACHINE_EXISTS or "exists" in e.message.lower():
        return "a machine of that name is already registered: see 'machinectl list'"
    if e.name in ERRORS_NO_SERVICE:
        return "is systemd-machined installed (package systemd-container)?"
    return None


def run_foreground(spec: ContainerSpec) -> int:
    return ForegroundRun(spec).run()
