"""`pymachine logs`: a container's output, from the journal.

Every line a container writes carries CONTAINER_NAME (the forwarder of `run`, or the
unit's LogExtraFields= for detached ones), so journalctl finds them by name; lines from
before the container was created (an older container of that name) are left out. stdout
lines go to stdout and stderr lines (priority err) to stderr, as docker does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import NoReturn

from machinectl_py.errors import PymachineError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def journalctl_argv(name: str, *, follow: bool, lines: int | None, since: str | None) -> list[str]:
    argv = ["journalctl", "--no-pager", "-q", "-o", "json", "--output-fields=MESSAGE,PRIORITY",
            f"CONTAINER_NAME={name}"]
    if since is not None:
        argv.append(f"--since={since}")
    if lines is not None:
        argv.append(f"--lines={lines}")
    if follow:
        argv.append("--follow")
    return argv


def is_current(entry: dict[str, object], created_usec: int) -> bool:
    """Not a line of an older container of the same name (journalctl's --since would spoil -n)."""
    stamp = entry.get("__REALTIME_TIMESTAMP")
    return not isinstance(stamp, str) or not stamp.isdigit() or int(stamp) >= created_usec


def message_bytes(entry: dict[str, object]) -> bytes:
    """MESSAGE as journalctl's JSON gives it: a string, or a list of byte values if not UTF-8."""
    message = entry.get("MESSAGE")
    if isinstance(message, list):
        return bytes(int(b) for b in message)
    return str(message or "").encode()


def main(argv: list[str]) -> int:
    from machinectl_py import state
    from machinectl_py.errors import NotFoundError

    p = _Parser(prog="pymachine logs", description="Show a container's output, from the journal.")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--tail", type=int, metavar="N", help="only the last N lines")
    p.add_argument("--since", metavar="TIME", help="from TIME on (journalctl's format: '10 min ago', '2024-01-01')")
    p.add_argument("name", metavar="NAME")
    args = p.parse_args(argv)
    try:
        created_usec = int(state.load(args.name).created * 1_000_000)
    except NotFoundError:
        if args.follow:
            raise  # nothing of that name will log again
        created_usec = 0  # removed (run --rm, rm): its old lines are still in the journal
    argv = journalctl_argv(args.name, follow=args.follow, lines=args.tail, since=args.since)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    except FileNotFoundError:
        raise PymachineError("journalctl not found (package systemd)") from None
    assert proc.stdout is not None
    import signal

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM ends `logs -f` as Ctrl-C does, journalctl included

    signal.signal(signal.SIGTERM, stop)
    shown = 0
    try:
        for line in proc.stdout:
            entry = json.loads(line)
            if not is_current(entry, created_usec):
                continue
            out = 2 if str(entry.get("PRIORITY")) in ("0", "1", "2", "3") else 1
            os.write(out, message_bytes(entry) + b"\n")
            shown += 1
    except KeyboardInterrupt:
        proc.terminate()
    except BrokenPipeError:
        proc.terminate()
    code = proc.wait()
    if code not in (0, -15):
        print(f"pymachine logs: journalctl exited {code}", file=sys.stderr)
        return 125
    if not created_usec and not shown and args.since is None and args.tail != 0:
        raise NotFoundError(f"no such container: {args.name}",
                            hint="no container of that name, and no lines of one in the journal")
    return 0
