"""-v parsing and the volume store's pure parts."""

from __future__ import annotations

from pathlib import Path

import pytest

from machinectl_py import volumes
from machinectl_py.errors import UsageError
from machinectl_py.spec import ContainerSpec, Volume


@pytest.mark.parametrize(("text", "expected"), [
    ("/host/path:/ctr", Volume("/ctr", "/host/path", False)),
    ("/host/path:/ctr:ro", Volume("/ctr", "/host/path", True)),
    ("/host/path:/ctr:rw", Volume("/ctr", "/host/path", False)),
    ("data:/data", Volume("/data", "data", False)),
    ("data:/data:ro", Volume("/data", "data", True)),
    ("/cache", Volume("/cache", None, False)),
    ("/cache:ro", Volume("/cache", None, True)),
    ("/a:/x//y/", Volume("/x/y", "/a")),
])
def test_parse_volume(text: str, expected: Volume) -> None:
    assert volumes.parse_volume(text) == expected
    assert volumes.parse_volume(volumes.format_volume(expected)) == expected


@pytest.mark.parametrize("text", [
    "relative", "data:relative", "/a:/", "/a:/b:/c:ro:x", "../x:/y", "/a/../b:/c", "/a:/b/../c",
    "-bad:/x", "a:/x",  # volume names: 2+ chars, starting with a letter or digit
    ".hidden:/x",
])
def test_parse_volume_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        volumes.parse_volume(text)


def test_anonymous_volumes_get_a_name_and_are_removed_with_their_container(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(tmp_path))
    spec = ContainerSpec(name="c1", image="busybox", volumes=(Volume("/cache"), Volume("/data", "shared"))).validate()
    named = volumes.create_anonymous(spec)
    anon = named.volumes[0].source
    assert anon is not None and len(anon) == 64
    assert (tmp_path / "volumes" / anon / "_data").is_dir()
    ops = volumes.bind_ops(named)
    assert [(op.source, op.target) for op in ops] == [
        (str(tmp_path / "volumes" / anon / "_data"), "/cache"),
        (str(tmp_path / "volumes" / "shared" / "_data"), "/data"),
    ]
    assert volumes.anonymous_names(named) == [anon]
    volumes.remove_anonymous(named)
    assert volumes.list_volumes() == ["shared"]


def test_bind_source_must_exist(tmp_path: Path) -> None:
    spec = ContainerSpec(name="c1", image="busybox", volumes=(Volume("/x", str(tmp_path / "missing")),)).validate()
    with pytest.raises(UsageError, match="does not exist"):
        volumes.bind_ops(spec)


def test_a_reparsed_definition_keeps_its_anonymous_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(tmp_path))
    spec = ContainerSpec(name="c1", image="busybox", volumes=(Volume("/cache"),)).validate()
    first = volumes.create_anonymous(spec)
    again = volumes.create_anonymous(spec, first)  # the same hand-written definition, parsed again
    assert again.volumes == first.volumes
    assert len(volumes.list_volumes()) == 1
