"""`pymachine ps|inspect|status`: what containers there are and how they are, from
container.json and, for the live part, from systemd (the unit's state and main PID).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any, NoReturn

from machinectl_py.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from machinectl_py import state
    from machinectl_py.bus import Bus


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def _iso(ts: float | None) -> str:
    if not ts:
        return "0001-01-01T00:00:00Z"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    seconds = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


class Status:
    """A container's state as docker names it, from the record and its unit."""

    def __init__(self, record: state.ContainerRecord, unit_props: dict[str, Any]) -> None:
        self.record = record
        active = str(unit_props.get("ActiveState", "inactive"))
        sub = str(unit_props.get("SubState", ""))
        self.unit_state = f"{active} ({sub})" if sub else active
        self.pid = 0
        if active in ("active", "reloading", "deactivating"):
            self.status = "running"
            self.pid = int(unit_props.get("MainPID") or 0) or (record.pid or 0)
        elif active == "activating" and sub == "auto-restart":
            self.status = "restarting"
        elif active == "activating":
            self.status = "starting"
        else:
            self.status = "exited" if record.state in ("exited", "running") else record.state
        self.exit_code = record.exit_code if self.status in ("exited", "restarting") else None

    @property
    def text(self) -> str:
        if self.status == "exited":
            return f"exited ({self.exit_code if self.exit_code is not None else '?'})"
        return self.status


def _unit_props(bus: Bus, record: state.ContainerRecord) -> dict[str, Any]:
    from machinectl_py import systemd
    from machinectl_py.unit_template import unit_name

    unit = record.unit or unit_name(record.name)
    props = systemd.unit_properties(bus, unit, "Unit")
    if props and unit.endswith(".service"):
        props.update({k: v for k, v in systemd.unit_properties(bus, unit, "Service").items()
                      if k in ("MainPID", "ExecMainStatus", "Result", "NRestarts")})
    elif props:
        props["MainPID"] = record.pid or 0
    return props


def statuses(bus: Bus) -> list[Status]:
    from machinectl_py import state

    return [Status(r, _unit_props(bus, r)) for r in state.list_records()]


def _command_text(record: state.ContainerRecord) -> str:
    cmd = record.spec.command
    return " ".join(cmd) if cmd else "(image default)"


def main_ps(argv: list[str]) -> int:
    from machinectl_py.bus import Bus

    p = _Parser(prog="pymachine ps", description="List containers (running ones; -a for all).")
    p.add_argument("-a", "--all", action="store_true", help="include stopped containers")
    p.add_argument("--json", action="store_true", help="one JSON object per container, in a list")
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    args = p.parse_args(argv)
    with Bus.system() as bus:
        rows = [s for s in statuses(bus) if args.all or s.status in ("running", "restarting", "starting")]
    if args.json:
        print(json.dumps([_ps_json(s) for s in rows], indent=1))
        return 0
    if args.quiet:
        for s in rows:
            print(s.record.name)
        return 0
    table = [("NAME", "ID", "IMAGE", "STATUS", "PID", "STARTED", "FINISHED", "UNIT", "COMMAND")]
    for s in rows:
        r = s.record
        table.append((r.name, r.id[:12], r.image_name, s.text, str(s.pid or "-"), _ago(r.started),
                      _ago(r.finished) if s.status == "exited" else "-", r.unit or "-", _command_text(r)[:40]))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _ps_json(s: Status) -> dict[str, Any]:
    r = s.record
    return {"name": r.name, "id": r.id, "image": r.image_name, "status": s.status, "exit_code": s.exit_code,
            "pid": s.pid or None, "created": r.created, "started": r.started, "finished": r.finished,
            "unit": r.unit, "command": list(r.spec.command) if r.spec.command else None}


# -- inspect ---------------------------------------------------------------------------------------


def inspect_data(s: Status) -> dict[str, Any]:
    """docker inspect's shape, for the fields pymachine has."""
    from machinectl_py import config
    from machinectl_py.paths import container_path
    from machinectl_py.volumes import data_dir

    r, spec = s.record, s.record.spec
    mounts = []
    for v in spec.volumes:
        bind = bool(v.source and v.source.startswith("/"))
        mounts.append({"Type": "bind" if bind else "volume", "Name": None if bind else v.source,
                       "Source": v.source if bind else str(data_dir(v.source or "")),
                       "Destination": v.target, "RW": not v.read_only})
    return {
        "Id": r.id, "Name": r.name, "Created": _iso(r.created), "Image": r.image_id, "ImageName": r.image_name,
        "Path": spec.command[0] if spec.command else None,
        "Args": list(spec.command[1:]) if spec.command else [],
        "State": {"Status": s.status, "Running": s.status == "running", "Restarting": s.status == "restarting",
                  "Pid": s.pid, "ExitCode": s.exit_code if s.exit_code is not None else 0,
                  "StartedAt": _iso(r.started), "FinishedAt": _iso(r.finished if s.status == "exited" else None)},
        "Config": {"Hostname": spec.effective_hostname, "Env": [f"{k}={v}" for k, v in spec.env.items()],
                   "Cmd": list(spec.command) if spec.command else None, "Image": spec.image,
                   "WorkingDir": spec.workdir or ""},
        "HostConfig": {"NetworkMode": spec.network, "RestartPolicy": {"Name": spec.restart},
                       "Memory": spec.limits.memory_max or 0,
                       "NanoCpus": (spec.limits.cpu_quota_usec or 0) * 1000,
                       "PidsLimit": spec.limits.tasks_max or 0, "AutoRemove": spec.remove},
        "Mounts": mounts,
        "Unit": r.unit, "UnitState": s.unit_state,
        "Definition": str(config.definition_path(r.name)) if config.definition_exists(r.name) else None,
        "StateDir": container_path(r.name),
    }


