"""pymachine-generator's logic, on temporary directories (no systemd needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from machinectl_py import generator, state
from machinectl_py.spec import ContainerSpec


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(machines dir, output dir), with pymachine's state and config under tmp_path."""
    monkeypatch.setenv("PYMACHINE_CONFIG_DIR", str(tmp_path / "etc"))
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("SYSTEMD_SCOPE", raising=False)
    machines = tmp_path / "etc" / "machines"
    machines.mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    return machines, out


def dropin(out: Path, name: str) -> str:
    return (out / f"pymachine@{name}.service.d" / "50-pymachine.conf").read_text()


def settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_writes_the_units_settings_of_each_definition(dirs: tuple[Path, Path]) -> None:
    machines, out = dirs
    (machines / "web.toml").write_text('image = "busybox"\nrestart = "always"\n[limits]\nmemory = "64M"\npids = 9\n')
    (machines / "db.toml").write_text('image = "alpine:3"\n')
    assert generator.generate(str(out), str(machines)) == ["pymachine@db.service", "pymachine@web.service"]
    web = settings(dropin(out, "web"))
    assert web["Restart"] == "always" and web["MemoryMax"] == str(64 * 1024 * 1024) and web["TasksMax"] == "9"
    full = web["Environment"].removeprefix("PYMACHINE_CONTAINER_ID=")
    assert generator.is_container_id(full)
    assert web["LogExtraFields"] == (f"CONTAINER_ID={full[:12]} CONTAINER_ID_FULL={full} "
                                     '"IMAGE_NAME=busybox:latest"')
    assert settings(dropin(out, "db"))["Restart"] == "no"


@pytest.mark.parametrize(("unified", "cpus", "expected"), [
    (True, False, ["Delegate=", "Delegate=yes"]),
    (False, False, ["Delegate=", "Delegate=memory pids devices"]),
    (False, True, ["Delegate=", "Delegate=memory pids devices cpu"]),
])
def test_the_delegation_follows_the_layout_of_this_boot(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                                        unified: bool, cpus: bool, expected: list[str]) -> None:
    """In its own drop-in, sorting after the settings one: it overrides the Delegate= that
    `create` wrote in /etc for the layout the host had then."""
    from machinectl_py import mounts

    machines, out = dirs
    monkeypatch.setattr(mounts, "unified_cgroup_host", lambda: unified)
    (machines / "web.toml").write_text('image = "busybox"\n' + ('[limits]\ncpus = 0.5\n' if cpus else ""))
    generator.generate(str(out), str(machines))
    directory = out / "pymachine@web.service.d"
    assert sorted(os.listdir(directory)) == ["50-pymachine.conf", "60-pymachine-delegate.conf"]
    lines = (directory / "60-pymachine-delegate.conf").read_text().splitlines()
    assert lines[1:] == ["[Service]", *expected]


def test_the_id_is_stable_until_the_definition_is_written_anew(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    machines, out = dirs
    path = machines / "web.toml"
    path.write_text('image = "busybox"\n')
    generator.generate(str(out), str(machines))
    first = settings(dropin(out, "web"))["Environment"]
    generator.generate(str(out), str(machines))
    assert settings(dropin(out, "web"))["Environment"] == first
    # Removed and written again (rm, then a new definition of that name): a new container, a new id.
    path.unlink()
    (tmp_path / "keep-the-inode-busy").write_text("")
    path.write_text('image = "busybox"\n')
    os.utime(path, ns=(1, 1))  # mtime alone changes nothing; the ctime moves with the new file
    generator.generate(str(out), str(machines))
    assert settings(dropin(out, "web"))["Environment"] != first


def test_the_id_of_a_container_with_a_record_is_the_records(dirs: tuple[Path, Path]) -> None:
    machines, out = dirs
    (machines / "web.toml").write_text('image = "busybox"\n')
    spec = ContainerSpec(name="web", image="busybox").validate()
    state.claim("web")
    record_id = "ab" * 32
    state.save(state.ContainerRecord(name="web", id=record_id, image_name="busybox:latest", image_id="sha256:1",
                                     spec=spec, created=1.0, unit="pymachine@web.service"))
    generator.generate(str(out), str(machines))
    web = settings(dropin(out, "web"))
    assert web["Environment"] == f"PYMACHINE_CONTAINER_ID={record_id}"
    assert f"CONTAINER_ID={record_id[:12]} " in web["LogExtraFields"]
    assert '"IMAGE_NAME=busybox:latest"' in web["LogExtraFields"]


def test_bad_definitions_are_skipped(dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    machines, out = dirs
    (machines / "good.toml").write_text('image = "busybox"\n')
    (machines / "bad.toml").write_text('image = "busybox"\nrestart = "sometimes"\n')
    (machines / "broken.toml").write_bytes(b"image = \xff\n")
    (machines / "bad name.toml").write_text('image = "busybox"\n')
    (machines / "notes.txt").write_text("not a definition")
    assert generator.generate(str(out), str(machines)) == ["pymachine@good.service"]
    err = capsys.readouterr().err
    for bad in ("bad.toml", "broken.toml", "bad name.toml"):
        assert f"skipping {machines / bad}" in err, err
    assert "notes.txt" not in err
    assert sorted(os.listdir(out)) == ["pymachine@good.service.d"]


def test_main_never_fails(dirs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    machines, _ = dirs
    (machines / "web.toml").write_text('image = "busybox"\n')
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert generator.main([str(blocked), "/early", "/late"]) == 0  # cannot write there: logged, exit 0
    assert "failed" in capsys.readouterr().err
    assert generator.main([str(tmp_path / "out")]) == 0
    assert generator.main([]) == 2


def test_no_machines_dir_is_nothing_to_do(tmp_path: Path) -> None:
    assert generator.generate(str(tmp_path), str(tmp_path / "missing")) == []
