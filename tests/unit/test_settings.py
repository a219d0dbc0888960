"""The settings table: one declaration per setting, and everything derived from it agrees."""

from __future__ import annotations

from pathlib import Path

import pytest

from machinectl_py import config, settings
from machinectl_py.errors import UsageError
from machinectl_py.spec import ContainerSpec, Limits, Volume

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- settings-table: generated from machinectl_py/settings.py -->\n", "<!-- end of settings-table -->"


def test_readme_table_is_the_table_in_code() -> None:
    text = README.read_text()
    table = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    assert table == settings.markdown_table(), "README's settings table differs: regenerate it from " \
        "settings.markdown_table()"


def test_every_spec_field_is_a_setting() -> None:
    fields = {part for s in settings.SETTINGS for part in s.field.split("+")}
    spec_fields = set(ContainerSpec.__slots__) - {"limits"}
    assert {f for f in fields if not f.startswith("limits.")} == spec_fields
    assert {f.removeprefix("limits.") for f in fields if f.startswith("limits.")} == set(Limits.__slots__)


def test_flags_and_keys_are_unique() -> None:
    names = [n for s in settings.SETTINGS if s.option for n in s.option.names]
    assert len(names) == len(set(names))
    keys = [s.key for s in settings.SETTINGS if s.key]
    assert len(keys) == len(set(keys))


FULL = ContainerSpec(
    name="web", image="busybox", command=("httpd", "-f"), hostname="www", network="private", env={"A": "1"},
    workdir="/www", user="nobody", limits=Limits(64 << 20, 500_000, 40),
    volumes=(Volume("/data", "/srv/data", True), Volume("/cache")), restart="always",
    entrypoint=("/bin/sh",), labels={"tier": "web", "x y": ""}, tmpfs={"/scratch": "size=1m"}, read_only=True,
    shm_size=16 << 20, init=True, stop_signal="SIGINT", stop_timeout=4, ulimits={"nofile": (1024, 2048)},
)


def test_a_definition_with_every_key_reads_back_to_the_same_spec() -> None:
    text = config.render_definition(FULL)
    assert config.parse_definition("web", "/etc/pymachine/machines/web.toml", text) == FULL


def test_run_flags_build_the_same_spec() -> None:
    from machinectl_py.cmd_run import parse

    spec = parse(["--name", "web", "-h", "www", "--network", "private", "-e", "A=1", "-w", "/www", "-u", "nobody",
                  "-m", "64M", "--cpus", "0.5", "--pids-limit", "40", "-v", "/srv/data:/data:ro", "-v", "/cache",
                  "--restart", "always", "--entrypoint", "/bin/sh", "-l", "tier=web", "--label", "x y",
                  "--tmpfs", "/scratch:size=1m", "--read-only", "--shm-size", "16M", "--init",
                  "--stop-signal", "INT", "--stop-timeout", "4", "--ulimit", "nofile=1024:2048",
                  "busybox", "httpd", "-f"])
    assert spec == FULL


def test_drop_in_lines_and_inspect_fields() -> None:
    lines = settings.dropin_lines(FULL)
    for line in ("Restart=always", "MemoryMax=67108864", "CPUQuota=50%", "TasksMax=40", "KillSignal=SIGINT",
                 "TimeoutStopSec=4", "LimitNOFILE=1024:2048"):
        assert line in lines
    fields = settings.inspect_fields(FULL)
    assert fields["Config"]["Entrypoint"] == ["/bin/sh"] and fields["Config"]["Labels"] == {"tier": "web", "x y": ""}
    assert fields["HostConfig"]["Memory"] == 64 << 20 and fields["HostConfig"]["NanoCpus"] == 500_000_000
    assert fields["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert fields["Mounts"][0]["Destination"] == "/data" and fields["Mounts"][0]["RW"] is False


@pytest.mark.parametrize(("text", "expected"), [
    ('image = "busybox"\nstop_signal = 2\n', "web.toml:2: stop_signal: must be a string, not an integer"),
    ('image = "busybox"\nread_only = "yes"\n', "web.toml:2: read_only: must be true or false"),
    ('image = "busybox"\nulimits = { nofile = "x" }\n', "web.toml:2: ulimits: invalid ulimit 'nofile=x'"),
    ('image = "busybox"\nmounts = ["type=tmpfs,target=/t,source=/x"]\n', "web.toml:2: mounts: invalid mount"),
    ('image = "busybox"\nenv_file = "relative.env"\n', "env_file: 'relative.env': must be an absolute path"),
    ('image = "busybox"\n[limits]\ncpu = 1\n', "web.toml:3: limits.cpu: unknown key"),
])
def test_definition_errors_name_the_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(UsageError) as info:
        config.parse_definition("web", "/etc/pymachine/machines/web.toml", text)
    assert expected in info.value.message


@pytest.mark.parametrize(("item", "message"), [
    ("type=bind,target=/x", "source is required"),
    ("type=volume,source=/abs,target=/x", "a volume's source is a volume name"),
    ("type=tmpfs,target=/x,tmpfs-size=1m,tmpfs-mode=1777", None),
    ("type=bind,source=/a,target=/x,readonly=maybe", "invalid value for readonly"),
    ("target=relative", "must be an absolute path"),
])
def test_mount_syntax(item: str, message: str | None) -> None:
    from machinectl_py.spec import parse_mount

    if message is None:
        assert parse_mount(item) == ("/x", "size=1m,mode=1777")
        return
    with pytest.raises(UsageError, match=message):
        parse_mount(item)


def test_cpu_shares_on_systemds_scale() -> None:
    from machinectl_py.cmd_run import parse

    assert [parse(["--cpu-shares", n, "busybox"]).limits.cpu_weight for n in ("2", "1024", "262144")] == [1, 39, 10000]
    assert parse(["--cpu-weight", "200", "busybox"]).limits.cpu_weight == 200
    with pytest.raises(UsageError, match="must be 2-262144"):
        parse(["--cpu-shares", "1", "busybox"])


def test_help_of_run_lists_every_flag_of_the_table() -> None:
    from machinectl_py.cmd_run import RUN

    text = RUN.help_text()
    for s in settings.SETTINGS:
        if s.option:
            assert s.option.names[0] in text
