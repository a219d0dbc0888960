"""The launch kit's parts that run without privileges: status protocol, reaping, the exec."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from machinectl_py import payload
from machinectl_py.errors import EXIT_CANNOT_INVOKE, EXIT_ERROR, EXIT_NOT_FOUND


def status_of(data: bytes) -> tuple[int, str] | None:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    try:
        return payload.read_status(r)
    finally:
        os.close(r)


def test_read_status() -> None:
    assert status_of(b"") is None  # the child exec'd: the pipe closed on exec, empty
    message = "cannot run 'x': executable file not found"
    assert status_of(f"127:{message}".encode()) == (127, message)
    assert status_of(b"oops") == (EXIT_ERROR, "")


def run_child(argv: list[str], env: dict[str, str],
              workdir: str | None = None) -> tuple[int | None, tuple[int, str] | None]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        payload.finalize_and_exec(argv, env, w, workdir)
    os.close(w)
    try:
        status = payload.read_status(r)
    finally:
        os.close(r)
    return payload.reap(pid), status


def test_a_command_not_in_path_is_127() -> None:
    code, status = run_child(["no-such-command-here"], {"PATH": "/nonexistent:/also-not"})
    assert code == EXIT_NOT_FOUND
    assert status == (EXIT_NOT_FOUND, "cannot run 'no-such-command-here': executable file not found")


def test_a_missing_workdir_is_126() -> None:
    code, status = run_child(["true"], {"PATH": "/usr/bin:/bin"}, workdir="/nonexistent-dir")
    assert code == EXIT_CANNOT_INVOKE and status is not None
    assert status[1].startswith("cannot change to working directory /nonexistent-dir")


def test_the_command_runs_with_only_stdio_and_its_exit_code_is_reaped() -> None:
    # /proc/self/fd of the command: 0, 1, 2 and the one `ls` opens itself; no status pipe, no other fd.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 1)
        payload.finalize_and_exec(["sh", "-c", "ls /proc/$$/fd; exit 3"], {"PATH": "/usr/bin:/bin"}, w)
    os.close(w)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    assert payload.reap(pid) == 3
    assert sorted(out.split()) == [b"0", b"1", b"2"]


def test_reap_reports_a_signal_as_128_plus_n() -> None:
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), 9)
    assert payload.reap(pid) == 128 + 9
    assert payload.reap(pid) is None  # reaped already


def run_with_helper(argv: list[str], env: dict[str, str]) -> tuple[int | None, tuple[int, str] | None, bytes]:
    """finalize_and_exec through the sealed exec helper; (exit code, status, stdout + stderr)."""
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.close(out_r)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        helper = payload.sealed_helper()
        assert helper >= 0, "setup.py compiles the helper into machinectl_py/data/"
        payload.finalize_and_exec(argv, env, w, helper_fd=helper)
    os.close(w)
    os.close(out_w)
    out = b""
    while chunk := os.read(out_r, 4096):
        out += chunk
    os.close(out_r)
    try:
        status = payload.read_status(r)
    finally:
        os.close(r)
    return payload.reap(pid), status, out


def test_the_helper_runs_the_command_and_reports_what_fails(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin"}
    code, status, out = run_with_helper(["sh", "-c", "ls /proc/$$/fd; echo $0; exit 4"], env)
    assert code == 4 and status is None
    assert out.split() == [b"0", b"1", b"2", b"sh"]  # neither the status pipe nor the helper's memfd
    code, status, _ = run_with_helper(["no-such-command-here"], env)
    assert code == EXIT_NOT_FOUND and status == (EXIT_NOT_FOUND, "cannot run 'no-such-command-here': "
                                                                 "executable file not found")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF not really")
    garbage.chmod(0o755)
    code, status, _ = run_with_helper([str(garbage)], env)
    assert code == EXIT_CANNOT_INVOKE and status == (EXIT_CANNOT_INVOKE, "cannot run the command: Exec format error")


def test_a_proc_self_exe_script_never_runs_this_python(tmp_path: Path) -> None:
    """CVE-2019-5736's class: the interpreter line names the exec'ing process's own executable."""
    script = tmp_path / "evil"
    script.write_text("#!/proc/self/exe\nprint('this python ran')\n")
    script.chmod(0o755)
    code, _status, out = run_with_helper([str(script)], {"PATH": "/usr/bin:/bin"})
    assert b"this python ran" not in out and code == EXIT_CANNOT_INVOKE


def test_the_helper_memfd_is_sealed_against_writes() -> None:
    fd = payload.sealed_helper()
    try:
        with pytest.raises(PermissionError):
            os.write(fd, b"x")
        again = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)  # reopened for writing: the seal holds
        try:
            with pytest.raises(PermissionError):
                os.write(again, b"x")
        finally:
            os.close(again)
    finally:
        os.close(fd)
