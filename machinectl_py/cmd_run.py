"""`pymachine run`: run a command in a new container, in the foreground."""

from __future__ import annotations

from machinectl_py import images, settings
from machinectl_py.args import Command
from machinectl_py.errors import UsageError
from machinectl_py.spec import ContainerSpec

DESCRIPTION = """\
Run COMMAND (or the image's default command) in a new container and wait for it.

The container gets its own mount, UTS, IPC, PID, cgroup and network namespaces (the
network one on the bridge of the network pymachine by default; --network host shares the
host's). Its root is an overlay of the image's layers with a
private upper layer under /var/lib/pymachine/containers/NAME/. Its processes run in the
transient unit machine-NAME.scope in machine.slice, created through systemd-machined
before COMMAND starts, with the limits below as unit properties; `machinectl list`,
`machinectl status NAME` and `systemctl status machine-NAME.scope` show it.

COMMAND's output reaches the terminal and the journal, with docker's fields:
  journalctl CONTAINER_NAME=NAME        journalctl -u machine-NAME.scope

COMMAND runs as PID 1 of the container, as with docker and systemd-nspawn: it receives
only the signals it handles. Ctrl-C (or SIGTERM to pymachine) is passed to it; if it has
not exited after 3 seconds, or on a second Ctrl-C, the container is killed."""

EPILOG = """\
exit status:
  the exit status of COMMAND (128+N if killed by signal N); 125 if pymachine itself
  failed, 126 if COMMAND could not be invoked, 127 if COMMAND was not found.

examples:
  pymachine run --rm busybox echo hello
  pymachine run --rm --name t1 --memory 64M --cpus 0.5 --pids-limit 32 busybox sh -c 'hostname'
  pymachine run --rm --network private busybox ip addr"""


RUN = Command(
    "pymachine run",
    "pymachine run [OPTIONS] IMAGE [COMMAND [ARG...]]",
    DESCRIPTION,
    settings.command_options("run"),
    positionals=[("image", "image name[:tag] or id; 'busybox' is built in")],
    rest=("command", "command and arguments"),
    epilog=EPILOG,
)


def parse(argv: list[str]) -> ContainerSpec | None:
    """The spec, or None when --help was printed."""
    args = RUN.parse_or_help(argv)
    return None if args is None else settings.spec_from_args(args)


def main(argv: list[str]) -> int:
    args = RUN.parse_or_help(argv)
    if args is None:
        return 0
    spec = settings.spec_from_args(args)
    if spec.restart != "no" and not args["detach"]:
        raise UsageError("--restart applies to detached containers: a foreground run ends with its command",
                         hint="use it with -d, or with `pymachine create`")
    spec = spec.replace(image=images.ensure(spec.image, spec.pull, spec.tls_verify))
    if args["detach"]:
        from machinectl_py import lifecycle

        print(lifecycle.create_and_start(spec).record.id, flush=True)  # the id, as docker prints it
        return 0
    from machinectl_py.runtime import run_foreground

    return run_foreground(spec)
