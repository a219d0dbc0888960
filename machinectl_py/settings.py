"""Every container setting, declared once (the shape of mkosi's `ConfigSetting`).

A `Setting` names its field of `ContainerSpec`, its command-line flags, its key in a definition
file (/etc/pymachine/machines/NAME.toml), its path in `inspect` (docker's field names), how it
is parsed and validated, and what it becomes in the container's unit (properties of the scope
or the service and lines of its drop-in). From this one table derive:

- the options of `run` and `create` and their `--help` (`command_options`),
- the spec built from flags (`spec_from_args`) and from a definition (`config.parse_definition`),
- the definition written by `create` (`config.render_definition`),
- `inspect`'s Config/HostConfig fields (`inspect_fields`),
- the unit properties of a scope and a service, and the generator's drop-in (`unit_properties`),
- the README's table of settings (`markdown_table`; a unit test keeps the README in step).

Adding an option is one entry here, its field in `spec.ContainerSpec`, and its mechanism.
On the start-up path (`run`, `create`): imports only spec, args and errors.
"""

from __future__ import annotations

import os

from machinectl_py import network
from machinectl_py import spec as sp
from machinectl_py.args import APPEND, FLAG, VALUE, Option
from machinectl_py.errors import UsageError
from machinectl_py.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


class UnitProperty(Record):
    """One unit property: its D-Bus form (name, signature, value) and its unit-file line."""

    __slots__ = ("name", "signature", "value", "line", "service_only")
    _defaults = {"service_only": False}
    name: str
    signature: str
    value: Any
    line: str  # e.g. "CPUQuota=50%": the drop-in's spelling, which may differ from the D-Bus name
    service_only: bool  # Restart=, Limit*=: a scope runs no process of its own

    @property
    def dbus(self) -> tuple[str, tuple[str, Any]]:
        return (self.name, (self.signature, self.value))


def prop(name: str, signature: str, value: Any, line: str | None = None, *,
         service_only: bool = False) -> UnitProperty:
    return UnitProperty(name, signature, value, line if line is not None else f"{name}={value}", service_only)


class Setting:
    """One container setting. `field` is its ContainerSpec attribute ("limits.x" for a limit)."""

    __slots__ = ("field", "option", "key", "inspect", "parse", "from_toml", "render", "to_inspect", "unit",
                 "unit_doc", "doc", "writes", "number_ok", "v2_only", "needs_spec")

    def __init__(self, field: str, doc: str, *, flags: str | None = None, kind: str = VALUE, metavar: str = "VALUE",
                 choices: tuple[str, ...] = (), key: str | None = None, inspect: str | None = None,
                 parse: Callable[[Any], Any] | None = None, from_toml: Callable[[Any], Any] | None = None,
                 render: Callable[[Any], str] | None = None, to_inspect: Callable[[Any], Any] | None = None,
                 unit: Callable[..., list[UnitProperty]] | None = None, unit_doc: str = "",
                 help: str | None = None, writes: bool = True, number_ok: bool = False, v2_only: bool = False,
                 needs_spec: bool = False) -> None:
        self.field = field
        self.doc = doc  # one line for the README's table
        self.option = Option(flags, help or doc, kind=kind, metavar=metavar, choices=choices) if flags else None
        self.key = key
        self.inspect = inspect
        self.parse = parse or _identity
        self.from_toml = from_toml
        self.render = render
        self.to_inspect = to_inspect or _identity
        self.unit = unit
        self.unit_doc = unit_doc
        # False: another setting of the same field writes it (--env-file is written as env).
        self.writes = writes
        self.number_ok = number_ok  # a definition may write it as a number (memory = 67108864)
        # systemd applies it on the unified (cgroup v2) hierarchy only: on a host with v1
        # controllers it would be a silent no-op, so pymachine refuses it there (v1_refused).
        self.v2_only = v2_only
        self.needs_spec = needs_spec  # `unit` takes (value, spec): --memory-swap is relative to --memory

    def unit_props(self, value: Any, spec: sp.ContainerSpec) -> list[UnitProperty]:
        assert self.unit is not None
        return self.unit(value, spec) if self.needs_spec else self.unit(value)

    @property
    def dest(self) -> str:
        assert self.option is not None
        return self.option.dest

    @property
    def dest_flag(self) -> str:
        return self.option.names[0] if self.option else self.field

    def from_cli(self, raw: Any) -> Any:
        return self.parse(raw)

    def toml_value(self, raw: Any, fail: Callable[[str], Exception]) -> Any:
        """A definition's value -> the field's value; `fail(problem)` makes the error to raise."""
        if self.from_toml is not None:
            return self.from_toml(raw)
        if self.option is not None and self.option.kind == FLAG:
            if not isinstance(raw, bool):
                raise fail("must be true or false")
            return raw
        if self.option is not None and self.option.kind == APPEND:
            if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
                raise fail("must be a list of strings")
            return self.parse(list(raw))
        if isinstance(raw, str):
            return self.parse(raw)
        if self.number_ok and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return self.parse(str(raw))
        raise fail(f"must be a {'string or a number' if self.number_ok else 'string'}, not {_toml_type(raw)}")


def _identity(value: Any) -> Any:
    return value


def _toml_type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(value), type(value).__name__)


def _userns_inspect(mode: str | None) -> str:
    """docker's UsernsMode; the default shows as what it is (auto unless forced to host)."""
    if mode is not None:
        return mode
    from machinectl_py.userns import default_mode

    return default_mode()


# -- parsers and renderers shared by several settings ------------------------------------------------

_TOML_ESCAPES = {i: f"\\u{i:04x}" for i in (*range(0x20), 0x7F)} | {
    ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}


def toml_string(value: str) -> str:
    return '"' + value.translate(_TOML_ESCAPES) + '"'


def toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else toml_string(key)


def toml_array(values: Any) -> str:
    return "[" + ", ".join(toml_string(str(v)) for v in values) + "]"


