"""What an interrupted command leaves behind, how to recognize it and how to clean it
(`pymachine gc`, cmd_gc.py, is the verb).

pymachine keeps no daemon, so a `kill -9` in the middle of a command can leave:
- a container directory without container.json (create or run killed before the record);
- a record that says "running" while its unit is gone (run killed, or the host rebooted), or
  the "created" record of a foreground run killed before its payload ran: it is marked
  exited, and removed if it was made with --rm;
- a unit drop-in (pymachine@NAME.service.d) or runtime properties of a container that no
  longer exists;
- failed pymachine@ units and machine-*.scope units of pymachine containers that no
  longer run (reset, so the next start of that name is not refused);
- a missing pymachine@.service template, or one pymachine installed that runs another
  pymachine (see units/README.md);
- a claim on a user ID range (userns.py) held for a container or volume that is gone, or by
  a volume whose first mount was cut before it recorded the range as its owner;
- temporary files of atomic writes (NAME.PID.tmp next to a definition, drop-in, template,
  PID file or cache; container.json.tmp) whose writer is gone.
Mounts need no cleaning: every container mount lives in the container's own mount
namespace and vanishes with its last process. Each command that meets such debris also
tells the user to run `pymachine gc`.

A directory without a record may also be one that a live command is creating right now
(`create`, or the first start of a hand-written definition, claims the directory a few
milliseconds before it writes the record). Such a directory is left alone while it is
younger than --grace, unless no other pymachine process runs at all: then no command can
be creating it, and it is debris at once (the usual case right after a kill -9).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from machinectl_py.bus import Bus

# A directory younger than this may belong to a command that is creating it right now.
GRACE_SECONDS = 30


def collect(bus: Bus, *, grace: float = GRACE_SECONDS) -> list[str]:
    from machinectl_py import config, lifecycle, state, systemd
    from machinectl_py.dropins import remove_dropin
    from machinectl_py.paths import container_path, state_path
    from machinectl_py.unit_template import ensure_template, unit_name

    done: list[str] = []
    ensure_template(bus)  # and a template that runs this pymachine
    try:
        names = sorted(os.listdir(state_path("containers")))
    except FileNotFoundError:
        names = []
    others: bool | None = None  # another pymachine process runs (looked up once, if needed)
    for name in names:
        path = container_path(name)
        if not _lock_free(name):
            continue  # a command holds it (start, rm), or it is gone
        if others is None:
            others = bool(other_pymachine_processes())
        if not os.path.exists(os.path.join(path, state.RECORD)):
            if not others or time.time() - os.stat(path).st_mtime > grace:
                state.remove_dir(name)
                done.append(f"removed incomplete container directory {path}")
            continue
        record_tmp = os.path.join(path, state.RECORD + ".tmp")
        if os.path.exists(record_tmp) and (not others or time.time() - os.stat(record_tmp).st_mtime > grace):
            os.unlink(record_tmp)  # a save cut short: the record itself is the previous one, whole
            done.append(f"removed {record_tmp}")
        try:
            record = state.load(name)
        except Exception:
            done.append(f"unreadable record {path}/{state.RECORD} (left alone)")
            continue
        container = lifecycle.Container(record)
        unit = container.unit
        # A foreground run holds the directory's lock for its whole life: unlocked, its record
        # is over even when a kill -9 came before the payload ran (still "created").
        died = record.state == "running" or (record.state == "created" and container.is_foreground)
        if died and not systemd.unit_is_active(bus, unit):
            record.state, record.pid, record.finished = "exited", None, record.finished or state.now()
            state.save_state(record)
            done.append(f"{name}: marked exited ({unit} is not running)")
            if record.spec.remove:
                container.remove_files()
                done.append(f"{name}: removed (--rm)")
    for path in lifecycle.unread_errors_of_removed(older_than=grace):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            done.append(f"removed {path}")
    for dropin in _dropin_names():
        if not os.path.exists(container_path(dropin)) and not config.definition_exists(dropin):
            remove_dropin(dropin)
            done.append(f"removed stale drop-in of {unit_name(dropin)}")
    from machinectl_py import userns

    done += userns.free_orphans()  # UID ranges of containers and volumes whose directory is gone
    from machinectl_py import volumes

    done += volumes.free_stale_holds()  # a volume's hold on a range it was not yet recorded to own
    for path in stale_temp_files(_temp_file_dirs()):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            done.append(f"removed {path}")
    done += _collect_network()
    done += _collect_notify_sockets()
    for unit in systemd.failed_units(bus, ["pymachine@*.service", "machine-*.scope"]):
        with contextlib.suppress(Exception):
            systemd.call(bus, "ResetFailedUnit", "s", unit)
            done.append(f"reset failed unit {unit}")
    return done


def _collect_notify_sockets() -> list[str]:
    """--boot's notify sockets (readiness.py) whose setup process is gone (a kill -9): nobody
    receives on them any more, so a datagram is refused (a live one takes an empty message)."""
    import socket

    from machinectl_py.paths import run_path

    done: list[str] = []
    try:
        names = os.listdir(run_path("notify"))
    except FileNotFoundError:
        return done
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
        for name in names:
            path = run_path("notify", name)
            try:
                probe.sendto(b"", path)
            except ConnectionRefusedError:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    done.append(f"removed {path}")
            except OSError:
                continue
    return done


def _collect_network() -> list[str]:
    """Leases whose holder is gone (a kill -9 of pymachine, a crash), and the bridges and nft
    table no container uses any more."""
    from machinectl_py import ipam, netfiles, netsetup
    from machinectl_py.paths import container_path, run_path

    done = []
    try:
        names = os.listdir(run_path("netfiles"))
    except FileNotFoundError:
        names = []
    for name in names:  # /etc/hosts and resolv.conf of a container that is gone (a kill -9, then gc)
        if not os.path.exists(container_path(name)):
            netfiles.remove(name)
            done.append(f"removed {netfiles.files_dir(name)}")
    before = {n: set(ipam.read_leases(n)) for n in ipam.networks_with_leases()}
    if before:
        netsetup.release(None)
    for network, addresses in before.items():
        for address in sorted(addresses - set(ipam.read_leases(network))):
            done.append(f"freed the lease of {address} on network {network}")
    done += [f"removed bridge {bridge} (of no network)" for bridge in netsetup.remove_orphan_bridges()]
    if netsetup.remove_idle_table():
        done.append(f"removed nft table inet {netsetup.NFT_TABLE} (of no network)")
    return done


def is_pymachine_command(argv: list[bytes]) -> bool:
    """Is this command line a pymachine command? The launcher (bin/pymachine, also run as
    `python3 -I /path/pymachine`, which is how the unit runs it) or `python3 -m machinectl_py`."""
    for arg in argv[:4]:
        if os.path.basename(arg) == b"pymachine" or arg == b"machinectl_py" or arg.startswith(b"machinectl_py."):
            return True
        if arg.startswith(b"-") and arg not in (b"-m", b"-I", b"-S", b"-E", b"-s", b"-B", b"-u"):
            return False  # python3 -c ...: not a pymachine command
    return False


def other_pymachine_processes() -> list[int]:
    """PIDs of pymachine commands running on this host besides this one (and its parents'
    wrappers): each could be creating a container's directory right now."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if is_pymachine_command(argv):
            found.append(int(entry))
    return found


