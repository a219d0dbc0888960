"""A small immutable record type for the hot path.

`pymachine run` must start faster than systemd-nspawn, and importing `dataclasses`
(with `inspect`, `re`, ...) plus generating each class's methods with exec() costs
over 20 ms, a third of the budget. Records declare their fields once in `__slots__`
with defaults in `_defaults`; construction, equality, repr and to_dict() are shared.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Self


class Record:
    __slots__: tuple[str, ...] = ()
    _defaults: dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = self.__slots__
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional arguments")
        values = dict(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError(f"{type(self).__name__} has no field {key!r}")
            if key in values:
                raise TypeError(f"{type(self).__name__} got {key!r} twice")
            values[key] = value
        for name in names:
            if name in values:
                value = values[name]
            elif name in self._defaults:
                value = self._defaults[name]
                if isinstance(value, (dict, list)):
                    value = type(value)(value)
            else:
                raise TypeError(f"{type(self).__name__} is missing {name!r}")
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(_hashable(getattr(self, n)) for n in self.__slots__))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def replace(self, **changes: Any) -> Self:
        values = {n: getattr(self, n) for n in self.__slots__}
        values.update(changes)
        return type(self)(**values)

    def to_dict(self) -> dict[str, Any]:
        return {n: _plain(getattr(self, n)) for n in self.__slots__}


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted(value.items()))
    if isinstance(value, list):
        return tuple(value)
    return value


class _ScannerContext:
    """What the json module's C scanner reads from its JSONDecoder: the same defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict[str, str] = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name)  # NaN, Infinity, -Infinity, as json.loads accepts them


_scanner: Any = None


def load_json(text: str) -> Any:
    """json.loads for one JSON value, through the json module's C scanner (_json) without
    importing json, which compiles regular expressions (13 ms, on every `start`).
    Raises ValueError on anything that is not exactly one JSON value."""
    global _scanner
    if _scanner is None:
        import _json

        _scanner = _json.make_scanner(_ScannerContext())  # type: ignore[arg-type]  # duck-typed JSONDecoder
    text = text.strip(" \t\n\r")
    try:
        value, end = _scanner(text, 0)
    except StopIteration:
        raise ValueError("not a JSON value") from None
    if end != len(text):
        raise ValueError(f"extra data at offset {end}")
    return value
