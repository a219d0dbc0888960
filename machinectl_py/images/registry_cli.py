"""`pymachine pull`, `push`, `login` and `logout`: the verbs that talk to registries."""

from __future__ import annotations

import sys
from typing import Any

from machinectl_py.args import FLAG, Command, Option
from machinectl_py.errors import UsageError

TLS_HELP = ("false: allow plain HTTP and unverified TLS for this registry (as if listed insecure in "
            "registries.conf); default: as registries.conf says, else verified HTTPS only")
TLS_OPTION = Option("--tls-verify", TLS_HELP, metavar="BOOL", choices=("true", "false"))

PULL = Command(
    "pymachine pull",
    "pymachine pull [OPTIONS] IMAGE",
    """\
Download IMAGE from a registry into the image store, as docker pull and podman pull do.

IMAGE is [REGISTRY[:PORT]/]NAME[:TAG][@sha256:DIGEST]. A name without a registry is a short
name: it is tried on each registry of `unqualified-search-registries` in
/etc/pymachine/registries.conf, then /etc/containers/registries.conf (containers-registries.conf(5)
format; `[[registry]]` tables with `insecure = true` or `blocked = true` apply too); without
either file, on docker.io (`busybox` is docker.io/library/busybox:latest, as docker has it).

A multi-platform image (an OCI index or a docker manifest list) gives the image of this host's
platform, or of --platform. Every manifest, config and layer is checked against its digest as
it streams; nothing that fails a check is stored. Layers the store has are not downloaded; the
others download in parallel (3 at a time; PYMACHINE_PULL_PARALLEL), each unpacked as it
arrives. An interrupted pull stores nothing; the next one resumes the downloads where they
stopped. Transient network errors and 5xx answers are retried with backoff.

Credentials come from `pymachine login` (or podman's and docker's files: see pymachine login
--help). Certificates: the system's CAs plus /etc/pymachine/certs.d/HOST:PORT/*.crt (and
/etc/containers/certs.d/, /etc/docker/certs.d/ as podman and docker use them).""",
    [
        Option("--platform", "OS/ARCH[/VARIANT] to pick from a multi-platform image, e.g. linux/arm64",
               metavar="PLATFORM"),
        TLS_OPTION,
        Option("--quiet -q", "print only the image id, no progress", kind=FLAG),
    ],
    positionals=[("image", "the image reference")],
    epilog="""\
exit status: 0 when the image is in the store; 125 on any failure (one line saying why).

examples:
  pymachine pull 127.0.0.1:5000/test/app:1 --tls-verify=false
  pymachine pull --platform linux/arm64 registry.example.com/team/app@sha256:3f...
  pymachine pull busybox""",
)

PUSH = Command(
    "pymachine push",
    "pymachine push [OPTIONS] IMAGE [DESTINATION]",
    """\
Upload IMAGE from the store to a registry, as docker push and podman push do.

DESTINATION is a full reference (REGISTRY[:PORT]/NAME[:TAG]); without it, IMAGE's own name
must include the registry. Layers are compressed (gzip, or zstd) on the fly as they upload;
the compressed digests are remembered, so a second push uploads nothing the registry has. A
layer the registry holds in another repository is mounted from there instead of uploaded.

The manifest is OCI, or docker's v2 schema 2 for an image whose layers were pulled as docker
blobs (--format says which). zstd layers need the OCI format.""",
    [TLS_OPTION,
     Option("--format -f", "the manifest type: oci or v2s2 (docker's); default: v2s2 for an image pulled in that "
            "format, else oci", metavar="FORMAT", choices=("oci", "v2s2")),
     Option("--compression-format", "compress the layers with gzip (default) or zstd", metavar="FORMAT",
            choices=("gzip", "zstd")),
     Option("--quiet -q", "print nothing but errors", kind=FLAG)],
    positionals=[("image", "the image in the store"), ("destination", "the reference to push to", "?")],
    epilog="""\
examples:
  pymachine commit web 127.0.0.1:5000/team/web:2 && pymachine push 127.0.0.1:5000/team/web:2
  pymachine push myimage:1 registry.example.com/team/myimage:1""",
)

