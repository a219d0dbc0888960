"""An OCI bundle's config.json, read into what pymachine's launch kit runs (pure: no system call).

The runtime spec's Linux section is honoured field by field; a field pymachine cannot honour is
an error naming it (OciConfigError), never silently dropped. Resources become systemd unit
properties of the container's scope (the "systemd cgroup driver"): pymachine writes no cgroup file.
"""

from __future__ import annotations

import os

from machinectl_py import plan
from machinectl_py.oci import store
from machinectl_py.policy import CAPABILITIES
from machinectl_py.record import Record
from machinectl_py.spec import RLIMITS

# Records, not dataclasses, and no `typing` at run time: `create` is on containerd's start
# path, and dataclasses (with re, inspect, enum...) cost ~10 ms of its import (record.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    Property: TypeAlias = tuple[str, tuple[str, Any]]
OCI_VERSION = store.OCI_VERSION
UINT64_MAX = 2**64 - 1
# The namespaces a container always gets new (pid is the held init's, mount, uts, ipc the
# init's own unshare, cgroup after it joined its scope); network may be new or joined.
NAMESPACES = ("pid", "network", "mount", "ipc", "uts", "cgroup", "user")
# The hooks of the runtime spec, in the order of the lifecycle (prestart is createRuntime's
# deprecated twin, run just before it as runc does).
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
_TOP_FIELDS = {"ociVersion", "process", "root", "hostname", "mounts", "linux", "annotations", "hooks", "domainname"}
_PROCESS_FIELDS = {"terminal", "consoleSize", "user", "args", "env", "cwd", "capabilities", "rlimits",
                   "noNewPrivileges", "oomScoreAdj", "apparmorProfile", "selinuxLabel"}
_LINUX_FIELDS = {"namespaces", "uidMappings", "gidMappings", "resources", "cgroupsPath", "devices", "maskedPaths",
                 "readonlyPaths", "seccomp", "sysctl", "rootfsPropagation", "mountLabel"}
_RESOURCE_FIELDS = {"memory", "cpu", "pids", "devices", "blockIO"}
_MOUNT_FLAGS = {"ro": plan.MS_RDONLY, "nosuid": plan.MS_NOSUID, "nodev": plan.MS_NODEV, "noexec": plan.MS_NOEXEC,
                "strictatime": plan.MS_STRICTATIME}
_MOUNT_CLEARS = {"rw", "suid", "dev", "exec", "relatime", "norelatime", "atime", "noatime", "nodiratime",
                 "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable"}
# /dev as the runtime spec's "default devices" want it, on the bundle's /dev tmpfs.
_DEV_DEST = "/dev"


class OciConfigError(ValueError):
    """config.json asks for something pymachine cannot do, or is malformed: names the field."""


class OciConfig(Record):
    __slots__ = ("args", "env", "cwd", "user", "groups", "terminal", "rootfs", "readonly_root", "hostname", "ops",
                 "capability_mask", "rlimits", "no_new_privs", "oom_score_adj", "private_network", "join_namespaces",
                 "slice", "unit", "properties", "annotations", "seccomp", "sysctls", "hooks", "userns")
    _defaults: dict[str, Any] = {"annotations": {}, "seccomp": None, "sysctls": (), "hooks": {}, "userns": None}
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    user: str  # "UID:GID", numbers, as users.resolve_user reads them
    groups: tuple[int, ...]  # additionalGids
    terminal: bool
    rootfs: str  # absolute
    readonly_root: bool
    hostname: str
    ops: tuple[plan.Op, ...]
    capability_mask: int
    rlimits: tuple[tuple[int, int, int], ...]
    no_new_privs: bool
    oom_score_adj: int | None
    private_network: bool
    join_namespaces: tuple[tuple[str, str], ...]  # (network|ipc|uts, path)
    slice: str
    unit: str
    properties: tuple[Property, ...]
    annotations: dict[str, str]
    # linux.seccomp, checked (seccomp_profile's schema, the OCI profile being docker's format
    # without includes): compiled by the runtime (libseccomp); None: no filter.
    seccomp: dict[str, Any] | None
    sysctls: tuple[tuple[str, str], ...]  # (path under /proc/sys, value)
    hooks: dict[str, tuple[Hook, ...]]
    userns: tuple[int, int] | None  # (host ID of container ID 0, size)


class Hook(Record):
    __slots__ = ("path", "args", "env", "timeout")
    path: str
    args: tuple[str, ...]
    env: tuple[str, ...]
    timeout: int | None  # seconds


