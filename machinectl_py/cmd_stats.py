"""`pymachine stats` and `pymachine top`: what containers use, and what runs in them.

stats asks systemd which containers' units run and since when (a ListUnitsByPatterns and a
Get of each, in one round trip for them all), then reads the counters from the
cgroup files systemd's accounting properties (MemoryCurrent, CPUUsageNSec, TasksCurrent,
IOReadBytes/IOWriteBytes) are read from, as systemd-cgtop does; network bytes from the
container's network namespace. docker's columns and `--format` fields.
"""

from __future__ import annotations

import sys
import time

from machinectl_py import formatting
from machinectl_py.args import FLAG, Command, Option
from machinectl_py.errors import NotFoundError

TYPE_CHECKING = False  # `typing` costs a few ms of every `stats`
if TYPE_CHECKING:
    from typing import Any

    from machinectl_py import state
    from machinectl_py.bus import Bus

UINT64_MAX = 2**64 - 1
RUNNING = ("active", "reloading", "deactivating")  # systemd.RUNNING_STATES, without importing it
COLUMNS = ("CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS")
FIELDS = ("ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs")

STATS = Command(
    "pymachine stats", "pymachine stats [OPTIONS] [NAME...]",
    "Show what running containers use: CPU, memory, network, block IO and processes, from\n"
    "systemd's accounting of their units. Refreshes every second on a terminal until Ctrl-C;\n"
    "with --no-stream (or output to a pipe), CPU % is the average since the container started.",
    [Option("--all -a", "also stopped containers", kind=FLAG),
     Option("--no-stream", "print once and exit", kind=FLAG),
     Option("--format", "'json' (one object a line), or a template: '{{ .Name }} {{ .CPUPerc }}', "
            "'table {{ .Name }}\\t{{ .MemUsage }}'; fields: .ID .Name .CPUPerc .MemUsage .MemPerc .NetIO "
            ".BlockIO .PIDs", metavar="FORMAT"),
     Option("--no-trunc", "full container ids", kind=FLAG)],
    positionals=[("names", "container names (default: all running)", "*")])
TOP = Command(
    "pymachine top", "pymachine top NAME [PS OPTIONS]",
    "The processes of a container: host PID, container PID (CPID), user, CPU time, command.\n"
    "With ps options (-ef, aux, -o pid,comm...), the host's ps with them, only the container's rows.",
    [], positionals=[("name", "container name")], rest=("ps_args", "options for ps"))


# -- docker's units ------------------------------------------------------------------------------


def binary_size(n: float) -> str:
    """docker's units.BytesSize: 1.5MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return ""


def decimal_size(n: float) -> str:
    """docker's units.HumanSize: 1.2kB, 3MB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return ""


# -- samples --------------------------------------------------------------------------------------


