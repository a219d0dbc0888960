"""commit without systemd: an overlay upper dir (made by hand, as overlayfs would) becomes a layer.

Overlay's on-disk conventions: a 0:0 character device is a deleted file, the xattr
trusted.overlay.opaque=y marks a directory whose lower contents are hidden. Commit turns them
into OCI whiteouts in the layer's tar and keeps them as overlay whiteouts in the unpacked layer;
export then import gives the same diff_id.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from machinectl_py import state as cstate
from machinectl_py.images import archive, ops, resolve
from machinectl_py.images.errors import ImageError
from machinectl_py.images.store import Store


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(path))
    return path


def make_container(name: str, image_ref: str, state: str = "exited") -> Path:
    """A container record as the runtime writes it (container.json), with an empty upper dir."""
    image = resolve(image_ref)
    cdir = Path(cstate.claim(name))
    record = {
        "name": name, "id": "ab" * 16, "image": {"name": image.name, "id": image.id},
        "spec": {"name": name, "image": image_ref}, "created": 0.0, "state": state, "unit": None,
    }
    (cdir / "container.json").write_text(json.dumps(record))
    upper = cdir / "upper"
    upper.mkdir()
    return upper


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def fill_upper(upper: Path) -> None:
    (upper / "etc").mkdir()
    whiteout(upper / "etc" / "group")  # deleted a file of the image
    (upper / "etc" / "new.conf").write_text("new\n")
    (upper / "root").mkdir(mode=0o700)
    (upper / "root" / "big").write_bytes(os.urandom(300_000))
    os.link(upper / "root" / "big", upper / "root" / "big-link")
    (upper / "root" / "link").symlink_to("/etc/new.conf")
    (upper / "var").mkdir()
    os.setxattr(upper / "var", "trusted.overlay.opaque", b"y")  # rm -rf /var/*; then mkdir /var/x
    (upper / "var" / "x").write_text("x\n")
    os.setxattr(upper / "etc" / "new.conf", "user.tag", b"v1")
    os.setxattr(upper / "etc", "trusted.overlay.origin", b"ignored")  # overlay bookkeeping: not recorded


def layer_tar(store_dir: Path, tmp_path: Path, ref: str) -> tarfile.TarFile:
    out = tmp_path / "export.tar"
    ops.export_image(ref, str(out))
    with tarfile.open(out) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        top = outer.extractfile(manifest[0]["Layers"][-1])
        assert top is not None
        data = top.read()
    return tarfile.open(fileobj=io.BytesIO(data))


def test_commit_turns_overlay_whiteouts_into_oci_whiteouts(store_dir: Path, tmp_path: Path) -> None:
    upper = make_container("c1", "busybox")
    fill_upper(upper)
    result = ops.commit_container("c1", "committed:v1")
    image = resolve("committed:v1")
    base = resolve("busybox")
    assert image.id == result.id and image.diff_ids[:-1] == base.diff_ids and len(image.diff_ids) == 2
    assert image.config.cmd == base.config.cmd
    top = Path(image.layers[-1])
    wh = os.lstat(top / "etc" / "group")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(top / "var", "trusted.overlay.opaque") == b"y"
    assert (top / "root" / "big").read_bytes() == (upper / "root" / "big").read_bytes()
    assert os.stat(top / "root" / "big").st_ino == os.stat(top / "root" / "big-link").st_ino
    assert os.readlink(top / "root" / "link") == "/etc/new.conf"
    assert stat.S_IMODE(os.stat(top / "root").st_mode) == 0o700
    assert os.getxattr(top / "etc" / "new.conf", "user.tag") == b"v1"
    assert "trusted.overlay.origin" not in os.listxattr(top / "etc")

    names = {m.name: m for m in layer_tar(store_dir, tmp_path, "committed:v1").getmembers()}
    assert "etc/.wh.group" in names and names["etc/.wh.group"].isfile()
    assert "var/.wh..wh..opq" in names
    assert names["root/big-link"].islnk() and names["root/big-link"].linkname == "root/big"
    assert names["etc/new.conf"].pax_headers.get("SCHILY.xattr.user.tag") == "v1"
    assert not any(n.startswith("/") or ".." in n.split("/") for n in names)


def test_commit_export_import_round_trip(store_dir: Path, tmp_path: Path) -> None:
    upper = make_container("c2", "busybox")
    fill_upper(upper)
    ops.commit_container("c2", "rt:1")
    before = resolve("rt:1")
    out = tmp_path / "rt.tar"
    ops.export_image("rt:1", str(out))
    for tag in Store().repositories():
        ops.remove_images([tag], force=True)
    (store_dir / "containers" / "c2" / "container.json").unlink()
    ops.prune()
    assert Store().all_layers() == []
    [imported] = ops.import_image(str(out))
    after = resolve("rt:1")
    assert imported.id == before.id and after.diff_ids == before.diff_ids
    wh = os.lstat(Path(after.layers[-1]) / "etc" / "group")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0


def test_commit_of_a_committed_image_stacks_layers(store_dir: Path) -> None:
    upper = make_container("c3", "busybox")
    (upper / "one").write_text("1")
    ops.commit_container("c3", "stack:1")
    upper = make_container("c4", "stack:1")
    (upper / "two").write_text("2")
    whiteout(upper / "one")
    ops.commit_container("c4", "stack:2")
    image = resolve("stack:2")
    assert len(image.layers) == 3
    assert (Path(image.layers[1]) / "one").read_text() == "1"
    assert stat.S_ISCHR(os.lstat(Path(image.layers[2]) / "one").st_mode)


def test_commit_is_deterministic_for_the_same_changes(store_dir: Path) -> None:
    for name in ("d1", "d2"):
        upper = make_container(name, "busybox")
        (upper / "same").write_text("same")
        os.utime(upper / "same", (1_700_000_000, 1_700_000_000))
        os.utime(upper, (1_700_000_000, 1_700_000_000))
    a = ops.commit_container("d1", "det:a")
    b = ops.commit_container("d2", "det:b")
    assert resolve("det:a").diff_ids == resolve("det:b").diff_ids
    assert len(Store().all_layers()) == 2  # busybox + the shared new layer
    del a, b


def test_commit_refuses_redirect_dir_upper(store_dir: Path) -> None:
    upper = make_container("c5", "busybox")
    (upper / "moved").mkdir()
    os.setxattr(upper / "moved", "trusted.overlay.redirect", b"/orig")
    with pytest.raises(ImageError, match="redirect_dir or metacopy"):
        ops.commit_container("c5", "bad:1")
    assert Store().repositories() == {"busybox:latest": resolve("busybox").id}
    assert os.listdir(store_dir / "tmp") == []


def test_commit_errors(store_dir: Path) -> None:
    from machinectl_py.errors import NotFoundError, UsageError

    with pytest.raises(NotFoundError):
        ops.commit_container("nope", "x:1")
    with pytest.raises(UsageError):
        ops.commit_container("../../etc", "x:1")
    make_container("c6", "busybox")
    with pytest.raises(UsageError):
        ops.commit_container("c6", "Bad Name")


def test_a_commit_stays_packed_until_a_container_needs_it(store_dir: Path, tmp_path: Path) -> None:
    upper = make_container("p1", "busybox")
    fill_upper(upper)
    result = ops.commit_container("p1", "packed:1")
    store = Store()
    top = store.record(result.id).diff_ids[-1]
    layer = store.layer_dir(top)
    assert (layer / "layer.tar").is_file() and not (layer / "diff").exists()
    ops.export_image("packed:1", str(tmp_path / "packed.tar"))  # from the packed tar
    image = resolve("packed:1")  # unpacks, checking the digest
    assert image.layers[-1] == str(layer / "diff") and not (layer / "layer.tar").exists()
    assert stat.S_ISCHR(os.lstat(layer / "diff" / "etc" / "group").st_mode)
    ops.export_image("packed:1", str(tmp_path / "unpacked.tar"))  # from the tar-split
    assert (tmp_path / "packed.tar").read_bytes() == (tmp_path / "unpacked.tar").read_bytes()
    assert os.listdir(store_dir / "tmp") == []


def test_a_damaged_packed_layer_is_refused(store_dir: Path) -> None:
    upper = make_container("p2", "busybox")
    (upper / "file").write_text("content")
    result = ops.commit_container("p2", "damaged:1")
    layer = Store().layer_dir(Store().record(result.id).diff_ids[-1])
    data = bytearray((layer / "layer.tar").read_bytes())
    data[data.index(b"content")] ^= 1
    (layer / "layer.tar").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="damaged"):
        resolve("damaged:1")
    assert not (layer / "diff").exists() and os.listdir(store_dir / "tmp") == []


def test_a_layer_torn_by_a_power_loss_is_refused_naming_the_image(store_dir: Path) -> None:
    """Commit does not fsync the layer's data (store.py: durability): a tar cut short on disk
    must be refused with the image's name and the remedy, never used or half unpacked."""
    upper = make_container("p3", "busybox")
    (upper / "big").write_bytes(os.urandom(200_000))
    result = ops.commit_container("p3", "torn:1")
    layer = Store().layer_dir(Store().record(result.id).diff_ids[-1])
    os.truncate(layer / "layer.tar", 4096)
    with pytest.raises(ImageError, match=r"image torn:1: layer sha256:\w+ is damaged") as caught:
        resolve("torn:1")
    assert caught.value.hint is not None and "pymachine image rm torn:1" in caught.value.hint
    assert not (layer / "diff").exists() and os.listdir(store_dir / "tmp") == []
    with pytest.raises(ImageError, match="damaged"):
        ops.export_image("torn:1", str(store_dir / "out.tar"))


