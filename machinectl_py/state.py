"""Container records: /var/lib/pymachine/containers/NAME/container.json.

A container's directory is claimed with an exclusive mkdir (two `run --name x` at once:
one wins) and locked while it is made, and container.json is replaced atomically (write,
rename), so a reader never sees half a record.
"""

from __future__ import annotations

import fcntl
import os
import time

from machinectl_py.errors import ConflictError, NotFoundError, PymachineError
from machinectl_py.paths import container_path, state_path
from machinectl_py.record import load_json as load_json  # where exec reads records without this module
from machinectl_py.spec import ContainerSpec, Limits, Volume

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

RECORD = "container.json"


class ContainerRecord:
    """What pymachine knows of one container; mutable as the container moves through states."""

    def __init__(self, name: str, id: str, image_name: str, image_id: str, spec: ContainerSpec, created: float,
                 state: str = "created", exit_code: int | None = None, started: float | None = None,
                 finished: float | None = None, unit: str | None = None, pid: int | None = None,
                 user: str | None = None, oom_killed: bool = False, userns: tuple[int, int] | None = None) -> None:
        self.name = name
        self.id = id
        self.image_name = image_name
        self.image_id = image_id
        self.spec = spec
        self.created = created
        self.state = state  # created | running | exited
        self.exit_code = exit_code
        self.started = started
        self.finished = finished
        self.unit = unit
        self.pid = pid
        # Who the command runs as, as configured (-u, else the image's User; None: root):
        # `exec` runs as that user too, as with docker.
        self.user = user
        # The OOM killer killed a process of its last run (docker's State.OOMKilled).
        self.oom_killed = oom_killed
        # --userns=auto: (host base, size) of its UID/GID range, kept for its restarts (userns.py).
        self.userns = userns

    @property
    def dir_path(self) -> str:
        return container_path(self.name)

    @property
    def dir(self) -> Path:
        from pathlib import Path

        return Path(self.dir_path)

    @property
    def upper_dir(self) -> Path:
        return self.dir / "upper"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "id": self.id,
            "image": {"name": self.image_name, "id": self.image_id},
            "spec": spec_to_json(self.spec), "created": self.created, "state": self.state,
            "exit_code": self.exit_code, "started": self.started, "finished": self.finished,
            "unit": self.unit, "pid": self.pid, "user": self.user, "oom_killed": self.oom_killed,
            "userns": list(self.userns) if self.userns else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRecord:
        return cls(
            name=data["name"], id=data["id"], image_name=data["image"]["name"], image_id=data["image"]["id"],
            spec=spec_from_json(data["spec"]), created=data["created"], state=data.get("state", "created"),
            exit_code=data.get("exit_code"), started=data.get("started"), finished=data.get("finished"),
            unit=data.get("unit"), pid=data.get("pid"), user=data.get("user"),
            oom_killed=bool(data.get("oom_killed")),
            userns=tuple(data["userns"]) if data.get("userns") else None,
        )


def spec_to_json(spec: ContainerSpec) -> dict[str, Any]:
    return spec.to_dict()


