"""Import, inspect and export of real images made by umoci and skopeo; hostile manifests; the CLI.

No systemd needed: the store is plain files. Each test has its own store (PYMACHINE_STATE_DIR).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
from images import build  # tests/images: pytest puts tests/ on sys.path

from machinectl_py import cli
from machinectl_py.images import ops, resolve
from machinectl_py.images.errors import BadArchiveError
from machinectl_py.images.store import Store


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(path))
    return path


@pytest.fixture(scope="module")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build.umoci_two_layers(tmp_path_factory.mktemp("umoci"))


def pm(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (rc, stdout, stderr)."""
    import contextlib

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(args))
    return rc, out.getvalue(), err.getvalue()


def inspect(ref: str) -> dict[str, Any]:
    rc, out, err = pm("image", "inspect", ref)
    assert rc == 0, err
    data: dict[str, Any] = json.loads(out)[0]
    return data


def assert_umoci_tree(layers: tuple[str, ...]) -> None:
    """The two umoci layers, as overlay would merge them (top layer first)."""
    top, bottom = Path(layers[1]), Path(layers[0])
    assert (bottom / "etc/doomed").read_text() == "delete me\n"
    wh = os.lstat(top / "etc/doomed")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert (top / "etc/added").read_text() == "added\n"
    assert (top / "data/old/c").read_text() == "c\n"
    assert (bottom / "bin/busybox").stat().st_size == Path(build.BUSYBOX).stat().st_size


# ---------------------------------------------------------------------------------------------
# Real images


def test_umoci_layout_dir_imports_with_its_diff_ids(state: Path, umoci_layout: Path) -> None:
    rc, _, err = pm("image", "import", str(umoci_layout), "--name", "um:dir")
    assert rc == 0, err
    data = inspect("um:dir")
    assert data["RootFS"] == {"Type": "layers", "Layers": build.oci_diff_ids(umoci_layout)}
    assert data["RepoTags"] == ["um:dir"]
    config = data["Config"]
    assert isinstance(config, dict)
    assert config["Cmd"] == ["/bin/sh", "-c", "echo from-cmd; pwd"] and config["WorkingDir"] == "/data"
    image = resolve("um:dir")
    assert image.diff_ids == tuple(build.oci_diff_ids(umoci_layout))
    assert image.config.env["FOO"] == "bar" and image.config.workdir == "/data"
    assert_umoci_tree(image.layers)
    # the image id is the sha256 of the config, as in docker
    assert image.id == build.oci_manifest(umoci_layout)["config"]["digest"]


def test_skopeo_docker_archive_and_oci_archive_import(state: Path, umoci_layout: Path, tmp_path: Path) -> None:
    da = build.docker_archive(umoci_layout, tmp_path / "da.tar", "test/um:v1")
    oa = build.oci_archive(umoci_layout, tmp_path / "oa.tar")
    assert pm("image", "import", str(da))[0] == 0  # the RepoTags of the archive name it
    assert pm("image", "import", str(oa), "--name", "um:oa")[0] == 0
    diff_ids = build.oci_diff_ids(umoci_layout)
    assert inspect("test/um:v1")["RootFS"] == {"Type": "layers", "Layers": diff_ids}
    assert inspect("um:oa")["Id"] == inspect("test/um:v1")["Id"]
    assert len(os.listdir(state / "layers/sha256")) == 2  # shared, unpacked once


