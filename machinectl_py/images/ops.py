"""Store operations: import, export, commit, tag, remove, prune.

Each one validates its arguments before touching anything, stages its work under tmp/ and
makes it visible in one short critical section (store.py explains the locks).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from machinectl_py import state
from machinectl_py.errors import NotFoundError, UsageError
from machinectl_py.images import DEFAULT_PATH_ENV, archive
from machinectl_py.images.archive import DEFAULT_LIMITS, Limits
from machinectl_py.images.errors import BadArchiveError, ImageError, ImageInUseError
from machinectl_py.images.lookup import find_image
from machinectl_py.images.store import (
    ImageRecord,
    Staging,
    Store,
    canonical_json,
    digest_reference,
    hex_of,
    normalize_reference,
    now_rfc3339,
    write_layer_info,
)
from machinectl_py.record import Record

if TYPE_CHECKING:
    from machinectl_py.images import formats

Progress = Callable[[int], None]


class Imported(Record):
    __slots__ = ("id", "tags", "new_layers", "reused_layers")
    id: str
    tags: tuple[str, ...]
    new_layers: int
    reused_layers: int


# ---------------------------------------------------------------------------------------------
# Import


def _source_tags(names: tuple[str, ...]) -> list[str]:
    """RepoTags from an archive, normalised; docker.io's implicit prefixes dropped, invalid ones ignored."""
    tags = []
    for name in names:
        for prefix in ("docker.io/library/", "docker.io/"):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        with contextlib.suppress(UsageError):
            tags.append(normalize_reference(name))
    return tags


