"""The launch kit's parts that run without privileges: status protocol, reaping, the exec."""

from __future__ import annotations

import os

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
