"""`pymachine pull`: an image from a registry into the store, verified as it streams.

The steps, each checked before the next:
1. the reference becomes one or more fully qualified candidates (reference.py's search list);
2. the manifest is fetched (an index or manifest list picks the platform's manifest, fetched by
   digest and checked against it); docker v2 schema 2 and OCI manifests are read;
3. the config blob is fetched and checked against its digest: it names the layers' diff_ids;
4. the layers the store lacks download in parallel (at most PARALLEL at a time). Each streams
   from the socket into its decompressor (`gzip`/`zstd` in a child process, another core) and
   from there into the store's own tar extractor (archive.extract_layer) in a staging dir; the
   compressed bytes are hashed on the way, the uncompressed ones by the extractor. A layer
   counts only when both digests match what the manifest and the config say;
5. all layers become visible at once (store.install_layers, synced, renamed), then the config
   and the tag. An interrupted pull (Ctrl-C, kill -9, a network error) leaves only staging
   dirs, removed by the next command, and the compressed bytes received so far, kept in
   `downloads/` under the store so the next pull resumes them with a Range request. Those
   bytes are hashed again from the start when resumed, so nothing unverified is ever used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from machinectl_py.errors import NotFoundError, PymachineError
from machinectl_py.images import reference
from machinectl_py.images.errors import BadArchiveError, ImageError, ImageNotFoundError
from machinectl_py.images.reference import Reference
from machinectl_py.images.registry import NotFound, RegistryError, Reply, Session

PARALLEL = int(os.environ.get("PYMACHINE_PULL_PARALLEL", "3"))  # docker's max-concurrent-downloads
MAX_MANIFEST = 4 << 20
CHUNK = 1 << 20
SCHEMA1_TYPES = ("application/vnd.docker.distribution.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v1+prettyjws")


class Canceled(ImageError):
    """The pull was interrupted (Ctrl-C); the other downloads stop with this."""


@dataclasses.dataclass(frozen=True)
class LayerBlob:
    digest: str  # of the blob as the registry serves it (compressed)
    size: int
    media_type: str
    diff_id: str  # of the uncompressed tar, from the config

    @property
    def compression(self) -> str | None:
        media = self.media_type
        for kind in ("gzip", "zstd"):
            if media.endswith(f"+{kind}") or media.endswith(f".{kind}"):
                return kind
        return None


@dataclasses.dataclass(frozen=True)
class Pulled:
    ref: Reference
    image_id: str
    manifest_digest: str
    tag: str | None
    new_layers: int
    reused_layers: int


# ---------------------------------------------------------------------------------------------
# Manifests and config


def accept_header() -> str:
    from machinectl_py.images import formats

    return ", ".join((formats.MEDIA_OCI_INDEX, formats.MEDIA_DOCKER_LIST,
                      formats.MEDIA_OCI_MANIFEST, formats.MEDIA_DOCKER_MANIFEST))


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fetch_manifest(session: Session, ref: Reference, target: str, what: str) -> tuple[dict[str, Any], str, str]:
    """(manifest, its media type, its digest) for a tag or digest; a digest is checked."""
    with session.request("GET", f"/v2/{ref.repository}/manifests/{target}",
                         headers={"Accept": accept_header()}) as reply:
        raw = reply.read_limited(MAX_MANIFEST, what)
        content_type = reply.header("Content-Type").split(";")[0].strip()
        stated = reply.header("Docker-Content-Digest")
    digest = sha256_of(raw)
    if target.startswith("sha256:") and digest != target:
        raise BadArchiveError(f"{what} of {ref} has digest {digest}, not the {target} asked for")
    if stated.startswith("sha256:") and stated != digest:
        raise BadArchiveError(f"{what} of {ref} has digest {digest}, but the registry says {stated}")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise BadArchiveError(f"{what} of {ref} is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise BadArchiveError(f"{what} of {ref} is not a JSON object")
    media = manifest.get("mediaType") or content_type
    if not isinstance(media, str):
        raise BadArchiveError(f"{what} of {ref} has an invalid mediaType")
    if manifest.get("schemaVersion") == 1 or media in SCHEMA1_TYPES:
        raise ImageError(f"{ref} has a docker v2 schema 1 manifest, which pymachine does not read",
                         hint="push it again with a current docker, podman or skopeo (schema 2 or OCI)")
    if not media and "manifests" in manifest:
        media = "application/vnd.oci.image.index.v1+json"
    elif not media and "layers" in manifest:
        media = "application/vnd.oci.image.manifest.v1+json"
    return manifest, media, digest


def resolve_manifest(session: Session, ref: Reference, platform: tuple[str, str, str | None]
                     ) -> tuple[dict[str, Any], str]:
    """The image manifest for `ref` and the platform, and the digest it was pulled by."""
    from machinectl_py.images import formats

    manifest, media, digest = fetch_manifest(session, ref, ref.target, "manifest")
    if media in formats.INDEX_TYPES:
        entries = manifest.get("manifests")
        if not isinstance(entries, list):
            raise BadArchiveError(f"the index of {ref} has no manifests list")
        descriptors = [d for d in entries if isinstance(d, dict) and d.get("mediaType") in formats.MANIFEST_TYPES]
        chosen = reference.pick_platform(descriptors, platform)
        if chosen is None:
            listed = sorted({_platform_text(d.get("platform")) for d in descriptors})
            raise ImageError(f"{ref} has no image for {'/'.join(p for p in platform if p)}",
                             hint=f"it has: {', '.join(listed) or 'none'}; choose one with --platform")
        child_digest = formats._check_digest(chosen.get("digest"), f"the index of {ref}")
        manifest, media, _ = fetch_manifest(session, ref, child_digest, "image manifest")
    if media not in formats.MANIFEST_TYPES:
        raise ImageError(f"{ref} is not an image (its manifest is {media or 'of no known type'})")
    return manifest, digest


def _platform_text(platform: Any) -> str:
    if not isinstance(platform, dict):
        return "unknown"
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if p)


def fetch_config(session: Session, ref: Reference, manifest: dict[str, Any]) -> tuple[bytes, list[LayerBlob]]:
    """The config, byte for byte (its sha256 is the image id), checked; and the layers to fetch."""
    from machinectl_py.images import formats

    config_d = formats._descriptor(manifest.get("config"), "the manifest's config")
    digest = config_d["digest"]
    with session.request("GET", f"/v2/{ref.repository}/blobs/{digest}") as reply:
        raw = reply.read_limited(formats.MAX_JSON, "the image config")
    if sha256_of(raw) != digest or len(raw) != config_d["size"]:
        raise BadArchiveError(f"the image config of {ref} does not match its digest {digest}: refused")
    try:
        config = json.loads(raw)
    except ValueError:
        raise BadArchiveError(f"the image config of {ref} is not valid JSON") from None
    diff_ids = formats.config_diff_ids(config, f"the image config of {ref}")
    layers_raw = manifest.get("layers")
    if not isinstance(layers_raw, list) or len(layers_raw) != len(diff_ids):
        raise BadArchiveError(f"the manifest of {ref} lists other layers than its config")
    layers = []
    for i, (item, diff_id) in enumerate(zip(layers_raw, diff_ids, strict=True)):
        d = formats._descriptor(item, f"layer {i} of {ref}")
        if d.get("mediaType") not in formats.LAYER_TYPES:
            raise ImageError(f"layer {i} of {ref} has the unsupported media type {d.get('mediaType')!r}")
        layers.append(LayerBlob(d["digest"], d["size"], d["mediaType"], diff_id))
    return raw, layers


# ---------------------------------------------------------------------------------------------
# One layer: download -> decompress -> extract, all streaming


class Decompressor:
    """A pipe from the download into the extractor, through `gzip -d` or `zstd -d` if needed."""

    def __init__(self, kind: str | None, what: str) -> None:
        import subprocess

        from machinectl_py.images import formats

        self.kind = kind
        self._proc: subprocess.Popen[bytes] | None = None
        if kind is None:
            r, w = os.pipe()
            os.set_inheritable(r, False)
            os.set_inheritable(w, False)
            self.readable: Any = open(r, "rb", buffering=0)  # noqa: SIM115 - closed by close()
            self._input: Any = open(w, "wb")  # noqa: SIM115
            return
        argv = next(tool for name, tool in formats.COMPRESSORS.values() if name == kind)
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ImageError(f"{what} is {kind}-compressed but {argv[0]} is not installed") from None
        self.readable = self._proc.stdout
        self._input = self._proc.stdin

    def write(self, data: memoryview) -> bool:
        """False when the reading side is gone (the extractor stopped: it reports why)."""
        try:
            self._input.write(data)
        except (BrokenPipeError, ValueError):
            return False
        return True

    def close_input(self) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self._input.close()

    def finish(self, what: str) -> None:
        if self._proc is not None:
            leftover = self._proc.stdout.read(1) if self._proc.stdout else b""
            rc = self._proc.wait()
            if (rc != 0 and not (self.kind == "gzip" and rc == 2)) or leftover:
                raise BadArchiveError(f"{what}: corrupt {self.kind} data")

    def close(self) -> None:
        self.close_input()
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
        with contextlib.suppress(OSError):
            self.readable.close()


class LayerDownload:
    """Fetches one blob, resuming from `downloads/<hex>`, hashing and feeding a Decompressor."""

    def __init__(self, session: Session, ref: Reference, blob: LayerBlob, downloads: Path,
                 progress: Callable[[int], None], cancel: threading.Event) -> None:
        self.session = session
        self.ref = ref
        self.blob = blob
        self.partial_path = downloads / blob.digest.removeprefix("sha256:")
        self.progress = progress
        self.cancel = cancel
        self.error: BaseException | None = None
        self.resumed_from = 0
        self._reply: Reply | None = None
        self._fd = -1

    @property
    def what(self) -> str:
        return f"layer {self.blob.digest[:19]} of {self.ref}"

    def open_partial(self) -> None:
        """The partial file, locked (a concurrent pull of the same blob waits for this one)."""
        while True:
            fd = os.open(self.partial_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                break
            os.close(fd)  # the other pull finished and removed it: take a new one
        self._fd = fd
        size = os.fstat(fd).st_size
        if size > self.blob.size:
            os.ftruncate(fd, 0)
            size = 0
        self.resumed_from = size

    def feed(self, sink: Decompressor) -> None:
        """The feeding thread: the bytes kept from an earlier try, then the rest from the network."""
        digest = hashlib.sha256()
        try:
            pos = self._replay(digest, sink)
            self._download(digest, sink, pos)
            found = "sha256:" + digest.hexdigest()
            if found != self.blob.digest:
                self.discard()
                raise BadArchiveError(f"{self.what}: the data received has digest {found}; refused",
                                      hint="the registry (or something between) holds or sent corrupt data; "
                                           "nothing was stored")
        except BaseException as e:
            self.error = e
        finally:
            sink.close_input()

    def _replay(self, digest: Any, sink: Decompressor) -> int:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        pos = 0
        while pos < self.resumed_from:
            n = os.preadv(self._fd, [view[: min(CHUNK, self.resumed_from - pos)]], pos)
            if n <= 0:
                break
            digest.update(view[:n])
            if not sink.write(view[:n]):
                raise _Stopped
            pos += n
            self.progress(n)
        return pos

    def _download(self, digest: Any, sink: Decompressor, pos: int) -> None:
        from machinectl_py.images import registry

        buf = bytearray(CHUNK)
        view = memoryview(buf)
        failures = 0
        while pos < self.blob.size:
            if self.cancel.is_set():
                raise Canceled("pull canceled")
            headers = {"Range": f"bytes={pos}-"} if pos else {}
            reply = self.session.request("GET", f"/v2/{self.ref.repository}/blobs/{self.blob.digest}",
                                         headers=headers, ok=(200, 206))
            self._reply = reply
            skip = pos if reply.status == 200 else 0  # no ranges: read again up to where we were
            if reply.status == 206 and not reply.header("Content-Range").startswith(f"bytes {pos}-"):
                reply.close()
                raise RegistryError(f"{self.what}: the registry sent the wrong range")
            try:
                while True:
                    if self.cancel.is_set():
                        raise Canceled("pull canceled")
                    n = reply.readinto(view)
                    if not n:
                        break
                    data = view[:n]
                    if skip:
                        dropped = min(skip, n)
                        skip -= dropped
                        data = data[dropped:]
                        if not data:
                            continue
                    if pos + len(data) > self.blob.size:
                        self.discard()
                        raise BadArchiveError(f"{self.what} is larger than the {self.blob.size} bytes "
                                              "its manifest says; refused")
                    os.pwrite(self._fd, data, pos)
                    digest.update(data)
                    if not sink.write(data):
                        raise _Stopped
                    pos += len(data)
                    self.progress(len(data))
                    failures = 0
            except (OSError, http.client.HTTPException) as e:
                failures += 1
                if self.cancel.is_set():
                    raise Canceled("pull canceled") from None
                if failures > registry.RETRIES:
                    raise RegistryError(f"{self.what}: download failed: {registry._reason(e)}") from None
                time.sleep(min(registry.BACKOFF * 2 ** (failures - 1), 8.0))
            finally:
                self._reply = None
                reply.close()

    def discard(self) -> None:
        """The kept bytes are wrong: the next pull starts this blob from scratch."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.partial_path)

    def abort(self) -> None:
        """From another thread: stop a read that is waiting on the network."""
        reply = self._reply
        if reply is not None:
            reply.abort()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Stopped(Exception):
    """The extractor stopped reading; its own error is the one to report."""


