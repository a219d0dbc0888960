"""A seccomp profile -> the classic-BPF program the container's init installs, compiled once.

libseccomp (Debian's python3-seccomp, the compiler docker, podman and nspawn use) compiles
the profile resolved for the container's capabilities (seccomp_profile.resolve). nspawn
pays that compilation (~70 ms here) at every start; pymachine keeps each program in
/var/lib/pymachine/cache/seccomp/HASH.bpf, HASH being the sha256 of the profile's bytes,
the capabilities, the architecture and the kernel release (`includes.minKernel`), so a
start pays it once per profile and capability set and otherwise reads ~2 KiB.
libseccomp is imported only to compile (tests/unit/test_startup_imports.py).

The project's venv is made from Debian's /usr/bin/python3 without its dist-packages:
the compile step alone adds that directory to sys.path for the one import, so nothing
else of the system's packages can shadow the venv's.
"""

from __future__ import annotations

import os

from machinectl_py import seccomp_profile as sp
from machinectl_py.errors import UsageError
from machinectl_py.paths import state_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT = b"pymachine-seccomp-1\0"
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
ENOSYS = 38


def program(profile_path: str | None, capabilities: frozenset[str]) -> bytes:
    """The program of the profile at `profile_path` (None: pymachine's default) for a
    container holding `capabilities`, from the cache or compiled into it."""
    path = profile_path or sp.default_profile_path()
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"cannot read seccomp profile {path}: {e.strerror}") from None
    return _cached(FORMAT + text, capabilities, lambda: sp.load(text, path))


def oci_program(profile: dict[str, Any]) -> bytes:
    """The program of an OCI config's linux.seccomp (checked by oci.config: no includes, so
    no capability set), cached the same way by its canonical JSON: the engine sends the same
    profile for every container."""
    import json

    text = json.dumps(profile, sort_keys=True, separators=(",", ":")).encode()
    return _cached(b"oci\0" + FORMAT + text, frozenset(), lambda: profile)


def _cached(keyed: bytes, capabilities: frozenset[str], load: Any) -> bytes:
    uname = os.uname()
    key = _hash(keyed + b"\0" + " ".join(sorted(capabilities)).encode() + b"\0"
                + f"{uname.machine}\0{uname.release}".encode())
    cache = state_path("cache", "seccomp", key + ".bpf")
    try:
        with open(cache, "rb") as f:
            return f.read()
    except OSError:
        pass
    resolved = sp.resolve(load(), capabilities, uname.machine, uname.release)
    bpf = compile_bpf(resolved)
    _store(cache, bpf)
    return bpf


def _hash(data: bytes) -> str:
    # _sha256 is the C module under hashlib, without hashlib's OpenSSL probing on this path.
    try:
        from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - Python >= 3.12 names it _sha2
        from hashlib import sha256
    digest: str = sha256(data).hexdigest()
    return digest


def libseccomp() -> Any:
    """Debian's python3-seccomp, from the venv too (see the module's docstring)."""
    import importlib
    import sys

    try:
        return importlib.import_module("seccomp")
    except ImportError:
        pass
    sys.path.append(DEBIAN_DIST_PACKAGES)
    try:
        return importlib.import_module("seccomp")
    except ImportError:
        raise UsageError("compiling a seccomp profile needs libseccomp's Python module",
                         hint="apt-get install python3-seccomp") from None
    finally:
        sys.path.remove(DEBIAN_DIST_PACKAGES)


def compile_bpf(resolved: sp.Resolved) -> bytes:
    lib = libseccomp()
    default = _action(lib, resolved.default_action, resolved.default_errno)
    flt = lib.SyscallFilter(default)
    # Syscalls of another ABI (i386, x32 on x86_64): ENOSYS, never numbers to get around the list.
    flt.set_attr(lib.Attr.ACT_BADARCH, lib.ERRNO(ENOSYS))
    for rule in resolved.rules:
        if (rule.action, rule.errno) == (resolved.default_action, resolved.default_errno):
            continue  # libseccomp refuses a rule that repeats the default (docker skips it too)
        action = _action(lib, rule.action, rule.errno)
        for name in rule.names:
            for args in rule.arg_groups():
                _add(lib, flt, action, name, args)
    import tempfile

    with tempfile.TemporaryFile() as f:
        flt.export_bpf(f)
        f.seek(0)
        return f.read()


def _add(lib: Any, flt: Any, action: Any, name: str, args: tuple[sp.Arg, ...]) -> None:
    conditions = [lib.Arg(a.index, getattr(lib, a.op.removeprefix("SCMP_CMP_")), a.value, a.value_two) for a in args]
    try:
        flt.add_rule(action, name, *conditions)
    except (RuntimeError, ValueError):
        pass  # a name this architecture (or this libseccomp) does not know: docker skips it too


def _action(lib: Any, action: str, errno: int) -> Any:
    if action == "SCMP_ACT_ERRNO":
        return lib.ERRNO(errno)
    return {"SCMP_ACT_ALLOW": lib.ALLOW, "SCMP_ACT_KILL": lib.KILL, "SCMP_ACT_KILL_THREAD": lib.KILL,
            "SCMP_ACT_KILL_PROCESS": lib.KILL_PROCESS, "SCMP_ACT_TRAP": lib.TRAP, "SCMP_ACT_LOG": lib.LOG}[action]


def _store(cache: str, bpf: bytes) -> None:
    try:
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        tmp = f"{cache}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(bpf)
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only state dir only costs the compile next time
