"""A field's value as the JSON type PiAPI wants: CSV cells are strings, JSON values may be
strings holding the type. Pure; each converter returns None when a value does not convert.

Integers: an integer, an integral float, or a string "5", "+5", "5.0" (not "5.5", not
true). Numbers: finite only, "0.5" or "1e3" from a string. Booleans: true/false/1/0/yes/no in
any case. Arrays: a JSON array, or a string holding one. Strings: strings, and numbers as
their decimal form; objects, arrays and booleans are refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from scheduler.manifest import parse_json
from workers.catalog import Kind

_INT_RE = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
_NUM_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_LITERAL_RE = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def to_int(value: Any) -> int | None:
    """An integer, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        try:
            return int(value.strip().split(".")[0])
        except ValueError:  # more digits than Python converts
            return None
    return None


def to_num(value: Any) -> int | float | None:
    """A finite number, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and _NUM_RE.fullmatch(text := value.strip()):
        try:
            number = int(text) if _INT_LITERAL_RE.fullmatch(text) else float(text)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def to_bool(value: Any) -> bool | None:
    """A boolean, or None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


def to_array(value: Any) -> list[Any] | None:
    """A list, or None."""
    if isinstance(value, list):
        return value
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = parse_json(value)
        except (ValueError, RecursionError):
            return None
        return parsed if isinstance(parsed, list) else None
    return None


def to_str(value: Any) -> str | None:
    """A string, or None."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than Python prints
            return None
    return None


CONVERTERS: dict[Kind, Callable[[Any], Any]] = {
    Kind.INT: to_int, Kind.NUM: to_num, Kind.BOOL: to_bool, Kind.STR: to_str,
    Kind.ARRAY: to_array,
}
KIND_WORDS = {
    Kind.INT: "an integer",
    Kind.NUM: "a number",
    Kind.BOOL: "a boolean (true/false/1/0/yes/no)",
    Kind.STR: "a string",
    Kind.ARRAY: "a JSON array",
}
