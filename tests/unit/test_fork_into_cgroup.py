"""syscalls.fork_into_cgroup: os.fork() through clone3(CLONE_INTO_CGROUP), exec's child on a
pure cgroup v2 host. Run here into the cgroup v2 directory we are already in (nothing moves):
the interpreter's fork hooks run as os.fork() runs them, and both sides go on in Python."""

from __future__ import annotations

import os

import pytest

from machinectl_py import syscalls as sc


def _own_v2_cgroup() -> tuple[str, str]:
    """(its directory, its path) of our cgroup in the v2 hierarchy: /sys/fs/cgroup on a pure v2
    host, /sys/fs/cgroup/unified on a hybrid one."""
    with open("/proc/self/cgroup") as f:
        path = next(line.rstrip("\n").split(":", 2)[2] for line in f if line.startswith("0::"))
    root = "/sys/fs/cgroup" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "/sys/fs/cgroup/unified"
    return root + path.rstrip("/"), path


def test_the_child_is_born_in_the_cgroup_and_runs_python() -> None:
    directory, path = _own_v2_cgroup()
    assert os.path.isdir(directory), directory
    seen: list[str] = []
    os.register_at_fork(before=lambda: seen.append("before"), after_in_parent=lambda: seen.append("parent"))
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    read_end, write_end = os.pipe()
    try:
        pid = sc.fork_into_cgroup(fd)
        if pid == 0:
            code = 1
            try:
                with open("/proc/self/cgroup") as f:
                    line = next(line for line in f if line.startswith("0::"))
                os.write(write_end, line.encode())
                code = 7
            finally:
                os._exit(code)
    finally:
        os.close(fd)
        os.close(write_end)
    _, status = os.waitpid(pid, 0)
    line = os.read(read_end, 4096).decode()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 7
    assert line.rstrip("\n").split(":", 2)[2] == path
    assert seen[-2:] == ["before", "parent"]


def test_a_directory_that_is_no_cgroup_is_refused() -> None:
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError):
            pid = sc.fork_into_cgroup(fd)
            if pid == 0:
                os._exit(0)
    finally:
        os.close(fd)
