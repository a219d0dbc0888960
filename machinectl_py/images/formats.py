"""Image formats: find the images in a docker-archive or OCI layout, and decompress their layers.

Both formats are read from a directory: an OCI layout directory given by the user, or the
tree that `archive.extract_layer` made from an archive file in a private staging directory
(extracting is safe, see archive.py, so the outer tar needs no second parser). Every path a
manifest names is opened with `open_confined`, which resolves symlinks itself and refuses
anything that leaves the directory. Every digest a manifest states is checked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import stat
import threading
from typing import Any

from machinectl_py.images.archive import CHUNK, O_DIR, FileSource, Readable
from machinectl_py.images.errors import BadArchiveError

HEX64 = re.compile(r"[0-9a-f]{64}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
MAX_JSON = 8 << 20
MAX_SYMLINKS = 40
MAX_LAYERS = 499  # overlayfs stacks at most 500 layers, and the container's upper dir is one

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST)
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST)
LAYER_TYPES = (
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER + "+gzip",
    MEDIA_OCI_LAYER + "+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
)
ANNOTATION_REF = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"


@dataclasses.dataclass(frozen=True)
class LayerRef:
    """Where one layer's blob is, and what its digests must be."""

    path: str  # relative to the source directory
    diff_id: str  # sha256 of the uncompressed tar, from the image config
    digest: str | None = None  # sha256 of the blob as stored (OCI), None when not stated (docker-archive)
    size: int | None = None


@dataclasses.dataclass(frozen=True)
class FoundImage:
    config: bytes  # the config JSON, byte for byte: its sha256 is the image id
    layers: tuple[LayerRef, ...]
    names: tuple[str, ...]  # references the source gives the image (RepoTags, annotations)
    # What `SOURCE:TAG` may pick it by (skopeo's oci:DIR:TAG): OCI ref.name annotations as
    # written (often a bare tag), docker-archive RepoTags.
    ref_names: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Confined file access


def open_confined(root_fd: int, path: str, what: str) -> int:
    """Open `path` below `root_fd`, resolving symlinks ourselves so nothing leaves the root."""
    if "\0" in path or not path:
        raise BadArchiveError(f"{what} names an invalid path {path!r}")
    if path.startswith("/"):
        raise BadArchiveError(f"{what} names an absolute path {path!r}, outside the archive")
    stack: list[int] = [os.dup(root_fd)]
    pending = [p for p in path.split("/") if p and p != "."]
    pending.reverse()
    links = 0
    try:
        while pending:
            part = pending.pop()
            if part == "..":
                if len(stack) == 1:
                    raise BadArchiveError(f"{what} path {path!r} points outside the archive")
                os.close(stack.pop())
                continue
            try:
                fd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
            except FileNotFoundError:
                raise BadArchiveError(f"{what} {path!r} is missing from the archive") from None
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                links += 1
                if links > MAX_SYMLINKS:
                    raise BadArchiveError(f"{what} path {path!r} has too many symlinks")
                target = os.readlink(part, dir_fd=stack[-1])
                if target.startswith("/"):
                    raise BadArchiveError(f"{what} path {path!r} goes through an absolute symlink")
                pending.extend(reversed([p for p in target.split("/") if p and p != "."]))
                continue
            if pending and not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise BadArchiveError(f"{what} path {path!r} is not a file in the archive")
            stack.append(fd)
        if len(stack) == 1:
            raise BadArchiveError(f"{what} path {path!r} is not a file in the archive")
        if not stat.S_ISREG(os.fstat(stack[-1]).st_mode):
            raise BadArchiveError(f"{what} {path!r} is not a regular file")
        # Reopen the O_PATH fd for reading through /proc: no path walk happens there.
        return os.open(f"/proc/self/fd/{stack[-1]}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        for fd in stack:
            os.close(fd)


def read_json(root_fd: int, path: str, what: str, digest: str | None = None) -> tuple[Any, bytes]:
    fd = open_confined(root_fd, path, what)
    try:
        size = os.fstat(fd).st_size
        if size > MAX_JSON:
            raise BadArchiveError(f"{what} {path!r} is too large ({size} bytes)")
        data = os.pread(fd, size + 1, 0)
    finally:
        os.close(fd)
    if digest is not None and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise BadArchiveError(f"{what} {path!r} does not match its digest {digest}")
    try:
        return json.loads(data), data
    except (ValueError, UnicodeDecodeError):
        raise BadArchiveError(f"{what} {path!r} is not valid JSON") from None


def exists(root_fd: int, name: str) -> bool:
    try:
        st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode)


