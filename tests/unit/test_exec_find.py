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
