"""docker's security flags: their parsers, and what a container ends up with.

--cap-add/--cap-drop (names with or without CAP_, or ALL), --privileged, --security-opt
(no-new-privileges, seccomp=PROFILE.json|unconfined), --sysctl (namespaced ones only),
--group-add and --device HOST[:CONTAINER][:rwm]. The settings table (settings.py) declares
them; this module decides, from the spec and the policy, the capabilities kept, the seccomp
profile, the devices the unit allows and the nodes made in the container's /dev.
Pure: no system call beyond stat(2) of a --device's host node, at parse time.
"""

from __future__ import annotations

import os
import stat

from machinectl_py.errors import UsageError
from machinectl_py.policy import CAPABILITIES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from machinectl_py.policy import Policy
    from machinectl_py.spec import ContainerSpec

ALL = "ALL"
UNCONFINED = "unconfined"
# Sysctls the kernel keeps per namespace (docker's and runc's list): IPC ones per IPC
# namespace (every container has its own), net.* per network namespace (only with a private
# network: with the host's, they would be the host's).
IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax",
               "kernel.shmmni", "kernel.shm_rmid_forced")
IPC_SYSCTL_PREFIXES = ("fs.mqueue.",)


def parse_capabilities(items: list[str]) -> tuple[str, ...]:
    """--cap-add/--cap-drop: NET_ADMIN, cap_net_admin, CAP_NET_ADMIN or ALL -> NET_ADMIN/ALL."""
    out = []
    for item in items:
        name = item.strip().upper().removeprefix("CAP_")
        if name != ALL and name not in CAPABILITIES:
            raise UsageError(f"unknown capability {item!r}",
                             hint="use a name of capabilities(7), e.g. NET_ADMIN, or ALL")
        if name not in out:
            out.append(name)
    return tuple(out)


def parse_security_opts(items: list[str]) -> tuple[str, ...]:
    """no-new-privileges[:true|false], seccomp=unconfined|PROFILE.json (an absolute path is
    kept; the file is checked now and read at each start)."""
    out = []
    for item in items:
        key, sep, value = item.partition("=" if "=" in item else ":")
        if key == "no-new-privileges" and value in ("", "true"):
            out.append("no-new-privileges")
        elif key == "no-new-privileges" and value == "false":
            continue
        elif key == "seccomp" and sep and value == UNCONFINED:
            out.append(f"seccomp={UNCONFINED}")
        elif key == "seccomp" and sep and value:
            out.append(f"seccomp={_check_profile(value)}")
        else:
            raise UsageError(f"invalid --security-opt {item!r}",
                             hint="use no-new-privileges, seccomp=unconfined or seccomp=PROFILE.json")
    return tuple(out)


def _check_profile(path: str) -> str:
    from machinectl_py import seccomp_profile

    path = os.path.abspath(path)
    try:
        with open(path, "rb") as f:
            seccomp_profile.load(f.read(), path)
    except OSError as e:
        raise UsageError(f"cannot read seccomp profile {path}: {e.strerror}") from None
    return path


