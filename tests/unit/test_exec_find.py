"""exec finds a container from its record only when /proc vouches for the record's PID."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from machinectl_py import exec as exec_mod


def test_a_process_that_is_not_a_namespace_init_is_refused() -> None:
    # pytest itself: not PID 1 of a PID namespace below the host's, whatever its cgroup.
    with open("/proc/self/cgroup") as f:
        unit = f.read().rstrip("\n").split(":", 2)[-1].rsplit("/", 1)[-1] or "-.slice"
    assert exec_mod._is_init_of(os.getpid(), unit) is False


def test_no_record_means_ask_machined(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(tmp_path))
    assert exec_mod.find_from_record("no-such-container") is None


def test_the_confinement_is_kept_for_the_life_of_the_init(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """cached_confinement works the program out once per init (its PID and start time), bounding
    set and record fields; anything else changed works it out again."""
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(tmp_path))
    (tmp_path / "containers" / "web").mkdir(parents=True)
    calls: list[int] = []

    def confinement(raw: object, caps: int) -> tuple[bytes, bool]:
        calls.append(caps)
        return b"\x06\x00\x00\x00\x00\x00\xff\x7f" * caps, caps == 3

    monkeypatch.setattr(exec_mod, "container_confinement", confinement)
    raw = {"spec": {"security_opt": ["no-new-privileges"]}}
    me = os.getpid()
    assert exec_mod.cached_confinement("web", raw, 3, me) == (b"\x06\x00\x00\x00\x00\x00\xff\x7f" * 3, True)
    assert exec_mod.cached_confinement("web", raw, 3, me) == (b"\x06\x00\x00\x00\x00\x00\xff\x7f" * 3, True)
    assert calls == [3]
    assert exec_mod.cached_confinement("web", raw, 2, me)[1] is False  # another bounding set
    assert exec_mod.cached_confinement("web", {"spec": {"privileged": True}}, 2, me)  # another record
    assert exec_mod.cached_confinement("web", raw, 2, os.getppid())  # another init
    assert calls == [3, 2, 2, 2]
    assert exec_mod.cached_confinement("web", None, 2, me)  # no record: nothing kept
    assert calls == [3, 2, 2, 2, 2]
    assert sorted(p.name for p in (tmp_path / "containers" / "web").iterdir()) == ["exec-seccomp"]


def test_a_go_pipe_in_the_way_moves_to_the_lowest_free_fd_above_5() -> None:
    """finalize_and_exec moves a go pipe at fd 3 or 4 out of the way with os.dup (a process.json's
    RLIMIT_NOFILE may be 77: fd 254 would fail), to the lowest free number above GO_FD."""
    from machinectl_py import payload

    r, w = os.pipe()
    try:
        copy = payload._dup_above(r)
        assert copy > payload.GO_FD and not os.get_inheritable(copy)
        os.write(w, b"g")
        assert os.read(copy, 1) == b"g"
        os.close(copy)
    finally:
        os.close(r)
        os.close(w)
