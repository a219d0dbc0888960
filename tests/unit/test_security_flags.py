"""docker's security flags (security.py), the seccomp profile (seccomp_profile.py) and its
compiled, cached program (seccomp_compile.py: installed in a forked child, real kernel)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from machinectl_py import seccomp_compile, security
from machinectl_py import seccomp_profile as sp
from machinectl_py import syscalls as sc
from machinectl_py.dropins import dropin_text
from machinectl_py.errors import UsageError
from machinectl_py.policy import load_policy
from machinectl_py.settings import inspect_fields
from machinectl_py.spec import ContainerSpec
from machinectl_py.systemd import scope_properties

DOCKER_CAPS = load_policy().capabilities


def spec(**fields: object) -> ContainerSpec:
    return ContainerSpec(name="t", image="busybox", **fields).validate()


def test_capability_names_and_sets() -> None:
    assert security.parse_capabilities(["net_admin", "CAP_SYS_TIME", "ALL", "NET_ADMIN"]) == \
        ("NET_ADMIN", "SYS_TIME", "ALL")
    with pytest.raises(UsageError, match="unknown capability"):
        security.parse_capabilities(["NOPE"])
    policy = load_policy()
    assert security.capabilities(spec(cap_add=("NET_ADMIN",)), policy) == DOCKER_CAPS | {"NET_ADMIN"}
    assert security.capabilities(spec(cap_drop=("ALL",)), policy) == frozenset()
    assert security.capabilities(spec(cap_drop=("ALL",), cap_add=("CHOWN",)), policy) == {"CHOWN"}
    assert security.capabilities(spec(cap_add=("ALL",), cap_drop=("MKNOD",)), policy) >= {"SYS_ADMIN"}
    assert "MKNOD" not in security.capabilities(spec(cap_add=("ALL",), cap_drop=("MKNOD",)), policy)
    assert "SYS_ADMIN" in security.capabilities(spec(privileged=True), policy)


def test_definition_keys_round_trip_and_privileged_hook() -> None:
    from machinectl_py import config

    text = ('image = "busybox"\ncap_add = ["net_admin"]\ncap_drop = ["ALL"]\nsecurity_opt = ["no-new-privileges"]\n'
            'sysctls = { "kernel.shmmax" = "1000" }\ngroup_add = ["42"]\ndevices = ["/dev/null:/dev/n2:rw"]\n')
    s = config.parse_definition("web", "/x/web.toml", text)
    assert (s.cap_add, s.cap_drop, s.group_add) == (("NET_ADMIN",), ("ALL",), ("42",))
    assert config.parse_definition("web", "/x/web.toml", config.render_definition(s)) == s
    with pytest.raises(UsageError, match=r"web\.toml:2: sysctls: .*not namespaced"):
        config.parse_definition("web", "/x/web.toml", 'image = "busybox"\nsysctls = { "vm.swappiness" = "1" }\n')
    assert security.userns_mode(spec(privileged=True)) == "host"
    assert security.userns_mode(spec(privileged=True, userns="auto")) == "host"
    assert security.userns_mode(spec()) is None


def test_security_opts_and_sysctls() -> None:
    assert security.parse_security_opts(["no-new-privileges", "seccomp=unconfined"]) == \
        ("no-new-privileges", "seccomp=unconfined")
    assert security.parse_security_opts(["no-new-privileges:false"]) == ()
    for bad_opts in (["apparmor=x"], ["seccomp"], ["seccomp=/does/not/exist.json"]):
        with pytest.raises(UsageError):
            security.parse_security_opts(bad_opts)
    assert security.parse_sysctls(["kernel.shmmax=1", "fs.mqueue.msg_max=20", "net.ipv4.ip_forward=1"]) == \
        {"kernel.shmmax": "1", "fs.mqueue.msg_max": "20", "net.ipv4.ip_forward": "1"}
    for bad in ("kernel.hostname=x", "vm.swappiness=1", "kernel.shmmax", "kernel..x=1"):
        with pytest.raises(UsageError):
            security.parse_sysctls([bad])
    with pytest.raises(UsageError, match="a network of the container's own"):
        spec(sysctls={"net.ipv4.ip_forward": "1"}, network="host")
    spec(sysctls={"net.ipv4.ip_forward": "1"}, network="private")


def test_devices_reach_the_scope_and_the_service_alike() -> None:
    assert security.parse_devices(["/dev/null"]) == ("/dev/null:/dev/null:rwm",)
    assert security.parse_devices(["/dev/null:/dev/n2:r"]) == ("/dev/null:/dev/n2:r",)
    for bad in ("/etc/passwd", "relative", "/dev/null:/etc/x", "/dev/null:/dev/../x"):
        with pytest.raises(UsageError):
            security.parse_devices([bad])
    s = spec(devices=("/dev/null:/dev/n2:rw",))
    policy_allow = (("char-pts", "rw"),)
    props = dict(scope_properties(s, policy_allow, (41,)))
    assert props["DeviceAllow"] == ("a(ss)", [("char-pts", "rw"), ("/dev/null", "rw")])
    text = dropin_text("t", "0" * 64, "busybox", s, policy_allow)
    assert "DeviceAllow=char-pts rw\nDeviceAllow=/dev/null rw" in text
    priv = spec(privileged=True)
    assert dict(scope_properties(priv, policy_allow, (41,)))["DevicePolicy"] == ("s", "auto")
    assert "DevicePolicy=auto\nDeviceAllow=\n" in dropin_text("t", "0" * 64, "busybox", priv, policy_allow)


def test_template_unit_has_one_device_policy_and_no_level_prefix() -> None:
    text = (Path(__file__).resolve().parents[2] / "units" / "pymachine@.service").read_text()
    assert "SyslogLevelPrefix=no" in text
    assert "/dev/net/tun" not in "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def test_inspect_uses_dockers_names() -> None:
    hc = inspect_fields(spec(cap_add=("NET_ADMIN",), cap_drop=("MKNOD",), security_opt=("no-new-privileges",),
                             sysctls={"kernel.sem": "1 2 3 4"}, group_add=("42",),
                             devices=("/dev/null:/dev/n2:rw",)))["HostConfig"]
    assert hc["CapAdd"] == ["NET_ADMIN"] and hc["CapDrop"] == ["MKNOD"] and hc["Privileged"] is False
    assert hc["SecurityOpt"] == ["no-new-privileges"] and hc["Sysctls"] == {"kernel.sem": "1 2 3 4"}
    assert hc["GroupAdd"] == ["42"]
    assert hc["Devices"] == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/n2", "CgroupPermissions": "rw"}]


# -- profiles --------------------------------------------------------------------------------------------


def default_raw() -> dict[str, object]:
    return sp.load(Path(sp.default_profile_path()).read_bytes(), "default")


def allowed_names(resolved: sp.Resolved) -> set[str]:
    return {n for r in resolved.rules if r.action == "SCMP_ACT_ALLOW" for n in r.names}


def test_default_profile_follows_dockers() -> None:
    resolved = sp.resolve(default_raw(), DOCKER_CAPS, "x86_64", "6.18.0")
    assert resolved.default_action == "SCMP_ACT_ERRNO" and resolved.default_errno == 1
    names = allowed_names(resolved)
    assert not {"io_uring_setup", "io_uring_enter", "io_uring_register"} & names
    assert not {"mount", "unshare", "setns", "keyctl", "add_key", "bpf", "kexec_load", "init_module"} & names
    assert {"read", "execve", "arch_prctl", "process_vm_readv"} <= names  # ptrace's friends since 4.8
    clone = [r for r in resolved.rules if r.names == ("clone",)]
    assert [(a.index, a.op, a.value) for r in clone for a in r.args] == [(0, "SCMP_CMP_MASKED_EQ", 0x7E020000)]
    assert {a.value for r in resolved.rules if r.names == ("personality",) for a in r.args} == \
        {0, 8, 0x20000, 0x20008, 0xFFFFFFFF}
    admin = sp.resolve(default_raw(), DOCKER_CAPS | {"SYS_ADMIN"}, "aarch64", "6.18.0")
    assert {"mount", "unshare", "clone", "set_tls"} <= allowed_names(admin) and "arch_prctl" not in allowed_names(admin)


def test_profile_schema_errors_name_the_file() -> None:
    for text, msg in ((b"{", "not JSON"), (b"[]", "object"), (b'{"defaultAction": "X"}', "defaultAction"),
                      (b'{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [], "action": "SCMP_ACT_ALLOW"}]}',
                       r"syscalls\[0\]: names"),
                      (b'{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": '
                       b'"SCMP_ACT_ALLOW", "args": [{"index": 9, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', "index"),
                      (b'{"defaultAction": "SCMP_ACT_ERRNO", "bogus": 1}', "unknown key")):
        with pytest.raises(UsageError, match=f"p.json: .*{msg}"):
            sp.load(text, "p.json")


def run_under(program: bytes, calls: list[tuple[int, ...]]) -> list[int]:
    """Install `program` in a forked child, make the raw syscalls, return their errnos (0: it worked)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        libc = ctypes.CDLL(None, use_errno=True)
        sc.seccomp_install(program)
        errs = []
        for call in calls:
            rc = libc.syscall(*call)
            errs.append(ctypes.get_errno() if rc == -1 else 0)
        os.write(w, json.dumps(errs).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 4096)
    os.close(r)
    os.waitpid(pid, 0)
    result: list[int] = json.loads(data)
    return result


