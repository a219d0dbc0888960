"""The image store: content-addressed read-only layers and the images made of them.

The runtime needs only `resolve()`: an image name -> its layer directories (bottom first)
and its config. Everything else (import, export, commit, tags, prune) lives in the
submodules and is reached from `machinectl_py.images.cli`.

`resolve()` has a fast path for the common case, a tagged image already in the store:
it reads repositories.json and the image's config with nothing but os and json, because
`machinectl_py.images.store` (hashlib, pathlib, re, dataclasses) costs ~25 ms to import
and `pymachine run` must start faster than systemd-nspawn. Anything else (ids, the
built-in image's first use, damage) goes through the store itself.
"""

from __future__ import annotations

import json
import os

from machinectl_py.paths import state_path
from machinectl_py.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


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


def resolve(name: str) -> ResolvedImage:
    """Find an image by name[:tag] or id; creates the built-in `busybox` image on first use.

    Raises machinectl_py.errors.NotFoundError when there is no such image.
    """
    found = _resolve_tagged(name)
    if found is not None:
        return found
    from machinectl_py.images.store import resolve_image

    return resolve_image(name)


def _resolve_tagged(ref: str) -> ResolvedImage | None:
    if "@" in ref or ref.startswith("sha256:") or not ref:
        return None
    last = ref.rsplit("/", 1)[-1]
    tagged = ref if ":" in last else f"{ref}:latest"
    try:
        with open(state_path("repositories.json")) as f:
            image_id = json.load(f).get(tagged)
        if not isinstance(image_id, str) or not image_id.startswith("sha256:"):
            return None
        with open(state_path("images", "sha256", image_id[7:] + ".json")) as f:
            config = json.load(f)
        diff_ids = tuple(config["rootfs"]["diff_ids"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    layers = []
    for diff_id in diff_ids:
        layer = state_path("layers", "sha256", str(diff_id)[7:], "diff")
        if not os.path.isdir(layer):
            return None  # let the store report the damage
        layers.append(layer)
    return ResolvedImage(id=image_id, name=tagged, layers=tuple(layers), diff_ids=diff_ids,
                         config=config_from_oci(config))
