"""Streaming manifest readers: CSV or JSONL, plain or gzipped, one RawRow or BadRow per data row.

A manifest is read once, front to back, a line at a time, so memory stays flat however long
the file is. Gzip is recognised by its magic bytes (1f 8b), not by the name. The format comes
from the extension once `.gz` is stripped (`.csv`, `.tsv`, `.jsonl`, `.ndjson`, `.json`);
any other name is sniffed: a first non-blank character `{` means JSONL, anything else CSV.

Every data row yields exactly one item, in file order: a `RawRow` (its fields, untyped) or a
`BadRow` (why it could not be read). `seq` is the 1-based data-row number and `line` the
1-based physical line where the row starts. Blank lines (and, in CSV, records whose cells
are all blank) are not data rows. A file that cannot be read at all (missing, empty, no
usable CSV header) raises `ManifestError` when opened, before any row; a gzip stream found
corrupt or truncated part-way raises it from the iteration, after the rows before it.

Bytes that are not UTF-8 make a `BadRow` for the row they are in, in both formats (JSONL
lines are decoded one at a time; CSV is decoded with `surrogateescape` and a row holding an
escaped byte is refused). A BOM at the start is ignored.

CSV cells stay strings (typing is validation's job); empty or whitespace-only cells are left
out of `fields`. CSV is parsed strictly (a stray quote is an error). An error confined to
one physical line, such as a cell over the csv module's field limit (128 KiB by default),
makes that row a `BadRow` and reading goes on; an error inside a multi-line quoted cell (an
unterminated quote) makes a `BadRow` and ends the file, since what follows is not trusted.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, cast

logger = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
SNIFF_LIMIT_BYTES = 1 << 20
"""How far into the (decompressed) file to look for the first non-blank character."""

Format = Literal["csv", "tsv", "jsonl"]
EXTENSIONS: dict[str, Format] = {
    ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
}
_DELIMITERS: dict[Format, str] = {"csv": ",", "tsv": "\t"}
_BLANK = b" \t\r\n\x0b\x0c"


class ManifestError(Exception):
    """The manifest cannot be read at all: missing, unreadable, empty, or no usable header."""


@dataclass(slots=True)
class RawRow:
    """One data row as read: field names to values, not yet validated or typed."""

    seq: int
    line: int
    fields: dict[str, Any]
    from_csv: bool = False
    """True when every value is a CSV cell (a string), so `input`/`metadata` hold JSON text."""


@dataclass(slots=True)
class BadRow:
    """One data row that could not be read, and why (one line)."""

    seq: int
    line: int
    reason: str


Item = RawRow | BadRow
# Row items are plain (not frozen) slotted dataclasses: a manifest makes millions of them,
# and a frozen dataclass is about four times slower to build.


def content_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the file's raw bytes, read in chunks."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc


def _open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it starts with the gzip magic."""
    try:
        f: IO[bytes] = path.open("rb")
        if f.read(2) != GZIP_MAGIC:
            f.seek(0)
            return f
        f.close()
        return cast(IO[bytes], gzip.open(path, "rb"))
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc


def _first_char(path: Path) -> str | None:
    """The first non-blank character of the decoded file, or None when it is blank."""
    with _open_binary(path) as f:
        seen = 0
        while seen < SNIFF_LIMIT_BYTES:
            chunk = f.read(64 * 1024)
            if not chunk:
                return None
            if seen == 0 and chunk.startswith(UTF8_BOM):
                chunk = chunk[len(UTF8_BOM):]
            seen += len(chunk)
            text = chunk.lstrip(_BLANK)
            if text:
                return text[:1].decode("latin-1")
    return "?"  # a megabyte of blanks: not JSONL; the CSV reader will say what is wrong


def _format_from_name(path: Path) -> Format | None:
    name = path.name.lower().removesuffix(".gz")
    return EXTENSIONS.get(Path(name).suffix)


def _sniff(path: Path) -> str | None:
    try:
        return _first_char(path)
    except (EOFError, zlib.error, OSError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc


def detect_format(path: str | os.PathLike[str]) -> Format:
    """The manifest's format: from its extension (after `.gz`), else sniffed."""
    p = Path(path)
    return _format_from_name(p) or ("jsonl" if _sniff(p) == "{" else "csv")


class Manifest:
    """An open manifest, iterated once for its rows; use it with `with` so the file closes.

    Opening checks everything that makes the whole file unusable (missing, blank, CSV header
    missing, with an empty or repeated column name) and raises `ManifestError` before any row.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        first = _sniff(self.path)
        if first is None:
            raise ManifestError(f"manifest {self.path} is empty")
        self.format: Format = _format_from_name(self.path) or (
            "jsonl" if first == "{" else "csv")
        self.columns: tuple[str, ...] = ()
        """CSV header names (empty for JSONL)."""
        self._stream = _open_binary(self.path)
        self._rows: Iterator[Item]
        try:
            self._rows = self._start()
        except (EOFError, zlib.error, OSError) as exc:
            self._stream.close()
            raise ManifestError(f"cannot read manifest {self.path}: {exc}") from exc
        except BaseException:
            self._stream.close()
            raise
        self._line = 0

    def content_hash(self) -> str:
        """SHA-256 (hex) of the file's raw bytes (the batch's identity starts here)."""
        return content_hash(self.path)

    def _start(self) -> Iterator[Item]:
        if self.format == "jsonl":
            return _jsonl_items(self._stream)
        reader = _CsvReader(self._stream, _DELIMITERS[self.format], self.path)
        self.columns = reader.columns
        return reader.items()

    def __iter__(self) -> Iterator[Item]:
        try:
            for item in self._rows:
                self._line = item.line
                yield item
        except (EOFError, zlib.error, OSError) as exc:
            raise ManifestError(
                f"cannot read manifest {self.path} after line {self._line}: {exc}") from exc

    def close(self) -> None:
        """Close the underlying file."""
        self._stream.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def open_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Open a manifest for reading (see `Manifest`); raises `ManifestError` when unusable."""
    return Manifest(path)


