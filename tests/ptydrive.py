"""Drive a command on a pseudo-terminal the way a person at a terminal would: wait for what it prints
(a prompt, a marker), then type; never after a fixed pause, which is too short on a slow machine (the
v2 tier runs under emulation, ten times slower) and only wastes time on a fast one.

Two halves, one file:

- `drive()` does the work. It runs where the command runs, i.e. inside the test host, as a script
  (`python3 tests/ptydrive.py JSON`): the checkout is at the same path there, and this file needs only
  the standard library.
- `on_pty(host, argv, steps)` is what tests call: it runs this file in the host and returns a `Session`
  (the transcript and the exit status). It raises AssertionError, with the transcript, if an expected
  output never came or the command did not end in time.

The terminal answers the queries a real one answers (busybox's line editor asks for the cursor
position after each prompt, ESC[6n, and reads the answer as input), so what the command sees is what
it would see in a terminal emulator. The window size is set before the command starts.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import sys
import termios
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from testhost import LocalHost, TestHost

# Terminal queries and how a VT100-like terminal answers them (ESC[5n: "are you OK?" -> "yes").
_QUERY = re.compile(rb"\x1b\[([56])n")
# Control sequences and the characters that do not move the cursor right, left out of the column count.
_NOT_PRINTED = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[^\[]|[\x00-\x1f\x7f]")
# Time for the command to end after a hangup (pymachine tears its container down first).
_HANGUP_GRACE = 30.0


@dataclass(frozen=True)
class Expect:
    """Wait until `text` appears in the output printed since the previous Expect's match."""

    text: str
    timeout: float = 60.0


@dataclass(frozen=True)
class Send:
    """Type `text` (\"\\n\" for Enter, \"\\x03\" for Ctrl-C)."""

    text: str


Step = Expect | Send


@dataclass
class Session:
    """What the terminal showed (raw: control sequences included), and how the command ended."""

    output: str
    exit_code: int | None  # None: it did not end even after a hangup and was killed
    error: str | None = None  # the step that failed, or that it did not end in time
    answered_queries: int = 0
    steps_done: int = 0


