"""`pymachine ps|inspect|status`: what containers there are and how they are, from
container.json and, for the live part, from systemd (the unit's state and main PID).
"""

from __future__ import annotations

import os
import sys
import time

from machinectl_py import formatting
from machinectl_py.args import APPEND, FLAG, Command, Option
from machinectl_py.errors import UsageError

# `ps` and `inspect` are polled by scripts: no `json` or `typing` import (formatting.to_json).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from machinectl_py import state
    from machinectl_py.bus import Bus

FORMAT_HELP = ("format with a Go-template-like TEMPLATE: '{{ .Field }}', '{{ json .Field }}', "
               "or 'table {{ .Field }}\\t...' for aligned columns with a header")

PS = Command(
    "pymachine ps", "pymachine ps [OPTIONS]",
    "List containers: the running ones, or all with -a. The state comes from each container's\n"
    "record and, for the live part, from its systemd unit.",
    [
        Option("--all -a", "include stopped containers", kind=FLAG),
        Option("--filter -f", "only containers that match: name=TEXT (a part of the name), label=KEY[=VALUE], "
               "status=created|running|exited|restarting (repeatable: all must match)", kind=APPEND,
               metavar="FILTER"),
        Option("--format", FORMAT_HELP + "; the fields are those of --json (.Names, .Status, .ID...)",
               metavar="TEMPLATE"),
        Option("--json", "one JSON object per container, in a list", kind=FLAG),
        Option("--quiet -q", "names only", kind=FLAG),
    ],
    epilog="examples:\n  pymachine ps -a --filter label=tier=web\n"
           "  pymachine ps --format 'table {{.Names}}\\t{{.Status}}'",
)
INSPECT = Command(
    "pymachine inspect", "pymachine inspect [OPTIONS] NAME [NAME...]",
    "Show containers' details, with docker inspect's field names (State, Config, HostConfig,\n"
    "Mounts) plus pymachine's own (Unit, UnitState, Definition, StateDir).",
    [
        Option("--format -f", FORMAT_HELP + ", e.g. '{{ .State.Pid }}'", metavar="TEMPLATE"),
        Option("--json", "JSON (the default without --format)", kind=FLAG),
    ],
    positionals=[("names", "container names", "+")],
)
STATUS = Command(
    "pymachine status", "pymachine status NAME",
    "A human summary of a container, like machinectl status.", [],
    positionals=[("name", "container name")],
)


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
    def oom_killed(self) -> bool:
        return self.status == "exited" and self.record.oom_killed

    @property
    def text(self) -> str:
        if self.oom_killed:
            return f"oom-killed ({self.exit_code if self.exit_code is not None else '?'})"
        if self.status == "exited":
            return f"exited ({self.exit_code if self.exit_code is not None else '?'})"
        return self.status


# The Service properties inspect and status read; ps reads none (see _listed_props).
_SERVICE_PROPERTIES = ("MainPID", "ExecMainStatus", "Result", "NRestarts")
_UNIT_PATTERNS = ["pymachine@*.service", "machine-*.scope"]


def _unit(record: state.ContainerRecord) -> str:
    from machinectl_py.unit_template import unit_name

    return record.unit or unit_name(record.name)


def _unit_props(bus: Bus, record: state.ContainerRecord) -> dict[str, Any]:
    """One container's unit state: two round trips (GetUnit, then its few properties' Gets at
    once), whatever the number of containers."""
    from machinectl_py import systemd

    unit = _unit(record)
    service = unit.endswith(".service")
    props = systemd.unit_state(bus, unit, _SERVICE_PROPERTIES if service else ())
    if props and not service:
        props["MainPID"] = record.pid or 0
    return props


