"""state.load_json (the json module's C scanner without `import json`) and config's TOML strings."""

from __future__ import annotations

import json
import tomllib

import pytest

from machinectl_py.settings import toml_string as _toml_string
from machinectl_py.state import dump_json, load_json

VALUES = [
    {"a": [1, 2.5, None, True, False, "x\u2028\x7f\x00\n\"\\é😀"], "b": {"c": -3, "d": 1e100}},
    [], {}, "s", 0, -0.5, {"nested": [[{"k": []}]]},
]


@pytest.mark.parametrize("value", VALUES)
def test_load_json_reads_what_dump_json_and_json_write(value: object) -> None:
    assert load_json(dump_json(value)) == value
    assert load_json(json.dumps(value, indent=2)) == value
    assert load_json("\n " + json.dumps(value) + "\n") == value


@pytest.mark.parametrize("text", ["", "   ", "{", "[1,]", "1 2", "{'a': 1}", "nul", '{"a": 1} x', '"\x01"'])
def test_load_json_rejects_what_json_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        load_json(text)


def test_toml_string_round_trips_every_character() -> None:
    text = "".join(chr(i) for i in range(0x800) if not 0xD800 <= i < 0xE000) + "😀 \U0010ffff"
    assert tomllib.loads("k = " + _toml_string(text))["k"] == text
