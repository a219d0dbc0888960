"""The container spec: one frozen description of a container, built from flags or a TOML file.

Everything here is pure: parsing and validation happen before any side effect, so a
bad name or size never leaves anything behind.
"""

from __future__ import annotations

import os

from machinectl_py.errors import UsageError
from machinectl_py.paths import is_machine_name
from machinectl_py.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

# No `re` and no `dataclasses` here: this module is on the start-up path (see record.py).
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ENV_KEY_CHARS = _ALNUM | frozenset("_")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1024, "kib": 1024,
    "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1024**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1024**4, "tib": 1024**4,
}

NETWORK_MODES = ("bridge", "host", "none", "private", "veth")  # the meaning of each: network.py
# Modes that never attach the container to a network (any other mode names one: bridge, NAME).
UNATTACHED_MODES = frozenset({"host", "none", "private"})
_NETWORK_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
RESTART_POLICIES = ("no", "on-failure", "always")
PULL_POLICIES = ("missing", "always", "never")  # docker run --pull
USEC_PER_SEC = 1_000_000
# The kernel refuses cgroup memory limits this small to be useful; docker's floor is 6 MiB.
MIN_MEMORY = 6 * 1024**2


def validate_name(name: str, what: str = "container name") -> str:
    if not is_machine_name(name):
        raise UsageError(
            f"invalid {what} {name!r}",
            hint="use 1-64 characters of [a-zA-Z0-9-.], not starting with '.' and without '..' "
                 "(machined's rule for machine names)",
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


def parse_cpu_weight(text: str) -> int:
    """--cpu-weight: systemd's CPUWeight=, 1-10000 (100 is every unit's default)."""
    value = parse_count(text, "CPU weight")
    if value > 10_000:
        raise UsageError(f"invalid CPU weight {text!r}: must be 1-10000")
    return value


def parse_cpu_period(text: str) -> int:
    """--cpu-period: the CFS period in microseconds, in docker's bounds (1 ms to 1 s)."""
    value = parse_count(text, "CPU period")
    if not 1000 <= value <= 1_000_000:
        raise UsageError(f"invalid CPU period {text!r}: must be 1000-1000000 microseconds (1 ms to 1 s)")
    return value


def parse_cpu_shares(text: str) -> int:
    """docker's --cpu-shares (2-262144, 1024 the default) on systemd's CPUWeight= scale, as podman
    converts it: 1024 -> 39, 2 -> 1, 262144 -> 10000."""
    shares = parse_count(text, "CPU shares")
    if not 2 <= shares <= 262_144:
        raise UsageError(f"invalid CPU shares {text!r}: must be 2-262144")
    return 1 + (shares - 2) * 9999 // 262_142


def check_cpus_available(text: str, available: int | None) -> None:
    """docker's rule for --cpus: no more CPUs than the host has. A quota above that is never
    reached, so asking for it is a mistake. (Definitions are checked when made from the
    command line, not when read: a definition may move to a smaller host.)"""
    if available and float(text) > available:
        raise UsageError(f"invalid CPU count {text!r}: this host has only {available} CPUs",
                         hint=f"use a number from 0.01 to {available}")


def parse_count(text: str, what: str, *, zero: bool = False) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"invalid {what} {text!r}: must be a whole number") from None
    if value < 0 or (value == 0 and not zero):
        raise UsageError(f"invalid {what} {text!r}: must be {'zero or more' if zero else 'greater than zero'}")
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


def read_env_file(path: str, inherit: Mapping[str, str] | None) -> dict[str, str]:
    """docker's --env-file: KEY=VALUE lines (the value taken as it is, quotes included); a bare KEY
    passes on pymachine's own value (with `inherit`); blank lines and lines starting with # skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read env file {path!r}: {getattr(e, 'strerror', None) or e}") from None
    items = [line.lstrip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    try:
        return parse_env(items, inherit if inherit is not None else {})
    except UsageError as e:
        raise UsageError(f"env file {path}: {e.message}") from None


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """KEY=VALUE or KEY (an empty value), as docker's --label."""
    labels = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key or not key.isprintable() or key != key.strip():
            raise UsageError(f"invalid label {item!r}", hint="use KEY=VALUE or KEY")
        labels[key] = value
    return labels


