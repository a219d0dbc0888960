"""kill -9 at any step of `start` leaves nothing the next command does not detect and clean.

Two processes do a start: the client (`pymachine start NAME`) and the unit's setup process
(`pymachine _service NAME`, ExecStart= of pymachine@NAME.service, Type=forking). Each is killed
with SIGKILL after a series of delays that fall on its successive steps (definition adopted,
drop-in and template written, start job queued; container dir claimed, init forked, machine
registered, PID file written, init released). After every kill the same invariant is checked
with the real tools: the unit settles and is not left failed, `ps -a`/`inspect` agree with
systemd, `pymachine gc` runs clean, the next `pymachine start` works (machine registered, exec
answers), and after a stop no machine, mount, PID file or container process is left.

Chosen steps are hit exactly with strace's fault injection (`-P PATH -e inject=%file:signal=KILL`:
SIGKILL when the process first touches PATH, e.g. the record's temporary file: after the
container's directory is claimed, before its record exists). That hook is outside pymachine, so
it costs pymachine nothing. Random delays cover the steps between.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import pytest
from testhost import LocalHost, TestHost

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AnyHost = TestHost | LocalHost
# Marks the container's processes: none may outlive a stop.
PAYLOAD = ["sleep", "7654321"]
CLIENT_DELAYS = (0.0, 0.03, 0.08, 0.2)
SETUP_DELAYS = (0.0, 0.005, 0.01, 0.02, 0.04, 0.08)
STATE = "/var/lib/pymachine/containers"

# Inside the test host: start the unit without waiting, find its setup process as soon as
# systemd forks it, SIGKILL it DELAY seconds later. Prints what happened.
KILL_SETUP = r'''
import os, subprocess, sys, time
name, delay = sys.argv[1], float(sys.argv[2])
subprocess.run(["systemctl", "start", "--no-block", f"pymachine@{name}.service"], check=True)
wanted = [b"_service", name.encode()]
deadline, target = time.monotonic() + 10, 0
while not target and time.monotonic() < deadline:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv[-3:-1] == wanted:
                target = int(entry)
                break
if not target:
    print("never-seen")
    sys.exit(0)
time.sleep(delay)
try:
    os.kill(target, 9)
    print("killed")
except ProcessLookupError:
    print("exited-before")
'''


def pm(host: AnyHost, *args: str, check: bool = True, timeout: float = 60) -> str:
    r = host.run(["pymachine", *args], timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"pymachine {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r.stdout


def active_state(host: AnyHost, unit: str) -> str:
    return host.run(["systemctl", "show", "-p", "ActiveState", "--value", unit]).stdout.strip()


def settle(host: AnyHost, unit: str, timeout: float = 30) -> str:
    """Wait for the unit to leave activating/deactivating (systemd finishes a job we abandoned)."""
    deadline = time.monotonic() + timeout
    while True:
        state = active_state(host, unit)
        if state not in ("activating", "deactivating", "reloading") or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def machines(host: AnyHost) -> list[str]:
    out = host.run(["machinectl", "list", "--no-legend", "--full"], check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip() and "No machines" not in line]


def container_status(host: AnyHost, name: str) -> str:
    """inspect's State.Status, or "defined" for a definition without state (never started)."""
    r = host.run(["pymachine", "inspect", name], timeout=60)
    if r.returncode != 0 and "never started" in r.stderr:
        return "defined"
    assert r.returncode == 0, r.stderr
    (data,) = json.loads(r.stdout)
    return str(data["State"]["Status"])


def payload_pids(host: AnyHost) -> list[str]:
    return host.run(["pgrep", "-f", " ".join(PAYLOAD)]).stdout.split()


def assert_recovers(host: AnyHost, name: str, what: str) -> None:
    unit = f"pymachine@{name}.service"
    state = settle(host, unit)
    assert state in ("active", "inactive", "failed"), f"{what}: {unit} stuck in {state}"
    # ps/inspect agree with systemd: running exactly when the unit runs.
    status = container_status(host, name)
    assert (status == "running") == (state == "active"), f"{what}: inspect says {status}, {unit} is {state}"
    assert (name in machines(host)) == (state == "active"), f"{what}: machinectl list {machines(host)}, {state}"
    # Plain gc: right after a kill no pymachine command runs, so it needs no --grace 0.
    pm(host, "gc")
    assert host.run(["systemctl", "is-failed", "--quiet", unit]).returncode != 0, f"{what}: {unit} left failed"
    if container_status(host, name) != "defined":  # (no state: `stop` knows no such container)
        pm(host, "stop", "-t", "1", name)
    assert_stopped_clean(host, name, what)
    # The next start works, and the container is whole.
    pm(host, "start", name)
    assert active_state(host, unit) == "active", what
    assert container_status(host, name) == "running", what
    assert name in machines(host), what
    assert pm(host, "exec", name, "hostname").strip() == name, what
    pm(host, "stop", "-t", "1", name)
    assert_stopped_clean(host, name, what)


