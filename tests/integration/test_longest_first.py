"""Longest expected rows first, on SQLite and PostgreSQL: ingest stores each row's expected
duration (`jobs.priority`), the dispatcher's lease takes queued rows longest first (ties in
manifest order), the results file keeps manifest order, and the lease reads its rows off
the partial index in that order (no sort of the backlog, no scan of the table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from scheduler.export import export
from scheduler.ingest import ingest
from workers import leases
from workers.db import transaction
from workers.models import JOBS

NOW, LEASE = 1_000.0, 60.0
WAN = {"model": "Wan", "task_type": "wan26-txt2video"}
CAPTION = {"model": "Qubico/joycaption", "task_type": "joycaption-beta-one"}

ROWS: list[tuple[str, dict[str, Any]]] = [
    ("a-5s", {**WAN, "input": {"prompt": "a", "duration": 5}}),
    ("b-caption", {**CAPTION, "input": {"image": "https://x.test/b.jpg"}}),
    ("c-10s", {**WAN, "input": {"prompt": "c", "duration": 10}}),
    ("d-bad", {**WAN, "input": {"prompt": "d", "duration": 7}}),  # invalid: 5/10/15 only
    ("e-15s", {**WAN, "input": {"prompt": "e", "duration": 15}}),
    ("f-5s", {**WAN, "input": {"prompt": "f", "duration": 5}}),
    ("g-10s-1080", {**WAN, "input": {"prompt": "g", "duration": 10, "resolution": "1080P"}}),
    ("h-10s", {**WAN, "input": {"prompt": "h", "duration": 10}}),
]
LONGEST_FIRST = ["g-10s-1080", "e-15s", "c-10s", "h-10s", "a-5s", "f-5s", "b-caption"]
"""Expected 540, 540, 360, 360, 180, 180 and 30 s (Wan's prior 180 s for 5 s at 720P, x1.5
at 1080P; a caption 30 s): ties in manifest order."""


def _manifest(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": key, **row}) + "\n" for key, row in ROWS))
    return path


def _keys(engine: Engine, ids: list[int]) -> list[str]:
    with transaction(engine) as conn:
        found = dict(conn.execute(select(JOBS.c.id, JOBS.c.row_key)
                                  .where(JOBS.c.id.in_(ids))).all())
    return [str(found[i]) for i in ids]


def test_queued_rows_are_leased_longest_first_and_results_keep_manifest_order(
        engine: Engine, tmp_path: Path) -> None:
    batch = ingest(engine, _manifest(tmp_path / "mixed.jsonl")).batch_id
    with transaction(engine) as conn:
        stored = dict(conn.execute(select(JOBS.c.row_key, JOBS.c.priority)).all())
    assert stored == {"a-5s": 180, "b-caption": 30, "c-10s": 360, "d-bad": 0, "e-15s": 540,
                      "f-5s": 180, "g-10s-1080": 540, "h-10s": 360}

    taken: list[list[str]] = []
    for _ in range(4):  # two at a time, as slots free up
        got = leases.lease_submits(engine, batch, 2, NOW, "e1", LEASE, retries=False)
        taken.append(sorted(_keys(engine, got), key=LONGEST_FIRST.index))
    assert [k for pair in taken for k in pair] == LONGEST_FIRST
    assert taken[-1] == ["b-caption"]  # the invalid row is never leased

    out = tmp_path / "results.jsonl"
    export(engine, batch, out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == [key for key, _ in ROWS]
    assert [line["line"] for line in lines] == list(range(1, len(ROWS) + 1))


def test_older_rows_without_a_priority_keep_manifest_order(engine: Engine,
                                                          tmp_path: Path) -> None:
    """Rows from before `jobs.priority` hold 0, all equal: the lease is manifest order."""
    batch = ingest(engine, _manifest(tmp_path / "mixed.jsonl")).batch_id
    with transaction(engine) as conn:
        conn.execute(JOBS.update().values(priority=0))
    got = leases.lease_submits(engine, batch, 3, NOW, "e1", LEASE, retries=False)
    assert _keys(engine, got) == ["a-5s", "b-caption", "c-10s"]


BACKLOG = 40_000
"""Rows of the plan test: a backlog big enough that the planners' choices are real."""


def _fill(engine: Engine) -> None:
    """`BACKLOG` rows of one batch (the first half finished), priorities mixed, analysed."""
    series = ("SELECT generate_series(1, :n) AS i" if engine.dialect.name == "postgresql" else
              "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) "
              "SELECT i FROM s")
    with transaction(engine) as conn:
        conn.execute(text("INSERT INTO batches (id, content_hash, source, created_at, "
                          "ingested, total, invalid, max_attempts, done, reuse) VALUES "
                          "('big', 'h', 'm.jsonl', 0, true, :n, 0, 3, false, true)"),
                     {"n": BACKLOG})
        conn.execute(text(
            "INSERT INTO jobs (batch_id, seq, line, row_key, model, task_type, state, "
            "attempts, posts, tries, retry_base, polls, poll_errors, created_at, priority) "
            f"SELECT 'big', i, i + 1, 'r' || i, 'Wan', 'wan26-txt2video', "
            "CASE WHEN i <= :half THEN 'completed' ELSE 'queued' END, "
            f"0, 0, 0, 0, 0, 0, 0, 180 * (1 + i % 3) FROM ({series}) AS s"),
            {"n": BACKLOG, "half": BACKLOG // 2})
        conn.execute(text("ANALYZE"))


def _plan(engine: Engine) -> str:
    """The planner's plan of the queued lease, as text."""
    params = {"p_batch": "big", "p_now": NOW, "p_epoch": "e1", "p_lease_until": NOW + LEASE,
              "p_limit": 20}
    compiled = leases._QUEUED.compile(dialect=engine.dialect)
    values = compiled.construct_params(params)
    args: Any = (tuple(values[k] for k in compiled.positiontup or ()) if compiled.positional
                 else values)
    explain = ("EXPLAIN " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN ")
    with transaction(engine) as conn:
        rows = conn.exec_driver_sql(explain + str(compiled), args).all()
    return "\n".join(str(r[-1]) for r in rows)


def test_the_queued_lease_walks_its_index_without_sorting_the_backlog(engine: Engine) -> None:
    _fill(engine)
    plan = _plan(engine)
    assert "ix_jobs_queued_priority" in plan, plan
    if engine.dialect.name == "postgresql":
        assert "Seq Scan" not in plan and "Sort" not in plan, plan
    else:
        assert "TEMP B-TREE" not in plan and "SCAN jobs" not in plan, plan
    got = leases.lease_submits(engine, "big", 3, NOW, "e1", LEASE, retries=False)
    with transaction(engine) as conn:
        leased = conn.execute(select(JOBS.c.seq, JOBS.c.priority)
                              .where(JOBS.c.id.in_(got)).order_by(JOBS.c.seq)).all()
    first = BACKLOG // 2 + 1
    highest = [s for s in range(first, BACKLOG + 1) if s % 3 == 2][:3]
    assert [tuple(r) for r in leased] == [(s, 540) for s in highest]
