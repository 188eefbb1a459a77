"""`piapi-bulk forget`: a batch, its rows and their attempts go; refused while in flight."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from scheduler.forget import forget
from tests.integration.e2e import add_batch, db_env, piapi_bulk, set_jobs
from workers.models import ATTEMPTS, BATCHES, JOBS
from workers.settings import ConfigError
from workers.states import AttemptState

NOW = 2_000_000.0


def add_attempts(engine: Engine, job_ids: list[int], **values: Any) -> None:
    with engine.begin() as conn:
        for n, job_id in enumerate(job_ids, 1):
            conn.execute(ATTEMPTS.insert().values(job_id=job_id, n=1, state=AttemptState.COMPLETED,
                                                  task_id=f"t{job_id}-{n}", started_at=NOW,
                                                  **values))


def counts(engine: Engine) -> tuple[int, int, int]:
    with engine.connect() as conn:
        return tuple(int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                     for t in (BATCHES, JOBS, ATTEMPTS))  # type: ignore[return-value]


def batch_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(str(i) for i in conn.execute(select(BATCHES.c.id)).scalars())


def test_forget_removes_the_batch_its_rows_and_attempts_only(engine: Engine) -> None:
    gone_ids = add_batch(engine, "gone", rows=11)
    kept_ids = add_batch(engine, "kept", rows=4)
    add_attempts(engine, gone_ids[:5])
    add_attempts(engine, kept_ids[:2])
    set_jobs(engine, gone_ids[0], state="completed")
    set_jobs(engine, gone_ids[1], state="failed")
    set_jobs(engine, gone_ids[2], state="retry_wait")
    # an abandoned task whose watch ended, and a lease that ran out: not in flight
    with engine.begin() as conn:
        conn.execute(ATTEMPTS.insert().values(job_id=gone_ids[3], n=2, state=AttemptState.ABANDONED,
                                              started_at=NOW, watch_until=NOW - 1))
    set_jobs(engine, gone_ids[4], lease_until=NOW - 1, lease_epoch="e")
    set_jobs(engine, kept_ids[0], state="running")  # another batch's tasks are no obstacle

    result = forget(engine, "gone", now=NOW, chunk_rows=3)  # four chunks
    assert (result.batch_id, result.rows, result.attempts, result.left) == ("gone", 11, 6, 0)
    assert result.summary() == "forgot batch gone (t.jsonl): 11 row(s), 6 attempt(s) removed"
    assert batch_ids(engine) == ["kept"]
    assert counts(engine) == (1, 4, 2)


@pytest.mark.parametrize("in_flight", [
    {"state": "submitting"}, {"state": "running"}, {"state": "ambiguous"},
    {"lease_until": NOW + 30, "lease_epoch": "e"},  # a message is out for a queued row
    "watched",  # a completed row whose abandoned stuck task is still watched
])
def test_forget_refuses_while_a_task_is_in_flight(engine: Engine,
                                                  in_flight: dict[str, Any] | str) -> None:
    ids = add_batch(engine, "busy", rows=5)
    add_attempts(engine, ids[:2])
    if in_flight == "watched":
        set_jobs(engine, ids[3], state="completed")
        with engine.begin() as conn:
            conn.execute(ATTEMPTS.insert().values(job_id=ids[3], n=2, state=AttemptState.ABANDONED,
                                                  started_at=NOW, watch_until=NOW + 600))
    else:
        assert isinstance(in_flight, dict)
        set_jobs(engine, ids[3], **in_flight)
    before = counts(engine)
    with pytest.raises(ConfigError) as refused:
        forget(engine, "busy", now=NOW)
    assert str(refused.value) == (
        "batch busy has 1 task(s) in flight; cancel it first (piapi-bulk cancel busy) and "
        "forget it once they have ended")
    assert counts(engine) == before
    with engine.connect() as conn:  # still open: nothing was changed
        done, mode = conn.execute(select(BATCHES.c.done, BATCHES.c.cancel_mode)).one()
    assert (bool(done), mode) == (False, None)


def test_forget_an_unknown_batch(engine: Engine) -> None:
    with pytest.raises(ConfigError, match=r"^no batch nope$"):
        forget(engine, "nope")


@pytest.mark.integration  # `piapi-bulk forget` runs as a process
def test_forget_and_delete_on_the_command_line(engine: Engine, tmp_path: Path,
                                               database_url: str) -> None:
    add_attempts(engine, add_batch(engine, "b1", rows=3))
    add_batch(engine, "b2", rows=2)
    env = db_env(tmp_path, database_url)

    done = piapi_bulk(tmp_path, env, "forget", "b1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "forgot batch b1 (t.jsonl): 3 row(s), 3 attempt(s) removed\n"
    again = piapi_bulk(tmp_path, env, "forget", "b1")
    assert (again.returncode, again.stderr) == (2, "piapi-bulk: no batch b1\n")
    alias = piapi_bulk(tmp_path, env, "delete", "b2")
    assert alias.returncode == 0 and "forgot batch b2" in alias.stdout
    assert counts(engine) == (0, 0, 0)
