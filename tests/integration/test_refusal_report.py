"""A create PiAPI refuses for too many tasks in flight reaches the fleet's counter before
the row's record frees its slot (real database, real Redis, a scripted PiAPI): a
dispatcher must never see the free slot without the refusal, or it refills the slot at
the level PiAPI just refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pytest
import redis
from sqlalchemy.engine import Engine

from tests.integration.e2e import add_batch, job
from workers import piapi
from workers.fleet import Fleet
from workers.piapi import TaskView, parse_task
from workers.states import JobState
from workers.work import WorkerContext
from workers.work.create import submit_jobs

R = TypeVar("R")


class Script:
    """PiAPI refusing every create with this status and message (200: creating it)."""

    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message

    def create_task(self, model: str, task_type: str, input: dict[str, Any],
                    service_mode: str | None = None, **hook: Any) -> TaskView:
        if self.status == 200:
            return parse_task({"task_id": "t1", "model": model, "task_type": task_type,
                               "status": "processing"})
        piapi.raise_for_status(httpx.Response(self.status, json={
            "code": self.status, "message": self.message}), create=True)
        raise AssertionError("not a refusal")


class Recording(WorkerContext):
    """A context noting the fleet's refusal count each time a record is written."""

    seen: list[int]

    def record(self, fn: Callable[[], R]) -> R:
        assert self.fleet is not None
        self.seen.append(self.fleet.concurrency_refusals())
        return super().record(fn)


@pytest.mark.parametrize(("status", "message", "refusals"), [
    (429, "concurrent task limit exceeded", 1),
    (429, "too many requests", 0),
    (200, "", 0),
])
def test_a_concurrency_refusal_is_reported_before_its_row_is_recorded(
        engine: Engine, redis_url: str, status: int, message: str, refusals: int) -> None:
    client = redis.Redis.from_url(redis_url)
    fleet = Fleet(client)
    ctx = Recording(engine=engine, client=Script(status, message),  # type: ignore[arg-type]
                    lease_s=30.0, max_tries=3, fleet=fleet)
    ctx.seen = []
    [row] = add_batch(engine, "b1", 1)
    submit_jobs(ctx, [row])
    assert job(engine, row).state == (JobState.RUNNING if status == 200
                                      else JobState.RETRY_WAIT)
    assert ctx.seen == [refusals]  # the count as the record was written
    assert fleet.concurrency_refusals() == refusals  # and counted once, not again at the end
    client.close()


def test_a_create_message_that_comes_after_a_halt_posts_nothing(engine: Engine) -> None:
    """Messages the dispatcher sent before it saw the halt (a key refused by another
    worker's create) post nothing: each create would be refused again. The rows stay
    queued, untouched, for when the halt is lifted."""
    from workers.halt import set_halt
    from workers.work.create import HALTED
    from workers.work.summary import render

    class Counting(Script):
        posts = 0

        def create_task(self, *args: Any, **kw: Any) -> TaskView:
            self.posts += 1
            return super().create_task(*args, **kw)

    script = Counting(200, "")
    ctx = WorkerContext(engine=engine, client=script,  # type: ignore[arg-type]
                        lease_s=30.0, max_tries=3)
    rows = add_batch(engine, "b1", 3)
    set_halt(engine, "PiAPI refused the account: HTTP 401", 1.0)
    summary = submit_jobs(ctx, rows)
    assert script.posts == 0
    assert [(job(engine, r).state, job(engine, r).attempts) for r in rows] == \
        [(JobState.QUEUED, 0)] * 3
    assert f"3 {HALTED}" in render(summary)
