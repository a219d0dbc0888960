"""Errors of the image store. All are PymachineError, so the CLI prints them as one line."""

from __future__ import annotations

from machinectl_py.errors import ConflictError, NotFoundError, PymachineError


class ImageError(PymachineError):
    """A well-formed request the store cannot satisfy (damaged store, unsupported format...)."""


class BadArchiveError(ImageError):
    """An archive or image layout is malformed, hostile or fails its digests. Nothing was registered."""


class ImageNotFoundError(NotFoundError):
    """No image by that name, tag or id."""


class ImageInUseError(ConflictError):
    """The image is used by a container."""