def rootfs_config(diff_id: str, created: str, comment: str) -> dict[str, Any]:
    from machinectl_py.images import formats  # not at the top: commit, tag and rm do not need it

    return {
        "architecture": formats.host_architecture(),
        "os": "linux",
        "created": created,
        "config": {"Env": [DEFAULT_PATH_ENV]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": comment}],
    }


def _spool_stdin(staging: Staging) -> Path:
    path = staging.path / "stdin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        stdin = sys.stdin.buffer.fileno()
        while True:
            chunk = os.read(stdin, archive.CHUNK)
            if not chunk:
                break
            archive._write_all(fd, chunk)
    finally:
        os.close(fd)
    return path


def _stage(progress: Progress | None, label: str, total: int | None) -> None:
    """Tell a progress display (if it cares) that a new part of the work starts."""
    stage = getattr(progress, "stage", None)
    if stage is not None:
        stage(label, total)


def _extract_blob(
    staging: Staging, root_fd: int, layer: formats.LayerRef, index: int, limits: Limits,
    progress: Progress | None,
) -> Path:
    from machinectl_py.images import formats  # not at the top: commit, tag and rm do not need it

    fd = formats.open_confined(root_fd, layer.path, "layer")
    try:
        actual = os.fstat(fd).st_size
        if layer.size is not None and actual != layer.size:
            raise BadArchiveError(f"layer {layer.path!r} has size {actual}, its manifest says {layer.size}")
        _stage(progress, f"layer {index + 1}", None if formats.detect_compression(fd) else actual)
        stream = formats.BlobStream(fd, f"layer {layer.path!r}")
        path, layer_fd = staging.mkdir(f"layer{index}")
        try:
            diff_id, size, stats = archive.extract_layer(stream.readable, layer_fd, limits, progress)
            blob_digest = stream.finish(diff_id)
        except BaseException:
            stream.abort()
            os.close(layer_fd)
            raise
        try:
            if diff_id != layer.diff_id:
                raise BadArchiveError(
                    f"layer {layer.path!r} has diff_id {diff_id}, but the image config says {layer.diff_id}"
                )
            if layer.digest is not None and blob_digest != layer.digest:
                raise BadArchiveError(
                    f"layer {layer.path!r} has digest {blob_digest}, its manifest says {layer.digest}")
            write_layer_info(layer_fd, diff_id, size, stats)
        finally:
            os.close(layer_fd)
        return path
    finally:
        os.close(fd)


def import_image(
    source: str,
    name: str | None = None,
    *,
    progress: Progress | None = None,
    limits: Limits = DEFAULT_LIMITS,
    store: Store | None = None,
    comment: str = "pymachine image import",
) -> list[Imported]:
    """Import SOURCE (docker-archive, OCI layout dir or tar, rootfs tar; '-' is stdin).
    SOURCE:TAG picks the image of that tag from a layout or archive holding several."""
    from machinectl_py.images import formats  # not at the top: commit, tag and rm do not need it

    tags = [normalize_reference(name)] if name else None
    source, pick = split_source(source)
    store = (store or Store()).ensure()
    with store.gc_shared(), store.staging() as staging:
        path = str(_spool_stdin(staging)) if source == "-" else source
        staged: dict[str, Path] = {}
        root_fd = -1
        try:
            if os.path.isdir(path):
                root_fd = formats.open_dir(path)
                kind = formats.detect_layout(root_fd)
                if kind is None:
                    raise BadArchiveError(f"{source} is a directory but not an OCI image layout")
                found = formats.read_layout(root_fd, kind)
            else:
                found, root_fd = _import_archive_file(
                    path, source, staging, staged, limits, progress, comment)
            if pick is not None:
                found = pick_image(found, pick, source)
            if tags is not None and len(found) != 1:
                raise UsageError(f"{source} holds {len(found)} images; --name needs exactly one",
                                 hint=f"pick one by its tag: {source}:TAG")
            for img in found:
                for layer in img.layers:
                    if layer.diff_id in staged or store.has_layer(layer.diff_id):
                        continue
                    staged[layer.diff_id] = _extract_blob(
                        staging, root_fd, layer, len(staged), limits, progress)
        finally:
            if root_fd >= 0:
                os.close(root_fd)
        results = []
        with store.write_lock():
            fresh = {d for d in staged if not store.has_layer(d)}  # not installed meanwhile by another import
            store.install_layers(staged)
            for img in found:
                image_id = store.write_image(img.config)
                image_tags = tags if tags is not None else _source_tags(img.names)
                store.set_tags(image_id, image_tags)
                layers = {layer.diff_id for layer in img.layers}  # each image's own counts
                results.append(Imported(image_id, tuple(image_tags), len(layers & fresh), len(layers - fresh)))
        return results


def split_source(source: str) -> tuple[str, str | None]:
    """`PATH` or `PATH:TAG` (skopeo's oci:DIR:TAG, docker-archive:FILE:NAME:TAG): the longest
    existing path before a colon. A path that exists as given is never split."""
    if source == "-" or os.path.exists(source):
        return source, None
    colon = source.rfind(":")
    while colon > 0:
        if os.path.exists(source[:colon]) and source[colon + 1:]:
            return source[:colon], source[colon + 1:]
        colon = source.rfind(":", 0, colon)
    raise NotFoundError(f"{source}: no such file or directory")


def pick_image(found: list[formats.FoundImage], pick: str, source: str) -> list[formats.FoundImage]:
    """The images of `source` tagged `pick` (an OCI ref.name, or a docker-archive RepoTag)."""
    normal = None
    with contextlib.suppress(UsageError):
        normal = normalize_reference(pick)
    chosen = [img for img in found
              if pick in img.ref_names or (normal is not None and normal in _source_tags(img.ref_names))]
    if not chosen:
        listed = sorted({n for img in found for n in img.ref_names})
        raise NotFoundError(f"{source} has no image tagged {pick!r}",
                            hint=f"it has: {', '.join(listed) or 'no tagged image'}")
    return chosen


def _import_archive_file(
    path: str, source: str, staging: Staging, staged: dict[str, Path], limits: Limits,
    progress: Progress | None, comment: str,
) -> tuple[list[formats.FoundImage], int]:
    """Unpack an archive file once, safely; then it is either a layout to read, or the rootfs layer itself."""
    from machinectl_py.images import formats  # not at the top: commit, tag and rm do not need it

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"cannot open {source}: {e.strerror}") from None
    try:
        if os.fstat(fd).st_size == 0:  # a tar holds at least its end-of-archive blocks
            raise BadArchiveError(f"{'standard input' if source == '-' else source} is empty: "
                                  "not an image archive or a tarball")
        _stage(progress, "reading", None if formats.detect_compression(fd) else os.fstat(fd).st_size)
        stream = formats.BlobStream(fd, source)
        outer_path, outer_fd = staging.mkdir("outer")
        try:
            try:
                diff_id, size, stats = archive.extract_layer(stream.readable, outer_fd, limits, progress)
                stream.finish(diff_id)
            except BaseException:
                stream.abort()
                raise
            root_fd = os.open("diff", archive.O_DIR, dir_fd=outer_fd)
            kind = formats.detect_layout(root_fd)
            if kind is not None:
                try:
                    return formats.read_layout(root_fd, kind), root_fd
                except BaseException:
                    os.close(root_fd)
                    raise
            os.close(root_fd)
            write_layer_info(outer_fd, diff_id, size, stats)
        finally:
            os.close(outer_fd)
    finally:
        os.close(fd)
    staged[diff_id] = outer_path
    config = rootfs_config(diff_id, now_rfc3339(), comment)
    layer = formats.LayerRef(path="", diff_id=diff_id)
    return [formats.FoundImage(config=canonical_json(config), layers=(layer,), names=())], -1


