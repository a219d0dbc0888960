"""Issue #13's attacks and docker's security flags, each seen from inside the container.

The seccomp allow-list (io_uring denied, a second ABI refused), --cap-add/--cap-drop,
--privileged, --security-opt (no-new-privileges, seccomp=unconfined, a custom profile),
--sysctl, --group-add, --device and one device policy for foreground and detached
containers, and container output never parsed for syslog priority prefixes."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from helpers import AnyHost, pm, wait_until

pytestmark = [pytest.mark.integration]

CAP_NET_ADMIN = 12
CAP_CHOWN = 0
# A static probe (no libc needed in the image): io_uring_setup, and the x32 ABI's getpid.
PROBE_C = r"""
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    char params[120];
    memset(params, 0, sizeof params);
    long rc = syscall(SYS_io_uring_setup, 1, params);
    printf("io_uring_setup=%s\n", rc < 0 ? strerror(errno) : "allowed");
#ifdef __x86_64__
    rc = syscall(0x40000000 | SYS_getpid);
    printf("x32=%s\n", rc < 0 ? strerror(errno) : "allowed");
#endif
    return 0;
}
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def run(host: AnyHost, *args: str) -> tuple[int, str, str]:
    r = pm(host, "run", "--rm", *args)
    return r.returncode, r.stdout, r.stderr


def status_field(host: AnyHost, field: str, *flags: str) -> str:
    code, out, err = run(host, *flags, "busybox", "grep", f"^{field}:", "/proc/self/status")
    assert code == 0, err
    return out.split(":", 1)[1].strip()


@pytest.fixture(scope="module")
def probe(host: AnyHost) -> Iterator[str]:
    d = f"/var/tmp/{unique('probe')}"
    host.run(["mkdir", "-p", d], check=True)
    host.run(["sh", "-c", f"cat > {d}/probe.c"], input=PROBE_C, check=True)
    host.run(["gcc", "-static", "-Os", "-o", f"{d}/probe", f"{d}/probe.c"], check=True)
    yield d
    host.run(["rm", "-rf", d])


@pytest.fixture
def cleanup(host: AnyHost) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        host.run(["pymachine", "rm", "-f", "-v", name], timeout=60)
    host.assert_no_leftovers(timeout=15)


# -- seccomp ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_leftovers")
def test_default_profile_denies_io_uring_and_a_second_abi(host: AnyHost, probe: str) -> None:
    code, out, err = run(host, "-v", f"{probe}:/probe:ro", "busybox", "/probe/probe")
    assert code == 0, err
    assert "io_uring_setup=Operation not permitted" in out
    if "x32=" in out:
        assert "x32=Function not implemented" in out
    assert status_field(host, "Seccomp") == "2"  # a filter is installed


@pytest.mark.usefixtures("no_leftovers")
def test_seccomp_unconfined_installs_no_filter(host: AnyHost, probe: str) -> None:
    code, out, err = run(host, "--security-opt", "seccomp=unconfined", "-v", f"{probe}:/probe:ro", "busybox",
                         "/probe/probe")
    assert code == 0, err
    assert "io_uring_setup=Operation not permitted" not in out
    assert status_field(host, "Seccomp", "--security-opt", "seccomp=unconfined") == "0"


@pytest.mark.usefixtures("no_leftovers")
def test_custom_profile_denying_mkdir(host: AnyHost) -> None:
    path = f"/var/tmp/{unique('profile')}.json"
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    host.run(["sh", "-c", f"cat > {path}"], input=json.dumps(profile), check=True)
    try:
        code, _out, err = run(host, "--security-opt", f"seccomp={path}", "busybox", "mkdir", "/tmp/d")
        assert code != 0 and "Permission denied" in err
        code, _out, err = run(host, "busybox", "mkdir", "/tmp/d")
        assert code == 0, err
    finally:
        host.run(["rm", "-f", path])


@pytest.mark.usefixtures("no_leftovers")
def test_bad_profile_is_one_line_and_125(host: AnyHost) -> None:
    path = f"/var/tmp/{unique('profile')}.json"
    host.run(["sh", "-c", f"echo '{{\"defaultAction\": \"NOPE\"}}' > {path}"], check=True)
    try:
        for opt in (f"seccomp={path}", "seccomp=/does/not/exist.json", "apparmor=x"):
            code, _out, err = run(host, "--security-opt", opt, "busybox", "true")
            assert code == 125 and len(err.strip().splitlines()) <= 2, err
    finally:
        host.run(["rm", "-f", path])


