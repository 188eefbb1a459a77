"""Ingest on a real SQLite file and a throwaway PostgreSQL database: rows, reasons, resume."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Engine

from scheduler.export import iter_results
from scheduler.ingest import BATCHES, JOBS, ingest
from scheduler.manifest import ManifestError
from scheduler.options import option_conflict, unchecked_lines
from scheduler.status import batch_status
from tests.integration.e2e import add_old_batch
from workers.db import create_tables

JOY = {"model": "Qubico/joycaption", "task_type": "joycaption-beta-one"}
U = "https://e.test/u"


def jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def jobs(engine: Engine, batch_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(select(JOBS).where(JOBS.c.batch_id == batch_id)
                            .order_by(JOBS.c.seq)).mappings().all()
    return [dict(r) for r in rows]


def batch(engine: Engine, batch_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        row = conn.execute(select(BATCHES)
                           .where(BATCHES.c.id == batch_id)).mappings().one()
    return dict(row)


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_mixed_jsonl_manifest(engine: Engine, tmp_path: Path) -> None:
    good = {**JOY, "input": {"image": "https://example.com/1.jpg"}}
    path = jsonl(tmp_path / "mixed.jsonl", [
        {**good, "id": "a", "metadata": {"user": [1, 2], "z": 0, "b": None}},  # 1
        '{"id": "broken", "model": ',                                         # 2 malformed
        {**good, "id": "b"},                                                  # 3
        {**good, "id": "a"},                                                  # 4 duplicate
        {**JOY, "id": "c", "input": {"prompt_style": "descriptive"}},         # 5 no image
        {"id": "d", "model": "Wan", "task_type": "x", "image": "u"},          # 6 unknown type
        "",                                                                   # 7 blank
        {**JOY, "input": {"image": U}, "caption_length": "long",              # 8 valid, no id
         "prompt_style": "descriptive"},
        {"model": "Wan", "task_type": "wan26-txt2video", "prompt": "p",       # 9 bad typed value
         "duration": "abc", "metadata": "keep me"},
        {**good, "id": "7"},                                   # 10 clashes with line 8's default id
    ])
    result = ingest(engine, path)
    rows = jobs(engine, result.batch_id)
    assert [(r["seq"], r["line"], r["row_key"], r["state"]) for r in rows] == [
        (1, 1, "a", "queued"), (2, 2, "2", "invalid"), (3, 3, "b", "queued"),
        (4, 4, "a", "invalid"), (5, 5, "c", "invalid"), (6, 6, "d", "invalid"),
        (7, 8, "7", "queued"), (8, 9, "8", "invalid"), (9, 10, "7", "invalid"),
    ]
    reasons = {r["line"]: r["error_message"] for r in rows if r["state"] == "invalid"}
    assert reasons == {
        2: "malformed JSON: Expecting value at column 27",
        4: "duplicate id 'a' (first at line 1)",
        5: "missing required input field 'image'",
        6: "unknown task_type 'x' for model 'Wan' (known: wan26-img2video, wan26-txt2video)",
        9: "field 'duration' must be an integer, got 'abc'",
        10: "duplicate id '7' (first at line 8; a row without an id has its row number as id)",
    }
    assert {r["error_kind"] for r in rows if r["state"] == "invalid"} == {"invalid"}
    assert {r["error_kind"] for r in rows if r["state"] == "queued"} == {None}
    first, dup, wan = rows[0], rows[3], rows[7]
    assert first["input_json"] == '{"image":"https://example.com/1.jpg"}'
    assert json.loads(first["metadata_json"]) == {"user": [1, 2], "z": 0, "b": None}
    assert list(json.loads(first["metadata_json"])) == ["user", "z", "b"]  # order kept
    assert rows[6]["input_json"] == ('{"caption_length":"long","image":"https://e.test/u",'
                                     '"prompt_style":"descriptive"}')
    assert (dup["model"], dup["input_json"]) == (JOY["model"], None)
    assert (wan["model"], wan["task_type"], json.loads(wan["metadata_json"])) == (
        "Wan", "wan26-txt2video", "keep me")
    assert (result.total, result.invalid, result.created) == (9, 6, True)
    assert result.invalid_rows == [(line, key, reasons[line]) for line, key in
                                   [(2, "2"), (4, "a"), (5, "c"), (6, "d"), (9, "8"), (10, "7")]]
    stored = batch(engine, result.batch_id)
    assert (stored["ingested"], stored["total"], stored["invalid"]) == (True, 9, 6)


def test_csv_with_defaults_and_a_bad_typed_cell(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "captions.csv"
    path.write_text(
        "image,prompt_style,caption_length\n"
        "https://example.com/1.jpg,descriptive,long\n"
        "https://example.com/2.jpg,,short\n"
        ",descriptive,long\n"
        "https://example.com/4.jpg,descriptive\n"
    )
    result = ingest(engine, path, default_model=JOY["model"], default_task_type=JOY["task_type"])
    rows = jobs(engine, result.batch_id)
    assert [(r["line"], r["state"], r["error_message"]) for r in rows] == [
        (2, "queued", None),
        (3, "queued", None),
        (4, "invalid", "missing required input field 'image'"),
        (5, "invalid", "expected 3 fields, found 2"),
    ]
    assert rows[1]["input_json"] == '{"caption_length":"short","image":"https://example.com/2.jpg"}'
    assert {(r["model"], r["task_type"]) for r in rows[:3]} == {(JOY["model"], JOY["task_type"])}

    videos = tmp_path / "videos.csv"
    videos.write_text('id,prompt,duration,audio,metadata\n'
                      'v1,a cat,10,yes,"{""shot"": 1}"\n'
                      'v2,a dog,seven,no,plain text\n')
    result = ingest(engine, videos, default_model="Wan", default_task_type="wan26-txt2video")
    rows = jobs(engine, result.batch_id)
    assert rows[0]["input_json"] == '{"audio":true,"duration":10,"prompt":"a cat"}'
    assert json.loads(rows[0]["metadata_json"]) == {"shot": 1}
    assert (rows[1]["state"], rows[1]["error_message"]) == (
        "invalid", "field 'duration' must be an integer, got 'seven'")
    assert json.loads(rows[1]["metadata_json"]) == "plain text"


def test_same_manifest_is_the_same_batch(engine: Engine, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "m.jsonl", [{**JOY, "image": f"{U}{i}"} for i in range(5)]
                 + [{"model": "Nope"}])
    first = ingest(engine, path, max_attempts=3)
    again = ingest(engine, path, max_attempts=5, concurrency=4)
    assert again.batch_id == first.batch_id
    assert (again.total, again.invalid, again.created, again.resumed) == (6, 1, False, False)
    assert again.invalid_rows == first.invalid_rows
    assert count(engine, JOBS) == 6
    assert count(engine, BATCHES) == 1
    stored = batch(engine, first.batch_id)
    assert (stored["max_attempts"], stored["concurrency"]) == (5, 4)
    ingest(engine, path, max_attempts=5)  # concurrency not given: left as it is
    assert batch(engine, first.batch_id)["concurrency"] == 4
    # Neither given (a submit that only changes the budget): both left as they are, and
    # the default is for new batches only.
    ingest(engine, path, default_max_attempts=3)
    assert (batch(engine, first.batch_id)["max_attempts"],
            batch(engine, first.batch_id)["concurrency"]) == (5, 4)

    # Other defaults make another batch.
    other = ingest(engine, path, default_model=JOY["model"], default_task_type=JOY["task_type"],
                   default_max_attempts=7)
    assert other.batch_id != first.batch_id and other.created
    assert batch(engine, other.batch_id)["max_attempts"] == 7
    assert first.batch_id.startswith("b") and len(first.batch_id) == 13
    assert len(batch(engine, first.batch_id)["content_hash"]) == 64


class Crash(Exception):
    pass


def test_resume_after_a_crash_stores_each_row_once(engine: Engine, tmp_path: Path) -> None:
    lines: list[Any] = [{**JOY, "id": f"r{i}", "image": f"{U}{i}"} for i in range(1, 12)]
    lines[8] = {**JOY, "id": "r2", "image": U + "dup"}  # line 9 repeats line 2's id, across chunks
    lines[9] = "{not json"
    path = jsonl(tmp_path / "m.jsonl", lines)
    calls: list[int] = []

    def crash_after_first_chunk(stored: int) -> None:
        calls.append(stored)
        raise Crash

    with pytest.raises(Crash):
        ingest(engine, path, chunk_size=4, progress=crash_after_first_chunk)
    assert calls == [4]
    [partial] = [b for b in [batch(engine, b_id) for b_id in _batch_ids(engine)]]
    assert (partial["ingested"], partial["total"]) == (False, 4)
    assert [r["seq"] for r in jobs(engine, partial["id"])] == [1, 2, 3, 4]

    seen: list[int] = []
    result = ingest(engine, path, chunk_size=4, progress=seen.append)
    assert (result.batch_id, result.created, result.resumed) == (partial["id"], False, True)
    assert seen == [8, 11]
    rows = jobs(engine, result.batch_id)
    assert [r["seq"] for r in rows] == list(range(1, 12))
    assert [r["line"] for r in rows if r["state"] == "invalid"] == [9, 10]
    assert rows[8]["error_message"] == "duplicate id 'r2' (first at line 2)"
    assert (result.total, result.invalid) == (11, 2)
    assert [line for line, _, _ in result.invalid_rows] == [9, 10]
    assert batch(engine, result.batch_id)["ingested"] is True
    assert ingest(engine, path).total == 11
    assert count(engine, JOBS) == 11


def test_resume_keeps_invalid_rows_stored_before_the_crash(engine: Engine,
                                                           tmp_path: Path) -> None:
    path = jsonl(tmp_path / "m.jsonl", [{"model": "Nope"}, {**JOY, "image": U},
                                        {**JOY, "image": U + "v"}])

    def crash(stored: int) -> None:
        raise Crash

    with pytest.raises(Crash):
        ingest(engine, path, chunk_size=1, progress=crash)
    result = ingest(engine, path, chunk_size=1)
    assert (result.total, result.invalid) == (3, 1)
    assert [line for line, _, _ in result.invalid_rows] == [1]


def test_exact_multiple_of_the_chunk_size(engine: Engine, tmp_path: Path) -> None:
    path = jsonl(tmp_path / "m.jsonl", [{**JOY, "image": f"{U}{i}"} for i in range(6)])
    seen: list[int] = []
    result = ingest(engine, path, chunk_size=3, progress=seen.append)
    assert seen == [3, 6]
    assert batch(engine, result.batch_id)["ingested"] is True
    assert [r["seq"] for r in jobs(engine, result.batch_id)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("name", ["captions.csv.gz", "captions.data"])
def test_gzipped_manifest(engine: Engine, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(
        b"image,caption_length\nhttps://e.test/u1,short\nhttps://e.test/u2,long\n"))
    result = ingest(engine, path, default_model=JOY["model"], default_task_type=JOY["task_type"])
    assert (result.total, result.invalid) == (2, 0)
    rows = jobs(engine, result.batch_id)
    assert rows[1]["input_json"] == '{"caption_length":"long","image":"https://e.test/u2"}'


def test_text_the_database_cannot_hold_never_breaks_an_ingest(engine: Engine,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text(
        json.dumps({**JOY, "id": "a\u0000b", "image": U}) + "\n"
        + json.dumps({"model": "No\u0000pe", "image": U}) + "\n"
        + '{"model": "Qubico/joycaption", "image": "\\ud800"}\n'
        + json.dumps({**JOY, "image": U + "nul \u0000 inside", "metadata": "m\u0000"}) + "\n"
        + '{"image": 1e400}\n',
    )
    result = ingest(engine, path, default_model=JOY["model"], default_task_type=JOY["task_type"])
    rows = jobs(engine, result.batch_id)
    assert [r["state"] for r in rows] == ["invalid", "invalid", "invalid", "queued", "invalid"]
    assert rows[0]["error_message"] == "field 'id' must not contain a NUL character"
    assert rows[1]["model"] == "No\ufffdpe"
    assert "surrogate" in rows[2]["error_message"]
    assert json.loads(rows[3]["input_json"]) == {"image": U + "nul \u0000 inside"}
    assert json.loads(rows[3]["metadata_json"]) == "m\u0000"
    assert "out of range" in rows[4]["error_message"]


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read manifest"),
    (b"", "is empty"),
    (b"a,a\n1,2\n", "appears twice"),
    (b"image,prompt\n", "has no data rows"),
])
def test_unreadable_manifest_writes_nothing(engine: Engine, tmp_path: Path,
                                            content: bytes | None, message: str) -> None:
    path = tmp_path / "m.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ManifestError, match=message):
        ingest(engine, path)
    assert count(engine, BATCHES) == 0


def test_a_manifest_cut_short_part_way_leaves_no_batch(engine: Engine, tmp_path: Path) -> None:
    """A truncated gzip reads well for a while, so some chunks are stored before the error:
    the batch this ingest created goes with them, as for a file that cannot be read at all
    (no batch stays `ingesting` for ever); once some row is being worked on, it is kept."""
    body = b"image\n" + b"".join(b"https://e.test/%d/%s.png\n" % (i, os.urandom(8).hex().encode())
                                 for i in range(5000))  # compresses little: cut past 64 KiB
    packed = gzip.compress(body)
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(packed[: len(packed) // 2])
    seen: list[int] = []
    with pytest.raises(ManifestError, match="cannot read manifest"):
        ingest(engine, path, default_model=JOY["model"], default_task_type=JOY["task_type"],
               chunk_size=100, progress=seen.append)
    assert seen, "chunks were stored before the error"
    assert (count(engine, BATCHES), count(engine, JOBS)) == (0, 0)


def _batch_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [str(b) for b in conn.execute(select(BATCHES.c.id)).scalars()]


# --- models the catalogue does not know: passed through unchecked, --strict, service modes --

DIFF = {"model": "Qubico/diffrhythm", "task_type": "txt2audio-base"}


def mixed(tmp_path: Path, name: str = "mixed.jsonl") -> Path:
    return jsonl(tmp_path / name, [
        {**JOY, "id": "cap", "image": "https://example.com/1.jpg"},
        {**DIFF, "id": "song1", "lyrics": "[00:01.00]la", "style_prompt": "jazz", "n": 5},
        {**DIFF, "id": "song2", "input": {"lyrics": "x", "extra": {"a": [1]}},
         "service_mode": "private"},
        {"id": "bad", "model": "kling", "task_type": "text_to_video", "prompt": "p"},
    ])


def test_unknown_models_are_queued_unchecked_and_reported(engine: Engine,
                                                         tmp_path: Path) -> None:
    result = ingest(engine, mixed(tmp_path), default_service_mode="public")
    rows = jobs(engine, result.batch_id)
    assert [(r["row_key"], r["state"], r["unchecked"], r["service_mode"]) for r in rows] == [
        ("cap", "queued", None, "public"), ("song1", "queued", True, "public"),
        ("song2", "queued", True, "private"), ("bad", "invalid", None, None)]
    assert json.loads(rows[1]["input_json"]) == {"lyrics": "[00:01.00]la",
                                                 "style_prompt": "jazz", "n": 5}
    assert json.loads(rows[2]["input_json"]) == {"lyrics": "x", "extra": {"a": [1]}}
    assert "unknown task_type 'text_to_video' for model 'kling'" in rows[3]["error_message"]
    assert result.unchecked == [("Qubico/diffrhythm", "txt2audio-base", 2)]
    assert result.service_mode == "public"
    assert unchecked_lines(result) == [
        "model Qubico/diffrhythm task type txt2audio-base is not in piapi-bulk's catalogue: "
        "2 rows will be sent unchecked (--strict refuses them)"]
    again = ingest(engine, mixed(tmp_path))  # the existing batch: counted from the record
    assert (again.batch_id, again.created) == (result.batch_id, False)
    assert again.unchecked == result.unchecked and again.service_mode == "public"

    st = batch_status(engine, result.batch_id)
    assert st is not None and st.unchecked == 2 and st.to_json()["unchecked"] == 2
    lines = list(iter_results(engine, result.batch_id))
    assert [line.get("unchecked") for line in lines] == [None, True, True, None]
    assert "unchecked" not in lines[0] and "unchecked" not in lines[3]


def test_strict_makes_unknown_models_invalid(engine: Engine, tmp_path: Path) -> None:
    result = ingest(engine, mixed(tmp_path), strict=True)
    rows = jobs(engine, result.batch_id)
    assert [r["state"] for r in rows] == ["queued", "invalid", "invalid", "invalid"]
    assert rows[1]["error_message"].startswith("unknown model 'Qubico/diffrhythm' (known: ")
    assert {r["unchecked"] for r in rows} == {None}
    assert (result.invalid, result.unchecked, unchecked_lines(result)) == (3, [], [])
    assert option_conflict(engine, result, strict=True, service_mode=None) is None


def test_options_that_cannot_apply_to_an_existing_batch(engine: Engine, tmp_path: Path) -> None:
    first = ingest(engine, mixed(tmp_path), default_service_mode="public")
    assert option_conflict(engine, first, strict=True, service_mode="private") is None  # new
    again = ingest(engine, mixed(tmp_path), default_service_mode="private", strict=True)
    assert again.batch_id == first.batch_id
    assert [r["service_mode"] for r in jobs(engine, first.batch_id)][:2] == ["public"] * 2
    assert option_conflict(engine, again, strict=False, service_mode=None) is None
    assert option_conflict(engine, again, strict=False, service_mode="public") is None
    assert option_conflict(engine, again, strict=False, service_mode="private") == (
        f"batch {first.batch_id} was ingested with --service-mode public; its rows keep the "
        "service mode they were stored with: run it again with the same option")
    assert option_conflict(engine, again, strict=True, service_mode=None) == (
        f"--strict: batch {first.batch_id} was ingested without it and still has 2 unchecked "
        f"row(s) to run; cancel it (piapi-bulk cancel {first.batch_id}) or run it without "
        "--strict")
    with engine.begin() as conn:  # once the unchecked rows have ended, --strict is harmless
        conn.execute(update(JOBS).where(JOBS.c.unchecked.is_not(None)).values(state="completed"))
    assert option_conflict(engine, again, strict=True, service_mode=None) is None


def test_an_older_database_gains_the_unchecked_and_service_mode_columns(
        engine: Engine, tmp_path: Path) -> None:
    with engine.begin() as conn:  # the schema as the previous version made it, before Alembic
        conn.execute(text("DROP TABLE alembic_version"))
        for column in ("unchecked", "service_mode"):
            conn.execute(text(f"ALTER TABLE jobs DROP COLUMN {column}"))
        conn.execute(text("ALTER TABLE batches DROP COLUMN service_mode"))
        add_old_batch(conn, "queued")
    create_tables(engine)
    st = batch_status(engine, "old")
    assert st is not None and st.unchecked == 0
    [line] = list(iter_results(engine, "old"))
    assert "unchecked" not in line
    result = ingest(engine, mixed(tmp_path))  # a new batch on the upgraded schema
    assert result.unchecked == [("Qubico/diffrhythm", "txt2audio-base", 2)]
