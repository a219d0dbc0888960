"""The container spec: one frozen description of a container, built from flags or a TOML file.

Everything here is pure: parsing and validation happen before any side effect, so a
bad name or size never leaves anything behind.
"""

from __future__ import annotations

import os

from machinectl_py.errors import UsageError
from machinectl_py.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

# No `re` and no `dataclasses` here: this module is on the start-up path (see record.py).
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
# machined's rule for machine names (machine_name_is_valid() in systemd):
# 1-64 characters of [a-zA-Z0-9-_.], no leading dot, no "..".
_NAME_CHARS = _ALNUM | frozenset("-_.")
_ENV_KEY_CHARS = _ALNUM | frozenset("_")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}

NETWORK_MODES = ("host", "private")
RESTART_POLICIES = ("no", "on-failure", "always")
USEC_PER_SEC = 1_000_000
# The kernel refuses cgroup memory limits this small to be useful; docker's floor is 6 MiB.
MIN_MEMORY = 6 * 1024**2


def validate_name(name: str, what: str = "container name") -> str:
    if not 1 <= len(name) <= 64 or not _NAME_CHARS.issuperset(name) or name.startswith(".") or ".." in name:
        raise UsageError(
            f"invalid {what} {name!r}",
            hint="use 1-64 characters of [a-zA-Z0-9-_.], not starting with '.' and without '..'",
        )
    return name


# The largest uid or gid: (uid_t)-1 means "no change" to setresuid and friends.
MAX_ID = 2**32 - 2


def validate_user(user: str) -> str:
    """USER[:GROUP]: names or numbers, looked up in the container's own /etc/passwd at start."""
    name, _, group = user.partition(":")
    if not all(part and len(part) <= 256 and ":" not in part and part.isprintable() and " " not in part
               and not (part.isdigit() and int(part) > MAX_ID)
               for part in ([name, group] if ":" in user else [name])):
        raise UsageError(f"invalid user {user!r}", hint=f"use USER, UID, USER:GROUP or UID:GID (ids 0-{MAX_ID})")
    return user


def validate_hostname(hostname: str) -> str:
    if len(hostname) > 64 or not _is_hostname(hostname):
        raise UsageError(f"invalid hostname {hostname!r}", hint="use letters, digits, '-' and '.', at most 64")
    return hostname


def _is_hostname(text: str) -> bool:
    """RFC 1123 labels joined by dots: letters, digits, inner dashes, 1-63 each."""
    labels = text.split(".")
    return all(
        0 < len(label) < 64 and _ALNUM.issuperset(label.replace("-", "")) and label[0] != "-" and label[-1] != "-"
        for label in labels
    )


def hostname_for(name: str) -> str:
    """The default hostname: the container name, if it is a valid hostname."""
    candidate = name.replace("_", "-").strip("-.")[:64] or "container"
    return candidate if _is_hostname(candidate) else "container"


def parse_size(text: str, what: str = "size") -> int:
    """'64M' -> 67108864. Units are powers of 1024, as in docker and systemd."""
    stripped = text.strip()
    number = stripped.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = stripped[len(number):].lower()
    number = number.rstrip()
    whole, _, fraction = number.partition(".")
    factor = _SIZE_UNITS.get(unit)
    if factor is None or not whole.isdigit() or not (fraction == "" or fraction.isdigit()) or number.endswith("."):
        raise UsageError(f"invalid {what} {text!r}", hint="use a number with an optional unit: 512K, 64M, 1.5G")
    value = int(float(number) * factor)
    if value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be greater than zero")
    return value


def parse_memory(text: str) -> int:
    value = parse_size(text, "memory limit")
    if value < MIN_MEMORY:
        raise UsageError(f"invalid memory limit {text!r}: the minimum is 6M")
    return value


def parse_cpus(text: str) -> int:
    """'1.5' CPUs -> CPUQuotaPerSecUSec in microseconds (1.5 s of CPU time per second)."""
    try:
        cpus = float(text)
    except ValueError:
        raise UsageError(f"invalid CPU count {text!r}", hint="use a positive number such as 0.5 or 2") from None
    if not (cpus > 0) or cpus > 4096:
        raise UsageError(f"invalid CPU count {text!r}: must be greater than 0 and at most 4096")
    # systemd rounds quotas to 10 ms per second; keep at least that much.
    return max(10_000, round(cpus * USEC_PER_SEC))


