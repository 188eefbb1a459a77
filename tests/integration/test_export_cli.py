"""`piapi-bulk export`: JSONL lines carry the input as sent; `--format csv` a row per row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine

from scheduler.ingest import ingest
from scheduler.results_csv import CSV_COLUMNS
from tests.integration.e2e import db_env, piapi_bulk, write_jsonl
from workers.models import JOBS

pytestmark = pytest.mark.integration  # `piapi-bulk export` runs as a process

JOY = {"model": "Qubico/joycaption", "task_type": "joycaption-beta-one"}


def test_export_jsonl_and_csv(engine: Engine, tmp_path: Path, database_url: str) -> None:
    manifest = write_jsonl(tmp_path / "captions.jsonl", [
        {**JOY, "id": "cat", "image": "https://e.test/cat.jpg", "metadata": {"album": "été"}},
        {**JOY, "id": "dog", "input": {"image": "https://e.test/dog.jpg",
                                       "caption_length": "short"}},
        {**JOY, "id": "local", "image": "./images/cat.jpg"},
        {"model": "Wan", "task_type": "wan26-txt2video", "id": "clip", "prompt": "a lake",
         "duration": "5"},
    ])
    batch = ingest(engine, manifest).batch_id
    caption = 'A cat, "asleep",\non a mat.'
    with engine.begin() as conn:
        conn.execute(update(JOBS).where(JOBS.c.row_key == "cat").values(
            state="completed", task_id="t-cat", usage_consume=100_000,
            output_json=json.dumps({"text": caption})))
        conn.execute(update(JOBS).where(JOBS.c.row_key == "clip").values(
            state="completed", task_id="t-clip", usage_consume=4_000_000,
            output_json=json.dumps({"video_url": "https://v/1.mp4",
                                    "cover_url": "https://v/1.jpg"})))

    env = db_env(tmp_path, database_url)
    done = piapi_bulk(tmp_path, env, "export", batch, "-o", "out.jsonl")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [x["input"] for x in lines] == [
        {"image": "https://e.test/cat.jpg"},
        {"caption_length": "short", "image": "https://e.test/dog.jpg"},
        None,  # invalid: never sent
        {"duration": 5, "prompt": "a lake"},  # as sent: typed
    ]
    assert lines[2]["error"]["message"] == ("field 'image': local file ./images/cat.jpg: "
                                            "no such file")

    done = piapi_bulk(tmp_path, env, "export", batch, "-o", "out.csv",
                      "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "4 rows written to out.csv\n"
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    assert header == list(CSV_COLUMNS)
    by_id = {r[1]: dict(zip(CSV_COLUMNS, r, strict=True)) for r in rows}
    assert [r[1] for r in rows] == ["cat", "dog", "local", "clip"]
    assert by_id["cat"] | {"input": ""} == {
        "line": "1", "id": "cat", "model": "Qubico/joycaption",
        "task_type": "joycaption-beta-one", "status": "completed", "output": caption,
        "urls": "", "error_kind": "", "error_message": "", "usd": "0.01", "task_id": "t-cat",
        "input": "", "metadata": '{"album":"été"}', "files": "", "download_error": ""}
    assert json.loads(by_id["cat"]["input"]) == {"image": "https://e.test/cat.jpg"}
    assert (by_id["dog"]["status"], by_id["dog"]["output"]) == ("pending", "")
    assert (by_id["local"]["status"], by_id["local"]["error_kind"]) == ("invalid", "invalid")
    assert (by_id["clip"]["output"], by_id["clip"]["urls"], by_id["clip"]["usd"]) == (
        "https://v/1.mp4", "https://v/1.mp4 https://v/1.jpg", "0.4")

    bad = piapi_bulk(tmp_path, env, "export", batch, "-o", "x", "--format", "xlsx")
    assert (bad.returncode, bad.stderr) == (
        2, "piapi-bulk: --format must be jsonl or csv, got 'xlsx'\n")
    assert not (tmp_path / "x").exists()
