"""`pymachine run`: run a command in a new container, in the foreground."""

from __future__ import annotations

import argparse
from typing import NoReturn

from machinectl_py.errors import UsageError
from machinectl_py.spec import (
    ContainerSpec,
    Limits,
    generate_name,
    parse_count,
    parse_cpus,
    parse_env,
    parse_memory,
)

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


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports mistakes as one-line UsageErrors (exit 125, like docker)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="pymachine run", add_help=False, description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="pymachine run [OPTIONS] IMAGE [COMMAND [ARG...]]",
    )
    p.add_argument("--rm", action="store_true", help="remove the container and its upper layer when it exits")
    p.add_argument("--name", help="container (and machine) name: 1-64 of [a-zA-Z0-9-_.]; default: generated")
    p.add_argument("--hostname", "-h", help="hostname inside the container (default: the name)")
    p.add_argument("--memory", "-m", metavar="SIZE", help="memory limit (MemoryMax=), e.g. 64M, 1G")
    p.add_argument("--cpus", metavar="N", help="CPU limit in CPUs (CPUQuotaPerSecUSec=), e.g. 0.5")
    p.add_argument("--pids-limit", metavar="N", help="maximum number of tasks (TasksMax=)")
    p.add_argument("--network", choices=("host", "private"), default="host",
                   help="host: share the host's network (default, as systemd-nspawn); private: only lo")
    p.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE", help="set an environment variable")
    p.add_argument("--workdir", "-w", metavar="DIR", help="working directory inside the container")
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("image", metavar="IMAGE", help="image name[:tag] or id; 'busybox' is built in")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="command and arguments")
    return p


def spec_from_args(args: argparse.Namespace) -> ContainerSpec:
    limits = Limits(
        memory_max=parse_memory(args.memory) if args.memory is not None else None,
        cpu_quota_usec=parse_cpus(args.cpus) if args.cpus is not None else None,
        tasks_max=parse_count(args.pids_limit, "pids limit") if args.pids_limit is not None else None,
    )
    return ContainerSpec(
        name=args.name if args.name is not None else generate_name(),
        image=args.image,
        command=tuple(args.command) or None,
        hostname=args.hostname,
        network=args.network,
        env=parse_env(args.env),
        workdir=args.workdir,
        limits=limits,
        remove=args.rm,
    ).validate()


def parse(argv: list[str]) -> ContainerSpec:
    return spec_from_args(build_parser().parse_args(argv))


def main(argv: list[str]) -> int:
    spec = parse(argv)
    from machinectl_py.runtime import run_foreground

    return run_foreground(spec)