def check_cpus_available(text: str, available: int | None) -> None:
    """docker's rule for --cpus: no more CPUs than the host has. A quota above that is never
    reached, so asking for it is a mistake. (Definitions are checked when made from the
    command line, not when read: a definition may move to a smaller host.)"""
    if available and float(text) > available:
        raise UsageError(f"invalid CPU count {text!r}: this host has only {available} CPUs",
                         hint=f"use a number from 0.01 to {available}")


def parse_count(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"invalid {what} {text!r}: must be a whole number") from None
    if value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be greater than zero")
    return value


def parse_env(items: Sequence[str], inherit: Mapping[str, str] | None = None) -> dict[str, str]:
    """KEY=VALUE items. With `inherit` (the command line's -e, given pymachine's environment),
    a bare KEY takes its value from there, and is left out where it is not set, as docker's -e
    does; elsewhere (a definition file) a bare KEY is an error."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not key or key[0].isdigit() or not _ENV_KEY_CHARS.issuperset(key) or not (sep or inherit is not None):
            raise UsageError(f"invalid environment variable {item!r}",
                             hint="use KEY=VALUE, or KEY to pass on its value here" if inherit is not None
                             else "use KEY=VALUE")
        if sep:
            env[key] = value
        elif inherit is not None and key in inherit:
            env[key] = inherit[key]
    return env


def generate_name() -> str:
    return "pm-" + os.urandom(5).hex()


class Limits(Record):
    __slots__ = ("memory_max", "cpu_quota_usec", "tasks_max")
    _defaults = {"memory_max": None, "cpu_quota_usec": None, "tasks_max": None}
    memory_max: int | None  # bytes -> MemoryMax
    cpu_quota_usec: int | None  # per second -> CPUQuotaPerSecUSec
    tasks_max: int | None  # -> TasksMax


class Volume(Record):
    """A mount into the container: a host path, a named volume, or an anonymous one."""

    __slots__ = ("target", "source", "read_only")
    _defaults = {"source": None, "read_only": False}
    target: str  # absolute path inside the container
    source: str | None  # host path (absolute) or volume name; None = anonymous
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source is not None and self.source.startswith("/")


class ContainerSpec(Record):
    __slots__ = ("name", "image", "command", "hostname", "network", "env", "workdir", "user", "limits",
                 "volumes", "restart", "remove", "tty", "interactive")
    _defaults = {
        "command": None, "hostname": None, "network": "host", "env": {}, "workdir": None, "user": None,
        "limits": Limits(), "volumes": (), "restart": "no", "remove": False, "tty": False, "interactive": False,
    }
    name: str
    image: str
    command: tuple[str, ...] | None  # None: the image's Entrypoint/Cmd
    hostname: str | None
    network: str
    env: Mapping[str, str]
    workdir: str | None
    user: str | None
    limits: Limits
    volumes: tuple[Volume, ...]
    restart: str
    remove: bool  # --rm
    tty: bool
    interactive: bool

    @property
    def effective_hostname(self) -> str:
        return self.hostname or hostname_for(self.name)

    def validate(self) -> ContainerSpec:
        validate_name(self.name)
        if self.hostname is not None:
            validate_hostname(self.hostname)
        if self.network not in NETWORK_MODES:
            raise UsageError(f"invalid network mode {self.network!r}", hint="use 'host' or 'private'")
        if self.restart not in RESTART_POLICIES:
            raise UsageError(f"invalid restart policy {self.restart!r}", hint="use no, on-failure or always")
        if self.remove and self.restart != "no":
            # docker's rule: a container removed when it stops has nothing to restart.
            raise UsageError("conflicting options: --restart and --rm")
        if self.workdir is not None and not self.workdir.startswith("/"):
            raise UsageError(f"invalid working directory {self.workdir!r}: must be absolute")
        if self.user is not None:
            validate_user(self.user)
        for vol in self.volumes:
            if not vol.target.startswith("/") or vol.target == "/":
                raise UsageError(f"invalid volume target {vol.target!r}: must be an absolute path other than /")
        return self
