"""gc's recognition of debris: temporary files of dead writers, pymachine command lines."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from machinectl_py.debris import is_pymachine_command, other_pymachine_processes, stale_temp_files, temp_file_pid


def test_temp_file_pid() -> None:
    assert temp_file_pid("50-pymachine.conf.1234.tmp") == 1234
    assert temp_file_pid(".web.toml.77.tmp") == 77
    assert temp_file_pid("pymachine@.service.9.tmp") == 9
    for name in ("container.json.tmp", "web.toml", "x.0.tmp", "x.12a.tmp", "tmp", "1234.tmp"):
        assert temp_file_pid(name) is None, name


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_temp_files_are_those_of_dead_writers(tmp_path: Path) -> None:
    dead = dead_pid()
    for name in (f"50-pymachine.conf.{dead}.tmp", f"50-pymachine.conf.{os.getpid()}.tmp", "50-pymachine.conf",
                 f"other.service.{dead}.tmp"):
        (tmp_path / name).write_text("")
    found = stale_temp_files([(str(tmp_path), "50-"), (str(tmp_path / "missing"), "")])
    assert found == [str(tmp_path / f"50-pymachine.conf.{dead}.tmp")]


def test_pymachine_command_lines() -> None:
    assert is_pymachine_command([b"/usr/bin/python3", b"-I", b"/opt/pymachine/bin/pymachine", b"_service", b"web"])
    assert is_pymachine_command([b"/usr/local/bin/pymachine", b"start", b"web", b""])
    assert is_pymachine_command([b"python3", b"-m", b"machinectl_py", b"run", b"busybox"])
    assert is_pymachine_command([b"python3", b"-I", b"-m", b"machinectl_py.generator", b"/run/x"])
    assert not is_pymachine_command([b"python3", b"-c", b"import pymachine"])
    assert not is_pymachine_command([b"sleep", b"1000"])
    assert not is_pymachine_command([b"vim", b"/etc/pymachine/machines/web.toml"])
    assert not is_pymachine_command([b""])


def test_other_pymachine_processes_sees_a_running_command(tmp_path: Path) -> None:
    launcher = tmp_path / "pymachine"
    launcher.write_text("import time\ntime.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, str(launcher)])
    try:
        # Until its exec, the child's cmdline is still ours (pytest's): wait for it to change.
        deadline = time.monotonic() + 10
        while proc.pid not in other_pymachine_processes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.pid in other_pymachine_processes()
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in other_pymachine_processes()