def assert_stopped_clean(host: AnyHost, name: str, what: str) -> None:
    unit = f"pymachine@{name}.service"
    assert active_state(host, unit) in ("inactive", "failed", ""), what
    assert name not in machines(host), f"{what}: machine still registered"
    mounts = host.run(["findmnt", "-rn", "-o", "TARGET"], check=True).stdout
    assert f"/containers/{name}" not in mounts, f"{what}: a container mount is visible on the host"
    assert host.run(["test", "-e", f"/run/pymachine/{name}.pid"]).returncode == 1, f"{what}: stale PID file"
    assert not payload_pids(host), f"{what}: container processes left: {payload_pids(host)}"
    assert container_status(host, name) != "running", what
    # No temporary file of a write cut short (the kills happen before; gc has run since).
    temps = host.run(["find", "/etc/systemd/system", "/etc/pymachine", "/run/pymachine", f"{STATE}/{name}",
                      "-name", "*.tmp"]).stdout
    assert not temps.strip(), f"{what}: {temps}"


def strace_kill(path: str, when: int = 1) -> list[str]:
    """A prefix that runs a command and SIGKILLs it when it touches `path` for the `when`-th time."""
    return ["strace", "-qq", "-o", "/dev/null", "-P", path, "-e", "trace=%file",
            "-e", f"inject=%file:signal=KILL:when={when}"]


def write_definition(host: AnyHost, name: str) -> None:
    host.run(["sh", "-c", f"mkdir -p /etc/pymachine/machines && cat > /etc/pymachine/machines/{name}.toml"],
             check=True, input=f'image = "busybox"\ncommand = {json.dumps(PAYLOAD)}\n')


def start_again(host: AnyHost, name: str, what: str) -> None:
    """The next start works, or `pymachine gc` cleans what stopped it: then it works."""
    r = host.run(["pymachine", "start", name], timeout=60)
    if r.returncode != 0:
        pm(host, "gc")  # cleans what made the start fail: assert_recovers starts it again
    assert_recovers(host, name, what)


@pytest.fixture
def container(host: AnyHost) -> Iterator[str]:
    assert host.run(["strace", "-V"]).returncode == 0, "strace is needed: tools/install-deps --test"
    name = f"crash{secrets.token_hex(3)}"
    yield name
    host.run(["pymachine", "rm", "-f", "-v", name], timeout=60)
    host.run(["rm", "-f", f"/etc/pymachine/machines/{name}.toml"])
    host.assert_no_leftovers(timeout=15)


def test_kill_9_of_the_start_client_at_each_step(host: AnyHost, container: str) -> None:
    name = container
    pm(host, "create", "--name", name, "busybox", *PAYLOAD)
    for delay in CLIENT_DELAYS:
        # An edited definition makes start rewrite the drop-in and reload systemd first.
        host.run(["touch", f"/etc/pymachine/machines/{name}.toml"], check=True)
        proc = host.popen(["pymachine", "start", name])
        time.sleep(delay)
        proc.send_signal(9)
        proc.wait(30)
        assert_recovers(host, name, f"start client killed after {delay}s")


# (what the kill interrupts, the path whose first touch triggers it) for `pymachine start`.
CLIENT_STEPS = {
    "after claiming the dir, before the record": f"{STATE}/{{name}}/container.json.tmp",
    "after the record, before the drop-in": "/etc/systemd/system/pymachine@{name}.service.d/50-pymachine.conf",
}


@pytest.mark.parametrize("step", list(CLIENT_STEPS))
def test_kill_9_of_the_client_adopting_a_hand_written_definition(host: AnyHost, container: str, step: str) -> None:
    """The first `pymachine start` of a hand-written definition makes the container's state."""
    name = container
    pm(host, "gc")  # the template in place: the client's first file is then the container's
    write_definition(host, name)
    path = CLIENT_STEPS[step].format(name=name)
    r = host.run([*strace_kill(path), "pymachine", "start", name], timeout=60)
    assert r.returncode in (-9, 128 + 9), f"never reached {path}: {r.returncode} {r.stderr}"
    start_again(host, name, f"adopting start killed {step}")


