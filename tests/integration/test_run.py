"""`pymachine run` against the real systemd, machined and journald of the test host.

Each test checks the outcome with the clients an admin would use: systemctl show,
machinectl, journalctl, findmnt and /proc.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import time

import pytest
from helpers import AnyHost, machine_names, pm, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


def test_done_when_of_the_skeleton_issue(host: AnyHost) -> None:
    """The issue's own check: hello, the name as hostname, scope + limit + machine while it runs,
    the journal afterwards, nothing left behind."""
    proc = host.popen(["pymachine", "run", "--rm", "--name", "t1", "--memory", "64M", "busybox",
                       "sh", "-c", "echo hello; hostname; sleep 3"])
    wait_until(lambda: "t1" in machine_names(host), what="machine t1 in machinectl list")
    shown = host.run(["systemctl", "show", "machine-t1.scope", "-p", "MemoryMax", "-p", "Slice", "-p", "ActiveState"],
                     check=True).stdout
    assert "MemoryMax=67108864" in shown and "Slice=machine.slice" in shown and "ActiveState=active" in shown
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["hello", "t1"]
    journal = host.run(["journalctl", "CONTAINER_NAME=t1", "-o", "cat", "--no-pager"], check=True).stdout
    assert "hello" in journal.splitlines()
    assert host.run(["test", "-e", "/var/lib/pymachine/containers/t1"]).returncode != 0


def test_exit_code_is_the_commands(host: AnyHost) -> None:
    assert pm(host, "run", "--rm", "busybox", "sh", "-c", "exit 7").returncode == 7


@pytest.mark.parametrize(("name", "closed"), [("closed-in", "<&-"), ("closed-out", ">&-"), ("closed-err", "2>&-"),
                                            ("closed-all", "<&- >&- 2>&-")])
def test_closed_standard_fds_keep_the_exit_code_and_the_journal(host: AnyHost, name: str, closed: str) -> None:
    """Started with stdin, stdout or stderr closed, pymachine makes them /dev/null: no pipe or
    D-Bus socket takes their numbers, and the exit code and the journal are as usual."""
    r = host.run(["sh", "-c", f"pymachine run --rm --name {name} busybox sh -c 'echo out-{name}; echo err >&2; "
                  f"exit 3' {closed}"])
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    journal = host.run(["journalctl", f"CONTAINER_NAME={name}", "-o", "cat", "--no-pager"], check=True).stdout
    assert f"out-{name}" in journal.splitlines()
    assert name not in machine_names(host)


def test_killed_by_signal_gives_128_plus_n(host: AnyHost) -> None:
    proc = host.popen(["pymachine", "run", "--rm", "--name", "sig", "busybox", "sleep", "60"])
    wait_until(lambda: "sig" in machine_names(host), what="machine sig")
    leader = host.run(["machinectl", "show", "sig", "-p", "Leader", "--value"], check=True).stdout.strip()
    # the payload runs: the machine is registered before the held init is released
    wait_until(lambda: "sleep" in host.run(["cat", f"/proc/{leader}/comm"]).stdout, what="the payload's exec")
    host.run(["kill", "-KILL", leader], check=True)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL


def test_journal_fields_and_unit_attribution(host: AnyHost) -> None:
    r = pm(host, "run", "--rm", "--name", "logs1", "busybox", "sh", "-c", "echo to-out; echo to-err >&2")
    assert r.returncode == 0
    assert r.stdout == "to-out\n" and r.stderr == "to-err\n"  # the terminal copy keeps the streams apart
    raw = host.run(["journalctl", "CONTAINER_NAME=logs1", "-o", "json", "--no-pager"], check=True).stdout
    entries = {e["MESSAGE"]: e for e in map(json.loads, raw.splitlines())}
    out, err = entries["to-out"], entries["to-err"]
    assert out["PRIORITY"] == "6" and err["PRIORITY"] == "3"
    for e in (out, err):
        assert e["_SYSTEMD_UNIT"] == "machine-logs1.scope"
        assert e["SYSLOG_IDENTIFIER"] == "logs1" and e["IMAGE_NAME"] == "busybox:latest"
        assert len(e["CONTAINER_ID"]) == 12 and e["CONTAINER_ID_FULL"].startswith(e["CONTAINER_ID"])
    by_unit = host.run(["journalctl", "-u", "machine-logs1.scope", "-o", "cat", "--no-pager"], check=True).stdout
    assert "to-out" in by_unit and "to-err" in by_unit


def test_limits_are_unit_properties(host: AnyHost) -> None:
    proc = host.popen(["pymachine", "run", "--rm", "--name", "lim", "--memory", "128M", "--cpus", "0.5",
                       "--pids-limit", "20", "busybox", "sleep", "5"])
    try:
        wait_until(lambda: "lim" in machine_names(host), what="machine lim")
        wait_until(lambda: _state_of(host, "lim") == "running", what="container lim running")
        shown = dict(line.split("=", 1) for line in host.run(
            ["systemctl", "show", "machine-lim.scope", "-p", "MemoryMax", "-p", "CPUQuotaPerSecUSec",
             "-p", "TasksMax", "-p", "DevicePolicy", "-p", "Delegate"], check=True).stdout.splitlines())
        assert shown == {"MemoryMax": str(128 << 20), "CPUQuotaPerSecUSec": "500ms", "TasksMax": "20",
                         "DevicePolicy": "closed", "Delegate": "yes"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_machined_registration(host: AnyHost) -> None:
    proc = host.popen(["pymachine", "run", "--rm", "--name", "reg", "busybox", "sleep", "5"])
    try:
        wait_until(lambda: "reg" in machine_names(host), what="machine reg")
        show = dict(line.split("=", 1) for line in host.run(
            ["machinectl", "show", "reg"], check=True).stdout.splitlines() if "=" in line)
        assert show["Class"] == "container" and show["Service"] == "pymachine"
        assert show["Unit"] == "machine-reg.scope" and show["State"] == "running"
        assert show["RootDirectory"] == "/var/lib/pymachine/containers/reg/rootfs"
        leader = int(show["Leader"])
        # the leader is the container's PID 1: its own PID namespace sees it as 1
        status = host.run(["cat", f"/proc/{leader}/status"], check=True).stdout
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
        assert nspid.split()[1:] == [str(leader), "1"]
        # Registered before the payload runs (the release's second step): wait for its exec.
        wait_until(lambda: "sleep" in host.run(["cat", f"/proc/{leader}/comm"], check=True).stdout,
                   what="the payload's exec")
        assert "machine-reg.scope" in host.run(["machinectl", "status", "reg"], check=True).stdout
        # what machined's CreateMachine would have given the scope, too
        scope = host.run(["systemctl", "show", "machine-reg.scope", "-p", "Delegate", "-p", "TasksMax"],
                         check=True).stdout.split()
        assert scope == ["Delegate=yes", "TasksMax=16384"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def test_a_machine_name_held_elsewhere_fails_cleanly(host: AnyHost) -> None:
    """machined refuses the name after systemd made the scope: the error says so, and the
    scope, the container dir and the other holder's machine are as they were."""
    host.run(["systemd-run", "--unit", "holder-of-taken", "sleep", "300"], check=True)
    try:
        pid = host.run(["systemctl", "show", "holder-of-taken", "-p", "MainPID", "--value"], check=True).stdout.strip()
        host.run(["busctl", "call", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                  "org.freedesktop.machine1.Manager", "RegisterMachine", "sayssus", "taken", "0", "other",
                  "container", pid, "/"], check=True)
        r = pm(host, "run", "--rm", "--name", "taken", "busybox", "echo", "payload-ran")
        assert r.returncode == 125 and "payload-ran" not in r.stdout
        assert r.stderr.startswith("pymachine: cannot register machine taken") and "exists" in r.stderr
        assert host.run(["systemctl", "is-active", "machine-taken.scope"]).stdout.strip() == "inactive"
        assert host.run(["test", "-e", "/var/lib/pymachine/containers/taken"]).returncode != 0
        unit = host.run(["machinectl", "show", "taken", "-p", "Unit", "--value"], check=True).stdout.strip()
        assert unit == "holder-of-taken.service"
    finally:
        host.run(["systemctl", "stop", "holder-of-taken"])
        wait_until(lambda: "taken" not in machine_names(host), what="machine taken gone")


