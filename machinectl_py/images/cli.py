"""`pymachine image ...`, `pymachine images` and `pymachine commit`."""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
from types import SimpleNamespace
from typing import Any

from machinectl_py import formatting
from machinectl_py.args import FLAG, Command, Group, Option
from machinectl_py.errors import UsageError
from machinectl_py.images.progress import Progress, human_size


def _parse(command: Command, argv: list[str]) -> SimpleNamespace | None:
    values = command.parse_or_help(argv)
    return None if values is None else SimpleNamespace(**values)


# ---------------------------------------------------------------------------------------------
# Presentation


def _short_id(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _ago(created: str) -> str:
    try:
        when = datetime.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return "unknown"
    seconds = (datetime.datetime.now(datetime.UTC) - when).total_seconds()
    for unit, length in (("year", 31536000), ("month", 2592000), ("week", 604800), ("day", 86400),
                         ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            n = int(seconds // length)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "less than a minute ago"


def inspect_data(store: Any, image_id: str) -> dict[str, Any]:
    record = store.record(image_id)
    size = 0
    for diff_id in dict.fromkeys(record.diff_ids):
        # A damaged layer should not hide the rest of the image.
        with contextlib.suppress(Exception):
            size += int(store.layer_info(diff_id).get("content_size", 0))
    config = record.config
    return {
        "Id": record.id,
        "RepoTags": list(record.tags),
        "RepoDigests": store.repo_digests(image_id),
        "Created": record.created,
        "Comment": config.get("comment", ""),
        "Author": config.get("author", ""),
        "Architecture": config.get("architecture", ""),
        "Os": config.get("os", ""),
        "Size": size,
        "Config": config.get("config") or {},
        "RootFS": {"Type": "layers", "Layers": list(record.diff_ids)},
        "History": config.get("history") or [],
    }


# ---------------------------------------------------------------------------------------------
# Verbs


IMPORT = Command(
    "pymachine image import", "pymachine image import [OPTIONS] SOURCE",
    "Import a docker-archive, an OCI layout (directory or tar; DIR:TAG picks one image of several)\n"
    "or a rootfs tarball (plain, gzip, xz or zstd).",
    [Option("--name -n", "NAME[:TAG] for the image", metavar="NAME"),
     Option("--quiet -q", "print only the image id", kind=FLAG)],
    positionals=[("source", "file, directory, or - for standard input; FILE:TAG or DIR:TAG picks one image "
                  "of several (as skopeo's oci:DIR:TAG)")])


def cmd_import(argv: list[str]) -> int:
    args = _parse(IMPORT, argv)
    if args is None:
        return 0
    from machinectl_py.images import ops

    progress = Progress("importing", enabled=None if not args.quiet else False)
    try:
        results = ops.import_image(args.source, args.name, progress=progress)
    finally:
        progress.done()
    for r in results:
        if args.quiet:
            print(r.id)
        else:
            names = ", ".join(r.tags) or "untagged"
            print(f"Loaded image {r.id} ({names}; {r.new_layers} new layers, {r.reused_layers} reused)")
    return 0


def _ls_rows(store: Any) -> list[dict[str, Any]]:
    rows = []
    repos = store.repositories()
    for image_id in store.all_image_ids():
        data = inspect_data(store, image_id)
        tags = data["RepoTags"] or ["<none>:<none>"]
        for tag in tags:
            repo, _, t = tag.rpartition(":")
            rows.append({"Repository": repo, "Tag": t, "ID": image_id, "Created": data["Created"],
                         "Size": data["Size"], "Layers": len(data["RootFS"]["Layers"])})
    del repos
    rows.sort(key=lambda r: (r["Created"], r["Repository"], r["Tag"]), reverse=True)
    return rows


def _ls_command(prog: str) -> Command:
    return Command(prog, f"{prog} [OPTIONS]", "List images.",
                   [Option("--json", "print a JSON array", kind=FLAG),
                    Option("--format", "format each image with a Go-template-like TEMPLATE ('{{ .Repository }}', "
                           "'table {{.Repository}}\\t{{.Tag}}'); the fields are those of --json",
                           metavar="TEMPLATE"),
                    Option("--quiet -q", "print only image ids", kind=FLAG)])


def cmd_ls(argv: list[str], prog: str = "pymachine image ls") -> int:
    args = _parse(_ls_command(prog), argv)
    if args is None:
        return 0
    from machinectl_py.images.store import Store

    rows = _ls_rows(Store())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.quiet:
        for image_id in dict.fromkeys(r["ID"] for r in rows):
            print(_short_id(image_id))
        return 0
    if args.format is not None:
        for line in formatting.render_all(args.format, rows):
            print(line)
        return 0
    table = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    table += [(r["Repository"], r["Tag"], _short_id(r["ID"]), _ago(r["Created"]), human_size(r["Size"]))
              for r in rows]
    for line in formatting.align(table):
        print(line)
    return 0


INSPECT = Command(
    "pymachine image inspect", "pymachine image inspect [OPTIONS] IMAGE [IMAGE...]",
    "Show images as JSON, with docker's fields (Id, RepoTags, Config, RootFS, History...).",
    [Option("--format -f", "format with a Go-template-like TEMPLATE, e.g. '{{json .RootFS.Layers}}'",
            metavar="TEMPLATE")],
    positionals=[("images", "image names or ids", "+")])


def cmd_inspect(argv: list[str]) -> int:
    args = _parse(INSPECT, argv)
    if args is None:
        return 0
    from machinectl_py.images.lookup import find_image
    from machinectl_py.images.store import Store

    store = Store()
    data = [inspect_data(store, find_image(store, ref)) for ref in args.images]
    if args.format:
        for line in formatting.render_all(args.format, data):
            print(line)
    else:
        print(json.dumps(data, indent=4))
    return 0


TAG = Command("pymachine image tag", "pymachine image tag SOURCE_IMAGE TARGET_IMAGE",
              "Give an image another NAME[:TAG].", [],
              positionals=[("source", "image name or id"), ("target", "the new NAME[:TAG]")])


def cmd_tag(argv: list[str]) -> int:
    args = _parse(TAG, argv)
    if args is None:
        return 0
    from machinectl_py.images import ops

    ops.tag_image(args.source, args.target)
    return 0


RM = Command("pymachine image rm", "pymachine image rm [OPTIONS] IMAGE [IMAGE...]",
             "Remove images (refused while a container uses one, unless -f).",
             [Option("--force -f", "untag images that containers still use", kind=FLAG)],
             positionals=[("images", "image names or ids", "+")])


def cmd_rm(argv: list[str]) -> int:
    args = _parse(RM, argv)
    if args is None:
        return 0
    from machinectl_py.images import ops

    for line in ops.remove_images(args.images, force=args.force):
        print(line)
    return 0


PRUNE = Command("pymachine image prune", "pymachine image prune [OPTIONS]",
                "Remove untagged unused images and unused layers.",
                [Option("--force -f", "accepted for docker compatibility", kind=FLAG)])


def cmd_prune(argv: list[str]) -> int:
    if _parse(PRUNE, argv) is None:
        return 0
    from machinectl_py.images import ops

    images, layers, reclaimed = ops.prune()
    for image_id in images:
        print(f"Deleted: {image_id}")
    print(f"Removed {len(images)} images and {layers} layers; reclaimed {human_size(reclaimed)}")
    return 0


EXPORT = Command("pymachine image export", "pymachine image export [OPTIONS] IMAGE FILE",
                 "Write an image as a docker-archive or OCI layout tar.",
                 [Option("--format", "docker-archive (default) or oci", metavar="FORMAT",
                         choices=("docker-archive", "oci"), default="docker-archive")],
                 positionals=[("image", "image name or id"), ("file", "output file, or - for standard output")])


def cmd_export(argv: list[str]) -> int:
    args = _parse(EXPORT, argv)
    if args is None:
        return 0
    from machinectl_py.images import ops

    if args.file == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write an archive to a terminal")
    ops.export_image(args.image, args.file, args.format)
    return 0


SUBVERBS = {
    "import": (cmd_import, "import an image from a file, directory or standard input"),
    "ls": (cmd_ls, "list images"),
    "inspect": (cmd_inspect, "show an image as JSON"),
    "tag": (cmd_tag, "give an image another name"),
    "rm": (cmd_rm, "remove images"),
    "prune": (cmd_prune, "remove unused images and layers"),
    "export": (cmd_export, "write an image as docker-archive or OCI tar"),
}
ALIASES = {"list": "ls", "remove": "rm", "load": "import"}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ALIASES:
        argv = [ALIASES[argv[0]], *argv[1:]]
    return Group("pymachine image", "Manage images: a content-addressed store of layers under "
                 "/var/lib/pymachine.", [(name, summary, handler) for name, (handler, summary) in SUBVERBS.items()]
                 ).dispatch(argv)


def main_ls(argv: list[str]) -> int:
    return cmd_ls(argv, prog="pymachine images")
