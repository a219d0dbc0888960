"""`pymachine-runc`: runc's command line (as containerd's runc v2 shim calls it) over pymachine.

Flags are runc's (urfave/cli): `--flag value`, `--flag=value`, and one dash for long names.
Errors are one line on stderr, and with `--log FILE --log-format json` also a JSON line in
FILE, which the shim reads to report why a command failed. Exit 1 on failure, as runc.
"""

from __future__ import annotations

import os
import sys
import time

from machinectl_py.errors import PymachineError
from machinectl_py.oci import store
from machinectl_py.state import dump_json, load_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROG = "pymachine-runc"
# flag -> takes a value? (aliases map to one name)
GLOBAL_FLAGS = {"root": True, "log": True, "log-format": True, "systemd-cgroup": False, "debug": False,
                "criu": True, "rootless": True}
COMMANDS: dict[str, tuple[dict[str, bool], dict[str, str], str]] = {
    # command: (flags, short aliases, usage of the arguments)
    "create": ({"bundle": True, "pid-file": True, "console-socket": True, "no-pivot": False,
                "no-new-keyring": False, "preserve-fds": True}, {"b": "bundle"}, "<container-id>"),
    "start": ({}, {}, "<container-id>"),
    "state": ({}, {}, "<container-id>"),
    "kill": ({"all": False}, {"a": "all"}, "<container-id> [signal]"),
    "delete": ({"force": False}, {"f": "force"}, "<container-id>"),
    "exec": ({"process": True, "tty": False, "console-socket": True, "pid-file": True, "detach": False,
              "cwd": True, "env": True, "user": True, "preserve-fds": True},
             {"p": "process", "t": "tty", "d": "detach", "e": "env", "u": "user"}, "<container-id> <command> [args]"),
    "ps": ({"format": True}, {"f": "format"}, "<container-id> [ps options]"),
    "list": ({"format": True, "quiet": False}, {"f": "format", "q": "quiet"}, ""),
    "pause": ({}, {}, "<container-id>"),
    "resume": ({}, {}, "<container-id>"),
    "features": ({}, {}, ""),
    "spec": ({"bundle": True, "rootless": False}, {"b": "bundle"}, ""),
}


class Usage(Exception):
    pass


def parse_flags(args: list[str], flags: dict[str, bool], aliases: dict[str, str],
                stop_at_positional: bool) -> tuple[dict[str, Any], list[str]]:
    """(flag values, positional arguments). Repeated value flags collect into a list."""
    values: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i + 1:]
            break
        if not arg.startswith("-") or arg == "-":
            rest.append(arg)
            if stop_at_positional:
                rest += args[i + 1:]
                break
            i += 1
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        name = aliases.get(name, name)
        if name in ("h", "help"):
            raise Usage("help")
        if name not in flags:
            raise Usage(f"flag provided but not defined: -{arg.lstrip('-').partition('=')[0]}")
        if flags[name]:
            if not eq:
                i += 1
                if i >= len(args):
                    raise Usage(f"flag needs an argument: -{name}")
                value = args[i]
            values.setdefault(name, []).append(value)
        else:
            values[name] = value.lower() not in ("false", "0") if eq else True
        i += 1
    return {k: (v[-1] if isinstance(v, list) and k not in ("env",) else v) for k, v in values.items()}, rest


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    log: tuple[str | None, str] = (None, "text")
    try:
        global_values, rest = parse_flags(args, GLOBAL_FLAGS | {"version": False, "v": False}, {}, True)
        log = (global_values.get("log"), str(global_values.get("log-format", "text")))
        if global_values.get("version") or global_values.get("v"):
            from machinectl_py import __version__
            print(f"{PROG} version {__version__}\nspec: {store.OCI_VERSION}")
            return 0
        if not rest:
            print(f"usage: {PROG} [global options] command [command options] [arguments...]\n"
                  f"commands: {', '.join(COMMANDS)}")
            return 0 if argv is None or args else 1
        command, command_args = rest[0], rest[1:]
        if command not in COMMANDS:
            raise Usage(f"No help topic for '{command}'")
        flags, aliases, usage = COMMANDS[command]
        values, positional = parse_flags(command_args, flags, aliases, command == "exec")
        root = str(global_values.get("root") or store.DEFAULT_ROOT)
        return dispatch(command, values, positional, root, usage)
    except Usage as e:
        if str(e) == "help":
            print(f"usage: {PROG} [global options] COMMAND [options] ARGS; see runc(8)")
            return 0
        return _fail(f"Incorrect Usage: {e}" if not str(e).startswith("No help") else str(e), log)
    except (PymachineError, store.StoreError, OSError) as e:
        message = e.message if isinstance(e, PymachineError) else str(e)
        return _fail(message, log)