# Signal numbers of x86-64 and arm64 Linux: the `signal` module is not loaded on the start-up path.
SIGNALS = {"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGILL": 4, "SIGTRAP": 5, "SIGABRT": 6, "SIGBUS": 7,
           "SIGFPE": 8, "SIGKILL": 9, "SIGUSR1": 10, "SIGSEGV": 11, "SIGUSR2": 12, "SIGPIPE": 13, "SIGALRM": 14,
           "SIGTERM": 15, "SIGSTKFLT": 16, "SIGCHLD": 17, "SIGCONT": 18, "SIGSTOP": 19, "SIGTSTP": 20,
           "SIGTTIN": 21, "SIGTTOU": 22, "SIGURG": 23, "SIGXCPU": 24, "SIGXFSZ": 25, "SIGVTALRM": 26,
           "SIGPROF": 27, "SIGWINCH": 28, "SIGIO": 29, "SIGPWR": 30, "SIGSYS": 31}
SIGRTMIN, SIGRTMAX = 34, 64


def parse_signal(text: str) -> str:
    """TERM, SIGTERM, sigterm, 15, RTMIN+3 -> the signal's name as systemd writes it (SIGTERM, SIGRTMIN+3)."""
    upper = text.strip().upper()
    if upper.isdigit():
        number = int(upper)
        names = {n: k for k, n in SIGNALS.items()}
        if number in names:
            return names[number]
        if SIGRTMIN <= number <= SIGRTMAX:
            return f"SIGRTMIN+{number - SIGRTMIN}"
    name = upper if upper.startswith("SIG") else "SIG" + upper
    if name in SIGNALS:
        return name
    base, plus, offset = name.partition("+")
    if base == "SIGRTMIN" and (not plus or (offset.isdigit() and int(offset) <= SIGRTMAX - SIGRTMIN)):
        return f"SIGRTMIN+{int(offset or 0)}"
    raise UsageError(f"invalid signal {text!r}", hint="use a name such as SIGINT or TERM, or a number")


def signal_number(name: str) -> int:
    if name.startswith("SIGRTMIN+"):
        return SIGRTMIN + int(name[len("SIGRTMIN+"):])
    return SIGNALS[name]


# docker's --ulimit names -> RLIMIT_* numbers (x86-64 and arm64 Linux)
RLIMITS = {"cpu": 0, "fsize": 1, "data": 2, "stack": 3, "core": 4, "rss": 5, "nproc": 6, "nofile": 7,
           "memlock": 8, "as": 9, "locks": 10, "sigpending": 11, "msgqueue": 12, "nice": 13, "rtprio": 14,
           "rttime": 15}
RLIM_INFINITY_U64 = 2**64 - 1


def _rlimit_value(text: str, item: str) -> int:
    if text in ("-1", "unlimited", "infinity"):
        return -1
    if not text.isdigit() or int(text) >= RLIM_INFINITY_U64:
        raise UsageError(f"invalid ulimit {item!r}: {text!r} is not a number", hint="use NAME=SOFT[:HARD]")
    return int(text)


def parse_ulimits(items: Sequence[str]) -> dict[str, tuple[int, int]]:
    """docker's --ulimit NAME=SOFT[:HARD] -> {name: (soft, hard)}; -1 (or unlimited) is no limit."""
    ulimits = {}
    for item in items:
        name, eq, values = item.partition("=")
        if name not in RLIMITS:
            raise UsageError(f"invalid ulimit {item!r}: unknown resource {name!r}",
                             hint=f"use one of {', '.join(RLIMITS)}")
        if not eq or not values:
            raise UsageError(f"invalid ulimit {item!r}", hint="use NAME=SOFT[:HARD], as nofile=1024:2048")
        soft_text, _, hard_text = values.partition(":")
        soft = _rlimit_value(soft_text, item)
        hard = _rlimit_value(hard_text, item) if hard_text else soft
        if hard >= 0 and (soft < 0 or soft > hard):
            raise UsageError(f"invalid ulimit {item!r}: the soft limit is above the hard one")
        ulimits[name] = (soft, hard)
    return ulimits


def format_ulimit(limit: tuple[int, int]) -> str:
    soft, hard = limit
    return f"{soft}:{hard}"


