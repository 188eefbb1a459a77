"""Results as CSV: one row per results line, the main output first, JSON cells compact."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.export import result_line
from scheduler.results_csv import CSV_COLUMNS, csv_row, csv_writer, inert, main_output
from workers.models import Job


def _job(**kw: object) -> Job:
    base: dict[str, object] = dict(id=1, batch_id="b1", seq=1, line=2, row_key="r1",
                                   model="Qubico/joycaption", task_type="joycaption-beta-one",
                                   state="completed")
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("output", "expected"), [
    ({"text": "A cat on a mat."}, "A cat on a mat."),
    ({"caption": "a dog"}, "a dog"),
    ({"video_url": "https://v/1.mp4", "cover_url": "https://v/1.jpg"}, "https://v/1.mp4"),
    ({"clips": {"a": {}, "b": {"audio_url": "https://a/b.mp3"}}}, "https://a/b.mp3"),
    ({"text": "", "image_url": "https://i/1.png"}, "https://i/1.png"),
    ({"score": 3}, '{"score":3}'),
    ("plain", "plain"),
    (None, ""),
])
def test_main_output(output: Any, expected: str) -> None:
    from scheduler.export import find_urls

    assert main_output(output, find_urls(output)) == expected


def test_a_caption_row() -> None:
    line = result_line(_job(task_id="t1", usage_consume=100_000,
                            input_json='{"image":"https://e.test/1.jpg"}',
                            output_json=json.dumps({"text": "A cat, \"sleeping\".\nSoftly."}),
                            metadata_json='{"album":"été"}'))
    row = dict(zip(CSV_COLUMNS, csv_row(line), strict=True))
    assert row == {
        "line": "2", "id": "r1", "model": "Qubico/joycaption", "task_type": "joycaption-beta-one",
        "status": "completed", "output": "A cat, \"sleeping\".\nSoftly.", "urls": "",
        "error_kind": "", "error_message": "", "usd": "0.01", "task_id": "t1",
        "input": '{"image":"https://e.test/1.jpg"}', "metadata": '{"album":"été"}',
        "files": "", "download_error": ""}


def test_failed_invalid_and_media_rows() -> None:
    failed = dict(zip(CSV_COLUMNS, csv_row(result_line(_job(
        state="failed", error_kind="provider", error_message="boom", usage_consume=1,
        task_id="t2"))), strict=True))
    assert (failed["status"], failed["error_kind"], failed["error_message"], failed["usd"],
            failed["output"]) == ("failed", "provider", "boom", "0.0000001", "")
    invalid = dict(zip(CSV_COLUMNS, csv_row(result_line(_job(
        state="invalid", model=None, task_type=None, error_kind="invalid",
        error_message="missing model"))), strict=True))
    assert (invalid["model"], invalid["input"], invalid["usd"], invalid["task_id"]) == (
        "", "", "", "")
    video = dict(zip(CSV_COLUMNS, csv_row(result_line(_job(
        model="Wan", task_type="wan26-txt2video", output_json=json.dumps(
            {"video_url": "https://v/1.mp4", "cover": "https://v/1.jpg"})))), strict=True))
    assert (video["output"], video["urls"]) == ("https://v/1.mp4",
                                                "https://v/1.mp4 https://v/1.jpg")
    pending = csv_row(result_line(_job(state="running")))
    assert pending[CSV_COLUMNS.index("status")] == "pending"


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@given(st.lists(st.tuples(_text, _text, st.dictionaries(_text, _text, max_size=2)),
                max_size=5))
def test_any_text_survives_a_round_trip_through_csv(rows: list[tuple[str, str, dict[str, str]]],
                                                    ) -> None:
    lines = [result_line(_job(seq=i, line=i, row_key=key, output_json=json.dumps({"text": text}),
                              metadata_json=json.dumps(meta)))
             for i, (key, text, meta) in enumerate(rows, 1)]
    out = io.StringIO(newline="")
    write = csv_writer(out)
    for line in lines:
        write(line)
    back = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert back[0] == list(CSV_COLUMNS)
    assert back[1:] == [[inert(c) for c in csv_row(line)] for line in lines]
    for (key, text, meta), cells in zip(rows, back[1:], strict=True):
        row = dict(zip(CSV_COLUMNS, cells, strict=True))
        assert row["id"] == inert(key) and json.loads(row["metadata"]) == meta
        assert row["output"] == inert(text if text.strip() else json.dumps(
            {"text": text}, separators=(",", ":"), ensure_ascii=False))


@pytest.mark.parametrize(("cell", "shown"), [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+1", "'+1"), ("-x", "'-x"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("a cat", "a cat"), ("", ""), ("1=1", "1=1")])
def test_a_cell_a_spreadsheet_would_run_is_made_inert(cell: str, shown: str) -> None:
    assert inert(cell) == shown