def spec_from_json(data: dict[str, Any]) -> ContainerSpec:
    fields = dict(data)
    fields["limits"] = Limits(**data.get("limits") or {})
    fields["volumes"] = tuple(Volume(**v) for v in data.get("volumes") or ())
    for key in ("command", "entrypoint", "cap_add", "cap_drop", "security_opt", "group_add", "devices"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    if fields.get("ulimits"):
        fields["ulimits"] = {k: tuple(v) for k, v in fields["ulimits"].items()}
    return ContainerSpec(**fields)


class ContainerLock:
    """An exclusive lock on the container's directory (flock: released if we are killed).

    Held by `claim` until release_claim (a foreground `run` holds it for its whole life),
    by `start` while it starts and by `rm` while it removes. `gc` and `rm` never take a
    locked directory for debris."""

    def __init__(self, name: str, *, wait: bool) -> None:
        self.name = name
        self.wait = wait
        self.fd = -1

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.fd = os.open(container_path(self.name), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFoundError(f"no such container: {self.name}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(self.fd)
            raise ConflictError(f"container {self.name} is being started or removed by another command") from None

    def release(self) -> None:
        os.close(self.fd)


_claims: dict[str, ContainerLock] = {}


def claim(name: str) -> str:
    """Create the container's directory and lock it until release_claim.

    The mkdir is exclusive (of two `run --name x` at once, one wins); the lock tells `rm`
    and `gc` that the directory is being made, not left behind by a killed command."""
    os.makedirs(state_path("containers"), mode=0o700, exist_ok=True)
    path = container_path(name)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise ConflictError(f"container name {name!r} is already in use",
                            hint=f"remove it with 'pymachine rm {name}' or choose another --name") from None
    lock = ContainerLock(name, wait=False)
    try:
        lock.acquire()
    except PymachineError:  # an `rm` or `gc` took it between our mkdir and flock: theirs now
        raise ConflictError(f"container {name} was removed while being created") from None
    _claims[name] = lock
    return path


def release_claim(name: str) -> None:
    lock = _claims.pop(name, None)
    if lock is not None:
        lock.release()


def claim_fds() -> tuple[int, ...]:
    """The claims' descriptors: a forked helper that outlives the claim must close them."""
    return tuple(lock.fd for lock in _claims.values())


# What a running container's own process changes in its record (the state fields below), and
# what `update` and a changed definition change (the spec): two writers of one file.
STATE_FIELDS = ("state", "exit_code", "started", "finished", "unit", "pid", "oom_killed")


def save(record: ContainerRecord) -> None:
    """The whole record, as `record` has it (a new container's first record)."""
    with _record_lock(record.dir_path):
        _write(record)


def save_state(record: ContainerRecord) -> None:
    """The record's state fields, keeping the spec on disk: an `update` may have changed it
    since this process read it (a foreground run saves its states for its whole life)."""
    with _record_lock(record.dir_path):
        disk = _read(record.name)
        if disk is not None:
            record.spec = disk.spec
        _write(record)


def save_spec(record: ContainerRecord) -> None:
    """The record's spec, keeping the state fields on disk: the container's own process
    (a foreground run, a unit's setup or stop hook) may have saved a state since."""
    with _record_lock(record.dir_path):
        disk = _read(record.name)
        if disk is not None:
            for field in STATE_FIELDS:
                setattr(record, field, getattr(disk, field))
        _write(record)


def _record_lock(dir_path: str) -> _FileLock:
    return _FileLock(os.path.join(dir_path, ".record.lock"))


class _FileLock:
    """flock on a file beside the record for one read-modify-write (container.json itself is
    replaced by each write, so a lock on it would lock a file that is gone)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _write(record: ContainerRecord) -> None:
    path = os.path.join(record.dir_path, RECORD)
    tmp = path + ".tmp"
    # No fsync: this runs twice per container start, and an fsync costs milliseconds. The
    # rename is atomic; after a crash a record may be stale or empty, which `gc` handles.
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dump_json(record.to_json()))
    os.replace(tmp, path)


def _read(name: str) -> ContainerRecord | None:
    try:
        return load(name)
    except (NotFoundError, ValueError, KeyError):  # none yet, or cut short by a crash: ours stands
        return None


def load(name: str) -> ContainerRecord:
    from machinectl_py.spec import validate_name

    validate_name(name)  # a name is a path component under containers/: no '..', no '/'
    try:
        with open(container_path(name, RECORD), encoding="utf-8") as f:
            return ContainerRecord.from_json(load_json(f.read()))
    except FileNotFoundError:
        raise NotFoundError(f"no such container: {name}") from None


def list_records() -> list[ContainerRecord]:
    records = []
    try:
        names = sorted(os.listdir(state_path("containers")))
    except FileNotFoundError:
        return []
    for name in names:
        try:
            records.append(load(name))
        except (NotFoundError, ValueError, KeyError):
            continue  # a directory being claimed or removed right now
    return records


def remove_dir(name: str) -> None:
    """The container's directory, and with it its claim on a UID range (userns.py). The claim
    goes first: a new container of the same name (which needs the directory gone) then never
    loses its own claim to this removal."""
    from machinectl_py import userns

    userns.release(name)
    remove_tree(container_path(name))


def remove_tree(path: str) -> None:
    """rm -rf without following symlinks (the l/ links point into the image store!).

    os.fwalk hands us a directory fd for each level, so nothing is resolved by path twice;
    shutil.rmtree would do as well but costs its import on the start-up path."""
    try:
        for _root, dirs, files, root_fd in os.fwalk(path, topdown=False):
            for name in files:
                os.unlink(name, dir_fd=root_fd)
            for name in dirs:  # fwalk lists symlinks to directories here too
                try:
                    os.rmdir(name, dir_fd=root_fd)
                except NotADirectoryError:
                    os.unlink(name, dir_fd=root_fd)
        os.rmdir(path)
    except FileNotFoundError:
        pass


# JSON text without the json module, whose import (it compiles regular expressions) costs
# more than a whole container start's worth of D-Bus calls. Enough for records: dicts with
# str keys, lists/tuples, str, int, float, bool, None.
_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)} | {ord('"'): '\\"', ord("\\"): "\\\\",
                                                      ord("\n"): "\\n", ord("\t"): "\\t"}


def dump_json(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return '"' + value.translate(_ESCAPES) + '"'
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"cannot write {value} as JSON")
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{dump_json(str(k))}: {dump_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dump_json(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def now() -> float:
    return time.time()