def fail(where: str, why: str) -> OciConfigError:
    return OciConfigError(f"config.json: {where}: {why}")


def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise fail(where, "must be an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise fail(where, "must be an array")
    return value


def _unknown(obj: dict[str, Any], known: set[str], where: str) -> None:
    for key in obj:
        if key not in known:
            raise fail(f"{where}.{key}" if where else key, "not supported by pymachine")


def machine_name(container_id: str) -> str:
    """machined's rules: 1-64 of [a-zA-Z0-9-_.], no leading dot; containerd's IDs fit as they are."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in container_id)[:64].lstrip(".")
    return name or "oci"


def check_id(container_id: str) -> None:
    if not container_id or len(container_id) > 1024 or "/" in container_id or container_id in (".", ".."):
        raise OciConfigError(f"invalid container id {container_id!r}")
    if not all(c.isalnum() or c in "-_.+" for c in container_id):
        raise OciConfigError(f"invalid container id {container_id!r}: only [a-zA-Z0-9_+.-]")


def parse(raw: Any, bundle: str, container_id: str) -> OciConfig:
    top = _obj(raw, "config.json")
    _unknown(top, _TOP_FIELDS, "")
    process = _obj(top.get("process"), "process")
    _unknown(process, _PROCESS_FIELDS, "process")
    for key in ("apparmorProfile", "selinuxLabel"):
        if process.get(key):
            raise fail(f"process.{key}", "not supported by pymachine")
    linux = _obj(top.get("linux"), "linux")
    _unknown(linux, _LINUX_FIELDS, "linux")
    if linux.get("mountLabel"):
        raise fail("linux.mountLabel", "not supported by pymachine (no SELinux support)")
    if top.get("domainname"):
        raise fail("domainname", "not supported by pymachine")
    if linux.get("rootfsPropagation") not in (None, "", "private", "rprivate"):
        raise fail("linux.rootfsPropagation", "pymachine makes the container's mounts private (rprivate) only")
    root = _obj(top.get("root"), "root")
    rootfs = str(root.get("path") or "")
    if not rootfs:
        raise fail("root.path", "missing")
    rootfs = os.path.normpath(os.path.join(bundle, rootfs))
    types = _namespaces(_list(linux.get("namespaces"), "linux.namespaces"))
    private_network = "network" in types and types["network"] is None
    joined = tuple((kind, path) for kind, path in types.items() if path is not None)
    hostname = str(top.get("hostname") or "")
    if hostname and any(kind == "uts" for kind, _ in joined):
        raise fail("hostname", "setting it needs a new uts namespace, not a joined one (as runc)")
    slice_, unit = cgroup_unit(linux.get("cgroupsPath"), container_id)
    return OciConfig(
        args=_args(process),
        env=_env(process),
        cwd=_cwd(process),
        user=_user(process),
        groups=_groups(process),
        terminal=bool(process.get("terminal", False)),
        rootfs=rootfs,
        readonly_root=bool(root.get("readonly", False)),
        hostname=hostname,
        ops=tuple(_ops(top, linux)),
        capability_mask=_capabilities(process),
        rlimits=_rlimits(process),
        no_new_privs=bool(process.get("noNewPrivileges", False)),
        oom_score_adj=_oom(process),
        private_network=private_network,
        join_namespaces=joined,
        slice=slice_,
        unit=unit,
        properties=tuple(resource_properties(_obj(linux.get("resources"), "linux.resources"))),
        annotations={str(k): str(v) for k, v in _obj(top.get("annotations"), "annotations").items()},
        seccomp=seccomp(linux.get("seccomp")),
        sysctls=sysctls(_obj(linux.get("sysctl"), "linux.sysctl"), types),
        hooks=hooks(_obj(top.get("hooks"), "hooks")),
        userns=id_mappings(linux, "user" in types),
    )


def _args(process: dict[str, Any]) -> tuple[str, ...]:
    args = _list(process.get("args"), "process.args")
    if not args or not all(isinstance(a, str) for a in args):
        raise fail("process.args", "must be a non-empty array of strings")
    return tuple(args)


def _env(process: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in _list(process.get("env"), "process.env"):
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise fail("process.env", f"{item!r} is not KEY=VALUE")
        env[key] = value
    return env


def _cwd(process: dict[str, Any]) -> str:
    cwd = str(process.get("cwd") or "/")
    if not cwd.startswith("/"):
        raise fail("process.cwd", f"{cwd!r} is not absolute")
    return cwd


def _user(process: dict[str, Any]) -> str:
    user = _obj(process.get("user"), "process.user")
    _unknown(user, {"uid", "gid", "additionalGids", "umask", "username"}, "process.user")  # username: Windows'
    if user.get("umask") not in (None, 0o022):
        raise fail("process.user.umask", "pymachine runs the process with umask 0022 only")
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    if not isinstance(uid, int) or not isinstance(gid, int) or uid < 0 or gid < 0:
        raise fail("process.user", "uid and gid must be non-negative numbers")
    return f"{uid}:{gid}"


def _groups(process: dict[str, Any]) -> tuple[int, ...]:
    groups = _list(_obj(process.get("user"), "process.user").get("additionalGids"), "process.user.additionalGids")
    if not all(isinstance(g, int) and 0 <= g < 2**32 - 1 for g in groups):
        raise fail("process.user.additionalGids", "must be an array of group ids")
    return tuple(groups)


def _capabilities(process: dict[str, Any]) -> int:
    """The bounding set (which payload.confine keeps): CAP_X names."""
    caps = _obj(process.get("capabilities"), "process.capabilities")
    mask = 0
    for name in _list(caps.get("bounding"), "process.capabilities.bounding"):
        short = str(name).removeprefix("CAP_")
        if short not in CAPABILITIES:
            raise fail("process.capabilities.bounding", f"unknown capability {name!r}")
        mask |= 1 << CAPABILITIES[short]
    return mask


def _rlimits(process: dict[str, Any]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for item in _list(process.get("rlimits"), "process.rlimits"):
        limit = _obj(item, "process.rlimits[]")
        name = str(limit.get("type", "")).removeprefix("RLIMIT_").lower()
        if name not in RLIMITS:
            raise fail("process.rlimits", f"unknown type {limit.get('type')!r}")
        soft, hard = (int(limit.get(k, 0)) for k in ("soft", "hard"))
        out.append((RLIMITS[name], -1 if soft >= UINT64_MAX else soft, -1 if hard >= UINT64_MAX else hard))
    return tuple(out)


def _oom(process: dict[str, Any]) -> int | None:
    value = process.get("oomScoreAdj")
    if value is None:
        return None
    if not isinstance(value, int) or not -1000 <= value <= 1000:
        raise fail("process.oomScoreAdj", "must be a number from -1000 to 1000")
    return value


JOINABLE = ("network", "ipc", "uts")


def _namespaces(items: list[Any]) -> dict[str, str | None]:
    """kind -> the path to join, None for a new one. pid, mount and cgroup are always new
    (pymachine's init makes them); network, ipc and uts may be joined by path, as the
    containers of a Kubernetes pod join its sandbox's; a user namespace is new (with the
    config's mappings), never joined."""
    types: dict[str, str | None] = {}
    for item in items:
        ns = _obj(item, "linux.namespaces[]")
        kind = str(ns.get("type", ""))
        if kind not in NAMESPACES:
            raise fail("linux.namespaces", f"{kind!r} namespaces are not supported by pymachine")
        path = ns.get("path")
        if path and kind not in JOINABLE:  # joining a user namespace is refused too
            raise fail("linux.namespaces", f"joining an existing {kind} namespace is not supported by pymachine")
        types[kind] = str(path) if path else None
    for required in ("pid", "mount"):
        if required not in types:
            raise fail("linux.namespaces", f"pymachine always makes a new {required} namespace; the config must ask")
    return types


def seccomp(value: Any) -> dict[str, Any] | None:
    """linux.seccomp: docker's profile format, which the runtime spec's is (without includes);
    checked here, compiled by the runtime. Only the native architecture is ever allowed (see
    seccomp_profile); filter flags and a notify listener are refused."""
    from machinectl_py import seccomp_profile
    from machinectl_py.errors import UsageError

    profile = _obj(value, "linux.seccomp")
    if not profile:
        return None
    for key in ("flags", "listenerPath", "listenerMetadata"):
        if profile.get(key):
            raise fail(f"linux.seccomp.{key}", "not supported by pymachine")
    for i, rule in enumerate(_list(profile.get("syscalls"), "linux.seccomp.syscalls")):
        if isinstance(rule, dict) and (rule.get("includes") or rule.get("excludes")):
            raise fail(f"linux.seccomp.syscalls[{i}]", "includes/excludes are docker's, not the runtime spec's")
    try:
        seccomp_profile.check(profile, "linux.seccomp")
    except UsageError as e:
        raise fail("linux.seccomp", e.message.removeprefix("seccomp profile linux.seccomp: ")) from None
    return profile


def sysctls(values: dict[str, Any], types: dict[str, str | None]) -> tuple[tuple[str, str], ...]:
    """linux.sysctl: namespaced ones only (security.parse_sysctls' list, as `--sysctl`); net.*
    only with a network namespace of the container's (new or joined), as runc."""
    if not values:
        return ()
    from machinectl_py import security
    from machinectl_py.errors import UsageError

    try:
        parsed = security.parse_sysctls([f"{k}={v}" for k, v in values.items()])
    except UsageError as e:
        raise fail("linux.sysctl", e.message) from None
    for key in parsed:
        if key.startswith("net.") and "network" not in types:
            raise fail("linux.sysctl", f"sysctl {key!r} is not allowed in the host's network namespace")
    return security.sysctl_items(parsed)


def hooks(raw: dict[str, Any]) -> dict[str, tuple[Hook, ...]]:
    out: dict[str, tuple[Hook, ...]] = {}
    for kind, items in raw.items():
        if kind not in HOOK_KINDS:
            raise fail(f"hooks.{kind}", "not a hook of the runtime spec")
        found = []
        for i, item in enumerate(_list(items, f"hooks.{kind}")):
            where = f"hooks.{kind}[{i}]"
            hook = _obj(item, where)
            _unknown(hook, {"path", "args", "env", "timeout"}, where)
            path = hook.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                raise fail(f"{where}.path", "must be an absolute path")
            args, env = _list(hook.get("args"), f"{where}.args"), _list(hook.get("env"), f"{where}.env")
            timeout = hook.get("timeout")
            if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
                raise fail(f"{where}.timeout", "must be a number of seconds greater than zero")
            found.append(Hook(path, tuple(str(a) for a in args) or (path,), tuple(str(e) for e in env), timeout))
        out[kind] = tuple(found)
    return out


def id_mappings(linux: dict[str, Any], new_userns: bool) -> tuple[int, int] | None:
    """linux.uidMappings/gidMappings with a new user namespace: one range from container ID 0,
    the same for users and groups (what Kubernetes' user namespaces and podman give; the
    launch kit maps one range)."""
    uids = _list(linux.get("uidMappings"), "linux.uidMappings")
    gids = _list(linux.get("gidMappings"), "linux.gidMappings")
    if not new_userns:
        if uids or gids:
            raise fail("linux.uidMappings", "mappings need a user namespace in linux.namespaces")
        return None
    if not uids or not gids:
        raise fail("linux.uidMappings", "a user namespace needs uidMappings and gidMappings (as runc)")
    ranges: list[tuple[int, int]] = []
    for key, items in (("uidMappings", uids), ("gidMappings", gids)):
        if len(items) != 1:
            raise fail(f"linux.{key}", "pymachine maps one range (from container ID 0)")
        entry = _obj(items[0], f"linux.{key}[0]")
        container, host, size = (entry.get(k) for k in ("containerID", "hostID", "size"))
        if not (isinstance(container, int) and isinstance(host, int) and isinstance(size, int)) \
                or min(container, host) < 0 or size <= 0 or host + size > 2**32 - 1:
            raise fail(f"linux.{key}[0]", "containerID, hostID and size must be numbers, size > 0")
        if container != 0:
            raise fail(f"linux.{key}[0].containerID", "pymachine maps one range from container ID 0")
        ranges.append((host, size))
    if ranges[0] != ranges[1]:
        raise fail("linux.gidMappings", "pymachine maps the same range for groups as for users")
    if ranges[0][0] == 0:
        raise fail("linux.uidMappings[0].hostID", "mapping the host's root into a user namespace gives nothing")
    return ranges[0]


def cgroup_unit(cgroups_path: Any, container_id: str) -> tuple[str, str]:
    """(slice, scope unit). The systemd form `slice:prefix:name` gives runc's unit
    `prefix-name.scope` in that slice; anything else (a cgroupfs path, or none): machine.slice
    and `machine-ID.scope`, named after the container as machined would name it."""
    text = str(cgroups_path or "")
    parts = text.split(":")
    if len(parts) == 3 and not text.startswith("/"):
        slice_, prefix, name = parts
        slice_ = slice_ or "machine.slice"
        if not slice_.endswith(".slice") or "/" in slice_ or not name:
            raise fail("linux.cgroupsPath", f"{text!r} is not slice:prefix:name")
        return slice_, f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
    return "machine.slice", "machine-" + machine_name(container_id).replace("-", "\\x2d") + ".scope"


def resource_properties(resources: dict[str, Any]) -> list[Property]:
    """linux.resources -> systemd unit properties of the scope."""
    _unknown(resources, _RESOURCE_FIELDS, "linux.resources")
    props: list[Property] = []
    memory = _obj(resources.get("memory"), "linux.resources.memory")
    _unknown(memory, {"limit", "reservation", "swap", "disableOOMKiller", "swappiness"}, "linux.resources.memory")
    limit = memory.get("limit")
    if isinstance(limit, int) and limit > 0:
        props.append(("MemoryMax", ("t", limit)))
        swap = memory.get("swap")
        if isinstance(swap, int) and swap >= limit:
            props.append(("MemorySwapMax", ("t", swap - limit)))
    reservation = memory.get("reservation")
    if isinstance(reservation, int) and reservation > 0:
        props.append(("MemoryLow", ("t", reservation)))
    cpu = _obj(resources.get("cpu"), "linux.resources.cpu")
    _unknown(cpu, {"shares", "quota", "period", "cpus", "mems"}, "linux.resources.cpu")
    quota, period = cpu.get("quota"), cpu.get("period") or 100_000
    if isinstance(quota, int) and quota > 0:
        props.append(("CPUQuotaPerSecUSec", ("t", quota * 1_000_000 // int(period))))
        props.append(("CPUQuotaPeriodUSec", ("t", int(period))))
    shares = cpu.get("shares")
    if isinstance(shares, int) and shares > 0:
        # podman's and runc's conversion of shares (2-262144) to a weight (1-10000).
        props.append(("CPUWeight", ("t", 1 + ((max(2, min(shares, 262144)) - 2) * 9999) // 262142)))
    for key in ("cpus", "mems"):
        if cpu.get(key):
            raise fail(f"linux.resources.cpu.{key}", "not supported by pymachine yet")
    pids = _obj(resources.get("pids"), "linux.resources.pids")
    pids_limit = pids.get("limit")
    if isinstance(pids_limit, int):
        props.append(("TasksMax", ("t", UINT64_MAX if pids_limit <= 0 else pids_limit)))
    block = _obj(resources.get("blockIO"), "linux.resources.blockIO")
    _unknown(block, {"weight"}, "linux.resources.blockIO")
    if isinstance(block.get("weight"), int) and block["weight"] > 0:
        props.append(("IOWeight", ("t", max(1, min(10000, int(block["weight"]) * 10)))))
    props += device_properties(_list(resources.get("devices"), "linux.resources.devices"))
    return props


def device_properties(rules: list[Any]) -> list[Property]:
    """The device cgroup rules as systemd's DevicePolicy=closed + DeviceAllow=: a rule of one
    char device `c MAJOR:MINOR` becomes /dev/char/MAJOR:MINOR; `c 136:*` the pty group char-pts.
    Other wildcards get nothing (stricter than asked, as closed is the default); a deny rule
    other than "deny all" is refused, for systemd has no per-device deny."""
    allow: list[tuple[str, str]] = []
    for item in rules:
        rule = _obj(item, "linux.resources.devices[]")
        access = str(rule.get("access") or "rwm")
        if not rule.get("allow"):
            if rule.get("type", "a") in ("a", None) and rule.get("major") is None and rule.get("minor") is None:
                allow.clear()
                continue
            raise fail("linux.resources.devices", "a deny rule for single devices is not supported by pymachine")
        kind, major, minor = rule.get("type", "a"), rule.get("major"), rule.get("minor")
        if kind == "c" and major == 136 and minor is None:
            allow.append(("char-pts", access))
        elif kind == "c" and isinstance(major, int) and isinstance(minor, int) and major >= 0 and minor >= 0:
            allow.append((f"/dev/char/{major}:{minor}", access))
    # The default devices of the runtime spec, which every container gets.
    for node in plan.DEV_NODES:
        allow.append((f"/dev/char/{node.major}:{node.minor}", "rwm"))
    allow.append(("/dev/char/5:2", "rwm"))  # /dev/ptmx
    allow.append(("char-pts", "rw"))
    return [("DevicePolicy", ("s", "closed")), ("DeviceAllow", ("a(ss)", sorted(set(allow))))]


def _mount_flags(options: list[str]) -> tuple[int, str | None, bool]:
    """(flags, data, bind?) from a mount's options."""
    flags, data, bind = 0, [], False
    for option in options:
        if option in ("bind", "rbind"):
            bind = True
        elif option in _MOUNT_FLAGS:
            flags |= _MOUNT_FLAGS[option]
        elif option not in _MOUNT_CLEARS:
            data.append(option)
    return flags, ",".join(data) or None, bind


def _ops(top: dict[str, Any], linux: dict[str, Any]) -> list[plan.Op]:
    ops: list[plan.Op] = []
    for i, item in enumerate(_list(top.get("mounts"), "mounts")):
        ops += mount_ops(_obj(item, f"mounts[{i}]"), i)
    for i, item in enumerate(_list(linux.get("devices"), "linux.devices")):
        dev = _obj(item, f"linux.devices[{i}]")
        if dev.get("type") not in ("c", "u") or not str(dev.get("path", "")).startswith("/dev/"):
            raise fail(f"linux.devices[{i}]", "only character devices under /dev are supported by pymachine")
        ops.append(plan.DeviceNode(str(dev["path"]), int(dev.get("major", 0)), int(dev.get("minor", 0)),
                                   int(dev.get("fileMode", 0o666)) & 0o777))
    ops += [plan.Mask(str(p)) for p in _list(linux.get("maskedPaths"), "linux.maskedPaths")]
    ops += [plan.ReadOnly(str(p)) for p in _list(linux.get("readonlyPaths"), "linux.readonlyPaths")]
    return ops


def mount_ops(mount: dict[str, Any], i: int) -> list[plan.Op]:
    where = f"mounts[{i}]"
    _unknown(mount, {"destination", "type", "source", "options", "uidMappings", "gidMappings"}, where)
    dest = str(mount.get("destination") or "")
    if not dest.startswith("/") or ".." in dest.split("/"):
        raise fail(f"{where}.destination", f"{dest!r} is not an absolute path without '..'")
    kind, source = str(mount.get("type") or ""), str(mount.get("source") or "")
    options = [str(o) for o in _list(mount.get("options"), f"{where}.options")]
    flags, data, bind = _mount_flags(options)
    if kind == "bind" or bind:
        if not source.startswith("/"):
            raise fail(f"{where}.source", "a bind mount's source must be an absolute host path")
        return [plan.Bind(source, dest, read_only=bool(flags & plan.MS_RDONLY), is_file=os.path.isfile(source))]
    if kind == "cgroup":
        return []  # the init mounts its own cgroup view once it is in its scope (plan.cgroup_plan)
    if kind not in ("proc", "sysfs", "tmpfs", "devpts", "mqueue"):
        raise fail(f"{where}.type", f"{kind!r} mounts are not supported by pymachine")
    ops: list[plan.Op] = [plan.Mount(dest, kind, source or kind, flags, data)]
    if dest == _DEV_DEST and kind == "tmpfs":
        ops += [*plan.DEV_NODES, *plan.DEV_LINKS]
    return ops


class ProcessConfig(Record):
    """`exec --process FILE`: a process object of the runtime spec."""

    __slots__ = ("args", "env", "cwd", "user", "terminal", "capability_mask", "no_new_privs", "rlimits", "groups")
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    user: str
    terminal: bool
    capability_mask: int  # -1: none given, the container's own bounding set
    no_new_privs: bool | None  # None: not given, the container's own (its config.json's)
    rlimits: tuple[tuple[int, int, int], ...] | None  # None: not given, the container's own
    groups: tuple[int, ...] | None  # additionalGids; None: the container's /etc/group


def parse_process(raw: Any) -> ProcessConfig:
    process = _obj(raw, "process")
    _unknown(process, _PROCESS_FIELDS, "process")
    for key in ("apparmorProfile", "selinuxLabel"):
        if process.get(key):
            raise fail(f"process.{key}", "not supported by pymachine")
    caps = _capabilities(process) if process.get("capabilities") else -1
    nnp = process.get("noNewPrivileges")
    groups = _groups(process) if "additionalGids" in _obj(process.get("user"), "process.user") else None
    return ProcessConfig(_args(process), _env(process), _cwd(process), _user(process),
                         bool(process.get("terminal", False)), caps, None if nnp is None else bool(nnp),
                         _rlimits(process) if "rlimits" in process else None, groups)
