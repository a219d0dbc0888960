"""The image store on disk: layout, locking, atomic updates, names and tags.

Layout under paths.state_dir() (mode 0700: layers keep set-id files and device-free but
otherwise arbitrary trees that host users must not reach):

    layers/sha256/<hex>/      one layer, keyed by its diff_id (sha256 of its uncompressed tar):
        diff/                 the unpacked tree, an overlay lower dir (whiteouts as overlay's)
        tar-split, files      what is needed to write the original tar back (archive.py)
        layer.tar             instead of the three above, for a commit not used yet: a packed
                              layer is unpacked (and its tar removed) when a container first
                              needs it (Store.unpack_layer), so commit costs about what tar -c does
        layer.json            {"diff_id", "size", "content_size", "entries"}
    images/sha256/<hex>.json  an image config, byte for byte; <hex> is its sha256, the image id
    repositories.json         {"name:tag": "sha256:<id>"}
    digests.json              {"name@sha256:<manifest digest>": "sha256:<id>"}: docker's RepoDigests,
                              the manifest each pull got an image by (a pull by digest tags nothing)
    runtime-index.marshal     the tags again, in the form `pymachine run` reads fastest
    tmp/<random>/             staging, locked by its owner with flock; dead ones are removed
                              by the next command
    lock, gc.lock, tmp.lock   see below

Atomicity: a layer is built in tmp/ and then renamed into layers/; an image config and
repositories.json are written to a temporary file, fsynced and renamed. So a reader sees a
complete layer or none, even after kill -9 (the page cache survives it), and a full disk only
fails the command (ENOSPC on a write); the next command removes what was left in tmp/.

Locking: `lock` (exclusive, short) serialises changes to layers/, images/ and
repositories.json. `gc.lock` is held shared by imports and commits for their whole run and
exclusively by rm/prune, so a layer an import is about to reuse cannot be pruned under it.
Readers (resolve, ls, inspect) take no lock: every file they read is replaced atomically.
`tmp.lock` covers creating-and-locking a staging dir and the cleaner's scan, so a cleaner
never mistakes a staging dir that is not locked yet for a dead one.

Durability: imported and unpacked layers reach the disk (syncfs) before the rename that makes
them visible, and small files (configs, names, layer.json) are fsynced before theirs. A
commit's packed layer is the exception, as with docker and podman: its data is left to the
kernel's writeback (a synchronous flush of a large layer would cost more than writing it), so
a power loss soon after a commit can leave the committed image with a torn layer.tar. That
is caught, never used: unpack_layer and export check the tar against its diff_id and fail
with an error naming the image; `pymachine image rm` and a new commit are the remedy.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from machinectl_py import paths
from machinectl_py.errors import UsageError
from machinectl_py.images import config_from_oci
from machinectl_py.images.errors import BadArchiveError, ImageError, ImageNotFoundError
from machinectl_py.record import Record

if TYPE_CHECKING:
    from machinectl_py.images.archive import LayerStats

DEFAULT_TAG = "latest"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOSTPART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_HOSTPART}(?:\.{_HOSTPART})*(?::[0-9]+)?/)"
NAME_RE = re.compile(rf"(?:{_DOMAIN})?{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
HEX_RE = re.compile(r"[0-9a-f]{64}")
SHORT_ID_RE = re.compile(r"(?:sha256:)?([0-9a-f]{4,64})")


def parse_reference(ref: str) -> tuple[str, str]:
    """'repo/name[:tag]' -> (name, tag); the tag defaults to `latest`."""
    if "@" in ref:
        raise UsageError(f"invalid image reference {ref!r}: digests (@sha256:...) are not supported")
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    name, tag = (ref[:colon], ref[colon + 1 :]) if colon > slash else (ref, DEFAULT_TAG)
    if len(name) > 255 or not NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid image name {name!r}",
            hint="use lowercase letters, digits and separators (. _ -), optionally with a registry/ prefix",
        )
    if not TAG_RE.fullmatch(tag):
        raise UsageError(f"invalid image tag {tag!r}", hint="use up to 128 of [A-Za-z0-9_.-]")
    return name, tag


def normalize_reference(ref: str) -> str:
    name, tag = parse_reference(ref)
    return f"{name}:{tag}"


DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def digest_reference(ref: str) -> str:
    """'[registry/]name[:tag]@sha256:...' -> 'name@sha256:...', the key of digests.json: the tag
    is dropped (the digest names the manifest alone, as docker has it) and docker.io's implicit
    prefixes too, as in tags."""
    name, _, digest = ref.partition("@")
    if not DIGEST_RE.fullmatch(digest):
        raise UsageError(f"invalid image reference {ref!r}: the digest must be sha256: and 64 lowercase hex digits")
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name = name[:colon]
    name = short_name(name)
    if len(name) > 255 or not NAME_RE.fullmatch(name):
        raise UsageError(f"invalid image name {name!r}", hint="use lowercase letters, digits and separators "
                         "(. _ -), optionally with a registry/ prefix")
    return f"{name}@{digest}"


def short_name(name: str) -> str:
    """docker's short form of a docker.io name: docker.io/library/busybox -> busybox."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def hex_of(digest: str) -> str:
    hexpart = digest.removeprefix("sha256:")
    if not HEX_RE.fullmatch(hexpart):
        raise ImageError(f"invalid digest {digest!r}")
    return hexpart