def test_machinectl_terminate_ends_run_and_cleans_up(host: AnyHost) -> None:
    proc = host.popen(["pymachine", "run", "--rm", "--name", "term", "busybox", "sleep", "60"])
    wait_until(lambda: "term" in machine_names(host), what="machine term")
    started = time.monotonic()
    host.run(["machinectl", "terminate", "term"], check=True)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert time.monotonic() - started < 20
    assert "term" not in machine_names(host)


def test_ctrl_c_stops_the_container(host: AnyHost) -> None:
    proc = host.popen(["pymachine", "run", "--name", "intr", "busybox", "sleep", "60"])
    try:
        wait_until(lambda: "intr" in machine_names(host), what="machine intr")
        wait_until(lambda: _state_of(host, "intr") == "running", what="container intr running")
        proc.send_signal(signal.SIGINT)  # PID 1 (sleep) ignores SIGINT: pymachine kills it after its grace period
        proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGKILL
        record = json.loads(host.run(["cat", "/var/lib/pymachine/containers/intr/container.json"], check=True).stdout)
        assert record["state"] == "exited" and record["exit_code"] == 137
    finally:
        host.run(["rm", "-rf", "/var/lib/pymachine/containers/intr"], check=True)


def test_sigterm_during_setup_cancels_cleanly(host: AnyHost) -> None:
    """SIGTERM at any point of the start leaves nothing behind. (Not SIGINT: sh starts
    background jobs with SIGINT ignored.)"""
    for delay in ("0", "0.01", "0.03", "0.06", "0.1"):
        r = host.run(["sh", "-c", f"pymachine run --rm --name early busybox sleep 30 & p=$!; sleep {delay};"
                      " kill -TERM $p; wait $p"], timeout=60)
        assert r.returncode in (143, 137), r.stderr
        assert "early" not in machine_names(host)
        assert host.run(["test", "-e", "/var/lib/pymachine/containers/early"]).returncode != 0