DEFAULT_SHM_SIZE = 64 * 1024**2
# What a --tmpfs or --mount type=tmpfs may pass to the kernel: sizes, modes and the usual flags;
# never uid=/gid= of the host nor anything that reaches beyond the mount.
_TMPFS_KEYS = frozenset({"size", "mode", "nr_inodes", "nr_blocks"})
_TMPFS_FLAGS = frozenset({"ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime",
                          "relatime", "strictatime", "nodiratime"})


def check_tmpfs_options(options: str, item: str) -> str:
    for option in (o for o in options.split(",") if o):
        key, eq, value = option.partition("=")
        if eq and key in _TMPFS_KEYS and value and value.replace(".", "").isalnum():
            continue
        if not eq and key in _TMPFS_FLAGS:
            continue
        raise UsageError(f"invalid tmpfs option {option!r} in {item!r}",
                         hint=f"use {', '.join(sorted(_TMPFS_KEYS))}=VALUE or {', '.join(sorted(_TMPFS_FLAGS))}")
    return options


def _check_target(target: str, item: str) -> str:
    if not target.startswith("/") or target.rstrip("/") == "" or ".." in target.split("/"):
        raise UsageError(f"invalid mount {item!r}: the target {target!r} must be an absolute path other than / "
                         "without '..'")
    return os.path.normpath(target)


def parse_tmpfs(items: Sequence[str]) -> dict[str, str]:
    """--tmpfs PATH[:OPTIONS] -> {path: options}."""
    mounts = {}
    for item in items:
        path, _, options = item.partition(":")
        mounts[_check_target(path, item)] = check_tmpfs_options(options, item)
    return mounts


def parse_mount(item: str) -> Volume | tuple[str, str]:
    """docker's --mount type=bind|volume|tmpfs,source=...,target=...[,readonly] -> a Volume, or
    (target, tmpfs options) for a tmpfs."""
    fields: dict[str, str] = {}
    read_only = False
    for part in item.split(","):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            if value.lower() not in ("", "1", "true", "0", "false"):
                raise UsageError(f"invalid mount {item!r}: invalid value for {key}: {value!r}")
            read_only = value.lower() in ("", "1", "true")
        elif not eq:
            raise UsageError(f"invalid mount {item!r}: invalid field {part!r}: must be a key=value pair")
        elif key in ("type", "source", "src", "target", "destination", "dst", "tmpfs-size", "tmpfs-mode"):
            fields[{"src": "source", "destination": "target", "dst": "target"}.get(key, key)] = value
        else:
            raise UsageError(f"invalid mount {item!r}: unknown field {key!r}",
                             hint="use type=, source=, target=, readonly, tmpfs-size=, tmpfs-mode=")
    kind = fields.get("type", "volume")
    if "target" not in fields:
        raise UsageError(f"invalid mount {item!r}: target is required")
    target = _check_target(fields["target"], item)
    if kind == "tmpfs":
        if "source" in fields:
            raise UsageError(f"invalid mount {item!r}: a tmpfs takes no source")
        options = [f"size={fields['tmpfs-size']}"] if "tmpfs-size" in fields else []
        options += [f"mode={fields['tmpfs-mode']}"] if "tmpfs-mode" in fields else []
        options += ["ro"] if read_only else []
        return (target, check_tmpfs_options(",".join(options), item))
    if kind not in ("bind", "volume"):
        raise UsageError(f"invalid mount {item!r}: type {kind!r} is not one of bind, volume, tmpfs")
    if "tmpfs-size" in fields or "tmpfs-mode" in fields:
        raise UsageError(f"invalid mount {item!r}: tmpfs options on a {kind} mount")
    source = fields.get("source") or None
    if kind == "bind":
        if source is None:
            raise UsageError(f"invalid mount {item!r}: source is required for a bind mount")
        if not source.startswith("/") or ".." in source.split("/"):
            raise UsageError(f"invalid mount {item!r}: a bind source must be an absolute path without '..'")
    elif source is not None:
        if source.startswith("/"):
            raise UsageError(f"invalid mount {item!r}: a volume's source is a volume name, not a path",
                             hint="use type=bind for a host path")
        validate_volume_name(source)
    return Volume(target=target, source=source, read_only=read_only)


