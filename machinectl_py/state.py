"""Container records: /var/lib/pymachine/containers/NAME/container.json.

A container's directory is claimed with an exclusive mkdir (two `run --name x` at once:
one wins), and container.json is replaced atomically (write, fsync, rename), so a
reader never sees half a record.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from machinectl_py.errors import ConflictError, NotFoundError
from machinectl_py.paths import container_dir, containers_dir, ensure_private_dir
from machinectl_py.spec import ContainerSpec, Limits, Volume

RECORD = "container.json"


@dataclasses.dataclass
class ContainerRecord:
    name: str
    id: str
    image_name: str
    image_id: str
    spec: ContainerSpec
    created: float
    state: str = "created"  # created | running | exited
    exit_code: int | None = None
    started: float | None = None
    finished: float | None = None
    unit: str | None = None
    pid: int | None = None

    @property
    def dir(self) -> Path:
        return container_dir(self.name)

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
    data = dataclasses.asdict(spec)
    data["env"] = dict(spec.env)
    return data


def spec_from_json(data: dict[str, Any]) -> ContainerSpec:
    fields = dict(data)
    fields["limits"] = Limits(**data.get("limits", {}))
    fields["volumes"] = tuple(Volume(**v) for v in data.get("volumes", ()))
    if fields.get("command") is not None:
        fields["command"] = tuple(fields["command"])
    return ContainerSpec(**fields)


def claim(name: str) -> Path:
    """Create the container's directory; fails if the name is taken."""
    ensure_private_dir(containers_dir())
    path = container_dir(name)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise ConflictError(f"container name {name!r} is already in use",
                            hint=f"remove it with 'pymachine rm {name}' or choose another --name") from None
    return path


def save(record: ContainerRecord) -> None:
    path = record.dir / RECORD
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(record.to_json(), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(name: str) -> ContainerRecord:
    try:
        with open(container_dir(name) / RECORD) as f:
            return ContainerRecord.from_json(json.load(f))
    except FileNotFoundError:
        raise NotFoundError(f"no such container: {name}") from None


def list_records() -> list[ContainerRecord]:
    records = []
    try:
        names = sorted(os.listdir(containers_dir()))
    except FileNotFoundError:
        return []
    for name in names:
        try:
            records.append(load(name))
        except (NotFoundError, ValueError, KeyError):
            continue  # a directory being claimed or removed right now
    return records


def remove_dir(name: str) -> None:
    shutil.rmtree(container_dir(name), ignore_errors=True)


def now() -> float:
    return time.time()
