"""`pymachine events`: what happened to containers (create, start, die with its exit code, oom,
stop, kill, update, destroy), with docker's fields.

Every event is a journal entry of pymachine's own (journal.send_event, MESSAGE_ID
journal.EVENT_MESSAGE_ID), written where it happens: by the verbs, by a foreground `run`, and
by a detached container's unit itself (its setup process says start, its stop hook die), so
a `systemctl start pymachine@web` is seen as well. Replayed from the journal with --since,
followed live (journalctl -f) until --until or Ctrl-C.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from machinectl_py.args import APPEND, Command, Option
from machinectl_py.errors import UsageError

EVENTS = Command(
    "pymachine events", "pymachine events [OPTIONS]",
    "Print events as they happen: container create, start, die (with its exit code), oom, stop,\n"
    "kill, update, destroy. With --since, those since then first; with --until, stop there.",
    [Option("--since", "events since TIME: a duration ago (10s, 1m, 2h30m), a Unix time or an ISO date",
            metavar="TIME"),
     Option("--until", "events until TIME (then exit), same forms", metavar="TIME"),
     Option("--filter -f", "only events that match: container=NAME, event=ACTION, type=container|image, "
            "image=NAME (repeatable; one key given twice matches either)", kind=APPEND, metavar="FILTER"),
     Option("--format", "'json' (docker's event objects, one a line) or a template: '{{ .Action }} "
            "{{ .Actor.Attributes.name }}'", metavar="FORMAT")])
FILTER_KEYS = {"container": "container", "event": "Action", "type": "Type", "image": "image"}
_DURATION_UNITS = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}


def parse_time(text: str, now: float) -> float:
    """docker's --since/--until forms -> a Unix time: Go durations (1m, 1h30m, 500ms) ago,
    a Unix time (1700000000[.5]), or an ISO 8601 date."""
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    seconds, number, rest = 0.0, "", stripped
    while rest:
        if rest[0].isdigit() or rest[0] == ".":
            number, rest = number + rest[0], rest[1:]
            continue
        unit = "ms" if rest.startswith("ms") else rest[0]
        if unit not in _DURATION_UNITS or not number:
            return _iso_time(text)
        seconds += float(number) * _DURATION_UNITS[unit]
        number, rest = "", rest[len(unit):]
    if number or not stripped:
        return _iso_time(text)
    return now - seconds


def _iso_time(text: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise UsageError(f"events: invalid time {text!r}",
                         hint="use a duration (10s, 1m, 2h), a Unix time or a date (2026-12-06T12:00:00)") from None


def parse_filters(items: list[str]) -> dict[str, set[str]]:
    filters: dict[str, set[str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if key not in FILTER_KEYS or not eq or not value:
            raise UsageError(f"events: invalid filter {item!r}",
                             hint="use container=NAME, event=ACTION, type=container|image or image=NAME")
        filters.setdefault(key, set()).add(value)
    return filters


def event_of(entry: dict[str, Any]) -> dict[str, Any] | None:
    """A journal entry (journalctl -o json) -> docker's event object."""
    prefix = "PYMACHINE_EVENT_ATTR_"
    action = entry.get("PYMACHINE_EVENT_ACTION")
    if not isinstance(action, str):
        return None
    attributes = {k[len(prefix):].lower(): v for k, v in entry.items() if k.startswith(prefix) and isinstance(v, str)}
    attributes = {("exitCode" if k == "exitcode" else k): v for k, v in attributes.items()}
    usec = int(entry.get("__REALTIME_TIMESTAMP", 0))
    kind = str(entry.get("PYMACHINE_EVENT_TYPE", "container"))
    actor = str(entry.get("PYMACHINE_EVENT_ACTOR", ""))
    return {"status": action, "id": actor, "from": attributes.get("image", ""), "Type": kind, "Action": action,
            "Actor": {"ID": actor, "Attributes": attributes}, "scope": "local", "time": usec // 1_000_000,
            "timeNano": usec * 1000}


def matches(event: dict[str, Any], filters: dict[str, set[str]]) -> bool:
    attributes = event["Actor"]["Attributes"]
    for key, wanted in filters.items():
        if key == "container":
            have = {attributes.get("name", ""), event["id"], event["id"][:12]}
        elif key == "image":
            have = {attributes.get("image", "")}
        else:
            have = {event[FILTER_KEYS[key]]}
        if not wanted & have and not (key == "container" and any(event["id"].startswith(w) for w in wanted)):
            return False
    return True


def line_of(event: dict[str, Any], template: str | None) -> str:
    if template == "json":
        return json.dumps(event)
    if template:
        from machinectl_py import formatting

        return formatting.render(template, event)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event["time"]))
    nanos = event["timeNano"] % 1_000_000_000
    attributes = ", ".join(f"{k}={v}" for k, v in sorted(event["Actor"]["Attributes"].items()))
    return f"{stamp}.{nanos:09d}Z {event['Type']} {event['Action']} {event['id']} ({attributes})"


def journalctl_args(since: float | None, until: float | None) -> list[str]:
    from machinectl_py.journal import EVENT_MESSAGE_ID

    args = ["journalctl", "--no-pager", "-q", "-o", "json", f"MESSAGE_ID={EVENT_MESSAGE_ID}"]
    if since is not None:
        args.append(f"--since=@{since:.6f}")
    if until is not None:
        args.append(f"--until=@{until:.6f}")
    else:
        args += ["--follow"] + ([] if since is not None else ["--lines=0"])
    return args


def main(argv: list[str]) -> int:
    args = EVENTS.parse_or_help(argv)
    if args is None:
        return 0
    now = time.time()
    since = parse_time(args["since"], now) if args["since"] else None
    until = parse_time(args["until"], now) if args["until"] else None
    filters = parse_filters(args["filter"])
    if until is not None and until > now:
        time.sleep(until - now)  # docker waits for a future --until, with the events until then
    with subprocess.Popen(journalctl_args(since, until), stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                event = event_of(json.loads(raw))
                if event is not None and matches(event, filters):
                    print(line_of(event, args["format"]), flush=True)
        except KeyboardInterrupt:
            proc.terminate()
            return 0
    return 0 if proc.returncode in (0, -15) else 125
