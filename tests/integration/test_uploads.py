"""Local files as inputs, end to end on real parts: a folder captioned with its captions
written as sidecar files, local files in a manifest, a plan that refuses uploads, and an
upload that fails before it succeeds. Checked against the emulator's ledger (every
upload just before its row's create, the create carrying the uploaded URL), the files on
disk and the database's attempts."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.helpers import Emulator, MakeEmulator, opened, png_bytes
from tests.integration.e2e import (
    finish,
    piapi_bulk,
    read_results,
    run_env,
    start_run,
)
from workers.models import ATTEMPTS, JOBS
from workers.piapi import MAX_UPLOAD_BYTES

pytestmark = pytest.mark.integration

JOY = ["--model", "Qubico/joycaption", "--task-type", "joycaption-beta-one"]
FAST = ["--time-scale", "0.005", "--concurrency", "50", "--seed", "7"]
JUST_BEFORE_S = 10.0
"""Most seconds between a row's upload and its create (they are one message's work)."""
CLOCKS_S = 0.05
"""How far the emulator's clock and the worker's (one machine) may disagree."""


def _t(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")[:26] + "+00:00").timestamp()


def _run(emu: Emulator, tmp_path: Path, database_url: str, *args: str,
         timeout_s: float = 120) -> tuple[int, str]:
    env = run_env(tmp_path, emu, database_url)
    code = finish(start_run(tmp_path, env, *args), timeout_s)
    return code, (tmp_path / "run.out").read_text()


def _uploads_before_creates(emu: Emulator, results: list[dict[str, Any]]) -> None:
    """Each completed row with a local file: its create carried a URL uploaded just before
    it, of its own file."""
    uploads = {u["url"]: u for u in emu.uploads()}
    tasks = {t["task_id"]: t for t in emu.ledger()}
    for row in (r for r in results if r["status"] == "completed"
                and r["input"]["image"].startswith("/")):
        task = tasks[row["task_id"]]
        upload = uploads[task["input"]["image"]]
        assert upload["file_name"] == Path(row["input"]["image"]).name
        gap = _t(task["created_at"]) - _t(upload["uploaded_at"])
        assert 0 <= gap < JUST_BEFORE_S, (row["id"], gap)


def _attempt_urls(database_url: str) -> dict[str, list[tuple[str, str | None, float]]]:
    """Per row id: each attempt's state, upload_urls and start (its claim), in order."""
    with opened(database_url) as engine, engine.connect() as conn:
        rows = conn.execute(select(JOBS.c.row_key, ATTEMPTS.c.state, ATTEMPTS.c.upload_urls,
                                   ATTEMPTS.c.started_at)
                            .join(ATTEMPTS, ATTEMPTS.c.job_id == JOBS.c.id)
                            .order_by(JOBS.c.seq, ATTEMPTS.c.n)).all()
    found: dict[str, list[tuple[str, str | None, float]]] = {}
    for key, state, urls, started in rows:
        found.setdefault(str(key), []).append((str(state), urls, float(started)))
    return found


def test_a_folder_is_captioned_with_sidecars(tmp_path: Path, database_url: str,
                                             make_emulator: MakeEmulator) -> None:
    photos = tmp_path / "photos"
    for i in range(200):
        path = photos / f"set{i % 4}" / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(2, 2, i))
    (photos / ".thumb.png").write_bytes(png_bytes())
    (photos / "notes.txt").write_text("not an image")
    with (photos / "huge.png").open("wb") as f:  # an image over 10 MB (sparse on disk)
        f.write(png_bytes())
        f.truncate(MAX_UPLOAD_BYTES + 1)
    emu = make_emulator(*FAST)
    args = ["photos", *JOY, "--set", "prompt_style=descriptive", "--captions-as-sidecar",
            "-o", "out.jsonl"]
    code, out = _run(emu, tmp_path, database_url, *args)
    assert code == 1, out  # one row invalid
    assert "2 files skipped (hidden, or not an image)" in out
    results = read_results(tmp_path / "out.jsonl")
    by_id = {r["id"]: r for r in results}
    assert len(results) == 201
    huge = by_id["huge.png"]
    assert huge["status"] == "invalid"
    message = huge["error"]["message"]  # a long path is shortened in the middle
    assert message.startswith("field 'image': local file "), message
    assert message.endswith("huge.png is 10.5 MB; PiAPI uploads take at most 10 MB"), message
    done = [r for r in results if r["status"] == "completed"]
    assert len(done) == 200
    first = by_id["set0/img000.png"]
    assert first["input"] == {"image": str(photos / "set0/img000.png"),
                              "prompt_style": "descriptive"}  # the path, as the user gave it
    # The ledger: one upload and one create per image, the create just after its upload
    # and carrying its URL; nothing for the huge file.
    ledger = emu.ledger()
    assert len(ledger) == 200 and len(emu.uploads()) == 200
    assert "huge.png" not in {u["file_name"] for u in emu.uploads()}
    _uploads_before_creates(emu, results)
    # The record: each row's attempt holds the URL its create sent, uploaded after the
    # row was claimed (not at ingest, not while it waited).
    tasks = {t["task_id"]: t for t in ledger}
    uploaded = {u["url"]: _t(u["uploaded_at"]) for u in emu.uploads()}
    attempts = _attempt_urls(database_url)
    for row in done:
        (state, urls, claimed), = attempts[row["id"]]
        url = tasks[row["task_id"]]["input"]["image"]
        assert state == "completed" and json.loads(urls or "{}") == {"image": url}
        assert claimed - CLOCKS_S <= uploaded[url], row["id"]
    # The sidecars: the caption next to each image, nothing else.
    sidecars = sorted(photos.rglob("*.txt"))
    assert len(sidecars) == 201  # 200 captions and notes.txt
    for row in done:
        caption = Path(row["input"]["image"]).with_suffix(".txt").read_text()
        assert caption == row["output"]["text"] and caption
    assert not (photos / "huge.txt").exists()
    assert (photos / "notes.txt").read_text() == "not an image"
    # Running the same command again resumes the same batch: nothing sent, nothing rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in sidecars}
    code, out = _run(emu, tmp_path, database_url, *args)
    assert code == 1 and "resuming batch" in out, out
    assert "captions: 0 sidecar .txt files written, 200 already up to date" in out
    assert len(emu.ledger()) == 200 and len(emu.uploads()) == 200
    assert {p: p.stat().st_mtime_ns for p in sidecars} == stamps


