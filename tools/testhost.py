#!/usr/bin/python3
"""The systemd test host: a real systemd as PID 1 in namespaces, for tests and demos.

pymachine is a systemd-integrated container manager, so its tests need a real systemd, D-Bus,
journald and machined. Where systemd already is PID 1 (a user's host, the QEMU VM tier) the tests
simply run locally (`LocalHost`). Where it is not (this kind of CI machine), `TestHost` boots one:

- a launcher process (this file, `_boot` verb) moves itself into a fresh child cgroup in every
  cgroup hierarchy, unshares a PID namespace and forks the future PID 1;
- PID 1 unshares mount, cgroup, UTS, IPC and network namespaces, brings up its own `lo` and a
  veth pair as a fake uplink (`uplink0` 10.231.0.2/24, its peer `uplink1` 10.231.0.1/24 as the
  default gateway; this kernel has no `dummy` link type), so that the bridges, veths, addresses
  and nft rules the tests make exist only there, never in the machine's own network namespace
  (servers and clients of a test run inside, via `host.run`); it makes every mount private (so
  nothing propagates back to the real host), mounts an overlay of the host's `/` (upper/work dirs
  under /var/lib/pymachine-testhost/<id>/), binds the shared paths (the checkout, pytest's temp
  root) from the host, builds a small /dev (tmpfs with device nodes, a fresh devpts, a pty as
  /dev/console), fresh /proc, read-only /sys, a tmpfs /sys/fs/cgroup with each hierarchy mounted
  inside the cgroup namespace, tmpfs /run, pivots into the new root and execs systemd with
  `container=pymachine-testhost`;
- the launcher copies the console pty into console.log and reaps PID 1.

On a pure cgroup v2 host the host's systemd needs a subtree delegated to it, with no process in a
cgroup whose controllers are enabled for its children (the kernel's no-internal-process rule). The
subtree is laid out like systemd-nspawn's: <base>/supervisor holds the launcher, <base>/payload is
the root of the cgroup namespace (systemd inside moves itself to payload/init.scope), controllers
are enabled in <base>, and only cgroup2 is mounted at /sys/fs/cgroup inside. Where systemd is PID 1
(the VM tier), <base> is a transient scope with Delegate=yes that the launcher is started in
(`systemd-run --scope`); elsewhere (a container) it is a child of the caller's cgroup, whose
processes first move to a leaf `init` (docker-in-docker's convention) so it may pass controllers down.

Commands run inside via `nsenter`, after moving themselves into the test host's root cgroup so
systemd inside may move them into scopes (a cgroup namespace forbids migrating a process whose
cgroup lies outside the migrator's namespace root).

Teardown kills PID 1 (the whole PID namespace dies with it), stops the scope (v2 under systemd),
removes the cgroups and the state directory. All mounting happens inside the private mount
namespace, so the real host's mount table never changes. A run killed before it could tear down
is cleaned at the next start.

Standard library only: runs under /usr/bin/python3 and the project's venv python alike.

Usage (as root):

    python3 tools/testhost.py run [--path-prepend DIR] [--share DIR] [--] CMD [ARG...]
    python3 tools/testhost.py shell
    python3 tools/testhost.py clean-stale

    with get_host(path_prepend=[".venv/bin"]) as host:        # LocalHost if systemd is PID 1
        host.run(["machinectl", "list"], check=True).stdout
        proc = host.popen(["pymachine", "run", "busybox", "sleep", "5"])  # proc.send_signal() hits pymachine

Inside, only the checkout and pytest's temp dir are shared with the real host (same path, writes
seen on both sides); the rest of the file system is the overlay, whose writes vanish at stop.
Nesting works: inside a test host, TestHost() boots another one (layers on a private tmpfs).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import json
import os
import platform
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Self

STATE_BASE = Path("/var/lib/pymachine-testhost")
CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_SYSTEMD = "/lib/systemd/systemd"
CONTAINER_ENV = "pymachine-testhost"
HOSTNAME = "pymachine-testhost"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables of the caller that commands inside inherit (everything else starts clean).
# PYMACHINE_USERNS_DEFAULT: the suite's run with the default forced (userns.py; conftest.py).
PASSED_ENV = ("TERM", "CI", "PYMACHINE_USERNS_DEFAULT")

# Units that only slow the boot down or act on the real host's kernel state (sysctl, modules,
# binfmt_misc, the network the test host sets up itself, the shared /tmp): masked in the overlay.
MASKED_UNITS = (
    "getty.target", "getty@.service", "serial-getty@.service", "console-getty.service",
    "container-getty@.service", "timers.target", "systemd-timesyncd.service",
    "systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service",
    "systemd-resolved.service", "networking.service", "ifupdown-pre.service",
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-udev-settle.service", "systemd-hwdb-update.service",
    "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount", "systemd-binfmt.service",
    "systemd-sysctl.service", "systemd-modules-load.service", "kmod-static-nodes.service",
    "systemd-tmpfiles-setup-dev.service", "sys-kernel-config.mount", "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount", "dev-hugepages.mount",
    "systemd-remount-fs.service", "systemd-firstboot.service", "systemd-repart.service",
    "systemd-pcrphase.service", "systemd-pcrphase-sysinit.service",
    "systemd-machine-id-commit.service", "systemd-pstore.service", "systemd-random-seed.service",
    "systemd-ask-password-console.path", "systemd-ask-password-wall.path",
    "systemd-journald-audit.socket", "systemd-tmpfiles-clean.timer", "systemd-tmpfiles-clean.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer", "e2scrub_all.timer",
    "fstrim.timer", "dpkg-db-backup.timer", "logrotate.timer",
)
# The fake uplink: the test host's "other address" (UPLINK_ADDRESS) and its default route.
UPLINK, UPLINK_PEER = "uplink0", "uplink1"
UPLINK_CIDR, UPLINK_PEER_CIDR = "10.231.0.2/24", "10.231.0.1/24"
UPLINK_ADDRESS = UPLINK_CIDR.split("/")[0]
# Its IPv6 address (unique local; nodad: usable at once), for ports published on IPv6.
UPLINK6_CIDR, UPLINK6_PEER_CIDR = "fd31:231::2/64", "fd31:231::1/64"
UPLINK6_ADDRESS = UPLINK6_CIDR.split("/")[0]
GENERATOR_DIRS = ("/lib/systemd/system-generators", "/usr/lib/systemd/system-generators")
# Started at boot rather than on first bus activation, so the first test does not pay for it.
BOOT_WANTS = ("systemd-machined.service",)

# /tmp is the host's /tmp through the overlay and may hold bind-mounted shared paths (pytest's
# tmp_path): systemd-tmpfiles must not empty it at boot nor touch other systemd's PrivateTmp
# directories. These files override the same-named vendor ones.
TMPFILES_OVERRIDES = {
    "tmp.conf": "d /tmp 1777 root root -\n",
    "x11.conf": "# pymachine-testhost: /tmp holds the real host's files; leave them alone.\n",
    "systemd-tmp.conf": (
        "x /tmp/systemd-private-%b-*\nX /tmp/systemd-private-%b-*/tmp\n"
        "x /var/tmp/systemd-private-%b-*\nX /var/tmp/systemd-private-%b-*/tmp\n"
    ),
}

DEVICE_NODES = ("null", "zero", "full", "random", "urandom", "tty", "fuse", "net/tun")


class TestHostError(RuntimeError):
    """The test host could not boot, or a command could not be run in it."""

    __test__ = False  # not a pytest test class


class HostCommandError(subprocess.CalledProcessError):
    """A command run with check=True failed; the message carries its output."""

    def __str__(self) -> str:
        text = super().__str__()
        for label, data in (("stdout", self.stdout), ("stderr", self.stderr)):
            if data:
                text += f"\n--- {label} ---\n{_tail(str(data), 40)}"
        return text


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# Raw syscalls (ctypes: Python 3.11 has no os.unshare, and this file must stay stdlib-only).

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(result: int, what: str, path: str | None = None) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def unshare(flags: int) -> None:
    _check(_lib().unshare(ctypes.c_int(flags)), "unshare")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    rc = _lib().mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(rc, f"mount {source or '-'} ({fstype or 'bind/remount'}, flags {flags:#x}, {data or ''})", target)


def umount2(target: str, flags: int) -> None:
    _check(_lib().umount2(target.encode(), ctypes.c_int(flags)), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"pivot_root: unknown syscall number on {platform.machine()}")
    rc = _lib().syscall(ctypes.c_long(number), new_root.encode(), put_old.encode())
    _check(rc, "pivot_root", new_root)


def set_parent_death_signal(sig: int) -> None:
    _check(_lib().prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(sig), 0, 0, 0), "prctl")


# ---------------------------------------------------------------------------------------------
# Processes and cgroups on the real host.


def process_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of pid, or None if it does not exist: guards against pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def process_alive(pid: int | None, start_time: int | None) -> bool:
    return pid is not None and pid > 0 and process_start_time(pid) == start_time


def child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy of the real host."""

    mountpoint: str  # e.g. /sys/fs/cgroup/memory
    name: str  # the directory name under /sys/fs/cgroup inside the test host ("" for pure cgroup2)
    version: int  # 1 or 2
    options: str  # v1 mount options naming the hierarchy ("memory", "name=systemd", "cpu,cpuacct")
    current: str  # the launcher's cgroup in it, relative to the mount root


