"""The image store: content-addressed read-only layers and the images made of them.

The runtime needs only `resolve()`: an image name -> its layer directories (bottom first)
and its config. Everything else (import, export, commit, tags, prune) lives in the
submodules and is reached from `machinectl_py.images.cli`.

`resolve()` has a fast path for the common case, a tagged image already in the store:
the store keeps a marshal index of its tags (runtime-index.marshal, rewritten with
repositories.json and valid only for the repositories.json it was made from), because
`machinectl_py.images.store` (hashlib, pathlib, re, dataclasses, json) costs ~25 ms to
import and `pymachine run` must start faster than systemd-nspawn. Anything else (ids,
the built-in image's first use, a stale index, damage) goes through the store itself.
"""

from __future__ import annotations

import os

from machinectl_py.errors import NotFoundError
from machinectl_py.paths import state_path
from machinectl_py.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


# An image config without Env gets this PATH (docker's default).
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageConfig(Record):
    __slots__ = ("entrypoint", "cmd", "env", "workdir", "user")
    _defaults = {"entrypoint": (), "cmd": (), "env": {}, "workdir": None, "user": None}
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: Mapping[str, str]
    workdir: str | None
    user: str | None


class ResolvedImage(Record):
    __slots__ = ("id", "name", "layers", "diff_ids", "config")
    id: str  # "sha256:<hex>" of the image config
    name: str  # as the user gave it, normalised to name:tag
    layers: tuple[str, ...]  # unpacked layer directories, bottom layer first
    diff_ids: tuple[str, ...]  # "sha256:<hex>" of each layer's uncompressed tar, same order
    config: ImageConfig


def config_from_oci(config: dict[str, Any]) -> ImageConfig:
    """The runtime's view of an OCI image config's `config` object."""
    c = config.get("config") or {}
    env: dict[str, str] = {}
    for item in c.get("Env") or []:
        if isinstance(item, str):
            key, _, value = item.partition("=")
            env[key] = value
    return ImageConfig(
        entrypoint=tuple(str(x) for x in c.get("Entrypoint") or ()),
        cmd=tuple(str(x) for x in c.get("Cmd") or ()),
        env=env,
        workdir=c.get("WorkingDir") or None,
        user=c.get("User") or None,
    )


RUNTIME_INDEX = "runtime-index.marshal"


def index_key(repositories_file: str) -> tuple[int, int, int] | None:
    """Identity of repositories.json: the index is valid only for the file it was made from."""
    try:
        st = os.stat(repositories_file)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def index_entry(image_id: str, diff_ids: tuple[str, ...], oci_config: dict[str, Any]) -> tuple[Any, ...]:
    c = config_from_oci(oci_config)
    return (image_id, tuple(diff_ids), (c.entrypoint, c.cmd, dict(c.env), c.workdir, c.user))


def resolve(name: str) -> ResolvedImage:
    """Find an image by name[:tag] or id; creates the built-in `busybox` image on first use.

    Raises machinectl_py.errors.NotFoundError when there is no such image.
    """
    found = _resolve_from_index(name)
    if found is not None:
        return found
    from machinectl_py.images.lookup import resolve_image
    from machinectl_py.images.store import Store

    image = resolve_image(name)
    Store().write_runtime_index()  # so the next start takes the fast path
    return image


def ensure(ref: str, policy: str, tls_verify: bool | None = None) -> str:
    """docker's `run --pull POLICY` and `create --pull`: the reference to give resolve(), after
    pulling the image when the policy says so (always; missing: when the store lacks it; never:
    a missing image is "no such image"). A pulled short name comes back fully qualified."""
    if policy != "always":
        try:
            resolve(ref)
            return ref
        except NotFoundError:
            if policy == "never":
                raise
    from machinectl_py.images import pull

    return pull.for_run(ref, always=policy == "always", tls_verify=tls_verify)


def _resolve_from_index(ref: str) -> ResolvedImage | None:
    """The fast path: one stat and one marshal.load, no JSON (json imports re: ~15 ms)."""
    import marshal

    if "@" in ref or ref.startswith("sha256:") or not ref:
        return None
    last = ref.rsplit("/", 1)[-1]
    tagged = ref if ":" in last else f"{ref}:latest"
    try:
        with open(state_path(RUNTIME_INDEX), "rb") as f:
            index = marshal.load(f)
        if index.get("key") != index_key(state_path("repositories.json")):
            return None
        image_id, diff_ids, (entrypoint, cmd, env, workdir, user) = index["tags"][tagged]
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return None
    layers = []
    for diff_id in diff_ids:
        layer = state_path("layers", "sha256", str(diff_id)[7:], "diff")
        if not os.path.isdir(layer):
            return None  # let the store report the damage
        layers.append(layer)
    config = ImageConfig(entrypoint=entrypoint, cmd=cmd, env=env, workdir=workdir, user=user)
    return ResolvedImage(id=image_id, name=tagged, layers=tuple(layers), diff_ids=diff_ids, config=config)
