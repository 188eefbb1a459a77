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

Work = Callable[[WorkerContext, list[int]], None]
"""A plain function a task calls: this process's context and the message's ids."""

WORK: dict[str, Work] = {
    SUBMIT_TASK: submit_jobs,  # create PiAPI tasks for these jobs (each only if still due)
    POLL_TASK: poll_jobs,  # read these jobs' PiAPI tasks and record what changed
    RECONCILE_TASK: reconcile_jobs,  # look for the tasks of lost creates and settle them
    WATCH_TASK: watch_tasks,  # look at abandoned stuck tasks (attempt ids), collect late results
}
"""Every task, by name, and the function it calls."""


def register_tasks(app: Celery, context: Callable[[], WorkerContext]) -> None:
    """Register every task of `WORK` on `app`; `context()` gives this process's context."""
    for name, work in WORK.items():
        app.task(name=name)(_thin(work, context))


def _thin(work: Work, context: Callable[[], WorkerContext]) -> Callable[[list[int]], None]:
    """The task's body: the ids as integers, handed to `work` with the context."""

    def task(ids: list[int]) -> None:
        work(context(), [int(i) for i in ids])

    task.__doc__ = work.__doc__  # what Flower shows for the task
    return task
