"""`pymachine events`: start, die with its exit code, update..., replayed with --since and
followed live, docker's fields."""

from __future__ import annotations

import json

import pytest
from helpers import AnyHost, pm, read_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_leftovers")]


def events(host: AnyHost, *args: str) -> list[dict[str, object]]:
    r = pm(host, "events", "--since", "5m", "--until", "0s", "--format", "json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_events_replayed_since_a_time(host: AnyHost) -> None:
    assert pm(host, "run", "--rm", "--name", "ev1", "busybox", "sh", "-c", "exit 3").returncode == 3
    assert pm(host, "run", "-d", "--name", "ev2", "busybox", "sleep", "300").returncode == 0
    try:
        assert pm(host, "update", "ev2", "--memory", "96M").returncode == 0
    finally:
        pm(host, "rm", "-f", "ev2")
    mine = [e for e in events(host) if e["Actor"]["Attributes"]["name"] in ("ev1", "ev2")]  # type: ignore[index]
    seen = [(e["Actor"]["Attributes"]["name"], e["Action"]) for e in mine]  # type: ignore[index]
    assert seen[:2] == [("ev1", "start"), ("ev1", "die")]
    assert [s for s in seen if s[0] == "ev2"][:3] == [("ev2", "create"), ("ev2", "start"), ("ev2", "update")]
    assert ("ev2", "destroy") in seen
    die = next(e for e in mine if e["Action"] == "die")
    assert die["Actor"]["Attributes"]["exitCode"] == "3" and die["Type"] == "container"  # type: ignore[index]
    only = events(host, "--filter", "container=ev1", "--filter", "event=die")
    assert [e["Action"] for e in only] == ["die"]
    text = pm(host, "events", "--since", "5m", "--until", "0s", "--filter", "container=ev1").stdout
    assert " container die " in text and "exitCode=3" in text and "name=ev1" in text


def test_events_followed_live(host: AnyHost) -> None:
    proc = host.popen(["pymachine", "events", "--filter", "container=ev3"])
    try:
        # journalctl is following once an event of another container would be read: run until one shows.
        for _ in range(20):
            assert pm(host, "run", "--rm", "--name", "ev3", "busybox", "sh", "-c", "exit 5").returncode == 5
            try:
                out = read_until(proc, "exitCode=5", timeout=5)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("no live die event")
        assert " container start " in out or " container die " in out
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_events_from_systemd_and_machined(host: AnyHost) -> None:
    """A `run` killed with SIGKILL cannot record its container's end: systemd's and machined's
    signals say it (live), machined's journal message (replayed); what pymachine records itself
    is shown once."""
    proc = host.popen(["pymachine", "events", "--format", "json", "--filter", "container=ev4",
                       "--filter", "container=ev4p"])
    try:
        for _ in range(20):  # following once a probe's own record shows
            assert pm(host, "run", "--rm", "--name", "ev4p", "busybox", "true").returncode == 0
            try:
                read_until(proc, '"ev4p"', timeout=5)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("events did not follow")
        run = host.popen(["pymachine", "run", "--name", "ev4", "busybox", "sleep", "300"])
        out = read_until(proc, '"name": "ev4"', timeout=60)
        run.kill()
        run.communicate(timeout=30)
        out += read_until(proc, '"source": ', timeout=60)
        died = [e for e in map(json.loads, out.splitlines()) if e["Actor"]["Attributes"]["name"] == "ev4"]
        assert [e["Action"] for e in died] == ["start", "die"]
        assert "source" not in died[0]["Actor"]["Attributes"]
        assert died[1]["Actor"]["Attributes"]["source"] in ("systemd", "machined")
        # Replayed: machined's journal message says it, once.
        replayed = [(e["Action"], e["Actor"]["Attributes"].get("source"))  # type: ignore[index]
                    for e in events(host, "--filter", "container=ev4")]
        assert replayed == [("start", None), ("die", "machined")]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        pm(host, "rm", "-f", "ev4")


def test_bad_event_arguments(host: AnyHost) -> None:
    for args, error in ((["--since", "yesterday-ish"], "invalid time"), (["--filter", "color=red"], "invalid filter")):
        r = pm(host, "events", *args)
        assert r.returncode == 125 and error in r.stderr
