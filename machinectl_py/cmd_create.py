"""`pymachine create`: define a detached container (TOML definition + state + unit drop-in).

create writes /etc/pymachine/machines/NAME.toml, claims /var/lib/pymachine/containers/NAME/
(container.json with the container's id and the image it was created from) and the drop-in
pymachine@NAME.service.d/50-pymachine.conf (restart policy, CONTAINER_ID for the journal).
Any failure undoes what was done (lifecycle.Container.create). `pymachine start NAME` then
starts the unit.
"""

from __future__ import annotations

from machinectl_py.errors import UsageError


def _command() -> object:
    from machinectl_py.args import Command
    from machinectl_py.cmd_run import RUN

    options = [o for o in RUN.options if o.dest not in ("detach", "interactive", "tty")]
    return Command(
        "pymachine create", "pymachine create [OPTIONS] --name NAME IMAGE [COMMAND [ARG...]]",
        "Define a container that runs as the systemd service pymachine@NAME.service.\n\n"
        "Writes its definition to /etc/pymachine/machines/NAME.toml (editable; see the README for the schema)\n"
        "and prints the container's id. Start it with `pymachine start NAME`, or at boot with\n"
        "`systemctl enable pymachine@NAME`.",
        options, positionals=RUN.positionals, rest=RUN.rest)


def main(argv: list[str]) -> int:
    from machinectl_py.cmd_run import spec_from_args

    command = _command()
    args = command.parse(argv)  # type: ignore[attr-defined]
    if args["help"]:
        print(command.help_text(), end="")  # type: ignore[attr-defined]
        return 0
    if args["name"] is None:
        raise UsageError("pymachine create: --name NAME is required", hint="pymachine create --name web busybox ...")
    args.update(detach=False, interactive=False, tty=False)  # run's options that create has not
    from machinectl_py import lifecycle

    print(lifecycle.create(spec_from_args(args)).record.id)
    return 0
