"""`pymachine explain`: definition, unit and kernel side by side; drift from `systemctl
set-property` or a write to the cgroup file exits 1 naming it and its source; --fix restores."""

from __future__ import annotations

import json
import signal

import pytest
from helpers import AnyHost, machine_names, pm, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]

MB128 = str(128 << 20)


def show(host: AnyHost, unit: str, prop: str) -> str:
    return host.run(["systemctl", "show", unit, "-p", prop, "--value"], check=True).stdout.strip()


def explain(host: AnyHost, *args: str) -> tuple[int, dict[str, dict[str, object]]]:
    r = pm(host, "explain", "--json", *args)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, {row["property"]: row for row in json.loads(r.stdout)["settings"]}


def test_the_done_when_of_issue_15(host: AnyHost) -> None:
    unit = "pymachine@xweb.service"
    # port 8080: in the host's network a user namespace's root binds no port below 1024
    assert pm(host, "run", "-d", "--name", "xweb", "--memory", "64M", "busybox", "httpd", "-f", "-p", "8080"
              ).returncode == 0
    try:
        assert pm(host, "update", "xweb", "--memory", "128M", "--cpus", "0.5").returncode == 0
        assert show(host, unit, "MemoryMax") == MB128 and show(host, unit, "CPUQuotaPerSecUSec") == "500ms"
        assert "xweb" in pm(host, "stats", "--no-stream").stdout
        events = pm(host, "events", "--since", "1m", "--until", "0s", "--filter", "container=xweb").stdout
        assert " container start " in events and " container update " in events
        code, rows = explain(host, "xweb")
        assert code == 0 and {"MemoryMax", "CPUQuotaPerSecUSec"} <= set(rows)
        assert not any(row["drift"] for row in rows.values())
        definition = host.run(["cat", "/etc/pymachine/machines/xweb.toml"], check=True).stdout.splitlines()
        line = next(i for i, text in enumerate(definition, 1) if text.startswith("memory = "))
        assert rows["MemoryMax"]["definition"]["source"] == f"/etc/pymachine/machines/xweb.toml:{line}"  # type: ignore[index]
        host.run(["systemctl", "set-property", "--runtime", unit, "MemoryMax=50M"], check=True)
        r = pm(host, "explain", "xweb")
        assert r.returncode == 1 and "drift: MemoryMax" in r.stdout
        assert "/run/systemd/system.control/pymachine@xweb.service.d/50-MemoryMax.conf" in r.stdout
        r = pm(host, "explain", "--fix", "xweb")
        assert r.returncode == 0 and "no drift" in r.stdout, r.stdout + r.stderr
        assert show(host, unit, "MemoryMax") == MB128
        assert pm(host, "explain", "xweb").returncode == 0
        # It holds through a reload: the runtime drop-in is gone, pymachine's own one rules.
        host.run(["systemctl", "daemon-reload"], check=True)
        assert show(host, unit, "MemoryMax") == MB128 and "system.control" not in show(host, unit, "DropInPaths")
    finally:
        pm(host, "rm", "-f", "xweb")


def test_a_property_the_definition_does_not_set(host: AnyHost) -> None:
    unit = "pymachine@xtasks.service"
    assert pm(host, "run", "-d", "--name", "xtasks", "busybox", "sleep", "300").returncode == 0
    try:
        host.run(["systemctl", "set-property", unit, "TasksMax=77"], check=True)  # persistent: /etc
        code, rows = explain(host, "xtasks")
        assert code == 1 and rows["TasksMax"]["drift"] is True
        assert rows["TasksMax"]["definition"]["value"] == "(not set)"  # type: ignore[index]
        assert "/etc/systemd/system.control/" in str(rows["TasksMax"]["unit"]["source"])  # type: ignore[index]
        assert pm(host, "explain", "--fix", "xtasks").returncode == 0
        assert show(host, unit, "TasksMax") != "77"
    finally:
        pm(host, "rm", "-f", "xtasks")


def test_kernel_drift_in_a_foreground_container(host: AnyHost) -> None:
    unified = host.run(["test", "-e", "/sys/fs/cgroup/cgroup.controllers"]).returncode == 0
    proc = host.popen(["pymachine", "run", "--rm", "--name", "xfg", "--memory", "64M", "busybox", "sleep", "300"])
    try:
        wait_until(lambda: "xfg" in machine_names(host), what="machine xfg", timeout=60)
        assert explain(host, "xfg")[0] == 0
        cgroup = show(host, "machine-xfg.scope", "ControlGroup")
        path = f"/sys/fs/cgroup{cgroup}/memory.max" if unified else \
            f"/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes"
        host.run(["sh", "-c", f"echo {70 << 20} > {path}"], check=True)  # behind systemd's back
        code, rows = explain(host, "xfg")
        assert code == 1 and rows["MemoryMax"]["kernel"]["value"] == str(70 << 20)  # type: ignore[index]
        assert rows["MemoryMax"]["unit"]["value"] == str(64 << 20)  # type: ignore[index]
        assert pm(host, "explain", "--fix", "xfg").returncode == 0
        assert host.run(["cat", path], check=True).stdout.strip() == str(64 << 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