def detect_layout(root_fd: int) -> str | None:
    """"docker-archive", "oci" or None (a plain root filesystem)."""
    if exists(root_fd, "manifest.json"):
        return "docker-archive"
    if exists(root_fd, "oci-layout") and exists(root_fd, "index.json"):
        return "oci"
    return None


# ---------------------------------------------------------------------------------------------
# Configs and manifests


def _check_digest(value: Any, what: str) -> str:
    if not isinstance(value, str) or not DIGEST_RE.fullmatch(value):
        raise BadArchiveError(f"{what} has an unsupported or invalid digest {value!r}")
    return value


def config_diff_ids(config: Any, what: str) -> list[str]:
    if not isinstance(config, dict):
        raise BadArchiveError(f"{what} is not a JSON object")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" or not isinstance(
        rootfs.get("diff_ids"), list
    ):
        raise BadArchiveError(f"{what} has no rootfs.diff_ids")
    if len(rootfs["diff_ids"]) > MAX_LAYERS:
        raise BadArchiveError(f"{what} has {len(rootfs['diff_ids'])} layers; at most {MAX_LAYERS} are supported")
    return [_check_digest(d, f"{what} diff_id") for d in rootfs["diff_ids"]]


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def read_docker_archive(root_fd: int) -> list[FoundImage]:
    manifest, _ = read_json(root_fd, "manifest.json", "manifest")
    if not isinstance(manifest, list) or not manifest:
        raise BadArchiveError("manifest.json of the docker archive lists no image")
    images = []
    for i, item in enumerate(manifest):
        what = f"manifest.json entry {i}"
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str) or not isinstance(
            item.get("Layers"), list
        ):
            raise BadArchiveError(f"{what} has no Config or Layers")
        config_path: str = item["Config"]
        # The config's name is its digest (`<hex>.json` or `blobs/sha256/<hex>`): check it when so.
        stem = config_path.rsplit("/", 1)[-1].removesuffix(".json")
        expected = "sha256:" + stem if HEX64.fullmatch(stem) else None
        config, raw = read_json(root_fd, config_path, "image config", expected)
        diff_ids = config_diff_ids(config, f"image config {config_path!r}")
        layer_paths = item["Layers"]
        if len(layer_paths) != len(diff_ids) or not all(isinstance(p, str) for p in layer_paths):
            raise BadArchiveError(
                f"{what} lists {len(layer_paths)} layers but its config has {len(diff_ids)}")
        tags = item.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise BadArchiveError(f"{what} has invalid RepoTags")
        layers = tuple(LayerRef(path=p, diff_id=d) for p, d in zip(layer_paths, diff_ids, strict=True))
        images.append(FoundImage(config=raw, layers=layers, names=tuple(tags), ref_names=tuple(tags)))
    return images


def read_oci_layout(root_fd: int) -> list[FoundImage]:
    layout, _ = read_json(root_fd, "oci-layout", "oci-layout file")
    if not isinstance(layout, dict) or not isinstance(layout.get("imageLayoutVersion"), str):
        raise BadArchiveError("oci-layout file has no imageLayoutVersion")
    index, _ = read_json(root_fd, "index.json", "OCI index")
    # One manifest may be listed several times, once per tag: read it once, with all its names.
    by_digest: dict[str, FoundImage] = {}
    for descriptor in _manifests_of(root_fd, index, "index.json", depth=0):
        image = _read_oci_manifest(root_fd, descriptor)
        seen = by_digest.get(descriptor["digest"])
        if seen is not None:
            image = dataclasses.replace(seen, names=seen.names + image.names,
                                        ref_names=seen.ref_names + image.ref_names)
        by_digest[descriptor["digest"]] = image
    images = list(by_digest.values())
    if not images:
        raise BadArchiveError("the OCI index lists no image manifest")
    return images


