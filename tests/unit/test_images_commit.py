"""commit without systemd: an overlay upper dir (made by hand, as overlayfs would) becomes a layer.

Overlay's on-disk conventions: a 0:0 character device is a deleted file, the xattr
trusted.overlay.opaque=y marks a directory whose lower contents are hidden. Commit turns them
into OCI whiteouts in the layer's tar and keeps them as overlay whiteouts in the unpacked layer;
export then import gives the same diff_id.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from machinectl_py import state as cstate
from machinectl_py.images import ops, resolve
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
