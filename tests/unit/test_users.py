"""The container's passwd and group files are the image's: untrusted input."""

import os
from pathlib import Path

import pytest

from machinectl_py import users
from machinectl_py.errors import UsageError


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


def test_an_out_of_range_id_in_the_images_passwd_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's /etc/passwd is untrusted: an id setresuid would take as "no change" is an error."""
    files = {"/etc/passwd": [["big", "x", "4294967295", "0", "", "/", "/bin/sh"]], "/etc/group": []}
    monkeypatch.setattr(users, "_entries", lambda path: files[path])
    with pytest.raises(UsageError, match="an id above"):
        users.resolve_user("big")
