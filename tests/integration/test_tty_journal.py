"""`run -t`: what the container prints on its pty reaches the terminal and the journal (docker's
fields, one stream at priority info), while `exec -t` output stays off the journal, as docker's.
pymachine runs on a pty the test makes (tests/ptydrive.py, in the test host), as it would in a terminal."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from ptydrive import Expect, Send, on_pty
from testhost import LocalHost, TestHost

pytestmark = pytest.mark.integration

AnyHost = TestHost | LocalHost

# Where the shell's prompt ends (busybox ash as root, in /).
PROMPT = "/ # "


def journal(host: AnyHost, *match: str) -> list[dict[str, Any]]:
    out = host.run(["journalctl", *match, "-o", "json", "--no-pager"], check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_run_tty_output_reaches_terminal_and_journal(host: AnyHost) -> None:
    name = f"ttyj{secrets.token_hex(3)}"
    session = on_pty(host, ["pymachine", "run", "--rm", "-it", "--name", name, "busybox",
                            "sh", "-c", "echo out-line; echo err-line >&2; tty"])
    out = session.output
    assert "out-line" in out and "err-line" in out and "/dev/pts/" in out, out
    assert session.exit_code == 0, out
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
    session = on_pty(host, ["pymachine", "run", "--rm", "-it", "--name", name, "busybox", "sh"],
                     [Expect(PROMPT), Send("echo typed-$((6*7))\n"), Expect("typed-42"), Expect(PROMPT),
                      Send("exit 3\n")])
    assert session.exit_code == 3, session.output
    messages = [e.get("MESSAGE") for e in journal(host, f"CONTAINER_NAME={name}")]
    # The shell's echo of what was typed and the command's output, as the terminal showed them.
    assert "typed-42" in messages, messages


def test_exec_tty_output_stays_off_the_journal(host: AnyHost) -> None:
    name = f"ttye{secrets.token_hex(3)}"
    host.run(["pymachine", "run", "-d", "--name", name, "busybox", "sleep", "1000"], check=True, timeout=60)
    try:
        session = on_pty(host, ["pymachine", "exec", "-it", name, "sh", "-c", "echo exec-$((2*3))"])
        assert "exec-6" in session.output and session.exit_code == 0, session.output
    finally:
        host.run(["pymachine", "rm", "-f", name], timeout=60)
    messages = [e.get("MESSAGE") for e in journal(host, f"CONTAINER_NAME={name}")]
    assert "exec-6" not in messages, messages
