"""`pymachine volume ls|inspect|rm|prune`: the named and anonymous volumes."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

from machinectl_py.errors import PymachineError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def main(argv: list[str]) -> int:
    from machinectl_py import volumes

    p = _Parser(prog="pymachine volume", description="Manage volumes (/var/lib/pymachine/volumes/NAME/_data).")
    sub = p.add_subparsers(dest="verb", required=True, metavar="ls|inspect|rm|prune")
    ls = sub.add_parser("ls", help="list volumes")
    ls.add_argument("-q", "--quiet", action="store_true")
    ins = sub.add_parser("inspect", help="show volumes as JSON")
    ins.add_argument("names", nargs="+")
    rm = sub.add_parser("rm", help="remove volumes no container uses")
    rm.add_argument("-f", "--force", action="store_true", help="even if a container uses it")
    rm.add_argument("names", nargs="+")
    sub.add_parser("prune", help="remove every volume no container uses")
    create = sub.add_parser("create", help="create a named volume (without NAME: a generated 64-hex name)")
    create.add_argument("name", nargs="?")
    args = p.parse_args(argv)
    if args.verb == "ls":
        names = volumes.list_volumes()
        if args.quiet:
            print("\n".join(names)) if names else None
            return 0
        print(f"{'VOLUME NAME':<66}  {'ANONYMOUS':<9}  USED BY")
        for name in names:
            meta = volumes.read_meta(name)
            print(f"{name:<66}  {'yes' if meta.get('anonymous') else 'no':<9}  "
                  f"{', '.join(volumes.users_of(name)) or '-'}")
        return 0
    if args.verb == "inspect":
        out = []
        for name in args.names:
            meta = volumes.read_meta(name)
            out.append({"Name": name, "Mountpoint": str(volumes.data_dir(name)), "Driver": "local",
                        "CreatedAt": meta.get("created"), "Anonymous": bool(meta.get("anonymous")),
                        "UsedBy": volumes.users_of(name)})
        print(json.dumps(out, indent=2))
        return 0
    if args.verb == "rm":
        failed = False
        for name in args.names:
            try:
                volumes.remove_volume(name, force=args.force)
                print(name)
            except PymachineError as e:
                print(f"pymachine: {e.message}", file=sys.stderr)
                failed = True
        return 125 if failed else 0
    if args.verb == "create":
        # As docker: a generated name makes a named volume all the same (kept by `run --rm`).
        name = volumes.validate_volume_name(args.name) if args.name is not None else os.urandom(32).hex()
        volumes.ensure_volume(name)
        print(name)
        return 0
    for name in volumes.prune():
        print(name)
    return 0
