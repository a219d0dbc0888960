"""`pymachine commit`: the image store's commit, with the systemd layer's freezer.

The image store makes no D-Bus calls (an import-linter contract holds it to that), so the
verb hands it the way to freeze a running container's unit while its upper dir is read.
"""

from __future__ import annotations

from machinectl_py.args import FLAG, Command, Option

COMMIT = Command("pymachine commit", "pymachine commit [OPTIONS] CONTAINER NAME[:TAG]",
                 "Make a new image from a container's changes: its upper layer becomes a new layer on top of\n"
                 "its image's (a running container is frozen through systemd while its layer is read).",
                 [Option("--message -m", "history comment", metavar="TEXT"),
                  Option("--quiet -q", "no progress", kind=FLAG)],
                 positionals=[("container", "container name"), ("name", "NAME[:TAG] of the new image")])


def main(argv: list[str]) -> int:
    from machinectl_py.freezer import frozen_unit
    from machinectl_py.images import ops
    from machinectl_py.images.progress import Progress

    args = COMMIT.parse_or_help(argv)
    if args is None:
        return 0
    progress = Progress("committing", enabled=None if not args["quiet"] else False)
    try:
        result = ops.commit_container(args["container"], args["name"], progress=progress, message=args["message"],
                                      freeze=frozen_unit)
    finally:
        progress.done()
    print(result.id)
    return 0
