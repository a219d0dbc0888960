"""Detached containers as pymachine@NAME.service, checked with systemctl, machinectl, journalctl,
/proc and HTTP (busybox wget inside the test host's network namespace)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable

import pytest
from helpers import HTTP_GET, read_until
from testhost import LocalHost, TestHost

pytestmark = pytest.mark.integration

AnyHost = TestHost | LocalHost


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def free_port(host: AnyHost) -> int:
    """A port nobody uses in the host's network namespace (the test host has its own)."""
    script = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
    return int(host.run(["python3", "-c", script], check=True).stdout)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)




def http_get(host: AnyHost, port: int, path: str = "/") -> str:
    """GET from inside the host's network namespace (the static busybox's wget crashes on the
    machine itself: it is built for containers)."""
    r = host.run(["python3", "-c", HTTP_GET, f"http://127.0.0.1:{port}{path}"], timeout=200)
    if r.returncode != 0:
        raise AssertionError(f"no HTTP answer on port {port}: {r.stderr}")
    return r.stdout


def pm(host: AnyHost, *args: str, check: bool = True, timeout: float = 60) -> str:
    r = host.run(["pymachine", *args], timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"pymachine {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r.stdout


def show(host: AnyHost, unit: str, *props: str) -> dict[str, str]:
    out = host.run(["systemctl", "show", unit, *[f"-p{p}" for p in props]], check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def unit_pids(host: AnyHost, unit: str) -> list[int]:
    """The processes in the unit's cgroup, as systemd reports them."""
    out = host.run(["systemd-cgls", "--no-pager", "-u", unit], check=True).stdout
    pids = []
    for line in out.splitlines():
        word = line.strip().lstrip("├└─│ ").split(" ", 1)[0]
        if word.isdigit():
            pids.append(int(word))
    return pids


def cmdline(host: AnyHost, pid: int) -> str:
    return host.run(["cat", f"/proc/{pid}/cmdline"]).stdout.replace("\0", " ")


def test_done_when_sequence(host: AnyHost, cleanup: list[str]) -> None:
    """The issue's acceptance sequence, as a new user would type it (on a free port)."""
    name = unique("web")
    cleanup.append(name)
    port = free_port(host)
    unit = f"pymachine@{name}.service"
    pm(host, "create", "--name", name, "-p", f"{port}:{port}", "busybox", "sh", "-c",
       f"mkdir -p /www && echo ok > /www/index.html && echo serving on {port} && exec httpd -f -p {port} -h /www")
    pm(host, "start", name)
    assert http_get(host, port) == "ok\n"
    status = host.run(["systemctl", "status", "--no-pager", unit])
    assert "active (running)" in status.stdout, status.stdout
    # No pymachine process stays: every process of the unit is the container's.
    pids = unit_pids(host, unit)
    assert pids, f"no process in {unit}"
    for pid in pids:
        assert "pymachine" not in cmdline(host, pid), f"resident pymachine process {pid}: {cmdline(host, pid)}"
    assert host.run(["pgrep", "-f", f"pymachine _service {name}"]).returncode == 1
    assert pm(host, "exec", name, "cat", "/www/index.html") == "ok\n"
    assert host.run(["pymachine", "exec", name, "sh", "-c", "exit 3"]).returncode == 3
    wait_for(lambda: f"serving on {port}" in pm(host, "logs", name), what="the line in `pymachine logs`")
    pm(host, "stop", "-t", "1", name)
    assert show(host, unit, "ActiveState")["ActiveState"] in ("inactive", "failed")
    assert name not in host.run(["machinectl", "list", "--no-legend"]).stdout
    assert f"containers/{name}" not in host.run(["findmnt", "-rn", "-o", "TARGET"]).stdout
    assert "exited (137)" in pm(host, "ps", "-a"), "SIGKILL after the 1 s grace: 128+9"
    host.run(["systemctl", "enable", "--now", unit], check=True)
    assert http_get(host, port) == "ok\n"
    assert show(host, unit, "ActiveState")["ActiveState"] == "active"
    host.run(["systemctl", "disable", "--now", unit], check=True, timeout=60)
    # The foreground path is untouched: run --rm still lives in machine-NAME.scope.
    fg = unique("fg")
    out = pm(host, "run", "--rm", "--name", fg, "busybox", "sh", "-c", "cat /proc/1/cgroup; true")
    assert out, "no output from the foreground container"
    assert host.run(["systemctl", "is-active", f"machine-{fg.replace('-', chr(92) + 'x2d')}.scope"]).returncode != 0


def test_unit_limits_machine_and_journal_fields(host: AnyHost, cleanup: list[str]) -> None:
    name = unique("lim")
    cleanup.append(name)
    unit = f"pymachine@{name}.service"
    cid = pm(host, "create", "--name", name, "--memory", "64M", "--cpus", "0.5", "--pids-limit", "40", "busybox",
             "sh", "-c", "echo to-stdout; echo to-stderr >&2; exec sleep 1000").strip()
    pm(host, "start", name)
    props = show(host, unit, "MemoryMax", "TasksMax", "CPUQuotaPerSecUSec", "ControlGroup", "MainPID", "Slice")
    assert props["MemoryMax"] == str(64 * 1024 * 1024)
    assert props["TasksMax"] == "40"
    assert props["CPUQuotaPerSecUSec"] == "500ms"
    assert props["Slice"] == "machine.slice"
    assert props["ControlGroup"] == f"/machine.slice/{unit}"
    leader = int(props["MainPID"])
    assert host.run(["cat", f"/proc/{leader}/comm"]).stdout.strip() == "sleep"
    machine = host.run(["machinectl", "show", name, "-p", "Unit", "-p", "Leader", "-p", "Class"], check=True).stdout
    assert f"Unit={unit}" in machine and f"Leader={leader}" in machine and "Class=container" in machine
    assert int(pm(host, "inspect", "--format", "{{ .State.Pid }}", name)) == leader

    def journal() -> list[dict[str, str]]:
        out = host.run(["journalctl", "-o", "json", f"CONTAINER_NAME={name}", "--no-pager"]).stdout
        return [json.loads(line) for line in out.splitlines()]

    wait_for(lambda: len(journal()) >= 2, what="both lines in the journal")
    entries = {e["MESSAGE"]: e for e in journal()}
    out, err = entries["to-stdout"], entries["to-stderr"]
    assert out["_SYSTEMD_UNIT"] == unit and err["_SYSTEMD_UNIT"] == unit
    assert out["CONTAINER_ID"] == cid[:12] and out["CONTAINER_ID_FULL"] == cid
    assert out["SYSLOG_IDENTIFIER"] == name and err["SYSLOG_IDENTIFIER"] == name
    assert out["PRIORITY"] == "6" and err["PRIORITY"] == "3"
    assert host.run(["journalctl", "-u", unit, "--no-pager", "-o", "cat"]).stdout.count("to-stdout") == 1
    logs = host.run(["pymachine", "logs", name])
    assert "to-stdout" in logs.stdout and "to-stderr" in logs.stderr and "to-stderr" not in logs.stdout


def test_exit_code_is_recorded_and_failed_start_says_why(host: AnyHost, cleanup: list[str]) -> None:
    quick = unique("quick")
    broken = unique("broken")
    cleanup += [quick, broken]
    pm(host, "create", "--name", quick, "busybox", "sh", "-c", "sleep 0.3; exit 5")
    pm(host, "start", quick)
    wait_for(lambda: "exited (5)" in pm(host, "ps", "-a"), what="exited (5) in ps -a")
    data = json.loads(pm(host, "inspect", quick))[0]
    assert data["State"]["ExitCode"] == 5 and data["State"]["Status"] == "exited"
    pm(host, "create", "--name", broken, "busybox", "no-such-command")
    r = host.run(["pymachine", "start", broken])
    assert r.returncode == 125
    assert "executable file not found" in r.stderr, r.stderr
    assert "exited (127)" in pm(host, "ps", "-a")


def test_detached_commands_that_end_at_once_start(host: AnyHost) -> None:
    """A payload that ends before systemd reads the unit's PID file is a start systemd fails
    as 'protocol' (about one in six of these before): `run -d` still succeeds, as docker's."""
    names = [unique("brief") for _ in range(20)]
    try:
        for name in names:
            r = host.run(["pymachine", "run", "-d", "--name", name, "busybox", "false"])
            assert r.returncode == 0, f"{name}: {r.stderr}"
        for _ in range(10):
            r = host.run(["pymachine", "run", "-d", "--rm", "busybox", "true"])
            assert r.returncode == 0, r.stderr

        def ended() -> bool:
            table = pm(host, "ps", "-a", "--format", "{{.Names}} {{.Status}}")
            rows = [line.split(" ", 1) for line in table.splitlines()]
            return all(status.startswith("exited") for row_name, status in rows if row_name in names)

        wait_for(ended, what="all of them to have ended")
    finally:
        host.run(["pymachine", "rm", "-f", *names])


def test_a_detached_rm_container_that_fails_to_start_says_why_and_leaves_nothing(host: AnyHost) -> None:
    name = unique("rmfail")
    r = host.run(["pymachine", "run", "-d", "--rm", "--name", name, "busybox", "no-such-command"])
    assert r.returncode == 125 and "executable file not found" in r.stderr, r.stderr
    assert name not in pm(host, "ps", "-a")
    assert not host.run(["sh", "-c", f"ls /run/pymachine/{name}.* 2>/dev/null"]).stdout
    # Started by systemctl, nobody reads its error: gc removes it.
    pm(host, "create", "--rm", "--name", name, "busybox", "no-such-command")
    assert host.run(["systemctl", "start", f"pymachine@{name}.service"]).returncode != 0
    assert name not in pm(host, "ps", "-a")
    left = f"/run/pymachine/{name}.last-error"
    assert "executable file not found" in host.run(["cat", left], check=True).stdout
    assert f"removed {left}" in pm(host, "gc", "--grace", "0")
    assert host.run(["test", "-e", left]).returncode != 0


def test_restart_policy_maps_to_restart(host: AnyHost, cleanup: list[str]) -> None:
    name = unique("flaky")
    cleanup.append(name)
    unit = f"pymachine@{name}.service"
    pm(host, "create", "--name", name, "--restart", "on-failure", "busybox", "sh", "-c", "echo run; sleep 1; exit 1")
    pm(host, "start", name)
    assert show(host, unit, "Restart")["Restart"] == "on-failure"
    wait_for(lambda: int(show(host, unit, "NRestarts").get("NRestarts") or 0) >= 1, what="a restart")
    # The restarted container really runs again (registered anew with machined, output in the journal).
    wait_for(lambda: pm(host, "logs", name).count("run") >= 2, timeout=15, what="the second run's output")
    wait_for(lambda: name in host.run(["machinectl", "list", "--no-legend"]).stdout, what="the machine again")


def test_systemctl_stop_and_machinectl_terminate(host: AnyHost, cleanup: list[str]) -> None:
    name = unique("term")
    cleanup.append(name)
    unit = f"pymachine@{name}.service"
    pm(host, "create", "--name", name, "busybox", "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done")
    pm(host, "start", name)
    host.run(["systemctl", "stop", unit], check=True, timeout=60)
    assert "exited (0)" in pm(host, "ps", "-a")
    pm(host, "start", name)
    assert "running" in pm(host, "ps")
    host.run(["machinectl", "terminate", name], check=True)
    wait_for(lambda: "running" not in pm(host, "ps", "-a"), what="pymachine to see the terminated container")
    wait_for(lambda: host.run(["systemctl", "is-active", unit]).stdout.strip() != "active", what="unit stopped")


def test_two_starts_one_wins(host: AnyHost, cleanup: list[str]) -> None:
    name = unique("race")
    cleanup.append(name)
    pm(host, "create", "--name", name, "busybox", "sleep", "1000")
    procs = [host.popen(["pymachine", "start", name]) for _ in range(2)]
    results = [(p.wait(60), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 125], results
    loser = next(err for code, err in results if code != 0)
    assert "already running" in loser or "being started" in loser, loser


def test_hand_written_definition_and_its_errors(host: AnyHost, cleanup: list[str]) -> None:
    name = unique("hand")
    cleanup.append(name)
    path = f"/etc/pymachine/machines/{name}.toml"
    host.run(["sh", "-c", f"mkdir -p /etc/pymachine/machines && cat > {path}"], check=True, input=(
        'image = "busybox"\ncommand = ["sleep", "1000"]\nhostname = "handmade"\n\n[limits]\nmemory = "32M"\n'))
    pm(host, "start", name)
    assert pm(host, "exec", name, "hostname").strip() == "handmade"
    assert show(host, f"pymachine@{name}.service", "MemoryMax")["MemoryMax"] == str(32 * 1024 * 1024)
    pm(host, "stop", "-t", "1", name)
    bad = unique("bad")
    cleanup.append(bad)
    host.run(["sh", "-c", f"cat > /etc/pymachine/machines/{bad}.toml"], check=True,
             input='image = "busybox"\n\nbogus = 1\n')
    r = host.run(["pymachine", "start", bad])
    assert r.returncode == 125
    assert f"/etc/pymachine/machines/{bad}.toml:3: bogus: unknown key" in r.stderr, r.stderr


def test_kill_9_during_start_then_gc(host: AnyHost, cleanup: list[str]) -> None:
    name = unique("crash")
    cleanup.append(name)
    pm(host, "create", "--name", name, "busybox", "sleep", "1000")
    for delay in (0.05, 0.15, 0.3):
        proc = host.popen(["pymachine", "start", name])
        time.sleep(delay)
        proc.send_signal(9)
        proc.wait(30)
        pm(host, "gc", "--grace", "0")
        # Whatever step was interrupted, the next commands see a consistent container.
        pm(host, "stop", "-t", "1", name)
        pm(host, "start", name)
        assert "running" in pm(host, "ps")
        pm(host, "stop", "-t", "1", name)
    # Debris of an interrupted create: a directory without a record.
    host.run(["mkdir", "-p", "/var/lib/pymachine/containers/half-made"], check=True)
    assert "half-made" in pm(host, "gc", "--grace", "0")
    assert host.run(["test", "-e", "/var/lib/pymachine/containers/half-made"]).returncode == 1


def test_run_detached_and_rm(host: AnyHost, cleanup: list[str]) -> None:
    name = unique("det")
    cleanup.append(name)
    cid = pm(host, "run", "-d", "--name", name, "busybox", "sleep", "1000").strip()
    assert len(cid) == 64
    assert show(host, f"pymachine@{name}.service", "ActiveState")["ActiveState"] == "active"
    r = host.run(["pymachine", "rm", name])
    assert r.returncode == 125 and "is running" in r.stderr
    pm(host, "rm", "-f", name)
    assert host.run(["test", "-e", f"/etc/pymachine/machines/{name}.toml"]).returncode == 1
    assert host.run(["test", "-e", f"/var/lib/pymachine/containers/{name}"]).returncode == 1
    assert host.run(["test", "-e", f"/etc/systemd/system/pymachine@{name}.service.d"]).returncode == 1


def test_units_pass_systemd_analyze_verify(host: AnyHost) -> None:
    r = host.run(["systemd-analyze", "verify", "/etc/systemd/system/pymachine@.service"])
    if r.returncode != 0 and "No such file" in r.stderr:
        pm(host, "gc")
        host.run(["sh", "-c", "pymachine create --name verify-x busybox true && pymachine rm verify-x"], check=True)
        r = host.run(["systemd-analyze", "verify", "/etc/systemd/system/pymachine@.service"])
    assert r.returncode == 0, r.stderr
    assert "pymachine@" not in r.stderr, r.stderr


def test_rm_racing_start_leaves_a_consistent_state(host: AnyHost) -> None:
    for delay in (0.0, 0.1, 0.25):
        name = unique("rmrace")
        pm(host, "create", "--name", name, "busybox", "sleep", "1000")
        start = host.popen(["pymachine", "start", name])
        time.sleep(delay)
        rm = host.run(["pymachine", "rm", "-f", name], timeout=60)
        start.wait(60)
        exists = host.run(["test", "-e", f"/var/lib/pymachine/containers/{name}"]).returncode == 0
        if rm.returncode == 0:
            assert not exists, "rm succeeded but the container's directory is still there"
        # Either way, nothing half-made: a removed container leaves no unit, machine, definition or drop-in.
        if not exists:
            assert host.run(["test", "-e", f"/etc/pymachine/machines/{name}.toml"]).returncode == 1
            assert host.run(["test", "-e", f"/etc/systemd/system/pymachine@{name}.service.d"]).returncode == 1
            unit = f"pymachine@{name}.service"
            wait_for(lambda u=unit: host.run(["systemctl", "is-active", u]).returncode != 0,  # type: ignore[misc]
                     what="the unit to be stopped")
            assert name not in host.run(["machinectl", "list", "--no-legend"]).stdout
        else:
            host.run(["pymachine", "rm", "-f", name], check=True, timeout=60)
    host.assert_no_leftovers(timeout=15)


def test_logs_of_an_unknown_name_fail_and_of_a_removed_container_show_its_lines(host: AnyHost) -> None:
    name = unique("gone")
    for argv in (["logs", name], ["logs", "-f", name]):
        r = host.run(["pymachine", *argv], timeout=30)
        assert r.returncode == 125 and r.stderr.startswith(f"pymachine: no such container: {name}"), r
    pm(host, "run", "--rm", "--name", name, "busybox", "echo", "left-in-the-journal")
    wait_for(lambda: "left-in-the-journal" in pm(host, "logs", name), what="the removed container's line")


def test_logs_tail_since_and_a_reused_name(host: AnyHost, cleanup: list[str]) -> None:
    name = unique("logs")
    cleanup.append(name)
    pm(host, "run", "-d", "--name", name, "busybox", "sh", "-c", "for i in 1 2 3 4 5; do echo old$i; done; sleep 1000")
    wait_for(lambda: "old5" in pm(host, "logs", name), what="the old container's lines", timeout=60)
    assert pm(host, "logs", "-n", "2", name).split() == ["old4", "old5"]
    assert pm(host, "logs", "--since", "1 hour ago", name).split() == [f"old{i}" for i in range(1, 6)]
    pm(host, "rm", "-f", name)
    # It prints each line written to /fifo: lines the test makes after `logs -f` has started.
    pm(host, "run", "-d", "--name", name, "busybox", "sh", "-c",
       'mkfifo /fifo; echo new; while :; do read line < /fifo && echo "$line"; done')
    wait_for(lambda: "new" in pm(host, "logs", name), what="the new container's line", timeout=60)
    assert pm(host, "logs", name).split() == ["new"], "a new container of the same name has its own logs"
    follow = host.popen(["pymachine", "logs", "-f", name])
    try:
        # Deadlines, not a pause: under emulation (the v2 tier) Python alone takes 1.7 s to start.
        assert read_until(follow, "new\n").split() == ["new"]
        # logs -f keeps running and prints what comes after it started.
        pm(host, "exec", name, "sh", "-c", "echo followed > /fifo")
        read_until(follow, "followed\n")
    finally:
        follow.terminate()
        follow.communicate(timeout=10)


def test_systemctl_starts_a_hand_written_definition_pymachine_never_saw(host: AnyHost, cleanup: list[str]) -> None:
    name = unique("boot")
    cleanup.append(name)
    unit = f"pymachine@{name}.service"
    pm(host, "gc")  # any pymachine command installs the template (as a boot would find it)
    host.run(["sh", "-c", f"mkdir -p /etc/pymachine/machines && cat > /etc/pymachine/machines/{name}.toml"],
             check=True, input='image = "busybox"\ncommand = "echo booted; exec sleep 1000"\nvolumes = ["/cache"]\n'
                               '[limits]\nmemory = "48M"\n')
    host.run(["systemctl", "enable", "--now", unit], check=True, timeout=60)
    assert show(host, unit, "ActiveState")["ActiveState"] == "active"
    assert show(host, unit, "MemoryMax")["MemoryMax"] == str(48 * 1024 * 1024), "limits apply at first boot too"
    assert "running" in pm(host, "ps")
    assert name in host.run(["machinectl", "list", "--no-legend"]).stdout
    wait_for(lambda: "booted" in pm(host, "logs", name), what="its output")
    # The next `pymachine start` keeps the state made at boot, anonymous volume included.
    (cache,) = json.loads(pm(host, "inspect", name))[0]["Mounts"]
    pm(host, "stop", "-t", "1", name)
    pm(host, "start", name)
    assert json.loads(pm(host, "inspect", name))[0]["Mounts"][0]["Source"] == cache["Source"]
    host.run(["systemctl", "disable", unit], check=True)


def test_stop_and_rm_of_a_definition_never_started_and_of_a_dir_without_record(host: AnyHost) -> None:
    """What a hand-written definition, or a start killed before its record, leaves: stop has
    nothing to do, rm removes it; rm of what never existed is still an error."""
    name, debris = unique("nv"), unique("db")
    host.run(["sh", "-c", f"mkdir -p /etc/pymachine/machines && printf 'image = \"busybox\"\\n"
                          f"command = [\"sleep\", \"100\"]\\n' > /etc/pymachine/machines/{name}.toml"], check=True)
    stop = host.run(["pymachine", "stop", name])
    assert (stop.returncode, stop.stdout.strip()) == (0, name), stop.stderr
    for n in (name, debris):  # a container dir without container.json
        host.run(["mkdir", "-p", f"/var/lib/pymachine/containers/{n}/upper"], check=True)
    for n in (name, debris):
        rm = host.run(["pymachine", "rm", n])
        assert rm.returncode == 0, rm.stderr
        gone = host.run(["sh", "-c", f"ls -d /var/lib/pymachine/containers/{n} /etc/pymachine/machines/{n}.toml"])
        assert gone.stdout == "", gone.stdout
    again = host.run(["pymachine", "rm", debris])
    assert again.returncode != 0 and "no such container" in again.stderr
    host.assert_no_leftovers()