@pytest.mark.parametrize("fmt", ["docker-archive", "oci"])
def test_export_then_import_round_trips_digests(
    state: Path, umoci_layout: Path, tmp_path: Path, fmt: str
) -> None:
    assert pm("image", "import", str(umoci_layout), "--name", "um:latest")[0] == 0
    before = inspect("um")
    out = tmp_path / f"export-{fmt}.tar"
    rc, _, err = pm("image", "export", "um", str(out), "--format", fmt)
    assert rc == 0, err
    assert pm("image", "rm", "um")[0] == 0
    assert os.listdir(state / "layers/sha256") == []
    rc, _, err = pm("image", "import", str(out))
    assert rc == 0, err
    after = inspect("um:latest")
    assert after["Id"] == before["Id"] and after["RootFS"] == before["RootFS"]
    # and a tool no one here wrote reads the export and finds the same layers
    back = tmp_path / "back"
    src = f"docker-archive:{out}" if fmt == "docker-archive" else f"oci-archive:{out}:latest"
    build.run("skopeo", "copy", "--quiet", src, f"oci:{back}:latest")
    assert build.oci_diff_ids(back) == before["RootFS"]["Layers"]


@pytest.mark.parametrize("compress", [None, "gzip", "xz", "zstd"])
def test_rootfs_tarball_becomes_a_one_layer_image(state: Path, tmp_path: Path, compress: str | None) -> None:
    root = build.busybox_rootfs(tmp_path / "root")
    (root / "hello").write_text("hi\n")
    tarball = build.tar_rootfs(root, tmp_path / "rootfs.tar", compress)
    rc, out, err = pm("image", "import", "-q", str(tarball), "--name", "rootfs:1")
    assert rc == 0, err
    plain = tmp_path / "plain.tar"
    decompress = {None: ["cat"], "gzip": ["gzip", "-dc"], "xz": ["xz", "-dc"], "zstd": ["zstd", "-dcq"]}
    with open(plain, "wb") as f:
        subprocess.run([*decompress[compress], str(tarball)], stdout=f, check=True)
    diff_id = "sha256:" + hashlib.sha256(plain.read_bytes()).hexdigest()
    image = resolve("rootfs:1")
    assert image.diff_ids == (diff_id,)
    assert (Path(image.layers[0]) / "hello").read_text() == "hi\n"
    assert out.strip() == image.id


def test_import_from_stdin(state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = build.busybox_rootfs(tmp_path / "root")
    tarball = build.tar_rootfs(root, tmp_path / "rootfs.tar.gz", "gzip")
    with open(tarball, "rb") as stdin:
        result = subprocess.run(
            ["python3", "-m", "machinectl_py", "image", "import", "-", "--name", "from-stdin"],
            stdin=stdin, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}, check=False,
        )
    assert result.returncode == 0, result.stderr
    assert Path(resolve("from-stdin").layers[0]).joinpath("bin/busybox").is_file()
    assert os.listdir(state / "tmp") == []


def test_empty_input_is_not_an_image(state: Path, tmp_path: Path) -> None:
    """Zero bytes (an empty file, `< /dev/null`) is a mistake, not an image with an empty root."""
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    rc, _, err = pm("image", "import", str(empty))
    assert rc != 0 and "is empty: not an image archive or a tarball" in err
    result = subprocess.run(
        ["python3", "-m", "machinectl_py", "image", "import", "-"], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        check=False)
    assert result.returncode != 0 and "standard input is empty" in result.stderr
    rc, out, _ = pm("images", "-q")
    assert rc == 0 and out.split() == []
    assert os.listdir(state / "tmp") == []


# ---------------------------------------------------------------------------------------------
# Hostile manifests and digests: each fails, registers nothing


def _copy_layout(layout: Path, tmp: Path) -> Path:
    dst = tmp / "layout"
    shutil.copytree(layout, dst, symlinks=True)
    return dst


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs/sha256" / digest.removeprefix("sha256:")


def _rewrite_json_blob(layout: Path, old_digest: str, value: object) -> str:
    raw = json.dumps(value).encode()
    new = "sha256:" + hashlib.sha256(raw).hexdigest()
    _blob(layout, new).write_bytes(raw)
    _blob(layout, old_digest).unlink()
    return new


