"""`pymachine events`: what happened to containers (create, start, die with its exit code, oom,
stop, kill, update, destroy), with docker's fields.

pymachine writes each event as a journal entry of its own (journal.send_event, MESSAGE_ID
journal.EVENT_MESSAGE_ID), where it happens: by the verbs, by a foreground `run`, and by a
detached container's unit itself (its setup process says start, its stop hook die), so a
`systemctl start pymachine@web` is seen as well. Beside them, what systemd and machined say
of the containers, for what pymachine's own hooks cannot record (a `run` killed with SIGKILL,
a unit's process killed by hand): live from the bus (a container's unit going active is
start, leaving it die with the main process's exit status, its Result becoming oom-kill oom;
machined's MachineNew and MachineRemoved start and die), and in a replay (--since) from their
journal messages (SYSTEM_MESSAGES). Such an event waits SIGNAL_GRACE seconds and is dropped
if pymachine's own record of it (same container, same action) comes around it: each event is
printed once, from pymachine's record when there is one.
"""

from __future__ import annotations

import json
import os
import select
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

    matches = [f"MESSAGE_ID={EVENT_MESSAGE_ID}"]
    for message_id in SYSTEM_MESSAGES:
        matches += ["+", f"MESSAGE_ID={message_id}"]
    args = ["journalctl", "--no-pager", "-q", "-o", "json", *matches]
    if since is not None:
        args.append(f"--since=@{since:.6f}")
    if until is not None:
        args.append(f"--until=@{until:.6f}")
    else:
        args += ["--follow"] + ([] if since is not None else ["--lines=0"])
    return args


# -- events systemd and machined tell: live from the bus, past from their journal messages ------

SIGNAL_GRACE = 2.0  # seconds an event of systemd's or machined's waits for pymachine's own record of it
RECORD_SHADOW = 10.0  # seconds around pymachine's record in which their same event is not shown
# Their journal messages (sd-messages.h) -> docker's action: machined's "New machine NAME." and
# "Machine NAME terminated.", systemd's "A process of this unit has been killed by the OOM killer."
# and "Main process exited, code=..., status=..." (EXIT_CODE=, EXIT_STATUS=; systemd logs it when
# a service's main process fails, so a replayed die of a service has its exit code).
SYSTEM_MESSAGES = {"24d8d4452573402496068381a6312df2": ("machined", "start"),
                   "58432bd3bace477cb514b56381b8a758": ("machined", "die"),
                   "fe6faa94e7774663a0da52717891d8ef": ("systemd", "oom"),
                   "98e322203f7a4ed290d09fe03c09fe15": ("systemd", "die")}
_LEFT_ACTIVE = ("deactivating", "inactive", "failed")
_CLD_EXITED = 1


def container_of_unit(unit: str) -> str | None:
    """The container a unit runs: pymachine@NAME.service (detached) or machine-NAME.scope (`run`,
    systemd's escaping of "-" undone); None for any other unit."""
    if unit.startswith("pymachine@") and unit.endswith(".service"):
        return unit[len("pymachine@"):-len(".service")] or None
    if unit.startswith("machine-") and unit.endswith(".scope"):
        return unit[len("machine-"):-len(".scope")].replace("\\x2d", "-") or None
    return None


def unit_of_path(path: str) -> str:
    """A unit's name from its object path (/org/freedesktop/systemd1/unit/pymachine_40web_2eservice):
    systemd's bus label escaping (_XX) undone."""
    label = path.rpartition("/")[2]
    out, i = [], 0
    while i < len(label):
        if label[i] == "_" and _is_hex(label[i + 1:i + 3]):
            out.append(chr(int(label[i + 1:i + 3], 16)))
            i += 3
        else:
            out.append(label[i])
            i += 1
    return "".join(out)


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789abcdef" for c in text)


