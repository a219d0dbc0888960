"""The `pymachine` command: dispatch a verb to the module that owns it.

Only the chosen verb's module is imported, so `pymachine run` pays for nothing else
(start-up time is a feature: see bench/). Every module's entry point takes the verb's
arguments and returns the exit code. One handler here turns PymachineError into a
one-line message and docker's exit codes; tracebacks only with PYMACHINE_DEBUG=1.
"""

from __future__ import annotations

import os
import sys

# verb -> (module, function, one-line summary). Order is the order of `pymachine --help`.
VERBS: dict[str, tuple[str, str, str]] = {
    "run": ("machinectl_py.cmd_run", "main", "run a command in a new container, in the foreground"),
    "image": ("machinectl_py.images.cli", "main", "import, list, inspect, tag, export and remove images"),
    "images": ("machinectl_py.images.cli", "main_ls", "list images (same as `image ls`)"),
    "commit": ("machinectl_py.cmd_commit", "main", "make a new image from a container's changes"),
    "pull": ("machinectl_py.images.registry_cli", "main_pull", "download an image from a registry"),
    "push": ("machinectl_py.images.registry_cli", "main_push", "upload an image to a registry"),
    "login": ("machinectl_py.images.registry_cli", "main_login",
              "store credentials for a registry; `login NAME` of a booted container: its login prompt"),
    "logout": ("machinectl_py.images.registry_cli", "main_logout", "remove a registry's stored credentials"),
    "create": ("machinectl_py.cmd_create", "main", "define a detached container (pymachine@NAME.service)"),
    "start": ("machinectl_py.cmd_lifecycle", "main_start", "start detached containers as their systemd units"),
    "stop": ("machinectl_py.cmd_lifecycle", "main_stop", "stop containers (SIGTERM, then SIGKILL)"),
    "restart": ("machinectl_py.cmd_lifecycle", "main_restart", "stop, then start detached containers"),
    "kill": ("machinectl_py.cmd_lifecycle", "main_kill", "send a signal to a container's init"),
    "rm": ("machinectl_py.cmd_lifecycle", "main_rm", "remove containers"),
    "ps": ("machinectl_py.cmd_ps", "main_ps", "list containers"),
    "inspect": ("machinectl_py.cmd_ps", "main_inspect", "show containers' details (docker inspect's fields)"),
    "status": ("machinectl_py.cmd_ps", "main_status", "a human summary of a container"),
    "logs": ("machinectl_py.cmd_logs", "main", "show a container's output, from the journal"),
    "explain": ("machinectl_py.cmd_explain", "main", "show each limit in definition, unit and kernel; drift"),
    "events": ("machinectl_py.cmd_events", "main", "show what happens to containers, live or since a time"),
    "stats": ("machinectl_py.cmd_stats", "main_stats", "show containers' use of CPU, memory, network, block IO"),
    "top": ("machinectl_py.cmd_stats", "main_top", "show the processes of a container"),
    "update": ("machinectl_py.cmd_update", "main", "change containers' resource limits, live and for good"),
    "exec": ("machinectl_py.exec", "main", "run a command in a running container"),
    "shell": ("machinectl_py.cmd_shell", "main_shell", "open a shell in a booted (--boot) container"),
    "volume": ("machinectl_py.cmd_volume", "main", "manage volumes: ls, inspect, create, rm, prune"),
    "port": ("machinectl_py.cmd_port", "main", "list a container's published ports"),
    "network": ("machinectl_py.cmd_network", "main", "manage networks: create, ls, inspect, rm, prune, (dis)connect"),
    "gc": ("machinectl_py.cmd_gc", "main", "clean what interrupted commands left behind"),
    # Hidden: the ExecStart= and ExecStopPost= of pymachine@.service.
    "_service": ("machinectl_py.service", "service_main", ""),
    "_service-stopped": ("machinectl_py.service_stop", "stopped_main", ""),
}

USAGE = """\
usage: pymachine [--version] [--help] COMMAND [ARG...]

pymachine runs containers as systemd units: each container is a unit in
machine.slice, registered with systemd-machined, logging to journald.

Commands:
{verbs}

Run 'pymachine COMMAND --help' for the options of a command.

Exit status: the container's own exit code for run/exec; otherwise 0 on success,
125 when pymachine itself fails, 126 when the command cannot be invoked, 127 when
the command is not found.
"""


def usage() -> str:
    shown = {verb: entry for verb, entry in VERBS.items() if not verb.startswith("_")}
    width = max(len(v) for v in shown)
    lines = [f"  {verb:<{width}}  {summary}" for verb, (_, _, summary) in shown.items()]
    return USAGE.format(verbs="\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        ensure_standard_fds()
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0 if args else 2
    if args[0] == "--version":
        from machinectl_py import __version__

        print(f"pymachine {__version__}")
        return 0
    verb = args[0]
    if verb not in VERBS:
        print(f"pymachine: unknown command {verb!r}; see 'pymachine --help'", file=sys.stderr)
        return 2
    module_name, func_name, _ = VERBS[verb]
    if verb == "login" and is_container_login(args[1:]):
        module_name, func_name = "machinectl_py.cmd_shell", "main_login"
    code = run_verb(module_name, func_name, args[1:])
    if argv is None and module_name in FAST_EXIT:
        fast_exit(code)
    return code


def is_container_login(args: list[str]) -> bool:
    """`pymachine login NAME` (one argument, no option) of an existing container is the
    container's login prompt (machinectl login); otherwise `login` is docker's, of a registry."""
    if len(args) != 1 or args[0].startswith("-"):
        return False
    from machinectl_py import state
    from machinectl_py.errors import PymachineError

    try:
        state.load(args[0])
    except PymachineError:
        return False
    return True


# Verbs whose work is done when they return: skip the interpreter's shutdown (module
# teardown and garbage collection cost ~10 ms, a seventh of `run`'s budget, 10-15 ms of a
# commit). Their files are closed by `with` blocks and their threads joined before they return.
FAST_EXIT = frozenset({"machinectl_py.cmd_run", "machinectl_py.exec", "machinectl_py.cmd_lifecycle",
                       "machinectl_py.cmd_create", "machinectl_py.service", "machinectl_py.service_stop",
                       "machinectl_py.images.cli", "machinectl_py.cmd_commit"})


def fast_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def ensure_standard_fds() -> None:
    """Started with stdin, stdout or stderr closed (`>&-`), it becomes /dev/null, as systemd and
    docker do. Otherwise the first pipe or socket opened would take its number: the container's
    output would go into a D-Bus connection or a status pipe, and the interpreter, which found
    no stream there, would fail on its first print or flush."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open("/dev/null", os.O_RDWR)  # the lowest free number: fd, as 0..fd-1 are open
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives as long as the process
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def run_verb(module_name: str, func_name: str, args: list[str]) -> int:
    from machinectl_py.errors import BusError, PymachineError

    try:
        # __import__, not importlib.import_module: importing importlib brings `warnings` (~1 ms
        # of every command); the verb's module is then sys.modules' entry.
        __import__(module_name)
        module = sys.modules[module_name]
        result: int = getattr(module, func_name)(args)
        return result
    except PymachineError as e:
        # A D-Bus call that failed where no layer added context (systemd or machined refused):
        # one line with the D-Bus error's name; a traceback only when debugging.
        if isinstance(e, BusError) and os.environ.get("PYMACHINE_DEBUG"):
            raise
        print(f"pymachine: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        if os.environ.get("PYMACHINE_DEBUG"):
            raise
        print(f"pymachine: {e}", file=sys.stderr)
        return 125
