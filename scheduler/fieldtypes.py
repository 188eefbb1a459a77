"""A field's value as the JSON type PiAPI wants: CSV cells are strings, JSON values may be
strings holding the type. Pure; each converter returns None when a value does not convert.

Integers: an integer, an integral float, or a string "5", "+5", "5.0" (not "5.5", not
true). Numbers: finite only, "0.5" or "1e3" from a string. Booleans: true/false/1/0/yes/no in
any case. Arrays: a JSON array, or a string holding one. Strings: strings, and numbers as
their decimal form; objects, arrays and booleans are refused. URLs are strings, which
`url_problem` then checks: an absolute http(s) URL with a host, nothing local.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from scheduler.manifest import parse_json
from workers.catalog import Kind

_INT_RE = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
_NUM_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INT_LITERAL_RE = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_PLAIN_URL_RE = re.compile(
    r"[hH][tT][tT][pP][sS]?://[A-Za-z0-9_-][A-Za-z0-9_.-]*(?::[0-9]*)?(?:[/?#]|$)")
"""http(s), a plain host name or IPv4 address, an optional port, then the path or nothing."""
LOCAL_FILE = "local files are not uploaded yet; give an http(s) URL"
NOT_URL = "not an http(s) URL"


def _number(value: Any) -> int | float | None:
    """A JSON number given as one: an int or a finite float. Not a bool, which Python counts
    as an int but JSON does not."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if isinstance(value, int) or math.isfinite(value) else None


def to_int(value: Any) -> int | None:
    """An integer, or None."""
    if isinstance(value, str):
        if not _INT_RE.fullmatch(text := value.strip()):
            return None
        try:
            return int(text.split(".")[0])
        except ValueError:  # more digits than Python converts
            return None
    number = _number(value)
    if isinstance(number, float):
        return int(number) if number.is_integer() else None
    return number


def to_num(value: Any) -> int | float | None:
    """A finite number, or None."""
    if isinstance(value, str):
        if not _NUM_RE.fullmatch(text := value.strip()):
            return None
        try:
            return _number(int(text) if _INT_LITERAL_RE.fullmatch(text) else float(text))
        except ValueError:
            return None
    return _number(value)


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
    """A string, or None; a number as its decimal form."""
    if isinstance(value, str):
        return value
    number = _number(value)
    if isinstance(number, float):
        return repr(number)
    try:
        return None if number is None else str(number)
    except ValueError:  # more digits than Python prints
        return None


def url_problem(text: str) -> str | None:
    """None for an absolute http(s) URL with a host; else why not: `LOCAL_FILE` for what
    names a local file (a path, `file:`, a Windows drive), `NOT_URL` for anything else."""
    text = text.strip()
    if _PLAIN_URL_RE.match(text):
        return None  # the common case, without urlsplit (about 10 us on a new URL)
    scheme = _SCHEME_RE.match(text)
    if scheme is None or len(scheme.group()) == 2:  # no scheme, or a drive letter ("C:")
        return LOCAL_FILE if text else NOT_URL
    name = scheme.group()[:-1].lower()
    if name == "file":
        return LOCAL_FILE
    if name not in ("http", "https"):
        return NOT_URL
    try:
        host = urlsplit(text).hostname
    except ValueError:  # a malformed IPv6 host, for one
        return NOT_URL
    return None if host else NOT_URL


CONVERTERS: dict[Kind, Callable[[Any], Any]] = {
    Kind.INT: to_int, Kind.NUM: to_num, Kind.BOOL: to_bool, Kind.STR: to_str,
    Kind.ARRAY: to_array, Kind.URL: to_str,
}
KIND_WORDS = {
    Kind.INT: "an integer",
    Kind.NUM: "a number",
    Kind.BOOL: "a boolean (true/false/1/0/yes/no)",
    Kind.STR: "a string",
    Kind.ARRAY: "a JSON array",
    Kind.URL: "an http(s) URL",
}
