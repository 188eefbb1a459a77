"""The Celery tasks: thin wrappers that take job ids only and call one plain function each.

Arguments are job ids, never inputs, payloads or secrets: Flower and the broker show them.
Acknowledgement after the task ran and no stored result are the app's settings
(`workers/app.py`), which every task here takes.
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from workers.app import POLL_TASK, RECONCILE_TASK, SUBMIT_TASK, WATCH_TASK
from workers.reconcile.settle import reconcile_jobs
from workers.watch import watch_tasks
from workers.work import WorkerContext
from workers.work.create import submit_jobs
from workers.work.poll import poll_jobs


def register_tasks(app: Celery, context: Callable[[], WorkerContext]) -> None:
    """Register `submit`, `poll`, `reconcile` and `watch` on `app`; `context()` gives this
    process's context."""

    @app.task(name=SUBMIT_TASK)  # type: ignore[untyped-decorator]
    def submit(job_ids: list[int]) -> None:
        """Create PiAPI tasks for these jobs (each only if still due)."""
        submit_jobs(context(), [int(i) for i in job_ids])

    @app.task(name=POLL_TASK)  # type: ignore[untyped-decorator]
    def poll(job_ids: list[int]) -> None:
        """Read these jobs' PiAPI tasks and record what changed."""
        poll_jobs(context(), [int(i) for i in job_ids])

    @app.task(name=RECONCILE_TASK)  # type: ignore[untyped-decorator]
    def reconcile(job_ids: list[int]) -> None:
        """Look for the tasks of these jobs' lost creates and settle them."""
        reconcile_jobs(context(), [int(i) for i in job_ids])

    @app.task(name=WATCH_TASK)  # type: ignore[untyped-decorator]
    def watch(attempt_ids: list[int]) -> None:
        """Look at these abandoned stuck tasks (attempt ids) and collect late results."""
        watch_tasks(context(), [int(i) for i in attempt_ids])
