"""The security policy applied to every container (capabilities, masked and read-only paths,
the devices the unit allows). The seccomp filter is a profile of its own (seccomp_profile.py).

The shipped default is policies/default.toml; an admin overrides it with
/etc/pymachine/policy.toml. Pure: loading and validation only; runtime applies it.
"""

from __future__ import annotations

import marshal
import os

from machinectl_py.errors import UsageError
from machinectl_py.paths import config_path, state_path
from machinectl_py.record import Record

# linux/capability.h
CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
    "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
    "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
    "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}
_KEYS = {"capabilities", "masked_paths", "readonly_paths", "device_allow"}


class Policy(Record):
    __slots__ = ("capabilities", "masked_paths", "readonly_paths", "device_allow")
    capabilities: frozenset[str]
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]
    device_allow: tuple[tuple[str, str], ...]

    @property
    def capability_mask(self) -> int:
        mask = 0
        for name in self.capabilities:
            mask |= 1 << CAPABILITIES[name]
        return mask


def default_policy_path() -> str:
    override = config_path("policy.toml")
    if os.path.exists(override):
        return override
    return os.path.join(os.path.dirname(__file__), "data", "policy-default.toml")


def load_policy(path: str | None = None) -> Policy:
    """Load and check the policy; a marshal cache keyed by the file's identity spares the
    TOML parser (7 ms of imports) on every container start."""
    path = path or default_policy_path()
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"cannot read security policy {path}: {e.strerror}") from None
    real = os.path.realpath(path)
    key = [real, st.st_mtime_ns, st.st_size, st.st_ino]
    cache = state_path("cache", f"policy-{_path_digest(real)}.marshal")
    raw = _read_cache(cache, key)
    if raw is None:
        raw = _parse_toml(path)
        _write_cache(cache, key, raw)
    return parse_policy(raw, path)


def _path_digest(path: str) -> str:
    """A cache file per policy file: two installations side by side (a venv beside Debian's
    package, a benchmark's two trees) each keep theirs, instead of each start of one
    re-parsing the TOML after a start of the other (~14 ms, measured in bench_start's A/B)."""
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - Python >= 3.12 names it _sha2
        from hashlib import sha256
    digest: str = sha256(path.encode()).hexdigest()[:16]
    return digest


def _parse_toml(path: str) -> dict[str, object]:
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"cannot read security policy {path}: {e}") from None


def _read_cache(cache: str, key: list[object]) -> dict[str, object] | None:
    try:
        with open(cache, "rb") as f:
            data = marshal.load(f)
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("key") != tuple(key) or not isinstance(data.get("policy"), dict):
        return None
    policy: dict[str, object] = data["policy"]
    return policy


def _write_cache(cache: str, key: list[object], raw: dict[str, object]) -> None:
    try:
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        tmp = f"{cache}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            marshal.dump({"key": tuple(key), "policy": raw}, f)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only state dir only costs the parse next time


def parse_policy(raw: dict[str, object], source: str) -> Policy:
    unknown = set(raw) - _KEYS
    if unknown & {"seccomp_deny", "seccomp_deny_user_namespaces"}:
        raise UsageError(f"{source}: {sorted(unknown)[0]!r} is gone: the seccomp filter is an allow-list profile now",
                         hint="remove the key; a container takes another profile with --security-opt seccomp=FILE")
    if unknown:
        raise UsageError(f"{source}: unknown key {sorted(unknown)[0]!r}")
    caps = _string_list(raw.get("capabilities", []), source, "capabilities")
    bad = [c for c in caps if c.upper().removeprefix("CAP_") not in CAPABILITIES]
    if bad:
        raise UsageError(f"{source}: unknown capability {bad[0]!r}")
    masked = _absolute_paths(raw.get("masked_paths", []), source, "masked_paths")
    readonly = _absolute_paths(raw.get("readonly_paths", []), source, "readonly_paths")
    devices = raw.get("device_allow", [])
    if not isinstance(devices, list) or not all(
        isinstance(d, list) and len(d) == 2 and all(isinstance(x, str) for x in d) for d in devices
    ):
        raise UsageError(f"{source}: device_allow must be a list of [path, access] pairs")
    return Policy(
        capabilities=frozenset(c.upper().removeprefix("CAP_") for c in caps),
        masked_paths=tuple(masked),
        readonly_paths=tuple(readonly),
        device_allow=tuple((d[0], d[1]) for d in devices),
    )


def _string_list(value: object, source: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{source}: {key} must be a list of strings")
    return list(value)


def _absolute_paths(value: object, source: str, key: str) -> list[str]:
    paths = _string_list(value, source, key)
    for p in paths:
        if not p.startswith("/") or ".." in p.split("/"):
            raise UsageError(f"{source}: {key} entry {p!r} must be an absolute path without '..'")
    return paths
