"""A named volume's owner (volumes.owner_of): decided by the first container that mounts it,
recorded in its volume.json, kept by the pool (userns.share) until the volume goes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from machinectl_py import userns, volumes
from machinectl_py.spec import ContainerSpec, Volume

BASE = userns.POOL_START


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYMACHINE_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(userns, "HOST_ID_FILES", ())
    monkeypatch.setattr(userns, "SUBID_FILES", ())
    (tmp_path / "containers" / "first").mkdir(parents=True)
    return tmp_path


def owner_in_meta(state_dir: Path, name: str) -> object:
    return json.loads((state_dir / "volumes" / name / "volume.json").read_text())["owner"]


def test_the_first_container_with_a_range_owns_the_volume(state_dir: Path) -> None:
    data = volumes.ensure_volume("data")
    assert owner_in_meta(state_dir, "data") is None  # undecided until first mounted
    first = userns.acquire("first", 65536)
    assert volumes.owner_of("data", first) == first
    assert owner_in_meta(state_dir, "data") == [BASE, 65536]
    assert (os.stat(data).st_uid, os.stat(data).st_gid) == (BASE, BASE)
    assert userns.claims() == {BASE: ("first", "volume:data")}
    # later containers, with a range of their own or none, find it decided
    assert volumes.owner_of("data", (BASE + 65536, 65536)) == first
    assert volumes.owner_of("data", None) == first
    # the first container's rm leaves the range to the volume; the volume's rm frees it
    userns.release("first")
    assert userns.claims() == {BASE: ("volume:data",)}
    volumes.remove_volume("data")
    assert userns.claims() == {} and volumes.list_volumes() == []


def test_root_owns_a_volume_first_mounted_without_a_range_or_filled_by_hand(state_dir: Path) -> None:
    volumes.ensure_volume("hostmade")
    assert volumes.owner_of("hostmade", None) == volumes.ROOT
    assert volumes.owner_of("hostmade", userns.acquire("first", 65536)) == volumes.ROOT
    assert owner_in_meta(state_dir, "hostmade") == [0, None]
    filled = volumes.ensure_volume("filled")
    (filled / "from-the-host").write_text("x")
    assert volumes.owner_of("filled", (BASE, 65536)) == volumes.ROOT and os.stat(filled).st_uid == 0
    # a volume made before owners existed (no `owner` key): root's, as it was
    old = volumes.ensure_volume("old")
    meta = state_dir / "volumes" / "old" / "volume.json"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "owner"}))
    assert volumes.owner_of("old", (BASE, 65536)) == volumes.ROOT and os.stat(old).st_uid == 0
    assert userns.claims() == {BASE: ("first",)}  # none of them holds the range


def test_idmap_of_a_volume() -> None:
    mine, other, small = (BASE, 65536), (BASE + 65536, 65536), (BASE + 2 * 65536, 1000)
    assert volumes.idmap_of(mine, other) == (BASE, 65536)  # on-disk BASE+N is the container's N
    assert volumes.idmap_of(mine, small) == (BASE, 1000)  # never past the smaller range
    assert volumes.idmap_of((BASE, 1000), other) == (BASE, 1000)
    assert volumes.idmap_of(volumes.ROOT, other) is None  # root's: the container's own mapping
    assert volumes.idmap_of(mine, None) is None  # no user namespace: the host's IDs


def test_bind_ops_carry_the_owners_idmap(state_dir: Path, tmp_path: Path) -> None:
    spec = ContainerSpec(name="first", image="busybox",
                         volumes=(Volume("/data", "data"), Volume("/host", str(tmp_path)))).validate()
    first = userns.acquire("first", 65536)
    assert [op.ids for op in volumes.bind_ops(spec, first)] == [(BASE, 65536), None]
    assert [op.ids for op in volumes.bind_ops(spec, None)] == [None, None]


def test_gc_frees_a_hold_the_volume_was_not_recorded_to_own(state_dir: Path) -> None:
    """A kill -9 between userns.share and the record of the owner in owner_of."""
    volumes.ensure_volume("cut")
    first = userns.acquire("first", 65536)
    userns.share(userns.volume_holder("cut"), *first)
    assert volumes.free_stale_holds() == [
        f"freed user ID range {BASE}-{BASE + 65535} that volume cut held without owning it "
        "(an interrupted first mount)"]
    assert userns.claims() == {BASE: ("first",)}
    # a recorded owner's hold stays; the next first mount of an undecided volume heals it too
    assert volumes.owner_of("cut", first) == first and volumes.free_stale_holds() == []
    volumes.ensure_volume("cut2")
    userns.share(userns.volume_holder("cut2"), BASE + 65536, 65536)  # a range it never got
    assert volumes.owner_of("cut2", None) == volumes.ROOT
    assert userns.claims() == {BASE: ("first", "volume:cut")}


def test_anonymous_volumes_free_their_range_with_their_container(state_dir: Path) -> None:
    spec = volumes.create_anonymous(ContainerSpec(name="first", image="busybox",
                                                  volumes=(Volume("/cache"),)).validate())
    first = userns.acquire("first", 65536)
    volumes.bind_ops(spec, first)
    userns.release("first")
    assert list(userns.claims().values()) == [(f"volume:{spec.volumes[0].source}",)]
    volumes.remove_anonymous(spec)
    assert userns.claims() == {} and volumes.list_volumes() == []