def _unescape_mount_path(path: str) -> str:
    return path.encode().decode("unicode_escape") if "\\" in path else path


def cgroup_hierarchies() -> list[Hierarchy]:
    """The host's cgroup hierarchies with the calling process's cgroup in each."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        key = "" if number == "0" else ",".join(sorted(controllers.split(",")))
        own[key] = path
    found: list[Hierarchy] = []
    seen: set[str] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        root, mountpoint = _unescape_mount_path(fields[3]), _unescape_mount_path(fields[4])
        fstype, super_options = fields[sep + 1], fields[sep + 3].split(",")
        if fstype == "cgroup2":
            key, version, options = "", 2, ""
        elif fstype == "cgroup":
            names = [o for o in super_options if o in _v1_controllers() or o.startswith("name=")]
            key, version, options = ",".join(sorted(names)), 1, ",".join(names)
        else:
            continue
        if key in seen or key not in own:
            continue
        relative = own[key]
        if root != "/":
            if not (relative + "/").startswith(root.rstrip("/") + "/"):
                continue  # our cgroup is not visible through this mount
            relative = relative[len(root.rstrip("/")) :] or "/"
        seen.add(key)
        name = "" if mountpoint == "/sys/fs/cgroup" else os.path.basename(mountpoint)
        found.append(Hierarchy(mountpoint, name, version, options, relative))
    return found


_V1_CONTROLLERS: set[str] = set()


def _v1_controllers() -> set[str]:
    if not _V1_CONTROLLERS:
        with contextlib.suppress(OSError):
            for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
                _V1_CONTROLLERS.add(line.split()[0])
        _V1_CONTROLLERS.update({"cpu", "cpuacct", "net_cls", "net_prio"})
    return _V1_CONTROLLERS


def make_child_cgroup(h: Hierarchy, child: str) -> str:
    """Create <current>/<child> in hierarchy h and return its path on the host."""
    parent = os.path.join(h.mountpoint, h.current.lstrip("/"))
    path = os.path.join(parent, child)
    os.mkdir(path)
    if "cpuset" in h.options.split(","):
        # A v1 cpuset cgroup accepts no task until it has CPUs and memory nodes.
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if not Path(path, knob).read_text().strip():
                Path(path, knob).write_text(Path(parent, knob).read_text())
    if h.version == 2:
        # Best effort: controllers must be enabled in the parent for systemd to use them below.
        controllers = Path(parent, "cgroup.controllers").read_text().split()
        for c in controllers:
            with contextlib.suppress(OSError):
                Path(parent, "cgroup.subtree_control").write_text(f"+{c}")
    return path


# On a pure cgroup v2 host the test host gets a delegated subtree of its own, laid out like
# systemd-nspawn's: <base>/supervisor holds the launcher, <base>/payload is the root of the host's
# cgroup namespace (systemd inside moves itself to payload/init.scope). Controllers are enabled in
# <base> only: a v2 cgroup with controllers in cgroup.subtree_control may hold no process itself.
SUPERVISOR, PAYLOAD = "supervisor", "payload"
# Where the processes of a v2 cgroup no systemd manages move so that it can pass controllers down:
# the leaf docker-in-docker's entrypoint uses for the same purpose.
EVACUATION_LEAF = "init"


def is_pure_cgroup2(hierarchies: Sequence[Hierarchy]) -> bool:
    return len(hierarchies) == 1 and hierarchies[0].version == 2 and hierarchies[0].name == ""


def _cgroup_procs(path: str) -> list[int]:
    return [int(p) for p in Path(path, "cgroup.procs").read_text().split()]


def enable_controllers(path: str) -> list[str]:
    """Enable in path's cgroup.subtree_control every controller it has; return those that would not."""
    refused: list[str] = []
    enabled = set(Path(path, "cgroup.subtree_control").read_text().split())
    for controller in Path(path, "cgroup.controllers").read_text().split():
        if controller not in enabled:
            try:
                Path(path, "cgroup.subtree_control").write_text(f"+{controller}")
            except OSError:
                refused.append(controller)
    return refused


