"""A container the OOM killer hits is reported so: `OOMKilled: true` in inspect, `oom-killed` in
`ps -a`, and by systemd: both units have OOMPolicy=stop (a delegated unit's default,
"continue", said "success"), so on a pure v2 host (where systemd sees memory.events) the
unit fails with Result=oom-kill, as its journal says (the failed unit itself is collected at
once: CollectMode=inactive-or-failed). On a hybrid host systemd cannot see OOM kills.
(busybox `tail /dev/zero` keeps one ever longer line.)"""

from __future__ import annotations

import json

import pytest
from helpers import AnyHost, pm, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]

HUNGRY = ("--memory", "64M", "busybox", "tail", "/dev/zero")  # needs far more than 200 MB


def unified(host: AnyHost) -> bool:
    return host.run(["test", "-e", "/sys/fs/cgroup/cgroup.controllers"]).returncode == 0


def unit_results(host: AnyHost, unit: str) -> list[str]:
    """The results systemd logged for the unit's ends ("Failed with result 'oom-kill'")."""
    r = host.run(["journalctl", "--no-pager", "-q", "-o", "json", f"UNIT={unit}", "_PID=1"], check=True)
    return [e["UNIT_RESULT"] for e in map(json.loads, r.stdout.splitlines()) if "UNIT_RESULT" in e]


def show(host: AnyHost, unit: str, prop: str) -> str:
    return host.run(["systemctl", "show", unit, "-p", prop, "--value"], check=True).stdout.strip()


def state_of(host: AnyHost, name: str) -> dict[str, object]:
    r = pm(host, "inspect", name)
    assert r.returncode == 0, r.stderr
    state: dict[str, object] = json.loads(r.stdout)[0]["State"]
    return state


def test_a_foreground_container_killed_by_the_oom_killer(host: AnyHost) -> None:
    r = pm(host, "run", "--name", "oom1", *HUNGRY, timeout=300)
    try:
        assert r.returncode == 137, r.stderr
        state = state_of(host, "oom1")
        assert state["OOMKilled"] is True and state["ExitCode"] == 137
        ps = pm(host, "ps", "-a", "--filter", "name=oom1").stdout
        assert "oom-killed (137)" in ps
        if unified(host):
            assert "oom-kill" in unit_results(host, "machine-oom1.scope")
    finally:
        pm(host, "rm", "-f", "oom1")


def test_a_detached_container_killed_by_the_oom_killer(host: AnyHost) -> None:
    assert pm(host, "create", "--name", "oom2", *HUNGRY).returncode == 0
    try:
        assert show(host, "pymachine@oom2.service", "OOMPolicy") == "stop"
        assert pm(host, "start", "oom2").returncode == 0
        wait_until(lambda: state_of(host, "oom2")["Status"] == "exited", what="oom2 exited", timeout=240,
                   interval=0.5)
        state = state_of(host, "oom2")
        assert state["OOMKilled"] is True and state["ExitCode"] == 137
        assert "oom-killed (137)" in pm(host, "ps", "-a").stdout
        assert json.loads(pm(host, "ps", "-a", "--json").stdout)[0]["oom_killed"] is True
        if unified(host):
            assert "oom-kill" in unit_results(host, "pymachine@oom2.service")
    finally:
        pm(host, "rm", "-f", "oom2")


def test_a_stopped_container_is_not_oom_killed(host: AnyHost) -> None:
    proc = host.popen(["pymachine", "run", "--name", "oom3", "--memory", "64M", "busybox", "sleep", "300"])
    try:
        wait_until(lambda: show(host, "machine-oom3.scope", "ActiveState") == "active", what="oom3's scope")
        assert show(host, "machine-oom3.scope", "OOMPolicy") == "stop"
        assert pm(host, "stop", "-t", "1", "oom3").returncode == 0
        proc.communicate(timeout=60)
        assert state_of(host, "oom3")["OOMKilled"] is False
    finally:
        pm(host, "rm", "-f", "oom3")
