"""The OCI config.json translation (machinectl_py.oci.config) and runc's flag parsing, without root."""

from __future__ import annotations

from typing import Any

import pytest

from machinectl_py import plan
from machinectl_py.oci import cli, config, defaults


def spec(**changes: Any) -> dict[str, Any]:
    raw = defaults.default_spec()
    raw["process"]["terminal"] = False
    for dotted, value in changes.items():
        target = raw
        *parents, last = dotted.split("__")
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    return raw


def test_default_spec_translates() -> None:
    cfg = config.parse(spec(), "/b", "c1")
    assert cfg.args == ("sh",) and cfg.rootfs == "/b/rootfs" and cfg.readonly_root
    assert cfg.user == "0:0" and cfg.no_new_privs and cfg.private_network and cfg.join_namespaces == ()
    assert cfg.unit == "machine-c1.scope" and cfg.slice == "machine.slice"
    assert cfg.capability_mask == (1 << 29) | (1 << 5) | (1 << 10)  # AUDIT_WRITE, KILL, NET_BIND_SERVICE
    assert cfg.rlimits == ((7, 1024, 1024),)
    assert plan.Mount("/proc", "proc", "proc", 0, None) in cfg.ops
    assert plan.DeviceNode("/dev/null", 1, 3) in cfg.ops, "the spec's default devices on /dev"
    assert plan.Mask("/proc/kcore") in cfg.ops and plan.ReadOnly("/proc/sys") in cfg.ops
    assert not any(isinstance(op, plan.CgroupMount) for op in cfg.ops), "the init mounts its cgroup view itself"


def test_resources_become_unit_properties() -> None:
    resources = {"memory": {"limit": 64 << 20}, "cpu": {"quota": 50000, "period": 100000, "shares": 1024},
                 "pids": {"limit": 32}, "devices": [{"allow": False, "access": "rwm"},
                                                     {"allow": True, "type": "c", "major": 10, "minor": 200,
                                                      "access": "rwm"}]}
    props = dict(config.parse(spec(linux__resources=resources), "/b", "c1").properties)
    assert props["MemoryMax"] == ("t", 64 << 20)
    assert props["CPUQuotaPerSecUSec"] == ("t", 500000)
    assert props["TasksMax"] == ("t", 32)
    assert props["CPUWeight"][1] == 1 + (1022 * 9999) // 262142
    assert props["DevicePolicy"] == ("s", "closed") and ("/dev/char/10:200", "rwm") in props["DeviceAllow"][1]


def test_cgroups_path_systemd_form() -> None:
    cfg = config.parse(spec(linux__cgroupsPath="kubepods.slice:cri-containerd:abc"), "/b", "abc")
    assert (cfg.slice, cfg.unit) == ("kubepods.slice", "cri-containerd-abc.scope")
    assert config.cgroup_unit("/default/x-y", "x-y") == ("machine.slice", "machine-x\\x2dy.scope")