class _Terminal:
    """The master side of a pty with a command on the other side: reads, answers queries, types."""

    def __init__(self, argv: Sequence[str], rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        master, slave = os.openpty()
        # The size is set before the command starts: it reads it once, at start-up.
        termios.tcsetwinsize(slave, (rows, cols))
        pid = os.fork()
        if pid == 0:  # the child: the pty becomes its controlling terminal and stdio
            try:
                os.close(master)
                os.login_tty(slave)
                os.execvp(argv[0], list(argv))
            except OSError as e:
                os.write(2, f"ptydrive: {argv[0]}: {e}\n".encode())
            finally:
                os._exit(127)
        os.close(slave)
        self.fd, self.pid = master, pid
        self.output = b""
        self.answered = 0
        self._scanned = 0  # output before this offset has been searched for queries
        self.closed = False  # the other side is gone (EIO or EOF on read)
        self.hung_up = False

    def pump(self, wait: float) -> bool:
        """Read what is available within `wait` seconds and answer any query in it; False if nothing came."""
        if self.closed or not select.select([self.fd], [], [], max(wait, 0))[0]:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: every holder of the other side closed it
            data = b""
        if not data:
            self.closed = True
            return False
        self.output += data
        self._answer_queries()
        return True

    def _answer_queries(self) -> None:
        for m in _QUERY.finditer(self.output, self._scanned):
            self.type(self._cursor_report(m.start()) if m.group(1) == b"6" else b"\x1b[0n")
            self.answered += 1
            self._scanned = m.end()
        # A query split across two reads: its start (ESC, ESC[, ESC[6) is scanned again with the next one.
        start = self.output.rfind(b"\x1b", max(len(self.output) - 3, self._scanned))
        self._scanned = len(self.output) if start < 0 else start

    def _cursor_report(self, at: int) -> bytes:
        """ESC[row;colR for the cursor after everything printed before offset `at`, 1-based."""
        before = self.output[:at]
        line = re.split(rb"[\r\n]", before)[-1]
        col = len(_NOT_PRINTED.sub(b"", line).decode(errors="replace")) % self.cols + 1
        row = min(before.count(b"\n") + 1, self.rows)
        return f"\x1b[{row};{col}R".encode()

    def type(self, data: bytes) -> None:
        if not self.closed:
            try:
                os.write(self.fd, data)
            except OSError:
                self.closed = True

    def wait_for(self, text: bytes, since: int, deadline: float) -> int | None:
        """Read until `text` appears after offset `since`; the offset just past it, or None at the deadline."""
        while True:
            found = self.output.find(text, since)
            if found >= 0:
                return found + len(text)
            if self.closed or time.monotonic() >= deadline:
                return None
            self.pump(min(0.2, deadline - time.monotonic()))

    def finish(self, deadline: float) -> int | None:
        """Read until the command ends; its exit code. If it is still running at the deadline, hang up,
        as closing the window would (pymachine then tears down what it made), and after a grace
        period kill it (None)."""
        status = self._wait_exit(deadline)
        if status is None:
            self.hung_up = True
            os.kill(self.pid, signal.SIGHUP)
            status = self._wait_exit(time.monotonic() + _HANGUP_GRACE)
        if status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        # What it wrote before it ended is in the pty's buffer: take it without waiting.
        while self.pump(0):
            pass
        os.close(self.fd)
        return status

    def _wait_exit(self, deadline: float) -> int | None:
        while True:
            done, raw = os.waitpid(self.pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(raw)
            if time.monotonic() >= deadline:
                return None
            if not self.pump(0.1) and self.closed:
                time.sleep(0.05)  # the pty is closed but the process is still tearing down


def drive(argv: Sequence[str], steps: Sequence[Step] = (), *, rows: int = 24, cols: int = 80,
          timeout: float = 120.0) -> Session:
    """Run argv on a new rows x cols pty, play `steps`, then read until it exits (at most `timeout`
    seconds in all). A step that fails stops the steps and hangs the terminal up at once."""
    end = time.monotonic() + timeout
    term = _Terminal(argv, rows, cols)
    since, done, error = 0, 0, None
    for step in steps:
        if isinstance(step, Send):
            term.type(step.text.encode())
        else:
            started = time.monotonic()
            matched = term.wait_for(step.text.encode(), since, min(end, started + step.timeout))
            if matched is None:
                why = "the terminal closed" if term.closed else f"waited {time.monotonic() - started:.0f} s"
                error = f"step {done + 1}: {step.text!r} never came ({why})"
                break
            since = matched
        done += 1
    exit_code = term.finish(time.monotonic() if error else end)
    if error is None and term.hung_up:
        error = f"it did not end within {timeout:g} s (hung up{'' if exit_code is not None else ', then killed'})"
    return Session(term.output.decode(errors="replace"), exit_code, error, term.answered, done)


def on_pty(host: TestHost | LocalHost, argv: Sequence[str], steps: Sequence[Step] = (), *,
           size: tuple[int, int] = (24, 80), timeout: float = 120.0) -> Session:
    """Run argv in the host on a pty of size (rows, cols), playing `steps` (see drive()).

    Raises AssertionError with the transcript when an Expect step failed or the command did not end."""
    request = {
        "argv": list(argv), "rows": size[0], "cols": size[1], "timeout": timeout,
        "steps": [{"expect" if isinstance(s, Expect) else "send": asdict(s)} for s in steps],
    }
    # Slack over the driver's own deadline: the driver's start and its hangup grace.
    r = host.run(["python3", str(Path(__file__).resolve()), json.dumps(request)],
                 timeout=timeout + _HANGUP_GRACE + 30, check=True)
    session = Session(**json.loads(r.stdout))
    if session.error is not None:
        raise AssertionError(f"{' '.join(argv)} on a pty: {session.error}; exit {session.exit_code}; "
                             f"it printed:\n{session.output}")
    return session


def _steps_from_json(raw: list[dict[str, dict[str, object]]]) -> list[Step]:
    steps: list[Step] = []
    for item in raw:
        ((kind, fields),) = item.items()
        text = str(fields["text"])
        steps.append(Expect(text, float(str(fields["timeout"]))) if kind == "expect" else Send(text))
    return steps


def main(args: list[str]) -> int:
    request = json.loads(args[0])
    session = drive(request["argv"], _steps_from_json(request["steps"]), rows=request["rows"],
                    cols=request["cols"], timeout=request["timeout"])
    sys.stdout.write(json.dumps(asdict(session)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
