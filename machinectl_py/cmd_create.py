"""`pymachine create`: define a detached container (TOML definition + state + unit drop-in).

create writes /etc/pymachine/machines/NAME.toml, claims /var/lib/pymachine/containers/NAME/
(container.json with the container's id and the image it was created from) and the drop-in
pymachine@NAME.service.d/50-pymachine.conf (restart policy, CONTAINER_ID for the journal).
Any failure undoes what was done (lifecycle.Container.create). `pymachine start NAME` then
starts the unit.
"""

from __future__ import annotations

from machinectl_py import images, settings
from machinectl_py.args import Command
from machinectl_py.errors import UsageError

CREATE = Command(
    "pymachine create", "pymachine create [OPTIONS] --name NAME IMAGE [COMMAND [ARG...]]",
    "Define a container that runs as the systemd service pymachine@NAME.service.\n\n"
    "Writes its definition to /etc/pymachine/machines/NAME.toml (editable; the README's table of\n"
    "settings lists its keys) and prints the container's id. Start it with `pymachine start NAME`,\n"
    "or at boot with `systemctl enable pymachine@NAME`.",
    settings.command_options("create"),
    positionals=[("image", "image name[:tag] or id; 'busybox' is built in")],
    rest=("command", "command and arguments"))


def main(argv: list[str]) -> int:
    from machinectl_py import lifecycle

    args = CREATE.parse_or_help(argv)
    if args is None:
        return 0
    if args["name"] is None:
        raise UsageError("pymachine create: --name NAME is required", hint="pymachine create --name web busybox ...")
    spec = settings.spec_from_args(args)
    spec = spec.replace(image=images.ensure(spec.image, spec.pull, spec.tls_verify))
    print(lifecycle.create(spec).record.id)
    return 0