class UnitWatch:
    """What the bus's signals say happened to containers: (container, action, attributes)."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}
        self.exit: dict[str, tuple[int, int]] = {}  # unit -> (ExecMainCode, ExecMainStatus)

    def exit_code(self, unit: str) -> str | None:
        code, status = self.exit.get(unit, (0, 0))
        if not code:
            return None
        return str(status if code == _CLD_EXITED else 128 + status)  # killed by a signal: 128+N, as docker

    def on_signal(self, path: str, member: str, args: list[Any]) -> list[tuple[str, str, dict[str, str]]]:
        if member in ("MachineNew", "MachineRemoved"):
            action = "start" if member == "MachineNew" else "die"
            return [(str(args[0]), action, {"source": "machined"})] if args else []
        if member != "PropertiesChanged" or len(args) < 2 or not isinstance(args[1], dict):
            return []
        unit = unit_of_path(path)
        name = container_of_unit(unit)
        if name is None:
            return []
        changed: dict[str, Any] = args[1]
        events: list[tuple[str, str, dict[str, str]]] = []
        if "ExecMainCode" in changed or "ExecMainStatus" in changed:
            old = self.exit.get(unit, (0, 0))
            self.exit[unit] = (int(changed.get("ExecMainCode", old[0])), int(changed.get("ExecMainStatus", old[1])))
        if changed.get("Result") == "oom-kill":
            events.append((name, "oom", {"source": "systemd"}))
        state = changed.get("ActiveState")
        if isinstance(state, str):
            before = self.state.get(unit, "")
            self.state[unit] = state
            if state == "active" and before != "active":
                events.append((name, "start", {"source": "systemd"}))
            elif state in _LEFT_ACTIVE and before in ("active", "reloading", ""):
                events.append((name, "die", {"source": "systemd"}))
        return events


class Merger:
    """pymachine's records shown at once; systemd's and machined's events held SIGNAL_GRACE
    seconds (of the times the events carry), then shown unless pymachine's record of the same
    (container, action) came around them. Times are Unix times: the bus's events are stamped
    when they arrive, the journal's with their own time, so a replay merges as the live stream."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, str, str, dict[str, str]]] = []
        self.recorded: dict[tuple[str, str], float] = {}

    def record_seen(self, name: str, action: str, at: float) -> None:
        self.recorded[(name, action)] = at
        self.pending = [p for p in self.pending if (p[1], p[2]) != (name, action) or abs(p[0] - at) >= RECORD_SHADOW]

    def add(self, name: str, action: str, attributes: dict[str, str], at: float) -> None:
        if abs(at - self.recorded.get((name, action), -1e18)) < RECORD_SHADOW:
            return
        for when, other, other_action, said in self.pending:
            if (other, other_action) == (name, action) and abs(when - at) < RECORD_SHADOW:
                # systemd and machined both said it, or the bus and the journal: one event, with
                # the exit code if either knew it (machined's "terminated" does not)
                if "exitCode" in attributes:
                    said.setdefault("exitCode", attributes["exitCode"])
                return
        self.pending.append((at, name, action, dict(attributes)))

    def due(self, now: float) -> list[tuple[float, str, str, dict[str, str]]]:
        ready = [p for p in self.pending if now - p[0] >= SIGNAL_GRACE]
        self.pending = [p for p in self.pending if now - p[0] < SIGNAL_GRACE]
        for at, name, action, _ in ready:
            self.recorded[(name, action)] = at  # shown: the same from elsewhere is not shown again
        return ready


def system_event(entry: dict[str, Any]) -> tuple[str, str, dict[str, str], float] | None:
    """A journal message of machined's or systemd's (SYSTEM_MESSAGES) -> (container, action,
    attributes, Unix time); None for another machine's or unit's."""
    kind = SYSTEM_MESSAGES.get(str(entry.get("MESSAGE_ID", "")))
    if kind is None:
        return None
    source, action = kind
    name = entry.get("NAME") if source == "machined" else container_of_unit(str(entry.get("UNIT", "")))
    if not isinstance(name, str) or not name:
        return None
    attributes = {"source": source}
    code = exit_code_of(entry.get("EXIT_CODE"), entry.get("EXIT_STATUS"))
    if code is not None:
        attributes["exitCode"] = code
    return name, action, attributes, int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6


def exit_code_of(how: Any, status: Any) -> str | None:
    """systemd's EXIT_CODE= and EXIT_STATUS= -> docker's exit code: the status of an exit,
    128+N for a death by signal N (killed, dumped)."""
    if not isinstance(status, str) or not status.isdigit():
        return None
    if how == "exited":
        return status
    return str(128 + int(status)) if how in ("killed", "dumped") else None


def bus_event(name: str, action: str, attributes: dict[str, str], at: float,
              known: dict[str, tuple[str, str]]) -> dict[str, Any] | None:
    """docker's event object for what systemd or machined said of container `name` at `at`: its
    id and image from pymachine's own events of it (`known`, so that a replay names a container
    removed since), else from its record; None if it is not pymachine's (machined registers
    other machines too)."""
    from machinectl_py import state
    from machinectl_py.errors import PymachineError

    if name not in known:
        try:
            record = state.load(name)
        except (PymachineError, ValueError, KeyError, OSError):
            return None
        known[name] = (record.id, record.image_name)
    actor, image = known[name]
    nanos = int(at * 1e9)
    attrs = {"name": name, "image": image, **attributes}
    return {"status": action, "id": actor, "from": image, "Type": "container", "Action": action,
            "Actor": {"ID": actor, "Attributes": attrs}, "scope": "local", "time": nanos // 1_000_000_000,
            "timeNano": nanos}


