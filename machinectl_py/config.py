"""Container definitions: /etc/pymachine/machines/NAME.toml, read and written.

A definition is what an admin would write by hand (like a .nspawn file), and what
`pymachine create` writes for them; both are read the same way. The container's name
is the file's name. Schema (every key but `image` optional):

    image = "busybox"                       # name[:tag] or id
    command = ["httpd", "-f", "-p", "8080"] # default: the image's Entrypoint + Cmd
    env = { GREETING = "hello" }
    workdir = "/www"
    user = "www-data"                       # USER[:GROUP]; default: the image's user, else root
    hostname = "web"                        # default: the name
    network = "host"                        # host | private
    restart = "on-failure"                  # no | on-failure | always
    volumes = ["/srv/www:/www:ro", "data:/data", "/cache"]

    [limits]
    memory = "64M"                          # MemoryMax=
    cpus = 0.5                              # CPUQuotaPerSecUSec=
    pids = 64                               # TasksMax=

Unknown keys and bad values are errors naming the file, the key and its line. Pure:
no side effects besides reading and (atomically) writing the file.
"""

from __future__ import annotations

import os

from machinectl_py.errors import NotFoundError, UsageError
from machinectl_py.paths import config_path
from machinectl_py.spec import (
    ContainerSpec,
    Limits,
    Volume,
    parse_count,
    parse_cpus,
    parse_env,
    parse_memory,
    validate_name,
)

# On the path of `create` and `run -d`: no pathlib, json or typing imports at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

_TOP_KEYS = ("image", "command", "env", "workdir", "user", "hostname", "network", "restart", "volumes",
             "limits")
_LIMIT_KEYS = ("memory", "cpus", "pids")


def machines_dir() -> str:
    return config_path("machines")


def definition_path(name: str) -> str:
    return config_path("machines", f"{validate_name(name)}.toml")


class DefinitionError(UsageError):
    """A definition file is wrong: the message names the file, the key and the line."""


def _line_of(text: str, key: str, table: str | None = None) -> int | None:
    """The line where `key` is assigned (inside [table] if given); tomllib gives no positions."""
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("["):
            current = line.strip("[] ")
            if table is None and current == key:
                return number
            continue
        head = line.split("=", 1)[0].strip().strip('"\'')
        if "=" in line and head == key and current == table:
            return number
    return None


class _Reader:
    def __init__(self, path: os.PathLike[str] | str, text: str) -> None:
        self.path = path
        self.text = text

    def fail(self, key: str, problem: str, table: str | None = None) -> DefinitionError:
        line = _line_of(self.text, key, table)
        where = f"{self.path}:{line}" if line else str(self.path)
        full = f"{table}.{key}" if table else key
        return DefinitionError(f"{where}: {full}: {problem}")

    def string(self, raw: Mapping[str, Any], key: str, table: str | None = None) -> str | None:
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {type(value).__name__}", table)
        return value


