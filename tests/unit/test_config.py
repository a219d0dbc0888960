"""Container definitions (TOML): parsing, errors that name file, key and line, and round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from machinectl_py import config
from machinectl_py.errors import PymachineError, UsageError
from machinectl_py.spec import ContainerSpec, Limits, Volume

PATH = Path("/etc/pymachine/machines/web.toml")


def parse(text: str, name: str = "web") -> ContainerSpec:
    return config.parse_definition(name, PATH, text)


def test_full_definition() -> None:
    spec = parse('''
image = "busybox"
command = ["httpd", "-f", "-p", "8080"]
env = { GREETING = "hello", N = 3 }
workdir = "/www"
hostname = "webhost"
network = "private"
restart = "on-failure"
volumes = ["/srv:/www:ro", "data:/data", "/cache"]

[limits]
memory = "64M"
cpus = 0.5
pids = 64
''')
    assert spec.name == "web" and spec.image == "busybox"
    assert spec.command == ("httpd", "-f", "-p", "8080")
    assert dict(spec.env) == {"GREETING": "hello", "N": "3"}
    assert (spec.workdir, spec.hostname, spec.network, spec.restart) == ("/www", "webhost", "private", "on-failure")
    assert spec.volumes == (Volume("/www", "/srv", True), Volume("/data", "data", False), Volume("/cache", None, False))
    assert spec.limits == Limits(memory_max=64 * 1024**2, cpu_quota_usec=500_000, tasks_max=64)


def test_minimal_definition_and_string_command() -> None:
    spec = parse('image = "busybox"\ncommand = "echo hi && sleep 1"\n')
    assert spec.command == ("/bin/sh", "-c", "echo hi && sleep 1")
    assert spec.restart == "no" and spec.network == "bridge" and spec.volumes == ()


@pytest.mark.parametrize(("text", "expected"), [
    ('image = "busybox"\n\nbogus = 1\n', f"{PATH}:3: bogus: unknown key"),
    ('image = "busybox"\n[limits]\nmemory = "1K"\n', f"{PATH}:3: limits.memory: invalid memory limit"),
    ('image = "busybox"\n[limits]\ncpus = "lots"\n', f"{PATH}:3: limits.cpus: invalid CPU count"),
    ('image = "busybox"\n[limits]\nswap = 1\n', f"{PATH}:3: limits.swap: unknown key"),
    ('image = "busybox"\nrestart = "sometimes"\n', f"{PATH}:2: restart: invalid restart policy"),
    ('image = "busybox"\nnetwork = "bo/gus"\n', f"{PATH}:2: network: invalid network mode"),
    ('image = "busybox"\ncommand = []\n', f"{PATH}:2: command: must be a non-empty list"),
    ('image = "busybox"\nvolumes = ["relative:path"]\n', f"{PATH}:2: volumes: invalid volume"),
    ('image = "busybox"\nenv = { "1BAD" = "x" }\n', f"{PATH}:2: env: invalid environment variable"),
    ('image = 5\n', f"{PATH}:1: image: must be a string"),
    ('command = ["true"]\n', f"{PATH}: image: missing"),
    ('image = "busybox\n', f"{PATH}: not valid TOML"),
    ('image = "busybox"\nuser = "a:b:c"\n', f"{PATH}:2: user: invalid user"),
])
def test_errors_name_file_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(UsageError) as info:
        parse(text)
    assert info.value.message.startswith(expected), info.value.message


def test_render_round_trips() -> None:
    spec = ContainerSpec(
        name="web", image="busybox", command=("sh", "-c", 'echo "quoted" \\ back\nslash'),
        env={"A": "1", "WEIRD": "x=y \"z\""}, workdir="/w", user="www-data:33", hostname="h", network="private",
        restart="always",
        volumes=(Volume("/data", "data"), Volume("/ro", "/srv/ro", True)),
        limits=Limits(memory_max=64 * 1024**2, cpu_quota_usec=250_000, tasks_max=7),
    ).validate()
    text = config.render_definition(spec)
    assert parse(text) == spec


def test_kept_connections_round_trip() -> None:
    spec = ContainerSpec(name="web", image="busybox", connections=("app,ip=10.0.0.9,alias=www", "db")).validate()
    text = config.render_definition(spec)
    assert 'connections = ["app,ip=10.0.0.9,alias=www", "db"]' in text
    assert parse(text) == spec


def test_write_definition_is_exclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYMACHINE_CONFIG_DIR", str(tmp_path))
    spec = ContainerSpec(name="web", image="busybox").validate()
    path = config.write_definition(spec)
    assert path == str(tmp_path / "machines" / "web.toml")
    assert config.load_definition("web") == spec
    with pytest.raises(PymachineError, match="exists already"):
        config.write_definition(spec)
    assert sorted(p.name for p in (tmp_path / "machines").iterdir()) == ["web.toml"]  # no temporary file left


def test_definition_path_refuses_bad_names() -> None:
    with pytest.raises(UsageError):
        config.definition_path("../etc/passwd")
