"""The Celery tasks: thin wrappers that take job ids (and their batch) and call one plain
function each.

Arguments are `[[job ids], batch]` (`batch` a batch id, or a list of them when a message
spans batches), never inputs, payloads or secrets: Flower and the broker show them, and
Flower's `args:<batch>` search finds one batch's messages. The older shape `[[job ids]]`
is still accepted (messages an older dispatcher left in Redis). What a task returns is its
message's summary in row terms (`workers.work.summary`): Flower shows it as the result,
and nothing stores it. Acknowledgement after the task ran and no stored result are the
app's settings (`workers/app.py`), which every task here takes.
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from workers.app import OLD_NAMES, POLL_TASK, RECONCILE_TASK, SUBMIT_TASK, WATCH_TASK
from workers.reconcile.settle import reconcile_jobs
from workers.watch import watch_tasks
from workers.work import WorkerContext
from workers.work.create import submit_jobs
from workers.work.poll import poll_jobs
from workers.work.summary import MessageSummary

Work = Callable[[WorkerContext, list[int]], MessageSummary]
"""A plain function a task calls: this process's context and the message's ids; what the
message did, in row terms."""
Batches = str | list[str] | None
"""The batch of a message's ids, or the batches of a message spanning several; None in a
message from before the batch was sent along."""

WORK: dict[str, Work] = {
    SUBMIT_TASK: submit_jobs,  # create PiAPI tasks for these jobs (each only if still due)
    POLL_TASK: poll_jobs,  # read these jobs' PiAPI tasks and record what changed
    RECONCILE_TASK: reconcile_jobs,  # look for the tasks of lost creates and settle them
    WATCH_TASK: watch_tasks,  # look at abandoned stuck tasks (attempt ids), collect late results
}
"""Every task, by name, and the function it calls."""


def register_tasks(app: Celery, context: Callable[[], WorkerContext]) -> None:
    """Register every task of `WORK` on `app` (and under its old name, `OLD_NAMES`);
    `context()` gives this process's context."""
    for name, work in WORK.items():
        app.task(name=name)(_thin(work, context))
    for old, name in OLD_NAMES.items():
        app.task(name=old)(_thin(WORK[name], context))


def _thin(work: Work, context: Callable[[], WorkerContext]
          ) -> Callable[[list[int], Batches], MessageSummary]:
    """The task's body: the ids as integers, handed to `work` with the context; the batch
    named in the arguments is the one the summary names."""

    def task(ids: list[int], batch: Batches = None) -> MessageSummary:
        summary = work(context(), [int(i) for i in ids])
        if batch:
            summary.batches = [batch] if isinstance(batch, str) else [str(b) for b in batch]
        return summary

    task.__doc__ = work.__doc__  # what Flower shows for the task
    return task
