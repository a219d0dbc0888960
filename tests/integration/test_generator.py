"""pymachine-generator in the test host: a definition written by hand and started by systemctl
alone has its restart policy and docker's journal fields (CONTAINER_ID) from its first start."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testhost import LocalHost, TestHost

pytestmark = pytest.mark.integration

AnyHost = TestHost | LocalHost
CHECKOUT = Path(__file__).resolve().parent.parent.parent
GENERATOR_DIR = "/etc/systemd/system-generators"
LINK = f"{GENERATOR_DIR}/pymachine-generator"


def show(host: AnyHost, unit: str, *props: str) -> dict[str, str]:
    out = host.run(["systemctl", "show", unit, *[f"-p{p}" for p in props]], check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def extra_fields(value: str) -> dict[str, str]:
    """systemctl show's LogExtraFields= value: space-separated KEY=VALUE items."""
    return dict(item.split("=", 1) for item in value.split() if "=" in item)


@pytest.fixture
def generator(host: AnyHost) -> Iterator[None]:
    """The generator installed as tools/install-and-demo installs a pip install's copy."""
    executable = CHECKOUT / ".venv" / "bin" / "pymachine-generator"
    assert executable.exists(), f"{executable}: run `pip install -e .` (tools/test does)"
    host.run(["sh", "-c", f"mkdir -p {GENERATOR_DIR} && ln -sf {executable} {LINK}"], check=True)
    host.run(["pymachine", "gc"], check=True, timeout=60)  # the template, as a boot would find it
    try:
        yield
    finally:
        host.run(["rm", "-f", LINK])
        host.run(["systemctl", "daemon-reload"], timeout=60)


@pytest.fixture
def definition(host: AnyHost, generator: None) -> Iterator[str]:
    name = f"gen{secrets.token_hex(3)}"
    yield name
    host.run(["systemctl", "disable", "--now", f"pymachine@{name}.service"], timeout=60)
    host.run(["pymachine", "rm", "-f", "-v", name], timeout=60)
    host.assert_no_leftovers(timeout=15)


def write_definition(host: AnyHost, name: str, text: str) -> None:
    host.run(["sh", "-c", f"mkdir -p /etc/pymachine/machines && cat > /etc/pymachine/machines/{name}.toml"],
             check=True, input=text)


def journal_entries(host: AnyHost, name: str, message: str, timeout: float = 10) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        out = host.run(["journalctl", f"CONTAINER_NAME={name}", "-o", "json", "--no-pager"], check=True).stdout
        entries = [e for e in map(json.loads, out.splitlines()) if e.get("MESSAGE") == message]
        if entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.2)


def test_systemctl_start_of_a_hand_written_definition_has_its_unit_settings(host: AnyHost, definition: str) -> None:
    name, unit = definition, f"pymachine@{definition}.service"
    write_definition(host, name, 'image = "busybox"\ncommand = "echo hello-$((40+2)); exec sleep 1000"\n'
                                 'restart = "on-failure"\n[limits]\nmemory = "40M"\n')
    host.run(["systemctl", "daemon-reload"], check=True, timeout=60)
    props = show(host, unit, "Restart", "LogExtraFields", "MemoryMax", "DropInPaths")
    assert props["Restart"] == "on-failure", props
    assert props["MemoryMax"] == str(40 * 1024 * 1024), props
    assert f"/run/systemd/generator/{unit}.d/50-pymachine.conf" in props["DropInPaths"], props
    fields = extra_fields(props["LogExtraFields"])
    assert len(fields["CONTAINER_ID"]) == 12 and fields["CONTAINER_ID_FULL"].startswith(fields["CONTAINER_ID"])
    # Stable: a reload without a change to the definition gives the same id.
    host.run(["systemctl", "daemon-reload"], check=True, timeout=60)
    assert extra_fields(show(host, unit, "LogExtraFields")["LogExtraFields"]) == fields

    host.run(["systemctl", "enable", "--now", unit], check=True, timeout=60)
    assert show(host, unit, "ActiveState")["ActiveState"] == "active"
    (entry, *_) = journal_entries(host, name, "hello-42") or [{}]
    assert entry.get("CONTAINER_ID") == fields["CONTAINER_ID"], entry
    assert entry.get("CONTAINER_ID_FULL") == fields["CONTAINER_ID_FULL"], entry
    assert entry.get("_SYSTEMD_UNIT") == unit, entry
    # The id reaches the setup process only, not the container's environment.
    env = host.run(["pymachine", "exec", name, "env"], check=True, timeout=60).stdout
    assert "PYMACHINE" not in env, env


