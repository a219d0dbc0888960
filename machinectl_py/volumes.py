"""Volumes: `-v` parsing, the volume store and the bind ops a container's plan gets.

Three kinds, as in docker:
  -v /host/path:/ctr/path[:ro]   a bind mount of a host path
  -v name:/ctr/path[:ro]         a named volume, /var/lib/pymachine/volumes/NAME/_data, made on first use
  -v /ctr/path                   an anonymous volume: a named volume with a generated 64-hex name,
                                 marked anonymous (removed with its container by `rm -v` / `run --rm`)

The targets are resolved inside the container root without following symlinks
(machinectl_py.mounts.open_in_root), so an image cannot redirect a volume onto the host.

Owners. A named volume gets an owner when a container first mounts it, recorded in its
volume.json as `owner: [first host ID, size]`:
  - a container with a user namespace (--userns=auto): its range (base, size); the data
    root is chowned to the range's root and the volume shares the range's claim in the pool
    (userns.share), so the range outlives the container and is never given to another;
  - a container without one (--userns=host), or a volume whose data directory is not empty
    then (filled from the host), or one made before owners existed: [0, null], root, the
    host's IDs as they are.
A container with a user namespace mounts a range-owned volume idmapped so that on-disk
owner+N is its N (plan.Bind.ids): each such container sees the volume's files as the
first one made them, and what its root creates is owned by the volume's owner on the host.
A root-owned volume, and a bind-mounted host path, are idmapped with the container's own
mapping (on-disk N is its N). A container without a user namespace sees the host's IDs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from machinectl_py.errors import ConflictError, NotFoundError, PymachineError, UsageError
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


class _Locked:
    """A directory's flock: the store's while a volume is made, a volume's while its owner is
    decided (once) or gc reads it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        os.close(self.fd)


def ensure_volume(name: str, *, anonymous: bool = False, container: str | None = None) -> Path:
    """Create the named volume if it does not exist (first use creates it, as in docker); its
    owner is left to the first container that mounts it (owner_of)."""
    ensure_private_dir(volumes_dir())
    path = volume_dir(name)
    # Under the store's lock: a concurrent first use waits until the volume is whole (its
    # metadata says "no owner yet", not "made before owners existed").
    with _Locked(volumes_dir()):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            return path / "_data"
        (path / "_data").mkdir(mode=0o755)
        meta = {"name": name, "created": time.time(), "anonymous": anonymous, "container": container, "owner": None}
        _write_meta(name, meta)
    return path / "_data"