def test_network_namespace_path_is_joined() -> None:
    namespaces = [{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/var/run/netns/pod"},
                  {"type": "ipc", "path": "/proc/9/ns/ipc"}, {"type": "uts", "path": "/proc/9/ns/uts"}]
    cfg = config.parse(spec(linux__namespaces=namespaces, hostname=""), "/b", "c1")
    assert cfg.private_network is False
    assert cfg.join_namespaces == (("network", "/var/run/netns/pod"), ("ipc", "/proc/9/ns/ipc"),
                                   ("uts", "/proc/9/ns/uts"))
    with pytest.raises(config.OciConfigError, match="hostname"):
        config.parse(spec(linux__namespaces=namespaces), "/b", "c1")  # runc's spec sets one


USERNS = [{"type": "pid"}, {"type": "mount"}, {"type": "user"}]
ONE_RANGE = [{"containerID": 0, "hostID": 100000, "size": 65536}]


@pytest.mark.parametrize(("changes", "field"), [
    ({"hooks": {"prestart": [{"path": "true"}]}}, "hooks.prestart[0].path"),
    ({"hooks": {"postcreate": [{"path": "/bin/true"}]}}, "hooks.postcreate"),
    ({"hooks": {"poststop": [{"path": "/bin/true", "timeout": 0}]}}, r"hooks.poststop[0].timeout"),
    ({"linux__uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}, "linux.uidMappings"),
    ({"linux__namespaces": USERNS}, "linux.uidMappings"),
    ({"linux__namespaces": USERNS, "linux__uidMappings": ONE_RANGE,
      "linux__gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}, "linux.gidMappings"),
    ({"linux__namespaces": USERNS, "linux__uidMappings": [*ONE_RANGE, *ONE_RANGE], "linux__gidMappings": ONE_RANGE},
     "linux.uidMappings"),
    ({"linux__namespaces": [*USERNS[:2], {"type": "user", "path": "/proc/1/ns/user"}]}, "linux.namespaces"),
    ({"linux__seccomp": {"defaultAction": "SCMP_ACT_NOTIFY"}}, "linux.seccomp"),
    ({"linux__seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}},
     "linux.seccomp.flags"),
    ({"linux__seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"}},
     "linux.seccomp.listenerPath"),
    ({"linux__sysctl": {"kernel.panic": "1"}}, "linux.sysctl"),
    ({"linux__sysctl": {"net.ipv4.ip_forward": "1"}, "linux__namespaces": [{"type": "pid"}, {"type": "mount"}]},
     "linux.sysctl"),
    ({"linux__namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "time"}]}, "linux.namespaces"),
    ({"linux__intelRdt": {}}, "linux.intelRdt"),
    ({"domainname": "example"}, "domainname"),
    ({"linux__rootfsPropagation": "rslave"}, "linux.rootfsPropagation"),
    ({"process__user__umask": 0o077}, "process.user.umask"),
    ({"process__args": []}, "process.args"),
    ({"process__cwd": "relative"}, "process.cwd"),
    ({"mounts": [{"destination": "/x", "type": "nfs", "source": "h:/"}]}, "mounts[0].type"),
    ({"linux__resources": {"memory": {"kernel": 1}}}, "linux.resources.memory.kernel"),
])
def test_unsupported_fields_are_errors_naming_them(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(config.OciConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        config.parse(spec(**changes), "/b", "c1")


def test_ids_and_machine_names() -> None:
    config.check_id("abc-1.2_3")
    for bad in ("", "../x", "a/b", "a b"):
        with pytest.raises(config.OciConfigError):
            config.check_id(bad)
    assert config.machine_name("a" * 70) == "a" * 64


def test_runc_flags() -> None:
    values, rest = cli.parse_flags(["--root", "/r", "--log=/l", "--systemd-cgroup", "create", "-b", "x"],
                                   cli.GLOBAL_FLAGS, {}, True)
    assert values == {"root": "/r", "log": "/l", "systemd-cgroup": True} and rest == ["create", "-b", "x"]
    flags, aliases, _ = cli.COMMANDS["exec"]
    values, rest = cli.parse_flags(["-d", "--pid-file", "p", "id", "sh", "-c", "x"], flags, aliases, True)
    assert values == {"detach": True, "pid-file": "p"} and rest == ["id", "sh", "-c", "x"]
    with pytest.raises(cli.Usage, match="flag provided but not defined: -nope"):
        cli.parse_flags(["--nope"], flags, aliases, True)


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    assert cli.main(["--root", str(tmp_path), "frobnicate"]) == 1
    assert cli.main(["--root", str(tmp_path), "--log", str(tmp_path / "log"), "--log-format", "json",
                     "state", "nope"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["pymachine-runc: No help topic for 'frobnicate'", "pymachine-runc: container does not exist: nope"]
    assert '"level": "error"' in (tmp_path / "log").read_text()
    assert cli.main(["features"]) == 0 and '"ociVersionMax"' in capsys.readouterr().out


def test_seccomp_sysctl_hooks_and_mappings_translate() -> None:
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}
    hooks = {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "true"], "env": ["A=1"], "timeout": 5}],
             "poststop": [{"path": "/bin/true"}]}
    cfg = config.parse(spec(linux__seccomp=profile, linux__sysctl={"net.ipv4.ip_forward": "1", "kernel.shmmax": "9"},
                            hooks=hooks, linux__namespaces=[*USERNS, {"type": "network"}],
                            linux__uidMappings=ONE_RANGE, linux__gidMappings=ONE_RANGE), "/b", "c1")
    assert cfg.seccomp == profile
    assert set(cfg.sysctls) == {("/proc/sys/net/ipv4/ip_forward", "1"), ("/proc/sys/kernel/shmmax", "9")}
    assert cfg.hooks["createRuntime"] == (config.Hook("/bin/sh", ("sh", "-c", "true"), ("A=1",), 5),)
    assert cfg.hooks["poststop"] == (config.Hook("/bin/true", ("/bin/true",), (), None),), "args default to the path"
    assert cfg.userns == (100000, 65536) and cfg.private_network


def test_exec_process_fields() -> None:
    given = config.parse_process({"args": ["sh"], "noNewPrivileges": False, "user": {"uid": 0, "gid": 0},
                                  "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}]})
    assert (given.no_new_privs, given.rlimits, given.capability_mask, given.groups) == (False, ((7, 10, 20),), -1, None)
    bare = config.parse_process({"args": ["sh"]})
    assert (bare.no_new_privs, bare.rlimits) == (None, None), "not given: the container's own"


def test_index_of_containers_for_ps(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """pymachine-runc's index by machine name: ps finds containers of any --root, with their origin;
    a link whose container is gone is dropped."""
    from machinectl_py import cmd_ps
    from machinectl_py.oci import store

    monkeypatch.setattr(store, "INDEX", str(tmp_path / "index"))
    root = tmp_path / "run" / "containerd" / "runc" / "default"
    for cid in ("a1", "b2"):
        (root / cid).mkdir(parents=True)
        store.save(str(root), cid, {"id": cid, "machine": cid, "pid": 1, "starttime": "", "bundle": "/b",
                                    "unit": f"machine-{cid}.scope", "args": ["sleep", "1"],
                                    "created": "2026-01-02T03:04:05Z"})
        store.add_to_index(cid, str(root), cid)
    store.remove(str(root), "b2")
    assert [st["id"] for st, _ in store.indexed()] == ["a1"]
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["a1"], "the dangling link is dropped"
    [(st, found_root)] = store.indexed()
    entry = cmd_ps._oci_json(st, found_root, "stopped")
    assert (entry["status"], entry["origin"], entry["Command"]) == ("exited", "oci", "sleep 1")
    assert cmd_ps._oci_json(st, "/run/containerd/runc/k8s.io", "running")["origin"] == "oci/containerd"
    store.remove_from_index("a1", str(tmp_path / "elsewhere"), "a1")
    assert (tmp_path / "index" / "a1").is_symlink(), "only the link to that very container is removed"
    store.remove_from_index("a1", str(root), "a1")
    assert store.indexed() == []
