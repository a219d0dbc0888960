"""`image import DIR:TAG` and `FILE:TAG`: one image out of a layout or archive holding several."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from images import build  # tests/images: pytest puts tests/ on sys.path

from machinectl_py import cli


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(path))
    return path


@pytest.fixture(scope="module")
def two_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One OCI layout, tags v1 and v2: two images with different content."""
    work = tmp_path_factory.mktemp("multi")
    layout = work / "layout"
    build.run("umoci", "init", "--layout", layout)
    for tag in ("v1", "v2"):
        image = f"{layout}:{tag}"
        build.run("umoci", "new", "--image", image)
        bundle = work / f"bundle-{tag}"
        build.run("umoci", "unpack", "--image", image, bundle)
        (bundle / "rootfs" / "which").write_text(tag)
        build.run("umoci", "repack", "--image", image, bundle)
    return layout.rename(work / "lay:out")  # a colon in the path itself must not confuse the split


def pm(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(args))
    return rc, out.getvalue(), err.getvalue()


def diff_ids_of(layout: Path, tag: str) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    [d] = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / d["digest"].removeprefix("sha256:")).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_text())
    return list(config["rootfs"]["diff_ids"])


def layers(ref: str) -> list[str]:
    rc, out, err = pm("image", "inspect", ref, "--format", "{{json .RootFS.Layers}}")
    assert rc == 0, err
    result: list[str] = json.loads(out)
    return result


def test_dir_tag_picks_one_image(state: Path, two_images: Path) -> None:
    rc, _, err = pm("image", "import", "-q", str(two_images), "--name", "both:1")
    assert rc == 125 and "holds 2 images; --name needs exactly one" in err and f"{two_images}:TAG" in err
    rc, _, err = pm("image", "import", "-q", f"{two_images}:v2", "--name", "picked:2")
    assert rc == 0, err
    assert layers("picked:2") == diff_ids_of(two_images, "v2") != diff_ids_of(two_images, "v1")


def test_an_unknown_tag_names_the_ones_there(state: Path, two_images: Path) -> None:
    rc, _, err = pm("image", "import", f"{two_images}:v9", "--name", "x:1")
    assert rc == 125
    assert err.splitlines() == [f"pymachine: {two_images} has no image tagged 'v9'", "hint: it has: v1, v2"]
    rc, _, err = pm("image", "import", f"{two_images}-missing:v1")
    assert rc != 0 and "no such file or directory" in err


def test_archive_file_tag_picks_one_image(state: Path, two_images: Path, tmp_path: Path) -> None:
    archive = tmp_path / "multi.tar"
    build.run("tar", "-C", two_images, "-cf", archive, ".")
    rc, _, err = pm("image", "import", "-q", f"{archive}:v1", "--name", "fromtar:1")
    assert rc == 0, err
    assert layers("fromtar:1") == diff_ids_of(two_images, "v1")