def _set_manifest(layout: Path, manifest: dict[str, Any]) -> None:
    index = json.loads((layout / "index.json").read_text())
    old = index["manifests"][0]["digest"]
    new = _rewrite_json_blob(layout, old, manifest)
    index["manifests"][0]["digest"] = new
    index["manifests"][0]["size"] = len(_blob(layout, new).read_bytes())
    (layout / "index.json").write_text(json.dumps(index))


def corrupt_layer_blob(layout: Path) -> None:
    manifest = build.oci_manifest(layout)
    path = _blob(layout, manifest["layers"][1]["digest"])
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01  # inside the gzip trailer: the digest must catch it
    path.write_bytes(bytes(data))


def wrong_diff_id(layout: Path) -> None:
    manifest = build.oci_manifest(layout)
    config = build.oci_config(layout)
    config["rootfs"]["diff_ids"][1] = "sha256:" + "0" * 64
    cd = manifest["config"]
    new = _rewrite_json_blob(layout, cd["digest"], config)
    cd["digest"], cd["size"] = new, len(_blob(layout, new).read_bytes())
    _set_manifest(layout, manifest)


def layer_outside(layout: Path) -> None:
    manifest = build.oci_manifest(layout)
    manifest["layers"][0]["digest"] = "sha256:../../../../../etc/passwd"
    _set_manifest(layout, manifest)


def config_size_lie(layout: Path) -> None:
    manifest = build.oci_manifest(layout)
    manifest["config"]["size"] += 1
    _set_manifest(layout, manifest)


def blob_symlink_out(layout: Path) -> None:
    manifest = build.oci_manifest(layout)
    path = _blob(layout, manifest["layers"][0]["digest"])
    path.unlink()
    path.symlink_to("/etc/passwd")


def blob_symlink_dotdot(layout: Path) -> None:
    manifest = build.oci_manifest(layout)
    path = _blob(layout, manifest["layers"][0]["digest"])
    path.unlink()
    path.symlink_to("../../../../../../../../etc/passwd")


