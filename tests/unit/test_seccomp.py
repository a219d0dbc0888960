"""The seccomp deny-list: the program's shape, and its effect on a forked child (real kernel)."""

from __future__ import annotations

import os

import pytest

from machinectl_py import seccomp
from machinectl_py import syscalls as sc
from machinectl_py.policy import load_policy


def in_child(steps: list[str], program: bytes) -> dict[str, int]:
    """Fork; install `program` (if any); run each named step; return {step: errno or 0}."""
    # Root (CI and tools/test run as root): without CAP_SYS_ADMIN the kernel itself would
    # refuse mount and setns, and the test could not tell the filter's EPERM from its own.
    assert os.geteuid() == 0, "these tests need root: run them with tools/test as root"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            if program:
                sc.seccomp_install(program)
            results = []
            for step in steps:
                try:
                    STEPS[step]()
                    results.append(f"{step}=0")
                except OSError as e:
                    results.append(f"{step}={e.errno}")
            os.write(w, ",".join(results).encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    out = os.read(r, 4096).decode()
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed to run its steps"
    return {k: int(v) for k, v in (item.split("=") for item in out.split(","))}


STEPS = {
    "new user namespace": lambda: sc.unshare(sc.CLONE_NEWUSER),
    "new mount namespace": lambda: sc.unshare(sc.CLONE_NEWNS),
    "setns": lambda: sc.setns(-1, 0),
    "mount": lambda: sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE),
    "getpid": os.getpid,
}
EPERM = 1


def default_filter() -> bytes:
    policy = load_policy(os.path.join(os.path.dirname(seccomp.__file__), "data", "policy-default.toml"))
    program = sc.seccomp_filter(policy.seccomp_deny, policy.seccomp_deny_user_namespaces)
    assert program, "the default policy has a seccomp filter on this architecture"
    return program


def test_without_the_filter_root_may_do_all_of_it() -> None:
    results = in_child(["new user namespace", "new mount namespace", "mount", "getpid"], b"")
    assert results == {"new user namespace": 0, "new mount namespace": 0, "mount": 0, "getpid": 0}


def test_the_default_filter_denies_user_namespaces_setns_and_mount_but_not_the_rest() -> None:
    results = in_child(["new user namespace", "new mount namespace", "setns", "mount", "getpid"],
                       default_filter())
    # setns(-1) would be EBADF from the kernel: EPERM shows the filter answered first.
    assert results == {"new user namespace": EPERM, "new mount namespace": 0, "setns": EPERM, "mount": EPERM,
                       "getpid": 0}


def test_program_shape() -> None:
    program = seccomp.build_filter(seccomp.AUDIT_ARCH_X86_64, {"keyctl": 250, "unshare": 272, "clone": 56},
                                   deny_user_namespaces=True)
    assert len(program) % 8 == 0
    insns = [program[i:i + 8] for i in range(0, len(program), 8)]
    # The architecture check comes first; the last instruction allows.
    assert int.from_bytes(insns[0][4:], "little") == 4  # load seccomp_data.arch
    assert int.from_bytes(insns[1][4:], "little") == seccomp.AUDIT_ARCH_X86_64
    assert int.from_bytes(insns[-1][4:], "little") == seccomp.SECCOMP_RET_ALLOW
    # x32 numbers are refused before any number is compared.
    assert int.from_bytes(insns[4][4:], "little") == seccomp.X32_SYSCALL_BIT


def test_no_filter_when_the_policy_asks_for_none() -> None:
    assert sc.seccomp_filter((), False) == b""


def test_policy_rejects_unknown_syscalls(tmp_path: object) -> None:
    from pathlib import Path

    from machinectl_py.errors import UsageError
    from machinectl_py.policy import parse_policy

    with pytest.raises(UsageError, match="unknown syscall 'keyctll'"):
        parse_policy({"capabilities": [], "seccomp_deny": ["keyctll"]}, str(Path("p.toml")))
    with pytest.raises(UsageError, match="seccomp_deny_user_namespaces must be true or false"):
        parse_policy({"seccomp_deny_user_namespaces": "yes"}, "p.toml")