def test_kill_9_of_the_client_adopting_at_random_delays(host: AnyHost, container: str) -> None:
    name = container
    for delay in CLIENT_DELAYS:
        host.run(["pymachine", "rm", "-f", name], timeout=60)
        write_definition(host, name)
        proc = host.popen(["pymachine", "start", name])
        time.sleep(delay)
        proc.send_signal(9)
        proc.wait(30)
        start_again(host, name, f"adopting start killed after {delay}s")


def test_kill_9_of_the_units_setup_process_at_each_step(host: AnyHost, container: str) -> None:
    name = container
    pm(host, "create", "--name", name, "busybox", *PAYLOAD)
    pm(host, "start", name)  # drop-in and template in place: systemctl alone starts it below
    pm(host, "stop", "-t", "1", name)
    outcomes = []
    for delay in SETUP_DELAYS:
        r = host.run(["python3", "-c", KILL_SETUP, name, str(delay)], check=True, timeout=60)
        outcomes.append(r.stdout.strip())
        assert_recovers(host, name, f"setup process killed after {delay}s ({r.stdout.strip()})")
    # The series hit the setup process while it ran, not only after it was done.
    assert outcomes.count("killed") >= 2, outcomes


# (what the kill interrupts, the path, which touch) for the setup process of a definition
# pymachine never saw, started by systemctl.
SETUP_STEPS = {
    "after claiming the dir, before the record": (f"{STATE}/{{name}}/container.json.tmp", 1),
    "after registering the machine, before the record says running": (f"{STATE}/{{name}}/container.json.tmp", 2),
    # (strace's -P does not see a rename's target: the PID file's directory is touched first.)
    "after the record says running, before the PID file": ("/run/pymachine", 1),
}


@pytest.mark.parametrize("step", list(SETUP_STEPS))
def test_kill_9_of_the_setup_process_of_a_definition_never_started(host: AnyHost, container: str,
                                                                   step: str) -> None:
    """systemctl start of a hand-written definition: the setup process makes the state; killed at a step."""
    name, unit = container, f"pymachine@{container}.service"
    pm(host, "gc")  # the template, as a boot would find it
    write_definition(host, name)
    template = host.run(["systemctl", "cat", "pymachine@.service"], check=True).stdout
    (exec_start,) = [line for line in template.splitlines() if line.startswith("ExecStart=")]
    path, when = SETUP_STEPS[step]
    hook = " ".join(strace_kill(path.format(name=name), when)).replace("%", "%%")  # a unit's specifiers
    dropin = f"/etc/systemd/system/{unit}.d/60-test-kill.conf"
    host.run(["sh", "-c", f"mkdir -p {dropin.rsplit('/', 1)[0]} && cat > {dropin}"], check=True,
             input=f"[Service]\nExecStart=\nExecStart=/usr/bin/{hook} {exec_start.split('=', 1)[1]}\n")
    host.run(["systemctl", "daemon-reload"], check=True, timeout=60)
    r = host.run(["systemctl", "start", unit], timeout=60)
    assert r.returncode != 0, "the setup process was not killed"
    journal = host.run(["journalctl", "-u", unit, "-n", "30", "--no-pager"]).stdout
    assert "status=9/KILL" in journal, f"not killed by the hook:\n{journal}"
    host.run(["rm", "-f", dropin], check=True)
    host.run(["systemctl", "daemon-reload"], check=True, timeout=60)
    start_again(host, name, f"setup process killed {step}")


def test_kill_9_of_the_setup_process_adopting_at_random_delays(host: AnyHost, container: str) -> None:
    name = container
    pm(host, "gc")
    outcomes = []
    for delay in SETUP_DELAYS:
        host.run(["pymachine", "rm", "-f", name], timeout=60)
        write_definition(host, name)
        r = host.run(["python3", "-c", KILL_SETUP, name, str(delay)], check=True, timeout=60)
        outcomes.append(r.stdout.strip())
        settle(host, f"pymachine@{name}.service")
        start_again(host, name, f"adopting setup process killed after {delay}s ({r.stdout.strip()})")
    assert outcomes.count("killed") >= 2, outcomes