def _evacuate(path: str) -> None:
    """Move every process of the v2 cgroup path into its leaf EVACUATION_LEAF (forks race: repeat)."""
    leaf = os.path.join(path, EVACUATION_LEAF)
    os.makedirs(leaf, exist_ok=True)
    error = ""
    for _ in range(20):
        pids = _cgroup_procs(path)
        if not pids:
            return
        for pid in pids:
            try:
                Path(leaf, "cgroup.procs").write_text(str(pid))
            except ProcessLookupError:
                pass
            except OSError as e:
                error = f" ({e.strerror})"
    raise TestHostError(f"cannot move the processes of cgroup {path} to {leaf}{error}: pids {_cgroup_procs(path)}")


def v2_delegation_parent(h: Hierarchy) -> str:
    """The v2 cgroup to create the test host's subtree in, where no systemd manages the tree (a
    container): the caller's own cgroup, made able to pass its controllers down. That needs it empty
    of processes (the real root cgroup is exempt), so its processes (the caller, and in a container
    everything else in the container's root cgroup) move to <it>/init first, as docker-in-docker
    does; a caller already in such a leaf uses its parent. Not undone: other processes live there."""
    current = os.path.join(h.mountpoint, h.current.lstrip("/"))
    parent = os.path.dirname(current)
    if h.current != "/" and os.path.basename(current) == EVACUATION_LEAF and not _cgroup_procs(parent):
        current = parent
    wanted = set(Path(current, "cgroup.controllers").read_text().split())
    missing = wanted - set(Path(current, "cgroup.subtree_control").read_text().split())
    real_root = not os.path.exists(os.path.join(current, "cgroup.type"))  # a file every other cgroup has
    if missing and not real_root and _cgroup_procs(current):
        _evacuate(current)
    enable_controllers(current)
    return current


def filesystem_type(path: Path) -> str:
    """The type of the filesystem path lives on, from this process's mount table."""
    best, fstype = "", ""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mountpoint = _unescape_mount_path(fields[4])
        inside = str(path) == mountpoint or str(path).startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) >= len(best):
            best, fstype = mountpoint, fields[fields.index("-") + 1]
    return fstype


def cgroup_tree(path: str) -> list[str]:
    """All directories of a cgroup tree, deepest first."""
    dirs: list[str] = []
    for dirpath, _dirnames, _files in os.walk(path, topdown=False):
        dirs.append(dirpath)
    return dirs


def cgroup_pids(path: str) -> list[int]:
    pids: list[int] = []
    for d in cgroup_tree(path):
        with contextlib.suppress(OSError):
            pids.extend(int(p) for p in Path(d, "cgroup.procs").read_text().split())
    return pids


