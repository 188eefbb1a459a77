"""What the revisions share: their column vocabulary, read from a small table of text.

A revision lists a table's columns one a line, `name type [null] [default=V]`, instead of
a `sa.Column(...)` call each, so what it adds reads as a schema and the calls are written
once, here:

    id             id                    the 64-bit id (INTEGER on SQLite, see `ID`)
    content_hash   str64                 VARCHAR(64) NOT NULL; `str` alone has no length
    model          str      null         nullable
    posts          int      default=0    NOT NULL with a server default (so rows get it)
    # a comment                          anything after `#` on a line is one

Types: `id`, `int`, `bigint`, `float`, `bool`, `text`, `str`, `strN`. Revisions are
written once and must never change what they create, so this vocabulary only grows: a
word, once used, keeps its meaning.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeEngine

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""64-bit ids on PostgreSQL; INTEGER on SQLite, where only that type autoincrements."""

NO_DOWNGRADE = "piapi-bulk does not downgrade a database: restore a backup"
"""What every revision's `downgrade` raises: going back would drop rows' data."""

_TYPES: dict[str, TypeEngine[Any]] = {
    "id": ID,
    "int": sa.Integer(),
    "bigint": sa.BigInteger(),
    "float": sa.Float(),
    "bool": sa.Boolean(),
    "text": sa.Text(),
    "str": sa.String(),
}
_DEFAULT = "default="


def columns(spec: str) -> list[sa.Column[Any]]:
    """The columns `spec` lists, in its order (new objects each call: a column belongs to
    one table)."""
    lines = (line.split("#", 1)[0].split() for line in spec.splitlines())
    return [_column(*words) for words in lines if words]


def _column(name: str, type_name: str, *flags: str) -> sa.Column[Any]:
    defaults = [flag.removeprefix(_DEFAULT) for flag in flags if flag.startswith(_DEFAULT)]
    unknown = [flag for flag in flags if flag != "null" and not flag.startswith(_DEFAULT)]
    if unknown or len(defaults) > 1:
        raise ValueError(f"column {name!r}: cannot read {' '.join(flags)!r}")
    return sa.Column(name, _type(type_name), nullable="null" in flags,
                     server_default=defaults[0] if defaults else None)


def _type(word: str) -> TypeEngine[Any]:
    """The SQL type a word of the vocabulary names (`strN`: a VARCHAR of N characters)."""
    if word in _TYPES:
        return _TYPES[word]
    if word.startswith("str") and word[3:].isdigit():
        return sa.String(int(word[3:]))
    raise ValueError(f"no column type {word!r}")
