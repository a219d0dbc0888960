import pytest

from machinectl_py.cmd_run import parse as parse_or_help
from machinectl_py.errors import UsageError
from machinectl_py.spec import ContainerSpec


def parse(argv: list[str]) -> ContainerSpec:
    spec = parse_or_help(argv)
    assert spec is not None
    return spec


def test_full_command_line() -> None:
    spec = parse(["--rm", "--name", "t1", "--memory", "64M", "--cpus", "0.5", "--pids-limit", "10",
                  "--network", "private", "-h", "box", "-e", "A=1", "-w", "/tmp",
                  "busybox", "sh", "-c", "echo hi; exit 3"])
    assert spec.name == "t1" and spec.remove and spec.image == "busybox"
    assert spec.command == ("sh", "-c", "echo hi; exit 3")
    assert spec.limits.memory_max == 64 * 1024**2
    assert spec.limits.cpu_quota_usec == 500_000
    assert spec.limits.tasks_max == 10
    assert spec.network == "private" and spec.hostname == "box"
    assert dict(spec.env) == {"A": "1"} and spec.workdir == "/tmp"


def test_options_after_image_belong_to_the_command() -> None:
    spec = parse(["busybox", "ls", "--rm", "-h"])
    assert spec.command == ("ls", "--rm", "-h") and not spec.remove


def test_defaults() -> None:
    spec = parse(["busybox"])
    assert spec.command is None and spec.network == "bridge" and "-" in spec.name


@pytest.mark.parametrize("argv", [
    [], ["--memory", "lots", "busybox"], ["--name", "a/b", "busybox"], ["--network", "bo/gus", "busybox"],
    ["--pids-limit", "0", "busybox"], ["--cpus", "-1", "busybox"], ["--bogus", "busybox"],
])
def test_bad_arguments_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse(argv)


def test_help_is_printed_not_parsed(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_or_help(["--help"]) is None
    out = capsys.readouterr().out
    assert out.startswith("usage: pymachine run") and "--pids-limit N" in out and "exit status" in out


@pytest.mark.parametrize(("argv", "expected"), [
    (["--name=web", "busybox"], "web"), (["-e", "A=1", "-eB=2", "busybox"], None), (["--", "busybox"], None),
])
def test_option_forms(argv: list[str], expected: str | None) -> None:
    spec = parse(argv)
    if expected:
        assert spec.name == expected
    if "-eB=2" in argv:
        assert dict(spec.env) == {"A": "1", "B": "2"}
    assert spec.image == "busybox"


def test_network_modes_or_names_are_checked() -> None:
    with pytest.raises(UsageError, match="invalid network mode 'bo/gus'") as caught:
        parse(["--network=bo/gus", "busybox"])
    assert caught.value.hint == "use bridge, host, none ('private') or a network's name"
    assert parse(["--network=app", "busybox"]).network == "app"  # a user network: it must exist at start


def test_more_cpus_than_the_host_has_is_refused() -> None:
    """docker's rule: a quota above the host's CPUs is never reached, so it is a mistake."""
    import os

    cpus = os.cpu_count() or 1
    assert parse(["--cpus", str(cpus), "busybox"]).limits.cpu_quota_usec == cpus * 1_000_000
    with pytest.raises(UsageError, match=f"this host has only {cpus} CPUs"):
        parse(["--cpus", str(cpus + 0.5), "busybox"])


def test_restart_without_detach_is_refused_before_anything_happens() -> None:
    from machinectl_py.cmd_run import main

    with pytest.raises(UsageError, match="--restart applies to detached containers"):
        main(["--restart", "always", "busybox", "true"])


def test_bare_env_key_comes_from_pymachines_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PM_TEST_PASSED", "yes")
    monkeypatch.delenv("PM_TEST_UNSET", raising=False)
    spec = parse(["-e", "PM_TEST_PASSED", "-e", "PM_TEST_UNSET", "busybox"])
    assert dict(spec.env) == {"PM_TEST_PASSED": "yes"}