class Sample:
    """One container's counters at one moment."""

    __slots__ = ("record", "running", "cpu_ns", "at", "since", "memory", "limit", "pids", "block", "net", "found")

    def __init__(self, record: state.ContainerRecord, props: dict[str, Any], unified: bool) -> None:
        from machinectl_py import cgroupfs

        self.record = record
        self.at = time.monotonic()
        self.running = props.get("ActiveState") in RUNNING
        # Since when it runs: since systemd began to start the unit, as the CPU time of its cgroup
        # counts its setup process's too (from the end of the setup, a --cpus 0.5 container
        # showed 82% on the slow v2 tier); else since the record's (wall clock) start.
        entered = int(props.get("InactiveExitTimestampMonotonic") or 0) / 1e6
        self.since = entered or (self.at - (time.time() - record.started) if record.started else 0.0)
        self.cpu_ns = self.memory = self.pids = 0
        self.limit = 0
        self.block = self.net = (0, 0)
        self.found = True
        cgroup = str(props.get("ControlGroup") or "")
        if not self.running or not cgroup:
            return
        counted = cgroupfs.counters(cgroup, unified)
        if counted["memory"] is None and counted["pids"] is None:
            self.found = False  # not the cgroup systemd gave the unit: ask it (sample())
            return
        cpu_ns = counted["cpu_ns"]
        if cpu_ns is None:  # no unified hierarchy (a legacy host): the living processes' own time
            cpu_ns = cgroupfs.cpu_nsec(cgroupfs.processes(cgroup, unified))
        self.cpu_ns = cpu_ns
        self.memory = counted["memory"] or 0
        limit = counted["limit"]
        self.limit = limit if limit is not None and limit != UINT64_MAX else cgroupfs.mem_total()
        self.pids = counted["pids"] or 0
        self.block = (counted["io_read"] or 0, counted["io_write"] or 0)
        leader = int(props.get("MainPID") or record.pid or 0)
        if record.spec.network != "host" and leader:
            self.net = cgroupfs.net_bytes(leader)

    def cpu_percent(self, before: Sample | None) -> float:
        """Of one CPU, as docker counts (a busy loop is 100%): since `before`, else since the start."""
        if not self.running:
            return 0.0
        if before is not None and before.running and self.at > before.at:
            return max(0.0, (self.cpu_ns - before.cpu_ns) / ((self.at - before.at) * 1e9) * 100)
        elapsed = self.at - self.since if self.since else 0
        return self.cpu_ns / (elapsed * 1e9) * 100 if elapsed > 0 else 0.0

    def row(self, before: Sample | None, full_id: bool) -> dict[str, Any]:
        """docker's `stats --format` fields, plus plain numbers for scripts."""
        r = self.record
        cpu = self.cpu_percent(before)
        mem_pct = self.memory / self.limit * 100 if self.limit else 0.0
        running = self.running
        return {
            "ID": r.id if full_id else r.id[:12], "Container": r.name, "Name": r.name,
            "CPUPerc": f"{cpu:.2f}%" if running else "--",
            "MemUsage": f"{binary_size(self.memory)} / {binary_size(self.limit)}" if running else "-- / --",
            "MemPerc": f"{mem_pct:.2f}%" if running else "--",
            "NetIO": f"{decimal_size(self.net[0])} / {decimal_size(self.net[1])}" if running else "--",
            "BlockIO": f"{decimal_size(self.block[0])} / {decimal_size(self.block[1])}" if running else "--",
            "PIDs": str(self.pids) if running else "--",
            "cpu_percent": round(cpu, 2), "memory_bytes": self.memory, "memory_limit": self.limit,
            "pids": self.pids, "block_read": self.block[0], "block_write": self.block[1],
            "net_rx": self.net[0], "net_tx": self.net[1], "running": running,
        }


def _records(names: list[str]) -> list[state.ContainerRecord]:
    from machinectl_py import state

    if not names:
        return state.list_records()
    records = []
    for name in names:
        try:
            records.append(state.load(name))
        except NotFoundError:
            raise NotFoundError(f"no such container: {name}") from None
    return records


def sample(bus: Bus, records: list[state.ContainerRecord], unified: bool) -> list[Sample]:
    """One round trip to systemd: a ListUnitsByPatterns says which containers run, and with it
    a Get of each container its record says runs, since when (InactiveExitTimestampMonotonic;
    a Get of a unit not loaded loads it, so not of every record). Their cgroups are where
    systemd puts a unit of their slice, their main process is in their records. Only for a
    unit whose cgroup is elsewhere (a Slice= changed by hand) is systemd asked more."""
    from machinectl_py import systemd
    from machinectl_py.unit_template import unit_name

    units = [r.unit or unit_name(r.name) for r in records]
    believed = [u for r, u in zip(records, units, strict=True) if r.state == "running"]
    states, starts = systemd.states_and_starts(bus, systemd.unit_patterns(units), believed) if units else ({}, {})
    samples = []
    for record, unit in zip(records, units, strict=True):
        props = dict(states.get(unit, {}))
        props["ControlGroup"] = systemd.unit_cgroup(unit, record.spec.slice or systemd.MACHINE_SLICE)
        props["InactiveExitTimestampMonotonic"] = starts.get(unit, 0)
        samples.append(Sample(record, props, unified))
    lost = {s.record.name: unit for s, unit in zip(samples, units, strict=True) if not s.found}
    if lost:
        asked = systemd.running_units(bus, list(lost.values()))
        samples = [Sample(s.record, asked.get(lost[s.record.name], {}), unified) if s.record.name in lost else s
                   for s in samples]
    return samples


