"""Reading the kernel's cgroup files: what systemd has no property for (OOM kills on a v1 host,
a v1 cgroup's IO bytes) and the kernel's side of `explain`. Read only, with one exception:
`join_unit` puts a new `exec` process into the cgroups a delegated unit's init already holds
(see its docstring); every other write to a cgroup goes through systemd as a unit property.

Paths are systemd's ControlGroup= values (/machine.slice/pymachine@web.service). On a pure v2
host a controller's file is /sys/fs/cgroup/CGROUP/FILE; on a hybrid or legacy one it is in
the controller's own hierarchy, /sys/fs/cgroup/CONTROLLER/CGROUP/FILE.
"""

from __future__ import annotations

import os

ROOT = "/sys/fs/cgroup"
# The v1 hierarchy of each v2 file pymachine reads (Debian mounts cpu and cpuacct together).
V1_FILES = {"memory.max": ("memory", "memory.limit_in_bytes"), "memory.low": ("memory", "memory.soft_limit_in_bytes"),
            "pids.max": ("pids", "pids.max"), "cpu.max": ("cpu", "cpu.cfs_quota_us"),
            "cpu.weight": ("cpu", "cpu.shares"), "memory.current": ("memory", "memory.usage_in_bytes"),
            "io.max": ("blkio", "blkio.throttle.read_bps_device")}


def unified() -> bool:
    return os.path.exists(f"{ROOT}/cgroup.controllers")


