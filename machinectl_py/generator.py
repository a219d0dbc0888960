"""pymachine-generator: a systemd generator that gives every definition its unit settings.

systemd runs the executables in /usr/lib/systemd/system-generators/ (a distro package) and
/etc/systemd/system-generators/ (a pip install: tools/install-and-demo links it there) early at
boot and on every `systemctl daemon-reload`, with three output directories (systemd.generator(7)).
For each /etc/pymachine/machines/NAME.toml this one writes, into the first ("normal") directory,

    pymachine@NAME.service.d/50-pymachine.conf
    pymachine@NAME.service.d/60-pymachine-delegate.conf

with the same text `pymachine create`/`start` write to /etc/systemd/system (dropins.dropin_text:
Restart=, the limits, DeviceAllow= from the policy, LogExtraFields= with CONTAINER_ID and
IMAGE_NAME). So a hand-written definition started by `systemctl enable --now pymachine@NAME`, or
at boot, has its restart policy and journal fields from its very first start, as podman's quadlet
does for its .container files. The file pymachine writes in /etc (same name, higher precedence)
overrides this one once `pymachine start` has run. The second holds only Delegate=, for the
cgroup layout of this boot: it sorts after the first, so it wins over a file in /etc written
when the host had another layout (hybrid before a distribution upgrade made it unified).

The container's id: the one in its record (/var/lib/pymachine/containers/NAME/container.json)
when that is readable; otherwise (never started, or /var not mounted yet at boot) one derived from
the machine id, the name and the definition file's identity, so that it is the same at every
reload and boot while the file is unchanged. `Environment=PYMACHINE_CONTAINER_ID=` hands it to the
unit's setup process, which gives it to the record it makes for a definition it has never seen.

Manners of a generator: it never fails the boot (a bad definition is logged and skipped, any
other error too, and the exit status is always 0), it makes no D-Bus call and writes nothing but
its output directory, and it is fast (no image resolution, no policy cache write).
"""

from __future__ import annotations

import os
import sys

ID_ENV = "PYMACHINE_CONTAINER_ID"
MACHINE_ID = "/etc/machine-id"
_HEX = frozenset("0123456789abcdef")


def log(message: str) -> None:
    """A warning. Run by the system manager ($SYSTEMD_SCOPE=system), a generator's stderr is
    PID 1's (the console, or nothing): the kernel log reaches the journal, as systemd's own
    generators do. Run by hand, stderr."""
    line = f"pymachine-generator: {message}\n"
    if os.environ.get("SYSTEMD_SCOPE") == "system":
        try:
            fd = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
            try:
                os.write(fd, f"<4>{line}".encode(errors="replace")[:1000])  # <4>: warning
                return
            finally:
                os.close(fd)
        except OSError:
            pass  # no /dev/kmsg (a container): stderr then
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # no stderr either: nothing else to do


def is_container_id(text: str) -> bool:
    return len(text) == 64 and set(text) <= _HEX


def derived_id(name: str, definition: os.stat_result, machine_id: str) -> str:
    """A stable id for a definition without a record: the same while its file is the same one
    (a definition removed and written anew gets a new inode and ctime, hence a new id)."""
    import hashlib

    seed = f"pymachine\0{machine_id}\0{name}\0{definition.st_ino}\0{definition.st_ctime_ns}"
    return hashlib.sha256(seed.encode()).hexdigest()


def _machine_id() -> str:
    try:
        with open(MACHINE_ID) as f:
            return f.read().strip()
    except OSError:
        return ""


def _recorded(name: str) -> tuple[str, str] | None:
    """(id, image name) from the container's record, if there is one we can read now."""
    from machinectl_py import state

    try:
        record = state.load(name)
    except Exception:  # none, unreadable, or /var not mounted yet: derive the id instead
        return None
    return (record.id, record.image_name) if is_container_id(record.id) else None