class ImageRecord(Record):
    __slots__ = ("id", "config", "raw_config", "tags")
    id: str
    config: dict[str, Any]
    raw_config: bytes
    tags: tuple[str, ...]

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(self.config["rootfs"]["diff_ids"])

    @property
    def created(self) -> str:
        value = self.config.get("created")
        return value if isinstance(value, str) else ""


# The runtime's view of an image config is defined once, next to resolve().
image_config_of = config_from_oci


class Staging:
    """A private directory under tmp/, flock'ed while alive; removed on exit."""

    def __init__(self, store: Store) -> None:
        self.path = store.tmp / os.urandom(8).hex()
        # Created and locked under tmp.lock, so a cleaner never sees it unlocked (and takes it for dead).
        with store.tmp_lock():
            self.path.mkdir(mode=0o700)
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def mkdir(self, name: str) -> tuple[Path, int]:
        os.mkdir(name, 0o700, dir_fd=self.fd)
        return self.path / name, os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                         dir_fd=self.fd)

    def cleanup(self) -> None:
        _rmtree(self.path)
        os.close(self.fd)


class Store:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else paths.state_dir()
        self.layers = self.root / "layers" / "sha256"
        self.images = self.root / "images" / "sha256"
        self.tmp = self.root / "tmp"
        self.repositories_file = self.root / "repositories.json"
        self.digests_file = self.root / "digests.json"

    # Set-up and locks --------------------------------------------------------------------
    def ensure(self) -> Store:
        paths.ensure_private_dir(self.root)
        os.chmod(self.root, 0o700)
        for d in (self.layers, self.images, self.tmp):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int) -> Iterator[None]:
        fd = os.open(self.root / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def write_lock(self) -> contextlib.AbstractContextManager[None]:
        return self._flock("lock", fcntl.LOCK_EX)

    def gc_shared(self) -> contextlib.AbstractContextManager[None]:
        return self._flock("gc.lock", fcntl.LOCK_SH)

    def gc_exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self._flock("gc.lock", fcntl.LOCK_EX)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Staging]:
        self.clean_tmp()
        st = Staging(self)
        try:
            yield st
        finally:
            st.cleanup()

    def tmp_lock(self) -> contextlib.AbstractContextManager[None]:
        return self._flock("tmp.lock", fcntl.LOCK_EX)

    def clean_tmp(self) -> None:
        """Remove what dead commands left in tmp/ (their flock died with them)."""
        if not self.tmp.is_dir():
            return
        doomed: list[tuple[Path, int]] = []
        with self.tmp_lock():
            for name in os.listdir(self.tmp):
                path = self.tmp / name
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    with contextlib.suppress(OSError):
                        path.unlink()
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue  # its owner is alive
                # Ours now (the lock stays held): out of the way, then deleted outside tmp.lock.
                dead = self.tmp / ("dead-" + os.urandom(8).hex())
                os.rename(path, dead)
                doomed.append((dead, fd))
        for path, fd in doomed:
            try:
                if path.is_dir() and not path.is_symlink():
                    _rmtree(path)
                else:
                    path.unlink()
            finally:
                os.close(fd)

    # Layers ------------------------------------------------------------------------------
    def layer_dir(self, diff_id: str) -> Path:
        return self.layers / hex_of(diff_id)

    def has_layer(self, diff_id: str) -> bool:
        return (self.layer_dir(diff_id) / "layer.json").is_file()

    def layer_info(self, diff_id: str) -> dict[str, Any]:
        try:
            info: dict[str, Any] = json.loads((self.layer_dir(diff_id) / "layer.json").read_bytes())
        except FileNotFoundError:
            raise ImageError(f"layer {diff_id} is missing from the store") from None
        return info

    def unpack_layer(self, diff_id: str, image: str | None = None) -> Path:
        """A packed layer (a commit keeps only layer.tar, so commit costs what `tar -c` costs)
        is unpacked here, once, the first time a container needs it. Returns its diff/ dir.

        The tar must have the layer's digest: one torn by a power loss (its data is not synced,
        see Durability) is refused with an error naming `image`, and nothing is unpacked."""
        from machinectl_py.images import archive

        layer = self.layer_dir(diff_id)
        diff = layer / "diff"
        if diff.is_dir():
            return diff
        try:
            layer_fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ImageError(f"layer {diff_id} is missing from the store", hint="import the image again") from None
        try:
            fcntl.flock(layer_fd, fcntl.LOCK_EX)  # one unpacker per layer; the others wait for it
            if diff.is_dir():
                return diff
            try:
                tar_fd = os.open("layer.tar", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=layer_fd)
            except FileNotFoundError:
                raise _damaged(diff_id, image, "no content") from None
            try:
                with self.staging() as staging:
                    _, out_fd = staging.mkdir("unpack")
                    try:
                        found, _, _ = archive.extract_layer(archive.FileSource(tar_fd), out_fd)
                    except BadArchiveError as e:
                        raise _damaged(diff_id, image, str(e)) from None
                    finally:
                        os.close(out_fd)
                    if found != diff_id:
                        raise _damaged(diff_id, image, f"its tar has digest {found}")
                    syncfs(staging.path)
                    unpacked = staging.path / "unpack"
                    for name in ("tar-split", "files", "shadow"):
                        os.replace(unpacked / name, layer / name)
                    os.rename(unpacked / "diff", diff)  # last: diff/ present = unpacked
                    _fsync_dir(layer)
            finally:
                os.close(tar_fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink("layer.tar", dir_fd=layer_fd)  # export reads the tar-split from now on
            return diff
        finally:
            os.close(layer_fd)

    def install_layers(self, staged: dict[str, Path], sync_data: bool = True) -> int:
        """Move staged layer dirs (diff_id -> path, with layer.json written) into place. Hold write_lock.

        With `sync_data`, everything staged reaches the disk before any of it becomes visible;
        without (a commit's packed layer), the rename alone makes it visible (see Durability)."""
        if not staged:
            return 0
        if sync_data:
            syncfs(self.tmp)
        installed = 0
        for diff_id, path in staged.items():
            target = self.layer_dir(diff_id)
            if target.exists():
                continue  # already there (another command, or an earlier import of the same content)
            os.rename(path, target)
            installed += 1
        _fsync_dir(self.layers)
        return installed

    def remove_layer(self, diff_id: str) -> None:
        """Make a layer disappear atomically (rename into tmp/), then delete it."""
        target = self.layer_dir(diff_id)
        doomed = self.tmp / ("dead-" + os.urandom(8).hex())
        try:
            os.rename(target, doomed)
        except FileNotFoundError:
            return
        _rmtree(doomed)

    def all_layers(self) -> list[str]:
        try:
            return ["sha256:" + n for n in os.listdir(self.layers) if HEX_RE.fullmatch(n)]
        except FileNotFoundError:
            return []

    # Images ------------------------------------------------------------------------------
    def image_file(self, image_id: str) -> Path:
        return self.images / (hex_of(image_id) + ".json")

    def write_image(self, raw_config: bytes) -> str:
        """Store a config (hold write_lock); returns the image id."""
        import hashlib

        image_id = "sha256:" + hashlib.sha256(raw_config).hexdigest()
        path = self.image_file(image_id)
        if not path.exists():
            atomic_write(path, raw_config)
        return image_id

    def has_image(self, image_id: str) -> bool:
        return self.image_file(image_id).is_file()

    def all_image_ids(self) -> list[str]:
        try:
            names = os.listdir(self.images)
        except FileNotFoundError:
            return []
        return ["sha256:" + n[:-5] for n in names if n.endswith(".json") and HEX_RE.fullmatch(n[:-5])]

    def record(self, image_id: str, repos: dict[str, str] | None = None) -> ImageRecord:
        try:
            raw = self.image_file(image_id).read_bytes()
        except FileNotFoundError:
            raise ImageNotFoundError(f"no such image: {image_id}") from None
        try:
            config = json.loads(raw)
        except ValueError:
            raise ImageError(f"image {image_id} has a corrupt config in the store") from None
        repos = self.repositories() if repos is None else repos
        tags = tuple(sorted(t for t, i in repos.items() if i == image_id))
        return ImageRecord(id=image_id, config=config, raw_config=raw, tags=tags)

    def remove_image(self, image_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.image_file(image_id).unlink()
        _fsync_dir(self.images)

    # Names -------------------------------------------------------------------------------
    def repositories(self) -> dict[str, str]:
        return _read_names(self.repositories_file)

    def digests(self) -> dict[str, str]:
        """name@sha256:... (docker's RepoDigests) -> image id."""
        return _read_names(self.digests_file)

    def save_digests(self, digests: dict[str, str]) -> None:
        atomic_write(self.digests_file, json.dumps(digests, indent=1, sort_keys=True).encode() + b"\n")

    def repo_digests(self, image_id: str) -> list[str]:
        return sorted(d for d, i in self.digests().items() if i == image_id)

    def add_digest(self, image_id: str, ref: str) -> None:
        """Record that `ref` (name@sha256:...) names the image (hold write_lock)."""
        digests = self.digests()
        key = digest_reference(ref)
        if digests.get(key) != image_id:
            digests[key] = image_id
            self.save_digests(digests)

    def forget_digests(self, image_id: str, only: str | None = None) -> list[str]:
        """Remove the image's digest references (or just `only`); returns those removed."""
        digests = self.digests()
        gone = [d for d, i in digests.items() if i == image_id and (only is None or d == only)]
        for d in gone:
            del digests[d]
        if gone:
            self.save_digests(digests)
        return sorted(gone)

    def save_repositories(self, repos: dict[str, str]) -> None:
        atomic_write(self.repositories_file, json.dumps(repos, indent=1, sort_keys=True).encode() + b"\n")
        self.write_runtime_index(repos)

    def write_runtime_index(self, repos: dict[str, str] | None = None) -> None:
        """What `pymachine run` needs of each tag, in marshal form (see images/__init__.py)."""
        from machinectl_py.images import RUNTIME_INDEX, index_entry, index_key

        # The key first: if repositories.json changes while this runs, the index is born stale.
        key = index_key(str(self.repositories_file))
        repos = self.repositories() if repos is None else repos
        tags = {}
        for tag, image_id in repos.items():
            with contextlib.suppress(ImageError):
                record = self.record(image_id, repos)
                tags[tag] = index_entry(image_id, record.diff_ids, record.config)
        import marshal

        if key is not None:
            # A cache (resolve falls back to repositories.json when it is stale or unreadable): renamed
            # into place, not fsynced, so a command costs two flushes of the disk's cache less.
            atomic_write(self.root / RUNTIME_INDEX, marshal.dumps({"key": key, "tags": tags}), durable=False)

    def set_tags(self, image_id: str, refs: list[str]) -> None:
        """Point each name:tag at the image (hold write_lock)."""
        if not refs:
            return
        repos = self.repositories()
        for ref in refs:
            repos[ref] = image_id
        self.save_repositories(repos)

    def lookup(self, ref: str) -> str:
        """name[:tag], name@sha256:..., full id or unique id prefix (4+ hex digits) -> image id."""
        if "@" in ref:
            key = digest_reference(ref)
            image_id = self.digests().get(key)
            if image_id is None or not self.has_image(image_id):
                raise ImageNotFoundError(f"no such image: {ref}")
            return image_id
        repos = self.repositories()
        with contextlib.suppress(UsageError):
            normal = normalize_reference(ref)
            if normal in repos:
                return repos[normal]
        m = SHORT_ID_RE.fullmatch(ref)
        if m:
            matches = [i for i in self.all_image_ids() if hex_of(i).startswith(m.group(1))]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise UsageError(f"image id prefix {ref!r} is ambiguous")
        parse_reference(ref)  # a malformed name is a usage error, not "not found"
        raise ImageNotFoundError(f"no such image: {ref}")


def _read_names(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError:
        raise ImageError(f"{path} is corrupt") from None
    if not isinstance(data, dict):
        raise ImageError(f"{path} is corrupt")
    return {str(k): str(v) for k, v in data.items()}


def _rmtree(path: Path) -> None:
    import shutil  # not at the top: most commands never remove anything

    shutil.rmtree(path, ignore_errors=True)


def _damaged(diff_id: str, image: str | None, why: str) -> ImageError:
    whose = f"image {image}: " if image else ""
    return ImageError(
        f"{whose}layer {diff_id} is damaged ({why}); it was not completely written, "
        "e.g. the machine lost power soon after a commit",
        hint=f"remove the image (pymachine image rm {image or 'IMAGE'}) and commit or import it again",
    )


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Replace `path` by a complete new file (readers see the old or the new one); `durable`:
    fsynced, file and directory, so it survives a power loss too."""
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink()
        raise
    os.close(fd)
    os.rename(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def syncfs(path: Path) -> None:
    """syncfs(2) on the file system holding `path`, through the one syscall layer."""
    from machinectl_py import syscalls  # not at the top: only imports and unpacks sync

    syscalls.syncfs(str(path))


def write_layer_info(layer_fd: int, diff_id: str, size: int, stats: LayerStats) -> None:
    """layer.json of a layer being built in `layer_fd` (read back by Store.layer_info)."""
    info = {
        "diff_id": diff_id,
        "size": size,
        "content_size": stats.content_size,
        "entries": stats.entries,
        "skipped_devices": stats.skipped_devices[:100],
    }
    fd = os.open("layer.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=layer_fd)
    try:
        os.write(fd, canonical_json(info))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.fsync(layer_fd)  # the layer dir's entries too: it becomes visible by one rename


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
