"""--boot: what a booted OS (systemd as PID 1) gets on top of any container, as pure data.

systemd's container interface (systemd.io/CONTAINER_INTERFACE), as systemd-nspawn -b
provides it: `container=` and `container_uuid=` in PID 1's environment (with an empty or
missing /etc/machine-id, systemd makes the uuid its transient machine id, so the guest's
journal directory and machined's id agree), /run/host/os-release and
/run/host/container-manager, /dev/console a pty (with -t), NOTIFY_SOCKET for READY=1, and the
capabilities systemd needs to set up its services' sandboxes (nspawn's set). The writable
name=systemd hierarchy (hybrid or legacy hosts) is plan.cgroup_plan's, the notify socket's
receiver readiness.py's. Pure: no system call, unit-tested.
"""

from __future__ import annotations

from machinectl_py import plan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

# Where the guest finds the host's notify socket (nspawn's path) and what it is told it runs in.
NOTIFY_PATH = "/run/host/notify"
MANAGER = "pymachine"
INIT = "/sbin/init"
# systemd-nspawn's default capability set (v252, nspawn.c): systemd mounts its services' private
# /tmp and read-only trees (SYS_ADMIN), reboots by reboot() in its PID namespace (SYS_BOOT; the
# kernel kills the container's init with SIGHUP for a reboot, SIGINT for a halt), and so on.
NSPAWN_CAPABILITIES = frozenset({
    "AUDIT_CONTROL", "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "IPC_OWNER",
    "KILL", "LEASE", "LINUX_IMMUTABLE", "MKNOD", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_RAW", "SETFCAP",
    "SETGID", "SETPCAP", "SETUID", "SYS_ADMIN", "SYS_BOOT", "SYS_CHROOT", "SYS_NICE", "SYS_PTRACE",
    "SYS_RESOURCE", "SYS_TTY_CONFIG",
})
# A host's os-release, the first that exists (os-release(5)).
HOST_OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")


def container_uuid(container_id: str) -> str:
    """The first 128 bits of the container id as a UUID: the same bytes machined registers, and
    the guest's machine id when its image has none."""
    h = container_id[:32]
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def environment(env: Mapping[str, str], container_id: str, notify: bool) -> dict[str, str]:
    """PID 1's environment: the image's and -e's, plus the container interface's."""
    out = dict(env)
    out.pop("HOSTNAME", None)  # systemd sets the hostname itself (it is the UTS name already)
    out["container"] = MANAGER
    out["container_uuid"] = container_uuid(container_id)
    if notify:
        out["NOTIFY_SOCKET"] = NOTIFY_PATH
    return out


def command(args: tuple[str, ...] | None) -> tuple[str, ...]:
    """/sbin/init with the arguments given after the image (systemd's own, as under nspawn -b)."""
    return (INIT, *(args or ()))


def ops(host_os_release: str, manager_file: str, boot_id_file: str, notify_socket: str | None,
        console: bool) -> list[plan.Op]:
    """The mounts of the container interface, after base_plan's /run tmpfs: the host's
    os-release and the manager's name read-only in /run/host; a boot id of this boot of the
    container over the kernel's (so the guest's journal tells its boots apart, as under
    nspawn); the notify socket; with -t (`console`), the console is the payload's pty (the first
    of the container's own devpts). A detached boot's console is the init's (payload.send_console)."""
    out: list[plan.Op] = [
        plan.Bind(host_os_release, "/run/host/os-release", read_only=True, is_file=True),
        plan.Bind(manager_file, "/run/host/container-manager", read_only=True, is_file=True),
        plan.Bind(boot_id_file, "/proc/sys/kernel/random/boot_id", read_only=True, is_file=True),
    ]
    if notify_socket is not None:
        out.append(plan.Bind(notify_socket, NOTIFY_PATH, is_file=True, idmapped=False))
    if console:
        out.append(plan.Symlink("/dev/console", "pts/0"))
    return out


def new_boot_id(random16: bytes) -> str:
    """A random (version 4) UUID, as the kernel's boot_id file spells it."""
    b = bytearray(random16)
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return container_uuid(b.hex()) + "\n"


def exit_code(code: int | None) -> int | None:
    """A halt or power-off inside ends the init by SIGINT (reboot(2) in a PID namespace): for a
    booted OS that is a clean end, 0, as nspawn reports it."""
    return 0 if code == 128 + 2 else code


def is_systemd(init_target: str) -> bool:
    """Is an image's /sbin/init (the link's target, or its own path) systemd, which sends
    READY=1? Another init (busybox's, tini...) never does: its container is up when it runs."""
    return init_target.rstrip("/").rsplit("/", 1)[-1] == "systemd"


# A terminal's other control characters (after the control sequences are taken out). No `re`
# here: the unit's setup process of every boot imports this module, and `re` (with enum and
# functools) costs it ~5 ms.
_CONTROL = bytes(range(0x00, 0x09)) + bytes(range(0x0B, 0x20)) + b"\x7f"


def strip_csi(line: bytes) -> bytes:
    """The line without its CSI sequences (ESC [, parameter bytes 0x30-0x3f, intermediate bytes
    0x20-0x2f, a final byte 0x40-0x7e: colours, erasing); an ESC that starts none is left to the
    control characters' removal."""
    out = bytearray()
    i, n = 0, len(line)
    while True:
        j = line.find(b"\x1b[", i)
        if j < 0:
            out += line[i:]
            return bytes(out)
        out += line[i:j]
        k = j + 2
        while k < n and 0x30 <= line[k] <= 0x3F:
            k += 1
        while k < n and 0x20 <= line[k] <= 0x2F:
            k += 1
        if k < n and 0x40 <= line[k] <= 0x7E:
            i = k + 1
        else:
            out += line[j:j + 1]
            i = j + 1


def console_lines(data: bytes) -> bytes:
    """Complete console lines as a log holds them: each line as a terminal would show it last (the
    text after its last carriage return: systemd's "A start job is running..." overwrites
    itself), without colours or other control characters, empty lines dropped."""
    out = []
    for line in data.split(b"\n")[:-1]:
        line = strip_csi(line).rstrip(b"\r").rpartition(b"\r")[2]
        line = line.translate(None, _CONTROL)
        if line.strip():
            out.append(line + b"\n")
    return b"".join(out)


def parse_notify(datagram: bytes) -> dict[str, str]:
    """sd_notify's message: KEY=value lines (sd_notify(3)); lines without '=' are ignored."""
    out: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            out[key] = value
    return out