LOGIN = Command(
    "pymachine login",
    "pymachine login [OPTIONS] REGISTRY",
    """\
Check credentials with REGISTRY and store them for pull and push.

They are stored in the containers-auth.json(5) format that podman and skopeo use:
$REGISTRY_AUTH_FILE if set, else /etc/pymachine/auth.json for root (skopeo reads it with
--authfile) or $XDG_RUNTIME_DIR/containers/auth.json for other users. Pull and push also read
podman's files and docker's ~/.docker/config.json. The file is mode 0600; the password is never
printed. Without --password-stdin the password is asked on the terminal.""",
    [
        Option("--username -u", "the user name (asked on the terminal if not given)", metavar="USER"),
        Option("--password-stdin", "read the password from standard input", kind=FLAG),
        TLS_OPTION,
    ],
    positionals=[("registry", "HOST[:PORT] of the registry")],
)

LOGOUT = Command(
    "pymachine logout",
    "pymachine logout REGISTRY",
    "Remove the credentials stored for REGISTRY by pymachine login.",
    [],
    positionals=[("registry", "HOST[:PORT] of the registry")],
)


def _tls_verify(values: dict[str, Any]) -> bool | None:
    value = values["tls_verify"]
    return None if value is None else value == "true"


def _parse(command: Command, argv: list[str]) -> dict[str, Any] | None:
    return command.parse_or_help(argv)


def main_pull(argv: list[str]) -> int:
    values = _parse(PULL, argv)
    if values is None:
        return 0
    from machinectl_py.images import pull, reference
    from machinectl_py.images.progress import LayerProgress

    platform = reference.parse_platform(values["platform"]) if values["platform"] else None
    reference.parse(values["image"])  # a malformed reference fails here, before any I/O
    quiet = values["quiet"]
    progress = LayerProgress(quiet=quiet)
    result = pull.pull(values["image"], pull.Options(platform=platform, tls_verify=_tls_verify(values),
                                                     progress=progress))
    if quiet:
        print(result.image_id)
        return 0
    print(f"Digest: {result.manifest_digest}")
    name = result.tag or f"{result.ref.name}@{result.manifest_digest}"
    print(f"Pulled {name}: image {result.image_id} ({result.new_layers} new layers, "
          f"{result.reused_layers} already in the store)")
    return 0


def main_push(argv: list[str]) -> int:
    values = _parse(PUSH, argv)
    if values is None:
        return 0
    from machinectl_py.images import push
    from machinectl_py.images.progress import LayerProgress

    quiet = values["quiet"]
    result = push.push(values["image"], values["destination"],
                       tls_verify=_tls_verify(values), progress=LayerProgress(quiet=quiet),
                       fmt=values["format"], compression=values["compression_format"])
    if not quiet:
        print(f"Pushed {result.ref}: digest {result.digest} ({result.uploaded} layers uploaded, "
              f"{result.mounted} mounted, {result.skipped} already there)")
    return 0


def _read_password(values: dict[str, Any]) -> str:
    if values["password_stdin"]:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
    else:
        raise UsageError("no password given", hint="pass it on standard input with --password-stdin")
    if not password:
        raise UsageError("the password is empty")
    return password


def _read_user(values: dict[str, Any]) -> str:
    user: str | None = values["username"]
    if user is None:
        if values["password_stdin"] or not sys.stdin.isatty():
            raise UsageError("no user name given", hint="use --username USER")
        user = input("Username: ")
    if not user or ":" in user:
        raise UsageError("invalid user name (empty, or containing ':')")
    return user


def _registry_arg(text: str) -> str:
    from machinectl_py.images import reference

    host = text.removeprefix("https://").removeprefix("http://").rstrip("/")
    if not host or (not reference._DOMAIN_RE.fullmatch(host) and host != "docker.io"):
        raise UsageError(f"invalid registry {text!r}", hint="write HOST[:PORT], e.g. registry.example.com:5000")
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def main_login(argv: list[str]) -> int:
    values = _parse(LOGIN, argv)
    if values is None:
        return 0
    from machinectl_py.images import authfile, reference
    from machinectl_py.images.registry import Session

    registry = _registry_arg(values["registry"])
    user = _read_user(values)
    password = _read_password(values)
    verify = _tls_verify(values)
    insecure = reference.load_registries().insecure(reference.Reference(registry, "x")) if verify is None \
        else not verify
    Session(registry, insecure=insecure, credentials=(user, password)).check_login()
    path = authfile.store(registry, user, password)
    print(f"Login Succeeded (credentials stored in {path})")
    return 0


def main_logout(argv: list[str]) -> int:
    values = _parse(LOGOUT, argv)
    if values is None:
        return 0
    from machinectl_py.errors import NotFoundError
    from machinectl_py.images import authfile

    registry = _registry_arg(values["registry"])
    if not authfile.remove(registry):
        raise NotFoundError(f"not logged in to {registry}")
    print(f"Removed login credentials for {registry}")
    return 0
