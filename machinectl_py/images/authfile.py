"""Registry credentials in the containers' auth.json format (containers-auth.json(5)).

    {"auths": {"registry.example.com:5000": {"auth": "<base64 of user:password>"}}}

Written (by `pymachine login`) to the first of: $REGISTRY_AUTH_FILE; /etc/pymachine/auth.json
for root; $XDG_RUNTIME_DIR/containers/auth.json for other users (podman's default). Read from
that file, then podman's and skopeo's files and docker's config.json, so a `podman login` or a
`docker login` works for pymachine too, and `skopeo --authfile /etc/pymachine/auth.json` reads
pymachine's. The file is 0600 and replaced atomically; credentials are never printed or logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

from machinectl_py.errors import UsageError

ROOT_AUTH_FILE = "/etc/pymachine/auth.json"


def write_path() -> Path:
    explicit = os.environ.get("REGISTRY_AUTH_FILE")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        from machinectl_py import paths

        return Path(paths.config_path("auth.json"))  # /etc/pymachine/auth.json
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return Path(runtime) / "containers" / "auth.json"


def read_paths() -> list[Path]:
    found = [write_path()]
    runtime = os.environ.get("XDG_RUNTIME_DIR") or (
        f"/run/containers/{os.geteuid()}" if os.geteuid() == 0 else f"/run/user/{os.geteuid()}")
    found.append(Path(runtime) / "containers" / "auth.json")
    home = Path(os.environ.get("HOME") or "/root")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    found += [config / "containers" / "auth.json", home / ".docker" / "config.json"]
    return list(dict.fromkeys(found))


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read the credentials file {path}: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"the credentials file {path} is not a JSON object")
    return data


def _keys_for(registry: str) -> list[str]:
    """The auths keys that mean this registry (docker.io is also stored under its legacy URL)."""
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == "docker.io":
        keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    return keys


def lookup(registry: str, repository: str | None = None) -> tuple[str, str] | None:
    """(user, password) for a registry (or for registry/repository, the more specific key first)."""
    specific = [f"{registry}/{repository}"] if repository else []
    for path in read_paths():
        auths = _load(path).get("auths")
        if not isinstance(auths, dict):
            continue
        for key in specific + _keys_for(registry):
            entry = auths.get(key)
            if isinstance(entry, dict) and isinstance(entry.get("auth"), str):
                return decode(entry["auth"], path)
    return None


def decode(value: str, path: Path) -> tuple[str, str]:
    try:
        user, colon, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise UsageError(f"the credentials file {path} has an invalid auth entry") from None
    if not colon:
        raise UsageError(f"the credentials file {path} has an invalid auth entry")
    return user, password


def store(registry: str, user: str, password: str) -> Path:
    path = write_path()
    data = _load(path)
    auths = data.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise UsageError(f"the credentials file {path} has an invalid auths object")
    auths[registry] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _save(path, data)
    return path


def remove(registry: str) -> bool:
    """Forget a registry's credentials in the write file; False when there were none."""
    path = write_path()
    data = _load(path)
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return False
    removed = [k for k in _keys_for(registry) if auths.pop(k, None) is not None]
    if removed:
        _save(path, data)
    return bool(removed)


def _save(path: Path, data: dict[str, Any]) -> None:
    from machinectl_py.images.store import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, (json.dumps(data, indent="\t") + "\n").encode())  # mode 0600: it holds secrets
