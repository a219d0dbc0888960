"""Seccomp profiles in docker's (and the OCI runtime spec's) JSON format: reading and resolving.

A profile is an allow-list: `defaultAction` (SCMP_ACT_ERRNO with `defaultErrnoRet`, as
docker's default) for every syscall no rule names, and `syscalls[]` rules, each with
`names`, `action` (`errnoRet`), optional `args` (index, value, valueTwo, op) and optional
`includes`/`excludes` on the container's capabilities (`caps`), the architecture
(`arches`, Go's names: amd64, arm64...) and `minKernel`. `architectures`/`archMap` are read
and checked but, on purpose, only the native ABI is ever allowed: a second ABI (i386, x32
on x86_64) would number syscalls differently and get around the list, so its syscalls fail
with ENOSYS (seccomp_compile sets that as the bad-architecture action).

pymachine's default profile is `policies/seccomp-default.json` (installed as
`data/seccomp-default.json`); `--security-opt seccomp=FILE` loads another in this format.
Pure: parsing and resolving into `Rule`s; seccomp_compile.py turns them into BPF with
libseccomp and caches the program by the profile's hash.
"""

from __future__ import annotations

import os

from machinectl_py.errors import UsageError
from machinectl_py.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS",
           "SCMP_ACT_TRAP", "SCMP_ACT_LOG")
OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
             "SCMP_CMP_MASKED_EQ")
EPERM = 1
# uname -m -> Go's GOARCH, the names docker's `arches` use.
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "x86", "armv7l": "arm", "ppc64le": "ppc64le",
           "s390x": "s390x", "riscv64": "riscv64"}
_RULE_KEYS = {"names", "name", "action", "errnoRet", "args", "includes", "excludes", "comment"}
_TOP_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "listenerPath",
             "listenerMetadata", "flags"}


def default_profile_path() -> str:
    return os.path.join(os.path.dirname(__file__), "data", "seccomp-default.json")


class Arg(Record):
    __slots__ = ("index", "op", "value", "value_two")
    index: int
    op: str
    value: int
    value_two: int


class Rule(Record):
    """One rule after includes/excludes: these names get `action` (with `errno` for ERRNO)
    when every arg condition holds (`args` AND-ed; docker's rule: an index named twice makes
    one rule per condition instead, OR-ed: see `arg_groups`)."""

    __slots__ = ("names", "action", "errno", "args")
    names: tuple[str, ...]
    action: str
    errno: int
    args: tuple[Arg, ...]

    def arg_groups(self) -> list[tuple[Arg, ...]]:
        indexes = [a.index for a in self.args]
        if len(set(indexes)) == len(indexes):
            return [self.args]
        return [(a,) for a in self.args]


class Resolved(Record):
    """A profile resolved for one container: what seccomp_compile compiles."""

    __slots__ = ("default_action", "default_errno", "rules")
    default_action: str
    default_errno: int
    rules: tuple[Rule, ...]


def load(text: bytes, source: str) -> dict[str, Any]:
    """The profile's JSON, checked against the schema; every mistake names the file."""
    import json

    try:
        raw = json.loads(text)
    except ValueError as e:
        raise UsageError(f"seccomp profile {source}: not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"seccomp profile {source}: must be a JSON object")
    check(raw, source)
    return raw


def check(raw: dict[str, Any], source: str) -> None:
    def fail(problem: str) -> UsageError:
        return UsageError(f"seccomp profile {source}: {problem}")

    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise fail(f"unknown key {sorted(unknown)[0]!r}")
    if raw.get("defaultAction") not in ACTIONS:
        raise fail(f"defaultAction must be one of {', '.join(ACTIONS)}")
    if not isinstance(raw.get("syscalls", []), list):
        raise fail("syscalls must be a list")
    for i, rule in enumerate(raw.get("syscalls", [])):
        _check_rule(rule, lambda problem, i=i: fail(f"syscalls[{i}]: {problem}"))


def _check_rule(rule: Any, fail: Any) -> None:
    if not isinstance(rule, dict):
        raise fail("must be an object")
    if set(rule) - _RULE_KEYS:
        raise fail(f"unknown key {sorted(set(rule) - _RULE_KEYS)[0]!r}")
    names = rule.get("names", [rule["name"]] if "name" in rule else None)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise fail("names must be a non-empty list of syscall names")
    if rule.get("action") not in ACTIONS:
        raise fail(f"action must be one of {', '.join(ACTIONS)}")
    for arg in rule.get("args") or []:
        if (not isinstance(arg, dict) or not isinstance(arg.get("index"), int) or not 0 <= arg["index"] <= 5
                or arg.get("op") not in OPERATORS or not isinstance(arg.get("value", 0), int)
                or not isinstance(arg.get("valueTwo", 0), int)):
            raise fail("args: each needs index 0-5, an integer value (and valueTwo) and op SCMP_CMP_*")
    for key in ("includes", "excludes"):
        cond = rule.get(key) or {}
        if not isinstance(cond, dict) or not all(isinstance(cond.get(k, []), list) for k in ("caps", "arches")):
            raise fail(f"{key} must be an object with lists caps and arches")


def resolve(raw: dict[str, Any], capabilities: frozenset[str], machine: str, kernel: str) -> Resolved:
    """The rules that apply to a container holding `capabilities` (names without CAP_) on this
    architecture (`uname -m`) and kernel release."""
    arch = GO_ARCH.get(machine, machine)
    caps = {"CAP_" + c for c in capabilities}
    rules = []
    for rule in raw.get("syscalls", []):
        if not _applies(rule, caps, arch, kernel):
            continue
        names = tuple(rule.get("names", [rule.get("name")]))
        args = tuple(Arg(a["index"], a["op"], a.get("value", 0), a.get("valueTwo", 0)) for a in rule.get("args") or [])
        rules.append(Rule(names, rule["action"], int(rule.get("errnoRet", EPERM)), args))
    return Resolved(raw["defaultAction"], int(raw.get("defaultErrnoRet", EPERM)), tuple(rules))


def _applies(rule: dict[str, Any], caps: set[str], arch: str, kernel: str) -> bool:
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("minKernel") and _kernel_tuple(kernel) < _kernel_tuple(inc["minKernel"]):
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    return not (exc.get("arches") and arch in exc["arches"])


def _kernel_tuple(release: str) -> tuple[int, ...]:
    parts = []
    for part in release.split("-")[0].split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
