"""The unit side of detached containers, pure parts: template, drop-in, exit codes, --format."""

from __future__ import annotations

from pathlib import Path

import pytest

from machinectl_py import dropins, service_stop, unit_template
from machinectl_py.errors import UsageError
from machinectl_py.formatting import render as render_format
from machinectl_py.formatting import render_all
from machinectl_py.spec import ContainerSpec, Limits

SHIPPED = Path(__file__).resolve().parents[2] / "units" / "pymachine@.service"


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_template_has_one_source() -> None:
    # The checkout's units/ file; an installed copy (setup.py's build step) is the same file.
    assert unit_template.SOURCES[0] == str(SHIPPED)
    assert unit_template.template_text() == SHIPPED.read_text()
    assert not (Path(unit_template.__file__).parent / "data" / "pymachine@.service").exists()  # not in git


def test_template_points_at_the_installed_executable() -> None:
    text = unit_template.template_text("/opt/venv/bin/pymachine")
    assert "ExecStart=/opt/venv/bin/pymachine _service %i" in text
    assert "ExecStopPost=/opt/venv/bin/pymachine _service-stopped %i" in text
    for needed in ("Type=forking", "PIDFile=/run/pymachine/%i.pid", "Delegate=yes", "Slice=machine.slice",
                   "KillMode=mixed", "LogExtraFields=CONTAINER_NAME=%i", "WantedBy=machines.target"):
        assert needed in text


def test_dropin_carries_restart_limits_and_journal_fields() -> None:
    spec = ContainerSpec(name="web", image="busybox", restart="on-failure",
                         limits=Limits(memory_max=64 * 1024**2, cpu_quota_usec=500_000, tasks_max=40)).validate()
    text = dropins.dropin_text("web", "ab" * 32, "busybox:latest", spec, (("/dev/fuse", "rwm"),))
    lines = text.splitlines()
    assert "[Service]" in lines
    assert "Restart=on-failure" in lines
    assert "MemoryMax=67108864" in lines and "CPUQuota=50%" in lines and "TasksMax=40" in lines
    assert f'LogExtraFields=CONTAINER_ID={"ab" * 6} CONTAINER_ID_FULL={"ab" * 32} "IMAGE_NAME=busybox:latest"' in lines
    assert "DeviceAllow=/dev/fuse rwm" in lines
    assert not any(line.startswith("Delegate") for line in lines)  # pure v2: the template's Delegate=yes


def test_dropin_on_a_host_with_v1_hierarchies_delegates_what_the_container_uses() -> None:
    plain = ContainerSpec(name="web", image="busybox").validate()
    text = dropins.dropin_text("web", "ab" * 32, "busybox:latest", plain, unified_host=False)
    assert text.splitlines()[-2:] == ["Delegate=", "Delegate=memory pids devices"]
    capped = ContainerSpec(name="web", image="busybox", limits=Limits(cpu_quota_usec=500_000)).validate()
    text = dropins.dropin_text("web", "ab" * 32, "busybox:latest", capped, unified_host=False)
    assert text.splitlines()[-1] == "Delegate=memory pids devices cpu"


@pytest.mark.parametrize(("env", "code"), [
    ({"EXIT_CODE": "exited", "EXIT_STATUS": "3"}, 3),
    ({"EXIT_CODE": "killed", "EXIT_STATUS": "KILL"}, 137),
    ({"EXIT_CODE": "killed", "EXIT_STATUS": "TERM"}, 143),
    ({"EXIT_CODE": "dumped", "EXIT_STATUS": "SEGV"}, 139),
    ({}, None),
])
def test_exit_code_from_systemd_environment(env: dict[str, str], code: int | None) -> None:
    assert service_stop.exit_code_from_env(env) == code


def test_render_format() -> None:
    data = {"State": {"Pid": 42, "Running": True, "ExitCode": 0}, "Name": "web", "Mounts": [{"Type": "bind"}]}
    assert render_format("{{ .State.Pid }}", data) == "42"
    assert render_format("{{.Name}} {{.State.Running}}", data) == "web true"
    assert render_format("{{json .Mounts}}", data) == '[{"Type": "bind"}]'
    with pytest.raises(UsageError, match="no field"):
        render_format("{{ .State.Nope }}", data)
    with pytest.raises(UsageError, match="unsupported"):
        render_format("{{ range .Mounts }}", data)


def test_render_format_has_one_rule_for_null_and_a_table_directive() -> None:
    assert render_format("{{ .Definition }}", {"Definition": None}) == "<no value>"
    rows = [{"Names": "web", "Status": "running"}, {"Names": "database", "Status": "exited (0)"}]
    assert render_all("table {{.Names}}\\t{{.Status}}", rows) == [
        "NAMES      STATUS", "web        running", "database   exited (0)"]
    assert render_all("{{.Names}}", rows) == ["web", "database"]
