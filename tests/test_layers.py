"""The layering of README.md's Design section, enforced: import-linter's contracts in pyproject.toml.

import-linter reads every import, function-local ones included (most of this package's are,
for start-up time). It sees only Python source, so the one thing it cannot check, who loads
the compiled module `machinectl_py._native`, is checked here on the source text.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
PACKAGE = CHECKOUT / "machinectl_py"
# The venv's console script: pip installs import-linter with the `test` extra (tools/test).
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: pip install -e '.[test]' (tools/test does)"
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", *args], cwd=CHECKOUT,
                          capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept() -> None:
    result = lint_imports()
    assert result.returncode == 0, f"a layer contract is broken:\n{result.stdout}{result.stderr}"
    assert "0 broken" in result.stdout, result.stdout


def test_a_broken_contract_fails(tmp_path: Path) -> None:
    """The check can fail: plan.py imports record.py, so forbidding that is a broken contract."""
    config = tmp_path / "contracts.ini"
    config.write_text("[importlinter]\nroot_package = machinectl_py\n\n"
                      "[importlinter:contract:probe]\nname = probe\ntype = forbidden\n"
                      "source_modules = machinectl_py.plan\nforbidden_modules = machinectl_py.record\n")
    result = lint_imports(str(config))
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout


NATIVE_IMPORT = re.compile(r"^\s*(from\s+machinectl_py(\.(_native|_sys)\s+import|\s+import\s+.*\b(_native|_sys)\b)"
                           r"|import\s+machinectl_py\.(_native|_sys))", re.MULTILINE)


def test_only_the_syscall_and_bus_layers_load_the_compiled_modules() -> None:
    """_sys (raw syscalls) and _native (libsystemd's sd-bus) are the package's only way to libc;
    ctypes and cffi are forbidden elsewhere by the "no-libc" contract."""
    importers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if NATIVE_IMPORT.search(path.read_text()))
    assert importers == ["bus.py", "syscalls.py"]
    sys_importers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                           if "machinectl_py._sys import" in path.read_text())
    assert sys_importers == ["syscalls.py"]


def test_only_the_bus_layer_spells_out_bus_names() -> None:
    """systemd's and machined's names, paths, interfaces and errors live in bus.py, systemd.py
    and machined.py; everything else calls the functions there."""
    spellers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                      if "org.freedesktop." in path.read_text())
    assert spellers == ["bus.py", "machined.py", "systemd.py"]
