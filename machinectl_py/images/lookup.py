"""Finding an image in the store by reference, the built-in one included.

Apart from the store and the built-in image's builder, which both need the store: so that
neither imports the other (no import loop, see the import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

import contextlib

from machinectl_py.errors import UsageError
from machinectl_py.images import ResolvedImage
from machinectl_py.images.errors import ImageNotFoundError
from machinectl_py.images.store import Store, digest_reference, image_config_of, normalize_reference


def find_image(store: Store, ref: str) -> str:
    """Store.lookup, creating the built-in image when it is asked for and not there yet."""
    try:
        return store.lookup(ref)
    except ImageNotFoundError:
        from machinectl_py.images import builtin

        if not builtin.is_builtin(ref):
            raise
        return builtin.ensure_busybox(store)


def resolve_image(ref: str) -> ResolvedImage:
    """The runtime's entry point: layers bottom-first and config for an image reference."""
    store = Store()
    image_id = find_image(store, ref)
    record = store.record(image_id)
    layers = []
    for diff_id in record.diff_ids:
        diff = store.layer_dir(diff_id) / "diff"
        if not diff.is_dir():
            diff = store.unpack_layer(diff_id, ref)
        layers.append(str(diff))
    display = image_id
    with contextlib.suppress(UsageError):
        normal = digest_reference(ref) if "@" in ref else normalize_reference(ref)
        if normal in record.tags or "@" in normal:
            display = normal
    return ResolvedImage(
        id=image_id,
        name=display,
        layers=tuple(layers),  # strings: the start-up path avoids pathlib
        diff_ids=record.diff_ids,
        config=image_config_of(record.config),
    )