# ---------------------------------------------------------------------------------------------
# The whole pull


@dataclasses.dataclass
class Options:
    platform: tuple[str, str, str | None] | None = None
    tls_verify: bool | None = None  # None: as registries.conf says
    progress: Any = None  # a progress.LayerProgress, or None
    parallel: int = PARALLEL
    announce: Callable[[Reference], None] | None = None  # called when the manifest is found


def pull(text: str, options: Options, store: Any = None) -> Pulled:
    from machinectl_py.images import authfile
    from machinectl_py.images.store import Store

    registries = reference.load_registries()
    candidates = reference.candidates(text, registries)
    store = (store or Store()).ensure()
    platform = options.platform or reference.host_platform()
    failures: list[str] = []
    for ref in candidates:
        if registries.blocked(ref):
            failures.append(f"{ref.registry} is blocked in registries.conf")
            continue
        insecure = registries.insecure(ref) if options.tls_verify is None else not options.tls_verify
        session = Session(ref.registry, insecure=insecure,
                          credentials=authfile.lookup(ref.registry, ref.repository),
                          scopes=[f"repository:{ref.repository}:pull"])
        try:
            manifest, digest = resolve_manifest(session, ref, platform)
        except (NotFound, RegistryError) as e:
            if len(candidates) == 1:
                if isinstance(e, NotFound):
                    raise ImageError(f"{ref}: no such image in the registry ({e.message})") from None
                raise
            failures.append(f"{ref}: {e.message}")
            continue
        if options.announce is not None:
            options.announce(ref)
        return _pull_image(session, ref, manifest, digest, options, store)
    raise ImageError(f"cannot pull {text!r}: " + "; ".join(failures),
                     hint="short names are looked up in unqualified-search-registries of "
                          f"{' and '.join(reference.registries_conf_files())}")