def _state_of(host: AnyHost, name: str) -> str:
    r = host.run(["cat", f"/var/lib/pymachine/containers/{name}/container.json"])
    return str(json.loads(r.stdout)["state"]) if r.returncode == 0 else ""


def test_rm_f_of_a_foreground_run_kills_it_and_waits_for_its_teardown(host: AnyHost) -> None:
    """docker rm -f: the container dies at once (its `sleep` as PID 1 ignores SIGTERM), the run in
    the other terminal exits 137 after its own teardown, and only then is the directory removed."""
    proc = host.popen(["pymachine", "run", "--name", "fgrm", "busybox", "sleep", "60"])
    wait_until(lambda: "fgrm" in machine_names(host), what="machine fgrm")
    r = pm(host, "rm", "-f", "fgrm")
    assert r.returncode == 0, r.stderr
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL and err == "", err
    assert host.run(["test", "-e", "/var/lib/pymachine/containers/fgrm"]).returncode != 0
    assert "fgrm" not in machine_names(host)


@pytest.mark.parametrize(("timeout", "code"), [("10", 3), ("0", 128 + signal.SIGKILL)])
def test_stop_of_a_foreground_run_is_sigterm_then_sigkill_after_its_timeout(host: AnyHost, timeout: str,
                                                                           code: int) -> None:
    """pymachine stop [-t N] of a `run` in another terminal, as docker stop: SIGTERM to the init
    (which traps it: exit 3), or with -t 0 SIGKILL at once (137); the run exits with that code."""
    name = f"fgstop{timeout}"
    proc = host.popen(["pymachine", "run", "--rm", "--name", name, "busybox", "sh", "-c",
                       "trap 'exit 3' TERM; echo ready; while :; do sleep 1; done"])
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    assert pm(host, "stop", "-t", timeout, name).returncode == 0
    proc.communicate(timeout=30)
    assert proc.returncode == code
    assert name not in machine_names(host)


