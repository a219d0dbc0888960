"""`pymachine logs`: a container's output, from the journal.

Every line a container writes carries CONTAINER_NAME (the forwarder of `run`, or the
unit's LogExtraFields= for detached ones), so journalctl finds them by name; lines from
before the container was created (an older container of that name) are left out. stdout
lines go to stdout and stderr lines (priority err) to stderr, as docker does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from machinectl_py.args import FLAG, Command, Option
from machinectl_py.errors import PymachineError

LOGS = Command(
    "pymachine logs", "pymachine logs [OPTIONS] NAME",
    "Show a container's output, from the journal: its stdout lines on stdout and its stderr lines\n"
    "on stderr. The same as `journalctl CONTAINER_NAME=NAME`, without lines of an older container\n"
    "of the same name.",
    [
        Option("--follow -f", "keep printing new lines", kind=FLAG),
        Option("--tail -n", "only the last N lines", metavar="N", convert=int),
        Option("--since", "from TIME on (journalctl's format: '10 min ago', '2024-01-01')", metavar="TIME"),
    ],
    positionals=[("name", "container name")],
)


def journalctl_argv(name: str, *, follow: bool, lines: int | None, since: str | None) -> list[str]:
    # SYSLOG_IDENTIFIER too: the container's lines carry its name there (the forwarder's, the
    # unit's SyslogIdentifier=); pymachine's events from inside the unit get its CONTAINER_NAME
    # through LogExtraFields= but say SYSLOG_IDENTIFIER=pymachine.
    argv = ["journalctl", "--no-pager", "-q", "-o", "json", "--output-fields=MESSAGE,PRIORITY",
            f"CONTAINER_NAME={name}", f"SYSLOG_IDENTIFIER={name}"]
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


class _Args:
    def __init__(self, values: dict[str, object]) -> None:
        self.name = str(values["name"])
        self.follow = bool(values["follow"])
        tail = values["tail"]
        self.tail = tail if isinstance(tail, int) else None
        since = values["since"]
        self.since = since if isinstance(since, str) else None


def main(argv: list[str]) -> int:
    from machinectl_py import state
    from machinectl_py.errors import NotFoundError

    values = LOGS.parse_or_help(argv)
    if values is None:
        return 0
    args = _Args(values)
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