def toml_table(values: Mapping[str, Any]) -> str:
    return "{ " + ", ".join(f"{toml_key(k)} = {toml_string(str(v))}" for k, v in values.items()) + " }"


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError("must be a string or a list of strings")
    return tuple(value)


def _command_toml(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return ("/bin/sh", "-c", value)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise UsageError("must be a non-empty list of strings (or one string for /bin/sh -c)")
    return tuple(value)


def _entrypoint_cli(text: str) -> tuple[str, ...]:
    return (text,) if text else ()  # docker: --entrypoint "" clears the image's entrypoint


def _string_table(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise UsageError('must be a table of NAME = "value"')
    out = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise UsageError(f"{key}: must be a string or a number")
        out[key] = str(item)
    return out


def _env_toml(value: Any) -> dict[str, str]:
    return sp.parse_env([f"{k}={v}" for k, v in _string_table(value).items()])


def _volumes_cli(items: list[str]) -> tuple[sp.Volume, ...]:
    from machinectl_py.volumes import parse_volume

    return tuple(parse_volume(v) for v in items)


def _volumes_render(volumes: tuple[sp.Volume, ...]) -> str:
    from machinectl_py.volumes import format_volume

    return toml_array(format_volume(v) for v in volumes)


def _mounts_inspect(volumes: tuple[sp.Volume, ...]) -> list[dict[str, Any]]:
    if not volumes:
        return []  # volumes.py imports pathlib and shutil: ~15 ms of every inspect without a volume
    from machinectl_py.volumes import data_dir

    mounts = []
    for v in volumes:
        mounts.append({"Type": "bind" if v.is_bind else "volume", "Name": None if v.is_bind else v.source,
                       "Source": v.source if v.is_bind else str(data_dir(v.source)) if v.source else "",
                       "Destination": v.target, "RW": not v.read_only})
    return mounts


def _mount_cli(items: list[str]) -> tuple[tuple[sp.Volume, ...], dict[str, str]]:
    volumes, tmpfs = [], {}
    for item in items:
        parsed = sp.parse_mount(item)
        if isinstance(parsed, sp.Volume):
            volumes.append(parsed)
        else:
            tmpfs[parsed[0]] = parsed[1]
    return tuple(volumes), tmpfs


def _limit_count(what: str) -> Callable[[str], int]:
    return lambda text: sp.parse_count(text, what)


def _cpus(text: str) -> int:
    usec = sp.parse_cpus(text)
    sp.check_cpus_available(text, _cli_cpu_count.get("n"))
    return usec


# docker checks --cpus against the host's CPUs when the container is made from the command line
# only: a definition may move to a smaller host. spec_from_args sets this for its own call.
_cli_cpu_count: dict[str, int | None] = {}


def _quota_line(usec: int) -> str:
    return f"CPUQuota={usec / 10_000:g}%"


def _boot_props(value: bool, spec: sp.ContainerSpec) -> list[UnitProperty]:
    """--boot: systemd's halt signal stops it (unless --stop-signal says otherwise); a reboot
    inside kills the container's init with SIGHUP (the kernel's answer to reboot() in a PID
    namespace), which restarts the service (nspawn's exit code 133); the setup process may send
    the guest's STATUS= (boot.py) while it waits for READY=1."""
    props = [prop("RestartForceExitStatus", "(aiai)", ([], [1]), "RestartForceExitStatus=SIGHUP",
                  service_only=True),
             prop("NotifyAccess", "s", "exec", service_only=True),
             # the guest's systemd deals with an OOM kill of one of its services, as under nspawn
             prop("OOMPolicy", "s", "continue", service_only=True)]
    if spec.stop_signal is None:
        props.append(prop("KillSignal", "i", sp.SIGRTMIN + 3, "KillSignal=SIGRTMIN+3"))
    return props


def _ulimit_props(ulimits: Mapping[str, tuple[int, int]]) -> list[UnitProperty]:
    props = []
    for name, (soft, hard) in ulimits.items():
        unit_name = "Limit" + name.upper()
        hard_u, soft_u = (sp.RLIM_INFINITY_U64 if v < 0 else v for v in (hard, soft))
        text = ":".join("infinity" if v < 0 else str(v) for v in (soft, hard))
        props.append(prop(unit_name, "t", hard_u, f"{unit_name}={text}", service_only=True))
        props.append(prop(unit_name + "Soft", "t", soft_u, "", service_only=True))
    return props


def _ulimits_toml(value: Any) -> dict[str, tuple[int, int]]:
    if not isinstance(value, dict):
        raise UsageError('must be a table of NAME = "SOFT[:HARD]"')
    return sp.parse_ulimits([f"{k}={v}" for k, v in value.items()])


def _ulimits_render(ulimits: Mapping[str, tuple[int, int]]) -> str:
    return toml_table({k: sp.format_ulimit(v) for k, v in ulimits.items()})


def _ulimits_inspect(ulimits: Mapping[str, tuple[int, int]]) -> list[dict[str, Any]]:
    return [{"Name": k, "Soft": v[0], "Hard": v[1]} for k, v in ulimits.items()]


def _env_files_cli(paths: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for path in paths:
        env.update(sp.read_env_file(path, os.environ))
    return env


def _env_files_toml(value: Any) -> dict[str, str]:
    env: dict[str, str] = {}
    for path in _str_list(value):
        if not path.startswith("/"):
            raise UsageError(f"{path!r}: must be an absolute path")
        env.update(sp.read_env_file(path, None))
    return env


def _security(name: str) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        from machinectl_py import security

        return getattr(security, name)(value)

    return parse


def _list_or_none(value: Any) -> list[Any] | None:
    return list(value) or None


def _sysctls_toml(value: Any) -> dict[str, str]:
    from machinectl_py.security import parse_sysctls

    return parse_sysctls([f"{k}={v}" for k, v in _string_table(value).items()])


def _groups(items: list[str]) -> tuple[str, ...]:
    for item in items:
        if not item or ":" in item or not item.isprintable() or " " in item or len(item) > 256:
            raise UsageError(f"invalid --group-add {item!r}", hint="use a group name or gid")
    return tuple(items)


def _devices_inspect(devices: tuple[str, ...]) -> list[dict[str, str]] | None:
    rows = [dict(zip(("PathOnHost", "PathInContainer", "CgroupPermissions"), d.rsplit(":", 2), strict=True))
            for d in devices]
    return rows or None


# -- the limits of issue #15: docker's flags, each one unit property ----------------------------------

UINT64_MAX = 2**64 - 1


def _refuse_kernel_memory(_: Any) -> Any:
    raise UsageError("--kernel-memory is not supported: kernel memory limits are deprecated by the kernel and "
                     "refused by docker", hint="use --memory, which counts kernel memory on cgroup v2")


def _swap_props(total: int, spec: sp.ContainerSpec) -> list[UnitProperty]:
    """docker's --memory-swap is memory plus swap; systemd's MemorySwapMax= is the swap alone."""
    if total == -1:
        return [prop("MemorySwapMax", "t", UINT64_MAX, "MemorySwapMax=infinity")]
    swap = total - (spec.limits.memory_max or 0)
    return [prop("MemorySwapMax", "t", swap)]


def _cpuset_prop(name: str) -> Callable[[str], list[UnitProperty]]:
    return lambda v: [prop(name, "ay", sp.cpuset_mask(v), f"{name}={v}")]


def _blkio_to_io(weight: int) -> int:
    """docker's blkio weight (10-1000, default 500) on systemd's IOWeight= scale (1-10000, default
    100), as systemd itself maps the two (cgroup_weight_blkio_to_io): /5. Refused on v1: there
    blkio.weight exists only under the CFQ/BFQ schedulers, and this kind of kernel has neither."""
    return max(1, weight // 5)


def _device_props(name: str) -> Callable[[Mapping[str, int]], list[UnitProperty]]:
    return lambda rates: [prop(name, "a(st)", [(path, rate)], f"{name}={path} {rate}") for path, rate in rates.items()]


def _rates_toml(flag: str, size: bool) -> Callable[[Any], dict[str, int]]:
    def parse(value: Any) -> dict[str, int]:
        return sp.parse_device_rates([f"{k}:{v}" for k, v in _string_table(value).items()], flag, size=size)
    return parse


def _rates_inspect(rates: Mapping[str, int]) -> list[dict[str, Any]]:
    return [{"Path": path, "Rate": rate} for path, rate in rates.items()]


def _device_setting(field: str, flag: str, what: str, prop_name: str, inspect: str, size: bool) -> Setting:
    """On v1 systemd translates the bandwidth limits to blkio.throttle.*_bps_device; its BlockIO
    settings have no IOPS, so the IOPS limits are v2 only."""
    return Setting(f"limits.{field}", f"limit {what} of a device: /dev/DEVICE:{'SIZE' if size else 'N'} "
                   "(repeatable)", flags=flag, kind=APPEND, metavar="DEV:RATE", key=f"limits.{field}",
                   inspect=inspect, parse=lambda items: sp.parse_device_rates(items, flag, size=size),
                   from_toml=_rates_toml(flag, size), render=toml_table, to_inspect=_rates_inspect,
                   unit=_device_props(prop_name), unit_doc=f"{prop_name}=", v2_only=not size)


def _limit_settings() -> tuple[Setting, ...]:
    """docker's resource flags beyond --memory, --cpus and --pids-limit (issue #15), one block."""
    return (
        Setting("limits.memory_low", "memory soft limit (docker's reservation): protected from reclaim below it",
                flags="--memory-reservation", metavar="SIZE", key="limits.memory_reservation",
                inspect="HostConfig.MemoryReservation", parse=lambda t: sp.parse_size(t, "memory reservation"),
                render=str, number_ok=True, to_inspect=lambda v: v or 0, v2_only=True,
                unit=lambda v: [prop("MemoryLow", "t", v)], unit_doc="MemoryLow="),
        Setting("limits.memory_swap", "memory plus swap, as docker's (-1: unlimited swap); needs --memory",
                flags="--memory-swap", metavar="SIZE", key="limits.memory_swap", inspect="HostConfig.MemorySwap",
                parse=sp.parse_memory_swap, render=str, number_ok=True, to_inspect=lambda v: v or 0, v2_only=True,
                unit=_swap_props, needs_spec=True, unit_doc="MemorySwapMax= (the swap part)"),
        Setting("limits.memory_max", "refused: kernel memory limits are gone from the kernel and docker",
                flags="--kernel-memory", metavar="SIZE", key="limits.kernel_memory", parse=_refuse_kernel_memory,
                from_toml=_refuse_kernel_memory, writes=False),
        Setting("limits.cpuset_cpus", "CPUs the container may run on, e.g. 0-2,4", flags="--cpuset-cpus",
                metavar="LIST", key="limits.cpuset_cpus", inspect="HostConfig.CpusetCpus",
                parse=lambda t: sp.parse_cpuset(t, "--cpuset-cpus"), render=toml_string,
                to_inspect=lambda v: v or "", v2_only=True, unit=_cpuset_prop("AllowedCPUs"),
                unit_doc="AllowedCPUs="),
        Setting("limits.cpuset_mems", "memory (NUMA) nodes the container may use, e.g. 0",
                flags="--cpuset-mems", metavar="LIST", key="limits.cpuset_mems", inspect="HostConfig.CpusetMems",
                parse=lambda t: sp.parse_cpuset(t, "--cpuset-mems"), render=toml_string,
                to_inspect=lambda v: v or "", v2_only=True, unit=_cpuset_prop("AllowedMemoryNodes"),
                unit_doc="AllowedMemoryNodes="),
        Setting("limits.blkio_weight", "relative block IO weight, 10-1000 (docker's scale; IOWeight= is 1/5)",
                flags="--blkio-weight", metavar="N", key="limits.blkio_weight", inspect="HostConfig.BlkioWeight",
                parse=sp.parse_blkio_weight, render=str, number_ok=True, to_inspect=lambda v: v or 0, v2_only=True,
                unit=lambda v: [prop("IOWeight", "t", _blkio_to_io(v))], unit_doc="IOWeight="),
        _device_setting("device_read_bps", "--device-read-bps", "reads (bytes per second)", "IOReadBandwidthMax",
                        "HostConfig.BlkioDeviceReadBps", True),
        _device_setting("device_write_bps", "--device-write-bps", "writes (bytes per second)",
                        "IOWriteBandwidthMax", "HostConfig.BlkioDeviceWriteBps", True),
        _device_setting("device_read_iops", "--device-read-iops", "reads (IO per second)", "IOReadIOPSMax",
                        "HostConfig.BlkioDeviceReadIOps", False),
        _device_setting("device_write_iops", "--device-write-iops", "writes (IO per second)", "IOWriteIOPSMax",
                        "HostConfig.BlkioDeviceWriteIOps", False),
        Setting("oom_score_adj", "the container's OOM score adjustment, -1000 to 1000", flags="--oom-score-adj",
                metavar="N", key="oom_score_adj", inspect="HostConfig.OomScoreAdj", parse=sp.parse_oom_score_adj,
                render=str, number_ok=True, to_inspect=lambda v: v or 0,
                unit=lambda v: [prop("OOMScoreAdjust", "i", v, service_only=True)], unit_doc="OOMScoreAdjust="),
        Setting("slice", "the slice the container's unit runs in (default machine.slice); made if missing",
                flags="--slice --cgroup-parent", metavar="SLICE", key="slice", inspect="HostConfig.CgroupParent",
                parse=sp.parse_slice, render=toml_string, to_inspect=lambda v: v or "",
                unit=lambda v: [prop("Slice", "s", v, service_only=True)], unit_doc="Slice="),
    )


# Every limit's unit property: (D-Bus name, its key in unit files, the flag). `explain` checks
# these on a unit even where the definition sets none (a `systemctl set-property` may have).
LIMIT_PROPERTIES = (
    ("MemoryMax", "MemoryMax", "--memory"), ("CPUQuotaPerSecUSec", "CPUQuota", "--cpus"),
    ("CPUWeight", "CPUWeight", "--cpu-weight"), ("TasksMax", "TasksMax", "--pids-limit"),
    ("MemoryLow", "MemoryLow", "--memory-reservation"), ("MemorySwapMax", "MemorySwapMax", "--memory-swap"),
    ("AllowedCPUs", "AllowedCPUs", "--cpuset-cpus"), ("AllowedMemoryNodes", "AllowedMemoryNodes", "--cpuset-mems"),
    ("IOWeight", "IOWeight", "--blkio-weight"), ("IOReadBandwidthMax", "IOReadBandwidthMax", "--device-read-bps"),
    ("IOWriteBandwidthMax", "IOWriteBandwidthMax", "--device-write-bps"),
    ("IOReadIOPSMax", "IOReadIOPSMax", "--device-read-iops"),
    ("IOWriteIOPSMax", "IOWriteIOPSMax", "--device-write-iops"),
)


# -- the table --------------------------------------------------------------------------------------

SETTINGS: tuple[Setting, ...] = (
    Setting("name", "container (and machine) name; default: a generated adjective-name", flags="--name",
            metavar="NAME", inspect="Name", help="container (and machine) name: 1-64 of [a-zA-Z0-9-.]; "
            "default: generated, as docker's adjective_name"),
    Setting("image", "image name[:tag] or id; `busybox` is built in", key="image", inspect="Config.Image",
            parse=sp.validate_image_name),
    Setting("command", "command and arguments; default: the image's Cmd", key="command", inspect="Config.Cmd",
            from_toml=_command_toml, render=toml_array, to_inspect=lambda v: list(v) if v else None),
    Setting("entrypoint", "override the image's Entrypoint (\"\" clears it; the image's Cmd is then not used)",
            flags="--entrypoint", metavar="CMD", key="entrypoint", inspect="Config.Entrypoint",
            parse=_entrypoint_cli, from_toml=_str_list, render=toml_array,
            to_inspect=lambda v: list(v) if v is not None else None),
    Setting("env", "read environment variables from a file of KEY=VALUE lines (repeatable)", flags="--env-file",
            kind=APPEND, metavar="FILE", key="env_file", parse=_env_files_cli, from_toml=_env_files_toml,
            writes=False),
    Setting("env", "set an environment variable (repeatable); a bare KEY passes on its value here",
            flags="--env -e", kind=APPEND, metavar="KEY=VALUE", key="env", inspect="Config.Env",
            parse=lambda items: sp.parse_env(items, os.environ), from_toml=_env_toml, render=toml_table,
            to_inspect=lambda env: [f"{k}={v}" for k, v in env.items()]),
    Setting("labels", "set a label (repeatable): KEY=VALUE, or KEY for an empty value", flags="--label -l",
            kind=APPEND, metavar="KEY[=VALUE]", key="labels", inspect="Config.Labels", parse=sp.parse_labels,
            from_toml=_string_table, render=toml_table),
    Setting("workdir", "working directory inside the container", flags="--workdir -w", metavar="DIR",
            key="workdir", inspect="Config.WorkingDir", render=toml_string, to_inspect=lambda v: v or ""),
    Setting("user", "run as USER[:GROUP] (names or numbers, from the container's /etc/passwd); default: the "
            "image's user, else root", flags="--user -u", metavar="USER", key="user", inspect="Config.User",
            parse=sp.validate_user, render=toml_string, to_inspect=lambda v: v or ""),
    Setting("hostname", "hostname inside the container (default: the name)", flags="--hostname -h",
            metavar="NAME", key="hostname", inspect="Config.Hostname", parse=sp.validate_hostname,
            render=toml_string),
    Setting("network", "bridge (default, as docker): a veth on the network pymachine (10.89.0.0/16) with NAT; "
            "host: share the host's network (opt-in: no network isolation; without CAP_NET_RAW); "
            "NAME: a veth on the user network NAME (`pymachine network create`); "
            "veth: a point-to-point pair ve-NAME/host0 with NAT (as nspawn's); none (alias private): only lo; "
            "container:NAME: another running container's namespace; ns:PATH: a namespace file's",
            flags="--network --net", metavar="MODE", key="network",
            inspect="HostConfig.NetworkMode", parse=sp.validate_network, render=toml_string),
    Setting("network_aliases", "another name of the container on its network (bridge or NAME; repeatable)",
            flags="--network-alias", kind=APPEND, metavar="ALIAS", key="network_aliases",
            inspect="NetworkSettings.Aliases", parse=lambda items: tuple(map(sp.validate_alias, items)),
            from_toml=lambda v: tuple(map(sp.validate_alias, _str_list(v))), render=toml_array, to_inspect=list),
    Setting("connections", "networks `pymachine network connect` joined (kept, as docker): NETWORK[,ip=IP]"
            "[,alias=ALIAS...] each, an interface eth1, eth2... at each start", key="connections",
            parse=sp.validate_connections, from_toml=lambda v: sp.validate_connections(_str_list(v)),
            render=toml_array),
    Setting("ip", "a static IPv4 address on the container's network (bridge or NAME)", flags="--ip",
            metavar="IP", key="ip", inspect="NetworkSettings.IPAMConfig.IPv4Address", parse=sp.validate_ip,
            render=toml_string, to_inspect=lambda v: v or ""),
    Setting("ports", "publish a container's port on the host (bridge only): [HOSTIP:][HOSTPORT:]PORT[/tcp|udp], "
            "an IPv6 HOSTIP in brackets ([::]:8080:80; on a network with an IPv6 subnet every port answers on the "
            "host's IPv6 addresses too), ranges as 8080-8081:80-81; no HOSTPORT: a free one (see `pymachine port`); "
            "repeatable",
            flags="--publish -p", kind=APPEND, metavar="[IP:][HOSTPORT:]PORT", key="ports",
            inspect="HostConfig.PortBindings", parse=network.parse_ports,
            from_toml=lambda v: network.parse_ports(_str_list(v)), render=toml_array, to_inspect=network.ports_inspect),
    Setting("dns", "a DNS server for the container's /etc/resolv.conf (bridge; repeatable; default: the host's "
            "upstream servers)", flags="--dns", kind=APPEND, metavar="IP", key="dns", inspect="HostConfig.Dns",
            parse=network.parse_dns, from_toml=lambda v: network.parse_dns(_str_list(v)), render=toml_array,
            to_inspect=list),
    Setting("dns_search", "a search domain for the container's /etc/resolv.conf (bridge; repeatable; replaces "
            "the host's)", flags="--dns-search", kind=APPEND, metavar="DOMAIN", key="dns_search",
            inspect="HostConfig.DnsSearch", parse=network.parse_dns_search,
            from_toml=lambda v: network.parse_dns_search(_str_list(v)), render=toml_array, to_inspect=list),
    Setting("dns_options", "an option line entry for the container's /etc/resolv.conf (bridge; repeatable; "
            "replaces the host's)", flags="--dns-option", kind=APPEND, metavar="OPTION", key="dns_options",
            inspect="HostConfig.DnsOptions", parse=network.parse_dns_options,
            from_toml=lambda v: network.parse_dns_options(_str_list(v)), render=toml_array, to_inspect=list),
    Setting("publish_all", "publish every port the image exposes (ExposedPorts) on a free host port",
            flags="--publish-all -P", kind=FLAG, key="publish_all", inspect="HostConfig.PublishAllPorts",
            render=lambda v: "true"),
    Setting("add_hosts", "add a line to the container's /etc/hosts (bridge; repeatable)", flags="--add-host",
            kind=APPEND, metavar="NAME:IP", key="add_hosts", inspect="HostConfig.ExtraHosts",
            parse=network.parse_add_hosts, from_toml=lambda v: network.parse_add_hosts(_str_list(v)),
            render=toml_array, to_inspect=list),
    Setting("restart", "restart policy of a detached container: no, on-failure or always", flags="--restart",
            metavar="POLICY", choices=sp.RESTART_POLICIES, key="restart", inspect="HostConfig.RestartPolicy",
            parse=sp.validate_restart, render=toml_string, to_inspect=lambda v: {"Name": v, "MaximumRetryCount": 0},
            unit=lambda v: [prop("Restart", "s", v, service_only=True)], unit_doc="Restart="),
    Setting("volumes", "mount a volume: /host/path:/path[:ro], name:/path[:ro] or /path (anonymous); repeatable",
            flags="--volume -v", kind=APPEND, metavar="VOLUME", key="volumes", inspect="Mounts",
            parse=_volumes_cli, render=_volumes_render, to_inspect=_mounts_inspect),
    Setting("volumes+tmpfs", "mount with docker's syntax: type=bind|volume|tmpfs,source=...,target=...[,readonly]",
            flags="--mount", kind=APPEND, metavar="SPEC", key="mounts", parse=_mount_cli, writes=False),
    Setting("tmpfs", "mount a tmpfs: PATH[:OPTIONS] (size=, mode=, noexec...; repeatable)", flags="--tmpfs",
            kind=APPEND, metavar="PATH[:OPTS]", key="tmpfs", inspect="HostConfig.Tmpfs", parse=sp.parse_tmpfs,
            render=lambda v: toml_array(f"{k}:{o}" if o else k for k, o in v.items())),
    Setting("read_only", "mount the container's root read-only (/run, /tmp and /dev/shm stay writable)",
            flags="--read-only", kind=FLAG, key="read_only", inspect="HostConfig.ReadonlyRootfs",
            render=lambda v: "true"),
    Setting("shm_size", "size of /dev/shm (default 64M)", flags="--shm-size", metavar="SIZE", key="shm_size",
            inspect="HostConfig.ShmSize", parse=lambda t: sp.parse_size(t, "--shm-size"), render=str, number_ok=True,
            to_inspect=lambda v: v or sp.DEFAULT_SHM_SIZE),
    Setting("init", "run a tiny init (tini) as PID 1 that forwards signals and reaps zombies", flags="--init",
            kind=FLAG, key="init", inspect="HostConfig.Init", render=lambda v: "true"),
    Setting("boot", "boot the image's init (/sbin/init: systemd) as PID 1, as an OS: a detached container is up "
            "when it reports READY=1; stopped with SIGRTMIN+3, a reboot inside restarts it", flags="--boot -b",
            kind=FLAG, key="boot", inspect="HostConfig.Boot", render=lambda v: "true", unit=_boot_props,
            needs_spec=True,
            unit_doc="KillSignal=SIGRTMIN+3, RestartForceExitStatus=SIGHUP, NotifyAccess=exec, OOMPolicy=continue"),
    Setting("stop_signal", "the signal that stops the container (default SIGTERM; SIGRTMIN+3 with --boot)",
            flags="--stop-signal",
            metavar="SIGNAL", key="stop_signal", inspect="Config.StopSignal", parse=sp.parse_signal,
            render=toml_string, unit=lambda v: [prop("KillSignal", "i", sp.SIGNALS[v], f"KillSignal={v}")],
            unit_doc="KillSignal="),
    Setting("stop_timeout", "seconds to wait after the stop signal before SIGKILL (default 10)",
            flags="--stop-timeout", metavar="SECONDS", key="stop_timeout", inspect="Config.StopTimeout",
            parse=lambda t: sp.parse_count(t, "--stop-timeout", zero=True), render=str, number_ok=True,
            unit=lambda v: [prop("TimeoutStopUSec", "t", v * 1_000_000, f"TimeoutStopSec={v}")],
            unit_doc="TimeoutStopSec="),
    Setting("ulimits", "set a resource limit of the container's processes: NAME=SOFT[:HARD], as nofile=1024:2048 "
            "(repeatable)", flags="--ulimit", kind=APPEND, metavar="NAME=SOFT[:HARD]", key="ulimits",
            inspect="HostConfig.Ulimits", parse=sp.parse_ulimits, from_toml=_ulimits_toml, render=_ulimits_render,
            to_inspect=_ulimits_inspect, unit=_ulimit_props, unit_doc="Limit*= (LimitNOFILE=...)"),
    # docker's security flags (security.py), one block.
    Setting("cap_add", "add a capability (repeatable): NET_ADMIN or CAP_NET_ADMIN, or ALL", flags="--cap-add",
            kind=APPEND, metavar="CAP", key="cap_add", inspect="HostConfig.CapAdd",
            parse=_security("parse_capabilities"), render=toml_array, to_inspect=_list_or_none),
    Setting("cap_drop", "drop a capability (repeatable): NET_RAW or CAP_NET_RAW, or ALL", flags="--cap-drop",
            kind=APPEND, metavar="CAP", key="cap_drop", inspect="HostConfig.CapDrop",
            parse=_security("parse_capabilities"), render=toml_array, to_inspect=_list_or_none),
    Setting("privileged", "every capability, no seccomp filter, every device allowed (DevicePolicy=auto); root in "
            "the container is the host's root", flags="--privileged", kind=FLAG, key="privileged",
            inspect="HostConfig.Privileged", render=lambda v: "true"),
    Setting("security_opt", "no-new-privileges, seccomp=unconfined or seccomp=PROFILE.json (docker's profile "
            "format; repeatable)", flags="--security-opt", kind=APPEND, metavar="OPT", key="security_opt",
            inspect="HostConfig.SecurityOpt", parse=_security("parse_security_opts"), render=toml_array,
            to_inspect=_list_or_none),
    Setting("sysctls", "set a namespaced sysctl: net.* (with --network private), kernel.shm*, kernel.msg*, "
            "kernel.sem, fs.mqueue.* (repeatable)", flags="--sysctl", kind=APPEND, metavar="NAME=VALUE",
            key="sysctls", inspect="HostConfig.Sysctls", parse=_security("parse_sysctls"), from_toml=_sysctls_toml,
            render=toml_table, to_inspect=lambda v: dict(v) or None),
    Setting("group_add", "add a supplementary group of the container's /etc/group, name or gid (repeatable)",
            flags="--group-add", kind=APPEND, metavar="GROUP", key="group_add", inspect="HostConfig.GroupAdd",
            parse=_groups, render=toml_array, to_inspect=_list_or_none),
    Setting("devices", "add a host device: HOST[:CONTAINER][:rwm], made in the container's /dev and allowed in "
            "its unit (repeatable)", flags="--device", kind=APPEND, metavar="HOST[:CONT][:rwm]", key="devices",
            inspect="HostConfig.Devices", parse=_security("parse_devices"), render=toml_array,
            to_inspect=_devices_inspect, unit_doc="DeviceAllow="),
    Setting("userns", "user namespace: auto gives the container its own range of 65536 host UIDs/GIDs "
            "(auto:size=N: N of them; auto is the default); host: none, root inside is root outside", flags="--userns",
            metavar="MODE", key="userns", inspect="HostConfig.UsernsMode", parse=sp.parse_userns,
            render=toml_string, to_inspect=_userns_inspect),
    Setting("limits.memory_max", "memory limit, e.g. 64M, 1G", flags="--memory -m", metavar="SIZE",
            key="limits.memory", inspect="HostConfig.Memory", parse=sp.parse_memory, render=str, number_ok=True,
            to_inspect=lambda v: v or 0, unit=lambda v: [prop("MemoryMax", "t", v)], unit_doc="MemoryMax="),
    Setting("limits.cpu_quota_usec", "CPU limit in CPUs, e.g. 0.5", flags="--cpus", metavar="N",
            key="limits.cpus", inspect="HostConfig.NanoCpus", parse=_cpus, number_ok=True,
            render=lambda v: repr(v / 1_000_000), to_inspect=lambda v: (v or 0) * 1000,
            unit=lambda v: [prop("CPUQuotaPerSecUSec", "t", v, _quota_line(v))], unit_doc="CPUQuota="),
    Setting("limits.cpu_period_usec", "CPU quota period in microseconds, 1000-1000000 (default 100000): "
            "--cpus' share is granted per period", flags="--cpu-period", metavar="USEC", key="limits.cpu_period",
            inspect="HostConfig.CpuPeriod", parse=sp.parse_cpu_period, render=str, number_ok=True,
            to_inspect=lambda v: v or 0, unit_doc="CPUQuotaPeriodSec=",
            unit=lambda v: [prop("CPUQuotaPeriodUSec", "t", v, f"CPUQuotaPeriodSec={v}us")]),
    Setting("limits.cpu_weight", "relative CPU weight, 1-10000 (default 100)", flags="--cpu-weight", metavar="N",
            key="limits.cpu_weight", inspect="HostConfig.CpuWeight", parse=sp.parse_cpu_weight, render=str,
            number_ok=True, unit=lambda v: [prop("CPUWeight", "t", v)], unit_doc="CPUWeight="),
    Setting("limits.cpu_weight", "docker's relative CPU shares, 2-262144, converted to CPUWeight= as podman does",
            flags="--cpu-shares -c", metavar="N", key="limits.cpu_shares", parse=sp.parse_cpu_shares,
            number_ok=True, writes=False),
    Setting("limits.tasks_max", "maximum number of tasks", flags="--pids-limit", metavar="N", key="limits.pids",
            inspect="HostConfig.PidsLimit", parse=_limit_count("pids limit"), render=str, number_ok=True,
            to_inspect=lambda v: v or 0, unit=lambda v: [prop("TasksMax", "t", v)], unit_doc="TasksMax="),
    *_limit_settings(),
    Setting("pull", "pull the image from its registry first: missing (when the store lacks it; default), always "
            "or never", flags="--pull", metavar="POLICY", choices=sp.PULL_POLICIES),
    Setting("tls_verify", "for that pull, false allows plain HTTP and unverified TLS (as podman's); default: as "
            "registries.conf says", flags="--tls-verify", metavar="BOOL", choices=("true", "false"),
            parse=lambda v: v == "true"),
    Setting("remove", "remove the container and its upper layer when it exits", flags="--rm", kind=FLAG,
            inspect="HostConfig.AutoRemove"),
    Setting("interactive", "keep stdin attached", flags="--interactive -i", kind=FLAG, inspect="Config.OpenStdin"),
    Setting("tty", "allocate a pseudo-terminal", flags="--tty -t", kind=FLAG, inspect="Config.Tty"),
)

# run's own flag: not a setting of the container.
DETACH = Option("--detach -d", "run as the service pymachine@NAME.service and return (create + start)", kind=FLAG)
# What create leaves out: a detached container has no terminal to keep.
NOT_FOR_CREATE = ("interactive", "tty")


def command_options(verb: str) -> list[Option]:
    """The options of `run` or `create`, in the table's order."""
    options = [s.option for s in SETTINGS if s.option is not None
               and not (verb == "create" and s.field in NOT_FOR_CREATE)]
    return [*options, DETACH] if verb == "run" else options


def update_options() -> list[Option]:
    """The options of `update`: every limit (docker update's flags) and --restart."""
    return [s.option for s in SETTINGS if s.option is not None
            and (s.field.startswith("limits.") or s.field == "restart")]


def updated_spec(spec: sp.ContainerSpec, args: Mapping[str, Any]) -> tuple[sp.ContainerSpec, list[str]]:
    """`update`'s flags applied to a container's spec: the new spec (validated) and the flags given."""
    fields: dict[str, Any] = {"limits": spec.limits.to_fields()}
    given = []
    for setting in SETTINGS:
        if setting.option is None or setting.dest not in args or _is_unset(setting, args[setting.dest]):
            continue
        if not (setting.field.startswith("limits.") or setting.field == "restart"):
            continue
        given.append(setting.dest_flag)
        value = setting.from_cli(args[setting.dest])
        table, _, sub = setting.field.rpartition(".")
        target = fields["limits"] if table else fields
        target[sub] = {**target[sub], **value} if isinstance(value, dict) and target.get(sub) else value
    new = spec.replace(limits=sp.Limits(**fields.pop("limits")), **fields)
    return new.validate(), given


def unit_property_name(prop: UnitProperty) -> str:
    """The name systemd gives a property in its files (CPUQuota for CPUQuotaPerSecUSec)."""
    return prop.line.partition("=")[0] or prop.name


def _merge(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **new}
    if isinstance(old, tuple) and isinstance(new, tuple):
        return old + new
    return new


def _is_unset(setting: Setting, raw: Any) -> bool:
    return raw is None or raw == [] or (raw is False and setting.option is not None and setting.option.kind == FLAG)


def _assign(fields: dict[str, Any], field: str, value: Any) -> None:
    """Set a field ("limits.x" in the nested limits); "a+b" splits a pair of values over two fields."""
    if "+" in field:
        for name, part in zip(field.split("+"), value, strict=True):
            _assign(fields, name, part)
        return
    table, _, sub = field.rpartition(".")
    target = fields.setdefault(table, {}) if table else fields
    target[sub] = _merge(target[sub], value) if sub in target else value


def build_spec(fields: dict[str, Any]) -> sp.ContainerSpec:
    """Fields as _assign made them -> a validated ContainerSpec."""
    values = dict(fields)
    values["limits"] = sp.Limits(**values.get("limits", {}))
    return sp.ContainerSpec(**values).validate()


def name_in_use(name: str) -> bool:
    """A container directory or a definition of that name exists (for generated names)."""
    from machinectl_py.paths import config_path, container_path

    return os.path.lexists(container_path(name)) or os.path.lexists(config_path("machines", f"{name}.toml"))


def spec_from_args(args: Mapping[str, Any]) -> sp.ContainerSpec:
    """The values of `run`'s or `create`'s parser (and the positionals image, command) -> the spec."""
    _cli_cpu_count["n"] = os.cpu_count()
    try:
        fields: dict[str, Any] = {"image": args["image"], "command": tuple(args["command"]) or None}
        for setting in SETTINGS:
            if setting.option is None or setting.dest not in args:
                continue
            raw = args[setting.dest]
            if not _is_unset(setting, raw):
                _assign(fields, setting.field, setting.from_cli(raw))
    finally:
        _cli_cpu_count.clear()
    if "name" not in fields:
        fields["name"] = sp.generate_name(name_in_use)
    return build_spec(fields)


# -- what the table turns into -------------------------------------------------------------------------


def field_value(spec: sp.ContainerSpec, field: str) -> Any:
    value: Any = spec
    for part in field.split("."):
        value = getattr(value, part)
    return value


def _is_default(spec: sp.ContainerSpec, field: str, value: Any) -> bool:
    table, _, sub = field.rpartition(".")
    defaults = sp.Limits._defaults if table == "limits" else sp.ContainerSpec._defaults
    return (sub in defaults and value == defaults[sub]) or value is None


def unit_properties(spec: sp.ContainerSpec, *, scope: bool) -> list[UnitProperty]:
    """The unit properties of the container's settings (limits, stop signal, restart...): for its
    scope (`run`) or its service (a detached container's drop-in and SetUnitProperties)."""
    props = []
    for setting in SETTINGS:
        if setting.unit is None:
            continue
        value = field_value(spec, setting.field)
        if _is_default(spec, setting.field, value) and setting.field != "restart":
            continue
        props += [p for p in setting.unit_props(value, spec) if not (scope and p.service_only)]
    return props


def live_properties(spec: sp.ContainerSpec) -> list[UnitProperty]:
    """The resource limits alone: what SetUnitProperties may change on a unit that exists."""
    return [p for s in SETTINGS if s.field.startswith("limits.") and s.unit is not None
            and not _is_default(spec, s.field, field_value(spec, s.field))
            for p in s.unit_props(field_value(spec, s.field), spec)]


def _check_devices(spec: sp.ContainerSpec) -> None:
    import stat

    for setting in SETTINGS:
        if setting.unit is None or not setting.field.startswith("limits.device_"):
            continue
        for path in field_value(spec, setting.field):
            try:
                is_block = stat.S_ISBLK(os.stat(path).st_mode)
            except OSError as e:
                raise UsageError(f"{setting.dest_flag}: {path}: {e.strerror}") from None
            if not is_block:
                raise UsageError(f"{setting.dest_flag}: {path} is not a block device")


def expected_properties(spec: sp.ContainerSpec) -> dict[str, tuple[Setting, Any]]:
    """The limits a spec sets, by D-Bus property: the setting and the value systemd should hold
    (the device limits' entries of one property joined in one list)."""
    out: dict[str, tuple[Setting, Any]] = {}
    for setting in SETTINGS:
        if setting.unit is None or not setting.field.startswith("limits."):
            continue
        value = field_value(spec, setting.field)
        if _is_default(spec, setting.field, value):
            continue
        for p in setting.unit_props(value, spec):
            if p.signature.startswith("a(") and p.name in out:
                out[p.name] = (setting, out[p.name][1] + p.value)
            else:
                out[p.name] = (setting, p.value)
    return out


def v1_refused(spec: sp.ContainerSpec) -> list[str]:
    """The flags of the spec's settings that systemd cannot apply on a host with v1 controller
    hierarchies (it would accept them and do nothing)."""
    return [s.dest_flag for s in SETTINGS if s.v2_only
            and not _is_default(spec, s.field, field_value(spec, s.field))]


def check_host_support(spec: sp.ContainerSpec, unified_host: bool) -> None:
    """What systemd would accept and then skip with a line in its log is an error here, naming
    the flag: on a hybrid or legacy host a v2-only limit; a device limit on what is no block
    device of this host (systemd only logs "Couldn't stat device")."""
    _check_devices(spec)
    refused = [] if unified_host else v1_refused(spec)
    if refused:
        raise UsageError(f"{', '.join(refused)}: not supported on this host's cgroup v1 controllers (systemd "
                         "applies it on the unified cgroup v2 hierarchy only)",
                         hint="boot the host with systemd.unified_cgroup_hierarchy=1 to use it")


def dropin_lines(spec: sp.ContainerSpec) -> list[str]:
    return [p.line for p in unit_properties(spec, scope=False) if p.line]


def inspect_fields(spec: sp.ContainerSpec) -> dict[str, Any]:
    """Config, HostConfig and Mounts, with docker's names: {"Config": {...}, "HostConfig": {...}, ...}."""
    out: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.inspect is None:
            continue
        value = setting.to_inspect(field_value(spec, setting.field))
        *tables, last = setting.inspect.split(".")
        target = out
        for table in tables:
            target = target.setdefault(table, {})
        target[last] = value
    out["Config"]["Hostname"] = spec.effective_hostname
    return out


def definition_settings() -> list[Setting]:
    """The settings a definition file may hold, in the table's order."""
    return [s for s in SETTINGS if s.key is not None]


def markdown_table() -> str:
    """The README's table of settings."""
    rows = ["| flag | definition key | `inspect` field | unit property | what |",
            "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        flags = ", ".join(f"`{n}`" for n in s.option.names) if s.option else "(argument)" if not s.key or \
            s.field in ("image", "command") else "-"
        key = f"`{s.key}`" if s.key else "-"
        where = f"`{s.inspect}`" if s.inspect else "-"
        unit = f"`{s.unit_doc}`" if s.unit_doc else "-"
        rows.append(f"| {flags} | {key} | {where} | {unit} | {s.doc.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
