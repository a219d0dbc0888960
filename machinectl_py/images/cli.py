"""`pymachine image ...`, `pymachine images` and `pymachine commit`."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import sys
from typing import Any, NoReturn

from machinectl_py.errors import UsageError
from machinectl_py.images.progress import Progress, human_size


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=f"see '{self.prog} --help'")


def _parser(prog: str, description: str) -> _Parser:
    return _Parser(prog=prog, description=description)


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
        "RepoDigests": [],
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


_TEMPLATE_RE = re.compile(r"\{\{\s*(json\s+)?((?:\.[A-Za-z0-9_]+)+|\.)\s*\}\}")


def render_format(template: str, data: dict[str, Any]) -> str:
    """A small subset of docker's Go templates: `{{.Field.Sub}}` and `{{json .Field}}`."""

    def value_of(m: re.Match[str]) -> str:
        value: Any = data
        path = m.group(2)
        for key in [k for k in path.split(".") if k]:
            if not isinstance(value, dict) or key not in value:
                raise UsageError(f"template field {path!r} does not exist")
            value = value[key]
        if m.group(1) or isinstance(value, (dict, list)):
            return json.dumps(value)
        return "" if value is None else str(value)

    text = _TEMPLATE_RE.sub(value_of, template)
    if "{{" in text:
        raise UsageError(f"unsupported template {template!r}", hint="use {{.Field}} or {{json .Field}}")
    return text.replace("\\n", "\n").replace("\\t", "\t")


# ---------------------------------------------------------------------------------------------
# Verbs


def cmd_import(argv: list[str]) -> int:
    p = _parser("pymachine image import",
                "Import a docker-archive, OCI layout (dir or tar) or rootfs tarball.")
    p.add_argument("source", help="file, directory, or - for standard input; FILE:TAG or DIR:TAG picks "
                   "one image of several (as skopeo's oci:DIR:TAG)")
    p.add_argument("--name", "-n", help="NAME[:TAG] for the image")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the image id")
    args = p.parse_args(argv)
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


def cmd_ls(argv: list[str], prog: str = "pymachine image ls") -> int:
    p = _parser(prog, "List images.")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.add_argument("--quiet", "-q", action="store_true", help="print only image ids")
    args = p.parse_args(argv)
    from machinectl_py.images.store import Store

    rows = _ls_rows(Store())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.quiet:
        for image_id in dict.fromkeys(r["ID"] for r in rows):
            print(_short_id(image_id))
        return 0
    table = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    table += [(r["Repository"], r["Tag"], _short_id(r["ID"]), _ago(r["Created"]), human_size(r["Size"]))
              for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("   ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "   " + row[4])
    return 0


def cmd_inspect(argv: list[str]) -> int:
    p = _parser("pymachine image inspect", "Show images as JSON (close to docker's).")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--format", "-f", help="template such as '{{json .RootFS.Layers}}'")
    args = p.parse_args(argv)
    from machinectl_py.images.store import Store, find_image

    store = Store()
    data = [inspect_data(store, find_image(store, ref)) for ref in args.images]
    if args.format:
        for item in data:
            print(render_format(args.format, item))
    else:
        print(json.dumps(data, indent=4))
    return 0


def cmd_tag(argv: list[str]) -> int:
    p = _parser("pymachine image tag", "Give an image another NAME[:TAG].")
    p.add_argument("source", metavar="SOURCE_IMAGE")
    p.add_argument("target", metavar="TARGET_IMAGE")
    args = p.parse_args(argv)
    from machinectl_py.images import ops

    ops.tag_image(args.source, args.target)
    return 0


def cmd_rm(argv: list[str]) -> int:
    p = _parser("pymachine image rm", "Remove images (refused while a container uses one, unless -f).")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--force", "-f", action="store_true", help="untag images that containers still use")
    args = p.parse_args(argv)
    from machinectl_py.images import ops

    for line in ops.remove_images(args.images, force=args.force):
        print(line)
    return 0


def cmd_prune(argv: list[str]) -> int:
    p = _parser("pymachine image prune", "Remove untagged unused images and unused layers.")
    p.add_argument("--force", "-f", action="store_true", help="accepted for docker compatibility")
    p.parse_args(argv)
    from machinectl_py.images import ops

    images, layers, reclaimed = ops.prune()
    for image_id in images:
        print(f"Deleted: {image_id}")
    print(f"Removed {len(images)} images and {layers} layers; reclaimed {human_size(reclaimed)}")
    return 0


def cmd_export(argv: list[str]) -> int:
    p = _parser("pymachine image export", "Write an image as a docker-archive or OCI layout tar.")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("file", metavar="FILE", help="output file, or - for standard output")
    p.add_argument("--format", default="docker-archive", choices=("docker-archive", "oci"))
    args = p.parse_args(argv)
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


def usage() -> str:
    lines = ["usage: pymachine image COMMAND [ARG...]", "", "Commands:"]
    lines += [f"  {name:<8} {summary}" for name, (_, summary) in SUBVERBS.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0 if argv else 2
    sub = {"list": "ls", "remove": "rm", "load": "import"}.get(argv[0], argv[0])
    if sub not in SUBVERBS:
        raise UsageError(f"unknown image command {argv[0]!r}", hint="see 'pymachine image --help'")
    return SUBVERBS[sub][0](argv[1:])


def main_ls(argv: list[str]) -> int:
    return cmd_ls(argv, prog="pymachine images")


def main_commit(argv: list[str]) -> int:
    p = _parser("pymachine commit", "Make a new image from a container's changes.")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("name", metavar="NAME[:TAG]")
    p.add_argument("--message", "-m", help="history comment")
    p.add_argument("--quiet", "-q", action="store_true")
    args = p.parse_args(argv)
    from machinectl_py.images import ops

    progress = Progress("committing", enabled=None if not args.quiet else False)
    try:
        result = ops.commit_container(args.container, args.name, progress=progress, message=args.message)
    finally:
        progress.done()
    print(result.id)
    return 0
