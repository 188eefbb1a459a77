"""Webhooks: a forged, replayed or wrong-secret call changes nothing; a real one from the
emulator completes a job with exactly one GET."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from tests.helpers import HTTP, REPO, MakeEmulator, Spawn, free_port
from tests.integration.e2e import (
    WEBHOOK_SECRET,
    add_batch,
    caption_rows,
    run_in,
    webhook_receiver,
    webhook_run_env,
)
from workers import transitions as tr
from workers.models import Job
from workers.piapi import TaskView, Usage
from workers.webhook_signing import WebhookSigner

NOW = time.time()


@pytest.fixture
def receiver(engine: Engine, spawn: Spawn, database_url: str) -> tuple[str, Engine]:
    """`piapi-bulk webhook` as a process (its base URL), and the database it records in."""
    env = {**os.environ, "DATABASE_URL": database_url, "PIAPI_BULK_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "PYTHONPATH": str(REPO)}
    env.pop("REDIS_URL", None)
    return webhook_receiver(spawn, env, free_port()), engine


def _running_job(engine: Engine, batch: str = "b1") -> int:
    """A job whose task is running at PiAPI, its next poll an hour away."""
    [job_id] = add_batch(engine, batch, rows=1)
    claim = tr.claim_for_submit(engine, job_id, NOW, 60)
    assert claim is not None
    view = TaskView("task-1", "Qubico/joycaption", "joycaption-beta-one", "pending", None,
                    Usage("llm", 0, 1), None, None, None, None)
    tr.record_created(engine, claim, view, NOW, NOW + 3600)  # next poll far away
    return job_id


def _next_at(engine: Engine, job_id: int) -> float | None:
    with Session(engine) as s:
        return s.get_one(Job, job_id).next_at


def _body(task_id: str = "task-1", status: str = "completed") -> dict[str, object]:
    return {"timestamp": 1, "data": {"task_id": task_id, "status": status, "output": None}}


def test_only_a_genuine_call_makes_the_job_due(receiver: tuple[str, Engine]) -> None:
    base, engine = receiver
    job_id = _running_job(engine)
    signer = WebhookSigner(base + "/hooks", WEBHOOK_SECRET)
    url = signer.endpoint(job_id)
    secret = {"x-webhook-secret": signer.batch_secret("b1")}
    before = _next_at(engine, job_id)

    attempts = [
        (f"{base}/hooks/{job_id}/not-the-token", secret, _body(), 404),      # forged URL
        (signer.endpoint(job_id + 1), secret, _body(), 404),                # another job's
        (url, {"x-webhook-secret": "guess"}, _body(), 401),                 # wrong secret
        (url, {}, _body(), 401),                                            # no secret
        (url, secret, _body(task_id="task-of-someone-else"), 200),          # stale task
        (url, secret, _body(status="processing"), 200),                     # not terminal
    ]
    for target, headers, body, status in attempts:
        response = HTTP.post(target, json=body, headers=headers, timeout=5)
        assert response.status_code == status, (target, headers, body, response.text)
        assert _next_at(engine, job_id) == before, (target, headers, body)

    ok = HTTP.post(url, json=_body(), headers=secret, timeout=5)
    assert ok.status_code == 200 and ok.json()["due"] is True
    due = _next_at(engine, job_id)
    assert due is not None and due < before  # due now: one confirming GET
    # A replay (PiAPI retries, duplicates) changes nothing more.
    replay = HTTP.post(url, json=_body(), headers=secret, timeout=5)
    assert replay.status_code == 200 and "due" not in replay.json()
    assert _next_at(engine, job_id) == due
    stats = HTTP.get(base + "/stats", timeout=5).json()
    assert stats["due"] == 1 and stats["rejected"] == 4


def test_a_webhook_before_the_create_is_recorded_makes_the_task_due_once_it_is(
        receiver: tuple[str, Engine]) -> None:
    # PiAPI may call back before the create's answer is read (a fast task, a slow answer);
    # it was dropped, and the slot idled until the task's scheduled (or fallback) poll.
    base, engine = receiver
    signer = WebhookSigner(base + "/hooks", WEBHOOK_SECRET)
    secret = {"x-webhook-secret": signer.batch_secret("b1")}
    early, other = add_batch(engine, "b1", rows=2)
    for job_id, made, named in ((early, "task-1", "task-1"), (other, "task-2", "task-3")):
        view = TaskView(made, "Qubico/joycaption", "joycaption-beta-one", "pending", None,
                        Usage("llm", 0, 1), None, None, None, None)
        claim = tr.claim_for_submit(engine, job_id, NOW, 60)
        assert claim is not None  # submitting: the create's answer not recorded yet
        hooked = HTTP.post(signer.endpoint(job_id), json=_body(task_id=named),
                            headers=secret, timeout=5)
        assert hooked.status_code == 200 and hooked.json()["due"] is True
        assert tr.record_created(engine, claim, view, NOW, NOW + 3600)
    assert _next_at(engine, early) == NOW  # polled at once
    assert _next_at(engine, other) == NOW + 3600  # named another task: its schedule


def test_a_real_webhook_completes_a_job_with_exactly_one_get(
        tmp_path: Path, sqlite_url: str, redis_url: str, make_emulator: MakeEmulator,
        spawn: Spawn) -> None:
    emu = make_emulator("--time-scale", "0.02")
    env, hook = webhook_run_env(tmp_path, emu, sqlite_url, redis_url, spawn)
    code, results, stats, _ = run_in(env, emu, tmp_path, caption_rows(3), 120)
    hook_stats = HTTP.get(f"{hook}/stats", timeout=5).json()
    assert code == 0, (tmp_path / "run.out").read_text()[-2000:]
    assert [r["status"] for r in results] == ["completed"] * 3
    assert stats["webhooks"]["sent"] >= 3
    assert hook_stats["due"] == 3
    assert stats["requests"]["get"] == 3  # one confirming GET per task, no polling