def read_manifest(path: str | os.PathLike[str]) -> Iterator[Item]:
    """Every row of the manifest at `path`, in order (the file closes at the end)."""
    with open_manifest(path) as manifest:
        yield from manifest


# --- JSONL -------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:20]} is out of range")
    return number


_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(text: str) -> Any:
    """Strict JSON whose every string is valid Unicode, so it can be stored and sent as is.

    Refused with ValueError: NaN and Infinity (not JSON), numbers too large for a float,
    and unpaired surrogate escapes such as "\\ud800" (no UTF-8 encoding exists for them).
    """
    value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    if "\\u" in text and _ESCAPED_SURROGATE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("an unpaired surrogate escape is not valid Unicode") from None
    return value


def _jsonl_item(seq: int, line: int, raw: bytes) -> Item:
    try:
        text = raw.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRow(seq, line, f"not valid UTF-8 (byte {exc.start + 1} of the line)")
    try:
        value = parse_json(text)
    except json.JSONDecodeError as exc:
        return BadRow(seq, line, f"malformed JSON: {exc.msg} at column {exc.colno}")
    except ValueError as exc:  # NaN, or an integer with thousands of digits
        return BadRow(seq, line, f"malformed JSON: {exc}")
    except RecursionError:
        return BadRow(seq, line, "malformed JSON: nested too deeply")
    if not isinstance(value, dict):
        return BadRow(seq, line, f"expected a JSON object, found {_json_type(value)}")
    return RawRow(seq, line, value)


def _jsonl_items(stream: Iterable[bytes]) -> Iterator[Item]:
    seq = 0
    for line, raw in enumerate(stream, 1):
        if line == 1 and raw.startswith(UTF8_BOM):
            raw = raw[len(UTF8_BOM):]
        if not raw.strip(_BLANK):
            continue
        seq += 1
        yield _jsonl_item(seq, line, raw)


# --- CSV ---------------------------------------------------------------------------------


class _CsvReader:
    """csv.reader over the decoded text; bytes that are not UTF-8 become lone surrogates.

    Decoding with `surrogateescape` keeps the C fast path for the whole file and still lets
    a row holding undecodable bytes be told apart (and made a `BadRow`) afterwards.
    """

    def __init__(self, stream: IO[bytes], delimiter: str, path: Path) -> None:
        self._text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape",
                                      newline="")
        self._reader = csv.reader(self._text, delimiter=delimiter, strict=True)
        self._prev = 0
        self.columns = self._header(path)

    def _header(self, path: Path) -> tuple[str, ...]:
        try:
            cells = next(c for c in self._reader if not _blank(c))
        except StopIteration:
            raise ManifestError(f"manifest {path} has no header row") from None
        except csv.Error as exc:
            raise ManifestError(f"manifest {path}: unreadable CSV header: {exc}") from exc
        if _undecodable(cells):
            raise ManifestError(f"manifest {path}: the header is not valid UTF-8")
        names = tuple(c.strip() for c in cells)
        for i, name in enumerate(names, 1):
            if not name:
                raise ManifestError(f"manifest {path}: column {i} of the header has no name")
            if name in names[: i - 1]:
                raise ManifestError(f"manifest {path}: column {name!r} appears twice")
        self._prev = self._reader.line_num
        return names

    def items(self) -> Iterator[Item]:
        reader, seq = self._reader, 0
        while True:
            try:
                for cells in reader:
                    start, self._prev = self._prev + 1, reader.line_num
                    if cells and (cells[0].strip() or not _blank(cells)):
                        seq += 1
                        yield self._item(seq, start, cells)
                return
            except csv.Error as exc:
                start, self._prev = self._prev + 1, reader.line_num
                seq += 1
                if reader.line_num == start:
                    yield BadRow(seq, start, f"CSV error: {exc}")
                    continue
                logger.warning("CSV error in the row at line %d: %s; reading stopped", start, exc)
                yield BadRow(seq, start, f"CSV error: {exc} (unterminated quote?); reading stopped")
                return

    def _item(self, seq: int, start: int, cells: list[str]) -> Item:
        if len(cells) != len(self.columns):
            return BadRow(seq, start, f"expected {len(self.columns)} fields, found {len(cells)}")
        if not all(map(str.isascii, cells)) and _undecodable(cells):
            return BadRow(seq, start, "not valid UTF-8")
        fields = dict(zip(self.columns, cells))  # noqa: B905 (lengths checked above)
        if not all(map(str.strip, cells)):
            fields = {k: v for k, v in fields.items() if v.strip()}
        return RawRow(seq, start, fields, from_csv=True)


_SURROGATE = re.compile("[\udc80-\udcff]")


def _undecodable(cells: list[str]) -> bool:
    """True when a cell holds bytes that were not UTF-8 (decoded as lone surrogates)."""
    return not all(map(str.isascii, cells)) and any(map(_SURROGATE.search, cells))


def _blank(cells: list[str]) -> bool:
    return all(not c.strip() for c in cells)
