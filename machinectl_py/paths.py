"""Where pymachine keeps its state. One place, so tests can point it elsewhere.

PYMACHINE_STATE_DIR (default /var/lib/pymachine) holds images, layers, containers and volumes;
PYMACHINE_RUN_DIR (default /run/pymachine) holds runtime state that a reboot should forget;
PYMACHINE_CONFIG_DIR (default /etc/pymachine) holds admin-written container definitions.

The *_path() functions return strings and import nothing: they serve the start-up path,
where importing pathlib alone costs ~6 ms. The Path-returning ones serve everything else.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


def state_path(*parts: str) -> str:
    return os.path.join(os.environ.get("PYMACHINE_STATE_DIR", "/var/lib/pymachine"), *parts)


def run_path(*parts: str) -> str:
    return os.path.join(os.environ.get("PYMACHINE_RUN_DIR", "/run/pymachine"), *parts)


def config_path(*parts: str) -> str:
    return os.path.join(os.environ.get("PYMACHINE_CONFIG_DIR", "/etc/pymachine"), *parts)


def container_path(name: str, *parts: str) -> str:
    return state_path("containers", name, *parts)


_MACHINE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.")


def is_machine_name(name: str) -> bool:
    """machined's rule for machine names (machine_name_is_valid() in systemd: a valid hostname),
    and so for containers': 1-64 of [a-zA-Z0-9-.] ("_" refused), not starting with '.' and
    without '..'. A name is also a path component under containers/.
    spec.validate_name says what is wrong; this answers only yes or no, for the fast paths."""
    return 1 <= len(name) <= 64 and _MACHINE_NAME_CHARS.issuperset(name) and not name.startswith(".") \
        and ".." not in name


def _path(text: str) -> Path:
    from pathlib import Path

    return Path(text)


def state_dir() -> Path:
    return _path(state_path())


def run_dir() -> Path:
    return _path(run_path())


def config_dir() -> Path:
    return _path(config_path())


def containers_dir() -> Path:
    return _path(state_path("containers"))


def container_dir(name: str) -> Path:
    return _path(container_path(name))


def volumes_dir() -> Path:
    return _path(state_path("volumes"))


def ensure_private_dir(path: Path | str, mode: int = 0o700) -> Path | str:
    """Create `path` (and parents) owned by root with `mode`; the state dir must not be world-readable."""
    os.makedirs(path, mode=mode, exist_ok=True)
    return path