def file_path(cgroup: str, v2_name: str, unified_host: bool | None = None) -> str:
    """The file that holds what `v2_name` holds on v2, on this host's layout."""
    if unified_host if unified_host is not None else unified():
        return f"{ROOT}{cgroup}/{v2_name}"
    controller, v1_name = V1_FILES.get(v2_name, (v2_name.partition(".")[0], v2_name))
    return f"{ROOT}/{controller}{cgroup}/{v1_name}"


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def read_fast(path: str) -> str | None:
    """read() without a file object (os.open/os.read): a third of its cost, for the hundreds
    of small files a `stats` reads."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 1 << 16).decode("ascii", "replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def keyed(text: str | None) -> dict[str, int]:
    """'key value' lines (memory.events, memory.oom_control, cpu.stat) -> {key: value}."""
    out = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def oom_kills(cgroup: str, unified_host: bool | None = None) -> int:
    """Processes of the cgroup the OOM killer killed: memory.events on v2, memory.oom_control's
    oom_kill on v1 (both count kills under this cgroup's limit)."""
    if unified_host if unified_host is not None else unified():
        return keyed(read(f"{ROOT}{cgroup}/memory.events")).get("oom_kill", 0)
    return keyed(read(f"{ROOT}/memory{cgroup}/memory.oom_control")).get("oom_kill", 0)


def cgroup_of(pid: int | str, unified_host: bool | None = None) -> str | None:
    """The cgroup of a process in the hierarchy that holds its memory (the unit's, for a process
    systemd put there): the v2 line on v2, the memory controller's on v1."""
    text = read(f"/proc/{pid}/cgroup")
    want_v2 = unified_host if unified_host is not None else unified()
    for line in (text or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if (want_v2 and controllers == "") or (not want_v2 and "memory" in controllers.split(",")):
            return path
    return None


def io_bytes_v1(cgroup: str) -> tuple[int, int]:
    """(read, written) bytes of a v1 cgroup, where systemd keeps no IO accounting."""
    read_bytes = written = 0
    for line in (read_fast(f"{ROOT}/blkio{cgroup}/blkio.throttle.io_service_bytes_recursive") or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2].isdigit():
            if parts[1] == "Read":
                read_bytes += int(parts[2])
            elif parts[1] == "Write":
                written += int(parts[2])
    return read_bytes, written


def processes(cgroup: str, unified_host: bool | None = None) -> list[int]:
    """Every process in the cgroup and the cgroups below it (a delegated unit's container makes its
    own), from the v2 hierarchy or, on v1, the memory controller's (every pymachine unit has one)."""
    v2 = unified_host if unified_host is not None else unified()
    top = f"{ROOT}{cgroup}" if v2 else f"{ROOT}/memory{cgroup}"
    pids: list[int] = []
    for directory, _, _ in os.walk(top):
        pids += [int(p) for p in (read(f"{directory}/cgroup.procs") or "").split()]
    return pids


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command (field 3, the state, is [0])."""
    text = read(f"/proc/{pid}/stat") or ""
    return text[text.rfind(")") + 2:].split()


def counters(cgroup: str, unified_host: bool) -> dict[str, int | None]:
    """What `stats` shows of a unit's cgroup, from the kernel files systemd's own accounting
    properties read (MemoryCurrent memory.current, MemoryMax memory.max, TasksCurrent
    pids.current, CPUUsageNSec cpu.stat, IOReadBytes/IOWriteBytes io.stat; v1: the memory,
    pids and blkio hierarchies), read here directly as systemd-cgtop does: one Get per counter
    per container made `stats` as slow as podman's. None where the file is missing; a limit
    of "max" is UINT64_MAX."""
    memory = file_path(cgroup, "memory.current", unified_host)
    limit = file_path(cgroup, "memory.max", unified_host)
    pids = f"{ROOT}{cgroup}/pids.current" if unified_host else f"{ROOT}/pids{cgroup}/pids.current"
    read_bytes, written = io_bytes_v2(cgroup) if unified_host else io_bytes_v1(cgroup)
    return {"memory": _number(read_fast(memory)), "limit": _limit(read_fast(limit)), "pids": _number(read_fast(pids)),
            "cpu_ns": cpu_usage_nsec(cgroup, unified_host), "io_read": read_bytes, "io_write": written}


def _number(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def io_bytes_v2(cgroup: str) -> tuple[int, int]:
    """(read, written) bytes of a v2 cgroup: io.stat's rbytes= and wbytes= of every device."""
    read_bytes = written = 0
    for field in (read_fast(f"{ROOT}{cgroup}/io.stat") or "").split():
        key, _, value = field.partition("=")
        if key == "rbytes" and value.isdigit():
            read_bytes += int(value)
        elif key == "wbytes" and value.isdigit():
            written += int(value)
    return read_bytes, written


def cpu_usage_nsec(cgroup: str, unified_host: bool) -> int | None:
    """CPU time of everything that ever ran in the cgroup, in ns, from the unified hierarchy's
    cpu.stat (which the kernel keeps without the cpu controller): on a hybrid host the v2 tree
    at /sys/fs/cgroup/unified has every unit's cgroup. None where there is no such file."""
    for top in (ROOT, f"{ROOT}/unified") if unified_host else (f"{ROOT}/unified",):
        usage = keyed(read_fast(f"{top}{cgroup}/cpu.stat")).get("usage_usec")
        if usage is not None:
            return usage * 1000
    return None


def cpu_nsec(pids: list[int]) -> int:
    """CPU time (user + system) of these processes, in ns: a v1 host's stand-in for
    CPUUsageNSec where the unit keeps no CPU accounting (only the living processes count)."""
    ticks = 0
    for pid in pids:
        fields = stat_fields(pid)
        if len(fields) > 12:
            ticks += int(fields[11]) + int(fields[12])
    return ticks * 1_000_000_000 // CLOCK_TICKS


def net_bytes(pid: int) -> tuple[int, int]:
    """(received, sent) bytes of the network namespace of a process, loopback aside."""
    rx = tx = 0
    for line in (read_fast(f"/proc/{pid}/net/dev") or "").splitlines()[2:]:
        name, _, counters = line.partition(":")
        values = counters.split()
        if name.strip() != "lo" and len(values) >= 9:
            rx, tx = rx + int(values[0]), tx + int(values[8])
    return rx, tx


_mem_total: list[int] = []


def mem_total() -> int:
    """The host's memory (read once a process): the limit of a container without one."""
    if not _mem_total:
        lines = (read("/proc/meminfo") or "").splitlines()
        _mem_total.append(next((int(ln.split()[1]) * 1024 for ln in lines if ln.startswith("MemTotal:")), 0))
    return _mem_total[0]


# -- the kernel's side of a unit property (explain) ------------------------------------------------

UINT64_MAX = 2**64 - 1
_V1_UNLIMITED = 1 << 62  # v1 spells "no limit" as a page-rounded LONG_MAX


def _limit(text: str | None) -> int | None:
    if text is None:
        return None
    if text == "max" or text == "-1" or (text.isdigit() and int(text) >= _V1_UNLIMITED):
        return UINT64_MAX
    return int(text) if text.lstrip("-").isdigit() else None


def _quota(quota: str | None, period: str | None) -> int | None:
    """CPUQuotaPerSecUSec from a quota and its period (cpu.max, or v1's cfs files)."""
    if quota is None or period is None or not period.isdigit():
        return None
    if quota in ("max", "-1"):
        return UINT64_MAX
    return int(quota) * 1_000_000 // int(period)


def kernel_value(prop: str, cgroup: str, unified_host: bool) -> tuple[str, object] | None:
    """(file, value in the unit property's own terms) of what the kernel enforces for `prop`
    in the cgroup; None where pymachine reads no file for it."""
    base = f"{ROOT}{cgroup}" if unified_host else ""
    if prop in ("MemoryMax", "MemoryLow", "MemorySwapMax", "TasksMax"):
        v2 = {"MemoryMax": "memory.max", "MemoryLow": "memory.low", "MemorySwapMax": "memory.swap.max",
              "TasksMax": "pids.max"}[prop]
        path = file_path(cgroup, v2, unified_host)
        return path, _limit(read(path))
    if prop == "CPUQuotaPerSecUSec":
        if unified_host:
            quota, _, period = (read(f"{base}/cpu.max") or "").partition(" ")
            return f"{base}/cpu.max", _quota(quota or None, period or None)
        v1 = f"{ROOT}/cpu{cgroup}"
        return f"{v1}/cpu.cfs_quota_us", _quota(read(f"{v1}/cpu.cfs_quota_us"), read(f"{v1}/cpu.cfs_period_us"))
    if prop == "CPUWeight":
        if unified_host:
            return f"{base}/cpu.weight", _limit(read(f"{base}/cpu.weight"))
        shares = _limit(read(f"{ROOT}/cpu{cgroup}/cpu.shares"))
        return f"{ROOT}/cpu{cgroup}/cpu.shares", None if shares is None else round(shares * 100 / 1024)
    if unified_host and prop in ("AllowedCPUs", "AllowedMemoryNodes"):
        path = f"{base}/{'cpuset.cpus' if prop == 'AllowedCPUs' else 'cpuset.mems'}"
        return path, read(path)
    if unified_host and prop == "IOWeight":
        text = read(f"{base}/io.weight") or ""
        return f"{base}/io.weight", _limit(text.split()[1]) if text.startswith("default ") else None
    return None


def unit_placement(cgroup_text: str, unit: str, unified_host: bool) -> list[tuple[str, str]] | None:
    """Where systemd's AttachProcessesToUnit(UNIT, "", pid) puts a process, from the
    /proc/PID/cgroup of a process of UNIT: [(cgroup.procs file, path)], one per hierarchy.
    In each hierarchy where the process is in UNIT's cgroup or below, UNIT's own cgroup; in
    the others (a v1 controller the unit has no cgroup of its own in), the slice above UNIT it
    sits in, as systemd realized it. None if a line shows anything else (the caller asks
    systemd): no path ever comes from outside UNIT's cgroup and the slices above it."""
    lines = [line.split(":", 2) for line in cgroup_text.splitlines() if line.count(":") >= 2]
    marker = f"/{unit}/"
    own = [(path + "/")[:(path + "/").index(marker) + len(marker) - 1] for _, _, path in lines if marker in path + "/"]
    if not own or any(path != own[0] for path in own):
        return None
    unit_cgroup = own[0]
    placement = []
    for _, controllers, path in lines:
        if marker in path + "/":
            target = unit_cgroup
        elif path == "/" or unit_cgroup.startswith(path.rstrip("/") + "/"):
            target = path
        else:
            return None
        if controllers == "":
            directory = ROOT if unified_host else f"{ROOT}/unified"
        else:
            directory = f"{ROOT}/{controllers.removeprefix('name=')}"
        placement.append((f"{directory}{target.rstrip('/')}/cgroup.procs", target))
    return placement


def unit_dir_v2(member: int, unit: str, member_cgroups: str | None = None) -> str | None:
    """On a pure cgroup v2 host, the directory of the cgroup join_unit would write a process
    into (UNIT's own, beside MEMBER), for a child born there (clone3's CLONE_INTO_CGROUP);
    None elsewhere (a hybrid host also needs its v1 hierarchies written)."""
    if not unified():
        return None
    text = member_cgroups if member_cgroups is not None else read(f"/proc/{member}/cgroup") or ""
    placement = unit_placement(text, unit, True)
    if not placement or len(placement) != 1:
        return None
    return os.path.dirname(placement[0][0])


def join_unit(pid: int, member: int, unit: str, member_cgroups: str | None = None) -> bool:
    """Move process PID (ours, not yet running anything) where AttachProcessesToUnit(UNIT) would,
    by writing it to cgroup.procs: beside MEMBER, a process of the delegated UNIT (its init).
    False, having written nothing or only part, when that cannot be done; the caller then asks
    systemd, which moves it everywhere again.

    Not a write behind systemd's back: UNIT has Delegate=yes, so its cgroup subtree is the
    container manager's, and systemd tells a process's unit from its cgroup in the systemd
    hierarchy, where PID lands inside UNIT; in a v1 controller's hierarchy that UNIT has no
    cgroup of its own in, PID joins the slice systemd realized and put UNIT's init in. runc
    (with systemd's cgroup driver too) joins an exec'd process the same way. member_cgroups:
    MEMBER's /proc/PID/cgroup, if the caller has read it already."""
    text = member_cgroups if member_cgroups is not None else read(f"/proc/{member}/cgroup") or ""
    placement = unit_placement(text, unit, unified())
    if placement is None:
        return False
    try:
        for procs, _ in placement:
            with open(procs, "w") as f:
                f.write(str(pid))
    except OSError:
        return False
    return True
