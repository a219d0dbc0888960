"""events' pure parts: docker's time forms, filters, journal entries to event objects."""

from __future__ import annotations

import pytest

from machinectl_py.cmd_events import event_of, line_of, matches, parse_filters, parse_time
from machinectl_py.errors import UsageError


def test_times() -> None:
    assert parse_time("1m", 1000.0) == 940.0 and parse_time("1h30m", 10_000.0) == 4600.0
    assert parse_time("500ms", 10.0) == 9.5 and parse_time("1700000000", 0) == 1_700_000_000
    assert parse_time("2026-12-06T12:00:00Z", 0) == 1796558400.0
    with pytest.raises(UsageError):
        parse_time("soon", 0)


def test_entry_to_event_and_filters() -> None:
    entry = {"PYMACHINE_EVENT_TYPE": "container", "PYMACHINE_EVENT_ACTION": "die", "PYMACHINE_EVENT_ACTOR": "ab" * 32,
             "PYMACHINE_EVENT_ATTR_NAME": "web", "PYMACHINE_EVENT_ATTR_IMAGE": "busybox",
             "PYMACHINE_EVENT_ATTR_EXITCODE": "3", "__REALTIME_TIMESTAMP": "1796558400000001"}
    event = event_of(entry)
    assert event is not None
    assert event["Actor"]["Attributes"] == {"name": "web", "image": "busybox", "exitCode": "3"}
    assert event["timeNano"] == 1796558400000001000 and event["status"] == "die"
    assert matches(event, parse_filters(["container=web", "event=die", "event=start"]))
    assert matches(event, parse_filters(["container=abab"]))
    assert not matches(event, parse_filters(["type=image"]))
    assert line_of(event, None) == (f"2026-12-06T12:00:00.000001000Z container die {'ab' * 32} "
                                    "(exitCode=3, image=busybox, name=web)")
    with pytest.raises(UsageError):
        parse_filters(["event"])