def for_run(text: str, always: bool, tls_verify: bool | None = None) -> str:
    """`run`'s and `create`'s pull (see images.ensure): the reference of the image in the store."""
    import sys

    from machinectl_py import images
    from machinectl_py.images.progress import LayerProgress

    registries = reference.load_registries()
    if not always:
        # A short name pulled earlier is in the store under the registry it was found on.
        for candidate in reference.candidates(text, registries):
            local = _store_reference(candidate)
            with contextlib.suppress(ImageError, NotFoundError):
                images.resolve(local)
                return local

    def announce(ref: Reference) -> None:
        # Once the registry has it, as docker's "Unable to find image": a failed pull says why alone.
        print(f"Unable to find image {text!r} locally; pulling {ref}", file=sys.stderr, flush=True)

    options = Options(progress=LayerProgress(), tls_verify=tls_verify, announce=None if always else announce)
    try:
        result = pull(text, options)
    except PymachineError as e:
        if always:
            raise
        raise ImageNotFoundError(f"no such image: {text} (not in the store, and pulling it failed: {e.message})",
                                 hint=e.hint) from None
    return _store_reference(result.ref, result.manifest_digest)


def _store_reference(ref: Reference, manifest_digest: str | None = None) -> str:
    """What the store calls a pulled image: its tag, or name@digest for a pull by digest."""
    digest = ref.digest or (manifest_digest if ref.tag is None else None)
    if digest is not None:
        return f"{ref.name}@{digest}"
    return ref.store_tag() or f"{ref.name}@{manifest_digest}"