def _device_allow() -> tuple[tuple[str, str], ...]:
    """The policy's DeviceAllow=, parsed directly: load_policy() would write its cache in /var."""
    import tomllib

    from machinectl_py.policy import default_policy_path, parse_policy

    path = default_policy_path()
    try:
        with open(path, "rb") as f:
            return parse_policy(tomllib.load(f), path).device_allow
    except Exception as e:
        log(f"{path}: {e}; the drop-ins get no DeviceAllow= from the policy")
        return ()


def dropin_for(name: str, path: str, device_allow: tuple[tuple[str, str], ...],
               machine_id: str) -> tuple[str, str]:
    """The drop-in texts of one definition (its settings, its delegation); raises
    PymachineError for a bad one."""
    from machinectl_py import config
    from machinectl_py.dropins import delegate_lines, dropin_text
    from machinectl_py.mounts import unified_cgroup_host

    with open(path, encoding="utf-8") as f:
        text = f.read()
        st = os.fstat(f.fileno())
    spec = config.parse_definition(name, path, text)
    recorded = _recorded(name)
    container_id, image_name = recorded or (derived_id(name, st, machine_id), image_reference(spec.image))
    # systemd mounts the cgroup hierarchies before it runs generators.
    unified = unified_cgroup_host()
    body = dropin_text(name, container_id, image_name, spec, device_allow, unified_host=unified)
    delegate = "\n".join(["[Service]", *delegate_lines(spec.limits, unified)])
    return (f"# Generated by pymachine-generator from {path}.\n{body}Environment={ID_ENV}={container_id}\n",
            f"# Generated by pymachine-generator: the cgroup layout of this boot.\n{delegate}\n")


def generate(output_dir: str, machines_dir: str) -> list[str]:
    """Write the drop-ins into output_dir; returns the unit names it wrote for."""
    from machinectl_py.dropins import DELEGATE_DROPIN, DROPIN
    from machinectl_py.errors import PymachineError
    from machinectl_py.spec import validate_name
    from machinectl_py.unit_template import unit_name

    try:
        entries = sorted(os.listdir(machines_dir))
    except FileNotFoundError:
        return []
    device_allow: tuple[tuple[str, str], ...] | None = None
    machine_id = _machine_id()
    written = []
    for entry in entries:
        if not entry.endswith(".toml") or entry.startswith("."):
            continue
        name = entry[:-len(".toml")]
        path = os.path.join(machines_dir, entry)
        try:
            validate_name(name)
            if device_allow is None:
                device_allow = _device_allow()
            texts = dropin_for(name, path, device_allow, machine_id)
        except (PymachineError, OSError, UnicodeDecodeError) as e:
            log(f"skipping {path}: {getattr(e, 'message', None) or e}")
            continue
        unit = unit_name(name)
        directory = os.path.join(output_dir, f"{unit}.d")
        os.makedirs(directory, mode=0o755, exist_ok=True)
        for filename, text in zip((DROPIN, DELEGATE_DROPIN), texts, strict=True):
            with open(os.path.join(directory, filename), "w", encoding="utf-8") as f:
                f.write(text)
        written.append(unit)
    return written


def main(argv: list[str]) -> int:
    """systemd calls generators with 1 or 3 directories (normal, early, late); we use normal."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: pymachine-generator NORMAL_DIR [EARLY_DIR LATE_DIR]\n\n"
              "A systemd generator: writes pymachine@NAME.service.d/50-pymachine.conf into NORMAL_DIR\n"
              "for every definition in /etc/pymachine/machines (see units/README.md).")
        return 0 if argv else 2
    try:
        from machinectl_py.config import machines_dir

        generate(argv[0], machines_dir())
    except Exception as e:  # never fail the boot: a generator's error fails nothing else
        log(f"failed: {type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def image_reference(image: str) -> str:
    """The image as a record names it once resolved (`busybox` -> `busybox:latest`), so that
    IMAGE_NAME stays the same when a record appears; an id or a bad name as written."""
    from machinectl_py.errors import UsageError
    from machinectl_py.images.store import normalize_reference

    try:
        return normalize_reference(image)
    except UsageError:
        return image