def test_compiled_default_denies_io_uring_user_namespaces_and_x32(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(tmp_path))
    program = seccomp_compile.program(None, DOCKER_CAPS)
    assert list((tmp_path / "cache" / "seccomp").glob("*.bpf"))
    io_uring_setup, getpid, unshare, clone = 425, 39, 272, 56
    errs = run_under(program, [(io_uring_setup, 1, 0), (getpid,), (0x40000000 | getpid,), (unshare, 0x10000000),
                               (clone, 0x10000000 | 17, 0, 0, 0, 0)])
    assert errs == [1, 0, 38, 1, 1]  # EPERM, allowed, ENOSYS (x32 ABI), EPERM, EPERM


def test_custom_profile_denies_mkdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(tmp_path))
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}))
    program = seccomp_compile.program(str(profile), DOCKER_CAPS)
    pid = os.fork()
    if pid == 0:
        sc.seccomp_install(program)
        try:
            os.mkdir(tmp_path / "d")
            os._exit(0)
        except PermissionError:
            os._exit(13)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 13


def test_cached_program_needs_no_libseccomp(tmp_path: Path) -> None:
    """A start with a compiled program in the cache imports neither libseccomp nor json."""
    env = {**os.environ, "PYMACHINE_STATE_DIR": str(tmp_path)}
    probe = ("import sys; from machinectl_py import seccomp_compile as c; "
             "p = c.program(None, frozenset({'CHOWN'})); "
             "print(len(p), 'seccomp' in sys.modules, 'json' in sys.modules)")
    first = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.split()[1:] == ["True", "True"]  # compiled
    again = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert again.stdout.split() == [first.stdout.split()[0], "False", "False"]