def _pull_image(session: Session, ref: Reference, manifest: dict[str, Any], manifest_digest: str,
                options: Options, store: Any) -> Pulled:
    from machinectl_py.images import blobinfo

    raw_config, blobs = fetch_config(session, ref, manifest)
    with store.gc_shared(), store.staging() as staging:
        wanted = {b.diff_id: b for b in blobs if not store.has_layer(b.diff_id)}
        if options.progress is not None:
            for b in blobs:
                if b.diff_id not in wanted:
                    options.progress.note(b.digest, "already in the store")
        staged = _fetch_layers(session, ref, list(wanted.values()), staging, store, options)
        with store.write_lock():
            installed = store.install_layers(staged)
            image_id = store.write_image(raw_config)
            tag = ref.store_tag()
            if tag is not None:
                store.set_tags(image_id, [tag])
            # docker's RepoDigests: the manifest (or index) this image was pulled by, so that
            # `run NAME@sha256:...` and `image inspect` find it, whether a tag was asked for or not.
            store.add_digest(image_id, f"{ref.name}@{manifest_digest}")
            blobinfo.record(store, [(b.diff_id, b.digest, b.size, b.media_type) for b in blobs], ref.name)
    for b in wanted.values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_downloads(store) / b.digest.removeprefix("sha256:"))
    return Pulled(ref, image_id, manifest_digest, tag, installed, len(blobs) - installed)