def render(samples: list[Sample], before: dict[str, Sample], args: dict[str, Any], show_all: bool) -> list[str]:
    rows = [s.row(before.get(s.record.name), args["no_trunc"]) for s in samples if s.running or show_all]
    template = args["format"]
    if template == "json":
        import json  # only here: importing it compiles regular expressions (~5 ms of every `stats`)

        return [json.dumps(row) for row in rows]
    if template:
        return formatting.render_all(template, rows)
    return formatting.align([COLUMNS, *[tuple(row[f] for f in FIELDS) for row in rows]])


def main_stats(argv: list[str]) -> int:
    from machinectl_py import cgroupfs
    from machinectl_py.bus import Bus

    args = STATS.parse_or_help(argv)
    if args is None:
        return 0
    records = _records(args["names"])
    show_all = args["all"] or bool(args["names"])
    unified = cgroupfs.unified()
    stream = not args["no_stream"] and sys.stdout.isatty()
    before: dict[str, Sample] = {}
    with Bus.systemd() as bus:
        while True:
            samples = sample(bus, records, unified)
            lines = render(samples, before, args, show_all)
            if stream:
                sys.stdout.write("\033[2J\033[H")
            for line in lines:
                print(line)
            sys.stdout.flush()
            if not stream:
                return 0
            before = {s.record.name: s for s in samples}
            try:
                time.sleep(1)
            except KeyboardInterrupt:
                return 0
            records = _records(args["names"])


# -- top ------------------------------------------------------------------------------------------


def _process_row(pid: int) -> tuple[str, ...] | None:
    from machinectl_py import cgroupfs

    status = cgroupfs.read(f"/proc/{pid}/status")
    fields = cgroupfs.stat_fields(pid)
    if status is None or len(fields) < 13:
        return None
    info = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uid = info.get("Uid", "0").split()[0]
    nspid = info.get("NSpid", str(pid)).split()[-1]
    seconds = (int(fields[11]) + int(fields[12])) // cgroupfs.CLOCK_TICKS
    cmdline = (cgroupfs.read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
    return (_user(uid), str(pid), fields[1], nspid, f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:"
            f"{seconds % 60:02d}", cmdline or f"[{info.get('Name', '?').strip()}]")


def _user(uid: str) -> str:
    import pwd

    try:
        return pwd.getpwuid(int(uid)).pw_name
    except (KeyError, ValueError):
        return uid


def container_pids(bus: Bus, name: str) -> list[int]:
    from machinectl_py import cgroupfs, systemd
    from machinectl_py.unit_template import unit_name

    record = _records([name])[0]
    props = systemd.running_unit(bus, record.unit or unit_name(name))
    if props.get("ActiveState") not in RUNNING or not props.get("ControlGroup"):
        raise NotFoundError(f"container {name} is not running")
    return sorted(cgroupfs.processes(str(props["ControlGroup"])))


def main_top(argv: list[str]) -> int:
    import subprocess

    from machinectl_py.bus import Bus

    args = TOP.parse_or_help(argv)
    if args is None:
        return 0
    with Bus.systemd() as bus:
        pids = container_pids(bus, args["name"])
    if args["ps_args"]:
        out = subprocess.run(["ps", *args["ps_args"]], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise NotFoundError(f"ps {' '.join(args['ps_args'])}: {out.stderr.strip()}")
        lines = out.stdout.splitlines()
        header = lines[0].split() if lines else []
        if "PID" not in header:
            raise NotFoundError("top: the ps options must show a PID column")
        column = header.index("PID")
        wanted = {str(p) for p in pids}
        print("\n".join([lines[0], *[ln for ln in lines[1:] if ln.split()[column:column + 1] in
                                     ([p] for p in wanted)]]))
        return 0
    rows = [row for row in map(_process_row, pids) if row is not None]
    for line in formatting.align([("UID", "PID", "PPID", "CPID", "TIME", "CMD"), *rows]):
        print(line)
    return 0
