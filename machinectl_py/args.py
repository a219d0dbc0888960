"""The one argument parser of every verb: options declared as a table, docker's syntax.

Every verb declares a `Command` (its options, positionals and help); the parser, the usage
errors (one line, exit 125) and the `--help` layout derive from it, so all verbs read alike.
Supported forms: `--name x`, `--name=x`, `-e K=V`, `-eK=V`, and bundled flags `-it`.
A verb that takes a command (`run IMAGE [COMMAND...]`, `exec NAME COMMAND...`) stops at its
first positional, so the command's own options stay its own; other verbs take options
anywhere, as docker's do (`inspect web --format ...`).

On the start-up path (`run`, `create`, `exec`): no argparse (13 ms to import), no re.
"""

from __future__ import annotations

from machinectl_py.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

FLAG, VALUE, APPEND = "flag", "value", "append"


class Option:
    __slots__ = ("names", "dest", "kind", "metavar", "help", "choices", "default", "convert")

    def __init__(self, names: str, help: str, *, kind: str = VALUE, metavar: str = "VALUE",
                 choices: Sequence[str] = (), default: Any = None, dest: str | None = None,
                 convert: Callable[[str], Any] | None = None) -> None:
        self.names = tuple(names.split())
        self.dest = dest or self.names[0].lstrip("-").replace("-", "_")
        self.kind = kind
        self.metavar = metavar
        self.help = help
        self.choices = tuple(choices)
        self.default = [] if kind == APPEND else (False if kind == FLAG else default)
        # str -> value (int, float...); a ValueError becomes "invalid value ... for --x".
        self.convert = convert


def positional(dest: str, help: str, nargs: str = "1") -> tuple[str, str, str]:
    """A positional argument: nargs "1" (required), "?" (optional), "+" (one or more), "*"."""
    return (dest, help, nargs)