def _listed_props(record: state.ContainerRecord, units: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A container's unit state from the one ListUnitsByPatterns of `ps`. MainPID comes from the
    record: the unit's setup process writes the init's PID there and to PIDFile=, from which
    systemd takes MainPID (Type=forking), and a restart writes both again."""
    props = dict(units.get(_unit(record), {}))
    if props:
        props["MainPID"] = record.pid or 0
    return props


def statuses(bus: Bus) -> list[Status]:
    """Every container's status with one bus call, whatever their number."""
    from machinectl_py import state, systemd

    records = state.list_records()
    units = systemd.unit_states(bus, _UNIT_PATTERNS) if records else {}
    return [Status(r, _listed_props(r, units)) for r in records]


def _command_text(record: state.ContainerRecord) -> str:
    cmd = record.spec.command
    return " ".join(cmd) if cmd else "(image default)"


_LIVE = ("running", "restarting", "starting")
_FILTER_KEYS = ("name", "label", "status")


def parse_filters(items: list[str]) -> list[tuple[str, str]]:
    filters = []
    for item in items:
        key, eq, value = item.partition("=")
        if key not in _FILTER_KEYS or not eq or not value:
            raise UsageError(f"pymachine ps: invalid filter {item!r}",
                             hint="use name=TEXT, label=KEY[=VALUE] or status=STATUS")
        filters.append((key, value))
    return filters


def matches(s: Status, filters: list[tuple[str, str]]) -> bool:
    return _passes(s.record.name, s.status, s.record.spec.labels, filters)


def _passes(name: str, status: str, labels: Mapping[str, str], filters: list[tuple[str, str]]) -> bool:
    """docker ps --filter name=, status=, label=K[=V] (every filter must hold)."""
    for key, value in filters:
        if key == "name" and value not in name:
            return False
        if key == "status" and status != value:
            return False
        if key == "label":
            label, eq, wanted = value.partition("=")
            if label not in labels or (eq and labels[label] != wanted):
                return False
    return True


def main_ps(argv: list[str]) -> int:
    from machinectl_py.bus import Bus

    args = PS.parse_or_help(argv)
    if args is None:
        return 0
    filters = parse_filters(args["filter"])
    show_all = args["all"] or any(key == "status" for key, _ in filters)
    with Bus.systemd() as bus:
        rows = [s for s in statuses(bus) if (show_all or s.status in _LIVE) and matches(s, filters)]
    ports = _published()
    entries = [_ps_json(s, ports) for s in rows] + oci_entries(show_all, filters)
    if args["json"]:
        print(formatting.to_json(entries, indent=1))
        return 0
    if args["quiet"]:
        for e in entries:
            print(e["name"])
        return 0
    if args["format"] is not None:
        for line in formatting.render_all(args["format"], entries):
            print(line)
        return 0
    table = [("NAME", "ID", "IMAGE", "ORIGIN", "STATUS", "PID", "STARTED", "FINISHED", "UNIT", "COMMAND", "PORTS")]
    for e in entries:
        table.append((e["name"], e["ID"], e["image"] or "-", e["origin"], e["Status"], str(e["pid"] or "-"),
                      _ago(e["started"]), _ago(e["finished"]) if e["status"] == "exited" else "-", e["unit"] or "-",
                      e["Command"][:40], e["Ports"]))
    for line in formatting.align(table, gap=2):
        print(line)
    return 0


# -- OCI containers (pymachine-runc: containerd's, or by hand) -------------------------------------


def oci_entries(show_all: bool, filters: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The OCI runtime's containers, from its index of machines (oci/store.py), as ps rows with
    their origin: `oci/containerd` for those containerd's shim made (its --root), else `oci`."""
    from machinectl_py.oci import store

    out = []
    for st, root in store.indexed():
        entry = _oci_json(st, root, store.status_of(root, st))
        if (show_all or entry["status"] in _LIVE) and _oci_matches(entry, filters):
            out.append(entry)
    return out


def _oci_json(st: dict[str, Any], root: str, status: str) -> dict[str, Any]:
    state = "exited" if status == "stopped" else status
    labels = {str(k): str(v) for k, v in (st.get("annotations") or {}).items()}
    image = labels.get("io.kubernetes.cri.image-name") or labels.get("io.containerd.image.name") or ""
    origin = "oci/containerd" if root.startswith("/run/containerd/") else "oci"
    args = list(st.get("args") or [])
    command = " ".join(args) or "-"
    created = _epoch(st.get("created"))
    pid = int(st["pid"]) if state != "exited" else 0
    return {"name": st["machine"], "id": st["id"], "image": image, "status": state, "exit_code": None,
            "oom_killed": False, "pid": pid or None, "created": created, "started": created, "finished": None,
            "unit": st.get("unit"), "command": args or None, "labels": labels, "origin": origin,
            "bundle": st.get("bundle"),
            "Names": st["machine"], "ID": st["id"][:12], "Image": image, "Command": command,
            "CreatedAt": st.get("created") or _iso(None), "RunningFor": _ago(created), "Status": state,
            "State": state, "Labels": ",".join(f"{k}={v}" for k, v in labels.items()), "Unit": st.get("unit") or "",
            "Pid": pid, "Origin": origin, "Ports": ""}


def _epoch(text: Any) -> float | None:
    import calendar

    try:
        return float(calendar.timegm(time.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def _oci_matches(entry: dict[str, Any], filters: list[tuple[str, str]]) -> bool:
    return _passes(entry["name"], entry["status"], entry["labels"], filters)


def _published() -> dict[str, str]:
    """Running containers' published ports, as docker's PORTS column (none: no import at all)."""
    from machinectl_py.paths import run_path

    if not os.path.isdir(run_path("networks")):
        return {}
    from machinectl_py.cmd_port import ports_text, published

    return {name: ports_text(ports) for name, ports in published().items() if ports}


def _ps_json(s: Status, ports: dict[str, str] | None = None) -> dict[str, Any]:
    """One row of `ps --json` and `ps --format`: pymachine's lower-case fields, and docker's
    `ps --format` names beside them (.Names, .ID, .Image, .Command, .Status, .State, .Labels...)."""
    r = s.record
    labels = dict(r.spec.labels)
    return {"name": r.name, "id": r.id, "image": r.image_name, "status": s.status, "exit_code": s.exit_code,
            "oom_killed": s.oom_killed,
            "pid": s.pid or None, "created": r.created, "started": r.started, "finished": r.finished,
            "unit": r.unit, "command": list(r.spec.command) if r.spec.command else None, "labels": labels,
            "Names": r.name, "ID": r.id[:12], "Image": r.image_name, "Command": _command_text(r),
            "CreatedAt": _iso(r.created), "RunningFor": _ago(r.started), "Status": s.text, "State": s.status,
            "Labels": ",".join(f"{k}={v}" for k, v in labels.items()), "Unit": r.unit or "", "Pid": s.pid or 0,
            "origin": "pymachine", "Origin": "pymachine", "Ports": (ports or {}).get(r.name, "")}


# -- inspect ---------------------------------------------------------------------------------------


def inspect_data(s: Status) -> dict[str, Any]:
    """docker inspect's shape: Config, HostConfig and Mounts from the settings table, State here."""
    from machinectl_py import config, settings
    from machinectl_py.paths import container_path

    r, spec = s.record, s.record.spec
    fields = settings.inspect_fields(spec)
    if spec.privileged and spec.userns is None:
        fields["HostConfig"]["UsernsMode"] = "host"  # what --privileged runs with (security.userns_mode)
    return {
        "Id": r.id, "Name": r.name, "Created": _iso(r.created), "Image": r.image_id, "ImageName": r.image_name,
        "Path": spec.command[0] if spec.command else None,
        "Args": list(spec.command[1:]) if spec.command else [],
        "State": {"Status": s.status, "Running": s.status == "running", "Restarting": s.status == "restarting",
                  "Pid": s.pid, "ExitCode": s.exit_code if s.exit_code is not None else 0,
                  "OOMKilled": s.oom_killed,
                  "StartedAt": _iso(r.started), "FinishedAt": _iso(r.finished if s.status == "exited" else None)},
        "Config": fields["Config"],
        "HostConfig": fields["HostConfig"],
        "Mounts": fields["Mounts"],
        "NetworkSettings": _network_settings(r.name, fields.get("NetworkSettings") or {}),
        "IdMappings": _id_mappings(r.userns),
        "Unit": r.unit, "UnitState": s.unit_state,
        "Definition": str(config.definition_path(r.name)) if config.definition_exists(r.name) else None,
        "StateDir": container_path(r.name),
    }


def _network_settings(name: str, configured: dict[str, Any]) -> dict[str, Any]:
    """docker's NetworkSettings: the running container's address on each network it is on
    (its leases), IPAddress and Gateway those of its first interface, Ports as docker's map."""
    from machinectl_py.paths import run_path

    out: dict[str, Any] = {"IPAddress": "", "IPPrefixLen": 0, "Gateway": "", "Ports": {}, "Networks": {},
                           **configured}
    if not os.path.isdir(run_path("networks")):
        return out
    from machinectl_py import ipam, netsetup

    for network, ip, lease in netsetup.memberships().get(name, []):
        net = ipam.load(network)
        gateway = str(ipam.p2p_gateway(ip) if net.point_to_point else net.gateway)
        prefix = 30 if net.point_to_point else net.subnet.prefixlen
        out["Networks"][network] = {"IPAddress": ip, "IPPrefixLen": prefix, "Gateway": gateway,
                                    "Aliases": lease.get("aliases") or [], "Interface": lease.get("ifname", "eth0"),
                                    "GlobalIPv6Address": str(net.address6(ip) or "")}
        if lease.get("ifname", "eth0") in ("eth0", "host0"):
            out.update(IPAddress=ip, IPPrefixLen=prefix, Gateway=gateway)
        for host_ip, host_port, port, proto in lease.get("ports") or []:  # type: ignore[attr-defined]
            out["Ports"].setdefault(f"{port}/{proto}", []).append({"HostIp": host_ip or "0.0.0.0",
                                                                   "HostPort": str(host_port)})
    return out


def _id_mappings(id_range: tuple[int, int] | None) -> dict[str, Any] | None:
    """The user namespace's mapping (podman's IDMappings shape); None without one. The range
    of the last start: kept while the container exists, reused by its next start."""
    if id_range is None:
        return None
    base, size = id_range
    line = f"0:{base}:{size}"
    return {"UidMap": [line], "GidMap": [line]}


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


def _inspect_one(bus: Bus, name: str) -> dict[str, Any]:
    """A pymachine container's inspect, or else an OCI container's (by its machine name)."""
    from machinectl_py.errors import NotFoundError
    from machinectl_py.oci import store

    try:
        return inspect_data(_status_of(bus, name))
    except NotFoundError:
        for st, root in store.indexed():
            if st["machine"] == name:
                return _oci_inspect(st, root, store.status_of(root, st))
        raise


def _oci_inspect(st: dict[str, Any], root: str, status: str) -> dict[str, Any]:
    e = _oci_json(st, root, status)
    args = e["command"] or []
    return {"Id": st["id"], "Name": st["machine"], "Created": e["CreatedAt"], "Origin": e["origin"],
            "Path": args[0] if args else None, "Args": args[1:],
            "State": {"Status": e["status"], "Running": e["status"] == "running", "Paused": e["status"] == "paused",
                      "Pid": e["pid"] or 0},
            "Config": {"Labels": e["labels"]}, "Bundle": st.get("bundle"), "Rootfs": st.get("rootfs"),
            "RuntimeRoot": root, "Unit": st.get("unit")}


def main_inspect(argv: list[str]) -> int:
    from machinectl_py.bus import Bus

    args = INSPECT.parse_or_help(argv)
    if args is None:
        return 0
    with Bus.systemd() as bus:
        items = [_inspect_one(bus, n) for n in args["names"]]
    if args["format"] and not args["json"]:
        for line in formatting.render_all(args["format"], items):
            print(line)
    else:
        print(formatting.to_json(items, indent=2))
    return 0


def main_status(argv: list[str]) -> int:
    from machinectl_py.bus import Bus

    args = STATUS.parse_or_help(argv)
    if args is None:
        return 0
    with Bus.systemd() as bus:
        s = _status_of(bus, args["name"])
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
    from machinectl_py.settings import live_properties

    return " ".join(p.line for p in live_properties(record.spec)) or "-"
