"""What the store knows of its layers' compressed forms: which registry blobs hold them.

`blob-info.json` under the store maps a layer's diff_id to the compressed blobs seen for it
(pulled, or made and uploaded by push), each with the repositories that have it:

    {"sha256:<diff_id>": [{"digest": "sha256:...", "size": N, "mediaType": "...",
                           "repos": ["registry:5000/team/app"]}]}

`push` uses it to upload nothing a registry already has (a HEAD finds it) and to mount a blob
from another repository of the same registry instead of uploading it (containers/image keeps
the same knowledge in its blob-info cache). It is a cache: losing it only costs uploads.
Written under the store's write lock, replaced atomically.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

FILE = "blob-info.json"


def load(store: Any) -> dict[str, list[dict[str, Any]]]:
    try:
        data = json.loads((store.root / FILE).read_bytes())
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def known(store: Any, diff_id: str) -> list[dict[str, Any]]:
    entries = load(store).get(diff_id)
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("digest"), str)
            and isinstance(e.get("size"), int) and isinstance(e.get("mediaType"), str)]


def record(store: Any, blobs: Iterable[tuple[str, str, int, str]], repo: str) -> None:
    """Remember (diff_id, digest, size, media type) as held by `repo`. Hold the store's write lock."""
    from machinectl_py.images.store import atomic_write

    data = load(store)
    for diff_id, digest, size, media_type in blobs:
        entries = data.setdefault(diff_id, [])
        for e in entries:
            if e.get("digest") == digest:
                repos = e.setdefault("repos", [])
                if repo not in repos:
                    repos.append(repo)
                break
        else:
            entries.append({"digest": digest, "size": size, "mediaType": media_type, "repos": [repo]})
    atomic_write(store.root / FILE, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n", durable=False)
