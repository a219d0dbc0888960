"""Container definitions: /etc/pymachine/machines/NAME.toml, read and written.

A definition is what an admin would write by hand (like a .nspawn file), and what
`pymachine create` writes for them; both are read the same way. The container's name
is the file's name. Every key but `image` is optional; the keys are declared with their
flags in settings.SETTINGS, and the README's table of settings lists them:

    image = "busybox"
    command = ["httpd", "-f", "-p", "8080"]
    env = { GREETING = "hello" }
    volumes = ["/srv/www:/www:ro", "data:/data", "/cache"]

    [limits]
    memory = "64M"

Unknown keys and bad values are errors naming the file, the key and its line. Pure:
no side effects besides reading and (atomically) writing the file.
"""

from __future__ import annotations

import os

from machinectl_py.errors import NotFoundError, UsageError
from machinectl_py.paths import config_path
from machinectl_py.spec import ContainerSpec, validate_name

# On the path of `create` and `run -d`: no pathlib, json or typing imports at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

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
    """TOML text -> a validated ContainerSpec named `name`. The keys are settings.SETTINGS'."""
    import tomllib

    from machinectl_py import settings

    reader = _Reader(path, text)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DefinitionError(f"{path}: not valid TOML: {e}") from None
    by_key = {s.key: s for s in settings.definition_settings() if s.key}
    _check_keys(reader, raw, by_key)
    if "image" not in raw:
        raise DefinitionError(f"{path}: image: missing (every definition names its image)")
    fields: dict[str, Any] = {"name": name}
    for key, setting in by_key.items():
        table, _, sub = key.rpartition(".")
        section = raw.get(table, {}) if table else raw
        if sub not in section:
            continue

        def fail(problem: str, sub: str = sub, table: str = table) -> DefinitionError:
            return reader.fail(sub, problem, table or None)

        try:
            settings._assign(fields, setting.field, setting.toml_value(section[sub], fail))
        except UsageError as e:
            if isinstance(e, DefinitionError):
                raise
            raise fail(e.message) from None
    try:
        return settings.build_spec(fields)
    except UsageError as e:
        raise DefinitionError(f"{path}: {e.message}") from None


def _check_keys(reader: _Reader, raw: Mapping[str, Any], by_key: Mapping[str, Any]) -> None:
    tables = {k.partition(".")[0] for k in by_key if k and "." in k}
    top = [k for k in by_key if k and "." not in k] + sorted(tables)
    for key, value in raw.items():
        if key in tables:
            if not isinstance(value, dict):
                raise reader.fail(key, f"must be a table ([{key}])")
            known = [k.partition(".")[2] for k in by_key if k and k.startswith(key + ".")]
            for sub in value:
                if sub not in known:
                    raise reader.fail(sub, f"unknown key (known: {', '.join(known)})", key)
        elif key not in top:
            raise reader.fail(key, f"unknown key (known: {', '.join(top)})")


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


def render_definition(spec: ContainerSpec) -> str:
    """A ContainerSpec -> TOML text that parse_definition() reads back to the same spec."""
    from machinectl_py import settings

    lines = [f"# pymachine container {spec.name}: `pymachine start {spec.name}` runs it as "
             f"pymachine@{spec.name}.service"]
    tables: dict[str, list[str]] = {}
    for setting in settings.definition_settings():
        assert setting.key is not None
        if not setting.writes or (setting.render is None and setting.key != "image"):
            continue
        value = settings.field_value(spec, setting.field)
        if setting.key not in ("image", "network", "restart") and settings._is_default(spec, setting.field, value):
            continue
        text = settings.toml_string(value) if setting.key == "image" else setting.render(value)  # type: ignore[misc]
        table, _, key = setting.key.rpartition(".")
        (tables.setdefault(table, []) if table else lines).append(f"{key} = {text}")
    for table, entries in tables.items():
        lines += ["", f"[{table}]", *entries]
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
