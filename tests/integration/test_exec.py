"""`pymachine exec` into detached and foreground containers, checked from inside and from /proc."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest
from ptydrive import Expect, Send, Step, on_pty
from testhost import LocalHost, TestHost

pytestmark = pytest.mark.integration

AnyHost = TestHost | LocalHost
# A user that exists only in the container's /etc/passwd, never on the host.
CTR_USER = "ctronly"
SETUP = (f"echo {CTR_USER}:x:4242:4343:container only:/home/{CTR_USER}:/bin/sh >> /etc/passwd; "
         f"echo ctrgroup:x:4343: >> /etc/group; echo extra:x:5555:{CTR_USER} >> /etc/group; "
         "mkdir -p /work && cd /work && exec sleep 1000")


@pytest.fixture(scope="module")
def box(host: AnyHost) -> Iterator[str]:
    name = f"ex-{secrets.token_hex(3)}"
    host.run(["pymachine", "create", "--name", name, "-e", "FROM_SPEC=yes", "busybox", "sh", "-c", SETUP],
             check=True)
    host.run(["pymachine", "start", name], check=True)
    yield name
    host.run(["pymachine", "rm", "-f", name], timeout=60)
    host.assert_no_leftovers(timeout=15)


def ex(host: AnyHost, *args: str, input: str | None = None) -> tuple[int, str, str]:
    r = host.run(["pymachine", "exec", *args], input=input)
    return r.returncode, r.stdout, r.stderr


def test_exit_codes_and_streams(host: AnyHost, box: str) -> None:
    assert ex(host, box, "true")[0] == 0
    assert ex(host, box, "sh", "-c", "exit 3")[0] == 3
    code, out, err = ex(host, box, "sh", "-c", "echo to-out; echo to-err >&2")
    assert (code, out, err) == (0, "to-out\n", "to-err\n")
    assert ex(host, box, "sh", "-c", "kill -TERM $$")[0] == 128 + 15
    code, _, err = ex(host, box, "no-such-command")
    assert code == 127 and "executable file not found" in err
    code, _, err = ex(host, box, "/etc/passwd")
    assert code == 126


def test_environment_workdir_and_namespaces(host: AnyHost, box: str) -> None:
    code, out, _ = ex(host, "-e", "EXTRA=1", box, "sh", "-c", "echo $FROM_SPEC $EXTRA $HOSTNAME; pwd; hostname")
    assert code == 0
    assert out.splitlines() == [f"yes 1 {box}", "/work", box], "container env, its working directory, its UTS"
    assert ex(host, "-w", "/tmp", box, "pwd")[1] == "/tmp\n"
    code, _, err = ex(host, "-w", "/nonexistent", box, "true")
    assert code == 126 and "/nonexistent" in err
    # PID namespace: the container's init is PID 1 and we see only the container's processes.
    out = ex(host, box, "ps", "-o", "pid,comm")[1]
    assert any(line.split() == ["1", "sleep"] for line in out.splitlines()), out
    # Mount namespace: the container's root, not the host's.
    assert "pymachine-testhost" not in ex(host, box, "cat", "/etc/hostname")[1]
    assert ex(host, box, "test", "-e", "/work/main/.venv")[0] == 1
    # No capability outside the container's bounding set.
    leader = host.run(["pymachine", "inspect", "--format", "{{ .State.Pid }}", box], check=True).stdout.strip()
    bounding = host.run(["grep", "CapBnd", f"/proc/{leader}/status"], check=True).stdout.split()[1]
    assert ex(host, box, "grep", "CapBnd", "/proc/self/status")[1].split()[1] == bounding


def test_exec_gets_the_containers_seccomp_filter(host: AnyHost, box: str) -> None:
    for _ in range(2):  # the second from the program kept for the init's life (exec.cached_confinement)
        code, out, _ = ex(host, box, "grep", "Seccomp:", "/proc/self/status")
        assert (code, out.split()) == (0, ["Seccomp:", "2"])
        code, _, err = ex(host, box, "unshare", "-U", "true")
        assert code != 0 and "Operation not permitted" in err
    kept = host.run(["sh", "-c", f"ls /var/lib/pymachine/containers/{box}/"], check=True).stdout.split()
    assert "exec-seccomp" in kept, kept


def test_no_host_fd_reaches_the_command(host: AnyHost, box: str) -> None:
    out = ex(host, box, "ls", "/proc/self/fd")[1].split()
    # 0, 1, 2 and the directory ls itself opened to list them.
    assert sorted(out)[:3] == ["0", "1", "2"] and len(out) <= 4, out


def test_user_comes_from_the_containers_passwd(host: AnyHost, box: str) -> None:
    assert host.run(["getent", "passwd", CTR_USER]).returncode != 0, "the host must not know this user"
    code, out, _ = ex(host, "-u", CTR_USER, box, "sh", "-c", "id -u; id -g; id -G; echo $HOME")
    assert code == 0
    assert out.split() == ["4242", "4343", "4343", "5555", f"/home/{CTR_USER}"], out
    assert ex(host, "-u", "4242:5555", box, "id", "-g")[1] == "5555\n"
    code, _, err = ex(host, "-u", "nosuchuser", box, "true")
    assert code == 125 and "nosuchuser" in err


def test_attached_to_the_units_cgroup(host: AnyHost, box: str) -> None:
    proc = host.popen(["pymachine", "exec", box, "sleep", "7.5"])
    try:
        unit = f"pymachine@{box}.service"
        deadline = time.monotonic() + 10
        while "sleep 7.5" not in host.run(["systemd-cgls", "--no-pager", "-u", unit]).stdout:
            assert time.monotonic() < deadline, "the exec'd process never showed up in the unit's cgroup"
            time.sleep(0.1)
        # Same cgroup as the container's init, as seen from inside its cgroup namespace.
        inside = ex(host, box, "sh", "-c", "cat /proc/self/cgroup | grep -v name=")[1]
        assert all(line.endswith(":/") for line in inside.splitlines()), inside
    finally:
        proc.kill()
        proc.wait(10)


def test_tty(host: AnyHost, box: str) -> None:
    code, out, _ = ex(host, "-t", box, "tty")
    assert code == 0 and out.strip().startswith("/dev/pts/"), out
    code, out, _ = ex(host, "-it", box, "sh", "-c", "read line; echo got:$line", input="hello\n")
    assert code == 0 and "got:hello" in out


def test_exec_into_a_foreground_container(host: AnyHost) -> None:
    name = f"fgx-{secrets.token_hex(3)}"
    proc = host.popen(["pymachine", "run", "--rm", "--name", name, "busybox", "sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while name not in host.run(["machinectl", "list", "--no-legend"]).stdout:
            assert time.monotonic() < deadline, "the foreground container never registered"
            time.sleep(0.1)
        assert ex(host, name, "hostname")[1] == f"{name}\n"
        assert ex(host, name, "sh", "-c", "exit 4")[0] == 4
    finally:
        host.run(["machinectl", "kill", "--signal=KILL", name])
        proc.wait(30)
    assert name not in host.run(["machinectl", "list", "--no-legend"]).stdout
    assert name not in host.run(["systemctl", "list-units", "--all", "--no-legend", "machine-*.scope"]).stdout


def test_exec_into_nothing(host: AnyHost) -> None:
    code, _, err = ex(host, "no-such-container", "true")
    assert code == 125 and "no such container: no-such-container" in err, err
    name = f"made-{secrets.token_hex(3)}"
    assert host.run(["pymachine", "create", "--name", name, "busybox", "true"]).returncode == 0
    try:
        code, _, err = ex(host, name, "true")
        assert code == 125 and f"container {name} is not running" in err, err
    finally:
        host.run(["pymachine", "rm", name])


# Where the shell's prompt ends (busybox ash as root, in /).
PROMPT = "/ # "


@pytest.mark.parametrize("mode", ["run", "exec"])
def test_interactive_tty_window_size_and_ctrl_c(host: AnyHost, mode: str) -> None:
    name = f"it-{secrets.token_hex(3)}"
    if mode == "run":
        argv = ["pymachine", "run", "--rm", "-it", "--name", name, "busybox", "sh"]
    else:
        host.run(["pymachine", "run", "-d", "--name", name, "busybox", "sleep", "1000"], check=True)
        argv = ["pymachine", "exec", "-it", name, "sh"]
    steps: list[Step] = [
        Expect(PROMPT), Send("tty; stty size\n"), Expect("\n40 100"), Expect(PROMPT),
        # The marker comes from the process Ctrl-C is for, once it is the terminal's foreground: a
        # Ctrl-C typed while the shell is still starting it would be the shell's, and ignored.
        Send("sh -c 'echo sleeping-$((6*7)); exec sleep 100'; echo sleep-ended-$?\n"), Expect("sleeping-42"),
        # The prompt comes back at once, well before `sleep 100` could have ended on its own.
        Send("\x03"), Expect(PROMPT, timeout=30),
        Send("exit 7\n"),
    ]
    try:
        session = on_pty(host, argv, steps, size=(40, 100))
    finally:
        if mode == "exec":
            host.run(["pymachine", "rm", "-f", name], timeout=60)
    out = session.output
    assert "/dev/pts/" in out, out
    # Ctrl-C is a byte that pymachine passes on: the container's terminal turns it into SIGINT (and echoes it).
    assert "^C" in out.split("sleeping-42\r\n", 1)[-1], "Ctrl-C must reach the container's foreground process: " + out
    assert session.exit_code == 7, out