# docker's names for containers without --name, adjective_name, with machined's "-" for "_".
_ADJECTIVES = ("admiring", "agitated", "amazing", "angry", "awesome", "blissful", "bold", "brave", "busy",
               "charming", "clever", "cool", "compassionate", "confident", "dazzling", "determined", "eager",
               "ecstatic", "elegant", "epic", "festive", "focused", "friendly", "gallant", "gifted", "goofy",
               "gracious", "happy", "hardcore", "heuristic", "hopeful", "hungry", "infallible", "inspiring",
               "jolly", "jovial", "keen", "kind", "laughing", "loving", "lucid", "magical", "modest", "musing",
               "mystifying", "naughty", "nervous", "nice", "nifty", "nostalgic", "objective", "optimistic",
               "peaceful", "pedantic", "pensive", "practical", "priceless", "quirky", "quizzical", "relaxed",
               "reverent", "romantic", "sad", "serene", "sharp", "silly", "sleepy", "stoic", "strange",
               "suspicious", "sweet", "tender", "thirsty", "trusting", "unruffled", "upbeat", "vibrant",
               "vigilant", "vigorous", "wizardly", "wonderful", "xenodochial", "youthful", "zealous", "zen")
_NAMES = ("albattani", "allen", "archimedes", "babbage", "bardeen", "bartik", "bell", "booth", "brahmagupta",
          "carson", "cerf", "curie", "darwin", "diffie", "dijkstra", "einstein", "elion", "euclid", "euler",
          "fermat", "feynman", "franklin", "galileo", "gauss", "goldberg", "goodall", "hamilton", "hawking",
          "heisenberg", "hertz", "hodgkin", "hopper", "hypatia", "jemison", "kepler", "knuth", "lamport",
          "leakey", "lovelace", "margulis", "maxwell", "mccarthy", "meitner", "mendel", "newton", "nobel",
          "noether", "pare", "pasteur", "perlman", "pike", "poincare", "ptolemy", "raman", "ritchie", "shannon",
          "shockley", "sinoussi", "stallman", "swartz", "tesla", "thompson", "torvalds", "turing", "varahamihira",
          "wescoff", "wiles", "williams", "wozniak", "wright", "yalow", "yonath")


def generate_name(taken: Callable[[str], bool] | None = None) -> str:
    """adjective-name, as docker's adjective_name; where `taken` says a name is in use, a digit
    is added and another drawn, as docker retries (the claim of the container's directory stays
    the arbiter between two starts at once)."""
    suffix = ""
    while True:
        a, b, c = os.urandom(3)
        name = f"{_ADJECTIVES[a % len(_ADJECTIVES)]}-{_NAMES[b % len(_NAMES)]}{suffix}"
        if taken is None or not taken(name):
            return name
        suffix += str(c % 10)


def validate_restart(policy: str) -> str:
    if policy not in RESTART_POLICIES:
        raise UsageError(f"invalid restart policy {policy!r}", hint="use no, on-failure or always")
    return policy


def validate_image_name(image: str) -> str:
    if not image:
        raise UsageError("the image name is empty")
    return image


# --userns=auto:size=N: at most the whole pool (userns.py).
USERNS_MAX_SIZE = 0x7FFE0000 - 0x70000000


def parse_userns(text: str) -> str:
    """`host`, `auto` or `auto:size=N`; one clear error otherwise."""
    if text in ("host", "auto"):
        return text
    if text.startswith("auto:"):
        key, _, value = text[5:].partition("=")
        if key == "size" and value.isdigit() and 0 < int(value) <= USERNS_MAX_SIZE:
            return f"auto:size={int(value)}"
    raise UsageError(f"invalid --userns value {text!r}", hint="use auto, auto:size=N or host")


def validate_network_name(name: str) -> str:
    """A user network's name: [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64, not a mode's name."""
    if (not 1 <= len(name) <= 64 or not _NETWORK_NAME_CHARS.issuperset(name) or not name[0].isalnum()
            or name in NETWORK_MODES):
        raise UsageError(f"invalid network name {name!r}",
                         hint="use 1-64 of [a-zA-Z0-9_.-], starting with a letter or digit, "
                              "not bridge, host, none, private or veth")
    return name


