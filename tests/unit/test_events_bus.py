"""`events`' live part: systemd's and machined's signals -> docker's actions, merged with
pymachine's own records so that each event is shown once."""

from __future__ import annotations

from machinectl_py.cmd_events import SIGNAL_GRACE, Merger, UnitWatch, container_of_unit, system_event, unit_of_path
from machinectl_py.systemd import unit_object_path

UNIT = "org.freedesktop.systemd1.Unit"
SERVICE = "org.freedesktop.systemd1.Service"
SYSTEMD = {"source": "systemd"}


def test_unit_names_and_paths() -> None:
    for unit in ("pymachine@web-1.service", "machine-a_b.scope", "pymachine@x.y.service"):
        assert unit_of_path(unit_object_path(unit)) == unit
    assert container_of_unit("pymachine@web.service") == "web"
    assert container_of_unit("machine-my\\x2dbox.scope") == "my-box"
    assert container_of_unit("sshd.service") is None and container_of_unit("pymachine@.service") is None


def test_a_services_start_exit_status_and_oom() -> None:
    watch = UnitWatch()
    path = unit_object_path("pymachine@web.service")
    assert watch.on_signal(path, "PropertiesChanged", [UNIT, {"ActiveState": "activating"}, []]) == []
    started = watch.on_signal(path, "PropertiesChanged", [UNIT, {"ActiveState": "active"}, []])
    assert started == [("web", "start", SYSTEMD)]
    assert watch.on_signal(path, "PropertiesChanged", [UNIT, {"ActiveState": "active"}, []]) == []
    watch.on_signal(path, "PropertiesChanged", [SERVICE, {"ExecMainCode": 2, "ExecMainStatus": 9}, []])
    assert watch.on_signal(path, "PropertiesChanged", [UNIT, {"ActiveState": "deactivating"}, []]) == \
        [("web", "die", SYSTEMD)]
    assert watch.exit_code("pymachine@web.service") == "137"  # killed by SIGKILL, as docker counts
    assert watch.on_signal(path, "PropertiesChanged", [UNIT, {"ActiveState": "failed"}, []]) == []
    oom = watch.on_signal(path, "PropertiesChanged", [SERVICE, {"Result": "oom-kill"}, []])
    assert oom == [("web", "oom", SYSTEMD)]
    watch.on_signal(path, "PropertiesChanged", [SERVICE, {"ExecMainCode": 1, "ExecMainStatus": 3}, []])
    assert watch.exit_code("pymachine@web.service") == "3"
    other = unit_object_path("cron.service")
    assert watch.on_signal(other, "PropertiesChanged", [UNIT, {"ActiveState": "active"}, []]) == []
    removed = watch.on_signal("/org/freedesktop/machine1", "MachineRemoved", ["web", "/m"])
    assert removed == [("web", "die", {"source": "machined"})]


def test_each_event_once_and_pymachines_record_first() -> None:
    merger = Merger()
    merger.add("web", "start", {}, 100.0)
    merger.add("web", "start", {}, 100.1)  # machined's MachineNew after the unit's start
    merger.record_seen("web", "start", 100.5)  # pymachine's own record came: the bus's is dropped
    assert merger.due(100.0 + SIGNAL_GRACE + 1) == []
    merger.add("web", "start", {}, 101.0)  # around the record just seen
    merger.add("web", "die", {"exitCode": "1"}, 102.0)
    assert merger.due(102.0) == []
    assert merger.due(102.0 + SIGNAL_GRACE) == [(102.0, "web", "die", {"exitCode": "1"})]
    merger.add("web", "die", {}, 102.5)  # the journal's message of what the bus said: shown already
    merger.add("web", "start", {}, 500.0)  # a later start of its own
    assert [p[2] for p in merger.due(600.0)] == ["start"]


def test_journal_messages_of_machined_and_systemd() -> None:
    start = {"MESSAGE_ID": "24d8d4452573402496068381a6312df2", "NAME": "web", "__REALTIME_TIMESTAMP": "5000000"}
    assert system_event(start) == ("web", "start", {"source": "machined"}, 5.0)
    oom = {"MESSAGE_ID": "fe6faa94e7774663a0da52717891d8ef", "UNIT": "pymachine@web.service",
           "__REALTIME_TIMESTAMP": "6000000"}
    assert system_event(oom) == ("web", "oom", {"source": "systemd"}, 6.0)
    assert system_event({**oom, "UNIT": "cron.service"}) is None
    assert system_event({"MESSAGE_ID": "00", "NAME": "web"}) is None


def test_only_container_units_signals_are_read() -> None:
    from machinectl_py.cmd_events import _container_path

    assert _container_path(unit_object_path("pymachine@web.service"))
    assert _container_path(unit_object_path("machine-web.scope")) and _container_path("/org/freedesktop/machine1")
    assert not _container_path(unit_object_path("cron.service"))


def test_a_replayed_services_death_has_its_exit_code() -> None:
    """systemd's "Main process exited, code=..., status=..." (the journal's, as systemd 252
    writes it) gives a replayed die its exit code, also when machined's "terminated" came first."""
    exited = {"MESSAGE_ID": "98e322203f7a4ed290d09fe03c09fe15", "UNIT": "pymachine@web.service",
              "EXIT_CODE": "exited", "EXIT_STATUS": "3", "__REALTIME_TIMESTAMP": "7000000"}
    assert system_event(exited) == ("web", "die", {"source": "systemd", "exitCode": "3"}, 7.0)
    killed = {**exited, "EXIT_CODE": "killed", "EXIT_STATUS": "9"}
    assert system_event(killed) == ("web", "die", {"source": "systemd", "exitCode": "137"}, 7.0)
    merger = Merger()
    merger.add("web", "die", {"source": "machined"}, 7.1)
    merger.add("web", "die", {"source": "systemd", "exitCode": "3"}, 7.0)
    assert merger.due(100.0) == [(7.1, "web", "die", {"source": "machined", "exitCode": "3"})]
