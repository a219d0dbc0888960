"""The container's passwd and group files are the image's: untrusted input."""

import os
from pathlib import Path

from machinectl_py import users


def test_a_fifo_or_a_directory_is_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "passwd"
    os.mkfifo(fifo)  # opening it blocking would hang the container's start forever
    assert users._entries(str(fifo)) == []
    assert users._entries(str(tmp_path)) == []
    assert users._entries(str(tmp_path / "missing")) == []


def test_entries_skip_comments_and_blank_lines(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_bytes(b"# comment\n\nroot:x:0:0:root:/root:/bin/sh\nbad\xff:x:1:1::/:/bin/false\n")
    entries = users._entries(str(passwd))
    assert entries[0] == ["root", "x", "0", "0", "root", "/root", "/bin/sh"] and len(entries) == 2