def test_without_rm_the_container_dir_stays_with_its_exit(host: AnyHost) -> None:
    assert pm(host, "run", "--name", "keep", "busybox", "sh", "-c", "echo data > /kept; exit 3").returncode == 3
    record = json.loads(host.run(["cat", "/var/lib/pymachine/containers/keep/container.json"], check=True).stdout)
    assert record["state"] == "exited" and record["exit_code"] == 3 and record["image"]["name"] == "busybox:latest"
    assert host.run(["cat", "/var/lib/pymachine/containers/keep/upper/kept"], check=True).stdout == "data\n"
    again = pm(host, "run", "--name", "keep", "busybox", "true")
    assert again.returncode == 125 and "already in use" in again.stderr
    host.run(["rm", "-rf", "/var/lib/pymachine/containers/keep"], check=True)


def test_generated_names_are_unique(host: AnyHost) -> None:
    names = set()
    for _ in range(2):
        r = pm(host, "run", "--rm", "busybox", "hostname")
        assert r.returncode == 0
        names.add(r.stdout.strip())
    assert len(names) == 2 and all(re.fullmatch(r"[a-z]+-[a-z]+[0-9]*", n) for n in names)


def test_namespaces(host: AnyHost) -> None:
    script = ("echo pid=$$; hostname; ls /proc | grep -c '^[0-9]'; readlink /proc/self/ns/ipc;"
              " readlink /proc/self/ns/mnt; readlink /proc/self/ns/net; readlink /proc/self/ns/cgroup;"
              " cat /proc/self/cgroup")
    r = pm(host, "run", "--rm", "--name", "ns1", "--hostname", "box", "busybox", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "pid=1" and lines[1] == "box"
    assert int(lines[2]) <= 3  # sh, ls, grep: nothing of the host's
    mine = {name: host.run(["readlink", f"/proc/self/ns/{name}"], check=True).stdout.strip()
            for name in ("ipc", "mnt", "net", "cgroup")}
    assert lines[3] != mine["ipc"] and lines[4] != mine["mnt"] and lines[6] != mine["cgroup"]
    assert lines[5] != mine["net"]  # bridge is the default (as docker): a network namespace of its own
    assert all(line.endswith(":/") for line in lines[7:])  # the cgroup namespace roots at the scope


@pytest.mark.parametrize("mode", ["none", "private"])
def test_private_network_has_only_loopback_up(host: AnyHost, mode: str) -> None:
    r = pm(host, "run", "--rm", "--network", mode, "busybox", "sh", "-c", "ip -o link; ping -c1 -W1 127.0.0.1")
    assert r.returncode == 0, r.stderr
    links = [line.split(":")[1].strip() for line in r.stdout.splitlines() if ": " in line and "link/" in line]
    assert links == ["lo"]
    assert "UP" in r.stdout.splitlines()[0]


NET_RAW = 1 << 13  # linux/capability.h


def test_host_network_has_no_net_raw(host: AnyHost) -> None:
    """On the host's own interfaces CAP_NET_RAW would capture the host's traffic (AF_PACKET)."""
    def bounding(*args: str) -> int:
        r = pm(host, "run", "--rm", *args, "busybox", "grep", "CapBnd", "/proc/self/status")
        assert r.returncode == 0, r.stderr
        return int(r.stdout.split()[1], 16)

    assert not bounding("--network", "host") & NET_RAW
    assert bounding() & NET_RAW, "bridge, the default, keeps NET_RAW: its interfaces are its own"
    assert bounding("--network", "none") & NET_RAW


def test_rootfs_mounts(host: AnyHost) -> None:
    r = pm(host, "run", "--rm", "busybox", "sh", "-c", "cat /proc/self/mountinfo; ls /dev; ls -l /dev/ptmx")
    assert r.returncode == 0, r.stderr
    mounts = {}
    for line in r.stdout.splitlines():
        fields = line.split()
        if len(fields) > 6 and "-" in fields:
            sep = fields.index("-")
            mounts[fields[4]] = (fields[sep + 1], fields[5])
    assert mounts["/"][0] == "overlay"
    assert mounts["/proc"][0] == "proc"
    assert mounts["/sys"][0] == "sysfs" and mounts["/sys"][1].startswith("ro")
    assert mounts["/dev"][0] == "tmpfs" and mounts["/dev/pts"][0] == "devpts" and mounts["/dev/shm"][0] == "tmpfs"
    assert mounts["/run"][0] == "tmpfs" and mounts["/tmp"][0] == "tmpfs"
    assert mounts["/proc/sys"][1].startswith("ro")
    for node in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "fd", "stdin", "stdout", "stderr"):
        assert node in r.stdout.split()
    assert "-> pts/ptmx" in r.stdout


