"""`run -t`: what the container prints on its pty reaches the terminal and the journal (docker's
fields, one stream at priority info), while `exec -t` output stays off the journal, as docker's.
pymachine runs on a pty the test makes (pty.fork in the test host), as it would in a terminal."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from testhost import LocalHost, TestHost

pytestmark = pytest.mark.integration

AnyHost = TestHost | LocalHost

# Runs COMMAND on a fresh pty, types each line of $TYPE into it after a pause, and prints
# everything the pty showed, then the exit code.
PTY_DRIVER = r'''
import os, pty, select, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
out = b""
typed = [line.encode() + b"\n" for line in os.environ.get("TYPE", "").split("|") if line]
end = time.time() + 50
while time.time() < end:
    if select.select([fd], [], [], 0.5)[0]:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
    elif typed and b"# " in out.rsplit(b"\n", 1)[-1]:
        # Quiet at the shell's prompt: typing earlier (slow start-ups under emulation) could
        # land before the container's terminal exists and be lost. (The prompt line may end
        # in busybox's cursor-position query, hence "in", not "endswith".)
        out += b"\n"
        os.write(fd, typed.pop(0))
sys.stdout.write(out.decode(errors="replace"))
deadline = time.time() + 30  # pymachine tears down after the terminal closes
while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.time() < deadline:
    time.sleep(0.05)
if done[0] == 0:
    os.kill(pid, 9)  # never hang the test: it fails on its output instead
    os.waitpid(pid, 0)
    print("\nkilled: no exit in time")
else:
    print("\nexit", os.waitstatus_to_exitcode(done[1]))

'''


def on_pty(host: AnyHost, *argv: str, typed: str = "") -> str:
    r = host.run(["env", f"TYPE={typed}", "python3", "-c", PTY_DRIVER, *argv], timeout=120, check=True)
    return str(r.stdout)


def journal(host: AnyHost, *match: str) -> list[dict[str, Any]]:
    out = host.run(["journalctl", *match, "-o", "json", "--no-pager"], check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_run_tty_output_reaches_terminal_and_journal(host: AnyHost) -> None:
    name = f"ttyj{secrets.token_hex(3)}"
    out = on_pty(host, "pymachine", "run", "--rm", "-it", "--name", name, "busybox",
                 "sh", "-c", "echo out-line; echo err-line >&2; tty")
    assert "out-line" in out and "err-line" in out and "/dev/pts/" in out, out
    assert out.rstrip().endswith("exit 0"), out
    entries = journal(host, f"CONTAINER_NAME={name}")
    by_message = {e["MESSAGE"]: e for e in entries if isinstance(e.get("MESSAGE"), str)}
    # The pty's \r\n line ends are not part of the logged lines.
    assert {"out-line", "err-line"} <= set(by_message), entries
    for message in ("out-line", "err-line"):
        e = by_message[message]
        assert e["PRIORITY"] == "6", e  # a tty is one stream: stdout's priority, as docker logs it
        assert e["_SYSTEMD_UNIT"] == f"machine-{name}.scope", e
        assert len(e["CONTAINER_ID"]) == 12 and e["CONTAINER_ID_FULL"].startswith(e["CONTAINER_ID"]), e
        assert e["IMAGE_NAME"].startswith("busybox"), e
    assert any(e.get("MESSAGE", "").startswith("/dev/pts/") for e in entries), entries
    by_unit = host.run(["journalctl", "-u", f"machine-{name}.scope", "-o", "cat", "--no-pager"], check=True).stdout
    assert "out-line" in by_unit, by_unit


def test_run_it_session_is_logged_and_stays_interactive(host: AnyHost) -> None:
    name = f"ttyi{secrets.token_hex(3)}"
    out = on_pty(host, "pymachine", "run", "--rm", "-it", "--name", name, "busybox", "sh",
                 typed="echo typed-$((6*7))|exit 3")
    assert "typed-42" in out, out
    assert out.rstrip().endswith("exit 3"), out
    messages = [e.get("MESSAGE") for e in journal(host, f"CONTAINER_NAME={name}")]
    # The shell's echo of what was typed and the command's output, as the terminal showed them.
    assert "typed-42" in messages, messages


def test_exec_tty_output_stays_off_the_journal(host: AnyHost) -> None:
    name = f"ttye{secrets.token_hex(3)}"
    host.run(["pymachine", "run", "-d", "--name", name, "busybox", "sleep", "1000"], check=True, timeout=60)
    try:
        out = on_pty(host, "pymachine", "exec", "-it", name, "sh", "-c", "echo exec-$((2*3))")
        assert "exec-6" in out and out.rstrip().endswith("exit 0"), out
    finally:
        host.run(["pymachine", "rm", "-f", name], timeout=60)
    messages = [e.get("MESSAGE") for e in journal(host, f"CONTAINER_NAME={name}")]
    assert "exec-6" not in messages, messages