def index_digest_lie(layout: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:" + "1" * 64
    (layout / "index.json").write_text(json.dumps(index))


LAYOUT_CASES = {
    "corrupt-layer-blob": corrupt_layer_blob,
    "wrong-diff-id": wrong_diff_id,
    "layer-outside-archive": layer_outside,
    "config-size-lie": config_size_lie,
    "blob-symlink-absolute": blob_symlink_out,
    "blob-symlink-dotdot": blob_symlink_dotdot,
    "missing-manifest": index_digest_lie,
}


@pytest.mark.parametrize("case", sorted(LAYOUT_CASES))
def test_bad_oci_layouts_fail_cleanly(state: Path, umoci_layout: Path, tmp_path: Path, case: str) -> None:
    layout = _copy_layout(umoci_layout, tmp_path)
    LAYOUT_CASES[case](layout)
    rc, _, err = pm("image", "import", str(layout), "--name", "bad")
    assert rc == 125 and err.startswith("pymachine: ") and err.count("\n") == 1, err
    assert Store().all_image_ids() == [] and Store().all_layers() == []
    assert Store().repositories() == {}
    # also as a tar: the outer archive is unpacked safely, then read the same way
    tarball = tmp_path / "layout.tar"
    build.run("tar", "-cf", tarball, "-C", layout, ".")
    rc, _, err = pm("image", "import", str(tarball), "--name", "bad")
    assert rc == 125 and err.count("\n") == 1, err
    assert Store().all_image_ids() == [] and os.listdir(state / "tmp") == []


def _docker_archive_dir(umoci_layout: Path, tmp: Path) -> Path:
    da = build.docker_archive(umoci_layout, tmp / "da.tar", "test/um:v1")
    out = tmp / "da"
    out.mkdir()
    build.run("tar", "-xf", da, "-C", out)
    return out


@pytest.mark.parametrize("layer_path", ["../../../etc/passwd", "/etc/passwd", "nothere/layer.tar"])
def test_docker_manifest_pointing_outside_fails(
    state: Path, umoci_layout: Path, tmp_path: Path, layer_path: str
) -> None:
    root = _docker_archive_dir(umoci_layout, tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest[0]["Layers"][0] = layer_path
    (root / "manifest.json").write_text(json.dumps(manifest))
    tarball = tmp_path / "evil.tar"
    build.run("tar", "-cf", tarball, "-C", root, ".")
    rc, _, err = pm("image", "import", str(tarball))
    assert rc == 125 and err.count("\n") == 1, err
    assert Store().all_image_ids() == []


def test_docker_archive_config_digest_checked(state: Path, umoci_layout: Path, tmp_path: Path) -> None:
    root = _docker_archive_dir(umoci_layout, tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    config = root / manifest[0]["Config"]
    config.write_text(config.read_text().replace("FOO=bar", "FOO=baz"))
    tarball = tmp_path / "evil.tar"
    build.run("tar", "-cf", tarball, "-C", root, ".")
    rc, _, err = pm("image", "import", str(tarball))
    assert rc == 125 and "digest" in err, err


def test_opening_confined_paths(tmp_path: Path) -> None:
    from machinectl_py.images import formats

    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a/file").write_text("x")
    (root / "link").symlink_to("a/file")
    (root / "up").symlink_to("../outside")
    (tmp_path / "outside").write_text("secret")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        inner = formats.open_confined(fd, "link", "t")
        assert os.read(inner, 10) == b"x"
        os.close(inner)
        for bad in ("up", "../outside", "/etc/passwd", "a", "a/file/x"):
            with pytest.raises(BadArchiveError):
                formats.open_confined(fd, bad, "t")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Store behaviour through the CLI


def test_tag_rm_prune_and_ls(state: Path, umoci_layout: Path) -> None:
    assert pm("image", "import", str(umoci_layout), "--name", "one")[0] == 0
    assert pm("image", "tag", "one", "two:x")[0] == 0
    rc, out, _ = pm("images", "--json")
    rows = json.loads(out)
    assert {(r["Repository"], r["Tag"]) for r in rows} == {("one", "latest"), ("two", "x")}
    rc, out, _ = pm("image", "rm", "one")
    assert out.strip() == "Untagged: one:latest"
    assert len(os.listdir(state / "layers/sha256")) == 2
    rc, out, _ = pm("image", "rm", "two:x")
    assert "Deleted: sha256:" in out and os.listdir(state / "layers/sha256") == []
    rc, _, err = pm("image", "rm", "two:x")
    assert rc == 125 and "no such image" in err


def test_rm_refuses_an_image_a_container_uses(state: Path, umoci_layout: Path) -> None:
    assert pm("image", "import", str(umoci_layout), "--name", "used")[0] == 0
    image_id = resolve("used").id
    cdir = state / "containers" / "c1"
    cdir.mkdir(parents=True)
    (cdir / "container.json").write_text(json.dumps({
        "name": "c1", "id": "0" * 32, "image": {"name": "used:latest", "id": image_id},
        "spec": {"name": "c1", "image": "used"}, "created": 0,
    }))
    rc, _, err = pm("image", "rm", "used")
    assert rc == 125 and "used by container c1" in err
    rc, out, _ = pm("image", "rm", "-f", "used")
    assert rc == 0 and "Untagged: used:latest" in out and "Deleted" not in out
    assert Store().has_image(image_id)  # the container still needs it
    assert pm("image", "prune")[0] == 0
    assert Store().has_image(image_id)
    (cdir / "container.json").unlink()
    rc, out, _ = pm("image", "prune")
    assert rc == 0 and "Removed 1 images and 2 layers" in out
    assert Store().all_layers() == []


def test_leftovers_of_a_killed_import_are_cleaned(state: Path, tmp_path: Path) -> None:
    root = build.busybox_rootfs(tmp_path / "root")
    tarball = build.tar_rootfs(root, tmp_path / "r.tar")
    script = (
        "import os, sys\n"
        "from machinectl_py.images import archive\n"
        "real = archive.LayerWriter.finish\n"
        "def die(self):\n"
        "    os.kill(os.getpid(), 9)\n"
        "archive.LayerWriter.finish = die\n"
        "from machinectl_py import cli\n"
        f"cli.main(['image', 'import', '{tarball}', '--name', 'half'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    result = subprocess.run(["python3", "-c", script], env=env, check=False)
    assert result.returncode == -9
    assert os.listdir(state / "tmp") != []  # a half-unpacked layer was left in staging...
    assert Store().all_layers() == [] and Store().repositories() == {}  # ...never visible
    assert pm("image", "import", str(tarball), "--name", "whole")[0] == 0
    assert os.listdir(state / "tmp") == []
    assert Path(resolve("whole").layers[0]).joinpath("bin/busybox").is_file()


def test_store_is_private(state: Path, umoci_layout: Path) -> None:
    assert pm("image", "import", str(umoci_layout), "--name", "p")[0] == 0
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700


def test_builtin_busybox(state: Path) -> None:
    image = resolve("busybox")
    assert image.name == "busybox:latest" and image.config.cmd == ("sh",)
    root = Path(image.layers[0])
    assert os.path.realpath(root / "bin/sh") == str(root / "bin/busybox")
    assert "root:x:0:0" in (root / "etc/passwd").read_text()
    assert (root / "etc/group").is_file() and "ID=busybox" in (root / "etc/os-release").read_text()
    listed = subprocess.run([build.BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    names = {p.name for d in ("bin", "sbin", "usr/bin", "usr/sbin") for p in (root / d).iterdir()}
    assert set(listed) - {"linuxrc"} <= names  # linuxrc is an initrd's /linuxrc, not a command
    assert resolve("busybox:latest").id == image.id  # made once, content-addressed
    assert len(Store().all_layers()) == 1
    # deterministic: removing and re-creating gives the same ids
    assert pm("image", "rm", "busybox")[0] == 0
    assert resolve("busybox").id == image.id


@pytest.mark.parametrize("ref", ["UPPER", "a:b:c", "x@sha256:00", "x-", "a//b", "a:" + "t" * 200])
def test_invalid_references_are_usage_errors(state: Path, ref: str) -> None:
    rc, _, err = pm("image", "tag", "busybox", ref)
    assert rc == 125 and err.startswith("pymachine: invalid image"), err


def test_inspect_format(state: Path) -> None:
    _, out, _ = pm("image", "inspect", "busybox", "--format", "{{.Id}} {{json .RootFS.Layers}} {{.Os}}")
    image = resolve("busybox")
    assert out.strip() == f'{image.id} {json.dumps(list(image.diff_ids))} linux'


def test_tarfile_crafted_docker_archive_with_symlinked_layer(state: Path, tmp_path: Path) -> None:
    """docker save writes `<id>/layer.tar` as a symlink to a shared layer: allowed inside the archive."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        ti = tarfile.TarInfo("hello")
        ti.size = 2
        t.addfile(ti, io.BytesIO(b"hi"))
    diff_id = "sha256:" + hashlib.sha256(layer.getvalue()).hexdigest()
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id, diff_id]},
                         "config": {"Cmd": ["sh"]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["docker.io/library/shared:1"],
                            "Layers": ["a/layer.tar", "b/layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        for name, data in (("a/layer.tar", layer.getvalue()), (config_name, config), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("b/layer.tar")
        ti.type, ti.linkname = tarfile.SYMTYPE, "../a/layer.tar"
        t.addfile(ti)
    path = tmp_path / "shared.tar"
    path.write_bytes(out.getvalue())
    rc, _, err = pm("image", "import", str(path))
    assert rc == 0, err
    assert resolve("shared:1").diff_ids == (diff_id, diff_id)


def test_import_errors_name_the_problem(state: Path, tmp_path: Path) -> None:
    rc, _, err = pm("image", "import", str(tmp_path / "missing.tar"))
    assert rc == 125 and "no such file" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = pm("image", "import", str(empty))
    assert rc == 125 and "not an OCI image layout" in err
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b" + os.urandom(100))
    rc, _, err = pm("image", "import", str(junk))
    assert rc == 125 and err.count("\n") == 1, err
    assert os.listdir(state / "tmp") == []


def test_ops_import_returns_results(state: Path, umoci_layout: Path) -> None:
    [result] = ops.import_image(str(umoci_layout), "r:1")
    assert result.tags == ("r:1",) and result.new_layers == 2
    [again] = ops.import_image(str(umoci_layout), "r:2")
    assert again.new_layers == 0 and again.reused_layers == 2 and again.id == result.id


def test_a_full_disk_fails_cleanly(tmp_path: Path) -> None:
    """The store on a 3 MB tmpfs (in a private mount namespace); a 6 MB layer cannot fit."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "big").write_bytes(os.urandom(6 << 20))
    tarball = build.tar_rootfs(root, tmp_path / "big.tar")
    state = tmp_path / "state"
    state.mkdir()
    script = f"""
set -u
mount -t tmpfs -o size=3M tmpfs {state}
python3 -m machinectl_py image import {tarball} --name full 2>{tmp_path}/err; echo rc=$?
for d in layers/sha256 images/sha256 tmp; do ls -A {state}/$d | wc -l; done | tr '\\n' ' '; echo
cat {state}/repositories.json 2>/dev/null || echo no-repositories
python3 -m machinectl_py image import {tarball} --name full 2>/dev/null; ls -A {state}/tmp | wc -l
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PYMACHINE_STATE_DIR": str(state)}
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, env=env, check=True)
    lines = result.stdout.splitlines()
    assert lines[0] == "rc=125", result.stdout + result.stderr
    err = (tmp_path / "err").read_text()
    assert err.startswith("pymachine: ") and "No space left on device" in err and err.count("\n") == 1, err
    assert lines[1].split() == ["0", "0", "0"], lines[1]  # no layer, no image, no leftovers
    assert lines[2] == "no-repositories"
    assert lines[3] == "0"  # the second try cleaned after itself too


def test_progress_draws_on_a_terminal_only(capsys: pytest.CaptureFixture[str]) -> None:
    from machinectl_py.images.progress import Progress

    quiet = Progress("importing", 100, enabled=False)
    quiet(50)
    quiet.done()
    assert capsys.readouterr().err == ""
    shown = Progress("importing", 100, enabled=True)
    shown.INTERVAL = 0.0
    shown(50)
    shown.stage("layer 1", None)
    shown(2_000_000)
    shown.done()
    err = capsys.readouterr().err
    assert "importing: [===============" in err and " 50% " in err
    assert "layer 1: 2.0MB" in err and err.endswith("\n")


def test_concurrent_imports_and_prunes_keep_the_store_consistent(state: Path, umoci_layout: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PYMACHINE_STATE_DIR": str(state)}
    cmd = ["python3", "-m", "machinectl_py"]
    procs = [subprocess.Popen([*cmd, "image", "import", "-q", str(umoci_layout), "--name", f"par:{i}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    procs += [subprocess.Popen([*cmd, "image", "prune"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    results = [(p.returncode, out) for p, out in zip(procs, outputs, strict=True)]
    assert all(rc == 0 for rc, _ in results), results
    ids = {out.strip() for _, (out, _) in results[:4]}
    assert len(ids) == 1
    assert sorted(Store().repositories()) == [f"par:{i}" for i in range(4)]
    image = resolve("par:0")
    assert all(os.path.isdir(layer) for layer in image.layers)
    assert len(Store().all_layers()) == 2 and os.listdir(state / "tmp") == []
