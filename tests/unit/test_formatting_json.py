"""formatting.to_json writes what json.dumps(indent=N) writes (ps --json and inspect use it)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from machinectl_py import formatting

VALUES: list[Any] = [
    None, True, False, 0, -7, 2**70, 1.5, 1e-7, 1700000000.123456, float("nan"), float("inf"), "", "plain",
    "quote \" backslash \\ tab \t newline \n nul \0", "é ü 日本 \U0001f600", [], {}, (), [1, [2, []], {}],
    {"Id": "ab", "State": {"Pid": 4, "Running": True, "ExitCode": None}, "Args": [], "Config": {"Env": ["A=1"]},
     "Labels": {"tier": "wéb"}, "Mounts": [{"RW": False, "Source": "/srv"}], "nested": [[[]], [{}]]},
]


@pytest.mark.parametrize("indent", [1, 2])
@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_to_json_is_json_dumps(value: Any, indent: int) -> None:
    assert formatting.to_json(value, indent=indent) == json.dumps(value, indent=indent)


def test_to_json_refuses_what_json_refuses() -> None:
    with pytest.raises(TypeError):
        formatting.to_json({"x": object()}, indent=2)
