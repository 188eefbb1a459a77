"""`piapi-bulk status`: the database, then each batch newest first, done read from the rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine

from scheduler.status import masked_url
from tests.integration.e2e import (
    RECORD_T0,
    add_batch,
    caption_rows,
    db_env,
    piapi_bulk,
    set_jobs,
    write_jsonl,
)
from workers.db import exclusive, make_engine, transaction
from workers.migrate import HEAD
from workers.models import BATCHES

pytestmark = pytest.mark.integration  # `piapi-bulk status` runs as a process


def set_batch(engine: Engine, batch_id: str, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(**values))


def status(tmp_path: Path, database_url: str, *args: str) -> str:
    """What `piapi-bulk status ARGS` prints for this database (it must succeed)."""
    done = piapi_bulk(tmp_path, db_env(tmp_path, database_url), "status", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def fill(engine: Engine) -> None:
    """Four batches: one whose rows all ended (the dispatcher never marked it done), one
    running, one waiting for a fleet, and one whose ingest stopped part-way."""
    old = add_batch(engine, "old", rows=3)
    set_jobs(engine, *old, state="completed", usage_consume=100_000)
    set_jobs(engine, *old[2:], model="Wan", task_type="wan26-txt2video", state="failed",
             error_kind="provider", usage_consume=None)
    run = add_batch(engine, "running", rows=2)
    set_jobs(engine, *run[:1], state="running")
    add_batch(engine, "waiting", rows=2)
    part = add_batch(engine, "partial", rows=1)
    set_jobs(engine, *part, state="completed")
    for n, (batch_id, source) in enumerate([
            ("old", "/data/captions.csv"), ("running", "/data/more.csv"),
            ("waiting", "/data/" + "deep/" * 30 + "video.jsonl"),
            ("partial", "/data/part.jsonl")]):
        set_batch(engine, batch_id, created_at=RECORD_T0 + 3600 * n, source=source)
    set_batch(engine, "partial", ingested=False)


def test_status_json_done_is_read_from_the_rows(engine: Engine, tmp_path: Path,
                                               database_url: str) -> None:
    fill(engine)
    out = json.loads(status(tmp_path, database_url, "--json"))
    assert out["database"] == masked_url(database_url)
    by_id = {b["id"]: b for b in out["batches"]}
    assert [b["id"] for b in out["batches"]] == ["partial", "waiting", "running", "old"]
    assert {k: (b["done"], b["phase"]) for k, b in by_id.items()} == {
        "old": (True, "done"), "running": (False, "running"), "waiting": (False, "waiting"),
        "partial": (False, "ingesting")}
    old = by_id["old"]
    assert old["models"] == [
        {"model": "Qubico/joycaption", "task_type": "joycaption-beta-one", "rows": 2},
        {"model": "Wan", "task_type": "wan26-txt2video", "rows": 1}]
    for key in ("id", "source", "total", "counts", "finished", "done", "usd", "created_at",
                "budget_usd", "spent_usd", "paused", "deadline_at", "cancelled",
                "cancelled_at", "unchecked", "failures", "abandoned", "watched", "on_stuck"):
        assert key in old, key  # other tools read these
    assert (old["finished"], old["usd"], old["failures"]) == (3, 0.02, {"provider": 1})
    assert "doctor" in out
    one = json.loads(status(tmp_path, database_url, "old", "--json"))
    assert [b["id"] for b in one["batches"]] == ["old"] and one["batches"][0]["done"] is True


def test_status_for_people(engine: Engine, tmp_path: Path, database_url: str) -> None:
    fill(engine)
    lines = status(tmp_path, database_url).splitlines()
    assert lines[0] == f"database: {masked_url(database_url)}"
    # Every line but the database's (a path as long as the file system makes it) fits 100
    # columns.
    assert all(len(line) <= 100 for line in lines[1:]), max(lines[1:], key=len)
    heads = [line for line in lines if not line.startswith(("  ", "database:"))]
    assert [h.split()[:2] for h in heads] == [["partial", "ingesting"], ["waiting", "waiting"],
                                              ["running", "running"], ["old", "done"]]
    assert heads[3].endswith("  /data/captions.csv")
    assert heads[1].endswith("/deep/deep/video.jsonl") and "..." in heads[1]
    old = lines[lines.index(heads[3]):]
    assert old[1] == ("  models: Qubico/joycaption joycaption-beta-one (2), "
                      "Wan wan26-txt2video (1)")
    assert old[2] == "  3/3 finished: completed 2, failed 1; cost $0.02"
    assert old[3] == "  failed: provider 1"


def test_status_says_the_fleet_is_halted(engine: Engine, tmp_path: Path,
                                         database_url: str) -> None:
    """A fleet halted by a refused key creates nothing: status says so first (a standing
    fleet's operator saw batches `waiting` with no reason), in JSON too."""
    from workers.halt import clear_halt, named, set_halt

    fill(engine)
    set_halt(engine, "HTTP 401: Invalid API key", RECORD_T0)
    lines = status(tmp_path, database_url).splitlines()
    assert lines[1].startswith("fleet halted since ")
    assert f"{named('HTTP 401: Invalid API key')}. No task is created until PiAPI accepts the " \
        "key" in lines[1]
    found = json.loads(status(tmp_path, database_url, "--json"))
    assert found["halted"] == {"reason": named("HTTP 401: Invalid API key"), "since": RECORD_T0}
    clear_halt(engine)
    assert json.loads(status(tmp_path, database_url, "--json"))["halted"] is None
    assert "halted" not in status(tmp_path, database_url)


def test_status_of_an_empty_database(tmp_path: Path, database_url: str) -> None:
    assert status(tmp_path, database_url).splitlines()[1:] == ["no batches"]


def test_what_only_reads_answers_while_a_writer_holds_the_database(
        engine: Engine, tmp_path: Path, database_url: str) -> None:
    """A worker frozen inside a write transaction (SIGSTOP, a debugger) holds the database
    until the stall watch restarts it: the commands that only read (`status`, `export`,
    `db current`, `estimate`'s learned durations) still answer. On SQLite the holder has
    the gate's flock and the write lock, which made each of them wait forever."""
    fill(engine)
    holder = make_engine(database_url)
    try:
        with exclusive(holder), transaction(holder) as conn:
            conn.execute(update(BATCHES).where(BATCHES.c.id == "old").values(source="/held"))
            out = json.loads(piapi_bulk(tmp_path, db_env(tmp_path, database_url), "status",
                                        "--json", timeout_s=30).stdout)
            assert {b["id"] for b in out["batches"]} == {"partial", "waiting", "running", "old"}
            assert {b["source"] for b in out["batches"] if b["id"] == "old"} == {
                "/data/captions.csv"}  # the holder's change is not committed
            done = piapi_bulk(tmp_path, db_env(tmp_path, database_url), "export", "old",
                              "-o", str(tmp_path / "old.jsonl"), timeout_s=30)
            assert done.returncode == 0, done.stderr
            assert len((tmp_path / "old.jsonl").read_text().splitlines()) == 3
            done = piapi_bulk(tmp_path, db_env(tmp_path, database_url), "db", "current",
                              timeout_s=30)
            assert (done.returncode, done.stdout) == (0, f"{HEAD} (head)\n"), done.stderr
            write_jsonl(tmp_path / "rows.jsonl", caption_rows(2))
            done = piapi_bulk(tmp_path, db_env(tmp_path, database_url), "estimate", "--json",
                              "rows.jsonl", timeout_s=30)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["durations_note"] is None  # the database was read
    finally:
        holder.dispose()
