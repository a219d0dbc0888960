"""Pure builders of D-Bus payloads and journal entries."""

import os
import struct

import pytest

from machinectl_py.bus import split_signature
from machinectl_py.errors import UsageError
from machinectl_py.journal import MAX_LINE, LineSplitter, container_fields, encode_field, entry
from machinectl_py.machined import machine_id_bytes
from machinectl_py.policy import load_policy, parse_policy
from machinectl_py.spec import ContainerSpec, Limits
from machinectl_py.systemd import scope_properties, setting_properties


def _spec(limits: Limits | None = None, **fields: object) -> ContainerSpec:
    return ContainerSpec(name="web", image="busybox", limits=limits or Limits(), **fields)


def test_limit_properties() -> None:
    assert setting_properties(_spec(), scope=True) == []
    assert setting_properties(_spec(Limits(64 << 20, 500_000, 32)), scope=True) == [
        ("MemoryMax", ("t", 64 << 20)), ("CPUQuotaPerSecUSec", ("t", 500_000)), ("TasksMax", ("t", 32))]


def test_stop_signal_and_timeout_reach_the_scope_and_ulimits_only_the_service() -> None:
    spec = _spec(stop_signal="SIGINT", stop_timeout=3, ulimits={"nofile": (1024, 2048)})
    scope = dict(scope_properties(spec, (), (41,)))
    assert scope["KillSignal"] == ("i", 2)
    assert scope["TimeoutStopUSec"] == ("t", 3_000_000)
    assert "LimitNOFILE" not in scope
    service = dict(setting_properties(spec, scope=False))
    assert service["LimitNOFILE"] == ("t", 2048) and service["LimitNOFILESoft"] == ("t", 1024)
    assert service["Restart"] == ("s", "no")


def test_scope_properties() -> None:
    props = dict(scope_properties(_spec(Limits(memory_max=1 << 30)), (("/dev/tty", "rwm"),), (41, 42)))
    assert props["Slice"] == ("s", "machine.slice")
    assert props["PIDs"] == ("au", [41, 42])
    assert props["Delegate"] == ("b", True)
    assert props["TasksMax"] == ("t", 16384)  # machined's CreateMachine default
    assert props["MemoryMax"] == ("t", 1 << 30)
    assert props["DevicePolicy"] == ("s", "closed")
    assert props["DeviceAllow"] == ("a(ss)", [("/dev/tty", "rwm")])
    assert props["CollectMode"] == ("s", "inactive-or-failed")
    limited = scope_properties(_spec(Limits(tasks_max=32)), (), (41,))
    assert [v for k, v in limited if k == "TasksMax"] == [("t", 32)]


def test_delegation_on_hosts_with_v1_hierarchies_names_the_controllers_in_use() -> None:
    """Pure v2: every controller (the container's cgroup2 is writable). With v1 hierarchies,
    which the container sees read-only: only what its settings use, so that systemd does not
    realize cpu or blkio for the whole tree at each start and stop."""
    v2 = dict(scope_properties(_spec(), (), (41,), unified_host=True))
    assert v2["Delegate"] == ("b", True) and "DelegateControllers" not in v2
    v1 = dict(scope_properties(_spec(), (), (41,), unified_host=False))
    assert "Delegate" not in v1
    assert v1["DelegateControllers"] == ("as", ["memory", "pids", "devices"])
    with_cpu = dict(scope_properties(_spec(Limits(cpu_quota_usec=500_000)), (), (41,), unified_host=False))
    assert with_cpu["DelegateControllers"] == ("as", ["memory", "pids", "devices", "cpu"])


def test_split_signature() -> None:
    assert split_signature("sayssusa(sv)") == ["s", "ay", "s", "s", "u", "s", "a(sv)"]
    assert split_signature("a{sa(sv)}(ii)") == ["a{sa(sv)}", "(ii)"]
    with pytest.raises(ValueError):
        split_signature("(ss")


def test_machine_id_is_16_bytes() -> None:
    assert len(machine_id_bytes("ab" * 32)) == 16


def test_journal_encoding() -> None:
    assert encode_field("MESSAGE", b"hi") == b"MESSAGE=hi\n"
    multi = encode_field("MESSAGE", b"a\nb")
    assert multi == b"MESSAGE\n" + struct.pack("<Q", 3) + b"a\nb\n"
    common = container_fields("web", "0123456789abcdef" * 4, "busybox:latest")
    assert b"CONTAINER_NAME=web\n" in common and b"CONTAINER_ID=0123456789ab\n" in common
    assert b"SYSLOG_IDENTIFIER=web\n" in common and b"IMAGE_NAME=busybox:latest\n" in common
    assert entry(common, b"oops", 3).endswith(b"PRIORITY=3\nMESSAGE=oops\n")


def test_line_splitter() -> None:
    s = LineSplitter()
    assert s.feed(b"a\nb") == [b"a"]
    assert s.feed(b"c\n\nd") == [b"bc", b""]
    assert s.flush() == [b"d"]
    assert s.flush() == []
    long = s.feed(b"x" * (MAX_LINE * 2 + 5))
    assert long == [b"x" * MAX_LINE] * 2 and s.flush() == [b"xxxxx"]


def test_default_policy_is_docker_like() -> None:
    policy = load_policy()
    assert "SYS_ADMIN" not in policy.capabilities and "CHOWN" in policy.capabilities
    assert len(policy.capabilities) == 14
    assert "/proc/kcore" in policy.masked_paths and "/proc/sys" in policy.readonly_paths
    assert policy.capability_mask & (1 << 21) == 0


def test_policy_rejects_bad_input() -> None:
    cases: list[tuple[dict[str, object], str]] = [
                     ({"capabilities": ["NOPE"]}, "unknown capability"), ({"foo": 1}, "unknown key"),
                     ({"masked_paths": ["relative"]}, "absolute"), ({"masked_paths": ["/a/../b"]}, "absolute"),
                     ({"device_allow": [["/dev/x"]]}, "pairs")]
    for raw, msg in cases:
        with pytest.raises(UsageError, match=msg):
            parse_policy(raw, "test.toml")


def test_dump_json_matches_the_json_module() -> None:
    import json

    from machinectl_py.state import dump_json

    value = {"a": [1, 2.5, None, True, False], "s": 'q"uo\\te\n\t\x01 ünï', "n": {"x": ()}, "big": 2**70}
    assert json.loads(dump_json(value)) == json.loads(json.dumps(value))
    with pytest.raises(TypeError):
        dump_json({"x": object()})


def test_in_unit_cgroup_reads_proc() -> None:
    from machinectl_py.launch import in_unit_cgroup

    with open("/proc/self/cgroup") as f:
        own = f.readline().rstrip("\n").split(":", 2)[2].rsplit("/", 1)[-1]
    if own:  # a cgroup with a name (not the root): we are in it
        assert in_unit_cgroup(os.getpid(), own)
    assert not in_unit_cgroup(os.getpid(), "machine-no-such-container.scope")
    assert not in_unit_cgroup(2**22 + 7, own or "x.scope")  # no such process
