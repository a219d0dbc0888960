"""The template unit pymachine@.service: its one source and its installation.

The text lives only in units/pymachine@.service. A checkout reads it there; an installed
pymachine (a wheel has no units/ directory) reads the copy setup.py's build step puts into
the package (machinectl_py/data/). A distribution package installs the file itself into
/lib/systemd/system; a pip install gets it written into /etc/systemd/system on first use,
with ExecStart= pointing at that install (ensure_template).
"""

from __future__ import annotations

import os
import sys

from machinectl_py import systemd

TYPE_CHECKING = False
if TYPE_CHECKING:
    from machinectl_py.bus import Bus

TEMPLATE = "pymachine@.service"
UNIT_DIR = "/etc/systemd/system"
INSTALLED_MARK = "# Installed by pymachine: `pymachine create` and `start` keep ExecStart= pointing at themselves."
_PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))
# The checkout's file first (an editable install sees edits at once), then the installed copy.
SOURCES = (os.path.join(os.path.dirname(_PACKAGE_DIR), "units", TEMPLATE), os.path.join(_PACKAGE_DIR, "data", TEMPLATE))


def unit_name(name: str) -> str:
    """The container's instance of the template. Container names are [a-zA-Z0-9-_.]: all valid
    in a unit's instance string as they are."""
    return f"pymachine@{name}.service"


def template_text(executable: str = "/usr/bin/pymachine") -> str:
    """The shipped units/pymachine@.service, with ExecStart= pointing at `executable`."""
    for source in SOURCES:
        try:
            with open(source) as f:
                text = f.read()
            break
        except FileNotFoundError:
            continue
    else:
        raise FileNotFoundError(2, f"the template unit is not installed (looked in {' and '.join(SOURCES)})")
    return text.replace("/usr/bin/pymachine ", f"{executable} ")


def this_executable() -> str:
    """How systemd should run this pymachine: this interpreter, isolated (-I), on the
    launcher installed beside it (bin/pymachine), without `site` (-S) when the launcher finds
    its own package (the unit's setup process is on the path of every detached start:
    ~2 ms); `-m machinectl_py` when there is none (a checkout), which costs runpy's imports
    (~7 ms) on every start and stop."""
    launcher = os.path.join(os.path.dirname(sys.executable), "pymachine")
    if os.path.isfile(launcher):
        return f"{sys.executable} {'-IS' if _finds_its_package(launcher) else '-I'} {launcher}"
    return f"{sys.executable} -I -m machinectl_py"


def _finds_its_package(launcher: str) -> bool:
    """bin/pymachine adds its package directory itself when started without site (and falls
    back to site); another script there (an entry-point wrapper) needs site."""
    try:
        with open(launcher, "rb") as f:
            return b"sys.flags.no_site" in f.read(4096)
    except OSError:
        return False


def ensure_template(bus: Bus) -> None:
    """Make sure systemd has a pymachine@.service template that runs this pymachine.

    A distro package ships it in /usr/lib/systemd/system: that one is left alone. A pip
    install gets it in /etc/systemd/system on first use, marked as ours, and rewritten when
    its ExecStart= points at another pymachine (another venv, an older install)."""
    path = os.path.join(UNIT_DIR, TEMPLATE)
    try:
        with open(path) as f:
            current: str | None = f.read()
    except FileNotFoundError:
        current = None
    if current is not None:
        # Ours: marked, or (written before the mark existed) the shipped file's first line.
        ours = current.startswith((INSTALLED_MARK, "# A detached pymachine container"))
        if not ours or current == INSTALLED_MARK + "\n" + template_text(this_executable()):
            return  # the admin's own file, or ours and up to date
    else:
        if systemd.unit_file_state(bus, TEMPLATE) is not None:
            return  # shipped by a package elsewhere (/usr/lib/systemd/system)
    write_atomic(path, INSTALLED_MARK + "\n" + template_text(this_executable()))
    systemd.call(bus, "Reload")


def write_atomic(path: str, text: str) -> None:
    """Write `text` to a temporary file beside `path` (NAME.PID.tmp: `gc` removes one whose
    writer died), then rename it into place."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
