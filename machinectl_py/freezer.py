"""Freezing a running container's unit while commit reads its upper dir.

In the systemd layer, not in images/: the image store makes no D-Bus calls; `pymachine
commit` (cmd_commit.py) hands frozen_unit to images.ops.commit_container.

systemd's FreezeUnit is the first choice. systemd implements it with the cgroup v2 freezer
only, so on a hybrid host (v1 controllers plus a unified hierarchy that has no controllers)
it answers NotSupported. There the v1 freezer hierarchy, which systemd does not manage on
such hosts, does the same job: the unit's processes are moved into a fresh freezer cgroup,
frozen, and afterwards thawed and moved back where they were. Nothing is written to any
cgroup systemd owns.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator

from machinectl_py.bus import Bus, BusError
from machinectl_py.errors import PymachineError
from machinectl_py.systemd import NO_SUCH_UNIT, UNIT_INACTIVE, freeze_unit, get_unit_property, thaw_unit, unit_path

V1_FREEZER = "/sys/fs/cgroup/freezer"
PROCS_HIERARCHIES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup")
FREEZE_TIMEOUT = 10.0
_GONE = (NO_SUCH_UNIT, UNIT_INACTIVE)


@contextlib.contextmanager
def frozen_unit(unit: str) -> Iterator[None]:
    """Keep `unit`'s processes frozen for the duration; thaw them whatever happens.

    Does nothing when the unit does not exist (a stale container record: nothing runs)."""
    with Bus.system() as bus:
        if unit_path(bus, unit) is None:
            yield
            return
        try:
            freeze_unit(bus, unit)
        except BusError as e:
            if "NotSupported" not in e.name:
                raise PymachineError(f"cannot freeze {unit}: {e}") from None
            cgroup = str(get_unit_property(bus, unit, "Scope" if unit.endswith(".scope") else "Service",
                                           "ControlGroup"))
            with _v1_frozen(unit, cgroup):
                yield
            return
        try:
            yield
        finally:
            try:
                thaw_unit(bus, unit)
            except BusError as e:
                # A unit that stopped (or went away) while frozen has nothing left to thaw.
                if e.name not in _GONE:
                    raise PymachineError(f"cannot thaw {unit}: {e}", hint=f"run: systemctl thaw {unit}") from None


def _unit_pids(cgroup: str) -> set[int]:
    for root in PROCS_HIERARCHIES:
        path = f"{root}{cgroup}/cgroup.procs"
        try:
            with open(path) as f:
                return {int(line) for line in f if line.strip()}
        except FileNotFoundError:
            continue
    raise PymachineError(f"cannot find the processes of cgroup {cgroup}")


def _freezer_cgroup_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "freezer" in controllers.split(","):
                    return path
    except FileNotFoundError:
        return None
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@contextlib.contextmanager
def _v1_frozen(unit: str, cgroup: str) -> Iterator[None]:
    if not os.path.isfile(f"{V1_FREEZER}/freezer.state") and not os.path.isdir(V1_FREEZER):
        raise PymachineError(f"cannot freeze {unit}: this host has no cgroup freezer", hint="stop the container first")
    mine = f"{V1_FREEZER}/pymachine-commit-{secrets.token_hex(4)}"
    os.mkdir(mine)
    origins: dict[int, str] = {}
    try:
        # Move until stable: a process forked during the move lands in its parent's old cgroup.
        deadline = time.monotonic() + FREEZE_TIMEOUT
        while pending := _unit_pids(cgroup) - origins.keys():
            if time.monotonic() > deadline:
                raise PymachineError(f"cannot freeze {unit}: its processes keep changing")
            for pid in pending:
                origin = _freezer_cgroup_of(pid)
                if origin is None:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    _write(f"{mine}/cgroup.procs", str(pid))
                    origins[pid] = origin
        _write(f"{mine}/freezer.state", "FROZEN")
        while _read_state(mine) != "FROZEN":
            if time.monotonic() > deadline:
                raise PymachineError(f"cannot freeze {unit}: the freezer did not settle")
            time.sleep(0.01)
        yield
    finally:
        _write(f"{mine}/freezer.state", "THAWED")
        for pid, origin in origins.items():
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                _write(f"{V1_FREEZER}{origin}/cgroup.procs", str(pid))
        # Children forked while frozen-in-progress, if any, are moved to the root before rmdir.
        with contextlib.suppress(OSError), open(f"{mine}/cgroup.procs") as f:
            for line in f:
                with contextlib.suppress(ProcessLookupError):
                    _write(f"{V1_FREEZER}/cgroup.procs", line.strip())
        with contextlib.suppress(OSError):
            os.rmdir(mine)


def _read_state(cgroup_dir: str) -> str:
    with open(f"{cgroup_dir}/freezer.state") as f:
        return f.read().strip()