def parse_definition(name: str, path: os.PathLike[str] | str, text: str) -> ContainerSpec:
    """TOML text -> a validated ContainerSpec named `name`."""
    import tomllib

    reader = _Reader(path, text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DefinitionError(f"{path}: not valid TOML: {e}") from None
    for key in raw:
        if key not in _TOP_KEYS:
            raise reader.fail(key, f"unknown key (known: {', '.join(_TOP_KEYS)})")
    image = reader.string(raw, "image")
    if not image:
        raise DefinitionError(f"{path}: image: missing (every definition names its image)")
    fields: dict[str, Any] = {"name": name, "image": image}
    for key in ("workdir", "user", "hostname", "network", "restart"):
        value = reader.string(raw, key)
        if value is not None:
            fields[key] = value
    fields["command"] = _command(reader, raw.get("command"))
    fields["env"] = _env(reader, raw.get("env", {}))
    fields["volumes"] = _volumes(reader, raw.get("volumes", []))
    fields["limits"] = _limits(reader, raw.get("limits", {}))
    try:
        return ContainerSpec(**fields).validate()
    except UsageError as e:
        key = next((k for k in ("hostname", "network", "restart", "workdir", "user", "volumes") if k in e.message),
                   "")
        raise reader.fail(key, e.message) if key else DefinitionError(f"{path}: {e.message}") from None


def _command(reader: _Reader, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return ("/bin/sh", "-c", value)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise reader.fail("command", "must be a non-empty list of strings (or one string for /bin/sh -c)")
    return tuple(value)


def _env(reader: _Reader, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise reader.fail("env", "must be a table of NAME = \"value\"")
    items = []
    for key, item in value.items():
        if not isinstance(item, (str, int, float, bool)) or isinstance(item, bool):
            raise reader.fail(key, "must be a string or a number", "env")
        items.append(f"{key}={item}")
    try:
        return parse_env(items)
    except UsageError as e:
        raise reader.fail("env", e.message) from None


def _volumes(reader: _Reader, value: Any) -> tuple[Volume, ...]:
    from machinectl_py.volumes import parse_volume

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise reader.fail("volumes", "must be a list of strings such as \"/host/path:/path[:ro]\"")
    try:
        return tuple(parse_volume(v) for v in value)
    except UsageError as e:
        raise reader.fail("volumes", e.message) from None


def _limits(reader: _Reader, value: Any) -> Limits:
    if not isinstance(value, dict):
        raise reader.fail("limits", "must be a table ([limits])")
    for key in value:
        if key not in _LIMIT_KEYS:
            raise reader.fail(key, f"unknown key (known: {', '.join(_LIMIT_KEYS)})", "limits")
    try:
        memory = value.get("memory")
        cpus = value.get("cpus")
        pids = value.get("pids")
        return Limits(
            memory_max=parse_memory(str(memory)) if memory is not None else None,
            cpu_quota_usec=parse_cpus(str(cpus)) if cpus is not None else None,
            tasks_max=parse_count(str(pids), "pids limit") if pids is not None else None,
        )
    except UsageError as e:
        bad = next((k for k, word in (("memory", "memory"), ("cpus", "CPU"), ("pids", "pids")) if word in e.message),
                   "memory")
        raise reader.fail(bad, e.message, "limits") from None


def load_definition(name: str) -> ContainerSpec:
    path = definition_path(name)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise NotFoundError(f"no such container: {name} (no definition {path})") from None
    except UnicodeDecodeError:
        raise DefinitionError(f"{path}: not UTF-8 text") from None
    return parse_definition(name, path, text)


def definition_exists(name: str) -> bool:
    return os.path.exists(definition_path(name))


# -- writing ---------------------------------------------------------------------------------


# TOML basic strings: control characters escaped, DEL included (TOML 1.0 forbids them raw).
_TOML_ESCAPES = {i: f"\\u{i:04x}" for i in (*range(0x20), 0x7F)} | {
    ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"}


def _toml_string(value: str) -> str:
    # Not json.dumps: importing json costs 13 ms on `create` (it compiles regular expressions).
    return '"' + value.translate(_TOML_ESCAPES) + '"'


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else _toml_string(key)


def render_definition(spec: ContainerSpec) -> str:
    """A ContainerSpec -> TOML text that parse_definition() reads back to the same spec."""
    lines = [f"# pymachine container {spec.name}: `pymachine start {spec.name}` runs it as "
             f"pymachine@{spec.name}.service", f"image = {_toml_string(spec.image)}"]
    if spec.command is not None:
        lines.append("command = [" + ", ".join(_toml_string(a) for a in spec.command) + "]")
    if spec.env:
        lines.append("env = { " + ", ".join(f"{_toml_key(k)} = {_toml_string(v)}" for k, v in spec.env.items()) + " }")
    for key in ("workdir", "user", "hostname"):
        value = getattr(spec, key)
        if value is not None:
            lines.append(f"{key} = {_toml_string(value)}")
    lines.append(f"network = {_toml_string(spec.network)}")
    lines.append(f"restart = {_toml_string(spec.restart)}")
    if spec.volumes:
        from machinectl_py.volumes import format_volume

        lines.append("volumes = [" + ", ".join(_toml_string(format_volume(v)) for v in spec.volumes) + "]")
    limits = spec.limits
    if limits.memory_max is not None or limits.cpu_quota_usec is not None or limits.tasks_max is not None:
        lines.append("")
        lines.append("[limits]")
        if limits.memory_max is not None:
            lines.append(f"memory = {_toml_string(str(limits.memory_max))}")
        if limits.cpu_quota_usec is not None:
            lines.append(f"cpus = {limits.cpu_quota_usec / 1_000_000!r}")
        if limits.tasks_max is not None:
            lines.append(f"pids = {limits.tasks_max}")
    return "\n".join(lines) + "\n"


def write_definition(spec: ContainerSpec, *, exclusive: bool = True) -> str:
    """Write NAME.toml atomically; with exclusive, fail if a definition of that name exists."""
    from machinectl_py.errors import ConflictError

    path = definition_path(spec.name)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{spec.name}.toml.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render_definition(spec))
        f.flush()
        os.fsync(f.fileno())
    try:
        if exclusive:
            # link() fails if the target exists: two `create --name x` at once, one wins.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ConflictError(f"a definition for {spec.name!r} exists already: {path}",
                                    hint=f"remove it with 'pymachine rm {spec.name}' or choose another --name") \
                    from None
        else:
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def remove_definition(name: str) -> None:
    try:
        os.unlink(definition_path(name))
    except FileNotFoundError:
        pass
