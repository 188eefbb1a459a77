"""The dispatcher's opt-in per-pass line: statements counted per pass, nothing else kept."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, text

from scheduler.dispatcher import PassResult
from scheduler.passstats import PassStats


def test_each_pass_gets_its_own_statement_count(tmp_path: Path) -> None:
    engine = create_engine("sqlite://")
    path = tmp_path / "stats.jsonl"
    stats = PassStats(engine, path)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.execute(text("SELECT 2"))
    stats.record(PassResult(submits=3, took_s=0.004, housekept=True))
    stats.record(PassResult(polls=1))
    stats.close()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert (first["statements"], first["housekept"], first["submits"]) == (2, True, 3)
    assert first["took_s"] == 0.004
    assert (second["statements"], second["polls"]) == (0, 1)
    assert set(first) == {"t", "took_s", "statements", "housekept", "submits", "polls",
                          "in_flight", "limit"}
