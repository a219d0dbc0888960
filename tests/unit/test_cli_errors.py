"""cli.run_verb's one handler: a PymachineError (a BusError too) is one line and exit 125."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from machinectl_py.cli import run_verb
from machinectl_py.errors import BusError, PymachineError

VERB = """
from machinectl_py.errors import BusError, UsageError

def bus_fails(argv):
    raise BusError("org.freedesktop.systemd1.NoSuchUnit", "Unit x.service not loaded.")

def usage_fails(argv):
    raise UsageError("bad flag", hint="see --help")
"""


@pytest.fixture
def verb_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "fake_verb.py").write_text(VERB)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PYMACHINE_DEBUG", raising=False)
    sys.modules.pop("fake_verb", None)
    return "fake_verb"


def test_bus_error_is_a_pymachine_error() -> None:
    e = BusError("org.freedesktop.machine1.NoSuchMachine", "No machine 'x' known")
    assert isinstance(e, PymachineError) and e.exit_code == 125
    assert e.name == "org.freedesktop.machine1.NoSuchMachine" and e.message == "No machine 'x' known"
    assert str(e) == "No machine 'x' known (org.freedesktop.machine1.NoSuchMachine)"


def test_a_bus_error_is_one_line_and_125(verb_module: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_verb(verb_module, "bus_fails", []) == 125
    assert capsys.readouterr().err == "pymachine: Unit x.service not loaded. (org.freedesktop.systemd1.NoSuchUnit)\n"


def test_a_bus_error_shows_its_traceback_with_pymachine_debug(verb_module: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_DEBUG", "1")
    with pytest.raises(BusError):
        run_verb(verb_module, "bus_fails", [])


def test_other_errors_keep_their_message_and_hint(verb_module: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_verb(verb_module, "usage_fails", []) == 125
    assert capsys.readouterr().err == "pymachine: bad flag\nhint: see --help\n"
