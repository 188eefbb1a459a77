"""Paying once across batches, on a real database (SQLite and PostgreSQL): completed twins
reused by `reuse_completed` and `resolve_twins`, twins in flight waited for."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from scheduler.export import iter_results
from scheduler.ingest import canonical_json, fingerprint, ingest
from scheduler.status import batch_status
from tests.helpers import png_bytes
from tests.integration.e2e import add_old_batch, job, set_jobs
from workers.db import create_tables, session, transaction
from workers.models import Batch, Job
from workers.states import JobState
from workers.transitions.reuse import TWIN_WAIT_S, resolve_twins, reuse_completed

NOW = 2_000_000.0
WINDOW = 3600.0
JOY = ("Qubico/joycaption", "joycaption-beta-one")


def add(engine: Engine, batch_id: str, rows: list[tuple[str, dict[str, Any]]],
        reuse: bool = True) -> list[int]:
    """A batch of queued rows (row id, input) with their fingerprints, as ingest makes them."""
    with session(engine) as s:
        s.add(Batch(id=batch_id, content_hash=batch_id * 8, source=f"{batch_id}.jsonl",
                    created_at=NOW, ingested=True, total=len(rows), reuse=reuse))
        s.flush()
        jobs = []
        for seq, (key, value) in enumerate(rows, start=1):
            text = canonical_json(value)
            jobs.append(Job(batch_id=batch_id, seq=seq, line=seq, row_key=key, model=JOY[0],
                            task_type=JOY[1], input_json=text,
                            fingerprint=fingerprint(key, JOY[0], JOY[1], text)))
        s.add_all(jobs)
        s.flush()
        return [int(j.id) for j in jobs if j.id is not None]


def rows(n: int) -> list[tuple[str, dict[str, Any]]]:
    return [(f"img-{i}", {"image": f"https://example.test/{i}.png"}) for i in range(1, n + 1)]


def complete(engine: Engine, job_id: int, finished_at: float = NOW - 60) -> None:
    set_jobs(engine, job_id, state=JobState.COMPLETED.value, task_id=f"task-{job_id}",
            output_json=json.dumps({"text": f"caption {job_id}"}), remote_status="completed",
            usage_consume=100_000, usage_type="llm", attempts=1, posts=1,
            submitted_at=finished_at - 10, finished_at=finished_at)


def lease(engine: Engine, job_ids: list[int], epoch: str = "e1") -> None:
    for job_id in job_ids:
        set_jobs(engine, job_id, lease_until=NOW + 30, lease_epoch=epoch)


def test_a_completed_twin_is_reused_without_paying(engine: Engine) -> None:
    a = add(engine, "ba", rows(3))
    for job_id in a:
        complete(engine, job_id)
    b = add(engine, "bb", rows(4))
    assert reuse_completed(engine, "bb", NOW, WINDOW) == 3
    for original, job_id in zip(a, b, strict=False):
        row, paid = job(engine, job_id), job(engine, original)
        assert row.state == JobState.COMPLETED
        assert (row.task_id, row.output_json, row.remote_status, row.usage_type) == (
            paid.task_id, paid.output_json, paid.remote_status, paid.usage_type)
        assert row.usage_consume is None and row.reused_from == original
        assert row.finished_at == NOW and row.lease_until is None and row.attempts == 0
    assert job(engine, b[3]).state == JobState.QUEUED  # img-4 has no twin
    assert reuse_completed(engine, "bb", NOW, WINDOW) == 0  # nothing left to reuse
    status = batch_status(engine, "bb")
    assert status is not None and status.reused == 3 and status.usd == 0
    assert status.to_json()["reused"] == 3


def test_results_name_the_paid_for_batch_and_cost_nothing(engine: Engine) -> None:
    a = add(engine, "ba", rows(2))
    for job_id in a:
        complete(engine, job_id)
    add(engine, "bb", rows(3))
    reuse_completed(engine, "bb", NOW, WINDOW)
    lines = list(iter_results(engine, "bb"))
    assert [line["status"] for line in lines] == ["completed", "completed", "pending"]
    assert lines[0]["reused_from"] == {"batch": "ba", "task_id": f"task-{a[0]}"}
    assert lines[0]["usage"] == {"consume": 0, "usd": 0.0}
    assert lines[0]["output"] == {"text": f"caption {a[0]}"}
    assert "reused_from" not in lines[2]
    assert "reused_from" not in next(iter(iter_results(engine, "ba")))


def test_a_twin_older_than_the_window_is_not_reused(engine: Engine) -> None:
    [old, fresh] = add(engine, "ba", rows(2))
    complete(engine, old, finished_at=NOW - WINDOW - 1)
    complete(engine, fresh, finished_at=NOW - WINDOW + 1)
    b = add(engine, "bb", rows(2))
    assert reuse_completed(engine, "bb", NOW, WINDOW) == 1
    assert [job(engine, i).state for i in b] == [JobState.QUEUED, JobState.COMPLETED]


def test_another_row_id_or_input_is_not_a_twin(engine: Engine) -> None:
    for job_id in add(engine, "ba", rows(2)):
        complete(engine, job_id)
    # Same input under another id (a second sample), and the same id with another input.
    b = add(engine, "bb", [("other-1", rows(1)[0][1]), ("img-2", {"image": "https://x/y.png"})])
    assert reuse_completed(engine, "bb", NOW, WINDOW) == 0
    assert resolve_twins(engine, b, NOW, WINDOW) == b
    assert [job(engine, i).state for i in b] == [JobState.QUEUED, JobState.QUEUED]


def test_a_batch_with_reuse_off_is_not_replaced(engine: Engine) -> None:
    for job_id in add(engine, "ba", rows(2)):
        complete(engine, job_id)
    b = add(engine, "bb", rows(2), reuse=False)
    assert reuse_completed(engine, "bb", NOW, WINDOW) == 0
    lease(engine, b)
    assert resolve_twins(engine, b, NOW, WINDOW) == b
    assert {job(engine, i).state for i in b} == {JobState.QUEUED}


def test_a_dispatched_row_is_left_to_its_message(engine: Engine) -> None:
    [a] = add(engine, "ba", rows(1))
    complete(engine, a)
    [b] = add(engine, "bb", rows(1))
    lease(engine, [b])
    assert reuse_completed(engine, "bb", NOW, WINDOW) == 0
    assert reuse_completed(engine, "bb", NOW + 31, WINDOW) == 1  # the lease ran out


def test_reused_from_points_at_the_original_that_was_paid_for(engine: Engine) -> None:
    [a] = add(engine, "ba", rows(1))
    complete(engine, a)
    [b] = add(engine, "bb", rows(1))
    assert reuse_completed(engine, "bb", NOW, WINDOW) == 1
    assert job(engine, b).reused_from == a
    # The newest twin of the next batch's row is b, itself reused: a is what was paid for.
    [c] = add(engine, "bc", rows(1))
    lease(engine, [c])
    assert resolve_twins(engine, [c], NOW + 1, WINDOW) == []
    row = job(engine, c)
    assert (row.state, row.reused_from, row.task_id) == (JobState.COMPLETED, a, f"task-{a}")
    assert next(iter(iter_results(engine, "bc")))["reused_from"] == {
        "batch": "ba", "task_id": f"task-{a}"}


def test_a_reused_row_does_not_outlive_the_task_it_carries(engine: Engine) -> None:
    [a] = add(engine, "ba", rows(1))
    complete(engine, a, finished_at=NOW - WINDOW + 10)
    add(engine, "bb", rows(1))
    assert reuse_completed(engine, "bb", NOW, WINDOW) == 1  # finished_at = NOW
    # Later, b finished within the window but a's task was created before it.
    add(engine, "bc", rows(1))
    assert reuse_completed(engine, "bc", NOW + 20, WINDOW) == 0


def test_resolve_twins_reuses_a_completed_twin(engine: Engine) -> None:
    a = add(engine, "ba", rows(2))
    complete(engine, a[0])
    b = add(engine, "bb", rows(2))
    lease(engine, b)
    assert resolve_twins(engine, b, NOW, WINDOW) == [b[1]]
    first = job(engine, b[0])
    assert (first.state, first.reused_from, first.lease_until) == (
        JobState.COMPLETED, a[0], None)
    assert job(engine, b[1]).lease_until == NOW + 30  # to be created: still leased


@pytest.mark.parametrize("state", [JobState.SUBMITTING, JobState.RUNNING,
                                   JobState.AMBIGUOUS])
def test_a_twin_in_flight_is_waited_for_then_reused(engine: Engine, state: JobState) -> None:
    [a] = add(engine, "ba", rows(1))
    set_jobs(engine, a, state=state.value, task_id="task-a" if state == JobState.RUNNING
            else None)
    [b] = add(engine, "bb", rows(1))
    lease(engine, [b])
    assert resolve_twins(engine, [b], NOW, WINDOW) == []
    row = job(engine, b)
    assert (row.state, row.next_at, row.lease_until, row.lease_epoch) == (
        JobState.RETRY_WAIT, NOW + TWIN_WAIT_S, None, None)
    assert (row.tries, row.attempts, row.posts, row.error_kind) == (0, 0, 0, None)
    assert row.error_message and str(a) in row.error_message
    # Looked at again once due: the twin is still in flight, so it waits again...
    lease(engine, [b])
    assert resolve_twins(engine, [b], NOW + TWIN_WAIT_S, WINDOW) == []
    assert job(engine, b).state == JobState.RETRY_WAIT
    # ...and takes its task once it completed.
    complete(engine, a, finished_at=NOW + 8)
    lease(engine, [b])
    assert resolve_twins(engine, [b], NOW + 10, WINDOW) == []
    row = job(engine, b)
    assert (row.state, row.reused_from, row.task_id, row.error_message) == (
        JobState.COMPLETED, a, f"task-{a}", None)


def test_a_twin_that_failed_lets_the_row_be_created(engine: Engine) -> None:
    [a] = add(engine, "ba", rows(1))
    set_jobs(engine, a, state=JobState.RUNNING.value, task_id="task-a")
    [b] = add(engine, "bb", rows(1))
    lease(engine, [b])
    assert resolve_twins(engine, [b], NOW, WINDOW) == []
    set_jobs(engine, a, state=JobState.FAILED.value, finished_at=NOW + 2)
    set_jobs(engine, b, lease_until=NOW + 40, lease_epoch="e1")  # leased again, from retry_wait
    assert resolve_twins(engine, [b], NOW + 6, WINDOW) == [b]
    assert job(engine, b).state == JobState.RETRY_WAIT  # left as leased, for its create


def test_a_dispatched_twin_is_waited_for_unless_its_lease_is_dead(engine: Engine) -> None:
    [a] = add(engine, "ba", rows(1))
    [b] = add(engine, "bb", rows(1))
    assert resolve_twins(engine, [b], NOW, WINDOW) == [b]  # a is queued, not dispatched
    lease(engine, [a], epoch="old")
    assert resolve_twins(engine, [b], NOW, WINDOW, epoch="new") == [b]  # a voided lease
    assert resolve_twins(engine, [b], NOW, WINDOW, epoch="old") == []
    assert job(engine, b).state == JobState.RETRY_WAIT


def test_two_twins_in_one_call_only_the_first_is_created(engine: Engine) -> None:
    a = add(engine, "ba", rows(2))
    b = add(engine, "bb", rows(2))
    lease(engine, a + b)
    ids = [a[0], b[0], a[1], b[1]]
    assert resolve_twins(engine, ids, NOW, WINDOW) == [a[0], a[1]]
    assert [job(engine, i).state for i in b] == [JobState.RETRY_WAIT] * 2
    assert job(engine, b[0]).next_at == NOW + TWIN_WAIT_S
    # Later, with a's rows in flight, b's rows wait again; once they completed, reused.
    for job_id in a:
        set_jobs(engine, job_id, state=JobState.RUNNING.value, lease_until=None)
    lease(engine, b)
    assert resolve_twins(engine, b, NOW + 6, WINDOW) == []
    for job_id in a:
        complete(engine, job_id, finished_at=NOW + 7)
    lease(engine, b)
    assert resolve_twins(engine, b, NOW + 12, WINDOW) == []
    assert [job(engine, i).reused_from for i in b] == a


def test_rows_without_a_fingerprint_are_created(engine: Engine) -> None:
    [a] = add(engine, "ba", rows(1))
    complete(engine, a)
    [b] = add(engine, "bb", rows(1))
    set_jobs(engine, b, fingerprint=None)  # ingested by an earlier version
    assert resolve_twins(engine, [b], NOW, WINDOW) == [b]
    assert reuse_completed(engine, "bb", NOW, WINDOW) == 0


def test_ingest_fingerprints_valid_rows_only(engine: Engine, tmp_path: Path) -> None:
    first = tmp_path / "a.jsonl"
    first.write_text('{"id": "k1", "model": "Qubico/joycaption", "task_type": '
                     '"joycaption-beta-one", "input": {"image": "https://x/1.png"}}\n'
                     '{"id": "k2", "model": "Qubico/joycaption", "task_type": "nope"}\n')
    # The same row with its keys in another order, in another manifest: the same twin.
    second = tmp_path / "b.jsonl"
    second.write_text('{"input": {"image": "https://x/1.png"}, "task_type": '
                      '"joycaption-beta-one", "model": "Qubico/joycaption", "id": "k1"}\n')
    a, b = ingest(engine, first).batch_id, ingest(engine, second).batch_id
    with Session(engine) as s:
        fps = {(j.batch_id, j.row_key): j.fingerprint for j in s.scalars(select(Job))}
    expected = hashlib.sha256(canonical_json(
        ["k1", *JOY, {"image": "https://x/1.png"}]).encode()).hexdigest()
    assert fps == {(a, "k1"): expected, (a, "k2"): None, (b, "k1"): expected}


def test_an_edited_local_image_is_no_twin_of_what_it_was(engine: Engine,
                                                         tmp_path: Path) -> None:
    """A local file is in the input as its path, which an edit leaves as it was: the
    fingerprint holds its content too, so only the unchanged images find their twins."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, shade in (("a.png", 0), ("b.png", 10)):
        (photos / name).write_bytes(png_bytes(shade=shade))
    first = ingest(engine, photos, default_model=JOY[0], default_task_type=JOY[1])
    (photos / "b.png").write_bytes(png_bytes(shade=200))  # edited, the same size
    (photos / "c.png").write_bytes(png_bytes(shade=30))   # added: the folder is a new batch
    second = ingest(engine, photos, default_model=JOY[0], default_task_type=JOY[1])
    assert second.batch_id != first.batch_id
    with Session(engine) as s:
        fps = {(j.batch_id, j.row_key): j.fingerprint for j in s.scalars(select(Job))}
    assert fps[(second.batch_id, "a.png")] == fps[(first.batch_id, "a.png")]
    assert fps[(second.batch_id, "b.png")] != fps[(first.batch_id, "b.png")]
    content = hashlib.sha256(png_bytes(shade=0)).hexdigest()
    expected = hashlib.sha256(canonical_json(
        ["a.png", *JOY, {"image": str(photos / "a.png")}, [content]]).encode()).hexdigest()
    assert fps[(first.batch_id, "a.png")] == expected


def test_an_older_database_gets_the_columns(engine: Engine) -> None:
    with transaction(engine) as conn:  # as the previous version made it, before Alembic
        conn.exec_driver_sql("DROP TABLE alembic_version")
        conn.exec_driver_sql("DROP INDEX ix_jobs_fingerprint")
        for table, column in (("jobs", "fingerprint"), ("jobs", "reused_from"),
                              ("batches", "reuse")):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        add_old_batch(conn)
    create_tables(engine)
    with Session(engine) as s:
        assert s.get_one(Batch, "old").reuse is True
    with transaction(engine) as conn:
        names = {i["name"] for i in inspect(conn).get_indexes("jobs")}
    assert "ix_jobs_fingerprint" in names