def _downloads(store: Any) -> Path:
    path: Path = store.root / "downloads"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def remove_partial_downloads(store: Any) -> int:
    """For `image prune`: forget what interrupted pulls kept to resume (not what a running pull
    holds: its flock). Returns the bytes freed."""
    directory: Path = store.root / "downloads"
    freed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        try:
            fd = os.open(directory / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            freed += os.fstat(fd).st_size
            os.unlink(directory / name)
        except OSError:
            continue  # in use by a pull, or already gone
        finally:
            os.close(fd)
    return freed


def _fetch_layers(session: Session, ref: Reference, blobs: list[LayerBlob], staging: Any, store: Any,
                  options: Options) -> dict[str, Path]:
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    if not blobs:
        return {}
    cancel = threading.Event()
    downloads: list[LayerDownload] = []
    progress = options.progress
    staged: dict[str, Path] = {}
    pool = ThreadPoolExecutor(max_workers=max(1, options.parallel), thread_name_prefix="pull")
    try:
        futures = []
        for i, blob in enumerate(blobs):
            row = progress.row(blob.digest, blob.size) if progress is not None else None
            d = LayerDownload(session, ref, blob, _downloads(store), row or (lambda n: None), cancel)
            downloads.append(d)
            futures.append(pool.submit(_fetch_one, d, staging, i, row))
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for f in done:
            if f.exception() is not None:
                raise f.exception()  # type: ignore[misc]
        for f in futures:
            diff_id, path = f.result()
            staged[diff_id] = path
    except BaseException:
        cancel.set()
        for d in downloads:
            d.abort()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if progress is not None:
            progress.done()
    return staged


def _fetch_one(d: LayerDownload, staging: Any, index: int, row: Any) -> tuple[str, Path]:
    from machinectl_py.images import archive, store

    if d.cancel.is_set():
        raise Canceled("pull canceled")
    d.open_partial()
    try:
        if row is not None:
            row.start(d.resumed_from)
        path, layer_fd = staging.mkdir(f"layer{index}")
        sink = Decompressor(d.blob.compression, d.what)
        feeder = threading.Thread(target=d.feed, args=(sink,), daemon=True)
        feeder.start()
        try:
            try:
                diff_id, size, stats = archive.extract_layer(sink.readable, layer_fd)
                sink.finish(d.what)
            except BaseException:
                sink.close()
                feeder.join()
                if d.error is not None and not isinstance(d.error, _Stopped):
                    raise d.error from None  # the download's failure explains the extractor's
                raise
            feeder.join()
            if d.error is not None:
                raise d.error
            if diff_id != d.blob.diff_id:
                raise BadArchiveError(f"{d.what}: its tar has digest {diff_id}, but the image config says "
                                      f"{d.blob.diff_id}; refused")
            store.write_layer_info(layer_fd, diff_id, size, stats)
        finally:
            sink.close()
            os.close(layer_fd)
        if row is not None:
            row.finish("pulled")
        return diff_id, path
    finally:
        d.close()
