"""`pymachine push`: an image from the store to a registry.

For each layer, the cheapest of: nothing (the registry has a blob the store knows holds this
layer: a HEAD answers 200), a cross-repository mount (the blob is in another repository of the
same registry: POST ...?mount=&from=), or an upload. An upload compresses the layer's tar with
`gzip -n` in a child process while it is sent (one PATCH with a chunked body, then the PUT
that names the digest, known only at the end), so a large layer is read once and never
written to disk compressed. The tar comes from the store as export reads it (archive.py's
replay of the original bytes), checked against the diff_id on the way: a damaged layer aborts
the upload before the PUT, so the registry never gets a blob under a wrong name.

Then the config blob and the manifest (tagged); the blobs used are remembered in
blob-info.json, so the next push of the same layers uploads nothing.

Formats, as podman's `push --format` and `--compression-format`: an OCI manifest, or a docker
v2 schema 2 manifest (`v2s2`; the default for an image whose layers were pulled in that form,
so pushing back what came from docker does not change its manifest type); gzip layers, or zstd
(OCI only: docker's format has no zstd type). A layer known in the other compression is
compressed anew; in the same compression, its blob is reused whatever the manifest type (the
bytes are the same, only the descriptor's mediaType changes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from machinectl_py.errors import UsageError
from machinectl_py.images import blobinfo, reference
from machinectl_py.images.errors import ImageError
from machinectl_py.images.reference import Reference
from machinectl_py.images.registry import AuthError, NotFound, RegistryError, Session

CHUNK = 1 << 20
FORMATS = ("oci", "v2s2")
COMPRESSIONS = ("gzip", "zstd")
MANIFEST_TYPE = {"oci": "application/vnd.oci.image.manifest.v1+json",
                 "v2s2": "application/vnd.docker.distribution.manifest.v2+json"}
CONFIG_TYPE = {"oci": "application/vnd.oci.image.config.v1+json",
               "v2s2": "application/vnd.docker.container.image.v1+json"}
LAYER_TYPE = {("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
              ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
              ("v2s2", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip"}
COMPRESS = {"gzip": ["gzip", "-c", "-n", "-6"], "zstd": ["zstd", "-c", "-q", "-3", "-T0"]}
DOCKER_PREFIX = "application/vnd.docker."


def compression_of(media_type: str) -> str | None:
    for kind in COMPRESSIONS:
        if media_type.endswith(f"+{kind}") or media_type.endswith(f".{kind}"):
            return kind
    return None


def default_format(store: Any, diff_ids: tuple[str, ...]) -> str:
    """v2s2 when the image's layers came as docker blobs (and none as OCI ones), else oci."""
    kinds = {e["mediaType"].startswith(DOCKER_PREFIX) for d in diff_ids for e in blobinfo.known(store, d)}
    return "v2s2" if kinds == {True} else "oci"


def check_format(fmt: str | None, compression: str | None) -> None:
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"unknown manifest format {fmt!r}", hint="use oci or v2s2")
    if compression is not None and compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression format {compression!r}", hint="use gzip or zstd")
    if fmt == "v2s2" and compression == "zstd":
        raise UsageError("docker's v2s2 format has no zstd layers", hint="push zstd with --format oci")


@dataclasses.dataclass(frozen=True)
class Pushed:
    ref: Reference
    digest: str
    uploaded: int
    mounted: int
    skipped: int


def destination_ref(image: str, destination: str | None) -> Reference:
    text = destination or image
    parsed = reference.parse(text)
    if parsed.registry is None:
        raise UsageError(f"{text!r} names no registry",
                         hint="push to a full reference: pymachine push IMAGE REGISTRY[:PORT]/NAME[:TAG]")
    if parsed.digest:
        raise UsageError(f"cannot push to a digest ({text!r}): name a tag")
    return parsed.qualify(parsed.registry)