def test_the_record_of_an_adopted_definition_has_the_generators_id(host: AnyHost, definition: str) -> None:
    name, unit = definition, f"pymachine@{definition}.service"
    write_definition(host, name, 'image = "busybox"\ncommand = ["sleep", "1000"]\n')
    host.run(["systemctl", "daemon-reload"], check=True, timeout=60)
    fields = extra_fields(show(host, unit, "LogExtraFields")["LogExtraFields"])
    host.run(["systemctl", "start", unit], check=True, timeout=60)
    (record,) = json.loads(host.run(["pymachine", "inspect", name], check=True).stdout)
    assert record["Id"] == fields["CONTAINER_ID_FULL"], (record["Id"], fields)
    # From then on the generator reads the id from the record: the same one.
    host.run(["systemctl", "daemon-reload"], check=True, timeout=60)
    assert extra_fields(show(host, unit, "LogExtraFields")["LogExtraFields"]) == fields


def test_this_boots_cgroup_layout_wins_over_a_stale_drop_in_in_etc(host: AnyHost, definition: str) -> None:
    """`create` wrote /etc/.../50-pymachine.conf for the layout the host had then; after an
    upgrade that changed it (hybrid to unified), the generator's 60-pymachine-delegate.conf
    of this boot decides the unit's Delegate=."""
    name, unit = definition, f"pymachine@{definition}.service"
    write_definition(host, name, 'image = "busybox"\ncommand = ["sleep", "1000"]\n')
    unified = host.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], check=True).stdout.strip() == "cgroup2fs"
    stale = "memory pids devices" if unified else "yes"  # the other layout's
    dropins = f"/etc/systemd/system/{unit}.d"
    host.run(["sh", "-c", f"mkdir -p {dropins} && printf '[Service]\\nDelegate=\\nDelegate={stale}\\n' "
                          f"> {dropins}/50-pymachine.conf"], check=True)
    host.run(["systemctl", "daemon-reload"], check=True, timeout=60)
    props = show(host, unit, "Delegate", "DelegateControllers", "DropInPaths")
    assert f"/run/systemd/generator/{unit}.d/60-pymachine-delegate.conf" in props["DropInPaths"], props
    controllers = set(props["DelegateControllers"].split())
    assert props["Delegate"] == "yes", props
    if unified:
        assert {"cpu", "io", "memory", "pids"} <= controllers, props
    else:
        assert controllers == {"memory", "pids", "devices"}, props
    host.run(["systemctl", "start", unit], check=True, timeout=60)
    assert show(host, unit, "ActiveState")["ActiveState"] == "active"


def test_a_bad_definition_is_skipped_and_the_others_still_generated(host: AnyHost, definition: str) -> None:
    name, bad = definition, f"genbad{secrets.token_hex(3)}"
    write_definition(host, name, 'image = "busybox"\nrestart = "always"\n')
    write_definition(host, bad, 'image = "busybox"\nrestart = "sometimes"\n')
    try:
        host.run(["systemctl", "daemon-reload"], check=True, timeout=60)
        assert show(host, f"pymachine@{name}.service", "Restart")["Restart"] == "always"
        assert host.run(["test", "-e", f"/run/systemd/generator/pymachine@{bad}.service.d"]).returncode == 1
        # Run by hand it says why on stderr, and still succeeds (a generator never fails the boot).
        r = host.run(["pymachine-generator", "/tmp/generator-out"])
        assert r.returncode == 0, r.stderr
        assert f"skipping /etc/pymachine/machines/{bad}.toml" in r.stderr and "restart" in r.stderr, r.stderr
        assert host.run(["test", "-e", f"/tmp/generator-out/pymachine@{name}.service.d/50-pymachine.conf"]
                        ).returncode == 0
    finally:
        host.run(["rm", "-rf", f"/etc/pymachine/machines/{bad}.toml", "/tmp/generator-out"])
