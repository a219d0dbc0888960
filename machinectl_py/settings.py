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
                 "unit_doc", "doc", "writes", "number_ok")

    def __init__(self, field: str, doc: str, *, flags: str | None = None, kind: str = VALUE, metavar: str = "VALUE",
                 choices: tuple[str, ...] = (), key: str | None = None, inspect: str | None = None,
                 parse: Callable[[Any], Any] | None = None, from_toml: Callable[[Any], Any] | None = None,
                 render: Callable[[Any], str] | None = None, to_inspect: Callable[[Any], Any] | None = None,
                 unit: Callable[[Any], list[UnitProperty]] | None = None, unit_doc: str = "",
                 help: str | None = None, writes: bool = True, number_ok: bool = False) -> None:
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

    @property
    def dest(self) -> str:
        assert self.option is not None
        return self.option.dest

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
    Setting("network", "host: share the host's network (default, as systemd-nspawn); private: only lo",
            flags="--network", metavar="MODE", choices=sp.NETWORK_MODES, key="network",
            inspect="HostConfig.NetworkMode", parse=sp.validate_network, render=toml_string),
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
    Setting("stop_signal", "the signal that stops the container (default SIGTERM)", flags="--stop-signal",
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
    Setting("userns", "user namespace: auto gives the container its own range of 65536 host UIDs/GIDs "
            "(auto:size=N: N of them); host (default): none, root inside is root outside", flags="--userns",
            metavar="MODE", key="userns", inspect="HostConfig.UsernsMode", parse=sp.parse_userns,
            render=toml_string, to_inspect=_userns_inspect),
    Setting("limits.memory_max", "memory limit, e.g. 64M, 1G", flags="--memory -m", metavar="SIZE",
            key="limits.memory", inspect="HostConfig.Memory", parse=sp.parse_memory, render=str, number_ok=True,
            to_inspect=lambda v: v or 0, unit=lambda v: [prop("MemoryMax", "t", v)], unit_doc="MemoryMax="),
    Setting("limits.cpu_quota_usec", "CPU limit in CPUs, e.g. 0.5", flags="--cpus", metavar="N",
            key="limits.cpus", inspect="HostConfig.NanoCpus", parse=_cpus, number_ok=True,
            render=lambda v: repr(v / 1_000_000), to_inspect=lambda v: (v or 0) * 1000,
            unit=lambda v: [prop("CPUQuotaPerSecUSec", "t", v, _quota_line(v))], unit_doc="CPUQuota="),
    Setting("limits.cpu_weight", "relative CPU weight, 1-10000 (default 100)", flags="--cpu-weight", metavar="N",
            key="limits.cpu_weight", inspect="HostConfig.CpuWeight", parse=sp.parse_cpu_weight, render=str,
            number_ok=True, unit=lambda v: [prop("CPUWeight", "t", v)], unit_doc="CPUWeight="),
    Setting("limits.cpu_weight", "docker's relative CPU shares, 2-262144, converted to CPUWeight= as podman does",
            flags="--cpu-shares -c", metavar="N", key="limits.cpu_shares", parse=sp.parse_cpu_shares,
            number_ok=True, writes=False),
    Setting("limits.tasks_max", "maximum number of tasks", flags="--pids-limit", metavar="N", key="limits.pids",
            inspect="HostConfig.PidsLimit", parse=_limit_count("pids limit"), render=str, number_ok=True,
            to_inspect=lambda v: v or 0, unit=lambda v: [prop("TasksMax", "t", v)], unit_doc="TasksMax="),
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
        props += [p for p in setting.unit(value) if not (scope and p.service_only)]
    return props


def live_properties(spec: sp.ContainerSpec) -> list[UnitProperty]:
    """The resource limits alone: what SetUnitProperties may change on a unit that exists."""
    return [p for s in SETTINGS if s.field.startswith("limits.") and s.unit is not None
            and not _is_default(spec, s.field, field_value(spec, s.field)) for p in s.unit(field_value(spec, s.field))]


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
        flags = ", ".join(f"`{n}`" for n in s.option.names) if s.option else "(argument)"
        key = f"`{s.key}`" if s.key else "-"
        where = f"`{s.inspect}`" if s.inspect else "-"
        unit = f"`{s.unit_doc}`" if s.unit_doc else "-"
        rows.append(f"| {flags} | {key} | {where} | {unit} | {s.doc.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
