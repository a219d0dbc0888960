"""docker's plumbing flags, declared in the settings table: each in `run` and in a definition,
shown by `inspect` under docker's field name, and checked with the host's own tools."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest
from helpers import AnyHost, machine_names, pm, wait_until

pytestmark = [pytest.mark.integration]


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def ok(host: AnyHost, *args: str) -> str:
    r = pm(host, *args)
    assert r.returncode == 0, f"pymachine {' '.join(args)}: {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout


def inspect(host: AnyHost, name: str) -> dict[str, object]:
    data = json.loads(ok(host, "inspect", name))
    assert isinstance(data, list)
    item: dict[str, object] = data[0]
    return item


def zombies(host: AnyHost, name: str) -> list[str]:
    out = ok(host, "exec", name, "sh", "-c", "grep -l '^State:.*Z' /proc/[0-9]*/status || true")
    return out.split()


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize("init", [True, False], ids=["init", "no-init"])
def test_init_reaps_an_orphaned_zombie_and_forwards_sigterm(host: AnyHost, init: bool) -> None:
    """The payload execs `sleep`, which never reaps: an orphan of a subshell becomes a zombie
    under PID 1 unless tini is PID 1; and `sleep` as PID 1 ignores SIGTERM, while tini passes it
    on, so the container exits 143 at once instead of being killed (137) after the grace."""
    name = unique("init")
    flags = ["--init"] if init else []
    proc = host.popen(["pymachine", "run", "--rm", "--name", name, *flags, "busybox", "sh", "-c",
                       "(sleep 0.2 &); exec sleep 60"])
    wait_until(lambda: name in machine_names(host), what=f"machine {name}")
    # A zombie has an empty cmdline: wait until no living process runs `sleep 0.2`.
    alive = "for p in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' < $p/cmdline)\" = 'sleep 0.2 ' ] && echo alive; done; true"
    wait_until(lambda: "alive" not in ok(host, "exec", name, "sh", "-c", alive),
               what="the orphan's sleep 0.2 to end", timeout=10)
    comm = ok(host, "exec", name, "cat", "/proc/1/comm").strip()
    if init:
        assert comm.startswith("tini") or comm == "init", comm
        assert zombies(host, name) == []
    else:
        assert comm == "sleep"
        wait_until(lambda: bool(zombies(host, name)), what="a zombie under sleep as PID 1")
    assert pm(host, "stop", "-t", "3", name).returncode == 0
    proc.communicate(timeout=60)
    assert proc.returncode == (143 if init else 137)


@pytest.mark.usefixtures("no_leftovers")
def test_read_only_root_refuses_writes_but_tmp_run_and_volumes_stay_writable(host: AnyHost, tmp_path: Path) -> None:
    data = tmp_path / "rw"
    data.mkdir()
    r = pm(host, "run", "--rm", "--read-only", "-v", f"{data}:/data", "busybox", "sh", "-c",
           "touch /x 2>&1; touch /tmp/y && touch /run/z && touch /dev/shm/w && touch /data/v && echo writable")
    assert r.returncode == 0, r.stderr
    assert "Read-only file system" in r.stdout and "writable" in r.stdout
    assert (data / "v").exists()
    # and without it, / is writable
    assert pm(host, "run", "--rm", "busybox", "touch", "/x").returncode == 0


@pytest.mark.usefixtures("no_leftovers")
def test_ulimit_entrypoint_env_file_tmpfs_mount_and_shm_size_in_run(host: AnyHost, tmp_path: Path) -> None:
    env_file = tmp_path / "web.env"
    env_file.write_text("# a comment\nGREETING=hello from a file\n\nOVERRIDDEN=file\n")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("bound\n")
    r = pm(host, "run", "--rm", "--ulimit", "nofile=1024:2048", "--env-file", str(env_file), "-e", "OVERRIDDEN=flag",
           "--tmpfs", "/scratch:size=1m,mode=1777", "--mount", f"type=bind,source={src},target=/m,readonly",
           "--mount", "type=tmpfs,target=/cache,tmpfs-size=2m", "--shm-size", "8M",
           "--entrypoint", "/bin/sh", "busybox", "-c",
           'grep "Max open files" /proc/1/limits; echo "$GREETING/$OVERRIDDEN"; cat /m/f; '
           "grep -E ' /(scratch|cache|dev/shm) ' /proc/mounts; touch /m/no 2>&1")
    assert r.returncode != 0 or "Read-only" in r.stdout, r.stderr
    out = r.stdout
    assert re.search(r"Max open files\s+1024\s+2048\s+files", out), out
    assert "hello from a file/flag" in out
    assert "bound" in out
    assert re.search(r" /scratch tmpfs \S*size=1024k", out) and re.search(r" /cache tmpfs \S*size=2048k", out), out
    assert re.search(r" /dev/shm tmpfs \S*size=8192k", out), out
    assert "Read-only file system" in out


def test_every_new_flag_in_a_definition_and_inspect(host: AnyHost, cleanup: list[str], tmp_path: Path) -> None:
    """create with the flags -> the definition file holds them -> inspect shows docker's fields;
    a hand-written definition with the same keys reads back the same."""
    name = unique("flags")
    cleanup.append(name)
    ok(host, "create", "--name", name, "--label", "tier=web", "--label", "solo", "--stop-signal", "INT",
       "--stop-timeout", "4", "--read-only", "--tmpfs", "/scratch:size=1m", "--shm-size", "16M", "--init",
       "--ulimit", "nofile=1024:2048", "--cpu-weight", "200", "--entrypoint", "/bin/sh", "busybox", "-c", "sleep 1")
    text = host.run(["cat", f"/etc/pymachine/machines/{name}.toml"], check=True).stdout
    for line in ('labels = { tier = "web", solo = "" }', 'stop_signal = "SIGINT"', "stop_timeout = 4",
                 "read_only = true", 'tmpfs = ["/scratch:size=1m"]', "shm_size = 16777216", "init = true",
                 'ulimits = { nofile = "1024:2048" }', 'entrypoint = ["/bin/sh"]', "cpu_weight = 200"):
        assert line in text, f"{line!r} not in\n{text}"
    ok(host, "start", name)
    data = inspect(host, name)
    config, hostconfig = data["Config"], data["HostConfig"]
    assert isinstance(config, dict) and isinstance(hostconfig, dict)
    assert config["Labels"] == {"tier": "web", "solo": ""}
    assert config["StopSignal"] == "SIGINT" and config["StopTimeout"] == 4
    assert config["Entrypoint"] == ["/bin/sh"] and config["Cmd"] == ["-c", "sleep 1"]
    assert hostconfig["ReadonlyRootfs"] is True and hostconfig["Init"] is True
    assert hostconfig["Tmpfs"] == {"/scratch": "size=1m"} and hostconfig["ShmSize"] == 16 << 20
    assert hostconfig["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
    unit = f"pymachine@{name}.service"
    shown = host.run(["systemctl", "show", unit, "-p", "KillSignal", "-p", "TimeoutStopUSec", "-p", "LimitNOFILE",
                      "-p", "LimitNOFILESoft", "-p", "CPUWeight"], check=True).stdout
    assert "KillSignal=2" in shown and "TimeoutStopUSec=4s" in shown, shown
    assert "LimitNOFILE=2048" in shown and "LimitNOFILESoft=1024" in shown, shown
    assert "CPUWeight=200" in shown and hostconfig["CpuWeight"] == 200, shown
    assert ok(host, "ps", "-a", "--filter", "label=tier=web", "-q").split() == [name]
    assert ok(host, "ps", "-a", "--filter", "label=tier=db", "-q").split() == []
    table = ok(host, "ps", "-a", "--filter", f"name={name}", "--format", "table {{.Names}}\\t{{.Status}}")
    assert table.splitlines()[0].split() == ["NAMES", "STATUS"] and table.splitlines()[1].startswith(name)
    # A hand-written definition with the same keys reads back to the same settings.
    twin = unique("twin")
    cleanup.append(twin)
    host.run(["sh", "-c", f"cat > /etc/pymachine/machines/{twin}.toml"], input=text, check=True)
    twin_data = inspect_defined(host, twin)
    assert twin_data["Config"] == {**config, "Hostname": twin}
    assert twin_data["HostConfig"] == hostconfig


def inspect_defined(host: AnyHost, name: str) -> dict[str, dict[str, object]]:
    """A definition's settings through `create`'s reader: start it once, then inspect."""
    ok(host, "start", name)
    data = inspect(host, name)
    return {"Config": data["Config"], "HostConfig": data["HostConfig"]}  # type: ignore[dict-item]


def test_stop_signal_reaches_a_detached_containers_init(host: AnyHost, cleanup: list[str]) -> None:
    name = unique("sigint")
    cleanup.append(name)
    ok(host, "create", "--name", name, "--stop-signal", "SIGINT", "busybox", "sh", "-c",
       'trap "echo got-INT; exit 0" INT; echo ready; while :; do sleep 0.2; done')
    ok(host, "start", name)
    wait_until(lambda: "ready" in ok(host, "logs", name), what="the container's ready line")
    ok(host, "stop", "-t", "20", name)
    wait_until(lambda: "got-INT" in ok(host, "logs", name), what="the trap's line in the journal")
    assert "exited (0)" in ok(host, "ps", "-a", "--filter", f"name={name}")


@pytest.mark.usefixtures("no_leftovers")
@pytest.mark.parametrize(("args", "message"), [
    (["--ulimit", "nofiles=1"], "unknown resource 'nofiles'"),
    (["--ulimit", "nofile=10:5"], "soft limit is above the hard one"),
    (["--mount", "type=bind,target=/x"], "source is required"),
    (["--mount", "type=nfs,source=a,target=/x"], "type 'nfs'"),
    (["--mount", "source=/tmp,target"], "must be a key=value pair"),
    (["--tmpfs", "/x:uid=0"], "invalid tmpfs option 'uid=0'"),
    (["--stop-signal", "SIGNOPE"], "invalid signal 'SIGNOPE'"),
    (["--stop-timeout", "soon"], "invalid --stop-timeout 'soon'"),
    (["--env-file", "/nonexistent/env"], "cannot read env file '/nonexistent/env'"),
    (["--shm-size", "0"], "invalid --shm-size '0'"),
])
def test_bad_plumbing_flags_give_one_line_and_exit_125(host: AnyHost, args: list[str], message: str) -> None:
    r = pm(host, "run", "--rm", "--name", "bad-flag", *args, "busybox", "true")
    assert r.returncode == 125
    assert message in r.stderr.splitlines()[0], r.stderr
    assert "Traceback" not in r.stderr
    assert host.run(["test", "-e", "/var/lib/pymachine/containers/bad-flag"]).returncode != 0


@pytest.mark.usefixtures("no_leftovers")
def test_generated_names_are_docker_style(host: AnyHost) -> None:
    out = ok(host, "run", "--rm", "busybox", "hostname").strip()
    assert re.fullmatch(r"[a-z]+-[a-z]+[0-9]*", out), out  # docker's adjective_name, with machined's "-"


@pytest.mark.usefixtures("no_leftovers")
def test_format_in_image_ls_and_volume_verbs(host: AnyHost) -> None:
    """One --format renderer in every verb that lists or inspects."""
    ok(host, "run", "--rm", "busybox", "true")  # the built-in image is in the store
    table = ok(host, "image", "ls", "--format", "table {{.Repository}}\\t{{.Tag}}").splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG"] and ["busybox", "latest"] in [r.split() for r in table[1:]]
    name = unique("fmtvol")
    ok(host, "volume", "create", name)
    try:
        assert f"{name} local" in ok(host, "volume", "ls", "--format", "{{.Name}} {{.Driver}}").splitlines()
        assert ok(host, "volume", "inspect", "-f", "{{.Mountpoint}}", name).strip().endswith(f"/{name}/_data")
        r = pm(host, "volume", "inspect", "-f", "{{.Nope}}", name)
        assert r.returncode == 125 and "no field '.Nope'" in r.stderr
    finally:
        ok(host, "volume", "rm", name)