def validate_network(mode: str) -> str:
    """A mode (bridge, host, none, private, container:NAME, ns:PATH) or a user network's name."""
    if mode.startswith("container:"):
        validate_name(mode[10:], "container name in --network container:NAME")
    elif mode.startswith("ns:"):
        path = mode[3:]
        if not path.startswith("/") or "\0" in path:
            raise UsageError(f"invalid network mode {mode!r}: ns:PATH needs an absolute path",
                             hint="as ns:/run/netns/NAME or ns:/proc/PID/ns/net")
    elif mode not in NETWORK_MODES:
        try:
            validate_network_name(mode)
        except UsageError:
            raise UsageError(f"invalid network mode {mode!r}",
                             hint="use bridge, host, none ('private') or a network's name") from None
    return mode


def joins(mode: str) -> bool:
    """container:NAME, ns:PATH: the container joins a network namespace that exists already."""
    return mode.startswith(("container:", "ns:"))


def attaches(mode: str) -> bool:
    """Does this mode connect the container to a network (bridge or a user network)?"""
    return mode not in UNATTACHED_MODES and not joins(mode)


def validate_ip(text: str) -> str:
    """--ip: a dotted IPv4 address (checked against the network's subnet at start)."""
    parts = text.split(".")
    if not (len(parts) == 4 and all(p.isdigit() and int(p) <= 255 and str(int(p)) == p for p in parts)):
        raise UsageError(f"invalid --ip {text!r}: not an IPv4 address")
    return text


def validate_alias(alias: str) -> str:
    """--network-alias: a DNS name (letters, digits, '-', '.', '_')."""
    if not 1 <= len(alias) <= 253 or not _NETWORK_NAME_CHARS.issuperset(alias) or not alias[0].isalnum():
        raise UsageError(f"invalid network alias {alias!r}", hint="use a host name: [a-zA-Z0-9][a-zA-Z0-9_.-]*")
    return alias


def parse_connection(text: str) -> tuple[str, str | None, tuple[str, ...]]:
    """A `network connect` kept in the definition: NETWORK[,ip=IP][,alias=ALIAS...] ->
    (network, ip or None, aliases)."""
    name, *options = text.split(",")
    validate_network_name(name)
    ip, aliases = None, []
    for option in options:
        key, _, value = option.partition("=")
        if key == "ip" and ip is None:
            ip = validate_ip(value)
        elif key == "alias":
            aliases.append(validate_alias(value))
        else:
            raise UsageError(f"invalid network connection {text!r}", hint="use NETWORK[,ip=IP][,alias=ALIAS...]")
    return name, ip, tuple(aliases)


def connection(network: str, ip: str | None, aliases: tuple[str, ...]) -> str:
    return ",".join([network, *([f"ip={ip}"] if ip else []), *(f"alias={a}" for a in aliases)])


