"""Where pymachine keeps its state. One place, so tests can point it elsewhere.

PYMACHINE_STATE_DIR (default /var/lib/pymachine) holds images, layers, containers and volumes;
PYMACHINE_RUN_DIR (default /run/pymachine) holds runtime state that a reboot should forget;
PYMACHINE_CONFIG_DIR (default /etc/pymachine) holds admin-written container definitions.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ.get("PYMACHINE_STATE_DIR", "/var/lib/pymachine"))


def run_dir() -> Path:
    return Path(os.environ.get("PYMACHINE_RUN_DIR", "/run/pymachine"))


def config_dir() -> Path:
    return Path(os.environ.get("PYMACHINE_CONFIG_DIR", "/etc/pymachine"))


def containers_dir() -> Path:
    return state_dir() / "containers"


def container_dir(name: str) -> Path:
    return containers_dir() / name


def volumes_dir() -> Path:
    return state_dir() / "volumes"


def ensure_private_dir(path: Path, mode: int = 0o700) -> Path:
    """Create `path` (and parents) owned by root with `mode`; the state dir must not be world-readable."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path
