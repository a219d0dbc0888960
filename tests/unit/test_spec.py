import pytest

from machinectl_py.errors import UsageError
from machinectl_py.spec import (
    ContainerSpec,
    Volume,
    check_cpus_available,
    generate_name,
    hostname_for,
    parse_count,
    parse_cpus,
    parse_env,
    parse_memory,
    parse_size,
    validate_name,
    validate_user,
)


@pytest.mark.parametrize("name", ["web", "a", "A-b-c.d", "x" * 64, "1.2.3"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "a..b", "x" * 65, "a/b", "a b", "ä", "a:b", "..", "a_b"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid container name"):
        validate_name(name)


@pytest.mark.parametrize(("text", "value"), [
    ("64M", 64 * 1024**2), ("64m", 64 * 1024**2), ("1G", 1024**3), ("1.5G", int(1.5 * 1024**3)),
    ("512k", 512 * 1024), ("100", 100), ("2MiB", 2 * 1024**2), ("1t", 1024**4),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "-1M", "0", "1x", "1.2.3M", "64 M B", "1e3"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text)


def test_memory_floor() -> None:
    with pytest.raises(UsageError, match="minimum"):
        parse_memory("1M")


@pytest.mark.parametrize(("text", "usec"), [("1", 1_000_000), ("0.5", 500_000), ("2", 2_000_000), ("0.001", 10_000)])
def test_parse_cpus(text: str, usec: int) -> None:
    assert parse_cpus(text) == usec


@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan", "inf", "5000"])
def test_parse_cpus_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_cpus(text)


def test_parse_count() -> None:
    assert parse_count("32", "pids limit") == 32
    for bad in ("0", "-3", "1.5", "x"):
        with pytest.raises(UsageError, match="pids limit"):
            parse_count(bad, "pids limit")


def test_parse_env() -> None:
    assert parse_env(["A=1", "B=", "C=x=y"]) == {"A": "1", "B": "", "C": "x=y"}
    for bad in ("A", "=1", "1A=2", "A B=1"):
        with pytest.raises(UsageError):
            parse_env([bad])


def test_generated_names_are_valid_and_skip_names_in_use() -> None:
    names: set[str] = set()
    for _ in range(300):
        names.add(generate_name(names.__contains__))
    assert len(names) == 300
    for n in names:
        validate_name(n)


def test_hostname_defaults_to_name() -> None:
    assert ContainerSpec(name="t1", image="busybox").effective_hostname == "t1"
    assert hostname_for("my_box") == "my-box"
    assert ContainerSpec(name="t1", image="busybox", hostname="h").effective_hostname == "h"


def test_spec_validation() -> None:
    with pytest.raises(UsageError, match="network"):
        ContainerSpec(name="a", image="i", network="bo gus").validate()
    with pytest.raises(UsageError, match="working directory"):
        ContainerSpec(name="a", image="i", workdir="rel").validate()
    with pytest.raises(UsageError, match="volume target"):
        ContainerSpec(name="a", image="i", volumes=(Volume("/"),)).validate()
    with pytest.raises(UsageError, match="hostname"):
        ContainerSpec(name="a", image="i", hostname="-bad").validate()


@pytest.mark.parametrize("user", ["nobody", "1000", "1000:1000", "www-data:www-data"])
def test_validate_user_accepts(user: str) -> None:
    assert validate_user(user) == user


@pytest.mark.parametrize("user", ["", ":", "a:", ":b", "a:b:c", "a b", "a\nb", "x" * 300])
def test_validate_user_rejects(user: str) -> None:
    with pytest.raises(UsageError):
        validate_user(user)


def test_check_cpus_available() -> None:
    check_cpus_available("2", 2)
    check_cpus_available("64", None)  # unknown: not checked
    with pytest.raises(UsageError, match="only 2 CPUs"):
        check_cpus_available("2.01", 2)


@pytest.mark.parametrize("user", ["4294967294", "0:4294967294", "nobody:0"])
def test_validate_user_takes_ids_up_to_the_largest(user: str) -> None:
    assert validate_user(user) == user


@pytest.mark.parametrize("user", ["4294967295", "0:99999999999", "99999999999"])
def test_validate_user_refuses_ids_out_of_range(user: str) -> None:
    with pytest.raises(UsageError, match="invalid user"):
        validate_user(user)


def test_rm_and_restart_conflict() -> None:
    with pytest.raises(UsageError, match="conflicting options: --restart and --rm"):
        ContainerSpec(name="x", image="busybox", remove=True, restart="always").validate()
    assert ContainerSpec(name="x", image="busybox", remove=True).validate().restart == "no"


def test_a_bare_env_key_passes_on_the_callers_value_or_nothing() -> None:
    """docker's -e KEY: the value from the caller's environment; unset there, left out."""
    assert parse_env(["A", "B", "C=3"], {"A": "from-here"}) == {"A": "from-here", "C": "3"}
    with pytest.raises(UsageError):
        parse_env(["A"])  # a definition file: no caller's environment to take it from
    with pytest.raises(UsageError):
        parse_env(["1A"], {"1A": "x"})