# -- capabilities ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_leftovers")
def test_cap_add_net_admin_lets_root_configure_its_private_network(host: AnyHost) -> None:
    cmd = ("busybox", "ip", "link", "set", "lo", "mtu", "1300")
    code, _out, _err = run(host, "--network", "private", *cmd)
    assert code != 0  # NET_ADMIN is not among docker's defaults
    code, _out, err = run(host, "--network", "private", "--cap-add", "NET_ADMIN", *cmd)
    assert code == 0, err
    assert int(status_field(host, "CapEff", "--cap-add", "cap_net_admin"), 16) & (1 << CAP_NET_ADMIN)


@pytest.mark.usefixtures("no_leftovers")
def test_cap_drop_all_leaves_root_nothing(host: AnyHost) -> None:
    assert int(status_field(host, "CapEff", "--cap-drop", "ALL"), 16) == 0
    assert int(status_field(host, "CapBnd", "--cap-drop", "ALL"), 16) == 0
    code, _out, _err = run(host, "--cap-drop", "ALL", "busybox", "sh", "-c", "touch /tmp/f && chown 1:1 /tmp/f")
    assert code != 0
    code, _out, err = run(host, "--cap-drop", "ALL", "--cap-add", "CHOWN", "busybox", "sh", "-c",
                          "touch /tmp/f && chown 1:1 /tmp/f")
    assert code == 0, err


@pytest.mark.usefixtures("no_leftovers")
def test_privileged_has_every_capability_and_no_filter(host: AnyHost) -> None:
    assert status_field(host, "Seccomp", "--privileged") == "0"
    assert int(status_field(host, "CapEff", "--privileged"), 16) & (1 << 21)  # SYS_ADMIN


@pytest.mark.usefixtures("no_leftovers")
def test_no_new_privileges_and_group_add(host: AnyHost) -> None:
    assert status_field(host, "NoNewPrivs", "--security-opt", "no-new-privileges") == "1"
    assert status_field(host, "NoNewPrivs") == "0"
    code, out, err = run(host, "--group-add", "1234", "--group-add", "nogroup", "busybox", "id", "-G")
    assert code == 0, err
    assert {"1234", "65534"} <= set(out.split())
    # root with an extra group keeps docker's capabilities only (setuid(0) clears nothing).
    assert int(status_field(host, "CapEff", "--group-add", "1234"), 16) == \
        int(status_field(host, "CapEff"), 16)


def test_cap_errors_are_125(host: AnyHost) -> None:
    code, _out, err = run(host, "--cap-add", "NOT_A_CAP", "busybox", "true")
    assert code == 125 and "NOT_A_CAP" in err


# -- sysctls --------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_leftovers")
def test_namespaced_sysctls_are_set_and_others_refused(host: AnyHost) -> None:
    before = host.run(["cat", "/proc/sys/kernel/shmmni"], check=True).stdout
    code, out, err = run(host, "--sysctl", "kernel.shmmni=1234", "busybox", "cat", "/proc/sys/kernel/shmmni")
    assert code == 0 and out.strip() == "1234", err
    assert host.run(["cat", "/proc/sys/kernel/shmmni"], check=True).stdout == before
    code, out, err = run(host, "--network", "private", "--sysctl", "net.ipv4.ip_forward=1", "busybox", "cat",
                         "/proc/sys/net/ipv4/ip_forward")
    assert code == 0 and out.strip() == "1", err
    for bad in (("--sysctl", "kernel.hostname=x"), ("--sysctl", "vm.swappiness=1"),
                ("--network", "host", "--sysctl", "net.ipv4.ip_forward=1")):  # the last: the host's own
        code, _out, err = run(host, *bad, "busybox", "true")
        assert code == 125 and len(err.strip().splitlines()) <= 2, err


# -- devices ---------------------------------------------------------------------------------------------


TUN_OPEN = "mknod /tmp/tun c 10 200 && cat /tmp/tun"


