"""`pymachine run` must start faster than systemd-nspawn: its modules import nothing heavy.

Each module named here costs milliseconds at every container start (json compiles regular
expressions, typing and dataclasses build classes, asyncio/dbus_next/pystemd 80-170 ms).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = {"json", "re", "typing", "pathlib", "dataclasses", "argparse", "asyncio", "contextlib", "enum",
         "collections", "socket", "subprocess", "shutil", "tomllib", "hashlib", "secrets", "dbus_next", "pystemd"}

PROBE = """
import sys
base = set(sys.modules)
import machinectl_py.cli, machinectl_py.cmd_run, machinectl_py.runtime, machinectl_py.images
print(" ".join(sorted(set(sys.modules) - base)))
"""


def test_run_path_imports_nothing_heavy() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE],
                         capture_output=True, text=True, check=True).stdout.split()
    assert not HEAVY & set(out), f"heavy modules on the start-up path: {sorted(HEAVY & set(out))}"


# The container init's side: imported by the forked init while systemd makes the scope, not by
# `run` before it forks (launch.py says why).
INIT_SIDE = {"machinectl_py.container_init", "machinectl_py.mounts", "machinectl_py.idmap", "machinectl_py.plan"}


def test_run_leaves_the_init_side_to_the_init() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE],
                         capture_output=True, text=True, check=True).stdout.split()
    assert not INIT_SIDE & set(out), f"the init's modules imported by run itself: {sorted(INIT_SIDE & set(out))}"


DETACHED_PROBE = """
import sys
base = set(sys.modules)
import machinectl_py.cli, machinectl_py.cmd_create, machinectl_py.cmd_lifecycle, machinectl_py.service
import machinectl_py.exec, machinectl_py.lifecycle, machinectl_py.dropins, machinectl_py.unit_template
import machinectl_py.launch, machinectl_py.payload
from machinectl_py import config, settings, state
state.load_json('{"name": "web", "spec": {"command": ["sh", "-c", "x"]}}')
settings.toml_string("sh -c 'echo \\"ok\\"'")
print(" ".join(sorted(set(sys.modules) - base)))
"""


def test_start_create_and_exec_paths_import_nothing_heavy() -> None:
    """`start` runs two processes (the client and the unit's setup), `exec` one: each pays these."""
    out = subprocess.run([sys.executable, "-c", DETACHED_PROBE],
                         capture_output=True, text=True, check=True).stdout.split()
    assert not HEAVY & set(out), f"heavy modules on the start/exec path: {sorted(HEAVY & set(out))}"


BOOT_PROBE = """
import sys
base = set(sys.modules)
import machinectl_py.cli, machinectl_py.service, machinectl_py.launch
from machinectl_py import boot, readiness
boot.environment({}, "ab" * 32, notify=True)
boot.console_lines(b"\\x1b[0;32m  OK  \\x1b[0m] Started x.\\r\\n")
boot.parse_notify(b"READY=1")
readiness.notify_systemd("STATUS=x")
import os
from machinectl_py import payload
for fd in payload.console_socketpair():
    os.close(fd)
print(" ".join(sorted(set(sys.modules) - base)))
"""


def test_boot_path_imports_nothing_heavy() -> None:
    """The unit's setup process of a booted container also holds the guest's notify socket and
    copies its console until READY=1: neither `re` nor `socket` (~5 and ~2 ms of every boot)."""
    out = subprocess.run([sys.executable, "-c", BOOT_PROBE],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "machinectl_py.readiness" in out
    assert not HEAVY & set(out), f"heavy modules on the boot path: {sorted(HEAVY & set(out))}"


FORWARDER_PROBE = """
import sys
base = set(sys.modules)
from machinectl_py.forwarder import forward
from machinectl_py.journal import JournalWriter
writer = JournalWriter(b"CONTAINER_NAME=x\\n")
writer.send(b"line", 6)  # no journald here: dropped, but the socket was made
writer.close()
print(" ".join(sorted(set(sys.modules) - base)))
"""


def test_forwarder_imports_nothing_heavy() -> None:
    """The log forwarder starts beside systemd's scope job at every `run`: on two cores, its
    imports' CPU time is taken from that job."""
    out = subprocess.run([sys.executable, "-c", FORWARDER_PROBE],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "_socket" in out
    assert not HEAVY & set(out), f"heavy modules in the forwarder: {sorted(HEAVY & set(out))}"


def test_launcher_imports_nothing_heavy() -> None:
    """bin/pymachine, the installed command: not pip's entry-point wrapper, which imports `re`."""
    root = Path(__file__).resolve().parents[2]
    # -S: without site, whose .pth files (an editable install's finder) import `re` themselves.
    result = subprocess.run([sys.executable, "-S", "-X", "importtime", str(root / "bin" / "pymachine"), "--version"],
                            capture_output=True, text=True, check=True, env={"PYTHONPATH": str(root)})
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "machinectl_py.cli" in imported
    assert not HEAVY & imported, f"heavy modules imported by the launcher: {sorted(HEAVY & imported)}"


def _importtime(cmd: list[str], **kwargs: object) -> tuple[str, set[str]]:
    result = subprocess.run([*cmd[:1], "-X", "importtime", *cmd[1:]], capture_output=True, text=True,
                            check=True, **kwargs)  # type: ignore[call-overload]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    return result.stdout, imported


def test_launcher_finds_its_venv_as_python3_dash_i_dash_s(tmp_path: Path) -> None:
    """How tools/install-and-demo starts it: `#!PREFIX/bin/python3 -IS`. Without site, the
    launcher adds PREFIX's site-packages itself; site is never imported."""
    root = Path(__file__).resolve().parents[2]
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to(Path(sys.executable).resolve())
    site_packages = tmp_path / "lib" / version / "site-packages"
    site_packages.mkdir(parents=True)
    (site_packages / "machinectl_py").symlink_to(root / "machinectl_py")
    # Installed as the install tool does it, and run by the kernel from its #! line (which
    # passes everything after the interpreter as one argument: hence -IS, not -I -S).
    launcher = tmp_path / "bin" / "pymachine"
    text = (root / "bin" / "pymachine").read_text()
    launcher.write_text(f"#!{tmp_path}/bin/python3 -IS\n" + text.split("\n", 1)[1])
    launcher.chmod(0o755)
    run = subprocess.run([str(launcher), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("pymachine "), run.stderr
    out, imported = _importtime([str(tmp_path / "bin" / "python3"), "-IS", str(launcher), "--version"], cwd=tmp_path)
    assert out.startswith("pymachine ")
    assert "site" not in imported and "machinectl_py.cli" in imported
    assert not HEAVY & imported, f"heavy modules imported by the launcher: {sorted(HEAVY & imported)}"


def test_launcher_falls_back_to_site_for_other_layouts() -> None:
    """Under -IS with the package where the launcher does not look (here the test venv's
    editable install, found through its .pth finder), site is run after all."""
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-IS", str(root / "bin" / "pymachine"), "--version"],
                            capture_output=True, text=True, cwd="/", check=True)
    assert result.stdout.startswith("pymachine ")


PS_PROBE = """
import sys
base = set(sys.modules)
import machinectl_py.cli, machinectl_py.cmd_ps, machinectl_py.bus, machinectl_py.systemd
from machinectl_py import config, formatting, paths, settings, state, unit_template
formatting.align([("NAME", "STATUS"), ("web", "running")])
formatting.to_json([{"Name": "web", "State": {"Pid": 1}, "Args": []}], indent=2)
print(" ".join(sorted(set(sys.modules) - base)))
"""


def test_ps_and_inspect_import_nothing_heavy() -> None:
    """Scripts poll `ps` and `inspect`: with one bus call each, imports are most of their time."""
    out = subprocess.run([sys.executable, "-c", PS_PROBE],
                         capture_output=True, text=True, check=True).stdout.split()
    assert not HEAVY & set(out), f"heavy modules on the ps/inspect path: {sorted(HEAVY & set(out))}"


OCI_PROBE = """
import sys
base = set(sys.modules)
import machinectl_py.oci.cli, machinectl_py.oci.runtime, machinectl_py.launch, machinectl_py.container_init
from machinectl_py.oci import config, defaults
config.parse(defaults.default_spec(), "/b", "c1")
print(" ".join(sorted(set(sys.modules) - base)))
"""


def test_oci_create_path_imports_nothing_heavy() -> None:
    """containerd runs pymachine-runc create, start, state and delete for every container: each
    is a process that pays these (the bench: bench/bench_oci.py)."""
    out = subprocess.run([sys.executable, "-c", OCI_PROBE],
                         capture_output=True, text=True, check=True).stdout.split()
    assert not HEAVY & set(out), f"heavy modules on the OCI runtime's path: {sorted(HEAVY & set(out))}"


BRIDGE_PROBE = """
import sys
import machinectl_py.cli, machinectl_py.cmd_run, machinectl_py.runtime, machinectl_py.images, machinectl_py.launch
base = set(sys.modules)
import machinectl_py.netsetup, machinectl_py.netfiles, machinectl_py.netlink
print(" ".join(sorted(set(sys.modules) - base)))
"""


def test_bridge_path_executes_nothing_and_imports_little() -> None:
    """bridge is the default network: its setup and teardown (netsetup.py) speak rtnetlink and
    libnftables in-process, so neither subprocess nor shutil (bz2, lzma) is imported for it.
    json stays: the leases are JSON files."""
    out = set(subprocess.run([sys.executable, "-c", BRIDGE_PROBE],
                             capture_output=True, text=True, check=True).stdout.split())
    allowed = {"json", "_socket"}
    assert not (HEAVY - allowed) & out, f"heavy modules on the bridge path: {sorted((HEAVY - allowed) & out)}"


EXEC_PARENT_PROBE = """
import os, sys
base = set(sys.modules)
import machinectl_py.cli, machinectl_py.exec as ex
os.makedirs(os.path.join(sys.argv[1], "containers", "web"))
with open(os.path.join(sys.argv[1], "containers", "web", "container.json"), "w") as f:
    f.write('{"name": "web", "state": "running", "pid": %d, "unit": "x.service", "spec": {}}' % os.getpid())
raw = ex.read_record("web")
assert raw and raw["pid"] == os.getpid(), raw
assert ex.find_from_record("web", raw) is None  # not a namespace's init
assert ex.parse(["-i", "web", "true"]) is not None
print(" ".join(sorted(set(sys.modules) - base)))
"""

# What exec's parent does not need before its fork: the child works out the seccomp program
# and the user from the host's files while the parent attaches it (exec.Exec); no bus call
# (so not _native, which loads libsystemd), no ContainerRecord, no UID range allocation.
EXEC_CHILD_ONLY = {"machinectl_py.spec", "machinectl_py.state", "machinectl_py.security", "machinectl_py.policy",
                   "machinectl_py.seccomp_compile", "machinectl_py.seccomp_profile", "machinectl_py.bus",
                   "machinectl_py.systemd", "machinectl_py._native", "machinectl_py.userns", "importlib", "warnings"}


def test_exec_parent_imports_only_what_it_needs_before_the_fork(tmp_path: Path) -> None:
    """`exec`'s parent, from the launcher to the fork: the record read as JSON values, the pidfd
    and /proc checks; nothing heavy, and not the modules only the child needs."""
    out = set(subprocess.run([sys.executable, "-c", EXEC_PARENT_PROBE, str(tmp_path)], capture_output=True,
                             text=True, check=True, env={"PYMACHINE_STATE_DIR": str(tmp_path)}).stdout.split())
    assert not HEAVY & out, f"heavy modules on exec's path: {sorted(HEAVY & out)}"
    assert not EXEC_CHILD_ONLY & out, f"child-only modules in exec's parent: {sorted(EXEC_CHILD_ONLY & out)}"


def test_users_max_id_is_specs() -> None:
    from machinectl_py import spec, users

    assert users.MAX_ID == spec.MAX_ID