def test_sidecars_never_cost_a_caption_or_a_users_file(tmp_path: Path, sqlite_url: str,
                                                      make_emulator: MakeEmulator) -> None:
    """Two images sharing a name apart from the extension get a sidecar each
    (`<name>.<extension>.txt`), not one file both write; a `.txt` already there with other
    text (a caption edited by hand) is left as it is, and said so, until
    --overwrite-sidecars asks for it to be replaced."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, name in enumerate(["cat.png", "dup.png", "dup.jpg", "mine.png"]):
        (photos / name).write_bytes(png_bytes(2, 2, i))  # dup.jpg: a PNG named .jpg
    (photos / "mine.txt").write_text("my own words")
    emu = make_emulator(*FAST)
    args = ["photos", *JOY, "--captions-as-sidecar", "-o", "out.jsonl"]
    code, out = _run(emu, tmp_path, sqlite_url, *args)
    assert code == 0, out
    text = {r["id"]: r["output"]["text"] for r in read_results(tmp_path / "out.jsonl")}
    assert len(set(text.values())) == 4, text  # four different captions
    assert (photos / "cat.txt").read_text() == text["cat.png"]
    assert (photos / "dup.png.txt").read_text() == text["dup.png"]
    assert (photos / "dup.jpg.txt").read_text() == text["dup.jpg"]
    assert not (photos / "dup.txt").exists()
    assert (photos / "mine.txt").read_text() == "my own words"
    assert "captions: 3 sidecar .txt files written, 0 already up to date" in out, out
    assert (f"captions: 1 left as they were, a .txt with other text being there already "
            f"({photos / 'mine.txt'}); --overwrite-sidecars replaces them") in out, out
    assert (f"captions: 2 written as <image file name>.txt ({photos / 'dup.jpg.txt'}, ...), "
            "as another image in the folder has the same name") in out, out
    # export asked to replace: the file is the caption now, and the others are left alone.
    batch = json.loads(piapi_bulk(tmp_path, run_env(tmp_path, emu, sqlite_url), "status",
                                  "--json").stdout)["batches"][0]["id"]
    done = piapi_bulk(tmp_path, run_env(tmp_path, emu, sqlite_url), "export", batch, "-o",
                      "again.jsonl", "--captions-as-sidecar", "--overwrite-sidecars")
    assert done.returncode == 0, done.stderr
    assert "captions: 1 sidecar .txt files written, 3 already up to date" in done.stderr
    assert (photos / "mine.txt").read_text() == text["mine.png"]
    assert len(emu.ledger()) == 4
    # An edited image is captioned again (not its old twin), and the sidecar piapi-bulk
    # wrote for it before takes the new caption; a PNG named e.dat is an image beside
    # e.png, and an image with no extension is no renamed sidecar.
    (photos / "cat.png").write_bytes(png_bytes(3, 3, 99))
    (photos / "e.png").write_bytes(png_bytes(2, 2, 50))
    (photos / "e.dat").write_bytes(png_bytes(2, 2, 51))
    (photos / "noext").write_bytes(png_bytes(2, 2, 52))
    code, out = _run(emu, tmp_path, sqlite_url, *args)
    assert code == 0, out
    out = out[out.rindex("new batch"):]  # this run's lines
    assert "skipped" not in out, out  # the captions beside the images are no files skipped
    again = {r["id"]: r for r in read_results(tmp_path / "out.jsonl")}
    assert "reused_from" not in again["cat.png"] and again["cat.png"]["output"]["text"] != \
        text["cat.png"]
    assert all("reused_from" in again[k] for k in ("dup.png", "dup.jpg", "mine.png"))
    assert (photos / "cat.txt").read_text() == again["cat.png"]["output"]["text"]
    assert (photos / "e.png.txt").read_text() == again["e.png"]["output"]["text"]
    assert (photos / "e.dat.txt").read_text() == again["e.dat"]["output"]["text"]
    assert (photos / "noext.txt").read_text() == again["noext"]["output"]["text"]
    assert not (photos / "e.txt").exists()
    assert "captions: 4 sidecar .txt files written, 3 already up to date" in out, out
    assert "captions: 4 written as <image file name>.txt" in out, out  # dup (2), e (2)
    assert "left as they were" not in out, out
    assert len(emu.ledger()) == 8


def _csv(path: Path, lines: list[str]) -> Path:
    path.write_text("id,image\n" + "".join(f"{line}\n" for line in lines))
    return path


def test_local_files_in_a_manifest(tmp_path: Path, sqlite_url: str,
                                   make_emulator: MakeEmulator) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "cat.png").write_bytes(png_bytes(3, 3, 1))
    (tmp_path / "img" / "dog.jpg").write_bytes(png_bytes(3, 3, 2))  # named .jpg, a PNG
    (tmp_path / "img" / "fake.png").write_text("plain text")
    _csv(tmp_path / "m.csv", [
        "rel,img/cat.png", f"uri,{(tmp_path / 'img' / 'dog.jpg').as_uri()}",
        "missing,img/none.png", "fake,img/fake.png", "url,https://example.test/a.png"])
    emu = make_emulator(*FAST)
    code, out = _run(emu, tmp_path, sqlite_url, "m.csv", *JOY, "-o", "out.jsonl")
    assert code == 1, out
    by_id = {r["id"]: r for r in read_results(tmp_path / "out.jsonl")}
    assert [by_id[k]["status"] for k in ("rel", "uri", "url")] == ["completed"] * 3
    assert by_id["rel"]["input"]["image"] == str(tmp_path / "img" / "cat.png")
    assert by_id["uri"]["input"]["image"] == str(tmp_path / "img" / "dog.jpg")
    assert (by_id["missing"]["line"], by_id["missing"]["error"]["message"]) == (
        4, "field 'image': local file img/none.png: no such file")
    assert (by_id["fake"]["line"], by_id["fake"]["error"]["message"]) == (
        5, "field 'image': local file img/fake.png is not an image, video or audio file "
           "(by its content)")
    assert "line 4 (id missing): field 'image': local file img/none.png: no such file" in out
    assert sorted(u["file_name"] for u in emu.uploads()) == ["cat.png", "dog.jpg"]
    assert len(emu.ledger()) == 3  # nothing created for the invalid rows
    _uploads_before_creates(emu, list(by_id.values()))


def test_a_plan_without_uploads_fails_the_local_rows_only(
        tmp_path: Path, sqlite_url: str, make_emulator: MakeEmulator) -> None:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(png_bytes())
    _csv(tmp_path / "m.csv", ["a,a.png", "url,https://example.test/u.png", "b,b.png"])
    emu = make_emulator(*FAST, "--upload-plan", "free")
    code, out = _run(emu, tmp_path, sqlite_url, "m.csv", *JOY, "-o", "out.jsonl")
    assert code == 1, out
    by_id = {r["id"]: r for r in read_results(tmp_path / "out.jsonl")}
    assert by_id["url"]["status"] == "completed"  # the fleet was not halted
    for key in ("a", "b"):
        assert by_id[key]["status"] == "failed"
        assert by_id[key]["error"] == {
            "kind": "account", "message": "uploads need the Creator plan or higher "
                                          "(PiAPI said: Insufficient plan level)"}
    assert [t["input"]["image"] for t in emu.ledger()] == ["https://example.test/u.png"]
    assert emu.uploads() == [] and emu.stats()["requests"]["upload"] == 2  # one try each


def test_an_upload_that_fails_is_retried_and_the_create_sent_once(
        tmp_path: Path, sqlite_url: str, make_emulator: MakeEmulator) -> None:
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(2, 2, i))
    _csv(tmp_path / "m.csv", [f"r{i},{i}.png" for i in range(3)])
    emu = make_emulator(*FAST, "--upload-fail-first", "4")
    code, out = _run(emu, tmp_path, sqlite_url, "m.csv", *JOY, "-o", "out.jsonl")
    assert code == 0, out
    results = read_results(tmp_path / "out.jsonl")
    assert all(r["status"] == "completed" and r["attempts"] == 1 for r in results)
    ledger = emu.ledger()
    assert sorted(t["task_id"] for t in ledger) == sorted(r["task_id"] for r in results)
    assert emu.stats()["requests"]["upload"] == 7 and len(emu.uploads()) == 3
    _uploads_before_creates(emu, results)
    # The 503s were refusals before any POST: refused attempts with no URL, then one that
    # carried its upload to a create.
    attempts = _attempt_urls(sqlite_url)
    assert sum(len(a) for a in attempts.values()) == 7
    for key, tries in attempts.items():
        *refused, (state, urls, _) = tries
        assert all(s == "refused" and u is None for s, u, _ in refused), key
        assert state == "completed" and urls is not None
