"""User namespaces: the `--userns` modes and the pool of UID/GID ranges containers get.

Each container with `--userns=auto` gets its own range of host UIDs and GIDs
(65536 unless `auto:size=N`): container ID 0 is the range's first host ID. The ranges come from
a pool just above systemd-nspawn's own (`-U` picks from 524288..1879048191), so neither picks
the other's, and below 2^31 (some tools take IDs as signed):

    POOL_START = 1879048192 (0x70000000) .. POOL_END = 2147352576 (0x7FFE0000, systemd's
    "foreign" range starts there): 4094 slots of 65536 IDs.

A slot is never given out when it overlaps an ID of the host's /etc/passwd or /etc/group or a
range of /etc/subuid or /etc/subgid. A slot is claimed by creating `STATE/userns/BASE` with
O_EXCL (atomic: 20 concurrent starts get 20 different slots), under a flock on the pool, and
holds the container's name; the container's record keeps (base, size), so a restart reuses
it; `rm` frees it, and `gc` frees the claims of containers whose directory is gone.

A named volume first mounted by a container with a range is owned by that range (volumes.py):
it then holds the range too (a second line `volume:NAME` in the claim file), so the range
stays out of the pool until both the container and the volume are gone: no later container
ever runs as the host IDs that own the volume's files.

File operations only: above the syscall line.
"""

from __future__ import annotations

import os

from machinectl_py.errors import PymachineError
from machinectl_py.paths import container_path, state_path, volumes_dir

POOL_START = 0x70000000
POOL_END = 0x7FFE0000
SLOT = 65536
DEFAULT_SIZE = 65536
# What `--userns` means when neither the flag nor the definition says (--privileged aside: it
# means host): a range of the container's own, as nspawn's service runs every container (-U).
# The environment may force another (the test suite runs both ways).
DEFAULT_MODE = "auto"
DEFAULT_ENV = "PYMACHINE_USERNS_DEFAULT"


def default_mode() -> str:
    return os.environ.get(DEFAULT_ENV) or DEFAULT_MODE


def effective_mode(mode: str | None) -> str:
    return mode if mode is not None else default_mode()


def size_of(mode: str) -> int | None:
    """The range size `mode` asks for; None for `host`."""
    if mode == "host":
        return None
    return int(mode.partition("=")[2]) if ":" in mode else DEFAULT_SIZE


def _pool_dir() -> str:
    return state_path("userns")


# The host's ID files: (path, the ID fields of a line).
HOST_ID_FILES: tuple[tuple[str, tuple[int, ...]], ...] = (("/etc/passwd", (2, 3)), ("/etc/group", (2,)))
SUBID_FILES = ("/etc/subuid", "/etc/subgid")


def _reserved_ranges() -> list[tuple[int, int]]:
    """The host's own IDs: every user and group, and every subordinate range (start, end)."""
    ranges: list[tuple[int, int]] = []
    for path, fields in HOST_ID_FILES:
        for line in _lines(path):
            parts = line.split(":")
            for i in fields:
                if len(parts) > i and parts[i].isdigit():
                    ranges.append((int(parts[i]), int(parts[i]) + 1))
    for path in SUBID_FILES:
        for line in _lines(path):
            parts = line.split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                ranges.append((int(parts[1]), int(parts[1]) + int(parts[2])))
    return ranges


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return []


def _slots(base: int, size: int) -> list[int]:
    return list(range(base, base + size, SLOT))


def _overlaps(start: int, end: int, ranges: list[tuple[int, int]]) -> bool:
    return any(s < end and start < e for s, e in ranges)


# A claim file's lines: its holders, the container that claimed it first, then volumes.
VOLUME_PREFIX = "volume:"


def volume_holder(name: str) -> str:
    """The holder name of volume `name` (container names have no ':')."""
    return VOLUME_PREFIX + name


def _holders(slot: int) -> list[str]:
    try:
        with open(os.path.join(_pool_dir(), str(slot))) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def holds(name: str, base: int, size: int) -> bool:
    """Do `name`'s claims still cover base..base+size (a record's range, on a restart)?"""
    return all(name in _holders(slot) for slot in _slots(base, size))