def _write_meta(name: str, meta: dict[str, Any]) -> None:
    path = volume_dir(name) / META
    tmp = path.with_name(f"{META}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path)


def read_meta(name: str) -> dict[str, Any]:
    """The volume's metadata. No `owner` key (a volume made before owners existed, or whose
    metadata was lost): root, as it was then."""
    try:
        data: dict[str, Any] = json.loads((volume_dir(name) / META).read_text())
        return data
    except FileNotFoundError:
        if volume_dir(name).is_dir():
            return {"name": name, "created": None, "anonymous": False, "container": None}
        raise NotFoundError(f"no such volume: {name}") from None


ROOT: tuple[int, None] = (0, None)


def recorded_owner(meta: dict[str, Any]) -> tuple[int, int | None] | None:
    """(first host ID, size; None: root, the host's IDs as they are), or None: not decided yet."""
    if "owner" not in meta:
        return ROOT
    owner = meta["owner"]
    if owner is None:
        return None
    return int(owner[0]), None if owner[1] is None else int(owner[1])


def owner_of(name: str, id_range: tuple[int, int] | None) -> tuple[int, int | None]:
    """The volume's owner (first host ID, size; size None: root), decided now if this is the
    first container to mount it: with `id_range` (its user namespace's), that range owns it."""
    from machinectl_py import userns

    with _Locked(volume_dir(name)):
        meta = read_meta(name)
        owner = recorded_owner(meta)
        if owner is not None:
            return owner
        holder = userns.volume_holder(name)
        userns.release(holder)  # a hold a kill -9 left before the owner was recorded
        with os.scandir(data_dir(name)) as entries:
            filled = any(entries)
        if id_range is None or filled:
            owner = ROOT  # files put in by hand keep their owners, as in a bind mount
        else:
            base, size = owner = id_range
            userns.share(holder, base, size)  # first: gc frees a hold the record then lacks
            os.chown(data_dir(name), base, base)
        _write_meta(name, {**meta, "owner": list(owner)})
        return owner


def idmap_of(owner: tuple[int, int | None], id_range: tuple[int, int] | None) -> tuple[int, int] | None:
    """How a container with `id_range` mounts a volume of `owner` (plan.Bind.ids): on-disk
    owner+N is its N, for N up to the smaller range; None: with its own mapping (root's
    volume: on-disk N is its N), or plainly (no user namespace)."""
    first, size = owner
    if id_range is None or size is None:
        return None
    return first, min(size, id_range[1])


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


def bind_ops(spec: ContainerSpec, id_range: tuple[int, int] | None = None) -> list[Any]:
    """The container's volumes as plan.Bind ops; creates named volumes on first use and
    decides their owners (owner_of) with `id_range`, the container's user namespace's.

    Anonymous volumes must have been created first (create_anonymous)."""
    from machinectl_py.plan import Bind

    ops = []
    for vol in spec.volumes:
        if vol.source is None:
            raise UsageError(f"volume {vol.target}: anonymous volume was not created (internal error)")
        ids = None
        if vol.source.startswith("/"):
            if not os.path.exists(vol.source):
                raise UsageError(f"volume {format_volume(vol)}: the host path {vol.source} does not exist")
            source = vol.source
        else:
            source = str(ensure_volume(vol.source))
            ids = idmap_of(owner_of(vol.source, id_range), id_range)
        ops.append(Bind(source=source, target=vol.target, read_only=vol.read_only, ids=ids))
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
    _delete(name)
    if volume_dir(name).exists():
        raise PymachineError(f"volume {name}: could not remove all of {volume_dir(name)}")


def _delete(name: str) -> None:
    """The volume's data first and its metadata last, then its hold on a range: a kill -9 on
    the way leaves a volume `volume rm` still lists and removes, or a hold `gc` frees."""
    from machinectl_py import userns

    path = volume_dir(name)
    shutil.rmtree(path / "_data", ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
    if not path.exists():
        userns.release(userns.volume_holder(name))


def prune() -> list[str]:
    """Remove every volume no container uses; returns their names."""
    from machinectl_py import state

    used = {v.source for r in state.list_records() for v in r.spec.volumes}
    removed = []
    for name in list_volumes():
        if name not in used:
            _delete(name)
            removed.append(name)
    return removed


def remove_anonymous(spec: ContainerSpec) -> None:
    for name in anonymous_names(spec):
        _delete(name)


def free_stale_holds() -> list[str]:
    """`gc`: a volume's hold on a range its metadata does not record as its owner (a kill -9
    between userns.share and the record, in owner_of); holds of removed volumes are
    userns.free_orphans'. Read under the volume's lock: an owner being decided is never cut."""
    from machinectl_py import userns

    lines = []
    for slot, holders in userns.claims().items():
        for holder in holders:
            name = holder.removeprefix(userns.VOLUME_PREFIX)
            if name == holder or not volume_dir(name).is_dir():
                continue
            with _Locked(volume_dir(name)):
                owner = recorded_owner(read_meta(name))
                first, size = owner if owner is not None else ROOT
                if size is not None and first <= slot < first + size:
                    continue
                userns.free_hold(holder, slot)
            lines.append(f"freed user ID range {slot}-{slot + userns.SLOT - 1} that volume {name} "
                         "held without owning it (an interrupted first mount)")
    return lines
