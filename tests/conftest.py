"""Shared pytest fixtures: the systemd test host (`host`) and a leftover check (`no_leftovers`).

Integration tests talk to a real systemd, D-Bus, journald and machined. Where systemd is PID 1
that is the machine itself; elsewhere tools/testhost.py boots one in namespaces (see there).
The host boots once per session. If it cannot boot, every test that uses it fails with the
reason: a missing systemd is a broken environment, never a reason to skip.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
# tools/ is not an installed package: import the test host straight from the checkout.
sys.path.insert(0, str(CHECKOUT / "tools"))

from testhost import LocalHost, TestHost, TestHostError, get_host  # noqa: E402

AnyHost = TestHost | LocalHost
_BOOT_REPORT = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def host(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnyHost]:
    """The systemd host for the session, with <checkout>/.venv/bin first on PATH inside.

    The checkout and pytest's temp dir (tmp_path) are shared with the host: the same path inside
    and out, writes seen on both sides. Elsewhere, writes inside stay inside."""
    shared = [str(CHECKOUT), str(tmp_path_factory.getbasetemp())]
    h = get_host(path_prepend=[str(CHECKOUT / ".venv" / "bin")], shared_paths=shared)
    try:
        h.start()
    except (TestHostError, OSError) as e:
        pytest.fail(f"the systemd test host did not boot: {e}", pytrace=False)
    if isinstance(h, TestHost):
        join_network_namespace(h.pid)
        report = f"systemd test host {h.id} booted in {h.boot_seconds:.2f} s (PID {h.pid})"
        if h.degraded_units:
            report += f", degraded: {' '.join(h.degraded_units)}"
    else:
        report = "systemd is PID 1: integration tests run on this machine"
    request.config.stash[_BOOT_REPORT] = report
    forced = os.environ.get("PYMACHINE_USERNS_DEFAULT")
    if forced:
        # The suite's run with the --userns default forced: the units' setup processes see it too.
        h.run(["systemctl", "set-environment", f"PYMACHINE_USERNS_DEFAULT={forced}"], check=True)
        report += f"; --userns default forced to {forced}"
    try:
        yield h
    finally:
        if forced:
            h.run(["systemctl", "unset-environment", "PYMACHINE_USERNS_DEFAULT"])
        h.stop()


MACHINE_NETNS_ENV = "PYMACHINE_TEST_MACHINE_NETNS"
MACHINE_NETNS_PATH_ENV = "PYMACHINE_TEST_MACHINE_NETNS_PATH"


def join_network_namespace(pid: int) -> None:
    """pytest's own thread joins the test host's network namespace: the servers tests start
    here (a registry, a token service, a flaky proxy) and the clients they run (skopeo, urllib)
    then share the test host's loopback with its containers, as on a machine where systemd is
    PID 1, and the machine's own network is never used. (setns moves only the calling thread;
    processes and threads it starts from now on follow it.)"""
    from machinectl_py import syscalls as sc

    os.environ[MACHINE_NETNS_ENV] = os.readlink("/proc/self/ns/net")  # for tests that check they left it
    # Kept open for the session: what needs the machine's own network (debootstrap from Debian's
    # mirror) runs there through `nsenter --net=` this path (tests/images/build.py).
    machine_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    os.environ[MACHINE_NETNS_PATH_ENV] = f"/proc/{os.getpid()}/fd/{machine_netns}"
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, sc.CLONE_NEWNET)
    finally:
        os.close(fd)


@pytest.fixture
def no_leftovers(host: AnyHost) -> Iterator[None]:
    """After the test: no machine-*.scope, pymachine@ unit or registered machine is left in the host."""
    yield
    host.assert_no_leftovers()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    report = config.stash.get(_BOOT_REPORT, None)
    if report:
        terminalreporter.write_line(report)


@pytest.fixture
def cleanup(host: AnyHost) -> Iterator[list[str]]:
    """Names of containers the test makes: removed (with their volumes) after it, then the host
    must hold nothing of them."""
    names: list[str] = []
    yield names
    for name in names:
        host.run(["pymachine", "rm", "-f", "-v", name], timeout=60)
    host.assert_no_leftovers(timeout=15)
