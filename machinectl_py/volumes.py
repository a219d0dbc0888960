"""Volumes: `-v` parsing, the volume store and the bind ops a container's plan gets.

Three kinds, as in docker:
  -v /host/path:/ctr/path[:ro]   a bind mount of a host path
  -v name:/ctr/path[:ro]         a named volume, /var/lib/pymachine/volumes/NAME/_data, made on first use
  -v /ctr/path                   an anonymous volume: a named volume with a generated 64-hex name,
                                 marked anonymous (removed with its container by `rm -v` / `run --rm`)

The targets are resolved inside the container root without following symlinks
(machinectl_py.mounts.open_in_root), so an image cannot redirect a volume onto the host.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from machinectl_py.errors import ConflictError, NotFoundError, UsageError
from machinectl_py.paths import ensure_private_dir, volumes_dir
from machinectl_py.spec import ContainerSpec, Volume
from machinectl_py.spec import validate_volume_name as validate_volume_name  # where Volume is

META = "volume.json"


def parse_volume(text: str) -> Volume:
    """'/src:/dst:ro' | 'name:/dst' | '/dst' -> Volume."""
    parts = text.split(":")
    read_only = False
    if len(parts) >= 2 and parts[-1] in ("ro", "rw"):  # a target is absolute, so never "ro"
        read_only = parts.pop() == "ro"
    if len(parts) == 1:
        source, target = None, parts[0]
    elif len(parts) == 2:
        source, target = parts
    else:
        raise UsageError(f"invalid volume {text!r}", hint="use /host/path:/path[:ro], name:/path[:ro] or /path")
    if not target.startswith("/") or target.rstrip("/") == "" or ".." in target.split("/"):
        raise UsageError(f"invalid volume {text!r}: the target {target!r} must be an absolute path other than / "
                         "without '..'")
    if source is not None:
        if source.startswith("/"):
            if ".." in source.split("/"):
                raise UsageError(f"invalid volume {text!r}: the source must not contain '..'")
        else:
            validate_volume_name(source)
    return Volume(target=os.path.normpath(target), source=source, read_only=read_only)


def format_volume(vol: Volume) -> str:
    text = vol.target if vol.source is None else f"{vol.source}:{vol.target}"
    return text + (":ro" if vol.read_only else "")


# -- the store ---------------------------------------------------------------------------------


def volume_dir(name: str) -> Path:
    return volumes_dir() / validate_volume_name(name)


def data_dir(name: str) -> Path:
    return volume_dir(name) / "_data"


def ensure_volume(name: str, *, anonymous: bool = False, container: str | None = None) -> Path:
    """Create the named volume if it does not exist (first use creates it, as in docker)."""
    ensure_private_dir(volumes_dir())
    path = volume_dir(name)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return path / "_data"
    (path / "_data").mkdir(mode=0o755)
    meta = {"name": name, "created": time.time(), "anonymous": anonymous, "container": container}
    (path / META).write_text(json.dumps(meta))
    return path / "_data"


def read_meta(name: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((volume_dir(name) / META).read_text())
        return data
    except FileNotFoundError:
        if volume_dir(name).is_dir():
            return {"name": name, "created": None, "anonymous": False, "container": None}
        raise NotFoundError(f"no such volume: {name}") from None


def list_volumes() -> list[str]:
    try:
        return sorted(n for n in os.listdir(volumes_dir()) if (volumes_dir() / n).is_dir())
    except FileNotFoundError:
        return []


def create_anonymous(spec: ContainerSpec, previous: ContainerSpec | None = None) -> ContainerSpec:
    """Create each anonymous volume under a generated name, so the container keeps it across
    restarts; one the container had already (`previous`, same target) is kept."""
    if all(v.source is not None for v in spec.volumes):
        return spec
    kept = set(anonymous_names(previous)) if previous is not None else set()
    had = {v.target: v.source for v in (previous.volumes if previous is not None else ()) if v.source in kept}
    named = []
    for vol in spec.volumes:
        if vol.source is None and vol.target in had:
            vol = vol.replace(source=had[vol.target])
        elif vol.source is None:
            generated = os.urandom(32).hex()
            ensure_volume(generated, anonymous=True, container=spec.name)
            vol = vol.replace(source=generated)
        named.append(vol)
    return spec.replace(volumes=tuple(named))


def anonymous_names(spec: ContainerSpec) -> list[str]:
    """The volumes of `spec` that were created anonymous for this container."""
    names = []
    for vol in spec.volumes:
        if vol.source is not None and not vol.source.startswith("/"):
            try:
                meta = read_meta(vol.source)
            except NotFoundError:
                continue
            if meta.get("anonymous") and meta.get("container") == spec.name:
                names.append(vol.source)
    return names


def bind_ops(spec: ContainerSpec) -> list[Any]:
    """The container's volumes as plan.Bind ops; creates named volumes on first use.

    Anonymous volumes must have been created first (create_anonymous)."""
    from machinectl_py.plan import Bind

    ops = []
    for vol in spec.volumes:
        if vol.source is None:
            raise UsageError(f"volume {vol.target}: anonymous volume was not created (internal error)")
        if vol.source.startswith("/"):
            if not os.path.exists(vol.source):
                raise UsageError(f"volume {format_volume(vol)}: the host path {vol.source} does not exist")
            source = vol.source
        else:
            source = str(ensure_volume(vol.source))
        ops.append(Bind(source=source, target=vol.target, read_only=vol.read_only))
    return ops


def users_of(name: str) -> list[str]:
    """Containers whose spec mounts volume `name`."""
    from machinectl_py import state

    return [r.name for r in state.list_records() if any(v.source == name for v in r.spec.volumes)]


def remove_volume(name: str, *, force: bool = False) -> None:
    read_meta(name)
    users = users_of(name)
    if users and not force:
        raise ConflictError(f"volume {name} is in use by {', '.join(users)}",
                            hint="remove the containers first, or use -f")
    shutil.rmtree(volume_dir(name))


def prune() -> list[str]:
    """Remove every volume no container uses; returns their names."""
    from machinectl_py import state

    used = {v.source for r in state.list_records() for v in r.spec.volumes}
    removed = []
    for name in list_volumes():
        if name not in used:
            shutil.rmtree(volume_dir(name), ignore_errors=True)
            removed.append(name)
    return removed


def remove_anonymous(spec: ContainerSpec) -> None:
    for name in anonymous_names(spec):
        shutil.rmtree(volume_dir(name), ignore_errors=True)
