"""The lifecycle layer's record and definition handling, on temporary directories (no systemd)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from machinectl_py import lifecycle, state
from machinectl_py.errors import ConflictError, NotFoundError
from machinectl_py.spec import ContainerSpec


@pytest.fixture
def machines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYMACHINE_CONFIG_DIR", str(tmp_path / "etc"))
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(tmp_path / "var"))
    path = tmp_path / "etc" / "machines"
    path.mkdir(parents=True)
    return path


def make_record(name: str, spec: ContainerSpec, unit: str | None = None) -> state.ContainerRecord:
    state.claim(name)
    try:
        record = state.ContainerRecord(name=name, id="ab" * 32, image_name="busybox:latest", image_id="cd" * 32,
                                       spec=spec, created=state.now(), unit=unit or f"pymachine@{name}.service")
        state.save(record)
    finally:
        state.release_claim(name)
    return record


def age(path: Path | str, seconds: float) -> None:
    when = os.stat(path).st_mtime - seconds
    os.utime(path, (when, when))


def test_sync_takes_an_edited_definition_into_the_record(machines: Path) -> None:
    make_record("web", ContainerSpec(name="web", image="busybox", command=("old",)).validate())
    (machines / "web.toml").write_text('image = "busybox"\ncommand = ["new"]\n')
    spec = lifecycle.Container.load("web").sync()
    assert spec.command == ("new",)
    assert state.load("web").spec.command == ("new",)  # stored: the next start reads it from the record


def test_sync_leaves_the_record_alone_when_the_definition_is_older(machines: Path) -> None:
    (machines / "web.toml").write_text('image = "busybox"\ncommand = ["in-toml"]\n')
    age(machines / "web.toml", 60)
    make_record("web", ContainerSpec(name="web", image="busybox", command=("in-record",)).validate())
    assert lifecycle.Container.load("web").sync().command == ("in-record",)


def test_load_or_adopt_without_record_or_definition_is_not_found(machines: Path) -> None:
    with pytest.raises(NotFoundError, match="no such container: ghost"):
        lifecycle.Container.load_or_adopt("ghost")


def test_a_container_made_by_run_is_foreground(machines: Path) -> None:
    make_record("fg", ContainerSpec(name="fg", image="busybox").validate(), unit="machine-fg.scope")
    container = lifecycle.Container.load("fg")
    assert container.is_foreground and container.unit == "machine-fg.scope"
    with pytest.raises(ConflictError, match="made by `pymachine run`"):
        container.require_service()


def test_the_setup_processs_last_error_is_kept_for_start(machines: Path) -> None:
    make_record("web", ContainerSpec(name="web", image="busybox").validate())
    assert lifecycle.read_last_error("web") == ""
    lifecycle.record_error("web", "cannot run 'x': executable file not found")
    assert lifecycle.read_last_error("web") == "cannot run 'x': executable file not found"
    lifecycle.clear_error("web")
    assert lifecycle.read_last_error("web") == ""


def test_a_running_containers_state_saves_keep_an_updates_spec(machines: Path) -> None:
    """A foreground run saves its states for its whole life, from the record it read at start;
    an `update` in between changes the spec. Neither write may undo the other (the CI failure
    of a318f11: `inspect` after `update` showed the old memory limit)."""
    spec = ContainerSpec(name="web", image="busybox", command=("sleep", "9")).validate()
    runner = make_record("web", spec, unit="machine-web.scope")
    updater = state.load("web")
    updater.spec = ContainerSpec(name="web", image="busybox", command=("sleep", "9"), tty=True).validate()
    state.save_spec(updater)
    runner.state, runner.pid = "running", 42
    state.save_state(runner)
    assert state.load("web").spec.tty and state.load("web").state == "running"
    assert runner.spec.tty  # the runner's later saves carry the new spec too
    stale = state.load("web")
    stale.state = "created"  # an update that read the record before the run saved "running"
    state.save_spec(stale)
    assert state.load("web").state == "running" and state.load("web").pid == 42
