"""The pool of UID/GID ranges (userns.py), the --userns values, the tmpfs ownership in the plan."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from machinectl_py import plan, settings, userns
from machinectl_py.errors import UsageError
from machinectl_py.spec import ContainerSpec, parse_userns


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(tmp_path))
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/sh\n")
    group = tmp_path / "group"
    group.write_text("root:x:0:\n")
    monkeypatch.setattr(userns, "HOST_ID_FILES", ((str(passwd), (2, 3)), (str(group), (2,))))
    monkeypatch.setattr(userns, "SUBID_FILES", (str(tmp_path / "subuid"), str(tmp_path / "subgid")))
    return tmp_path


def make_container_dir(state_dir: Path, name: str) -> None:
    (state_dir / "containers" / name).mkdir(parents=True, exist_ok=True)


def test_userns_values() -> None:
    assert parse_userns("auto") == "auto" and parse_userns("host") == "host"
    assert parse_userns("auto:size=1000") == "auto:size=1000"
    for bad in ("", "keep-id", "auto:size=0", "auto:size=x", "auto:uid=5", "auto:size=99999999999"):
        with pytest.raises(UsageError, match="invalid --userns value"):
            parse_userns(bad)
    assert userns.size_of("host") is None and userns.size_of("auto") == 65536
    assert userns.size_of("auto:size=70000") == 70000


def test_default_mode_and_inspect(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ContainerSpec(name="a", image="busybox")
    monkeypatch.delenv(userns.DEFAULT_ENV, raising=False)
    assert settings.inspect_fields(spec)["HostConfig"]["UsernsMode"] == userns.DEFAULT_MODE
    monkeypatch.setenv(userns.DEFAULT_ENV, "host")
    assert settings.inspect_fields(spec)["HostConfig"]["UsernsMode"] == "host"
    assert settings.inspect_fields(spec.replace(userns="auto"))["HostConfig"]["UsernsMode"] == "auto"


def test_ranges_are_distinct_reused_and_freed(state_dir: Path) -> None:
    for name in ("a", "b"):
        make_container_dir(state_dir, name)
    a = userns.acquire("a", 65536)
    b = userns.acquire("b", 65536)
    assert a == (userns.POOL_START, 65536) and b == (userns.POOL_START + 65536, 65536)
    assert userns.acquire("a", 65536, previous=a) == a  # a restart keeps its range
    userns.release("a")
    assert userns.claims() == {b[0]: ("b",)}
    # a bigger range takes consecutive slots
    big = userns.acquire("a", 65536 * 2 + 1)
    assert big[0] == userns.POOL_START + 2 * 65536 and len(userns.claims()) == 4
    assert userns.for_container("a", "host", big) is None and len(userns.claims()) == 1


def test_host_users_and_subordinate_ranges_are_never_given(state_dir: Path) -> None:
    make_container_dir(state_dir, "a")
    with open(userns.HOST_ID_FILES[0][0], "a") as f:
        f.write(f"odd:x:{userns.POOL_START + 5}:100::/:/bin/sh\n")
    (state_dir / "subgid").write_text(f"someone:{userns.POOL_START + 65536}:65536\n")
    assert userns.acquire("a", 65536)[0] == userns.POOL_START + 2 * 65536


def _acquire(name: str) -> int:
    return userns.acquire(name, 65536)[0]


def test_concurrent_starts_get_distinct_ranges(state_dir: Path) -> None:
    names = [f"c{i}" for i in range(20)]
    for name in names:
        make_container_dir(state_dir, name)
    with multiprocessing.get_context("fork").Pool(20) as pool:
        bases = pool.map(_acquire, names)
    assert len(set(bases)) == 20
    assert sorted(h for holders in userns.claims().values() for h in holders) == sorted(names)


def test_gc_frees_the_ranges_of_removed_containers(state_dir: Path) -> None:
    make_container_dir(state_dir, "alive")
    make_container_dir(state_dir, "killed")
    userns.acquire("alive", 65536)
    base = userns.acquire("killed", 65536)[0]
    os.rmdir(state_dir / "containers" / "killed")  # a `kill -9` after the directory went
    assert userns.free_orphans() == [f"freed user ID range {base}-{base + 65535} of removed container killed"]
    assert list(userns.claims().values()) == [("alive",)]


def test_a_volume_keeps_the_range_it_shares_claimed_until_it_goes_too(state_dir: Path) -> None:
    """A volume owned by a container's range (volumes.owner_of) holds it with the container:
    the container's rm leaves it claimed, so no new container gets the volume owner's IDs."""
    make_container_dir(state_dir, "first")
    make_container_dir(state_dir, "next")
    base, size = userns.acquire("first", 65536 * 2)  # two slots
    userns.share(userns.volume_holder("data"), base, size)
    userns.share(userns.volume_holder("data"), base, size)  # idempotent
    assert (state_dir / "userns" / str(base)).read_text() == "first\nvolume:data\n"
    userns.release("first")
    assert userns.claims() == {base: ("volume:data",), base + 65536: ("volume:data",)}
    assert userns.acquire("next", 65536)[0] == base + 2 * 65536
    # the volume's directory gone (a kill -9 in `volume rm`): gc frees its hold
    assert userns.free_orphans() == [f"freed user ID range {s}-{s + 65535} of removed volume data"
                                     for s in (base, base + 65536)]
    assert list(userns.claims().values()) == [("next",)]
    assert userns.holds("next", base + 2 * 65536, 65536) and not userns.holds("first", base, 65536)


def test_volume_idmap_line() -> None:
    assert userns.map_line(1879048192, 65536) == "0 1879048192 65536"
    assert userns.map_line(1879113728, 1000, first=1879048192) == "1879048192 1879113728 1000"


def test_tmpfs_and_devpts_belong_to_the_range() -> None:
    ops = [plan.Mount("/run", "tmpfs", "tmpfs", 0, "mode=755"), plan.Mount("/tmp", "tmpfs", "tmpfs", 0, None),
           plan.Mount("/dev/pts", "devpts", "devpts", 0, "newinstance,gid=5"), plan.Mount("/proc", "proc", "proc")]
    owned = plan.owned_by_range(ops, 1000000)
    assert [getattr(op, "data", None) for op in owned] == [
        "mode=755,uid=1000000,gid=1000000", "uid=1000000,gid=1000000", "newinstance,gid=1000005", None]