def many_kinds_upper(upper: Path) -> None:
    """Every path of the committer: small, mid-size and large files (buffered, copied by the
    copier thread), empty ones, long names (pax), xattrs, hard links, odd owners and times."""
    fill_upper(upper)
    (upper / "many").mkdir()
    for i in range(300):
        (upper / "many" / f"f{i:03d}").write_bytes(os.urandom(i * 331))
    for size in (0, 511, 512, 65536, 65537, 3 << 20):
        (upper / f"size-{size}").write_bytes(os.urandom(size))
    deep = upper / ("a" * 90) / ("b" * 90)
    deep.mkdir(parents=True)
    (deep / ("c" * 120)).write_text("long name")
    (upper / "owned").write_text("x")
    os.chown(upper / "owned", 3_000_000, 7)  # too large for ustar: pax
    os.utime(upper / "owned", (0, -1_000))  # before 1970: pax
    os.mkfifo(upper / "fifo")
    os.mknod(upper / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    (upper / os.fsdecode(b"\xff\xfename")).write_text("not utf-8")


def test_the_committed_tar_is_what_tar_readers_see(store_dir: Path, tmp_path: Path) -> None:
    upper = make_container("k1", "busybox")
    many_kinds_upper(upper)
    result = ops.commit_container("k1", "kinds:1")
    layer = Store().layer_dir(Store().record(result.id).diff_ids[-1])
    data = (layer / "layer.tar").read_bytes()
    assert "sha256:" + hashlib.sha256(data).hexdigest() == Store().record(result.id).diff_ids[-1]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name in ("many/f299", "size-65537", "size-3145728", "a" * 90 + "/" + "b" * 90 + "/" + "c" * 120):
            member = tar.extractfile(members[name])
            assert member is not None and member.read() == (upper / name).read_bytes(), name
        # the fast header path writes exactly what the general one (tar_header) would
        for m in tar.getmembers():
            if m.isreg() and not m.pax_headers and not m.name.rsplit("/", 1)[-1].startswith(".wh."):
                entry = archive.Entry(os.fsencode(m.name), archive.REGTYPE, m.mode, m.uid, m.gid, m.size,
                                      int(m.mtime) * 1_000_000_000)
                assert data[m.offset : m.offset + 512] == archive.tar_header(entry), m.name
    assert members["owned"].uid == 3_000_000 and members["owned"].mtime == -1_000
    assert members["fifo"].isfifo() and members["null"].ischr() and members["null"].devminor == 3
    assert os.fsdecode(b"\xff\xfename") in members
    listing = subprocess.run(["tar", "-tvf", "-"], input=data, capture_output=True, check=True).stdout
    assert b"size-3145728" in listing
    # and the layer unpacks to the same tree (the whiteouts as overlay's)
    top = Path(resolve("kinds:1").layers[-1])
    assert (top / "size-3145728").read_bytes() == (upper / "size-3145728").read_bytes()
    assert (top / "many" / "f123").read_bytes() == (upper / "many" / "f123").read_bytes()


def test_a_file_that_shrinks_while_committed_fails_the_commit(tmp_path: Path) -> None:
    """The copier thread's failure reaches the caller as one clean error; nothing is left open."""
    src = tmp_path / "src"
    src.write_bytes(os.urandom(100_000))
    out = os.open(tmp_path, archive.O_DIR)
    fd = os.open(src, os.O_RDONLY)
    def open_under_tmp() -> set[str]:
        # Only this test's files: other fds of the process (a test host's pipes, threads of
        # other fixtures) come and go on their own.
        found = set()
        for entry in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{entry}")
            except OSError:
                continue
            if target.startswith(str(tmp_path)):
                found.add(target)
        return found

    try:
        before = open_under_tmp()
        committer = archive.UpperCommitter(out)
        committer._out.put_file(fd, 200_000, b"src")  # says 200 kB, has 100 kB: shrank meanwhile
        with pytest.raises(ImageError, match="'src' shrank while being committed"):
            committer._out.finish()
        committer._out.stop()
        os.close(committer._fd)
        assert open_under_tmp() == before
    finally:
        os.close(fd)
        os.close(out)


@pytest.mark.parametrize("seconds", [5_000_000_000, 12_345_678_901])  # (the fs clamps past ones to 1901)
def test_a_time_that_import_would_refuse_fails_the_commit(store_dir: Path, seconds: int) -> None:
    upper = make_container("t1", "busybox")
    (upper / "future").write_text("x")
    os.utime(upper / "future", (0, seconds))
    with pytest.raises(ImageError, match="'future' in the upper dir has a time out of range"):
        ops.commit_container("t1", "future:1")
    assert os.listdir(store_dir / "tmp") == [] and "future:1" not in Store().repositories()


def test_commit_freezes_a_running_container_with_the_callers_freezer(store_dir: Path) -> None:
    """The store makes no D-Bus call: the caller (cmd_commit, with freezer.frozen_unit) passes
    the freezer, and without one a running container is refused, never read unfrozen."""
    import contextlib
    from collections.abc import Iterator

    upper = make_container("r1", "busybox", state="running")
    record_file = upper.parent / "container.json"
    record_file.write_text(json.dumps({**json.loads(record_file.read_text()), "unit": "machine-r1.scope"}))
    with pytest.raises(ImageError, match="is running and this caller cannot freeze it"):
        ops.commit_container("r1", "running:1")
    frozen: list[str] = []

    @contextlib.contextmanager
    def freeze(unit: str) -> Iterator[None]:
        frozen.append(unit)
        yield

    ops.commit_container("r1", "running:1", freeze=freeze)
    assert frozen == ["machine-r1.scope"]