def _fail(message: str, log: tuple[str | None, str]) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    path, fmt = log
    if path:
        try:
            with open(path, "a") as f:
                if fmt == "json":
                    f.write(dump_json({"level": "error", "msg": message,
                                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
                else:
                    f.write(f"level=error msg={message!r}\n")
        except OSError:
            pass
    return 1


def _one_id(positional: list[str], command: str, usage: str, at_most: int = 1) -> str:
    if not positional or len(positional) > at_most:
        raise Usage(f"{command} requires {usage}")
    return positional[0]


def dispatch(command: str, values: dict[str, Any], positional: list[str], root: str, usage: str) -> int:
    if command in ("features", "spec", "list"):
        if positional:
            raise Usage(f"{command} takes no arguments")
        return _no_id(command, values, root)
    if command == "state":
        print(dump_json(store.oci_state(root, store.load(root, _one_id(positional, command, usage)))))
        return 0
    from machinectl_py.oci import runtime

    if command == "kill":
        container_id = _one_id(positional, command, usage, 2)
        sig = runtime.parse_signal(positional[1] if len(positional) > 1 else "SIGTERM")
        runtime.kill(root, container_id, sig, bool(values.get("all")))
        return 0
    if command == "exec":
        return _exec(values, positional, root, usage)
    if command == "ps":
        return _ps(values, positional, root, usage)
    container_id = _one_id(positional, command, usage)
    if command == "create":
        runtime.create(root, container_id, str(values.get("bundle") or "."), values.get("pid-file"),
                       values.get("console-socket"))
    elif command == "start":
        runtime.start(root, container_id)
    elif command == "delete":
        runtime.delete(root, container_id, bool(values.get("force")))
    elif command in ("pause", "resume"):
        runtime.pause(root, container_id, command == "pause")
    return 0


def _no_id(command: str, values: dict[str, Any], root: str) -> int:
    from machinectl_py.oci import defaults

    if command == "features":
        print(dump_json(defaults.features()))
    elif command == "spec":
        path = os.path.join(str(values.get("bundle") or "."), "config.json")
        if os.path.exists(path):
            raise PymachineError("File config.json exists. Remove it first.")
        import json  # indented, as runc writes it, for the hand that edits it next

        with open(path, "w") as f:
            f.write(json.dumps(defaults.default_spec(), indent="\t") + "\n")
    else:
        _list(values, root)
    return 0


def _list(values: dict[str, Any], root: str) -> None:
    states = []
    for container_id in store.ids(root):
        try:
            states.append(store.oci_state(root, store.load(root, container_id)))
        except store.StoreError:
            continue  # deleted meanwhile
    if values.get("quiet"):
        print("\n".join(s["id"] for s in states) if states else "", end="\n" if states else "")
    elif values.get("format") == "json":
        print(dump_json(states))
    else:
        print(f"{'ID':<20} {'PID':<8} {'STATUS':<10} {'BUNDLE':<40} CREATED")
        for s in states:
            print(f"{s['id']:<20} {s['pid']:<8} {s['status']:<10} {s['bundle']:<40} {s['created']}")


def _ps(values: dict[str, Any], positional: list[str], root: str, usage: str) -> int:
    from machinectl_py.oci import runtime

    if not positional:
        raise Usage(f"ps requires {usage}")
    procs = runtime.processes(root, positional[0])
    if values.get("format") == "json":
        print(dump_json([pid for pid, _ in procs]))
    elif values.get("format", "table") == "table":
        print(f"{'PID':>8} CMD")
        for pid, cmd in procs:
            print(f"{pid:>8} {cmd}")
    else:
        raise Usage(f"invalid format option {values['format']!r}")
    return 0


def _exec(values: dict[str, Any], positional: list[str], root: str, usage: str) -> int:
    from machinectl_py.oci import runtime

    if not positional:
        raise Usage(f"exec requires {usage}")
    container_id, argv = positional[0], positional[1:]
    if values.get("process"):
        try:
            with open(values["process"]) as f:
                process = load_json(f.read())
        except (OSError, ValueError) as e:
            raise PymachineError(f"cannot read the process file {values['process']}: {e}") from None
    else:
        if not argv:
            raise Usage("exec requires a command (or --process FILE)")
        user = str(values.get("user") or "0:0")
        uid, _, gid = user.partition(":")
        process = {"args": argv, "cwd": values.get("cwd") or "/", "terminal": bool(values.get("tty")),
                   "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           *values.get("env", [])],
                   "user": {"uid": int(uid) if uid.isdigit() else 0, "gid": int(gid) if gid.isdigit() else 0}}
    return runtime.exec_process(root, container_id, process, console_socket=values.get("console-socket"),
                                pid_file=values.get("pid-file"), detach=bool(values.get("detach")))