# ---------------------------------------------------------------------------------------------
# Containers (the lead's state.py owns their records)


def container_image_ids() -> dict[str, str]:
    """container name -> the image id it was made from. The one place that reads container state."""
    from machinectl_py import state

    return {r.name: r.image_id for r in state.list_records()}


def containers_using(image_id: str) -> list[str]:
    return sorted(name for name, used in container_image_ids().items() if used == image_id)


# ---------------------------------------------------------------------------------------------
# Tag, remove, prune


def tag_image(source: str, target: str, store: Store | None = None) -> str:
    store = store or Store()
    ref = normalize_reference(target)
    image_id = find_image(store, source)
    with store.write_lock():
        store.set_tags(image_id, [ref])
    return ref


def _referenced_layers(store: Store) -> set[str]:
    used: set[str] = set()
    for image_id in store.all_image_ids():
        with contextlib.suppress(ImageError):
            used.update(store.record(image_id).diff_ids)
    return used


def _remove_unreferenced_layers(store: Store) -> tuple[int, int]:
    used = _referenced_layers(store)
    count = reclaimed = 0
    for diff_id in store.all_layers():
        if diff_id not in used:
            with contextlib.suppress(ImageError, ValueError):
                reclaimed += int(store.layer_info(diff_id).get("content_size", 0))
            store.remove_layer(diff_id)
            count += 1
    return count, reclaimed


def remove_images(refs: list[str], force: bool = False, store: Store | None = None) -> list[str]:
    """docker rmi: untag; delete the image (and its now unused layers) when no tag is left."""
    store = store or Store()
    messages: list[str] = []
    store.ensure()
    with store.gc_exclusive(), store.write_lock():
        for ref in refs:
            image_id = store.lookup(ref)
            repos = store.repositories()
            own_tags = sorted(t for t, i in repos.items() if i == image_id)
            if "@" in ref and (own_tags or len(store.repo_digests(image_id)) > 1):
                # docker rmi NAME@sha256:...: only that name goes while the image has others
                messages += [f"Untagged: {d}" for d in store.forget_digests(image_id, digest_reference(ref))]
                continue
            with contextlib.suppress(UsageError):
                normal = normalize_reference(ref)
                if normal in own_tags and len(own_tags) > 1:
                    del repos[normal]
                    store.save_repositories(repos)
                    messages.append(f"Untagged: {normal}")
                    messages += _forget_repository_digests(store, image_id, normal, own_tags)
                    continue
            users = containers_using(image_id)
            if users and not force:
                raise ImageInUseError(
                    f"image {ref} is used by container {', '.join(users)}",
                    hint="remove the container first, or use -f to remove the image's tags only",
                )
            for tag in own_tags:
                del repos[tag]
                messages.append(f"Untagged: {tag}")
            store.save_repositories(repos)
            messages += [f"Untagged: {d}" for d in store.forget_digests(image_id)]
            if users:
                continue  # forced: the containers keep their (now untagged) image
            store.remove_image(image_id)
            messages.append(f"Deleted: {image_id}")
        _remove_unreferenced_layers(store)
    return messages


def _forget_repository_digests(store: Store, image_id: str, removed: str, own_tags: list[str]) -> list[str]:
    """docker's rule: with the last tag of a repository go the image's digests in it."""
    name = removed.rpartition(":")[0]
    if any(t.rpartition(":")[0] == name for t in own_tags if t != removed):
        return []
    gone = [d for d in store.repo_digests(image_id) if d.rpartition("@")[0] == name]
    return [f"Untagged: {d}" for g in gone for d in store.forget_digests(image_id, g)]


def prune(store: Store | None = None) -> tuple[list[str], int, int]:
    """Remove untagged images no container uses, then layers no image uses."""
    store = (store or Store()).ensure()
    store.clean_tmp()
    removed: list[str] = []
    with store.gc_exclusive(), store.write_lock():
        repos = store.repositories()
        tagged = set(repos.values())  # a digest reference alone does not keep an image (docker's dangling)
        used = set(container_image_ids().values())
        for image_id in store.all_image_ids():
            if image_id not in tagged and image_id not in used:
                store.forget_digests(image_id)
                store.remove_image(image_id)
                removed.append(image_id)
        layers, reclaimed = _remove_unreferenced_layers(store)
    from machinectl_py.images import pull  # the bytes interrupted pulls kept to resume

    reclaimed += pull.remove_partial_downloads(store)
    return removed, layers, reclaimed


