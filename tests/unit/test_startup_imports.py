"""`pymachine run` must start faster than systemd-nspawn: its modules import nothing heavy.

Each module named here costs milliseconds at every container start (json compiles regular
expressions, typing and dataclasses build classes, asyncio/dbus_next/pystemd 80-170 ms).
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = {"json", "re", "typing", "pathlib", "dataclasses", "argparse", "asyncio", "contextlib", "enum",
         "collections", "socket", "subprocess", "shutil", "tomllib", "hashlib", "secrets", "dbus_next", "pystemd"}

PROBE = """
import sys
base = set(sys.modules)
import machinectl_py.cli, machinectl_py.cmd_run, machinectl_py.runtime, machinectl_py.images
print(" ".join(sorted(set(sys.modules) - base)))
"""


def test_run_path_imports_nothing_heavy() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE],
                         capture_output=True, text=True, check=True).stdout.split()
    assert not HEAVY & set(out), f"heavy modules on the start-up path: {sorted(HEAVY & set(out))}"