def test_container_mounts_never_reach_the_host(host: AnyHost) -> None:
    before = host.run(["cat", "/proc/self/mountinfo"], check=True).stdout
    proc = host.popen(["pymachine", "run", "--rm", "--name", "mnt", "busybox", "sleep", "3"])
    wait_until(lambda: "mnt" in machine_names(host), what="machine mnt")
    during = host.run(["findmnt", "-rn", "-o", "TARGET"], check=True).stdout
    assert "/var/lib/pymachine/containers/mnt" not in during
    proc.communicate(timeout=30)
    after = host.run(["cat", "/proc/self/mountinfo"], check=True).stdout
    assert len(after.splitlines()) == len(before.splitlines())


def test_security_defaults(host: AnyHost) -> None:
    r = pm(host, "run", "--rm", "busybox", "sh", "-c",
           "grep CapBnd /proc/self/status; cat /proc/kcore | wc -c; echo 1 > /proc/sys/kernel/hostname || echo ro;"
           " ls /proc/self/fd")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    cap_bnd = int(lines[0].split()[1], 16)
    assert cap_bnd & (1 << 21) == 0 and cap_bnd & (1 << 16) == 0  # no SYS_ADMIN, no SYS_MODULE
    assert cap_bnd & (1 << 0)  # CHOWN stays
    assert lines[1] == "0"  # /proc/kcore is /dev/null
    assert "ro" in lines
    assert sorted(lines[3:]) == ["0", "1", "2", "3"]  # ls's own directory fd: no host fd leaked in


def test_seccomp_filter_denies_user_namespaces_and_keyrings(host: AnyHost) -> None:
    """The policy's seccomp deny-list is in force for the payload (mode 2 = filter)."""
    r = pm(host, "run", "--rm", "busybox", "sh", "-c",
           "grep Seccomp: /proc/self/status; unshare -U true && echo userns-made; true")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split() == ["Seccomp:", "2"]
    assert "userns-made" not in r.stdout and "Operation not permitted" in r.stderr


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["--name", "bad/name", "busybox", "true"], 125, "invalid container name"),
    (["--name", "..x", "busybox", "true"], 125, "invalid container name"),
    (["--memory", "lots", "busybox", "true"], 125, "invalid memory limit"),
    (["--cpus", "0", "busybox", "true"], 125, "invalid CPU count"),
    (["--pids-limit", "-1", "busybox", "true"], 125, "invalid pids limit"),
    (["--name", "nf", "no-such-image", "true"], 125, "no such image"),
    (["--name", "nf2", "busybox", "no-such-command"], 127, "executable file not found"),
    (["--name", "nx", "busybox", "/etc/passwd"], 126, "cannot run"),
    (["--name", "nwd", "-w", "/nope", "busybox", "pwd"], 126, "cannot change to working directory /nope"),
    (["--name", "nu", "-u", "nosuch", "busybox", "true"], 126, "no user 'nosuch' in the container's /etc/passwd"),
    (["--name", "nu2", "-u", "a:b:c", "busybox", "true"], 125, "invalid user"),
])
def test_bad_input_is_one_clear_line_and_leaves_nothing(host: AnyHost, argv: list[str], code: int,
                                                         message: str) -> None:
    r = pm(host, "run", "--rm", *argv)
    assert r.returncode == code
    assert message in r.stderr and r.stderr.startswith("pymachine:")
    assert len(r.stderr.strip().splitlines()) <= 2  # the message and at most a hint
    leftovers = host.run(["ls", "/var/lib/pymachine/containers"]).stdout.split()
    assert leftovers == []


