"""systemd's side: unit properties (pure builders) and the few Manager calls pymachine makes.

Every resource limit reaches the kernel through systemd as a unit property (the
"systemd cgroup driver"); pymachine never writes cgroup files itself.

On the start-up path (`run`, `start` and `exec` import it; tests/unit/test_startup_imports.py
guards it): it imports nothing heavy at the top, and its annotations' names come in under
`TYPE_CHECKING = False`, because `typing` alone costs 8-10 ms to import here.
"""

from __future__ import annotations

from machinectl_py.bus import ERROR_FILE_NOT_FOUND, PROPERTIES, BusError
from machinectl_py.spec import ContainerSpec, Limits

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    from machinectl_py.bus import Bus

    Property: TypeAlias = tuple[str, tuple[str, Any]]

SYSTEMD = ("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT_INACTIVE = "org.freedesktop.systemd1.UnitInactive"
JOB_FAILED = "org.freedesktop.systemd1.JobFailed"
MACHINE_SLICE = "machine.slice"
UINT64_MAX = 2**64 - 1
STOP_TIMEOUT_USEC = 10_000_000  # docker stop's default grace period
JOB_TIMEOUT_USEC = 120_000_000
# What machined's CreateMachine (and so systemd-nspawn) gives a scope without a limit.
DEFAULT_TASKS_MAX = 16384
# On a host with v1 controller hierarchies: the controllers a container's own settings use
# (memory accounting and MemoryMax, TasksMax, DevicePolicy); cpu joins them with a CPU quota.
V1_DELEGATED_CONTROLLERS = ("memory", "pids", "devices")



def setting_properties(spec: ContainerSpec, *, scope: bool) -> list[Property]:
    """The unit properties of the container's settings (settings.SETTINGS: limits, stop signal
    and timeout; for a service also Restart= and Limit*=), in their D-Bus form."""
    from machinectl_py.settings import unit_properties

    return [p.dbus for p in unit_properties(spec, scope=scope)]


def device_properties(spec: ContainerSpec, device_allow: tuple[tuple[str, str], ...]) -> list[Property]:
    """DevicePolicy=closed plus the policy's allow-list and --device's nodes, as systemd-nspawn
    sets for its scopes; --privileged: DevicePolicy=auto, every device (security.py)."""
    from machinectl_py import security

    if security.device_policy(spec) == "auto":
        return [("DevicePolicy", ("s", "auto"))]
    allowed = list(security.device_allow(spec, device_allow))
    return [("DevicePolicy", ("s", "closed")), ("DeviceAllow", ("a(ss)", allowed))]


def delegate_properties(limits: Limits, unified_host: bool) -> list[Property]:
    """The scope is delegated (Delegate=yes): the container owns its subtree and may make
    sub-cgroups in it, as machined's CreateMachine makes every machine's scope.

    On a pure cgroup v2 host, with every controller: the container's cgroup2 mount is
    writable, so a systemd or a container engine inside can use them all.

    On a host with v1 controller hierarchies (hybrid or legacy), only with the controllers the
    container's own settings use. There the container sees the v1 hierarchies read-only, so a
    delegated controller gives it nothing; but delegating one that no other unit uses (cpu,
    blkio) makes systemd realize it for every unit in the tree, moving their processes into
    new v1 cgroups at start and back out at stop. That cost 6 ms of each start here, the
    kernel waiting out an RCU grace period for the first migration, plus a stop that held
    up machined. The container init mounts exactly the hierarchies it has its own cgroup
    in (plan.own_hierarchies), so none shows the host's tree."""
    if unified_host:
        return [("Delegate", ("b", True))]
    return [("DelegateControllers", ("as", v1_delegated_controllers(limits)))]  # implies Delegate=yes


def v1_delegated_controllers(limits: Limits) -> list[str]:
    """What a container's unit delegates on a host with v1 hierarchies (see delegate_properties)."""
    uses_cpu = any(v is not None for v in (limits.cpu_quota_usec, limits.cpu_period_usec, limits.cpu_weight))
    return [*V1_DELEGATED_CONTROLLERS, *(["cpu"] if uses_cpu else [])]


def accounting_properties(unified_host: bool) -> list[Property]:
    """The accounting `pymachine stats` reads (MemoryCurrent, TasksCurrent, CPUUsageNSec,
    IOReadBytes): on v2 all of it, cheap there. On a host with v1 hierarchies, memory and
    tasks only, whose controllers the unit has anyway: CPU or IO accounting would make systemd
    realize cpuacct or blkio for every unit in the slice at each start (see delegate_properties);
    `stats` reads the processes' CPU time there instead."""
    names = ["MemoryAccounting", "TasksAccounting"]
    if unified_host:
        names += ["CPUAccounting", "IOAccounting"]
    return [(name, ("b", True)) for name in names]


def scope_properties(spec: ContainerSpec, device_allow: tuple[tuple[str, str], ...],
                     pids: tuple[int, ...], unified_host: bool = True) -> list[Property]:
    """Properties of machine-NAME.scope, the same set machined's CreateMachine would give it
    (PIDs, Delegate=yes, TasksMax 16384 by default) plus nspawn's device policy and our limits;
    on a host with v1 hierarchies, delegated with fewer controllers (delegate_properties)."""
    limits = spec.limits
    props: list[Property] = [
        ("Description", ("s", f"pymachine container {spec.name}")),
        ("Slice", ("s", spec.slice or MACHINE_SLICE)),
        ("PIDs", ("au", list(pids))),
        *delegate_properties(limits, unified_host),
        *accounting_properties(unified_host),
        ("CollectMode", ("s", "inactive-or-failed")),
        # An OOM kill stops the container with Result=oom-kill (as the service's OOMPolicy=stop;
        # a delegated unit's default is "continue", which says nothing). A booted OS's own
        # systemd handles the OOM kill of one of its services (settings._boot_props).
        ("OOMPolicy", ("s", "continue" if spec.boot else "stop")),
    ]
    if spec.stop_timeout is None:
        props.append(("TimeoutStopUSec", ("t", STOP_TIMEOUT_USEC)))
    if limits.tasks_max is None:
        props.append(("TasksMax", ("t", DEFAULT_TASKS_MAX)))
    return props + device_properties(spec, device_allow) + setting_properties(spec, scope=True)


def call(bus: Bus, method: str, signature: str = "", *args: Any) -> list[Any]:
    return bus.call(*SYSTEMD, method, signature, *args)


def send(bus: Bus, method: str, signature: str = "", *args: Any) -> None:
    """A Manager call not waited for (its reply and errors are dropped); see Bus.send."""
    bus.send(*SYSTEMD, method, signature, *args)


def unit_file_state(bus: Bus, unit: str) -> str | None:
    """GetUnitFileState ("enabled", "static", ...); None if systemd knows no such unit file."""
    try:
        return str(call(bus, "GetUnitFileState", "s", unit)[0])
    except BusError as e:
        if e.name in (NO_SUCH_UNIT, ERROR_FILE_NOT_FOUND):
            return None
        raise


def attach_processes(bus: Bus, unit: str, pids: list[int], subcgroup: str = "") -> None:
    """AttachProcessesToUnit: move running processes into the unit's cgroup (or a sub-cgroup)."""
    call(bus, "AttachProcessesToUnit", "ssau", unit, subcgroup, pids)


def set_unit_properties(bus: Bus, unit: str, properties: list[Property], *, runtime: bool = True) -> None:
    """SetUnitProperties: systemd checks every property before it applies any (one refused value
    changes nothing), applies them to the unit's cgroup at once and writes them as drop-ins
    (/run/systemd/system.control with `runtime`, else /etc/systemd/system.control)."""
    call(bus, "SetUnitProperties", "sba(sv)", unit, runtime, properties)


RUNTIME_CONTROL_DIR = "/run/systemd/system.control"


def freeze_unit(bus: Bus, unit: str) -> None:
    call(bus, "FreezeUnit", "s", unit)


def thaw_unit(bus: Bus, unit: str) -> None:
    call(bus, "ThawUnit", "s", unit)


def unit_path(bus: Bus, unit: str) -> str | None:
    try:
        return str(call(bus, "GetUnit", "s", unit)[0])
    except BusError as e:
        if e.name == NO_SUCH_UNIT:
            return None
        raise


def get_unit_property(bus: Bus, unit: str, interface: str, prop: str) -> Any:
    path = unit_path(bus, unit)
    if path is None:
        return None
    return bus.get_property(SYSTEMD[0], path, f"{SYSTEMD[0]}.{interface}", prop)


def unit_properties(bus: Bus, unit: str, interface: str = "Unit") -> dict[str, Any]:
    """All properties of a loaded unit's interface (Unit, Service, Scope); {} if systemd has not
    loaded it."""
    path = unit_path(bus, unit)
    if path is None:
        return {}
    try:
        return bus.get_all(SYSTEMD[0], path, f"{SYSTEMD[0]}.{interface}")
    except BusError:
        return {}


# The state of units, for ps and inspect: two of the Unit interface's ~100 properties. A GetAll
# of the Unit and Service interfaces decoded ~2,700 values per container in Python.
STATE_PROPERTIES = ("ActiveState", "SubState")
# ListUnits* reply rows: name, description, load, active and sub state, followed, path, job id,
# job type, job path.
_UNIT_ROW = "ssssssouso"


def unit_states(bus: Bus, patterns: list[str]) -> dict[str, dict[str, Any]]:
    """ActiveState and SubState of every unit systemd holds whose name matches a pattern, in one
    call; a unit it does not hold is absent (as GetUnit's NoSuchUnit)."""
    rows = bus.call_rows(*SYSTEMD, "ListUnitsByPatterns", "asas", [], patterns, row=_UNIT_ROW, keep=(0, 3, 4))
    return {name: {"ActiveState": active, "SubState": sub} for name, active, sub in rows}


def unit_state(bus: Bus, unit: str, service_properties: tuple[str, ...] = ()) -> dict[str, Any]:
    """ActiveState, SubState and the named properties of the Service interface of one unit, in
    two round trips (GetUnit, then every Get at once); {} if systemd does not hold the unit."""
    path = unit_path(bus, unit)
    if path is None:
        return {}
    wanted = [(f"{SYSTEMD[0]}.Unit", p) for p in STATE_PROPERTIES]
    wanted += [(f"{SYSTEMD[0]}.Service", p) for p in service_properties]
    try:
        return dict(zip((p for _, p in wanted), bus.get_properties(SYSTEMD[0], path, wanted), strict=True))
    except BusError:
        return {}  # unloaded between the two calls


def unit_object_path(unit: str) -> str:
    """The unit's object path without asking systemd (GetUnit): its name escaped as systemd's
    bus_label_escape does (a letter or, after the first, a digit kept; anything else _XX)."""
    escaped = "".join(c if c.isascii() and (c.isalpha() or (i and c.isdigit())) else f"_{ord(c):02x}"
                      for i, c in enumerate(unit))
    return f"{SYSTEMD[1]}/unit/{escaped}"


# What `stats` asks systemd of a running unit (its ActiveState comes from ListUnitsByPatterns):
# where its cgroup is, since when it runs (from the start of its activation: the CPU time of its
# cgroup counts its setup too), its main process (a service's: its network namespace).
RUNNING_STATES = ("active", "reloading", "deactivating")
STATS_PROPERTIES = ("InactiveExitTimestampMonotonic", "ControlGroup")


def running_units(bus: Bus, units: list[str]) -> dict[str, dict[str, Any]]:
    """ActiveState of each unit systemd holds, and of the running ones their
    InactiveExitTimestampMonotonic, ControlGroup and (a service's) MainPID, in two round trips
    however many units: the states in one ListUnitsByPatterns, then every Get sent before the
    first reply is read. (One Get after another of each accounting property took 45 of the
    80 ms of a `stats` of 50 containers; a GetAll decodes ~250 properties of each.)"""
    if not units:
        return {}  # no patterns would be every unit
    out = {name: dict(props) for name, props in unit_states(bus, unit_patterns(units)).items() if name in units}
    wanted: list[tuple[str, str, str]] = []
    owners: list[tuple[str, str]] = []
    for unit, props in out.items():
        if props["ActiveState"] not in RUNNING_STATES:
            continue
        path = unit_object_path(unit)
        iface = f"{SYSTEMD[0]}.{'Scope' if unit.endswith('.scope') else 'Service'}"
        wanted += [(path, f"{SYSTEMD[0]}.Unit", STATS_PROPERTIES[0]), (path, iface, STATS_PROPERTIES[1])]
        owners += [(unit, STATS_PROPERTIES[0]), (unit, STATS_PROPERTIES[1])]
        if not unit.endswith(".scope"):
            wanted.append((path, iface, "MainPID"))
            owners.append((unit, "MainPID"))
    for (unit, name), value in zip(owners, bus.get_each(SYSTEMD[0], wanted), strict=True):
        if isinstance(value, BusError):
            out[unit]["ActiveState"] = "inactive"  # gone between the two calls
        else:
            out[unit][name] = value
    return out


def watch_units(bus: Bus) -> None:
    """Have systemd's PropertiesChanged of every unit routed to us, and make systemd send them
    (it sends its unit signals only while a client is subscribed)."""
    bus.add_match(f"type='signal',sender='{SYSTEMD[0]}',interface='{PROPERTIES}',"
                  f"member='PropertiesChanged',path_namespace='{SYSTEMD[1]}/unit'")
    call(bus, "Subscribe")


def is_unit_path(path: str) -> bool:
    return path.startswith(f"{SYSTEMD[1]}/unit/")


def states_and_starts(bus: Bus, patterns: list[str],
                      units: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """unit_states(patterns), and the InactiveExitTimestampMonotonic (usec) of each of `units`
    (those believed running), all in one round trip: the ListUnitsByPatterns and every Get
    are sent before the first reply is read. A unit systemd does not hold is left out of both."""
    calls: list[tuple[str, str, str, str, tuple[Any, ...]]] = [
        (SYSTEMD[1], SYSTEMD[2], "ListUnitsByPatterns", "asas", ([], patterns))]
    calls += [(unit_object_path(u), PROPERTIES, "Get", "ss", (f"{SYSTEMD[0]}.Unit", "InactiveExitTimestampMonotonic"))
              for u in units]
    readers: list[Any] = [lambda m: m.read_rows(_UNIT_ROW, (0, 3, 4))] + [lambda m: m.read_all()[0]] * len(units)
    listed, *starts = bus.call_batch(SYSTEMD[0], calls, readers)
    if isinstance(listed, BusError):
        raise listed
    states = {name: {"ActiveState": active, "SubState": sub} for name, active, sub in listed}
    return states, {u: int(v) for u, v in zip(units, starts, strict=True) if not isinstance(v, BusError)}


def unit_cgroup(unit: str, slice_unit: str) -> str:
    """The cgroup systemd gives a unit in a slice, without asking it: slices nest by their
    dashes (machine-tenant.slice is /machine.slice/machine-tenant.slice), the root slice "-.slice"
    is the root."""
    base = slice_unit.removesuffix(".slice")
    if base in ("", "-"):
        return f"/{unit}"
    parts = base.split("-")
    return "".join(f"/{'-'.join(parts[:i + 1])}.slice" for i in range(len(parts))) + f"/{unit}"


def unit_patterns(units: list[str]) -> list[str]:
    """ListUnitsByPatterns patterns for these units: the two kinds of container units by their
    shape, any other by its name (systemd matches every unit it holds against each pattern:
    fifty names cost it as much as the rest of a `stats`)."""
    shapes = {"pymachine@*.service": ("pymachine@", ".service"), "machine-*.scope": ("machine-", ".scope")}
    out = set()
    for unit in units:
        out.add(next((p for p, (head, tail) in shapes.items() if unit.startswith(head) and unit.endswith(tail)),
                     unit))
    return sorted(out)


def running_unit(bus: Bus, unit: str) -> dict[str, Any]:
    """running_units of one unit; {} if systemd has not loaded it."""
    return running_units(bus, [unit]).get(unit, {})


def unit_values(bus: Bus, unit: str, names: list[str]) -> dict[str, Any]:
    """Some properties of a unit's own interface (Service or Scope) plus its DropInPaths and
    ActiveState; {} when systemd does not know it."""
    path = unit_object_path(unit)
    iface = f"{SYSTEMD[0]}.{'Scope' if unit.endswith('.scope') else 'Service'}"
    out: dict[str, Any] = {}
    try:
        for name in ("ActiveState", "DropInPaths", "FragmentPath", "ControlGroup"):
            owner = iface if name == "ControlGroup" else f"{SYSTEMD[0]}.Unit"
            out[name] = bus.get_property(SYSTEMD[0], path, owner, name)
        for name in names:
            out[name] = bus.get_property(SYSTEMD[0], path, iface, name)
    except BusError:
        return {}
    return out


# Units whose state means "the container runs (or is about to)".
ACTIVE_STATES = ("active", "activating", "reloading", "deactivating")


def unit_is_active(bus: Bus, unit: str) -> bool:
    return get_unit_property(bus, unit, "Unit", "ActiveState") in ACTIVE_STATES


def failed_units(bus: Bus, patterns: list[str]) -> list[str]:
    units = call(bus, "ListUnitsByPatterns", "asas", ["failed"], patterns)[0]
    return [str(u[0]) for u in units]


def watch_jobs(bus: Bus) -> None:
    """Subscribe to JobRemoved: must precede the call that creates the job."""
    bus.add_match(f"type='signal',sender='{SYSTEMD[0]}',interface='{SYSTEMD[2]}',member='JobRemoved',"
                  f"path='{SYSTEMD[1]}'")


def wait_job(bus: Bus, job: str, timeout_usec: int = JOB_TIMEOUT_USEC) -> str | None:
    """The job's result ("done", "failed", "canceled", "timeout", ...), or None on timeout."""
    return wait_jobs(bus, [job], timeout_usec).get(job)


def wait_jobs(bus: Bus, jobs: list[str], timeout_usec: int = JOB_TIMEOUT_USEC) -> dict[str, str]:
    """wait_job for several jobs at once, whichever ends first: {job: result} of those that
    ended within the timeout."""
    results: dict[str, str] = {}
    if not jobs:
        return results
    for _path, _iface, member, args in bus.signals(timeout_usec, ("JobRemoved",)):
        if member == "JobRemoved" and len(args) >= 4 and str(args[1]) in jobs:
            results[str(args[1])] = str(args[3])
            if len(results) == len(jobs):
                break
    return results


def run_job(bus: Bus, method: str, unit: str, mode: str = "replace",
            timeout_usec: int = JOB_TIMEOUT_USEC) -> str | None:
    """StartUnit/StopUnit/RestartUnit... and wait for the job; its result as wait_job's."""
    watch_jobs(bus)
    job = str(call(bus, method, "ss", unit, mode)[0])
    return wait_job(bus, job, timeout_usec)


def start_scope(bus: Bus, unit: str, properties: list[Property]) -> str:
    """Ask systemd for a transient scope (StartTransientUnit, mode "fail"); returns its job.
    The caller may do other work while the job runs, then calls wait_scope_started.

    This is what machined's CreateMachine does on our behalf; calling systemd ourselves and
    then RegisterMachine does the same work with two fewer D-Bus hops (~4 ms of a start here)."""
    watch_jobs(bus)
    return str(call(bus, "StartTransientUnit", "ssa(sv)a(sa(sv))", unit, "fail", properties, [])[0])


SOCKET_PROXYD = ("/usr/lib/systemd/systemd-socket-proxyd", "/lib/systemd/systemd-socket-proxyd")
PROXY_JOB_TIMEOUT_USEC = 5_000_000


def loopback6_proxy_units(owner: str, name: str, host_port: int, target: str,
                          proxyd: str) -> tuple[str, list[Property], list[tuple[str, list[Property]]]]:
    """A published port's [::1] side, which no DNAT rule can serve (the kernel routes no IPv6
    loopback packet to another namespace): a transient socket unit listening on [::1]:PORT and
    systemd's own proxy behind it, started on the first connection, both bound to the
    container's unit (they stop with it). Pure: (socket unit, its properties, [its service])."""
    stem = f"pymachine-proxy-{name}-{host_port}"
    # Not After= the container's unit: made while that unit starts, the socket listens before
    # the start returns (start_loopback6_proxies waits for it); BindsTo= alone stops it with it.
    bound = [("BindsTo", ("as", [owner])), ("CollectMode", ("s", "inactive-or-failed"))]
    socket: list[Property] = [
        ("Description", ("s", f"pymachine container {name}: [::1]:{host_port} -> {target}")),
        ("Listen", ("a(ss)", [("Stream", f"[::1]:{host_port}")])),  # ListenStream=
        ("BindIPv6Only", ("s", "ipv6-only")),
        *bound,
    ]
    service: list[Property] = [
        ("Description", ("s", f"pymachine container {name}: [::1]:{host_port} -> {target}")),
        ("ExecStart", ("a(sasb)", [(proxyd, [proxyd, target], False)])),
        # It relays a container's bytes: no root for it (DynamicUser=yes also makes the file
        # system read-only to it, /tmp private, and no new privileges).
        ("DynamicUser", ("b", True)),
        *bound,
    ]
    return f"{stem}.socket", socket, [(f"{stem}.service", service)]


def start_loopback6_proxies(bus: Bus, owner: str, name: str, targets: list[tuple[int, str]]) -> None:
    """loopback6_proxy_units for each (host port, target), listening when this returns (their
    jobs are waited for: a client right after `run -d` finds [::1] answering). A proxy that
    cannot be made (its [::1] port taken, say) is said on stderr (the journal, for a detached
    container), and the port's other addresses answer still."""
    import os
    import sys

    proxyd = next((path for path in SOCKET_PROXYD if os.path.exists(path)), None)
    if proxyd is None:
        return
    watch_jobs(bus)
    jobs = []
    for host_port, target in targets:
        unit, props, aux = loopback6_proxy_units(owner, name, host_port, target, proxyd)
        try:
            jobs.append((host_port, str(call(bus, "StartTransientUnit", "ssa(sv)a(sa(sv))", unit, "fail", props,
                                             aux)[0])))
        except BusError as e:
            print(f"pymachine: {name}: port {host_port} is not published on [::1]: {e.message}", file=sys.stderr)
    results = wait_jobs(bus, [job for _, job in jobs], PROXY_JOB_TIMEOUT_USEC)
    for host_port, job in jobs:
        if results.get(job) != "done":
            print(f"pymachine: {name}: port {host_port} is not published on [::1]: its socket unit's job "
                  f"{results.get(job) or 'timed out'} (see its journal)", file=sys.stderr)


def wait_scope_started(bus: Bus, unit: str, job: str) -> None:
    """When this returns, the scope exists, its PIDs are in its cgroup and its limits apply.
    A job that does not end in "done" is an error."""
    result = wait_job(bus, job)
    if result != "done":
        raise BusError(JOB_FAILED,
                       f"the job that starts {unit} ended {result or 'without an answer'}")


def kill_unit(bus: Bus, unit: str, signal: int, whom: str = "all") -> None:
    """KillUnit: a signal to the unit's processes (`all`, or its `main` one)."""
    call(bus, "KillUnit", "ssi", unit, whom, signal)


def unit_processes(bus: Bus, unit: str) -> list[tuple[str, int, str]]:
    """GetUnitProcesses: (cgroup, PID, command line) of every process in the unit."""
    rows: list[Any] = call(bus, "GetUnitProcesses", "s", unit)[0]
    return [(str(r[0]), int(r[1]), str(r[2])) for r in rows]
