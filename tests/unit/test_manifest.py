"""Manifest readers: formats, gzip, line numbers, bad rows, whole-file errors."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import re
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.manifest import (
    BadRow,
    ManifestError,
    RawRow,
    content_hash,
    detect_format,
    open_manifest,
    read_manifest,
)


def write(tmp_path: Path, name: str, data: bytes | str, *, gz: bool = False) -> Path:
    raw = data.encode() if isinstance(data, str) else data
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def items(tmp_path: Path, name: str, data: bytes | str, *, gz: bool = False) -> list[Any]:
    return list(read_manifest(write(tmp_path, name, data, gz=gz)))


# --- JSONL -------------------------------------------------------------------------------

JSONL_CASES: list[tuple[str, bytes, list[Any]]] = [
    ("one row", b'{"a": 1}\n', [RawRow(1, 1, {"a": 1})]),
    ("no final newline", b'{"a": 1}\n{"b": 2}', [RawRow(1, 1, {"a": 1}), RawRow(2, 2, {"b": 2})]),
    ("blank lines skipped, not counted", b'\n{"a": 1}\n  \n\r\n{"b": 2}\n\n',
     [RawRow(1, 2, {"a": 1}), RawRow(2, 5, {"b": 2})]),
    ("CRLF", b'{"a": 1}\r\n{"b": 2}\r\n', [RawRow(1, 1, {"a": 1}), RawRow(2, 2, {"b": 2})]),
    ("BOM", b'\xef\xbb\xbf{"a": 1}\n', [RawRow(1, 1, {"a": 1})]),
    ("malformed", b'{"a": 1}\n{"a": \n{"c": 3}\n',
     [RawRow(1, 1, {"a": 1}), BadRow(2, 2, "malformed JSON: Expecting value at column 7"),
      RawRow(3, 3, {"c": 3})]),
    ("not an object", b'[1, 2]\n"x"\n3\nnull\n',
     [BadRow(1, 1, "expected a JSON object, found an array"),
      BadRow(2, 2, "expected a JSON object, found a string"),
      BadRow(3, 3, "expected a JSON object, found a number"),
      BadRow(4, 4, "expected a JSON object, found null")]),
    ("NaN refused", b'{"a": NaN}\n', [BadRow(1, 1, "malformed JSON: NaN is not valid JSON")]),
    ("not UTF-8", b'{"a": "\xff"}\n{"b": 1}\n',
     [BadRow(1, 1, "not valid UTF-8 (byte 8 of the line)"), RawRow(2, 2, {"b": 1})]),
    ("unicode kept", '{"a": "caf\u00e9 \u2028 \U0001f600"}\n'.encode(),
     [RawRow(1, 1, {"a": "caf\u00e9 \u2028 \U0001f600"})]),
]


def test_jsonl_deep_nesting_is_a_bad_row(tmp_path: Path) -> None:
    deep = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    [bad] = items(tmp_path, "m.jsonl", deep)
    assert isinstance(bad, BadRow)
    assert bad.reason.startswith("malformed JSON")


# --- CSV ---------------------------------------------------------------------------------

CSV_CASES: list[tuple[str, bytes, list[Any]]] = [
    ("plain", b"a,b\n1,2\n3,4\n",
     [RawRow(1, 2, {"a": "1", "b": "2"}, True), RawRow(2, 3, {"a": "3", "b": "4"}, True)]),
    ("empty cells omitted", b"a,b,c\n1,,  \n",
     [RawRow(1, 2, {"a": "1"}, True)]),
    ("blank lines and blank records skipped", b"a,b\n\n1,2\n,\n \n3,4\n",
     [RawRow(1, 3, {"a": "1", "b": "2"}, True), RawRow(2, 6, {"a": "3", "b": "4"}, True)]),
    ("quoted cell over lines", b'a,b\n"x\ny\nz",1\n2,3\n',
     [RawRow(1, 2, {"a": "x\ny\nz", "b": "1"}, True), RawRow(2, 5, {"a": "2", "b": "3"}, True)]),
    ("CRLF and quotes", b'a,b\r\n"say ""hi""","1,5"\r\n',
     [RawRow(1, 2, {"a": 'say "hi"', "b": "1,5"}, True)]),
    ("BOM and spaced header", b"\xef\xbb\xbf a , b\n1,2\n",
     [RawRow(1, 2, {"a": "1", "b": "2"}, True)]),
    ("header after blank lines", b"\n\na,b\n1,2\n", [RawRow(1, 4, {"a": "1", "b": "2"}, True)]),
    ("too few and too many cells", b"a,b\n1\n1,2,3\n4,5\n",
     [BadRow(1, 2, "expected 2 fields, found 1"), BadRow(2, 3, "expected 2 fields, found 3"),
      RawRow(3, 4, {"a": "4", "b": "5"}, True)]),
    ("not UTF-8", b"a,b\n1,\xff\n2,3\n",
     [BadRow(1, 2, "not valid UTF-8"), RawRow(2, 3, {"a": "2", "b": "3"}, True)]),
    ("stray quote on one line: reading goes on", b'a,b\n1,"x"y\n2,3\n',
     [BadRow(1, 2, "CSV error: ',' expected after '\"'"),
      RawRow(2, 3, {"a": "2", "b": "3"}, True)]),
    ("unterminated quote: reading stops", b'a,b\n1,2\n3,"open\n4,5\n6,7\n',
     [RawRow(1, 2, {"a": "1", "b": "2"}, True),
      BadRow(2, 3, "CSV error: unexpected end of data (unterminated quote?); reading stopped")]),
    ("JSON cells stay strings", b'input,metadata\n"{""a"": 1}",5\n',
     [RawRow(1, 2, {"input": '{"a": 1}', "metadata": "5"}, True)]),
]