def test_run_as_a_user_of_the_containers_passwd(host: AnyHost) -> None:
    """-u as with docker: ids from the container's own /etc/passwd and /etc/group, HOME from
    passwd, no capabilities left; a number no entry names is used as it is."""
    show = "id -u; id -g; echo $HOME; grep -E '^Cap(Eff|Prm):' /proc/self/status | cut -f2"
    out = pm(host, "run", "--rm", "-u", "nobody", "busybox", "sh", "-c", show).stdout.split()
    assert out == ["65534", "65534", "/nonexistent", "0000000000000000", "0000000000000000"], out
    out = pm(host, "run", "--rm", "-u", "4242:nogroup", "busybox", "sh", "-c", show).stdout.split()
    assert out[:3] == ["4242", "65534", "/"], out
    root = pm(host, "run", "--rm", "busybox", "sh", "-c", show).stdout.split()
    assert root[:3] == ["0", "0", "/root"] and root[3] != "0000000000000000", root
    assert pm(host, "run", "--rm", "-u", "nobody", "-e", "HOME=/h", "busybox", "sh", "-c",
              "echo $HOME").stdout.strip() == "/h"


def test_kill_9_of_pymachine_takes_the_container_down(host: AnyHost) -> None:
    proc = host.popen(["pymachine", "run", "--rm", "--name", "orphan", "busybox", "sleep", "60"])
    wait_until(lambda: "orphan" in machine_names(host), what="machine orphan")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    wait_until(lambda: "orphan" not in machine_names(host), what="machine orphan gone")
    host.run(["rm", "-rf", "/var/lib/pymachine/containers/orphan"], check=True)


def test_host_files_untouched_by_a_hostile_image(host: AnyHost) -> None:
    """An image whose /proc is a symlink to a host directory must not get /proc mounted there."""
    script = (
        "set -e; d=$(mktemp -d /var/lib/hostile.XXXX); mkdir -p $d/bin $d/etc;"
        " cp /bin/busybox $d/bin/; ln -s busybox $d/bin/sh; ln -s /var/lib/victim $d/proc;"
        " mkdir -p /var/lib/victim; tar -C $d -cf /var/lib/hostile.tar .; rm -rf $d")
    host.run(["sh", "-c", script], check=True)
    assert pm(host, "image", "import", "/var/lib/hostile.tar", "--name", "hostile", "--quiet").returncode == 0
    r = pm(host, "run", "--rm", "--name", "hostile", "hostile", "/bin/sh", "-c", "true")
    assert r.returncode == 125 and "symlink" in r.stderr
    # Detached, the setup process of pymachine@hostile-d.service meets it and says so, too.
    r = pm(host, "run", "-d", "--name", "hostile-d", "hostile", "/bin/sh", "-c", "true")
    assert r.returncode == 125 and "symlink" in r.stderr, r.stderr
    assert pm(host, "rm", "-f", "hostile-d").returncode == 0
    assert host.run(["ls", "-A", "/var/lib/victim"], check=True).stdout == ""
    pm(host, "image", "rm", "hostile")
    host.run(["rm", "-rf", "/var/lib/victim", "/var/lib/hostile.tar"], check=True)


def test_kill_names_what_is_wrong(host: AnyHost) -> None:
    r = pm(host, "kill", "no-such-container")
    assert r.returncode == 125 and "no such container: no-such-container" in r.stderr, r.stderr
    name = f"made-{secrets.token_hex(3)}"
    assert pm(host, "create", "--name", name, "busybox", "true").returncode == 0
    try:
        r = pm(host, "kill", name)
        assert r.returncode == 125 and f"container {name} is not running" in r.stderr, r.stderr
    finally:
        pm(host, "rm", name)