def push(image: str, destination: str | None, *, tls_verify: bool | None = None, progress: Any = None,
         store: Any = None, fmt: str | None = None, compression: str | None = None) -> Pushed:
    from machinectl_py.images import authfile
    from machinectl_py.images.lookup import find_image
    from machinectl_py.images.store import Store

    check_format(fmt, compression)
    ref = destination_ref(image, destination)
    store = store or Store()
    record = store.record(find_image(store, image))
    if fmt is None:
        fmt = "oci" if compression == "zstd" else default_format(store, record.diff_ids)
    kind = (fmt, compression or "gzip")
    registries = reference.load_registries()
    if registries.blocked(ref):
        raise ImageError(f"{ref.registry} is blocked in registries.conf")
    insecure = registries.insecure(ref) if tls_verify is None else not tls_verify
    sources = _mount_sources(store, record.diff_ids, ref)
    session = Session(ref.registry, insecure=insecure, credentials=authfile.lookup(ref.registry, ref.repository),
                      scopes=[f"repository:{ref.repository}:pull,push", *(f"repository:{s}:pull" for s in sources)])
    counts = {"uploaded": 0, "mounted": 0, "skipped": 0}
    descriptors: dict[str, dict[str, Any]] = {}
    with store.gc_shared():
        for diff_id in dict.fromkeys(record.diff_ids):
            descriptors[diff_id] = _push_layer(session, ref, store, diff_id, counts, progress, kind)
    if progress is not None:
        progress.done()
    config_digest = _put_small_blob(session, ref, record.raw_config)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE[fmt],
        "config": {"mediaType": CONFIG_TYPE[fmt], "digest": config_digest, "size": len(record.raw_config)},
        "layers": [descriptors[d] for d in record.diff_ids],
    }
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    with session.request("PUT", f"/v2/{ref.repository}/manifests/{ref.tag}", body=raw, ok=(201, 200),
                         headers={"Content-Type": manifest["mediaType"]}):
        pass
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    with store.write_lock():
        blobinfo.record(store, [(d, v["digest"], v["size"], v["mediaType"]) for d, v in descriptors.items()],
                        ref.name)
        store.add_digest(record.id, f"{ref.name}@{digest}")  # docker's RepoDigests after a push too
    return Pushed(ref, digest, **counts)


def _mount_sources(store: Any, diff_ids: tuple[str, ...], ref: Reference) -> list[str]:
    """Other repositories of the same registry known to hold one of these layers."""
    found: list[str] = []
    for diff_id in diff_ids:
        for entry in blobinfo.known(store, diff_id):
            for repo in entry.get("repos", []):
                registry, _, path = str(repo).partition("/")
                if registry == ref.registry and path != ref.repository and path not in found:
                    found.append(path)
    return found[:10]  # a token with many scopes makes a long URL; ten are plenty


def _push_layer(session: Session, ref: Reference, store: Any, diff_id: str, counts: dict[str, int],
                progress: Any, kind: tuple[str, str]) -> dict[str, Any]:
    # Blobs of this layer in the compression asked for (the manifest type only names them).
    known = [e for e in blobinfo.known(store, diff_id) if compression_of(e["mediaType"]) == kind[1]]
    for entry in known:
        if _has_blob(session, ref, entry["digest"]):
            counts["skipped"] += 1
            if progress is not None:
                progress.note(entry["digest"], "already in the registry")
            return _descriptor(entry, kind)
    for entry in known:
        for repo in entry.get("repos", []):
            registry, _, path = str(repo).partition("/")
            if registry == ref.registry and path != ref.repository and _mount(session, ref, entry["digest"], path):
                counts["mounted"] += 1
                if progress is not None:
                    progress.note(entry["digest"], f"mounted from {path}")
                return _descriptor(entry, kind)
    size = int(store.layer_info(diff_id)["size"])
    row = progress.row(diff_id, size) if progress is not None else None
    for attempt in range(3):
        try:
            if row is not None:
                row.start(0)
                row.count = 0
            digest, csize = _upload_layer(session, ref, store, diff_id, row, kind[1])
            break
        except (AuthError, ImageError) as e:
            if type(e) is not RegistryError or attempt == 2:
                raise
    if row is not None:
        row.finish("pushed")
    counts["uploaded"] += 1
    return {"mediaType": LAYER_TYPE[kind], "digest": digest, "size": csize}


def _descriptor(entry: dict[str, Any], kind: tuple[str, str]) -> dict[str, Any]:
    return {"mediaType": LAYER_TYPE[kind], "digest": entry["digest"], "size": entry["size"]}


