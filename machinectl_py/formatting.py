"""`--format` for every verb: a small subset of docker's Go templates, one set of rules.

- `{{ .Path.To.Field }}`: a value; `{{ json .Field }}` or a map or list: JSON; `{{ . }}`: the whole item.
- a field that does not exist is an error naming it; a field that exists with no value (null)
  prints `<no value>`, as docker's templates print a missing map entry; booleans print
  `true`/`false`.
- `table` at the start (`table {{.Names}}\\t{{.Status}}`): a header row made of the field names,
  then the rows, columns aligned as docker's tabwriter aligns them.
- `\\t` and `\\n` written literally in the template become a tab and a newline.
Pure: no side effects, unit-tested.

`ps` and `inspect` import this module: `json`, `re`, `typing` and `collections.abc` come in
only where a template needs them (together ~15 ms of every `ps`); `to_json` writes what
json.dumps(indent=N) writes, through the json module's own C string encoder.
"""

from __future__ import annotations

from _json import encode_basestring_ascii

from machinectl_py.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from collections.abc import Mapping, Sequence
    from typing import Any

_ACTION_PATTERN = r"{{\s*(?:(json)\s+)?(\.(?:[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)?)\s*}}"
NO_VALUE = "<no value>"


def _action() -> re.Pattern[str]:
    import re

    return re.compile(_ACTION_PATTERN)  # re caches it


def to_json(value: Any, indent: int, _level: int = 0) -> str:
    """json.dumps(value, indent=indent), for dicts with str keys, lists, tuples, str, int,
    float, bool and None."""
    if isinstance(value, str):
        return str(encode_basestring_ascii(value))
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return _number(value)
    inner = "\n" + " " * (indent * (_level + 1))
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{encode_basestring_ascii(str(k))}: {to_json(v, indent, _level + 1)}" for k, v in value.items()]
        return "{" + inner + ("," + inner).join(items) + "\n" + " " * (indent * _level) + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        elements = [to_json(v, indent, _level + 1) for v in value]
        return "[" + inner + ("," + inner).join(elements) + "\n" + " " * (indent * _level) + "]"
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _number(value: int | float) -> str:
    if isinstance(value, int):
        return int.__repr__(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _lookup(data: Any, path: str) -> Any:
    from collections.abc import Mapping

    current = data
    for part in [p for p in path.split(".") if p]:
        if not isinstance(current, Mapping) or part not in current:
            raise UsageError(f"--format: no field {path!r}", hint="the fields are those of the verb's --json output")
        current = current[part]
    return current


def _text(value: Any, as_json: bool) -> str:
    if as_json or isinstance(value, (dict, list)):
        import json

        return json.dumps(value)
    if value is None:
        return NO_VALUE
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(template: str, data: Mapping[str, Any]) -> str:
    """One item through the template."""

    def value(match: re.Match[str]) -> str:
        return _text(_lookup(data, match.group(2)), bool(match.group(1)))

    text = _action().sub(value, template)
    if "{{" in text:
        raise UsageError(f"--format: unsupported template {template!r}",
                         hint="use '{{ .Field.Sub }}', '{{ json .Field }}' or 'table {{ .Field }}\\t...'")
    return text.replace("\\n", "\n").replace("\\t", "\t")


def is_table(template: str) -> bool:
    return template.startswith("table ") or template == "table"


def _header(template: str) -> str:
    def name(match: re.Match[str]) -> str:
        path = match.group(2).strip(".")
        return (path.rsplit(".", 1)[-1] if path else "ITEM").upper()

    return _action().sub(name, template).replace("\\n", "\n").replace("\\t", "\t")


def align(rows: Sequence[Sequence[str]], gap: int = 3) -> list[str]:
    """Columns padded to their widest cell (the last one left ragged), as docker's tabwriter."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(len(r) for r in rows))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i] + gap) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append("".join(cells).rstrip())
    return lines


def render_all(template: str, items: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every item through the template; with `table`, a header and aligned columns."""
    if not is_table(template):
        return [render(template, item) for item in items]
    body = template[len("table"):].strip() or "{{ json . }}"
    rows = [_header(body).split("\t")]
    rows += [render(body, item).split("\t") for item in items]
    return align(rows)
