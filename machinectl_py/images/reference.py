"""Image references as docker and podman write them, and the registries configuration.

Pure functions (no network, no store): `parse` splits `[DOMAIN/]PATH[:TAG][@DIGEST]`;
`candidates` turns a short name into the fully qualified references to try, through the search
list of containers-registries.conf(5); `Registries` says which registries are insecure or blocked.

The grammar is docker's (distribution's `reference` package): the first component is a domain
when it contains a `.` or a `:` or is `localhost`; otherwise the name is short. docker resolves a
short name on docker.io (adding `library/` to one-component names); podman tries each registry of
`unqualified-search-registries` in turn. pymachine does podman's, with docker.io as the search
list when no file sets one, so `pymachine pull busybox` means what it means to docker.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from typing import Any

from machinectl_py.errors import UsageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"
# Read in this order; entries of the first file come first in the search list.
# pymachine's own is $PYMACHINE_CONFIG_DIR/registries.conf (default /etc/pymachine).
REGISTRIES_CONF = ("/etc/pymachine/registries.conf", "/etc/containers/registries.conf")


def registries_conf_files() -> tuple[str, ...]:
    from machinectl_py import paths

    return (paths.config_path("registries.conf"), *REGISTRIES_CONF[1:])

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOSTPART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_HOSTPART}(?:\.{_HOSTPART})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class Reference:
    """A fully qualified reference: the registry (as written, e.g. `docker.io`, `host:5000`),
    the repository path on it, and a tag or a digest (a digest wins when both are given)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def target(self) -> str:
        """What the manifest endpoint is asked for: the digest, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def store_tag(self) -> str | None:
        """The name:tag the local store gives the pulled image (docker's short form for docker.io);
        None for a pull by digest only, which leaves the image untagged, as docker does."""
        if self.tag is None:
            return None
        name = self.name
        for prefix in ("docker.io/library/", "docker.io/"):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        return f"{name}:{self.tag}"


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A reference as written: `registry` is None for a short name."""

    registry: str | None
    path: str
    tag: str | None
    digest: str | None

    def qualify(self, registry: str) -> Reference:
        path = self.path
        if registry == DOCKER_HUB and "/" not in path:
            path = "library/" + path
        tag = self.tag if self.tag or self.digest else DEFAULT_TAG
        return Reference(registry, path, tag, self.digest)


def _bad(ref: str, why: str) -> UsageError:
    return UsageError(f"invalid image reference {ref!r}: {why}",
                      hint="write [REGISTRY[:PORT]/]NAME[:TAG][@sha256:DIGEST], e.g. docker.io/library/busybox:1.36")


def parse(ref: str) -> Parsed:
    """Split a reference into its parts; raises UsageError with the reason when it is malformed."""
    if not ref or len(ref) > 4096 or any(c.isspace() for c in ref):
        raise _bad(ref, "empty or contains spaces")
    rest, at, digest = ref.partition("@")
    if at and not _DIGEST_RE.fullmatch(digest):
        raise _bad(ref, "the digest must be sha256: and 64 lowercase hex digits")
    registry: str | None = None
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN_RE.fullmatch(first):
            raise _bad(ref, f"{first!r} is not a valid registry host[:port]")
        registry = "docker.io" if first in ("index.docker.io", "registry-1.docker.io") else first
        rest = remainder
    path, tag = rest, None
    slash_pos, colon_pos = rest.rfind("/"), rest.rfind(":")
    if colon_pos > slash_pos:
        path, tag = rest[:colon_pos], rest[colon_pos + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise _bad(ref, f"{tag!r} is not a valid tag (up to 128 of [A-Za-z0-9_.-])")
    if not _PATH_RE.fullmatch(path) or len(path) > 255:
        raise _bad(ref, f"{path!r} is not a valid repository name (lowercase letters, digits, . _ - and /)")
    return Parsed(registry, path, tag, digest or None)


# ---------------------------------------------------------------------------------------------
# registries.conf


@dataclasses.dataclass(frozen=True)
class RegistryEntry:
    """A `[[registry]]` table: `location` (or `prefix`) with its flags."""

    prefix: str
    insecure: bool = False
    blocked: bool = False


@dataclasses.dataclass(frozen=True)
class Registries:
    search: tuple[str, ...]
    entries: tuple[RegistryEntry, ...] = ()

    def entry(self, ref: Reference) -> RegistryEntry | None:
        """The entry with the longest prefix matching the reference's name, as containers/image does."""
        best: RegistryEntry | None = None
        for e in self.entries:
            if _prefix_matches(e.prefix, ref.name) and (best is None or len(e.prefix) > len(best.prefix)):
                best = e
        return best

    def insecure(self, ref: Reference) -> bool:
        e = self.entry(ref)
        return e is not None and e.insecure

    def blocked(self, ref: Reference) -> bool:
        e = self.entry(ref)
        return e is not None and e.blocked


def _prefix_matches(prefix: str, name: str) -> bool:
    if prefix.startswith("*."):  # a wildcard on the host: *.example.com
        host = re.sub(r":[0-9]+$", "", name.split("/", 1)[0])
        return host.endswith(prefix[1:])
    return name == prefix or name.startswith(prefix.rstrip("/") + "/")


def parse_registries_conf(data: dict[str, Any], origin: str) -> Registries:
    """One registries.conf, v2 format (`unqualified-search-registries`, `[[registry]]`) or
    the v1 format (`[registries.search]`, `[registries.insecure]`, `[registries.block]`)."""
    def strings(value: Any, key: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{origin}: {key} must be a list of strings")
        return list(value)

    search = strings(data.get("unqualified-search-registries", []), "unqualified-search-registries")
    entries: list[RegistryEntry] = []
    tables = data.get("registry", [])
    if not isinstance(tables, list):
        raise UsageError(f"{origin}: [[registry]] must be an array of tables")
    for table in tables:
        if not isinstance(table, dict):
            raise UsageError(f"{origin}: [[registry]] must be an array of tables")
        prefix = table.get("prefix") or table.get("location")
        if not isinstance(prefix, str) or not prefix:
            raise UsageError(f"{origin}: a [[registry]] table has no location")
        entries.append(RegistryEntry(prefix, bool(table.get("insecure")), bool(table.get("blocked"))))
    v1 = data.get("registries", {})
    if isinstance(v1, dict):
        for kind in ("search", "insecure", "block"):
            listed = strings((v1.get(kind) or {}).get("registries", []), f"registries.{kind}")
            if kind == "search":
                search += listed
            else:
                entries += [RegistryEntry(r, insecure=kind == "insecure", blocked=kind == "block") for r in listed]
    return Registries(tuple(search), tuple(entries))


def merge(configs: Iterable[Registries]) -> Registries:
    """pymachine's own file first: its search entries come first, its flags win on equal prefixes."""
    search: list[str] = []
    entries: list[RegistryEntry] = []
    seen: set[str] = set()
    for conf in configs:
        search += [s for s in conf.search if s not in search]
        for e in conf.entries:
            if e.prefix not in seen:
                seen.add(e.prefix)
                entries.append(e)
    return Registries(tuple(search) or (DOCKER_HUB,), tuple(entries))


def load_registries(files: Iterable[str] | None = None) -> Registries:
    import tomllib

    files = registries_conf_files() if files is None else files
    configs = []
    for path in files:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            continue
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"cannot read {path}: {e}") from None
        configs.append(parse_registries_conf(data, path))
        drop_in = path + ".d"
        if os.path.isdir(drop_in):
            for name in sorted(os.listdir(drop_in)):
                if name.endswith(".conf"):
                    with open(os.path.join(drop_in, name), "rb") as f:
                        configs.append(parse_registries_conf(tomllib.load(f), f"{drop_in}/{name}"))
    return merge(configs)


def candidates(ref: str, registries: Registries) -> list[Reference]:
    """The fully qualified references to try for `ref`, in order (one unless it is a short name)."""
    parsed = parse(ref)
    if parsed.registry is not None:
        return [parsed.qualify(parsed.registry)]
    return [parsed.qualify(r) for r in registries.search]


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """`os/arch[/variant]` (docker's --platform) -> (os, arch, variant)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"invalid platform {text!r}", hint="write OS/ARCH[/VARIANT], e.g. linux/arm64/v8")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def host_platform() -> tuple[str, str, str | None]:
    machine = os.uname().machine
    arch, variant = {
        "x86_64": ("amd64", None), "aarch64": ("arm64", "v8"), "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"), "i686": ("386", None), "i386": ("386", None),
    }.get(machine, (machine, None))
    return "linux", arch, variant


def pick_platform(manifests: list[dict[str, Any]], want: tuple[str, str, str | None]) -> dict[str, Any] | None:
    """From an index's manifest descriptors, the one for `want` (os, arch, variant): an exact
    variant match first, then one without a variant, then any variant of the architecture
    (arm64's `v8` is the default variant, as in containerd's matcher)."""
    os_name, arch, variant = want
    fits = [d for d in manifests if isinstance(d.get("platform"), dict)
            and d["platform"].get("os") == os_name and d["platform"].get("architecture") == arch]
    if not fits:
        return None
    for d in fits:
        if d["platform"].get("variant") == variant:
            return d
    for d in fits:
        if not d["platform"].get("variant") or (arch == "arm64" and d["platform"].get("variant") == "v8"):
            return d
    return fits[0] if variant is None else None