_FIELD = re.compile(r"{{\s*(json\s+)?((?:\.[A-Za-z0-9_]+)+|\.)\s*}}")


def render_format(template: str, data: dict[str, Any]) -> str:
    """docker's --format for the common case: `{{ .State.Pid }}`, `{{json .Mounts}}`."""

    def value(match: re.Match[str]) -> str:
        as_json, path = match.group(1), match.group(2)
        current: Any = data
        for part in [p for p in path.split(".") if p]:
            if not isinstance(current, dict) or part not in current:
                raise UsageError(f"--format: no field {path!r}", hint="fields are those of `pymachine inspect`")
            current = current[part]
        if as_json or isinstance(current, (dict, list)):
            return json.dumps(current)
        if current is None:
            return "<no value>"
        if isinstance(current, bool):
            return "true" if current else "false"
        return str(current)

    rest = _FIELD.sub(value, template)
    if "{{" in rest:
        raise UsageError(f"--format: unsupported template {template!r}", hint="use paths such as '{{ .State.Pid }}'")
    return rest.replace("\\n", "\n").replace("\\t", "\t")


def _status_of(bus: Bus, name: str) -> Status:
    from machinectl_py import config, state
    from machinectl_py.errors import NotFoundError

    try:
        record = state.load(name)
    except NotFoundError:
        if config.definition_exists(name):  # read-only verbs never make state
            raise NotFoundError(f"container {name} is defined ({config.definition_path(name)}) but was never "
                                "started", hint=f"pymachine start {name}") from None
        raise
    return Status(record, _unit_props(bus, record))


def main_inspect(argv: list[str]) -> int:
    from machinectl_py.bus import Bus

    p = _Parser(prog="pymachine inspect", description="Show containers' details (docker inspect's fields).")
    p.add_argument("-f", "--format", help="Go-template-like format, e.g. '{{ .State.Pid }}'")
    p.add_argument("--json", action="store_true", help="JSON (the default without --format)")
    p.add_argument("names", nargs="+", metavar="NAME")
    args = p.parse_args(argv)
    with Bus.system() as bus:
        items = [inspect_data(_status_of(bus, n)) for n in args.names]
    if args.format and not args.json:
        for item in items:
            print(render_format(args.format, item))
    else:
        print(json.dumps(items, indent=2))
    return 0


def main_status(argv: list[str]) -> int:
    from machinectl_py.bus import Bus

    p = _Parser(prog="pymachine status", description="A human summary of a container, like machinectl status.")
    p.add_argument("name", metavar="NAME")
    args = p.parse_args(argv)
    with Bus.system() as bus:
        s = _status_of(bus, args.name)
    d = inspect_data(s)
    r = s.record
    since = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r.started))}" if r.started and \
        s.status == "running" else ""
    lines = [
        f"{r.name} ({r.id[:12]})",
        ("Status", f"{s.text}{since}"),
        ("Unit", f"{r.unit} ({s.unit_state})"),
        ("Leader", _leader_text(s.pid)),
        ("Image", f"{r.image_name} ({r.image_id[:19]})"),
        ("Command", _command_text(r)),
        ("Network", r.spec.network),
        ("Restart", r.spec.restart),
        ("Limits", _limits_text(r)),
        ("Volumes", ", ".join(f"{m['Source']}:{m['Destination']}{'' if m['RW'] else ':ro'}" for m in d["Mounts"])
         or "-"),
        ("Definition", d["Definition"] or "-"),
        ("Logs", f"pymachine logs {r.name}   (journalctl CONTAINER_NAME={r.name})"),
    ]
    for line in lines:
        if isinstance(line, str):
            print(line)
        else:
            print(f"{line[0]:>11}: {line[1]}")
    sys.stdout.flush()
    return 0


def _leader_text(pid: int) -> str:
    if not pid:
        return "-"
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f"{pid} ({f.read().strip()})"
    except OSError:
        return str(pid)


def _limits_text(record: state.ContainerRecord) -> str:
    lim = record.spec.limits
    parts = []
    if lim.memory_max is not None:
        parts.append(f"MemoryMax={lim.memory_max}")
    if lim.cpu_quota_usec is not None:
        parts.append(f"CPUQuota={lim.cpu_quota_usec / 10_000:g}%")
    if lim.tasks_max is not None:
        parts.append(f"TasksMax={lim.tasks_max}")
    return " ".join(parts) or "-"