def _listen(bus: Any) -> None:
    """Ask for systemd's unit signals and machined's machine signals on the system bus."""
    from machinectl_py import machined, systemd

    systemd.watch_units(bus)
    machined.watch_machines(bus)


class Stream:
    """The events of journalctl's output (pymachine's records, systemd's and machined's
    messages) and, live, of the bus's signals, merged (Merger) and printed."""

    def __init__(self, filters: dict[str, set[str]], template: str | None, live: bool) -> None:
        self.filters, self.template = filters, template
        # A replay (--until) is printed at its end in time order: systemd's and machined's
        # events are held back for pymachine's records of them, which come after them.
        self.held: list[dict[str, Any]] | None = None if live else []
        self.watch, self.merger = UnitWatch(), Merger()
        self.last = 0.0  # the time of the last journal entry read
        self.known: dict[str, tuple[str, str]] = {}  # container name -> (id, image), from pymachine's events

    def flush(self, now: float) -> None:
        for at, name, action, attributes in self.merger.due(now):
            self.show(bus_event(name, action, attributes, at, self.known))

    def journal_line(self, raw: bytes) -> None:
        entry = json.loads(raw)
        self.last = max(self.last, int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6)
        event = event_of(entry)
        if event is not None:
            attributes = event["Actor"]["Attributes"]
            if event["Type"] == "container" and attributes.get("name"):
                self.known[attributes["name"]] = (event["id"], attributes.get("image", ""))
            self.merger.record_seen(event["Actor"]["Attributes"].get("name", ""), event["Action"],
                                    event["timeNano"] / 1e9)
            self.show(event)
            return
        said = system_event(entry)
        if said is not None:
            self.merger.add(*said)

    def show(self, event: dict[str, Any] | None) -> None:
        if event is None or not matches(event, self.filters):
            return
        if self.held is not None:
            self.held.append(event)
        else:
            print(line_of(event, self.template), flush=True)

    def end(self) -> None:
        self.flush(float("inf"))
        for event in sorted(self.held or [], key=lambda e: int(e["timeNano"])):
            print(line_of(event, self.template), flush=True)

    def bus_signals(self, bus: Any) -> None:
        now = time.time()
        for path, _iface, member, args in bus.signals(0, ("PropertiesChanged", "MachineNew", "MachineRemoved"),
                                                      _container_path):
            for name, action, attributes in self.watch.on_signal(path, member, args):
                if action == "die" and attributes.get("source") == "systemd":
                    code = self.watch.exit_code(f"pymachine@{name}.service")
                    attributes = {**attributes, "exitCode": code} if code is not None else attributes
                self.merger.add(name, action, attributes, now)


def stream(proc: subprocess.Popen[str], filters: dict[str, set[str]], template: str | None, live: bool) -> None:
    """Print the events of journalctl's output until it ends, and live (following) the bus's too."""
    import contextlib

    from machinectl_py.bus import Bus

    assert proc.stdout is not None
    out = Stream(filters, template, live)
    journal_fd, partial = proc.stdout.fileno(), b""
    with contextlib.ExitStack() as stack:
        bus = stack.enter_context(Bus.system()) if live else None
        fds = [journal_fd]
        if bus is not None:
            _listen(bus)
            fds.append(bus.fileno())
        while True:
            if bus is not None:
                out.bus_signals(bus)
            readable, _, _ = select.select(fds, [], [], 0.5)
            if journal_fd not in readable:
                out.flush(time.time())  # caught up with the journal: the wall clock rules
                continue
            chunk = os.read(journal_fd, 1 << 16)  # not readline(): its buffer would hide lines from select
            if not chunk:
                out.end()
                return
            *lines, partial = (partial + chunk).split(b"\n")
            for raw in lines:
                out.journal_line(raw)
            out.flush(out.last)


def _container_path(path: str) -> bool:
    """A container unit's object path (pymachine@*.service, machine-*.scope), or machined's."""
    from machinectl_py import systemd

    return not systemd.is_unit_path(path) or path.rpartition("/")[2].startswith(("pymachine_40", "machine_2d"))


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
            stream(proc, filters, args["format"], live=until is None)
        except KeyboardInterrupt:
            proc.terminate()
            return 0
    return 0 if proc.returncode in (0, -15) else 125
