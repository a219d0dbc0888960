"""The Debian package: built from this checkout with packaging/build-deb, then checked as built
(dpkg-deb), as unpacked (dpkg -x, run with Debian's python3) and as installed (dpkg -i inside a
private systemd test host, whose writes stay in its overlay: the real root is never touched).

Slow (a dpkg-buildpackage run, about 15 s here, plus a test host boot), but it runs in CI.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testhost import TestHost, TestHostError

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[2]
VERSION = "0.1.0-1"
UNIT = "lib/systemd/system/pymachine@.service"
SITE = "usr/lib/python3/dist-packages"
# What the package promises to install (paths as dpkg-deb -c lists them, without "./").
EXPECTED_FILES = (
    UNIT,
    "usr/bin/pymachine",
    "usr/bin/pymachine-runc",
    "lib/systemd/system-generators/pymachine-generator",
    f"{SITE}/machinectl_py/__init__.py",
    f"{SITE}/machinectl_py/cli.py",
    f"{SITE}/machinectl_py/images/__init__.py",
    f"{SITE}/machinectl_py/oci/cli.py",
    f"{SITE}/machinectl_py/data/policy-default.toml",
    "usr/share/pymachine/default.toml",
    "usr/share/doc/pymachine/copyright",
    "usr/share/man/man1/pymachine.1.gz",
)
EXPECTED_DEPENDS = ("python3-cffi-backend", "systemd", "systemd-container", "dbus", "busybox-static",
                    "util-linux", "libsystemd0", "init-system-helpers")
# A distro program runs with the distro's python and nothing of the caller's environment.
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb built from this checkout (once per module)."""
    out = tmp_path_factory.mktemp("deb")
    began = time.monotonic()
    result = subprocess.run([str(CHECKOUT / "packaging" / "build-deb"), str(out)],
                            capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - began
    assert result.returncode == 0, f"packaging/build-deb failed:\n{result.stdout}{result.stderr}"
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path == out / f"pymachine_{VERSION}_{_arch()}.deb" and path.is_file(), result.stdout
    print(f"\npackaging/build-deb took {elapsed:.1f} s")
    return path


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files under a throwaway root (dpkg -x: no maintainer scripts, no database)."""
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=60)
    return root


def _arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def _deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def _deb_files(deb: Path) -> dict[str, str]:
    """Path (without the leading "./") -> mode string, from dpkg-deb -c."""
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    files = {}
    for line in listing.splitlines():
        fields = line.split(maxsplit=5)
        files[fields[5].split(" -> ")[0].removeprefix("./").rstrip("/")] = fields[0]
    return files


def _maintainer_script(deb: Path, name: str) -> str:
    tar = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    return subprocess.run(["tar", "-xO", f"./{name}"], input=tar, capture_output=True,
                          check=True).stdout.decode()


# -- the package as built ------------------------------------------------------------------------


def test_package_installs_units_program_module_and_policy(deb: Path) -> None:
    files = _deb_files(deb)
    missing = [f for f in EXPECTED_FILES if f not in files]
    assert not missing, f"not in the package: {missing}"
    for module in ("_native", "_sys"):
        natives = [f for f in files if re.fullmatch(rf"{SITE}/machinectl_py/{module}\..*so", f)]
        assert len(natives) == 1, f"compiled module machinectl_py.{module}: {natives}"
    assert files["usr/bin/pymachine"].startswith("-rwxr-xr-x")
    # The generator is systemd's to run, from its generator dir; not a command on PATH.
    assert files["lib/systemd/system-generators/pymachine-generator"].startswith("-rwxr-xr-x")
    assert "usr/bin/pymachine-generator" not in files
    assert files[UNIT].startswith("-rw-r--r--")
    # Only the template ships: no instance, and nothing enabled at build time.
    assert not [f for f in files if "wants/" in f or re.search(r"pymachine@.+\.service$", f)]
    # No version-specific site dir (dh_python3 moves it) and no bytecode in the package.
    assert not [f for f in files if "python3." in f or f.endswith(".pyc")]


def test_package_control_fields(deb: Path) -> None:
    assert _deb_field(deb, "Package") == "pymachine"
    assert _deb_field(deb, "Version") == VERSION
    assert _deb_field(deb, "Architecture") == _arch()
    depends = {re.split(r"[\s(:]", d.strip())[0] for d in _deb_field(deb, "Depends").split(",")}
    missing = [d for d in EXPECTED_DEPENDS if d not in depends]
    assert not missing, f"Depends lacks {missing}: {_deb_field(deb, 'Depends')}"
    assert "python3" in depends  # from ${python3:Depends}: dh_python3 ran


def test_maintainer_scripts_enable_and_start_nothing(deb: Path) -> None:
    for name in ("postinst", "prerm", "postrm"):
        script = "\n".join(line for line in _maintainer_script(deb, name).splitlines()
                           if not line.lstrip().startswith("#"))
        assert "deb-systemd-helper" not in script, name
        assert not re.search(r"(systemctl|deb-systemd-invoke) .*(enable|start|restart)", script), name
    assert "daemon-reload" in _maintainer_script(deb, "postinst")
    assert "deb-systemd-invoke stop 'pymachine@*.service'" in _maintainer_script(deb, "prerm")


def test_packaged_files_are_the_checkouts(unpacked: Path) -> None:
    assert (unpacked / UNIT).read_bytes() == (CHECKOUT / "units" / "pymachine@.service").read_bytes()
    policy = (CHECKOUT / "policies" / "default.toml").read_bytes()
    assert (unpacked / "usr/share/pymachine/default.toml").read_bytes() == policy
    assert (unpacked / SITE / "machinectl_py/data/policy-default.toml").read_bytes() == policy
    assert "ExecStart=/usr/bin/pymachine " in (unpacked / UNIT).read_text()


def test_unpacked_program_runs_with_debians_python(unpacked: Path) -> None:
    script = unpacked / "usr/bin/pymachine"
    # Isolated and without site (see bin/pymachine); then sys.path comes from the launcher alone.
    assert script.read_text().startswith("#!/usr/bin/python3 -IS\n")
    assert (unpacked / "usr/bin/pymachine-runc").read_text().startswith("#!/usr/bin/python3 -IS\n")
    env = {**CLEAN_ENV, "PYTHONPATH": str(unpacked / SITE)}
    version = subprocess.run(["/usr/bin/python3", "-S", str(script), "--version"], capture_output=True,
                             text=True, env=env, cwd=unpacked, timeout=60)
    assert version.returncode == 0, version.stderr
    assert "0.1.0" in version.stdout
    # The compiled module loads from the package (linked against the host's libsystemd).
    where = subprocess.run(
        ["/usr/bin/python3", "-c", "import machinectl_py._native as n; print(n.__file__)"],
        capture_output=True, text=True, env=env, cwd=unpacked, timeout=60)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(unpacked / SITE)), where.stdout


# -- the package as installed --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pkg_host(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestHost]:
    """A private systemd test host (not the session's: installing a package there would change
    what other tests see). dpkg -i writes only into its overlay."""
    host = TestHost(shared_paths=[str(tmp_path_factory.getbasetemp())])
    try:
        host.start()
    except (TestHostError, OSError) as e:
        pytest.fail(f"the systemd test host did not boot: {e}", pytrace=False)
    try:
        # Inside the overlay only: a pip install on the real host may have put its own template
        # into /etc (it would win over the package's) and /usr/local/bin/pymachine; a container
        # image's policy-rc.d (exit 101) would veto the service actions of maintainer scripts,
        # as it should in an image build but not on a real host.
        host.run(["rm", "-f", "/etc/systemd/system/pymachine@.service", "/usr/local/bin/pymachine",
                  "/usr/sbin/policy-rc.d"], check=True)
        yield host
    finally:
        host.stop()


def _show(host: TestHost, unit: str, *props: str) -> dict[str, str]:
    out = host.run(["systemctl", "show", unit, *(f"-p{p}" for p in props)], check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_installed_package_runs_a_container_from_its_unit(pkg_host: TestHost, deb: Path) -> None:
    host = pkg_host
    install = host.run(["dpkg", "-i", str(deb)], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
    assert install.returncode == 0, f"dpkg -i failed:\n{install.stdout}{install.stderr}"

    # postinst reloaded systemd: the template is known, from /lib, enabled by nobody.
    unit = "pymachine@pkgweb.service"
    props = _show(host, unit, "FragmentPath", "UnitFileState", "ActiveState")
    assert props["FragmentPath"] == "/lib/systemd/system/pymachine@.service", props
    assert props["UnitFileState"] == "disabled" and props["ActiveState"] == "inactive", props
    verify = host.run(["systemd-analyze", "verify", "--man=no", "/lib/systemd/system/pymachine@.service"])
    assert verify.returncode == 0 and "pymachine@" not in verify.stderr, verify.stderr

    # The admin's way: define the container, then enable and start its unit with systemctl.
    pm = "/usr/bin/pymachine"
    host.run([pm, "create", "--name", "pkgweb", "busybox", "sh", "-c",
              "echo hello-from-the-package; exec sleep 1000"], check=True)
    host.run(["systemctl", "enable", "--now", unit], check=True, timeout=120)
    props = _show(host, unit, "ActiveState", "ControlGroup", "UnitFileState")
    assert props["ActiveState"] == "active" and props["UnitFileState"] == "enabled", props
    assert props["ControlGroup"].startswith("/machine.slice/"), props
    host.run(["machinectl", "show", "pkgweb"], check=True)
    _wait_for_journal(host, unit, "hello-from-the-package")

    # Removing the package stops its containers (prerm) while /usr/bin/pymachine still exists
    # for ExecStopPost=, and keeps the admin's definitions.
    remove = host.run(["dpkg", "-r", "pymachine"], timeout=120)
    assert remove.returncode == 0, f"dpkg -r failed:\n{remove.stdout}{remove.stderr}"
    assert _show(host, unit, "ActiveState")["ActiveState"] in ("inactive", "failed")
    assert host.run(["machinectl", "show", "pkgweb"]).returncode != 0
    assert host.run(["test", "-e", pm]).returncode == 1
    assert host.run(["test", "-e", "/etc/pymachine/machines/pkgweb.toml"]).returncode == 0


def _wait_for_journal(host: TestHost, unit: str, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        out = host.run(["journalctl", "-u", unit, "-o", "cat", "--no-pager"]).stdout
        if text in out:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the journal of {unit}:\n{out}")
        time.sleep(0.2)

