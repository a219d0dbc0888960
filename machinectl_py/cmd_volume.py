"""`pymachine volume ls|inspect|rm|prune`: the named and anonymous volumes."""

from __future__ import annotations

import json
import os
import sys

from machinectl_py import formatting
from machinectl_py.args import FLAG, Command, Group, Option
from machinectl_py.errors import PymachineError

FORMAT = Option("--format -f", "format each volume with a Go-template-like TEMPLATE ('{{ .Name }}', "
                "'table {{.Name}}\\t{{.Mountpoint}}'); the fields are those of `volume inspect`", metavar="TEMPLATE")
LS = Command("pymachine volume ls", "pymachine volume ls [OPTIONS]", "List volumes, with the containers using them.",
             [Option("--quiet -q", "names only", kind=FLAG), FORMAT])
INSPECT = Command("pymachine volume inspect", "pymachine volume inspect [OPTIONS] NAME [NAME...]",
                  "Show volumes as JSON (docker's fields Name, Mountpoint, Driver, CreatedAt; podman's UID and GID: "
                  "the host IDs of the volume's owner, null until a container first mounts it; UidMap and GidMap: "
                  "how a container with a user namespace sees it, 0:FIRST:SIZE as inspect's IdMappings "
                  "(host FIRST+N is its N), empty when root owns it (it is then seen with the container's own "
                  "mapping); Anonymous; UsedBy).",
                  [FORMAT],
                  positionals=[("names", "volume names", "+")])
RM = Command("pymachine volume rm", "pymachine volume rm [OPTIONS] NAME [NAME...]",
             "Remove volumes that no container uses.",
             [Option("--force -f", "even if a container uses it", kind=FLAG)],
             positionals=[("names", "volume names", "+")])
PRUNE = Command("pymachine volume prune", "pymachine volume prune", "Remove every volume no container uses.", [])
CREATE = Command("pymachine volume create", "pymachine volume create [NAME]",
                 "Create a named volume; without NAME, one with a generated 64-hex name (as docker).", [],
                 positionals=[("name", "volume name: [a-zA-Z0-9][a-zA-Z0-9_.-]+", "?")])


def main(argv: list[str]) -> int:
    return Group("pymachine volume", "Manage volumes (/var/lib/pymachine/volumes/NAME/_data).", [
        ("ls", "list volumes", _ls),
        ("inspect", "show volumes as JSON", _inspect),
        ("rm", "remove volumes no container uses", _rm),
        ("prune", "remove every volume no container uses", _prune),
        ("create", "create a named volume", _create),
    ]).dispatch(argv)


def _ls(argv: list[str]) -> int:
    from machinectl_py import volumes

    args = LS.parse_or_help(argv)
    if args is None:
        return 0
    names = volumes.list_volumes()
    if args["quiet"]:
        print("\n".join(names)) if names else None
        return 0
    if args["format"] is not None:
        for line in formatting.render_all(args["format"], [_inspect_data(name) for name in names]):
            print(line)
        return 0
    print(f"{'VOLUME NAME':<66}  {'ANONYMOUS':<9}  USED BY")
    for name in names:
        meta = volumes.read_meta(name)
        print(f"{name:<66}  {'yes' if meta.get('anonymous') else 'no':<9}  "
              f"{', '.join(volumes.users_of(name)) or '-'}")
    return 0


def _inspect(argv: list[str]) -> int:

    args = INSPECT.parse_or_help(argv)
    if args is None:
        return 0
    out = [_inspect_data(name) for name in args["names"]]
    if args["format"] is not None:
        for line in formatting.render_all(args["format"], out):
            print(line)
        return 0
    print(json.dumps(out, indent=2))
    return 0


def _inspect_data(name: str) -> dict[str, object]:
    from machinectl_py import volumes

    meta = volumes.read_meta(name)
    owner = volumes.recorded_owner(meta)
    uid = None if owner is None else owner[0]
    ranged = [] if owner is None or owner[1] is None else [f"0:{owner[0]}:{owner[1]}"]
    return {"Name": name, "Mountpoint": str(volumes.data_dir(name)), "Driver": "local",
            "CreatedAt": meta.get("created"), "Anonymous": bool(meta.get("anonymous")),
            "UID": uid, "GID": uid, "UidMap": ranged, "GidMap": ranged, "UsedBy": volumes.users_of(name)}


def _rm(argv: list[str]) -> int:
    from machinectl_py import volumes

    args = RM.parse_or_help(argv)
    if args is None:
        return 0
    failed = False
    for name in args["names"]:
        try:
            volumes.remove_volume(name, force=args["force"])
            print(name)
        except PymachineError as e:
            print(f"pymachine: {e.message}", file=sys.stderr)
            failed = True
    return 125 if failed else 0


def _create(argv: list[str]) -> int:
    from machinectl_py import volumes

    args = CREATE.parse_or_help(argv)
    if args is None:
        return 0
    # As docker: a generated name makes a named volume all the same (kept by `run --rm`).
    name = volumes.validate_volume_name(args["name"]) if args["name"] is not None else os.urandom(32).hex()
    volumes.ensure_volume(name)
    print(name)
    return 0


def _prune(argv: list[str]) -> int:
    from machinectl_py import volumes

    if PRUNE.parse_or_help(argv) is None:
        return 0
    for name in volumes.prune():
        print(name)
    return 0