def parse_sysctls(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("/", ".")
        if not sep or not key or "\n" in value or ".." in key or not all(p for p in key.split(".")):
            raise UsageError(f"invalid --sysctl {item!r}", hint="use NAME=VALUE, e.g. net.ipv4.ip_forward=1")
        if not (key in IPC_SYSCTLS or key.startswith(IPC_SYSCTL_PREFIXES) or key.startswith("net.")):
            raise UsageError(f"sysctl {key!r} is not namespaced: it would change the host",
                             hint="allowed: net.* (with --network private), kernel.shm*, kernel.msg*, kernel.sem, "
                                  "fs.mqueue.*")
        out[key] = value
    return out


def parse_devices(items: list[str]) -> tuple[str, ...]:
    """--device HOST[:CONTAINER][:PERMS] -> "HOST:CONTAINER:PERMS" (the host node must be a
    device now; its numbers are read again at each start)."""
    out = []
    for item in items:
        parts = item.split(":")
        perms = "rwm"
        if len(parts) > 1 and parts[-1] and set(parts[-1]) <= set("rwm") and not parts[-1].startswith("/"):
            perms = parts.pop()
        if len(parts) > 2 or not parts[0].startswith("/") or (len(parts) == 2 and not parts[1].startswith("/")):
            raise UsageError(f"invalid --device {item!r}", hint="use HOST[:CONTAINER][:rwm], absolute paths")
        host, target = parts[0], parts[1] if len(parts) == 2 else parts[0]
        if ".." in target.split("/") or not target.startswith("/dev/"):
            raise UsageError(f"invalid --device {item!r}: the container's path must be in /dev, without '..'")
        device_numbers(host)
        out.append(f"{host}:{target}:{perms}")
    return tuple(out)


def device_numbers(host: str) -> tuple[bool, int, int]:
    """(block?, major, minor) of a host device node."""
    try:
        st = os.stat(host)
    except OSError as e:
        raise UsageError(f"--device {host}: {e.strerror}") from None
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise UsageError(f"--device {host}: not a device node")
    return stat.S_ISBLK(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)


def split_device(device: str) -> tuple[str, str, str]:
    host, target, perms = device.rsplit(":", 2)
    return host, target, perms


# -- what the container gets -----------------------------------------------------------------------


def capabilities(spec: ContainerSpec, policy: Policy) -> frozenset[str]:
    """docker's rule: --cap-add ALL gives every capability but the dropped ones; --cap-drop
    ALL keeps only the added ones; else the policy's set minus the dropped plus the added.
    --privileged: every capability; --boot adds nspawn's set to the policy's (boot.py)."""
    every = set(CAPABILITIES)
    if spec.privileged:
        return frozenset(every)
    add, drop = set(spec.cap_add) - {ALL}, set(spec.cap_drop) - {ALL}
    if ALL in spec.cap_add:
        return frozenset(every - drop)
    if ALL in spec.cap_drop:
        return frozenset(add)
    base = set(policy.capabilities)
    if spec.boot:
        from machinectl_py.boot import NSPAWN_CAPABILITIES

        base |= NSPAWN_CAPABILITIES  # what systemd as PID 1 needs, as under nspawn -b
    return frozenset((base - drop) | add)


def capability_mask(caps: frozenset[str]) -> int:
    mask = 0
    for name in caps:
        mask |= 1 << CAPABILITIES[name]
    return mask


def capability_names(mask: int) -> frozenset[str]:
    return frozenset(name for name, bit in CAPABILITIES.items() if mask & (1 << bit))


def userns_mode(spec: ContainerSpec) -> str | None:
    """The --userns a start runs with: --privileged gives the container the host's root, so it
    means host whatever the default (as docker's userns-remap does); None: the default (a
    booted OS too, as nspawn's own unit runs -U)."""
    return "host" if spec.privileged else spec.userns


def seccomp_choice(spec: ContainerSpec) -> str | None:
    """UNCONFINED (no filter: --privileged or seccomp=unconfined), a profile's path, or None
    for pymachine's default profile."""
    return seccomp_choice_of(spec.privileged, spec.security_opt)


def seccomp_choice_of(privileged: bool, security_opt: Sequence[str]) -> str | None:
    """seccomp_choice from the two fields it reads (exec has its record as JSON values)."""
    if privileged:
        return UNCONFINED
    for opt in security_opt:
        if opt.startswith("seccomp="):
            return opt.removeprefix("seccomp=")
    return None


def no_new_privileges(spec: ContainerSpec) -> bool:
    return no_new_privileges_of(spec.security_opt)


def no_new_privileges_of(security_opt: Sequence[str]) -> bool:
    return "no-new-privileges" in security_opt


def device_allow(spec: ContainerSpec, policy_allow: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The unit's DeviceAllow= (with DevicePolicy=closed): the policy's list plus each
    --device's host node, the same for a scope and a service. --privileged: see device_policy."""
    return policy_allow + tuple((host, perms) for host, _target, perms in map(split_device, spec.devices))


def device_policy(spec: ContainerSpec) -> str:
    """closed (the default list and DeviceAllow=); --privileged: auto, every device allowed."""
    return "auto" if spec.privileged else "closed"


def sysctl_items(sysctls: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """(path under /proc/sys, value) pairs for the init."""
    return tuple(("/proc/sys/" + key.replace(".", "/"), value) for key, value in sysctls.items())
