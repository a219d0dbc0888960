"""The image store: content-addressed read-only layers and the images made of them.

The runtime needs only `resolve()`: an image name -> its layer directories (bottom first)
and its config. Everything else (import, export, commit, tags, prune) lives in the
submodules and is reached from `machinectl_py.images.cli`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None


@dataclasses.dataclass(frozen=True)
class ResolvedImage:
    id: str  # "sha256:<hex>" of the image config
    name: str  # as the user gave it, normalised to name:tag
    layers: tuple[Path, ...]  # unpacked layer directories, bottom layer first
    diff_ids: tuple[str, ...]  # "sha256:<hex>" of each layer's uncompressed tar, same order
    config: ImageConfig


def resolve(name: str) -> ResolvedImage:
    """Find an image by name[:tag] or id; creates the built-in `busybox` image on first use.

    Raises machinectl_py.errors.NotFoundError when there is no such image.
    """
    from machinectl_py.images.store import resolve_image

    return resolve_image(name)
