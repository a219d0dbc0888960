"""Command-line options declared once, as a table: the parser and the --help text derive from it.

argparse costs ~13 ms to import (re, gettext, ...), a fifth of `pymachine run`'s budget,
so the verbs on the start-up path parse with this small docker-style parser instead:
options come before the first positional argument, and everything after the
positionals is the command (`pymachine run [OPTIONS] IMAGE [COMMAND [ARG...]]`).
Supported forms: `--name x`, `--name=x`, `-e K=V`, `-eK=V`, and bundled flags `-it`.
"""

from __future__ import annotations

from machinectl_py.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

FLAG, VALUE, APPEND = "flag", "value", "append"


class Option:
    __slots__ = ("names", "dest", "kind", "metavar", "help", "choices", "default")

    def __init__(self, names: str, help: str, *, kind: str = VALUE, metavar: str = "VALUE",
                 choices: Sequence[str] = (), default: Any = None, dest: str | None = None) -> None:
        self.names = tuple(names.split())
        self.dest = dest or self.names[0].lstrip("-").replace("-", "_")
        self.kind = kind
        self.metavar = metavar
        self.help = help
        self.choices = tuple(choices)
        self.default = [] if kind == APPEND else (False if kind == FLAG else default)


class Command:
    """One verb: its options, positionals and help text."""

    def __init__(self, prog: str, usage: str, description: str, options: Sequence[Option], *,
                 positionals: Sequence[tuple[str, str]] = (), rest: tuple[str, str] | None = None,
                 epilog: str = "") -> None:
        self.prog = prog
        self.usage = usage
        self.description = description
        self.options = list(options)
        self.positionals = list(positionals)  # (dest, help)
        self.rest = rest  # (dest, help) for the trailing command, if any
        self.epilog = epilog
        self._by_name = {name: opt for opt in self.options for name in opt.names}

    def error(self, message: str) -> UsageError:
        return UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")

    def parse(self, argv: Sequence[str]) -> dict[str, Any]:
        values: dict[str, Any] = {opt.dest: _copy(opt.default) for opt in self.options}
        values["help"] = False
        args = list(argv)
        i = 0
        while i < len(args) and args[i].startswith("-") and args[i] != "-":
            arg = args[i]
            i += 1
            if arg == "--":
                break
            if arg == "--help":
                values["help"] = True
                return values
            if arg.startswith("--"):
                name, eq, inline = arg.partition("=")
                i = self._take(values, name, inline if eq else None, args, i)
            else:
                i = self._take_short(values, arg, args, i)
        positional = args[i:]
        for dest, _ in self.positionals:
            if not positional:
                raise self.error(f"missing {dest.upper()}")
            values[dest] = positional.pop(0)
        if self.rest is not None:
            values[self.rest[0]] = positional
        elif positional:
            raise self.error(f"unexpected argument {positional[0]!r}")
        return values

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
        if opt.kind == APPEND:
            values[opt.dest].append(inline)
        else:
            values[opt.dest] = inline
        return i

    def help_text(self) -> str:
        lines = [f"usage: {self.usage}", "", self.description, "", "options:"]
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
                lines.append(f"  {'':<{width}}  {text}")
            else:
                lines.append(f"  {names:<{width}}  {text}")
        if self.epilog:
            lines += ["", self.epilog]
        return "\n".join(lines) + "\n"


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value
