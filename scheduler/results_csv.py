"""The results as CSV, for people who open them in a spreadsheet: a row per manifest row.

Made from the results lines (`scheduler.export.result_line`), so both formats say the
same: `output` is the main output (a caption's text; else the first output URL; else the
output as compact JSON), `urls` every output URL separated by spaces, `usd` what PiAPI
charged for the row's task, and `input` and `metadata` compact JSON; `files` the paths of
the row's downloaded output files (separated by spaces) and `download_error` why any could
not be kept.

A cell that a spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a tab
or a carriage return: a caption a model was talked into writing, an id) starts with `'`
instead, as OWASP advises against CSV injection; the JSONL results keep every value as is.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from typing import IO, Any

CSV_COLUMNS = ("line", "id", "model", "task_type", "status", "output", "urls", "error_kind",
               "error_message", "usd", "task_id", "input", "metadata", "files",
               "download_error")
TEXT_KEYS = ("text", "caption", "content")
"""Output keys holding the result itself as text (Joycaption's caption is `text`)."""
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def main_output(output: Any, urls: list[str]) -> str:
    """The one cell that shows a row's result: its text, else its first URL, else the
    output as compact JSON (empty when there is none)."""
    if isinstance(output, str):
        return output
    if isinstance(output, dict):
        for key in TEXT_KEYS:
            value = output.get(key)
            if isinstance(value, str) and value.strip():
                return value
    if urls:
        return urls[0]
    return "" if output is None else _COMPACT.encode(output)


def csv_row(line: dict[str, Any]) -> list[str]:
    """A results line as the CSV_COLUMNS cells."""
    error = line.get("error") or {}
    usage = line.get("usage") or {}
    urls = list(line.get("urls") or [])
    usd = usage.get("usd")
    return [
        str(line["line"]), _text(line["id"]), _text(line.get("model")),
        _text(line.get("task_type")), line["status"], main_output(line.get("output"), urls),
        " ".join(urls), _text(error.get("kind")), _text(error.get("message")),
        "" if usd is None else _usd(usd), _text(line.get("task_id")),
        _json(line.get("input")), _json(line.get("metadata")),
        " ".join(f["path"] for f in line.get("files") or []),
        "; ".join(f"{e['url']}: {e['error']}" for e in line.get("download_errors") or []),
    ]


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(cell: str) -> str:
    """`cell` as a spreadsheet shows it without running it (see the module docstring)."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def csv_writer(out: IO[str]) -> Callable[[dict[str, Any]], None]:
    """Write the header to `out` (opened with newline=""); a function writing one line."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)

    def write(line: dict[str, Any]) -> None:
        writer.writerow([inert(cell) for cell in csv_row(line)])

    return write


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _json(value: Any) -> str:
    return "" if value is None else _COMPACT.encode(value)


def _usd(usd: float) -> str:
    """Dollars to PiAPI's precision (10^-7), without trailing zeros: 0.01, 0.0000001."""
    text = f"{usd:.7f}".rstrip("0").rstrip(".")
    return text or "0"