def temp_file_pid(entry: str) -> int | None:
    """The writer's PID in the name of an atomic write's temporary file (NAME.PID.tmp)."""
    stem, dot, suffix = entry.rpartition(".")
    if not dot or suffix != "tmp":
        return None
    _, dot, pid = stem.rpartition(".")
    return int(pid) if dot and pid.isdigit() and int(pid) > 0 else None


def stale_temp_files(places: list[tuple[str, str]]) -> list[str]:
    """NAME.PID.tmp files (NAME starting with the prefix) in each (directory, prefix) whose
    writing process no longer exists."""
    found = []
    for directory, prefix in places:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            pid = temp_file_pid(entry) if entry.startswith(prefix) else None
            if pid is not None and not os.path.exists(f"/proc/{pid}"):
                found.append(os.path.join(directory, entry))
    return found


def _temp_file_dirs() -> list[tuple[str, str]]:
    """Where pymachine writes files atomically (a temporary file renamed into place)."""
    from machinectl_py import config
    from machinectl_py.dropins import dropin_dir
    from machinectl_py.paths import run_path, state_path
    from machinectl_py.unit_template import TEMPLATE, UNIT_DIR

    return [(config.machines_dir(), "."), (run_path(), ""), (state_path("cache"), ""), (UNIT_DIR, TEMPLATE),
            (state_path("userns"), ""),  # a claim file's new holders (userns._write)
            *[(dropin_dir(name), "") for name in _dropin_names()]]


def _lock_free(name: str) -> bool:
    """Is the container's directory unlocked (no command is making, starting or removing it)?"""
    from machinectl_py.errors import ConflictError, NotFoundError
    from machinectl_py.state import ContainerLock

    lock = ContainerLock(name, wait=False)
    try:
        lock.acquire()
    except (ConflictError, NotFoundError, OSError):  # OSError: not a directory
        return False
    lock.release()
    return True


def _dropin_names() -> list[str]:
    from machinectl_py.unit_template import UNIT_DIR

    names = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(UNIT_DIR):
            if entry.startswith("pymachine@") and entry.endswith(".service.d") and entry != "pymachine@.service.d":
                names.append(entry[len("pymachine@"):-len(".service.d")])
    return names