# ---------------------------------------------------------------------------------------------
# Export


class TarOut:
    """Writes a tar (ustar/pax headers from tarfile, data streamed by us) to an fd."""

    def __init__(self, fd: int, mtime: int) -> None:
        self._fd = fd
        self._mtime = mtime

    def _header(self, name: str, size: int, directory: bool = False) -> None:
        import tarfile

        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = self._mtime
        info.mode = 0o755 if directory else 0o644
        info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        archive._write_all(self._fd, info.tobuf(tarfile.PAX_FORMAT))

    def _pad(self, size: int) -> None:
        archive._write_all(self._fd, bytes(-size % archive.BLOCK))

    def add_dir(self, name: str) -> None:
        self._header(name.rstrip("/") + "/", 0, directory=True)

    def add_bytes(self, name: str, data: bytes) -> None:
        self._header(name, len(data))
        archive._write_all(self._fd, data)
        self._pad(len(data))

    def add_layer(self, name: str, store: Store, diff_id: str, size: int) -> None:
        """The layer's original tar, checked against its diff_id while written."""
        import hashlib

        self._header(name, size)
        digest = hashlib.sha256()
        written = 0

        def out(chunk: bytes | memoryview) -> None:
            nonlocal written
            digest.update(chunk)
            written += len(chunk)
            archive._write_all(self._fd, chunk)

        layer_fd = os.open(store.layer_dir(diff_id), archive.O_DIR)
        try:
            try:
                tar_fd = os.open("layer.tar", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=layer_fd)
            except FileNotFoundError:
                archive.replay_layer(layer_fd, out)  # unpacked: from its tar-split and diff/
            else:
                try:  # still packed (a commit not run yet): the tar itself
                    _copy_fd(tar_fd, out)
                finally:
                    os.close(tar_fd)
        finally:
            os.close(layer_fd)
        if written != size or "sha256:" + digest.hexdigest() != diff_id:
            raise ImageError(
                f"layer {diff_id} in the store is damaged (its content no longer matches its digest)")
        self._pad(size)

    def finish(self) -> None:
        archive._write_all(self._fd, bytes(2 * archive.BLOCK))


def _copy_fd(fd: int, out: Callable[[bytes | memoryview], None]) -> None:
    buf = bytearray(archive.CHUNK)
    view = memoryview(buf)
    while n := os.readv(fd, [view]):
        out(view[:n])