class Command:
    """One verb: its options, positionals and help text."""

    def __init__(self, prog: str, usage: str, description: str, options: Sequence[Option], *,
                 positionals: Sequence[tuple[str, str] | tuple[str, str, str]] = (),
                 rest: tuple[str, str] | None = None, epilog: str = "") -> None:
        self.prog = prog
        self.usage = usage
        self.description = description
        self.options = list(options)
        # (dest, help, nargs); a pair means nargs "1"
        self.positionals = [(p[0], p[1], p[2] if len(p) > 2 else "1") for p in positionals]
        self.rest = rest  # (dest, help) for the trailing command, if any
        self.epilog = epilog
        self._by_name = {name: opt for opt in self.options for name in opt.names}

    def error(self, message: str) -> UsageError:
        """A usage error: one line, naming the verb, with where to read more (exit 125)."""
        verb = self.prog.removeprefix("pymachine ")
        return UsageError(f"{verb}: {message} (see '{self.prog} --help')")

    def parse(self, argv: Sequence[str]) -> dict[str, Any]:
        values: dict[str, Any] = {opt.dest: _copy(opt.default) for opt in self.options}
        values["help"] = False
        args = list(argv)
        positional: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == "--":
                positional += args[i:]
                break
            if not arg.startswith("-") or arg == "-":
                positional.append(arg)
                if self.rest is not None:  # the command and its own options follow
                    positional += args[i:]
                    break
                continue
            if arg == "--help":
                values["help"] = True
                return values
            if arg.startswith("--"):
                name, eq, inline = arg.partition("=")
                i = self._take(values, name, inline if eq else None, args, i)
            else:
                i = self._take_short(values, arg, args, i)
        self._assign_positionals(values, positional)
        return values

    def _assign_positionals(self, values: dict[str, Any], positional: list[str]) -> None:
        for dest, _, nargs in self.positionals:
            if nargs in ("+", "*"):
                if nargs == "+" and not positional:
                    raise self.error(f"missing {dest.upper()}")
                values[dest], positional = positional, []
            elif positional:
                values[dest] = positional.pop(0)
            elif nargs == "?":
                values[dest] = None
            else:
                raise self.error(f"missing {dest.upper()}")
        if self.rest is not None:
            values[self.rest[0]] = positional
        elif positional:
            raise self.error(f"unexpected argument {positional[0]!r}")

    def _take_short(self, values: dict[str, Any], arg: str, args: list[str], i: int) -> int:
        # -it (bundled flags), -eK=V or -e K=V (a value option, attached or next)
        for pos in range(1, len(arg)):
            name = "-" + arg[pos]
            opt = self._by_name.get(name)
            if opt is None:
                raise self.error(f"unknown option {name!r}")
            if opt.kind == FLAG:
                values[opt.dest] = True
                continue
            attached = arg[pos + 1:]
            return self._take(values, name, attached or None, args, i)
        return i

    def _take(self, values: dict[str, Any], name: str, inline: str | None, args: list[str], i: int) -> int:
        opt = self._by_name.get(name)
        if opt is None:
            raise self.error(f"unknown option {name!r}")
        if opt.kind == FLAG:
            if inline is not None:
                raise self.error(f"option {name} takes no value")
            values[opt.dest] = True
            return i
        if inline is None:
            if i >= len(args):
                raise self.error(f"option {name} needs a value ({opt.metavar})")
            inline = args[i]
            i += 1
        if opt.choices and inline not in opt.choices:
            raise self.error(f"invalid value {inline!r} for {name}: choose from {', '.join(opt.choices)}")
        value: Any = inline
        if opt.convert is not None:
            try:
                value = opt.convert(inline)
            except ValueError:
                raise self.error(f"invalid value {inline!r} for {name} ({opt.metavar})") from None
        if opt.kind == APPEND:
            values[opt.dest].append(value)
        else:
            values[opt.dest] = value
        return i

    def parse_or_help(self, argv: Sequence[str]) -> dict[str, Any] | None:
        """The values, or None once --help was printed."""
        values = self.parse(argv)
        if values["help"]:
            print(self.help_text(), end="")
            return None
        return values

    def help_text(self) -> str:
        lines = [f"usage: {self.usage}", "", self.description]
        args = [(dest.upper(), text) for dest, text, _ in self.positionals]
        if self.rest is not None:
            args.append((self.rest[0].upper(), self.rest[1]))
        if args:
            lines += ["", "arguments:"]
            width = max(len(a[0]) for a in args)
            for name, text in args:
                lines += _wrapped(f"  {name:<{width}}  ", text)
        lines += ["", "options:"]
        rows = []
        for opt in self.options:
            names = ", ".join(opt.names)
            if opt.kind != FLAG:
                names += f" {opt.metavar}"
            rows.append((names, opt.help))
        rows.append(("--help", "show this help and exit"))
        width = min(max(len(r[0]) for r in rows), 28)
        for names, text in rows:
            if len(names) > width:
                lines.append(f"  {names}")
                lines += _wrapped(f"  {'':<{width}}  ", text)
            else:
                lines += _wrapped(f"  {names:<{width}}  ", text)
        if self.epilog:
            lines += ["", self.epilog]
        return "\n".join(lines) + "\n"


HELP_WIDTH = 100


def _wrapped(head: str, text: str) -> list[str]:
    """`head` then `text` word-wrapped at HELP_WIDTH, continuation lines indented under it."""
    import textwrap  # --help only: textwrap imports re

    return textwrap.wrap(text, HELP_WIDTH, initial_indent=head, subsequent_indent=" " * len(head),
                         break_on_hyphens=False) or [head.rstrip()]


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


class Group:
    """A verb with sub-verbs (`image`, `volume`): each sub-verb is a Command and a handler."""

    def __init__(self, prog: str, description: str,
                 verbs: Sequence[tuple[str, str, Callable[[list[str]], int]]]) -> None:
        self.prog = prog
        self.description = description
        self.verbs = list(verbs)  # (name, summary, handler)

    def help_text(self) -> str:
        width = max(len(name) for name, _, _ in self.verbs)
        lines = [f"usage: {self.prog} COMMAND [OPTIONS] [ARG...]", "", self.description, "", "commands:"]
        lines += [f"  {name:<{width}}  {summary}" for name, summary, _ in self.verbs]
        lines += ["", f"Run '{self.prog} COMMAND --help' for the options of a command."]
        return "\n".join(lines) + "\n"

    def dispatch(self, argv: Sequence[str]) -> int:
        verb = self.prog.removeprefix("pymachine ")
        if not argv:
            raise UsageError(f"{verb}: missing COMMAND (see '{self.prog} --help')")
        if argv[0] in ("--help", "-h", "help"):
            print(self.help_text(), end="")
            return 0
        for name, _, handler in self.verbs:
            if argv[0] == name:
                return handler(list(argv[1:]))
        raise UsageError(f"{verb}: unknown command {argv[0]!r} (see '{self.prog} --help')")
