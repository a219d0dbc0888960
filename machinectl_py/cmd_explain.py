"""`pymachine explain NAME`: each limit of a container in its three places, side by side.

- the definition: what pymachine was told (the TOML file and line of a detached container;
  the record of a foreground `run`),
- the unit: what systemd holds (the property, and the drop-in that set it: pymachine's own, or
  one `systemctl set-property` wrote under system.control),
- the kernel: what the cgroup file says.
A row where they disagree is drift: exit status 1 (for monitoring), 0 when all agree.
`--fix` makes the unit and the kernel follow the definition again (lifecycle.reapply).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from machinectl_py import formatting
from machinectl_py.args import FLAG, Command, Option

if TYPE_CHECKING:
    from machinectl_py.bus import Bus
    from machinectl_py.lifecycle import Container

EXPLAIN = Command(
    "pymachine explain", "pymachine explain [OPTIONS] NAME",
    "Show each limit of a container in its definition (file and line), its systemd unit (the\n"
    "property and the drop-in that set it) and the kernel (the cgroup file), marking drift.\n"
    "Exit status 0 when all agree, 1 on drift.",
    [Option("--fix", "re-apply the definition through systemd, then show the result", kind=FLAG),
     Option("--json", "the rows as JSON", kind=FLAG)],
    positionals=[("name", "container name")])
UINT64_MAX = 2**64 - 1
ACTIVE = ("active", "reloading", "deactivating", "activating")


def show_value(prop: str, value: Any) -> str:
    """A property's value as `systemctl show` would spell it, roughly."""
    if value is None:
        return "-"
    if isinstance(value, bytes):
        from machinectl_py.spec import format_cpuset

        return format_cpuset([i * 8 + b for i, byte in enumerate(value) for b in range(8) if byte >> b & 1])
    if isinstance(value, list):
        return " ".join(f"{path} {rate}" for path, rate in value) or "-"
    if value == UINT64_MAX:
        return "infinity"
    if prop == "CPUQuotaPerSecUSec":
        return f"{int(value) / 10_000:g}%"
    return str(value)


def same(prop: str, a: Any, b: Any) -> bool:
    if isinstance(a, bytes) or isinstance(b, bytes):
        return show_value(prop, a) == show_value(prop, b)
    if isinstance(a, list) and isinstance(b, list):
        return sorted(map(tuple, a)) == sorted(map(tuple, b))
    return bool(a == b)


def dropin_source(paths: list[str], key: str) -> str | None:
    """The last drop-in that assigns `key` (the one that wins; an empty assignment resets)."""
    found = None
    for path in paths:
        try:
            with open(path) as f:
                if any(line.strip().startswith(f"{key}=") for line in f):
                    found = path
        except OSError:
            continue
    return found


def definition_source(container: Container, setting_key: str | None) -> str:
    from machinectl_py import config

    if container.is_foreground or setting_key is None:
        return "container.json (pymachine run's flags)"
    path = config.definition_path(container.name)
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return path
    table, _, key = setting_key.rpartition(".")
    line = config._line_of(text, key, table or None)
    return f"{path}:{line}" if line else path


def rows(bus: Bus, container: Container) -> list[dict[str, Any]]:
    from machinectl_py import cgroupfs, settings, systemd

    spec = container.record.spec if container.is_foreground else container.sync()
    expected = settings.expected_properties(spec)
    names = [name for name, _, _ in settings.LIMIT_PROPERTIES]
    unit = systemd.unit_values(bus, container.unit, names)
    running = unit.get("ActiveState") in ACTIVE
    dropins = [str(p) for p in unit.get("DropInPaths", [])]
    unified = cgroupfs.unified()
    out = []
    for name, key, flag in settings.LIMIT_PROPERTIES:
        source = dropin_source(dropins, key)
        if name not in expected and (source is None or "/system.control/" not in source):
            continue  # set nowhere, or only by pymachine's own files saying "unset"
        setting, want = expected.get(name, (None, None))
        have = unit.get(name)
        kernel = cgroupfs.kernel_value(name, str(unit.get("ControlGroup") or ""), unified) if running else None
        unit_drift = bool(unit) and not same(name, want, have) if want is not None else source is not None
        kernel_drift = kernel is not None and kernel[1] is not None and have is not None and \
            not same(name, have, kernel[1])
        out.append({
            "setting": setting.dest_flag if setting else flag, "property": name,
            "definition": {"value": show_value(name, want) if want is not None else "(not set)",
                           "source": definition_source(container, setting.key if setting else None)},
            "unit": {"value": show_value(name, have) if unit else "(not loaded)",
                     "source": source or ("StartTransientUnit" if container.is_foreground else "-")},
            "kernel": {"value": show_value(name, kernel[1]) if kernel else "-", "file": kernel[0] if kernel else "-"},
            "drift": unit_drift or kernel_drift,
        })
    return out


def render(container: Container, table: list[dict[str, Any]]) -> list[str]:
    lines = [f"{container.name}: {container.unit}"]
    cells = [("", "SETTING", "DEFINITION", "UNIT", "KERNEL")]
    for row in table:
        cells.append(("DRIFT" if row["drift"] else "ok", row["setting"], row["definition"]["value"],
                      f"{row['property']}={row['unit']['value']}", row["kernel"]["value"]))
    lines += formatting.align(cells)
    lines.append("")
    for row in table:
        lines.append(f"{row['setting']}: definition {row['definition']['source']}; unit {row['unit']['source']}; "
                     f"kernel {row['kernel']['file']}")
    drift = [row for row in table if row["drift"]]
    lines.append(f"drift: {', '.join(r['property'] for r in drift)}" if drift else "no drift")
    return lines


def main(argv: list[str]) -> int:
    from machinectl_py import lifecycle
    from machinectl_py.bus import Bus

    args = EXPLAIN.parse_or_help(argv)
    if args is None:
        return 0
    with Bus.system() as bus:
        container = lifecycle.Container.load_or_adopt(args["name"], bus=bus)
        table = rows(bus, container)
        if args["fix"] and any(row["drift"] for row in table):
            lifecycle.reapply(bus, container, [row["property"] for row in table if row["drift"]])
            table = rows(bus, container)
    if args["json"]:
        print(json.dumps({"name": container.name, "unit": container.unit, "settings": table,
                          "drift": any(row["drift"] for row in table)}, indent=2))
    else:
        print("\n".join(render(container, table)))
    return 1 if any(row["drift"] for row in table) else 0
