"""`pymachine run`: run a command in a new container, in the foreground."""

from __future__ import annotations

import os

from machinectl_py.args import APPEND, FLAG, Command, Option
from machinectl_py.errors import UsageError
from machinectl_py.spec import (
    ContainerSpec,
    Limits,
    Volume,
    check_cpus_available,
    generate_name,
    parse_count,
    parse_cpus,
    parse_env,
    parse_memory,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DESCRIPTION = """\
Run COMMAND (or the image's default command) in a new container and wait for it.

The container gets its own mount, UTS, IPC, PID and cgroup namespaces (and a network
namespace with --network private). Its root is an overlay of the image's layers with a
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
    [
        Option("--rm", "remove the container and its upper layer when it exits", kind=FLAG),
        Option("--name", "container (and machine) name: 1-64 of [a-zA-Z0-9-_.]; default: generated",
               metavar="NAME"),
        Option("--hostname -h", "hostname inside the container (default: the name)", metavar="NAME"),
        Option("--memory -m", "memory limit (MemoryMax=), e.g. 64M, 1G", metavar="SIZE"),
        Option("--cpus", "CPU limit in CPUs (CPUQuotaPerSecUSec=), e.g. 0.5", metavar="N"),
        Option("--pids-limit", "maximum number of tasks (TasksMax=)", metavar="N"),
        Option("--network", "host: share the host's network (default, as systemd-nspawn); private: only lo",
               metavar="MODE", choices=("host", "private"), default="host"),
        Option("--env -e", "set an environment variable (repeatable); a bare KEY passes on its value here",
               kind=APPEND, metavar="KEY=VALUE"),
        Option("--workdir -w", "working directory inside the container", metavar="DIR"),
        Option("--user -u", "run as USER[:GROUP] (names or numbers, from the container's /etc/passwd); "
               "default: the image's user, else root", metavar="USER"),
        Option("--volume -v", "mount a volume: /host/path:/path[:ro], name:/path[:ro] or /path (anonymous); "
               "repeatable", kind=APPEND, metavar="VOLUME"),
        Option("--restart", "restart policy of a detached container (Restart= of its unit)", metavar="POLICY",
               choices=("no", "on-failure", "always"), default="no"),
        Option("--detach -d", "run as the service pymachine@NAME.service and return (create + start)",
               kind=FLAG),
        Option("--interactive -i", "keep stdin attached", kind=FLAG),
        Option("--tty -t", "allocate a pseudo-terminal", kind=FLAG),
    ],
    positionals=[("image", "image name[:tag] or id; 'busybox' is built in")],
    rest=("command", "command and arguments"),
    epilog=EPILOG,
)


def spec_from_args(args: dict[str, Any]) -> ContainerSpec:
    limits = Limits(
        memory_max=parse_memory(args["memory"]) if args["memory"] is not None else None,
        cpu_quota_usec=parse_cpus(args["cpus"]) if args["cpus"] is not None else None,
        tasks_max=parse_count(args["pids_limit"], "pids limit") if args["pids_limit"] is not None else None,
    )
    if args["cpus"] is not None:
        check_cpus_available(args["cpus"], os.cpu_count())
    return ContainerSpec(
        name=args["name"] if args["name"] is not None else generate_name(),
        image=args["image"],
        command=tuple(args["command"]) or None,
        hostname=args["hostname"],
        network=args["network"],
        env=parse_env(args["env"], os.environ),
        workdir=args["workdir"],
        user=args["user"],
        limits=limits,
        volumes=_volumes(args["volume"]),
        restart=args["restart"],
        remove=args["rm"],
        tty=args["tty"],
        interactive=args["interactive"],
    ).validate()


def _volumes(items: list[str]) -> tuple[Volume, ...]:
    if not items:
        return ()
    from machinectl_py.volumes import parse_volume

    return tuple(parse_volume(v) for v in items)


def parse(argv: list[str]) -> ContainerSpec | None:
    """The spec, or None when --help was printed."""
    args = RUN.parse(argv)
    if args["help"]:
        print(RUN.help_text(), end="")
        return None
    return spec_from_args(args)


def main(argv: list[str]) -> int:
    args = RUN.parse(argv)
    if args["help"]:
        print(RUN.help_text(), end="")
        return 0
    spec = spec_from_args(args)
    if spec.restart != "no" and not args["detach"]:
        raise UsageError("--restart applies to detached containers: a foreground run ends with its command",
                         hint="use it with -d, or with `pymachine create`")
    if args["detach"]:
        from machinectl_py import lifecycle

        print(lifecycle.create_and_start(spec).record.id, flush=True)  # the id, as docker prints it
        return 0
    from machinectl_py.runtime import run_foreground

    return run_foreground(spec)