def _has_blob(session: Session, ref: Reference, digest: str) -> bool:
    try:
        with session.request("HEAD", f"/v2/{ref.repository}/blobs/{digest}"):
            return True
    except NotFound:
        return False


def _mount(session: Session, ref: Reference, digest: str, source: str) -> bool:
    query = urllib.parse.urlencode({"mount": digest, "from": source})
    try:
        with session.request("POST", f"/v2/{ref.repository}/blobs/uploads/?{query}", ok=(201, 202),
                             headers={"Content-Length": "0"}) as reply:
            return reply.status == 201  # 202: not mounted, an upload was opened instead (left to expire)
    except (NotFound, AuthError):
        return False


def _start_upload(session: Session, ref: Reference) -> str:
    with session.request("POST", f"/v2/{ref.repository}/blobs/uploads/", ok=(202,),
                         headers={"Content-Length": "0"}) as reply:
        location = reply.header("Location")
    if not location:
        raise RegistryError(f"{ref.registry} opened an upload without a Location")
    return location


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})


def _put_small_blob(session: Session, ref: Reference, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if _has_blob(session, ref, digest):
        return digest
    location = _start_upload(session, ref)
    with session.request("PUT", _with_digest(location, digest), body=data, ok=(201,),
                         headers={"Content-Type": "application/octet-stream"}):
        pass
    return digest


class _Compressor:
    """The layer's tar (checked against its diff_id) through `gzip -n` (or `zstd`) as an iterator of chunks."""

    def __init__(self, store: Any, diff_id: str, row: Any, compression: str = "gzip") -> None:
        self.store = store
        self.diff_id = diff_id
        self.row = row
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: BaseException | None = None
        self.compression = compression
        try:
            self.proc = subprocess.Popen(COMPRESS[compression], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except FileNotFoundError:
            raise ImageError(f"{compression} is not installed: it compresses the layers for push") from None
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        from machinectl_py.images import archive

        assert self.proc.stdin is not None
        tar_digest = hashlib.sha256()
        stdin = self.proc.stdin

        def out(chunk: bytes | memoryview) -> None:
            tar_digest.update(chunk)
            stdin.write(chunk)
            if self.row is not None:
                self.row(len(chunk))

        try:
            layer_fd = os.open(self.store.layer_dir(self.diff_id), archive.O_DIR)
            try:
                try:
                    tar_fd = os.open("layer.tar", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=layer_fd)
                except FileNotFoundError:
                    archive.replay_layer(layer_fd, out)
                else:
                    try:
                        while chunk := os.read(tar_fd, CHUNK):
                            out(chunk)
                    finally:
                        os.close(tar_fd)
            finally:
                os.close(layer_fd)
            if "sha256:" + tar_digest.hexdigest() != self.diff_id:
                raise ImageError(f"layer {self.diff_id} in the store is damaged (its content no longer "
                                 "matches its digest); nothing was pushed")
        except BaseException as e:
            self.error = e
            self.proc.kill()
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()

    def __iter__(self) -> Iterator[bytes]:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read(CHUNK):
            self.digest.update(chunk)
            self.size += len(chunk)
            yield chunk
        self.thread.join()
        if self.error is not None:
            raise self.error
        if self.proc.wait() != 0:
            raise ImageError(f"{self.compression} failed compressing layer {self.diff_id}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.thread.join()
        for f in (self.proc.stdout, self.proc.stdin):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


def _upload_layer(session: Session, ref: Reference, store: Any, diff_id: str, row: Any,
                  compression: str) -> tuple[str, int]:
    location = _start_upload(session, ref)
    compressor = _Compressor(store, diff_id, row, compression)
    try:
        with session.request("PATCH", location, body=iter(compressor), retry=False, ok=(202, 204),
                             headers={"Content-Type": "application/octet-stream"}) as reply:
            location = reply.header("Location") or location
        if compressor.error is not None:
            raise compressor.error
    finally:
        compressor.close()
    digest = "sha256:" + compressor.digest.hexdigest()
    with session.request("PUT", _with_digest(location, digest), ok=(201,), headers={"Content-Length": "0"}):
        pass
    return digest, compressor.size