@contextlib.contextmanager
def _output(file: str) -> Iterator[int]:
    """An fd for FILE ('-' is stdout) that only appears under its name when complete."""
    if file == "-":
        yield sys.stdout.buffer.fileno()
        return
    target = Path(file)
    tmp = target.with_name(f".{target.name}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ImageError(f"cannot write {file}: {e.strerror}") from None
    try:
        yield fd
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def export_image(ref: str, file: str, fmt: str = "docker-archive", store: Store | None = None) -> ImageRecord:
    if fmt not in ("docker-archive", "oci"):
        raise UsageError(f"invalid export format {fmt!r}", hint="use docker-archive or oci")
    store = store or Store()
    record = store.record(find_image(store, ref))
    sizes = {d: int(store.layer_info(d)["size"]) for d in record.diff_ids}
    mtime = _created_epoch(record.created)
    tags = list(record.tags)
    with store.gc_shared(), _output(file) as fd:
        out = TarOut(fd, mtime)
        if fmt == "docker-archive":
            _export_docker(out, store, record, sizes, tags)
        else:
            _export_oci(out, store, record, sizes, tags)
        out.finish()
    return record


def _created_epoch(created: str) -> int:
    import datetime

    try:
        return int(datetime.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _export_docker(
    out: TarOut, store: Store, record: ImageRecord, sizes: dict[str, int], tags: list[str]
) -> None:
    config_name = hex_of(record.id) + ".json"
    layer_names = [hex_of(d) + ".tar" for d in record.diff_ids]
    for diff_id, name in dict(zip(record.diff_ids, layer_names, strict=True)).items():
        out.add_layer(name, store, diff_id, sizes[diff_id])
    out.add_bytes(config_name, record.raw_config)
    manifest = [{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]
    out.add_bytes("manifest.json", json.dumps(manifest).encode())


def _export_oci(
    out: TarOut, store: Store, record: ImageRecord, sizes: dict[str, int], tags: list[str]
) -> None:
    import hashlib

    from machinectl_py.images import formats  # not at the top: commit, tag and rm do not need it

    out.add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    out.add_dir("blobs")
    out.add_dir("blobs/sha256")
    for diff_id in dict.fromkeys(record.diff_ids):
        out.add_layer("blobs/sha256/" + hex_of(diff_id), store, diff_id, sizes[diff_id])
    out.add_bytes("blobs/sha256/" + hex_of(record.id), record.raw_config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": formats.MEDIA_OCI_MANIFEST,
        "config": {
            "mediaType": formats.MEDIA_OCI_CONFIG, "digest": record.id, "size": len(record.raw_config)
        },
        "layers": [
            {"mediaType": formats.MEDIA_OCI_LAYER, "digest": d, "size": sizes[d]} for d in record.diff_ids
        ],
    }
    raw_manifest = canonical_json(manifest)
    manifest_digest = "sha256:" + hashlib.sha256(raw_manifest).hexdigest()
    out.add_bytes("blobs/sha256/" + hex_of(manifest_digest), raw_manifest)
    descriptors = []
    for tag in [*tags] or [""]:
        d: dict[str, Any] = {
            "mediaType": formats.MEDIA_OCI_MANIFEST, "digest": manifest_digest, "size": len(raw_manifest),
        }
        if tag:
            d["annotations"] = {
                formats.ANNOTATION_CONTAINERD_NAME: tag,
                formats.ANNOTATION_REF: tag.rsplit(":", 1)[1],
            }
        descriptors.append(d)
    index = {"schemaVersion": 2, "mediaType": formats.MEDIA_OCI_INDEX, "manifests": descriptors}
    out.add_bytes("index.json", canonical_json(index))


# ---------------------------------------------------------------------------------------------
# Commit


# How commit freezes a running container's unit (freezer.frozen_unit, in the systemd layer):
# passed in by the caller, so the image store makes no D-Bus calls.
Freeze = Callable[[str], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def frozen(record: state.ContainerRecord, freeze: Freeze | None) -> Iterator[None]:
    """Freeze a running container while its upper dir is read, so the layer is one snapshot."""
    if record.state != "running" or not record.unit:
        yield
        return
    if freeze is None:
        raise ImageError(f"container {record.name} is running and this caller cannot freeze it",
                         hint=f"stop it first: pymachine stop {record.name}")
    with freeze(record.unit):
        yield


def commit_container(
    container_name: str,
    ref: str,
    *,
    progress: Progress | None = None,
    limits: Limits = DEFAULT_LIMITS,
    store: Store | None = None,
    message: str | None = None,
    freeze: Freeze | None = None,
) -> Imported:
    from machinectl_py.spec import validate_name

    target = normalize_reference(ref)
    container = state.load(validate_name(container_name))  # a name, never a path
    store = (store or Store()).ensure()
    base = store.record(container.image_id)
    upper = container.upper_dir
    try:
        upper_fd = os.open(upper, archive.O_DIR)
    except OSError as e:
        raise ImageError(f"cannot open the upper dir of container {container_name}: {e.strerror}") from None
    try:
        with store.gc_shared(), store.staging() as staging:
            layer_path, layer_fd = staging.mkdir("layer")
            try:
                with frozen(container, freeze):
                    # Packed: the layer is unpacked when a container first uses it (Store.unpack_layer).
                    diff_id, size, stats = archive.commit_layer(upper_fd, layer_fd, limits, progress)
                write_layer_info(layer_fd, diff_id, size, stats)
            finally:
                os.close(layer_fd)
            config = json.loads(base.raw_config)
            created = now_rfc3339()
            config["created"] = created
            config["rootfs"]["diff_ids"] = [*base.diff_ids, diff_id]
            config.setdefault("history", []).append(
                {"created": created, "created_by": message or f"pymachine commit {container.name}"}
            )
            config["container"] = container.id
            raw = canonical_json(config)
            with store.write_lock():
                # The layer's data is not synced (see the store's durability model): unpack_layer
                # checks its digest, so a layer torn by a power loss is refused, never used.
                store.install_layers({} if store.has_layer(diff_id) else {diff_id: layer_path}, sync_data=False)
                image_id = store.write_image(raw)
                store.set_tags(image_id, [target])
    finally:
        os.close(upper_fd)
    return Imported(image_id, (target,), 1, 0)
