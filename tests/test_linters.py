"""ruff and mypy --strict run as part of the test suite (configuration in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("tool", [
    [sys.executable, "-m", "ruff", "check", "."],
    [sys.executable, "-m", "mypy"],
], ids=["ruff", "mypy"])
def test_linter_is_clean(tool: list[str]) -> None:
    result = subprocess.run(tool, cwd=CHECKOUT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(tool[2:])} found problems:\n{result.stdout}{result.stderr}"
