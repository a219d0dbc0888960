"""Container records: /var/lib/pymachine/containers/NAME/container.json.

A container's directory is claimed with an exclusive mkdir (two `run --name x` at once:
one wins), and container.json is replaced atomically (write, fsync, rename), so a
reader never sees half a record.
"""

from __future__ import annotations

import json
import os
import time

from machinectl_py.errors import ConflictError, NotFoundError
from machinectl_py.paths import container_path, state_path
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
                 finished: float | None = None, unit: str | None = None, pid: int | None = None) -> None:
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
            "unit": self.unit, "pid": self.pid,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRecord:
        return cls(
            name=data["name"], id=data["id"], image_name=data["image"]["name"], image_id=data["image"]["id"],
            spec=spec_from_json(data["spec"]), created=data["created"], state=data.get("state", "created"),
            exit_code=data.get("exit_code"), started=data.get("started"), finished=data.get("finished"),
            unit=data.get("unit"), pid=data.get("pid"),
        )


def spec_to_json(spec: ContainerSpec) -> dict[str, Any]:
    return spec.to_dict()


def spec_from_json(data: dict[str, Any]) -> ContainerSpec:
    fields = dict(data)
    fields["limits"] = Limits(**data.get("limits") or {})
    fields["volumes"] = tuple(Volume(**v) for v in data.get("volumes") or ())
    if fields.get("command") is not None:
        fields["command"] = tuple(fields["command"])
    return ContainerSpec(**fields)


def claim(name: str) -> str:
    """Create the container's directory; fails if the name is taken."""
    os.makedirs(state_path("containers"), mode=0o700, exist_ok=True)
    path = container_path(name)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise ConflictError(f"container name {name!r} is already in use",
                            hint=f"remove it with 'pymachine rm {name}' or choose another --name") from None
    return path


def save(record: ContainerRecord) -> None:
    path = os.path.join(record.dir_path, RECORD)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record.to_json(), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(name: str) -> ContainerRecord:
    try:
        with open(container_path(name, RECORD)) as f:
            return ContainerRecord.from_json(json.load(f))
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
    import shutil

    shutil.rmtree(container_path(name), ignore_errors=True)


def now() -> float:
    return time.time()