def _cases(name: str, cases: list[tuple[str, bytes, list[Any]]]) -> list[Any]:
    return [pytest.param(name, data, expected, id=f"{name} {label}")
            for label, data, expected in cases]


@pytest.mark.parametrize(("name", "data", "expected"),
                         [*_cases("m.jsonl", JSONL_CASES), *_cases("m.csv", CSV_CASES)])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_cases(tmp_path: Path, name: str, data: bytes, expected: list[Any], gz: bool) -> None:
    """Every case of both tables, plain and gzipped."""
    assert items(tmp_path, name + (".gz" if gz else ""), data, gz=gz) == expected


def test_tsv(tmp_path: Path) -> None:
    assert items(tmp_path, "m.tsv", "a\tb\n1,5\t2\n") == [RawRow(1, 2, {"a": "1,5", "b": "2"},
                                                                   True)]


def test_csv_columns_are_exposed(tmp_path: Path) -> None:
    with open_manifest(write(tmp_path, "m.csv", "image, prompt_style\nx,y\n")) as m:
        assert m.format == "csv"
        assert m.columns == ("image", "prompt_style")


@pytest.mark.parametrize(("name", "data", "message"), [
    ("empty.csv", b"", "is empty"),
    ("blank.jsonl", b" \n\n\t\n", "is empty"),
    ("empty-name.csv", b"a,,b\n1,2,3\n", "column 2 of the header has no name"),
    ("dup.csv", b"a,b, a\n1,2,3\n", "column 'a' appears twice"),
    ("bad-header.csv", b"a,\xff\n1,2\n", "header is not valid UTF-8"),
    ("quote-header.csv", b'a,"b\n', "unreadable CSV header"),
])
def test_unusable_files_raise_before_any_row(tmp_path: Path, name: str, data: bytes,
                                             message: str) -> None:
    path = write(tmp_path, name, data)
    with pytest.raises(ManifestError, match=message):
        open_manifest(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"cannot read manifest .*No such file"):
        open_manifest(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        content_hash(tmp_path / "nope.csv")


def test_truncated_gzip_is_a_manifest_error(tmp_path: Path) -> None:
    rows = "".join(f'{{"n": {i}, "pad": "{"x" * 50}"}}\n' for i in range(5000))
    data = gzip.compress(rows.encode())
    path = write(tmp_path, "m.jsonl", data[: len(data) // 2])
    with pytest.raises(ManifestError, match="cannot read manifest"):
        list(read_manifest(path))


@pytest.mark.parametrize(("name", "data", "gz", "fmt"), [
    ("m.csv", "a\n1\n", False, "csv"),
    ("m.CSV.GZ", "a\n1\n", True, "csv"),
    ("m.jsonl", '{"a":1}\n', False, "jsonl"),
    ("m.ndjson", '{"a":1}\n', False, "jsonl"),
    ("m.json.gz", '{"a":1}\n', True, "jsonl"),
    ("m.txt", '\n  {"a":1}\n', False, "jsonl"),
    ("m.txt", "a,b\n1,2\n", False, "csv"),
    ("manifest", '{"a":1}\n', True, "jsonl"),
    ("m.csv.gz", "a\n1\n", False, "csv"),  # named .gz but not gzipped: read as it is
])
def test_format_and_gzip_detection(tmp_path: Path, name: str, data: str, gz: bool,
                                   fmt: str) -> None:
    path = write(tmp_path, name, data, gz=gz)
    assert detect_format(path) == fmt
    [row] = list(read_manifest(path))
    assert isinstance(row, RawRow)
    assert row.fields["a"] in ("1", 1)


def test_content_hash_is_sha256_of_the_raw_bytes(tmp_path: Path) -> None:
    data = b"a,b\n" + b"1,2\n" * 300_000
    path = write(tmp_path, "m.csv", data)
    assert content_hash(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", ["big.csv", "big.jsonl"])
def test_memory_stays_flat(tmp_path: Path, name: str) -> None:
    rows = 50_000
    if name.endswith(".csv"):
        text = "id,image\n" + "".join(f"r{i},https://example.com/{i:08d}.jpg\n"
                                      for i in range(rows))
    else:
        text = "".join(f'{{"id": "r{i}", "image": "https://example.com/{i:08d}.jpg"}}\n'
                       for i in range(rows))
    path = write(tmp_path, name, text, gz=True)
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_manifest(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    assert peak < 1_000_000, f"peak {peak} bytes for a {len(text)}-byte manifest"


# --- Properties --------------------------------------------------------------------------

_COLUMNS = ["id", "image", "prompt", "caption length", "métadonnées"]
_cell = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


def _line_breaks(text: str) -> int:
    """Line breaks as the reader counts them (newline='' splitting: \\r\\n, \\r, \\n)."""
    return len(re.findall(r"\r\n|\r|\n", text))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_cell, min_size=len(_COLUMNS), max_size=len(_COLUMNS)),
                     max_size=12),
       gz=st.booleans(), crlf=st.booleans())
def test_csv_round_trip(tmp_path: Path, rows: list[list[str]], gz: bool, crlf: bool) -> None:
    out = io.StringIO(newline="")
    # The writer quotes a cell holding \r only when \r is part of its line terminator.
    writer = csv.writer(out, lineterminator="\r\n" if crlf else "\n",
                        quoting=csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL)
    writer.writerow(_COLUMNS)
    expected: list[RawRow] = []
    for cells in rows:
        start = _line_breaks(out.getvalue()) + 1
        writer.writerow(cells)
        fields = {k: v for k, v in zip(_COLUMNS, cells, strict=True) if v.strip()}
        if fields:
            expected.append(RawRow(len(expected) + 1, start, fields, True))
    assert items(tmp_path, "m.csv", out.getvalue().encode(), gz=gz) == expected


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.dictionaries(st.text(), _json, max_size=4),
                               st.integers(0, 2)), min_size=1, max_size=10),
       gz=st.booleans())
def test_jsonl_round_trip(tmp_path: Path, rows: list[tuple[dict[str, Any], int]],
                          gz: bool) -> None:
    lines: list[str] = []
    expected: list[RawRow] = []
    for obj, blanks in rows:
        lines.extend([""] * blanks)
        lines.append(json.dumps(obj, ensure_ascii=bool(blanks % 2)))
        expected.append(RawRow(len(expected) + 1, len(lines), obj))
    assert items(tmp_path, "m.jsonl", "\n".join(lines) + "\n", gz=gz) == expected