def validate_connections(items: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    names = [parse_connection(item)[0] for item in items]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise UsageError(f"network {twice} is named twice in connections")
    return tuple(items)


class Limits(Record):
    __slots__ = ("memory_max", "cpu_quota_usec", "tasks_max", "cpu_weight", "memory_low", "memory_swap",
                 "cpuset_cpus", "cpuset_mems", "blkio_weight", "device_read_bps", "device_write_bps",
                 "device_read_iops", "device_write_iops", "cpu_period_usec")
    _defaults = {"memory_max": None, "cpu_quota_usec": None, "cpu_period_usec": None, "tasks_max": None,
                 "cpu_weight": None,
                 "memory_low": None, "memory_swap": None, "cpuset_cpus": None, "cpuset_mems": None,
                 "blkio_weight": None, "device_read_bps": {}, "device_write_bps": {}, "device_read_iops": {},
                 "device_write_iops": {}}
    memory_max: int | None  # bytes -> MemoryMax
    cpu_quota_usec: int | None  # per second -> CPUQuotaPerSecUSec
    cpu_period_usec: int | None  # the quota's period -> CPUQuotaPeriodUSec
    tasks_max: int | None  # -> TasksMax
    cpu_weight: int | None  # 1-10000 -> CPUWeight
    memory_low: int | None  # bytes -> MemoryLow (docker's --memory-reservation)
    memory_swap: int | None  # docker's total of memory + swap, -1: unlimited -> MemorySwapMax (the difference)
    cpuset_cpus: str | None  # "0-1,3" -> AllowedCPUs
    cpuset_mems: str | None  # "0" -> AllowedMemoryNodes
    blkio_weight: int | None  # docker's 10-1000 -> IOWeight, 1/5 of it (systemd's own blkio<->io mapping)
    device_read_bps: Mapping[str, int]  # device path -> bytes per second -> IOReadBandwidthMax
    device_write_bps: Mapping[str, int]  # -> IOWriteBandwidthMax
    device_read_iops: Mapping[str, int]  # -> IOReadIOPSMax
    device_write_iops: Mapping[str, int]  # -> IOWriteIOPSMax

    def to_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def validate(self) -> Limits:
        """docker's rules between limits: --memory-swap needs --memory and is at least as big."""
        if self.memory_swap is not None:
            if self.memory_max is None:
                raise UsageError("you should always set the memory limit when using the memory swap limit",
                                 hint="add --memory (docker's rule: --memory-swap is memory plus swap)")
            if self.memory_swap != -1 and self.memory_swap < self.memory_max:
                raise UsageError("minimum memory swap limit should be larger than memory limit",
                                 hint="--memory-swap is the total of memory and swap, or -1 for unlimited swap")
        if self.memory_low is not None and self.memory_max is not None and self.memory_low > self.memory_max:
            raise UsageError("minimum memory limit can not be less than memory reservation limit",
                             hint="--memory-reservation must be at most --memory")
        return self


# -- the limits of issue #15 (docker's flags for them), parsed --------------------------------------


def parse_memory_swap(text: str) -> int:
    """docker's --memory-swap: the total of memory and swap ("-1": unlimited swap)."""
    return -1 if text.strip() == "-1" else parse_size(text, "memory swap limit")


def parse_cpuset(text: str, what: str) -> str:
    """"0-2,4" (docker's --cpuset-cpus/--cpuset-mems) -> its normalized form: sorted, ranges merged."""
    items = cpuset_items(text, what)
    return format_cpuset(items)


def cpuset_items(text: str, what: str) -> list[int]:
    numbers: set[int] = set()
    for part in text.strip().split(","):
        low, dash, high = part.strip().partition("-")
        if not low.isdigit() or (dash and not high.isdigit()) or (dash and int(high) < int(low)) \
                or int(high if dash else low) > 8191:
            raise UsageError(f"invalid value {text!r} for {what}", hint="use a list such as 0-2,4")
        numbers.update(range(int(low), int(high if dash else low) + 1))
    return sorted(numbers)


def format_cpuset(items: Sequence[int]) -> str:
    ranges: list[list[int]] = []
    for n in items:
        if ranges and ranges[-1][1] == n - 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def cpuset_mask(text: str) -> bytes:
    """systemd's D-Bus form of AllowedCPUs=/AllowedMemoryNodes=: bit N of byte N/8 is CPU N."""
    items = cpuset_items(text, "cpuset")
    mask = bytearray(items[-1] // 8 + 1 if items else 0)
    for n in items:
        mask[n // 8] |= 1 << (n % 8)
    return bytes(mask)


def parse_blkio_weight(text: str) -> int:
    """docker's --blkio-weight, 10-1000."""
    value = parse_count(text, "blkio weight")
    if not 10 <= value <= 1000:
        raise UsageError(f"invalid blkio weight {text!r}: range of blkio weight is from 10 to 1000")
    return value


def parse_device_rates(items: Sequence[str], flag: str, *, size: bool) -> dict[str, int]:
    """docker's --device-read-bps /dev/sda:1mb (a size) or --device-read-iops /dev/sda:1000."""
    rates = {}
    for item in items:
        path, colon, rate = item.rpartition(":")
        if not colon or not path.startswith("/dev/") or ".." in path.split("/") or not rate:
            raise UsageError(f"invalid value {item!r} for {flag}", hint=f"use {flag} /dev/DEVICE:RATE")
        rates[path] = parse_size(rate, f"rate for {flag}") if size else parse_count(rate, f"rate for {flag}")
    return rates


def parse_oom_score_adj(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"invalid value {text!r} for --oom-score-adj: must be a whole number") from None
    if not -1000 <= value <= 1000:
        raise UsageError(f"invalid value {text!r} for --oom-score-adj: valid range is -1000 to 1000")
    return value


_SLICE_CHARS = _ALNUM | frozenset(":_.\\")


def parse_slice(text: str) -> str:
    """--cgroup-parent/--slice: a slice unit, nested by dashes (machine-web.slice lives in
    machine.slice), as docker's systemd cgroup driver takes --cgroup-parent."""
    base = text.removesuffix(".slice")
    if (not text.endswith(".slice") or not base or len(text) > 255 or base.startswith("-")
            or base.endswith("-") or "--" in base or not _SLICE_CHARS.issuperset(base.replace("-", ""))):
        raise UsageError(f"invalid slice {text!r}",
                         hint="use a systemd slice name such as machine-web.slice (dashes nest: it lives in "
                              "machine.slice); cgroup paths are not taken")
    return text


# A volume's name, checked here with Volume, so that spec never imports volumes (an import loop).
_VOLUME_NAME_FIRST = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_VOLUME_NAME_CHARS = _VOLUME_NAME_FIRST | set("_.-")


def validate_volume_name(name: str) -> str:
    """docker's rule: [a-zA-Z0-9][a-zA-Z0-9_.-]+ (and no '..', which could climb the store)."""
    if (len(name) < 2 or len(name) > 128 or name[0] not in _VOLUME_NAME_FIRST
            or not _VOLUME_NAME_CHARS.issuperset(name) or ".." in name):
        raise UsageError(f"invalid volume name {name!r}",
                         hint="use 2-128 characters of [a-zA-Z0-9_.-], starting with a letter or digit")
    return name


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
    """One container, as flags or a definition describe it. Its fields are declared with their
    flags, keys and inspect paths in settings.SETTINGS (a unit test keeps the two in step)."""

    __slots__ = ("name", "image", "command", "hostname", "network", "env", "workdir", "user", "limits",
                 "volumes", "restart", "remove", "tty", "interactive", "entrypoint", "labels", "tmpfs",
                 "read_only", "shm_size", "init", "stop_signal", "stop_timeout", "ulimits",
                 "cap_add", "cap_drop", "privileged", "security_opt", "sysctls", "group_add", "devices", "ports",
                 "dns", "add_hosts", "oom_score_adj", "slice", "userns", "pull",
                 "tls_verify", "network_aliases", "ip", "dns_search", "dns_options", "publish_all", "boot",
                 "connections")
    _defaults = {
        "command": None, "hostname": None, "network": "bridge", "env": {}, "workdir": None, "user": None,
        "limits": Limits(), "volumes": (), "restart": "no", "remove": False, "tty": False, "interactive": False,
        "entrypoint": None, "labels": {}, "tmpfs": {}, "read_only": False, "shm_size": None, "init": False,
        "stop_signal": None, "stop_timeout": None, "ulimits": {},
        "cap_add": (), "cap_drop": (), "privileged": False, "security_opt": (), "sysctls": {}, "group_add": (),
        "devices": (), "ports": (), "dns": (), "add_hosts": (), "oom_score_adj": None, "slice": None, "userns": None,
        "pull": "missing", "tls_verify": None,
        "network_aliases": (), "ip": None, "dns_search": (), "dns_options": (), "publish_all": False,
        "boot": False, "connections": (),
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
    pull: str  # --pull: missing, always or never (when run and create fetch the image from a registry)
    tls_verify: bool | None  # --tls-verify of that pull; None: as registries.conf says
    tty: bool
    interactive: bool
    entrypoint: tuple[str, ...] | None  # None: the image's; (): none
    labels: Mapping[str, str]
    tmpfs: Mapping[str, str]  # target -> mount options
    read_only: bool
    shm_size: int | None  # bytes; None: DEFAULT_SHM_SIZE
    init: bool  # tini as PID 1
    stop_signal: str | None  # SIGTERM when None
    stop_timeout: int | None  # seconds; None: 10
    ports: tuple[str, ...]  # published: "HOSTIP:HOSTPORT:PORT/PROTO" each (network.parse_ports)
    dns: tuple[str, ...]  # servers for /etc/resolv.conf (bridge); none: the host's upstream ones
    add_hosts: tuple[str, ...]  # NAME:IP lines for /etc/hosts (bridge)
    network_aliases: tuple[str, ...]  # more names of the container on its network
    ip: str | None  # a static address on its network; None: the first free one
    dns_search: tuple[str, ...]  # resolv.conf's search domains (replace the host's)
    dns_options: tuple[str, ...]  # resolv.conf's options (replace the host's)
    publish_all: bool  # -P: every ExposedPorts of the image on a free host port
    ulimits: Mapping[str, tuple[int, int]]  # name -> (soft, hard), -1: unlimited
    # docker's security flags (security.py): capability names without CAP_ (or ALL); all
    # capabilities, no seccomp, every device; "no-new-privileges", "seccomp=unconfined|PATH";
    # namespaced sysctls; extra groups (names or gids of the container's /etc/group);
    # devices as "HOST:CONTAINER:PERMS".
    cap_add: tuple[str, ...]
    cap_drop: tuple[str, ...]
    privileged: bool
    security_opt: tuple[str, ...]
    sysctls: Mapping[str, str]
    group_add: tuple[str, ...]
    devices: tuple[str, ...]
    oom_score_adj: int | None  # -1000..1000 -> OOMScoreAdjust= (and the init's /proc/self/oom_score_adj)
    slice: str | None  # the unit's Slice=; None: machine.slice
    userns: str | None  # auto, auto:size=N or host; None: the default (userns.default_mode)
    boot: bool  # --boot: the image's /sbin/init (systemd) as PID 1, booted as an OS (boot.py)
    # Networks joined by `network connect` (kept, as docker): NETWORK[,ip=IP][,alias=A...] each,
    # each an interface eth1, eth2... at every start (parse_connection).
    connections: tuple[str, ...]

    @property
    def effective_stop_signal(self) -> str:
        """--stop-signal, else systemd's halt signal for a booted OS (as nspawn), else SIGTERM."""
        return self.stop_signal or ("SIGRTMIN+3" if self.boot else "SIGTERM")

    @property
    def effective_hostname(self) -> str:
        return self.hostname or hostname_for(self.name)

    def _validate_network_options(self) -> None:
        attached = attaches(self.network)
        if (self.ports or self.publish_all) and not attached:
            raise UsageError(f"published ports need a network of the container's own, not {self.network!r}",
                             hint="add --network bridge")
        named = [flag for flag, value in (("--dns", self.dns), ("--add-host", self.add_hosts),
                                          ("--dns-search", self.dns_search), ("--dns-option", self.dns_options),
                                          ("--network-alias", self.network_aliases), ("--ip", self.ip)) if value]
        if self.ip and self.network == "veth":
            raise UsageError("--ip needs the bridge or a user network: veth addresses are pymachine's",
                             hint="use --network bridge or a network of your own")
        if named and not attached:
            raise UsageError(f"{named[0]} needs the bridge or a user network, not {self.network!r}",
                             hint="add --network bridge")
        if self.connections:
            if not attached:
                raise UsageError(f"connections need the bridge or a user network, not {self.network!r}",
                                 hint="set network = \"bridge\"")
            primary = "pymachine" if self.network == "bridge" else self.network
            if primary in [parse_connection(c)[0] for c in self.connections]:
                raise UsageError(f"connections name the container's own network {primary}")

    def validate(self) -> ContainerSpec:
        validate_name(self.name)
        net_sysctls = [k for k in self.sysctls if k.startswith("net.")]
        if net_sysctls and (self.network == "host" or joins(self.network)):
            # With the host's network namespace it would be the host's sysctl (security.py).
            raise UsageError(f"sysctl {net_sysctls[0]!r} needs a network of the container's own (bridge or none): "
                             "with the host's network it is the host's")
        self.limits.validate()
        if self.hostname is not None:
            validate_hostname(self.hostname)
        validate_network(self.network)
        self._validate_network_options()
        if self.restart not in RESTART_POLICIES:
            raise UsageError(f"invalid restart policy {self.restart!r}", hint="use no, on-failure or always")
        if self.boot and (self.entrypoint is not None or self.init):
            raise UsageError("--boot runs the image's /sbin/init: it takes no --entrypoint or --init",
                             hint="arguments after the image are passed to the init")
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
        targets = [v.target for v in self.volumes] + list(self.tmpfs)
        if len(set(targets)) != len(targets):
            duplicate = next(t for t in targets if targets.count(t) > 1)
            raise UsageError(f"duplicate mount point {duplicate!r}")
        return self