def remove_cgroup_tree(path: str, timeout: float = 10.0) -> None:
    """Kill what is left in the tree (it is all ours), wait until it is empty, remove it bottom-up."""
    deadline = time.monotonic() + timeout
    while os.path.isdir(path):
        for pid in cgroup_pids(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for d in cgroup_tree(path):
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(d)
        if not os.path.isdir(path):
            return
        if time.monotonic() > deadline:
            raise TestHostError(f"cgroup {path} is still busy: pids {cgroup_pids(path)}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# State kept on disk so that a killed run can be cleaned up by the next one.


@dataclass
class HostState:
    id: str
    owner_pid: int
    owner_start: int | None
    cgroups: list[str] = field(default_factory=list)
    launcher_pid: int | None = None
    launcher_start: int | None = None
    host_pid: int | None = None
    host_start: int | None = None
    scope: str | None = None  # the systemd scope holding the host's cgroup (pure v2 under systemd)

    @staticmethod
    def load(path: Path) -> HostState:
        return HostState(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        os.replace(tmp, path)


def clean_stale(base: Path = STATE_BASE) -> list[str]:
    """Remove leftovers of test hosts whose owner process is gone. Returns the ids cleaned."""
    cleaned: list[str] = []
    if not base.is_dir():
        return cleaned
    for state_dir in base.iterdir():
        state_file = state_dir / "state.json"
        try:
            state = HostState.load(state_file)
        except (OSError, ValueError, TypeError):
            # Mid-creation by another process, or garbage: only remove it once it is old.
            with contextlib.suppress(OSError):
                if time.time() - state_dir.stat().st_mtime > 300:
                    _remove_state_dir(state_dir)
                    cleaned.append(state_dir.name)
            continue
        if process_alive(state.owner_pid, state.owner_start):
            continue  # somebody else's live test host
        with contextlib.suppress(TestHostError, OSError):
            _teardown_state(state, state_dir)
            cleaned.append(state.id)
    return cleaned


def _teardown_state(state: HostState, state_dir: Path) -> None:
    for pid, start in ((state.host_pid, state.host_start), (state.launcher_pid, state.launcher_start)):
        if pid is not None and process_alive(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if state.scope:
        stop_scope(state.scope)
    errors: list[str] = []
    for cg in state.cgroups:
        try:
            remove_cgroup_tree(cg)
        except TestHostError as e:
            errors.append(str(e))
    if errors:
        raise TestHostError("; ".join(errors))
    _remove_state_dir(state_dir)


def stop_scope(scope: str) -> None:
    """Have systemd stop the host's scope (it kills what is left and removes its cgroup tree)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["systemctl", "stop", "--quiet", scope], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )


def _remove_state_dir(state_dir: Path) -> None:
    root = state_dir / "root"
    if root.is_dir() and os.path.ismount(root):
        raise TestHostError(f"{root} is mounted on the real host; refusing to remove it")
    # Gone already: another run's clean-stale took it once its PID 1 was dead.
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(state_dir)


# ---------------------------------------------------------------------------------------------
# Interrupt handling: every live TestHost is stopped at exit and on SIGTERM/SIGHUP.

_LIVE: set[TestHost] = set()
_LIVE_LOCK = threading.Lock()
_HANDLERS_INSTALLED = False


def _stop_all() -> None:
    with _LIVE_LOCK:
        hosts = list(_LIVE)
    for h in hosts:
        with contextlib.suppress(Exception):
            h.stop()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    # SIGINT raises KeyboardInterrupt, which unwinds through stop() (context managers, fixtures)
    # and atexit; SIGTERM and SIGHUP would kill the process without either, so catch those.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _on_signal)


# ---------------------------------------------------------------------------------------------
# Running commands.

ENTER_SCRIPT = r"""
[ "$1" = foreground ] && trap '' INT QUIT  # nsenter must outlive a Ctrl-C meant for the command
shift
n=$1; shift
while [ "$n" -gt 0 ]; do
    echo $$ 2>/dev/null >"$1/cgroup.procs" || echo $$ >"$1/init.scope/cgroup.procs" || exit 125
    shift; n=$((n - 1))
done
exec "$@"
"""


def _command_env(path_prepend: Sequence[str], env: Mapping[str, str] | None) -> dict[str, str]:
    result = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    result.update(
        PATH=":".join([*path_prepend, BASE_PATH]),
        HOME="/root",
        LANG="C.UTF-8",
        SYSTEMD_PAGER="cat",
        SYSTEMD_COLORS="0",
    )
    if env:
        result.update(env)
    return result


class HostProcess(subprocess.Popen[str]):
    """A process started in a host. Signals go to the command itself, not to nsenter around it."""

    def __init__(self, argv: Sequence[str], *, wrapped: bool, **kwargs: Any) -> None:
        super().__init__(list(argv), **kwargs)
        self._wrapped = wrapped

    @property
    def inner_pid(self) -> int | None:
        """Host PID of the command (the child of nsenter), or None if it is gone or not started yet."""
        if not self._wrapped:
            return self.pid if self.returncode is None else None
        deadline = time.monotonic() + 5
        while self.returncode is None and self.poll() is None:
            kids = child_pids(self.pid)
            if kids:
                return kids[0]
            if time.monotonic() > deadline:
                return None
            time.sleep(0.002)
        return None

    @property
    def host_ns_pid(self) -> int | None:
        """PID of the command as seen inside the host's PID namespace."""
        pid = self.inner_pid
        if pid is None:
            return None
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
        except OSError:
            return None
        return None

    def send_signal(self, sig: int) -> None:
        if self._wrapped and self.returncode is None:
            pid = self.inner_pid
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                return
        super().send_signal(sig)


def _run_process(proc: HostProcess, input: str | None, timeout: float) -> tuple[str, str]:
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except BaseException:
        proc.kill()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return out or "", err or ""


class _HostBase:
    """What LocalHost and TestHost share: building the environment, run() over popen()."""

    path_prepend: list[str]
    pid: int

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        foreground: bool = False,
    ) -> HostProcess:
        raise NotImplementedError

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        timeout: float = 120,
        check: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the host and capture its output (text)."""
        proc = self.popen(
            argv, env=env, cwd=cwd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL
        )
        out, err = _run_process(proc, input, timeout)
        result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check and result.returncode != 0:
            raise HostCommandError(result.returncode, list(argv), out, err)
        return result

    def leftovers(self) -> list[str]:
        """What pymachine left in the host: machine scopes, pymachine@ services, registered machines."""
        found: list[str] = []
        units = self.run(
            ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--full",
             "machine-*.scope", "pymachine@*.service"],
            timeout=30,
        )
        for line in units.stdout.splitlines():
            if line.strip():
                found.append("unit " + " ".join(line.split()[:4]))
        machines = self.run(["machinectl", "list", "--no-legend", "--full"], timeout=30)
        for line in machines.stdout.splitlines():
            if line.strip() and "No machines" not in line:
                found.append("machine " + " ".join(line.split()[:2]))
        return found

    def assert_no_leftovers(self, timeout: float = 5.0) -> None:
        """Wait up to timeout for leftovers to go away; raise AssertionError naming them if they do not."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.leftovers()
            if not found:
                return
            if time.monotonic() > deadline:
                raise AssertionError("left behind in the test host: " + "; ".join(found))
            time.sleep(0.1)


def systemd_is_pid1() -> bool:
    try:
        return os.path.isdir("/run/systemd/system") and Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


class LocalHost(_HostBase):
    """The machine itself, when systemd already is PID 1: commands just run locally."""

    def __init__(self, *, path_prepend: Sequence[str] = (), **_ignored: Any) -> None:
        self.path_prepend = list(path_prepend)
        self.pid = 1

    def start(self, timeout: float = 60) -> None:
        if not systemd_is_pid1():
            raise TestHostError("LocalHost needs systemd as PID 1 (use PYMACHINE_TEST_HOST=namespace)")

    def stop(self) -> None:
        pass

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        foreground: bool = False,
    ) -> HostProcess:
        full_env = _command_env(self.path_prepend, env)
        return HostProcess(
            argv, wrapped=False, env=full_env, cwd=cwd or "/", stdin=stdin, stdout=stdout,
            stderr=stderr, text=True, executable=shutil.which(argv[0], path=full_env["PATH"]) or argv[0],
        )


class TestHost(_HostBase):
    """A systemd booted as PID 1 in private namespaces over an overlay of the host's root."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        path_prepend: Sequence[str] = (),
        shared_paths: Sequence[str] | None = None,
        systemd: str | None = None,
        state_base: Path = STATE_BASE,
        python: str | None = None,
        v2_delegation: str = "auto",
    ) -> None:
        """path_prepend: directories put in front of PATH for commands inside.
        shared_paths: host directories bind-mounted at the same path inside, so that writes on
        either side are seen on the other (default: default_shared_paths()). Everything else is
        the overlay: the host's files are visible inside, writes inside stay inside (the real
        /tmp is deliberately not shared). systemd: the binary to boot (default
        $PYMACHINE_TESTHOST_SYSTEMD or /lib/systemd/systemd; tests inject a bogus one).
        python: the interpreter for the launcher (default: this one).
        v2_delegation: on a pure cgroup v2 host, where the host's cgroup subtree comes from:
        "systemd" (a delegated scope), "own" (a child of the caller's cgroup, as in a container
        without systemd), "auto" (systemd when it is PID 1, else own). Ignored on hybrid hosts.

        The host dies with the thread that started it (a parent death signal guards against
        leaks when the owner is killed): start it from a thread that outlives its use."""
        self.path_prepend = list(path_prepend)
        if shared_paths is None:
            shared_paths = default_shared_paths()
        self.shared_paths = [os.path.realpath(p) for p in shared_paths]
        self.systemd = systemd or os.environ.get("PYMACHINE_TESTHOST_SYSTEMD") or DEFAULT_SYSTEMD
        self.state_base = state_base
        self.python = python or sys.executable
        if v2_delegation not in ("auto", "systemd", "own"):
            raise TestHostError(f"v2_delegation={v2_delegation!r}: expected auto, systemd or own")
        self.v2_delegation = v2_delegation
        self.id = secrets.token_hex(6)
        self.state_dir = state_base / self.id
        self.pid = 0
        self.boot_seconds: float | None = None
        self.degraded_units: list[str] = []
        self._state: HostState | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        self._cgroup_dirs: list[str] = []
        self._root_cgroups: list[str] = []  # the host's root cgroup in every hierarchy
        # Where commands enter before nsenter (see ENTER_SCRIPT): the root cgroups, or on pure v2
        # payload/init.scope, which systemd makes early at start-up: a process in its root cgroup
        # would keep it from enabling controllers there (no internal processes), for good.
        self._enter_cgroups: list[str] = []
        self.scope: str | None = None  # systemd's delegated scope for the host (pure v2 under systemd)
        self._stopped = False

    def __repr__(self) -> str:
        return f"<TestHost {self.id} pid={self.pid}>"

    # -- boot --------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Boot and wait until systemd reports running (or degraded)."""
        if self._state is not None:
            raise TestHostError("this TestHost was already started")
        if os.geteuid() != 0:
            raise TestHostError("the systemd test host needs root")
        began = time.monotonic()
        _install_handlers()
        clean_stale(self.state_base)
        with _LIVE_LOCK:
            _LIVE.add(self)
        try:
            self._prepare()
            self._launch()
            self._wait_running(began + timeout)
        except BaseException as e:
            console = self.console_tail()
            self.stop()
            if isinstance(e, TestHostError):
                raise TestHostError(f"{e}\n--- console of the test host ---\n{console}") from None
            raise
        self.boot_seconds = time.monotonic() - began

    def _prepare(self) -> None:
        self.state_base.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(mode=0o700)
        self._state = HostState(self.id, os.getpid(), process_start_time(os.getpid()))
        self._state.save(self.state_dir / "state.json")
        for sub in ("upper", "work", "root"):
            (self.state_dir / sub).mkdir()
        self._populate_upper(self.state_dir / "upper")
        hierarchies = cgroup_hierarchies()
        if not hierarchies:
            raise TestHostError("no cgroup hierarchy is mounted on this host")
        if is_pure_cgroup2(hierarchies):
            cgroups = self._prepare_v2_cgroups(hierarchies[0])
        else:
            cgroups = self._prepare_child_cgroups(hierarchies)
        config = {
            "systemd": self.systemd,
            **cgroups,
            "hierarchies": [h.__dict__ for h in hierarchies],
            "shared_paths": self.shared_paths,
            "owner": os.getpid(),
            "layers_on_tmpfs": filesystem_type(self.state_dir) == "overlay",
        }
        (self.state_dir / "config.json").write_text(json.dumps(config, indent=1))

    def _record_cgroup(self, path: str) -> None:
        """Note a cgroup for teardown (on disk too, for clean_stale) before anything creates it."""
        assert self._state is not None
        self._cgroup_dirs.append(path)
        self._state.cgroups.append(path)
        self._state.save(self.state_dir / "state.json")

    def _prepare_child_cgroups(self, hierarchies: Sequence[Hierarchy]) -> dict[str, Any]:
        """Hybrid or v1: a child of the caller's cgroup in every hierarchy becomes the host's root.
        The launcher enters them to fork PID 1 and goes back to its parents' (no controller is
        enabled on the hybrid host's cgroup2 hierarchy, so processes may stay in inner nodes)."""
        for h in hierarchies:
            self._record_cgroup(make_child_cgroup(h, f"pymachine-testhost-{self.id}"))
        self._root_cgroups = list(self._cgroup_dirs)
        self._enter_cgroups = self._root_cgroups
        return {"delegated": "", "in_scope": False, "enter": self._cgroup_dirs,
                "leave": [os.path.dirname(cg) for cg in self._cgroup_dirs]}

    def _prepare_v2_cgroups(self, h: Hierarchy) -> dict[str, Any]:
        """Pure cgroup v2: a delegated subtree (base) where the launcher makes supervisor/ and payload/.
        Under systemd, base is a transient scope with Delegate=yes that the launcher starts in
        (systemd-run --scope), so systemd never finds foreign cgroups in its tree; elsewhere (a
        container) base is a child of the caller's cgroup, which passes its controllers down."""
        name = f"pymachine-testhost-{self.id}"
        if self.v2_delegation == "systemd" or (self.v2_delegation == "auto" and systemd_is_pid1()):
            assert self._state is not None
            self.scope = self._state.scope = f"{name}.scope"
            base = os.path.join(h.mountpoint, "system.slice", self.scope)
            self._record_cgroup(base)
        else:
            base = os.path.join(v2_delegation_parent(h), name)
            self._record_cgroup(base)
            os.mkdir(base)
        self._root_cgroups = [os.path.join(base, PAYLOAD)]
        self._enter_cgroups = [os.path.join(base, PAYLOAD, "init.scope")]
        return {"delegated": base, "in_scope": self.scope is not None, "enter": self._root_cgroups,
                "leave": [os.path.join(base, SUPERVISOR)]}

    def _populate_upper(self, upper: Path) -> None:
        """Configure the overlay before it is mounted (the upper dir is never touched while mounted)."""
        units = upper / "etc/systemd/system"
        units.mkdir(parents=True)
        for unit in MASKED_UNITS:
            (units / unit).symlink_to("/dev/null")
        wants = units / "basic.target.wants"
        wants.mkdir()
        for unit in BOOT_WANTS:
            (wants / unit).symlink_to(f"/lib/systemd/system/{unit}")
        generators = upper / "etc/systemd/system-generators"
        generators.mkdir()
        for directory in GENERATOR_DIRS:
            with contextlib.suppress(OSError):
                for name in os.listdir(directory):
                    with contextlib.suppress(FileExistsError):
                        (generators / name).symlink_to("/dev/null")
        tmpfiles = upper / "etc/tmpfiles.d"
        tmpfiles.mkdir()
        for name, text in TMPFILES_OVERRIDES.items():
            (tmpfiles / name).write_text(text)
        (upper / "etc/machine-id").write_text(secrets.token_hex(16) + "\n")
        (upper / "etc/hostname").write_text(HOSTNAME + "\n")

    def _launch(self) -> None:
        assert self._state is not None
        console = open(self.state_dir / "console.log", "wb")  # noqa: SIM115 (handed to the launcher)
        launcher = [self.python, "-I", "-S", os.path.abspath(__file__), "_boot", str(self.state_dir)]
        if self.scope:
            # Runs the launcher itself (same PID, same parent) in a scope systemd delegates to it.
            launcher = ["systemd-run", "--quiet", "--scope", "--collect", f"--unit={self.scope}",
                        "--slice=system.slice", "--property=Delegate=yes",
                        f"--description=pymachine test host {self.id}", "--", *launcher]
        with console:
            self._launcher = subprocess.Popen(
                launcher,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=console,
                start_new_session=True,  # Ctrl-C in the caller's terminal is the caller's to handle
            )
        assert self._launcher.stdout is not None
        ready, _, _ = select.select([self._launcher.stdout], [], [], 30)
        line = self._launcher.stdout.readline().decode().strip() if ready else ""
        if not line.isdigit():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._launcher.wait(5)
            status = self._launcher.returncode
            raise TestHostError(f"the launcher did not start PID 1 (status {status})")
        self.pid = int(line)
        self._state.launcher_pid = self._launcher.pid
        self._state.launcher_start = process_start_time(self._launcher.pid)
        self._state.host_pid = self.pid
        self._state.host_start = process_start_time(self.pid)
        self._state.save(self.state_dir / "state.json")

    def _wait_running(self, deadline: float) -> None:
        while not all(os.path.isdir(cg) for cg in self._enter_cgroups):
            if not self.alive():
                raise TestHostError(f"systemd (PID {self.pid}) died during boot")
            if time.monotonic() > deadline:
                raise TestHostError("timed out waiting for the test host to boot")
            time.sleep(0.02)
        while True:
            if not self.alive():
                raise TestHostError(f"systemd (PID {self.pid}) died during boot")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TestHostError("timed out waiting for the test host to boot")
            try:
                r = self.run(["systemctl", "is-system-running", "--wait"], timeout=remaining)
            except subprocess.TimeoutExpired:
                continue
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                break
            if state in ("stopping", "maintenance"):
                raise TestHostError(f"test host boot ended in state {state!r}")
            # "offline" (PID 1 is not systemd yet) or no bus yet: try again.
            time.sleep(0.02)
        if state == "degraded":
            failed = self.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"])
            self.degraded_units = [line.split()[0] for line in failed.stdout.splitlines() if line.strip()]
            print(f"testhost: degraded, failed units: {' '.join(self.degraded_units)}", file=sys.stderr)

    def alive(self) -> bool:
        return self._launcher is not None and self._launcher.poll() is None and self.pid > 0

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = (self.state_dir / "console.log").read_bytes().decode(errors="replace")
        except OSError:
            return "(no console output)"
        return _tail(text.replace("\r", ""), lines) or "(no console output)"

    # -- commands ----------------------------------------------------------------------------

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        foreground: bool = False,
    ) -> HostProcess:
        """Start argv inside the host: in its root cgroup and namespaces, at its root, in cwd (default /).

        foreground: the command owns the caller's terminal, so Ctrl-C and Ctrl-\\ are for it alone
        (the nsenter around it ignores them and reports the command's status)."""
        if not self.alive():
            raise TestHostError(f"the test host {self.id} is not running")
        assignments = [f"{k}={v}" for k, v in _command_env(self.path_prepend, env).items()]
        wrapper = [
            "/bin/sh", "-c", ENTER_SCRIPT, "sh", "foreground" if foreground else "background",
            str(len(self._enter_cgroups)), *self._enter_cgroups,
            "nsenter", f"--target={self.pid}", "--all", "--root", "--wd",
            "/usr/bin/env", "--ignore-environment", f"--chdir={cwd or '/'}", *assignments,
        ]
        if foreground:
            # A shell (ignoring Ctrl-C like nsenter) turns the command's death by a signal into
            # status 128+N: nsenter cannot re-raise a signal it ignores and would report 1.
            wrapper += ["/bin/sh", "-c", '"$@"; exit $?', "sh", "/usr/bin/env", "--default-signal=INT,QUIT"]
        wrapper += argv
        return HostProcess(wrapper, wrapped=True, stdin=stdin, stdout=stdout, stderr=stderr, text=True)

    # -- teardown ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Kill the host and remove everything it made. Idempotent; safe after a failed start."""
        if self._stopped or self._state is None:
            return
        self._stopped = True
        try:
            self._settle()
            self._kill()
            if self.scope:
                stop_scope(self.scope)
            errors: list[str] = []
            for cg in self._cgroup_dirs:
                try:
                    remove_cgroup_tree(cg)
                except TestHostError as e:
                    errors.append(str(e))
            if errors:
                raise TestHostError("; ".join(errors))
            _remove_state_dir(self.state_dir)
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def _settle(self) -> None:
        """Let pymachine's deferred network teardown finish (a child of a `run` that holds the
        networks' lock, netsetup.release): killed in a netlink request it dies only once the
        kernel's RCU waits are over, and meanwhile keeps the host's cgroup busy."""
        if self.alive():
            lock = "/run/pymachine/networks/lock"
            with contextlib.suppress(TestHostError, subprocess.SubprocessError, OSError):
                self.run(["sh", "-c", f"[ ! -e {lock} ] || timeout 20 flock {lock} true"], timeout=30)

    def _kill(self) -> None:
        assert self._state is not None
        if self.pid > 0 and process_alive(self.pid, self._state.host_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._launcher is not None:
            try:
                # With PID 1 unknown (interrupted early), the launcher's death takes it along.
                self._launcher.wait(10 if self.pid > 0 else 0)
            except subprocess.TimeoutExpired:
                self._launcher.kill()  # PID 1 dies with it (parent death signal)
                self._launcher.wait()
            if self._launcher.stdout is not None:
                self._launcher.stdout.close()


def default_shared_paths() -> list[str]:
    """The checkout and pytest's temp root (where tmp_path lives), if it exists."""
    import getpass

    pytest_root = Path(tempfile.gettempdir(), f"pytest-of-{getpass.getuser()}")
    return [str(CHECKOUT), *([str(pytest_root)] if pytest_root.is_dir() else [])]


def get_host(**kw: Any) -> TestHost | LocalHost:
    """LocalHost when systemd already is PID 1, else a TestHost.

    PYMACHINE_TEST_HOST=local|namespace forces one."""
    forced = os.environ.get("PYMACHINE_TEST_HOST", "")
    if forced == "local" or (not forced and systemd_is_pid1()):
        return LocalHost(**kw)
    if forced not in ("", "namespace"):
        raise TestHostError(f"PYMACHINE_TEST_HOST={forced!r}: expected 'local' or 'namespace'")
    return TestHost(**kw)


# ---------------------------------------------------------------------------------------------
# The launcher (`_boot` verb): runs as its own process, never imported into the caller.


def _boot_main(state_dir: Path) -> int:
    config = json.loads((state_dir / "config.json").read_text())
    # If the owner dies without tearing down, take PID 1 (and with it the whole host) along.
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != config["owner"]:
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if config["delegated"]:
        _take_delegated_cgroup(config["delegated"], config["in_scope"])
    for cg in config["enter"]:
        Path(cg, "cgroup.procs").write_text("0")
    master, slave = os.openpty()
    console_path = os.ttyname(slave)
    unshare(CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(master)
            _pid1(state_dir, config, slave, console_path)
        except BaseException as e:
            os.write(2, f"testhost PID 1: {e}\n".encode())
        os._exit(127)
    # PID 1 took the fresh cgroups along; leave them to it. A process systemd cannot see in its
    # root cgroup would keep it from enabling controllers there on a cgroup2-only host.
    for cg in config["leave"]:
        Path(cg, "cgroup.procs").write_text("0")
    # Keep our copy of the slave open: systemd opens and closes /dev/console as it pleases, and
    # with no slave open a read on the master fails at once (EIO), which would make the pump spin.
    print(pid, flush=True)
    return _pump_console(master, pid)


def _take_delegated_cgroup(base: str, in_scope: bool) -> None:
    """Pure v2: lay out the delegated subtree base, the launcher in base/supervisor, controllers
    enabled in base for the payload. In a systemd scope the launcher must already sit in base."""
    if in_scope:
        own = Path("/proc/self/cgroup").read_text().splitlines()[0].split(":", 2)[2]
        if not base.endswith(own) or own == "/":
            raise TestHostError(f"systemd-run put the launcher in cgroup {own}, not in {base}")
    for leaf in (SUPERVISOR, PAYLOAD):
        os.mkdir(os.path.join(base, leaf))
    Path(base, SUPERVISOR, "cgroup.procs").write_text("0")
    enable_controllers(base)


def _pump_console(master: int, pid: int) -> int:
    """Copy PID 1's console to our stderr (console.log) until PID 1 is gone."""
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            if data:
                os.write(2, data)
            else:
                time.sleep(0.1)  # hung up: never spin
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) & 0xFF


def _pid1(state_dir: Path, config: dict[str, Any], console_fd: int, console_path: str) -> None:
    set_parent_death_signal(signal.SIGKILL)
    os.setsid()
    unshare(CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET)
    setup_fake_network()
    # Everything below happens in the private mount namespace: make it private recursively first,
    # so no mount made here propagates to the real host (on a systemd host "/" is shared).
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    import socket

    socket.sethostname(HOSTNAME)
    root = str(state_dir / "root")
    upper, work = state_dir / "upper", state_dir / "work"
    if config.get("layers_on_tmpfs"):
        # Nested in another test host: an overlay cannot be the upper layer of an overlay, so the
        # layers go to a tmpfs (mounted only in this namespace), seeded from the prepared upper dir.
        layers = state_dir / "layers"
        layers.mkdir()
        mount("tmpfs", str(layers), "tmpfs", 0, "mode=700")
        shutil.copytree(upper, layers / "upper", symlinks=True)
        upper, work = layers / "upper", layers / "work"
        work.mkdir()
    mount("pymachine-testhost", root, "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    _bind_shared_paths(root, config["shared_paths"])
    _bind_pymachine_state(root, upper.parent)
    _bind_var_tmp(root, upper.parent)
    _setup_dev(root, console_path)
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # Read-only: sysfs is global, and a read-only /sys tells systemd not to start udev.
    mount("sysfs", f"{root}/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _setup_cgroups(root, [Hierarchy(**h) for h in config["hierarchies"]])
    mount("tmpfs", f"{root}/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    os.chdir(root)
    pivot_root(".", ".")  # the old root ends up stacked on top of the new one ...
    umount2(".", MNT_DETACH)  # ... and is detached here
    os.chdir("/")
    for fd in (0, 1, 2):
        os.dup2(console_fd, fd)
    os.closerange(3, 1024)
    env = {"container": CONTAINER_ENV, "PATH": BASE_PATH, "LANG": "C.UTF-8", "TERM": "vt220"}
    systemd = config["systemd"]
    try:
        os.execve(systemd, [systemd, "--system", "--unit=basic.target"], env)
    except OSError as e:
        os.write(2, f"testhost PID 1: cannot execute {systemd}: {e.strerror}\n".encode())
        os._exit(127)


def setup_fake_network() -> None:
    """Bring up lo and the fake uplink in the current network namespace, which must be a private
    one (the test host's, or a throwaway VM's): never the machine's own."""
    steps = [
        ["link", "set", "lo", "up"],
        ["link", "add", UPLINK, "type", "veth", "peer", "name", UPLINK_PEER],
        ["addr", "add", UPLINK_CIDR, "dev", UPLINK],
        ["addr", "add", UPLINK_PEER_CIDR, "dev", UPLINK_PEER],
        ["addr", "add", UPLINK6_CIDR, "dev", UPLINK, "nodad"],
        ["addr", "add", UPLINK6_PEER_CIDR, "dev", UPLINK_PEER, "nodad"],
        ["link", "set", UPLINK, "up"],
        ["link", "set", UPLINK_PEER, "up"],
        ["route", "add", "default", "via", UPLINK_PEER_CIDR.split("/")[0], "dev", UPLINK],
    ]
    for step in steps:
        r = subprocess.run(["ip", *step], capture_output=True, text=True)
        if r.returncode != 0:
            raise TestHostError(f"ip {' '.join(step)}: {r.stderr.strip()}")


def _bind_pymachine_state(root: str, base: Path) -> None:
    """pymachine's state dir on a real file system: container upper dirs are overlay upper
    layers, and an overlayfs (this host's root) cannot be one. Private to this host."""
    state = base / "pymachine-state"
    state.mkdir(mode=0o700, exist_ok=True)
    target = f"{root}/var/lib/pymachine"
    os.makedirs(target, exist_ok=True)
    mount(str(state), target, None, MS_BIND)


def _bind_var_tmp(root: str, base: Path) -> None:
    """/var/tmp on a real file system, as on a real host: a directory there bound into a
    container with a user namespace is mounted idmapped, which overlayfs (this host's root)
    cannot be. Private to this host."""
    var_tmp = base / "var-tmp"
    var_tmp.mkdir(mode=0o700, exist_ok=True)
    os.chmod(var_tmp, 0o1777)
    target = f"{root}/var/tmp"
    os.makedirs(target, exist_ok=True)
    mount(str(var_tmp), target, None, MS_BIND)


def _bind_shared_paths(root: str, paths: list[str]) -> None:
    done: list[str] = []
    for path in sorted(paths, key=len):
        if any(path == d or path.startswith(d.rstrip("/") + "/") for d in done) or not os.path.isdir(path):
            continue
        target = root + path
        os.makedirs(target, exist_ok=True)  # lands in the overlay upper dir: fine, we are mounted
        mount(path, target, None, MS_BIND | MS_REC)
        done.append(path)


def _setup_dev(root: str, console_path: str) -> None:
    """A small /dev like nspawn's: a tmpfs with device nodes, a private devpts, the pty as console."""
    dev = f"{root}/dev"
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=4m")
    for name in DEVICE_NODES:
        try:
            st = os.stat(f"/dev/{name}")
        except FileNotFoundError:
            continue
        os.makedirs(os.path.dirname(f"{dev}/{name}"), exist_ok=True)
        os.mknod(f"{dev}/{name}", st.st_mode, st.st_rdev)
        os.chmod(f"{dev}/{name}", st.st_mode & 0o7777)
    os.mkdir(f"{dev}/pts", 0o755)
    mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620,gid=5")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    os.mkdir(f"{dev}/shm", 0o1777)
    mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    Path(f"{dev}/console").touch(0o600)
    mount(console_path, f"{dev}/console", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")


def _setup_cgroups(root: str, hierarchies: list[Hierarchy]) -> None:
    """Mount every hierarchy afresh inside the cgroup namespace: its root is the host's own cgroup."""
    base = f"{root}/sys/fs/cgroup"
    if len(hierarchies) == 1 and hierarchies[0].version == 2 and hierarchies[0].name == "":
        mount("cgroup2", base, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        return
    mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755")
    for h in hierarchies:
        name = h.name or "unified"
        os.mkdir(f"{base}/{name}")
        if h.version == 2:
            mount("cgroup2", f"{base}/{name}", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        else:
            mount("cgroup", f"{base}/{name}", "cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC, h.options)
    for h in hierarchies:
        # Co-mounted controllers get the usual symlinks (cpu -> cpu,cpuacct).
        parts = h.options.split(",")
        if h.version == 1 and len(parts) > 1:
            for part in parts:
                if not part.startswith("name=") and not os.path.exists(f"{base}/{part}"):
                    os.symlink(h.name, f"{base}/{part}")
    mount(None, base, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755")


# ---------------------------------------------------------------------------------------------
# CLI.


def _usage() -> str:
    return (
        "usage: testhost.py run [--path-prepend DIR]... [--share DIR]... [--] CMD [ARG...]\n"
        "       testhost.py shell [--path-prepend DIR]... [--share DIR]...\n"
        "       testhost.py clean-stale\n"
        "       testhost.py fake-network   (in a throwaway VM only: lo and the fake uplink)\n"
        "Boots a systemd test host, runs CMD (or an interactive shell) inside, tears it down and\n"
        "exits with CMD's status. Default --path-prepend: <checkout>/.venv/bin if it exists."
    )


def _cli_run(host: TestHost | LocalHost, argv: list[str]) -> int:
    host.start()
    if isinstance(host, TestHost):
        print(f"testhost: booted in {host.boot_seconds:.2f}s (PID {host.pid})", file=sys.stderr)
    else:
        print("testhost: systemd is PID 1 here: running locally", file=sys.stderr)
    # The command shares our terminal: Ctrl-C reaches it directly; we only wait and tear down.
    # A handler rather than SIG_IGN, which the command would inherit.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        proc = host.popen(argv, stdin=None, stdout=None, stderr=None, cwd=os.getcwd(), foreground=True)
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
        host.stop()
    return 128 - code if code < 0 else code


def _cli_fake_network() -> int:
    """The VM tier's guest (its own kernel, so its own network) gets the test host's network.
    Refused on anything but a virtual machine: the machine's own network is never touched."""
    virt = subprocess.run(["systemd-detect-virt", "--vm"], capture_output=True, text=True)
    if virt.returncode != 0:
        print("testhost: fake-network runs only inside a throwaway VM", file=sys.stderr)
        return 125
    try:
        setup_fake_network()
    except TestHostError as e:
        print(f"testhost: {e}", file=sys.stderr)
        return 125
    return 0


@dataclass
class _CliArgs:
    verb: str = ""
    command: list[str] = field(default_factory=list)
    path_prepend: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)


def _parse_cli(argv: list[str]) -> _CliArgs:
    """Options may come before or after the verb; the command starts at `--` or the first non-option."""
    parsed = _CliArgs()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--" and parsed.verb:
            parsed.command = args
            break
        if arg in ("--path-prepend", "--share"):
            if not args:
                raise ValueError(f"{arg} needs a directory")
            target = parsed.path_prepend if arg == "--path-prepend" else parsed.shared
            target.append(os.path.abspath(args.pop(0)))
        elif arg.startswith("-"):
            raise ValueError(f"unknown option {arg}")
        elif not parsed.verb:
            parsed.verb = arg
        else:
            parsed.command = [arg, *args]
            break
    return parsed


def main(argv: list[str]) -> int:
    if argv[:1] == ["_boot"]:
        return _boot_main(Path(argv[1]))
    if any(a in ("-h", "--help") for a in argv[: argv.index("--") if "--" in argv else len(argv)]):
        print(_usage())
        return 0
    try:
        args = _parse_cli(argv)
    except ValueError as e:
        print(f"testhost: {e}\n{_usage()}", file=sys.stderr)
        return 2
    if args.verb == "clean-stale":
        print("\n".join(clean_stale()))
        return 0
    if args.verb == "fake-network":
        return _cli_fake_network()
    if args.verb == "shell":
        args.command = args.command or ["/bin/bash", "--login"]
    elif args.verb != "run" or not args.command:
        print(f"testhost: expected `run CMD...` or `shell`\n{_usage()}", file=sys.stderr)
        return 2
    path_prepend = args.path_prepend
    if not path_prepend and (CHECKOUT / ".venv/bin").is_dir():
        path_prepend = [str(CHECKOUT / ".venv/bin")]
    kw: dict[str, Any] = {"path_prepend": path_prepend}
    if args.shared:
        kw["shared_paths"] = [*default_shared_paths(), *args.shared]
    try:
        return _cli_run(get_host(**kw), args.command)
    except TestHostError as e:
        print(f"testhost: {e}", file=sys.stderr)
        return 125
    except KeyboardInterrupt:
        return 130  # interrupted while booting; start() has torn down already


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
