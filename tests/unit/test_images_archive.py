"""archive.py: tar parsing, layer extraction by fd, whiteouts, tar-split round trips, hostile input.

These run as root (the project's tests do): extraction sets owners and makes whiteout nodes.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from machinectl_py import cli
from machinectl_py.images import archive
from machinectl_py.images.errors import BadArchiveError

Member = tuple[tarfile.TarInfo, bytes | None]


def info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, mode: int = 0o644, link: str = "",
         **kw: Any) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mode, ti.linkname, ti.mtime = kind, size, mode, link, 1_700_000_000
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti


def f(name: str, data: bytes = b"x", **kw: Any) -> Member:
    return info(name, size=len(data), **kw), data


def d(name: str, mode: int = 0o755) -> Member:
    return info(name, tarfile.DIRTYPE, mode=mode), None


def sym(name: str, target: str) -> Member:
    return info(name, tarfile.SYMTYPE, mode=0o777, link=target), None


def hard(name: str, target: str) -> Member:
    return info(name, tarfile.LNKTYPE, link=target), None


def make_tar(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def extract(tmp: Path, data: bytes, limits: archive.Limits = archive.DEFAULT_LIMITS
            ) -> tuple[Path, str, archive.LayerStats]:
    layer = tmp / "layer"
    layer.mkdir()
    fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY)
    try:
        diff_id, size, stats = archive.extract_layer(io.BytesIO(data), fd, limits)
    finally:
        os.close(fd)
    assert size == len(data)
    return layer, diff_id, stats


def replay(layer: Path) -> bytes:
    out = bytearray()
    fd = os.open(layer, os.O_RDONLY | os.O_DIRECTORY)
    try:
        archive.replay_layer(fd, lambda chunk: out.extend(chunk))
    finally:
        os.close(fd)
    return bytes(out)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Ordinary archives


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_extract_and_replay_round_trip(tmp_path: Path, fmt: int) -> None:
    long_dir = "deep/" + "d" * 120  # forces a ustar prefix, a GNU longname or a pax path
    members = [
        d("./"), d("etc"), f("etc/hostname", b"box\n", uid=12, gid=34),
        f("bin/prog", b"\x7fELF" * 1000, mode=0o4755),  # parent omitted, set-uid kept
        sym("bin/sh", "prog"), hard("bin/prog2", "bin/prog"), d(long_dir), f(long_dir + "/file", b"deep"),
        (info("run/fifo", tarfile.FIFOTYPE, mode=0o600), None), f("empty", b""),
    ]
    data = make_tar(members, fmt)
    layer, diff_id, stats = extract(tmp_path, data)
    diff = layer / "diff"
    assert diff_id == sha(data)
    assert (diff / "etc/hostname").read_bytes() == b"box\n"
    st = os.stat(diff / "etc/hostname")
    assert (st.st_uid, st.st_gid, st.st_mtime) == (12, 34, 1_700_000_000)
    assert stat.S_IMODE(os.stat(diff / "bin/prog").st_mode) == 0o4755
    assert os.readlink(diff / "bin/sh") == "prog"
    assert os.stat(diff / "bin/prog2").st_ino == os.stat(diff / "bin/prog").st_ino
    assert (diff / long_dir / "file").read_bytes() == b"deep"
    assert stat.S_ISFIFO(os.lstat(diff / "run/fifo").st_mode)
    assert os.stat(diff / "etc").st_mtime == 1_700_000_000  # directory times set after their children
    assert stats.files == 4 and stats.content_size == 4 + 4000 + 4 + 0
    assert replay(layer) == data


def test_gnu_tar_archive_round_trips_byte_for_byte(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/file").write_bytes(os.urandom(70_000))
    (src / "a/link").symlink_to("b/file")
    os.link(src / "a/b/file", src / "a/hard")
    os.setxattr(src / "a/b/file", "user.note", b"hello")
    out = tmp_path / "gnu.tar"
    subprocess.run(["tar", "--xattrs", "--numeric-owner", "-cf", out, "-C", src, "."], check=True)
    data = out.read_bytes()
    layer, diff_id, _ = extract(tmp_path, data)
    assert diff_id == sha(data)
    assert os.getxattr(layer / "diff/a/b/file", "user.note") == b"hello"
    assert replay(layer) == data


def test_duplicate_entries_keep_the_last_and_still_replay(tmp_path: Path) -> None:
    data = make_tar([f("x", b"first"), f("x", b"second"), f("y", b"one"), sym("y", "x")])
    layer, _, _ = extract(tmp_path, data)
    assert (layer / "diff/x").read_bytes() == b"second"
    assert os.readlink(layer / "diff/y") == "x"
    assert replay(layer) == data


def test_devices_are_recorded_not_created(tmp_path: Path) -> None:
    members: list[Member] = [(info("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), None),
               (info("dev/sda", tarfile.BLKTYPE, mode=0o660, devmajor=8, devminor=0), None),
               (info("dev/zero-zero", tarfile.CHRTYPE, devmajor=0, devminor=0), None)]
    data = make_tar(members)
    layer, _, stats = extract(tmp_path, data)
    assert not (layer / "diff/dev").exists()
    assert stats.skipped_devices == ["dev/null", "dev/sda", "dev/zero-zero"]
    assert replay(layer) == data


def test_only_allowed_xattrs_are_applied(tmp_path: Path) -> None:
    ti = info("file", size=1)
    ti.pax_headers = {"SCHILY.xattr.user.ok": "1", "SCHILY.xattr.trusted.overlay.redirect": "/etc",
                      "SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.security.selinux": "x"}
    layer, _, stats = extract(tmp_path, make_tar([(ti, b"z")]))
    assert os.listxattr(layer / "diff/file") == ["user.ok"]
    assert stats.skipped_xattrs == 3


# ---------------------------------------------------------------------------------------------
# Whiteouts


def test_oci_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    data = make_tar([d("etc"), f("etc/.wh.passwd", b""), d("var/cache"), f("var/cache/.wh..wh..opq", b""),
                     f("var/cache/kept", b"k"), f("x", b"1"), f(".wh.x", b"")])
    layer, _, _ = extract(tmp_path, data)
    diff = layer / "diff"
    for name in ("etc/passwd", "x"):
        st = os.lstat(diff / name)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, name
    assert os.getxattr(diff / "var/cache", "trusted.overlay.opaque") == b"y"
    assert (diff / "var/cache/kept").read_bytes() == b"k"
    assert not (diff / "etc/.wh.passwd").exists() and not (diff / "var/cache/.wh..wh..opq").exists()
    assert replay(layer) == data


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "a/.wh.", "a/.wh..", ".wh..wh.foo"])
def test_invalid_whiteouts_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BadArchiveError, match="invalid whiteout"):
        extract(tmp_path, make_tar([d("a"), f(name, b"")]))


def test_whiteout_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadArchiveError, match="whiteout"):
        extract(tmp_path, make_tar([d(".wh.etc")]))


# ---------------------------------------------------------------------------------------------
# Hostile archives, at the extraction level (the CLI-level cases follow)


def _victim(tmp: Path) -> Path:
    victim = tmp / "victim"
    victim.mkdir()
    (victim / "file").write_text("original")
    return victim


HOSTILE: dict[str, Callable[[Path], bytes]] = {
    "dotdot": lambda v: make_tar([f("../../../../" + str(v) + "/file", b"pwned")]),
    "dotdot-inside": lambda v: make_tar([d("a"), f("a/../../escape", b"pwned")]),
    "absolute": lambda v: make_tar([f(str(v) + "/file", b"pwned")]),
    "symlink-parent-absolute": lambda v: make_tar([sym("link", str(v)), f("link/file", b"pwned")]),
    "symlink-parent-relative": lambda v: make_tar([sym("link", "../../../../../../" + str(v)),
                                                   f("link/file", b"pwned")]),
    "symlink-parent-deep": lambda v: make_tar([d("a"), sym("a/b", str(v)), f("a/b/c/file", b"pwned")]),
    "hardlink-absolute": lambda v: make_tar([hard("h", str(v) + "/file")]),
    "hardlink-dotdot": lambda v: make_tar([hard("h", "../../../../../.." + str(v) + "/file")]),
    "hardlink-through-symlink": lambda v: make_tar([sym("s", str(v)), hard("h", "s/file")]),
    "hardlink-missing": lambda v: make_tar([hard("h", "nothere")]),
    "link-to-link-leaving": lambda v: make_tar([sym("l1", str(v)), sym("l2", "l1"), f("l2/file", b"pwned")]),
    "hardlink-via-link-chain": lambda v: make_tar([sym("l1", str(v)), sym("l2", "l1"), hard("h", "l2/file")]),
    "hardlink-to-symlink-then-write": lambda v: make_tar([sym("l1", str(v)), hard("l2", "l1"), f("l2/file")]),
    "hardlink-to-dir": lambda v: make_tar([d("dir"), hard("h", "dir")]),
    "hardlink-to-self": lambda v: make_tar([hard("h", "h")]),
    "whiteout-through-symlink": lambda v: make_tar([sym("s", str(v)), f("s/.wh.file", b"")]),
    "opaque-through-symlink": lambda v: make_tar([sym("s", str(v)), f("s/.wh..wh..opq", b"")]),
    "replace-dir": lambda v: make_tar([d("a"), f("a/x"), f("a", b"file now")]),
    "root-not-dir": lambda v: make_tar([f("./", b"x")]),
    "sparse": lambda v: make_tar([(info("s", b"S"), None)]),
    "unknown-type": lambda v: make_tar([(info("s", b"Z"), None)]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_entries_are_refused_and_touch_nothing_outside(tmp_path: Path, case: str) -> None:
    victim = _victim(tmp_path)
    before = sorted(os.listdir(victim)), os.stat(victim / "file").st_nlink
    with pytest.raises(BadArchiveError):
        extract(tmp_path, HOSTILE[case](victim))
    assert (victim / "file").read_text() == "original"
    assert (sorted(os.listdir(victim)), os.stat(victim / "file").st_nlink) == before
    assert stat.S_IMODE(os.stat(victim / "file").st_mode) == 0o644


def test_symlink_targets_are_text_never_followed(tmp_path: Path) -> None:
    """A symlink to the host and a hardlink to that symlink are created as links, nothing more."""
    victim = _victim(tmp_path)
    members = [sym("s", str(victim / "file")), hard("h", "s")]
    ti, _ = f("s2", b"")
    ti.type, ti.linkname = tarfile.SYMTYPE, str(victim)
    layer, _, _ = extract(tmp_path, make_tar([*members, (ti, None)]))
    assert os.path.islink(layer / "diff/h") and os.readlink(layer / "diff/h") == str(victim / "file")
    assert (victim / "file").read_text() == "original" and os.stat(victim / "file").st_nlink == 1
    # chown/utime of a symlink entry changed the link, not its target
    assert os.stat(victim / "file").st_mtime != 1_700_000_000


def test_a_directory_entry_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    layer, _, _ = extract(tmp_path, make_tar([sym("etc", str(victim)), d("etc"), f("etc/file", b"mine")]))
    assert not os.path.islink(layer / "diff/etc") and (layer / "diff/etc/file").read_bytes() == b"mine"
    assert (victim / "file").read_text() == "original"


def test_limits_bound_entries_names_sizes(tmp_path: Path) -> None:
    few = archive.Limits(max_entries=3)
    with pytest.raises(BadArchiveError, match="more than 3 entries"):
        extract(tmp_path, make_tar([f(f"f{i}") for i in range(5)]), few)
    small = archive.Limits(max_file_size=10)
    (tmp_path / "b").mkdir()
    with pytest.raises(BadArchiveError, match="too large"):
        extract(tmp_path / "b", make_tar([f("big", b"y" * 11)]), small)
    with pytest.raises(BadArchiveError, match="longer than"):
        (tmp_path / "c").mkdir()
        extract(tmp_path / "c", make_tar([f("n" * 300)]))
    ti = info("p", size=1)
    ti.pax_headers = {"comment": "c" * 5000}
    with pytest.raises(BadArchiveError, match="extended header"):
        (tmp_path / "d").mkdir()
        extract(tmp_path / "d", make_tar([(ti, b"1")]), archive.Limits(max_ext_header=1024))
    with pytest.raises(BadArchiveError, match="after the end"):
        (tmp_path / "e").mkdir()
        extract(tmp_path / "e", make_tar([f("a")]) + bytes(1 << 16), archive.Limits(max_trailer=1024))


def test_corrupt_and_truncated_archives(tmp_path: Path) -> None:
    data = bytearray(make_tar([f("a", b"z" * 2000)]))
    data[150] ^= 0xFF  # checksum field
    with pytest.raises(BadArchiveError, match="checksum"):
        extract(tmp_path, bytes(data))
    (tmp_path / "t").mkdir()
    with pytest.raises(BadArchiveError, match="truncated"):
        extract(tmp_path / "t", make_tar([f("a", b"z" * 2000)])[:1024])


def test_split_name() -> None:
    assert archive.split_name(b"./a//b/./c/") == (b"a", b"b", b"c")
    assert archive.split_name(b"./") == ()
    for bad in (b"/etc", b"a/../b", b".."):
        with pytest.raises(BadArchiveError):
            archive.split_name(bad)


# ---------------------------------------------------------------------------------------------
# Hostile archives through the CLI: one line, non-zero exit, nothing registered, host unchanged


@pytest.fixture
def store_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(state))
    return state


def assert_store_empty(state: Path) -> None:
    for sub in ("layers/sha256", "images/sha256", "tmp"):
        path = state / sub
        assert not path.exists() or os.listdir(path) == [], sub
    repos = state / "repositories.json"
    assert not repos.exists() or repos.read_text().strip() in ("{}", "")


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_cli_import_of_hostile_archive_fails_cleanly(
    tmp_path: Path, store_dir: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = _victim(tmp_path)
    archive_path = tmp_path / "evil.tar"
    archive_path.write_bytes(HOSTILE[case](victim))
    rc = cli.main(["image", "import", "--quiet", str(archive_path), "--name", "evil"])
    err = capsys.readouterr().err
    assert rc == 125
    assert err.startswith("pymachine: ") and err.count("\n") == 1, err
    assert_store_empty(store_dir)
    assert (victim / "file").read_text() == "original" and os.listdir(victim) == ["file"]


def test_tar_header_is_read_back_by_tarfile_gnu_tar_and_ourselves(tmp_path: Path) -> None:
    entries = [
        archive.Entry(name=b"short", type=archive.REGTYPE, mode=0o644, uid=0, gid=0, size=3, mtime_ns=10**18),
        archive.Entry(name=b"d/" * 60 + b"split-by-prefix", type=archive.REGTYPE, mode=0o4755, uid=1,
                      gid=2, size=0, mtime_ns=0),
        archive.Entry(name=b"x" * 300, type=archive.REGTYPE, mode=0o600, uid=3_000_000, gid=5, size=0,
                      mtime_ns=0, xattrs={"user.k": b"\x00\xffbin"}),
        archive.Entry(name=b"link", type=archive.SYMTYPE, mode=0o777, uid=0, gid=0, size=0, mtime_ns=0,
                      linkname=b"t/" * 80),
        archive.Entry(name=b"caf\xc3\xa9/", type=archive.DIRTYPE, mode=0o755, uid=0, gid=0, size=0, mtime_ns=0),
    ]
    data = bytearray()
    for e in entries:
        data += archive.tar_header(e)
        if e.size:
            data += b"abc" + bytes(-3 % 512)
    data += bytes(1024)
    path = tmp_path / "h.tar"
    path.write_bytes(bytes(data))
    with tarfile.open(path) as t:
        got = [(m.name, m.mode, m.uid, m.linkname, m.pax_headers.get("SCHILY.xattr.user.k")) for m in t]
    assert got[1] == ("d/" * 60 + "split-by-prefix", 0o4755, 1, "", None)
    assert got[2][0] == "x" * 300 and got[2][2] == 3_000_000
    assert got[3][3] == "t/" * 80 and got[4][0] == "café"
    listing = subprocess.run(["tar", "-tvf", path], capture_output=True, text=True, check=True).stdout
    assert "x" * 300 in listing and "split-by-prefix" in listing
    reader = archive.TarReader(io.BytesIO(bytes(data)))
    parsed = [(e.name, e.uid, e.xattrs) for e in reader.entries()]
    assert parsed[2] == (b"x" * 300, 3_000_000, {"user.k": b"\x00\xffbin"})
    assert [p[0] for p in parsed] == [e.name for e in entries]


def test_mutated_archives_fail_only_with_clean_errors(tmp_path: Path) -> None:
    """Random byte flips in a varied archive: extraction succeeds or raises one of our errors (or
    an OSError naming the call); never another exception, never a write outside the layer."""
    import random

    victim = _victim(tmp_path)
    long_name = "p/" * 70 + "file"
    ti = info("x", size=3)
    ti.pax_headers = {"SCHILY.xattr.user.a": "v", "mtime": "1700000000.5"}
    base = make_tar([d("a"), f("a/b", b"hello" * 100), sym("a/s", "b"), hard("a/h", "a/b"), f(long_name, b"q"),
                     (ti, b"abc"), f("a/.wh.gone", b""), f("a/.wh..wh..opq", b""),
                     (info("a/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), None)], tarfile.GNU_FORMAT)
    base += make_tar([f("pax-" + "n" * 120, b"z")])
    rng = random.Random(1234)
    outcomes = {"ok": 0, "refused": 0}
    for i in range(int(os.environ.get("FUZZ_ITERATIONS", "300"))):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256) if rng.random() < 0.7 else rng.choice(b"/.\0 0123456789")
        target = tmp_path / f"m{i}"
        target.mkdir()
        try:
            extract(target, bytes(data))
            outcomes["ok"] += 1
        except BadArchiveError:
            outcomes["refused"] += 1
        except OSError as e:
            assert e.filename is not None or e.errno is not None, repr(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50 and outcomes["ok"] > 10, outcomes
    assert (victim / "file").read_text() == "original" and os.listdir(victim) == ["file"]