def _descriptor(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("mediaType", ""), str):
        raise BadArchiveError(f"{what} is not a valid descriptor")
    _check_digest(value.get("digest"), what)
    size = value.get("size")
    if not isinstance(size, int) or size < 0:
        raise BadArchiveError(f"{what} has an invalid size")
    return value


def _manifests_of(root_fd: int, index: Any, what: str, depth: int) -> list[dict[str, Any]]:
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise BadArchiveError(f"{what} has no manifests list")
    found: list[dict[str, Any]] = []
    for i, raw in enumerate(index["manifests"]):
        d = _descriptor(raw, f"{what} manifest {i}")
        media = d.get("mediaType", "")
        if media in INDEX_TYPES:
            if depth >= 2:
                raise BadArchiveError(f"{what}: image indexes nest too deeply")
            nested, _ = _read_blob_json(root_fd, d, "nested index")
            chosen = _pick_platform(_manifests_of(root_fd, nested, "nested index", depth + 1))
            found.extend(_inherit_annotations(c, d) for c in chosen)
        elif media in MANIFEST_TYPES or media == "":
            found.append(d)
        # Other artefacts (signatures, attestations) are not images: skip them.
    return found


def _inherit_annotations(child: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    annotations = dict(child.get("annotations") or {})
    for key, value in (parent.get("annotations") or {}).items():
        annotations.setdefault(key, value)
    return {**child, "annotations": annotations}


def _pick_platform(descriptors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """From a multi-platform index, the manifest for this host (or the only one)."""
    if len(descriptors) <= 1:
        return descriptors
    arch = host_architecture()
    for d in descriptors:
        platform = d.get("platform") or {}
        if platform.get("os", "linux") == "linux" and platform.get("architecture") == arch:
            return [d]
    raise BadArchiveError(f"the image index has no manifest for linux/{arch}")


def host_architecture() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def _read_blob_json(root_fd: int, descriptor: dict[str, Any], what: str) -> tuple[Any, bytes]:
    value, raw = read_json(root_fd, _blob_path(descriptor["digest"]), what, descriptor["digest"])
    if len(raw) != descriptor["size"]:
        raise BadArchiveError(f"{what} {descriptor['digest']} has size {len(raw)}, not {descriptor['size']}")
    return value, raw


def _read_oci_manifest(root_fd: int, descriptor: dict[str, Any]) -> FoundImage:
    manifest, _ = _read_blob_json(root_fd, descriptor, "image manifest")
    if not isinstance(manifest, dict) or manifest.get("mediaType", MEDIA_OCI_MANIFEST) not in MANIFEST_TYPES:
        raise BadArchiveError(f"image manifest {descriptor['digest']} is not an image manifest")
    config_d = _descriptor(manifest.get("config"), "manifest config")
    config, raw_config = _read_blob_json(root_fd, config_d, "image config")
    diff_ids = config_diff_ids(config, f"image config {config_d['digest']}")
    layers_raw = manifest.get("layers")
    if not isinstance(layers_raw, list) or len(layers_raw) != len(diff_ids):
        raise BadArchiveError(f"image manifest {descriptor['digest']} lists other layers than its config")
    layers = []
    for i, (raw, diff_id) in enumerate(zip(layers_raw, diff_ids, strict=True)):
        d = _descriptor(raw, f"layer {i}")
        if d.get("mediaType") not in LAYER_TYPES:
            raise BadArchiveError(f"layer {i} has unsupported media type {d.get('mediaType')!r}")
        layers.append(
            LayerRef(path=_blob_path(d["digest"]), diff_id=diff_id, digest=d["digest"], size=d["size"]))
    annotations = descriptor.get("annotations") or {}
    names = []
    if isinstance(annotations.get(ANNOTATION_CONTAINERD_NAME), str):
        names.append(annotations[ANNOTATION_CONTAINERD_NAME])
    elif isinstance(annotations.get(ANNOTATION_REF), str) and ":" in annotations[ANNOTATION_REF]:
        # A bare ref name is only a tag (umoci, skopeo): it names no repository, so it is not used.
        names.append(annotations[ANNOTATION_REF])
    ref_names = (annotations[ANNOTATION_REF],) if isinstance(annotations.get(ANNOTATION_REF), str) else ()
    return FoundImage(config=raw_config, layers=tuple(layers), names=tuple(names), ref_names=ref_names)


def read_layout(root_fd: int, kind: str) -> list[FoundImage]:
    return read_docker_archive(root_fd) if kind == "docker-archive" else read_oci_layout(root_fd)


# ---------------------------------------------------------------------------------------------
# Compression


COMPRESSORS = {
    b"\x1f\x8b": ("gzip", ["gzip", "-d", "-c"]),
    b"\xfd7zXZ\x00": ("xz", ["xz", "-d", "-c", "-T1"]),
    b"\x28\xb5\x2f\xfd": ("zstd", ["zstd", "-d", "-c", "-q"]),
    b"BZh": ("bzip2", ["bzip2", "-d", "-c"]),
}


def detect_compression(fd: int, offset: int = 0) -> tuple[str, list[str]] | None:
    magic = os.pread(fd, 6, offset)
    for prefix, tool in COMPRESSORS.items():
        if magic.startswith(prefix):
            return tool
    return None


class BlobStream:
    """A blob's uncompressed bytes as a Readable, hashing the blob as stored on the way.

    Compressed blobs are decompressed by the standard tool in a child process (which also
    puts decompression on another core); a thread feeds it while hashing what it feeds.
    """

    def __init__(self, fd: int, what: str, offset: int = 0, length: int | None = None) -> None:
        self._what = what
        self._length = os.fstat(fd).st_size - offset if length is None else length
        self._fd = fd
        self._offset = offset
        self.compression: str | None = None
        self._blob_hash = hashlib.sha256()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        tool = detect_compression(fd, offset)
        if tool is None:
            self.readable: Readable = FileSource(fd, offset, self._length)
            self._proc = None
            return
        import subprocess

        self.compression, argv = tool
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
        except FileNotFoundError:
            raise BadArchiveError(
                f"{what} is {self.compression}-compressed but {argv[0]} is not installed") from None
        assert self._proc.stdout is not None
        self.readable = self._proc.stdout  # type: ignore[assignment]  # BufferedReader has readinto
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        pos, end = self._offset, self._offset + self._length
        try:
            while pos < end:
                n = os.preadv(self._fd, [view[: min(CHUNK, end - pos)]], pos)
                if n <= 0:
                    break
                self._blob_hash.update(view[:n])
                self._proc.stdin.write(view[:n])
                pos += n
        except BrokenPipeError:
            pass
        except BaseException as e:  # reported by finish()
            self._error = e
        finally:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()

    def finish(self, uncompressed_digest: str) -> str:
        """Wait for the decompressor; returns the blob's digest as stored."""
        if self._proc is None:
            return uncompressed_digest
        assert self._thread is not None
        self._thread.join()
        assert self._proc.stdout is not None
        leftover = self._proc.stdout.read(1)
        rc = self._proc.wait()
        if self._error is not None:
            raise self._error
        # gzip exits 2 for warnings such as trailing zeros; the digest check still covers every byte.
        if (rc != 0 and not (self.compression == "gzip" and rc == 2)) or leftover:
            raise BadArchiveError(f"{self._what}: corrupt {self.compression} data")
        return "sha256:" + self._blob_hash.hexdigest()

    def abort(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            if self._thread is not None:
                self._thread.join()
            for f in (self._proc.stdout, self._proc.stdin):
                if f is not None:
                    try:
                        f.close()
                    except OSError as e:
                        if e.errno != errno.EPIPE:
                            raise


def open_dir(path: str) -> int:
    try:
        return os.open(path, O_DIR & ~os.O_NOFOLLOW)
    except OSError as e:
        raise BadArchiveError(f"cannot open {path}: {e.strerror}") from None