class _Locked:
    """The pool's lock: claims are made, shared and freed one command at a time. (A class, not
    contextlib's decorator: contextlib is too heavy an import for the start-up path.)"""

    def __enter__(self) -> None:
        import fcntl

        os.makedirs(_pool_dir(), mode=0o700, exist_ok=True)
        self.fd = os.open(_pool_dir(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


def acquire(name: str, size: int, previous: tuple[int, int] | None = None) -> tuple[int, int]:
    """A range of `size` IDs for container `name`: its previous one when still its own, else a
    new one claimed from the pool. (base, size)."""
    if previous is not None and previous[1] == size and holds(name, *previous):
        return previous
    with _Locked():
        _release(name)  # a previous range of another size
        taken = {int(n) for n in os.listdir(_pool_dir()) if n.isdigit()}
        reserved = _reserved_ranges()
        span = _span(size)
        for base in range(POOL_START, POOL_END - span + 1, SLOT):
            slots = _slots(base, span)
            if taken.intersection(slots) or _overlaps(base, base + span, reserved):
                continue
            if _claim(name, slots):
                return base, size
    raise PymachineError(f"no free range of {size} user IDs left in pymachine's pool "
                         f"({POOL_START}-{POOL_END - 1})", hint="remove unused containers, or run pymachine gc")


def _span(size: int) -> int:
    return -(-size // SLOT) * SLOT


def _claim(name: str, slots: list[int]) -> bool:
    made: list[str] = []
    for slot in slots:
        path = os.path.join(_pool_dir(), str(slot))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            for done in made:
                os.unlink(done)
            return False
        made.append(path)
        with os.fdopen(fd, "w") as f:
            f.write(name + "\n")
    return True


def share(holder: str, base: int, size: int) -> None:
    """`holder` (a volume) holds the range base..base+size as well as the container that
    claimed it: the range stays claimed until every holder has let it go."""
    with _Locked():
        for slot in _slots(base, _span(size)):
            holders = _holders(slot)
            if holder not in holders:
                _write(slot, [*holders, holder])


def release(name: str) -> None:
    """`name` lets go of every slot it holds (a container's `rm`, or its `run --rm` ending; a
    volume's `rm`); a slot nobody holds any more is free."""
    with _Locked():
        _release(name)


def _release(name: str) -> None:
    for slot, holders in claims().items():
        if name in holders:
            _write(slot, [h for h in holders if h != name])


def _write(slot: int, holders: list[str]) -> None:
    """A claim file's new holders (none: the slot is free), replaced whole (readers take no lock)."""
    path = os.path.join(_pool_dir(), str(slot))
    if not holders:
        _unlink(slot)
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write("".join(h + "\n" for h in holders))
    os.replace(tmp, path)


def claims() -> dict[int, tuple[str, ...]]:
    """slot -> its holders: the container that claimed it, and volumes that share it."""
    try:
        entries = [n for n in os.listdir(_pool_dir()) if n.isdigit()]
    except FileNotFoundError:
        return {}
    found = {}
    for entry in entries:
        holders = _holders(int(entry))
        if holders:
            found[int(entry)] = tuple(holders)
    return found


def _unlink(slot: int) -> None:
    try:
        os.unlink(os.path.join(_pool_dir(), str(slot)))
    except FileNotFoundError:
        pass


def orphaned() -> list[tuple[int, str]]:
    """Holds of containers whose directory is gone (a `kill -9` between claim and cleanup) and
    of volumes whose directory is gone (a `kill -9` in `volume rm`): (slot, holder)."""
    found = []
    for slot, holders in claims().items():
        for holder in holders:
            volume = holder.removeprefix(VOLUME_PREFIX)
            gone = (not os.path.isdir(os.path.join(volumes_dir(), volume)) if volume != holder
                    else not os.path.isdir(container_path(holder)))
            if gone:
                found.append((slot, holder))
    return found


def free_orphans() -> list[str]:
    """`gc`: free the orphaned holds; one line each."""
    lines = []
    with _Locked():
        for slot, holder in orphaned():
            _write(slot, [h for h in _holders(slot) if h != holder])
            lines.append(f"freed user ID range {slot}-{slot + SLOT - 1} of {describe(holder)}")
    return lines


def free_hold(holder: str, slot: int) -> None:
    """Let `holder` go of one slot (gc: a volume's hold its metadata does not record)."""
    with _Locked():
        _write(slot, [h for h in _holders(slot) if h != holder])


def describe(holder: str) -> str:
    volume = holder.removeprefix(VOLUME_PREFIX)
    return f"removed volume {volume}" if volume != holder else f"removed container {holder}"


def map_line(base: int, size: int, first: int = 0) -> str:
    """/proc/PID/uid_map's line for the range: container 0 is host `base` (`first`: the ID
    inside that is host `base`, for a volume's idmap: on-disk owner+N is the container's N)."""
    return f"{first} {base} {size}"


def for_container(name: str, mode: str | None, previous: tuple[int, int] | None) -> tuple[int, int] | None:
    """The range a start of container `name` runs with: None for `host` (a range it held is
    freed), else its previous range when still its own, else a new one."""
    size = size_of(effective_mode(mode))
    if size is None:
        if previous is not None:
            release(name)
        return None
    return acquire(name, size, previous)