def test_tun_is_refused_alike_in_foreground_and_detached_containers(host: AnyHost, cleanup: list[str]) -> None:
    # The device cgroup answers EPERM; an allowed tun answers EBADFD ("bad state") to a read.
    code, _out, err = run(host, "busybox", "sh", "-c", TUN_OPEN)
    assert code != 0 and "Operation not permitted" in err, err
    name = unique("tun")
    cleanup.append(name)
    r = pm(host, "run", "-d", "--name", name, "busybox", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    allow = host.run(["systemctl", "show", "-p", "DeviceAllow", f"pymachine@{name}.service"], check=True).stdout
    assert "/dev/net/tun" not in allow
    r = pm(host, "exec", name, "sh", "-c", TUN_OPEN)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr


def test_device_flag_makes_the_node_and_allows_it(host: AnyHost, cleanup: list[str]) -> None:
    code, out, err = run(host, "--device", "/dev/net/tun", "busybox", "sh", "-c",
                         "ls -l /dev/net/tun; cat /dev/net/tun")
    assert "10,  200" in out or "10, 200" in out, out + err
    assert "Operation not permitted" not in err and "bad state" in err, err
    name = unique("dev")
    cleanup.append(name)
    r = pm(host, "create", "--name", name, "--device", "/dev/net/tun:/dev/mytun:rw", "busybox", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    assert pm(host, "start", name).returncode == 0
    allow = host.run(["systemctl", "show", "-p", "DeviceAllow", f"pymachine@{name}.service"], check=True).stdout
    assert "/dev/net/tun rw" in allow
    r = pm(host, "exec", name, "sh", "-c", "cat /dev/mytun")
    assert "bad state" in r.stderr, r.stderr
    devices = json.loads(pm(host, "inspect", name).stdout)[0]["HostConfig"]["Devices"]
    assert devices == [{"PathOnHost": "/dev/net/tun", "PathInContainer": "/dev/mytun", "CgroupPermissions": "rw"}]
    code, _out, err = run(host, "--device", "/etc/passwd:/dev/x", "busybox", "true")
    assert code == 125 and "not a device" in err


# -- inspect and exec -----------------------------------------------------------------------------------------


def test_inspect_fields_and_exec_confinement(host: AnyHost, cleanup: list[str]) -> None:
    name = unique("sec")
    cleanup.append(name)
    r = pm(host, "run", "-d", "--name", name, "--cap-add", "NET_ADMIN", "--cap-drop", "CAP_MKNOD",
           "--security-opt", "no-new-privileges", "--sysctl", "kernel.msgmax=4096", "--group-add", "42",
           "busybox", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    hc = json.loads(pm(host, "inspect", name).stdout)[0]["HostConfig"]
    assert hc["CapAdd"] == ["NET_ADMIN"] and hc["CapDrop"] == ["MKNOD"] and hc["Privileged"] is False
    assert hc["SecurityOpt"] == ["no-new-privileges"] and hc["Sysctls"] == {"kernel.msgmax": "4096"}
    assert hc["GroupAdd"] == ["42"]
    out = pm(host, "exec", name, "grep", "-E", "^(Seccomp|NoNewPrivs|CapBnd):", "/proc/self/status").stdout
    fields = dict(line.split(":\t") for line in out.strip().splitlines())
    assert fields["Seccomp"] == "2" and fields["NoNewPrivs"] == "1"
    assert int(fields["CapBnd"], 16) & (1 << CAP_NET_ADMIN) and not int(fields["CapBnd"], 16) & (1 << 27)


# -- the journal ------------------------------------------------------------------------------------------------


def journal_entries(host: AnyHost, name: str) -> list[dict[str, str]]:
    out = host.run(["journalctl", f"CONTAINER_NAME={name}", "-o", "json", "--no-pager"], check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_priority_prefixes_are_not_parsed(host: AnyHost, cleanup: list[str]) -> None:
    script = "echo '<0>emergency?'; echo '<2>crit?' >&2"
    name = unique("prio")
    cleanup.append(name)
    code, _out, err = run(host, "--name", name + "-fg", "busybox", "sh", "-c", script)
    assert code == 0, err
    r = pm(host, "run", "-d", "--name", name, "busybox", "sh", "-c", script + "; sleep 1000")
    assert r.returncode == 0, r.stderr
    for who in (name + "-fg", name):
        def logged(who: str = who) -> bool:
            return len([e for e in journal_entries(host, who) if "?" in str(e.get("MESSAGE"))]) >= 2

        wait_until(logged, what=f"{who}'s lines in the journal", timeout=20)
        by_message = {e["MESSAGE"]: e["PRIORITY"] for e in journal_entries(host, who)}
        assert by_message.get("<0>emergency?") == "6", by_message
        assert by_message.get("<2>crit?") == "3", by_message


# -- no host executable, no host terminal ------------------------------------------------------------------------

# The CVE-2019-5736 class: a container file whose interpreter is the exec'ing process's own
# executable. Were that the host's Python, it would start inside the container (and fail
# there without its library, saying so), its /proc/PID/exe a handle on the host's binary.
EVIL = "#!/proc/self/exe\nprint('host python ran')\n"


@pytest.fixture
def evil_dir(host: AnyHost) -> Iterator[str]:
    d = f"/var/tmp/{unique('evil')}"
    host.run(["mkdir", "-p", d], check=True)
    host.run(["sh", "-c", f"cat > {d}/evil && chmod 755 {d}/evil"], input=EVIL, check=True)
    yield d
    host.run(["rm", "-rf", d])


# The host's dynamic loader and libc in the container, so that the host's Python, were it run
# there, would start (and then fail on its missing library, saying so).
LOADER = ("-v", "/lib64:/lib64:ro", "-v", "/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:ro",
          "-v", "/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro")


def no_python(text: str) -> bool:
    return not any(word in text for word in ("host python ran", "Python", "encodings", "python3"))


@pytest.mark.usefixtures("no_leftovers")
def test_proc_self_exe_script_as_the_command_finds_no_host_binary(host: AnyHost, evil_dir: str) -> None:
    code, out, err = run(host, *LOADER, "-v", f"{evil_dir}:/x:ro", "busybox", "/x/evil")
    assert code == 126 and no_python(out + err), (code, out, err)


def test_proc_self_exe_script_run_by_exec_finds_no_host_binary(host: AnyHost, evil_dir: str,
                                                               cleanup: list[str]) -> None:
    name = unique("exe")
    cleanup.append(name)
    r = pm(host, "run", "-d", "--name", name, *LOADER, "-v", f"{evil_dir}:/x:ro", "busybox", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    r = pm(host, "exec", name, "/x/evil")
    assert r.returncode == 126 and no_python(r.stdout + r.stderr), r
    # What a process of the container sees as the exec'd process's executable: never a host file.
    r = pm(host, "exec", name, "sh", "-c", "readlink /proc/$$/exe")
    assert r.stdout.strip() == "/bin/busybox", r
    r = pm(host, "exec", name, "no-such-command")
    assert r.returncode == 127 and "no-such-command" in r.stderr and "not found" in r.stderr


def test_exec_passes_pipes_not_the_admins_terminal(host: AnyHost, cleanup: list[str]) -> None:
    from ptydrive import Expect, on_pty

    name = unique("tty")
    cleanup.append(name)
    r = pm(host, "run", "-d", "--name", name, "busybox", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    # A background process keeps the exec's stdout and writes on it after exec returned; with
    # the admin's terminal as that stdout, its line would appear there, before DONE.
    grab = "exec 3>&1; (sleep 1; echo GRABBED >&3) >/dev/null 2>&1 & readlink /proc/self/fd/0; readlink /proc/self/fd/1"
    script = f"pymachine exec -i {name} sh -c '{grab}'; sleep 3; echo DONE"
    session = on_pty(host, ["sh", "-c", script], [Expect("DONE")], timeout=60)
    assert "GRABBED" not in session.output, session.output
    assert "pts" not in session.output.split("DONE")[0], session.output  # fd 0 and 1 are pipes
    assert session.output.count("pipe:") == 2, session.output


@pytest.mark.usefixtures("no_leftovers")
def test_run_interactive_without_tty_passes_a_pipe(host: AnyHost) -> None:
    from ptydrive import Expect, Send, on_pty

    argv = ["pymachine", "run", "--rm", "-i", "busybox", "sh", "-c",
            "readlink /proc/self/fd/0; readlink /proc/self/fd/1; read line; echo got-$line"]
    session = on_pty(host, argv, [Expect("pipe:"), Send("hello\n"), Expect("got-hello")], timeout=60)
    assert "pts" not in session.output.replace("got-hello", ""), session.output
    assert session.exit_code == 0, session.output
    code, out, err = run(host, "-i", "busybox", "cat")
    assert code == 0 and out == "", err  # our stdin here is empty: EOF reaches the container
