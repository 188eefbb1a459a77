"""The one Celery app: broker, queues and every reliability setting, each with its reason."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from workers.broker import TRANSPORT

SUBMIT_QUEUE = "piapi-bulk.submit"
POLL_QUEUE = "piapi-bulk.poll"
SUBMIT_TASK = "piapi_bulk.create_tasks"
POLL_TASK = "piapi_bulk.poll_tasks"
RECONCILE_TASK = "piapi_bulk.reconcile_lost_creates"
WATCH_TASK = "piapi_bulk.watch_abandoned"
OLD_NAMES = {"piapi_bulk.submit": SUBMIT_TASK, "piapi_bulk.poll": POLL_TASK,
             "piapi_bulk.reconcile": RECONCILE_TASK, "piapi_bulk.watch": WATCH_TASK}
"""The names of release 0.x (messages `[[ids]]`), still run by the new tasks for one release:
messages an older dispatcher left in Redis, or sends during a rolling upgrade, are run,
not dropped. (An older worker never receives the new `[[ids], batch]` shape under a name it
knows: it rejects a new name as unregistered, dropping the message, and the rows' leases
expire and they are dispatched again; nothing was sent for them.)"""


BRPOP_TIMEOUT_S = 0.2
"""How long an idle worker's blocking read of its queues waits (kombu's `polling_interval`):
five empty round trips a second to Redis, and a worker stops within this once told to."""


def create_celery(broker_url: str) -> Celery:
    """A Celery app on `broker_url` (Redis); tasks are registered by `workers.tasks`."""
    app = Celery("piapi_bulk", broker=broker_url, set_as_current=False)
    app.conf.update(
        # The Redis transport, minus a client built per acknowledgement (see broker.py).
        broker_transport=TRANSPORT,
        # A message is acknowledged only after its task ran, so a killed worker's messages
        # return to the queue; the DB's compare-and-set makes the repeat harmless.
        task_acks_late=True,
        # ...and a task whose worker process died is requeued, not recorded as failed.
        task_reject_on_worker_lost=True,
        # A worker reserves only what it is running: no hidden backlog in a dying process.
        worker_prefetch_multiplier=1,
        # The database holds every result; a result backend would only duplicate it.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # JSON only: messages carry job ids, nothing that needs pickle.
        task_serializer="json",
        accept_content=["json"],
        # Events on, so Flower shows workers and tasks live.
        worker_send_task_events=True,
        # (No "task-sent" events: they would cost the dispatcher a publish per message and
        # Flower shows tasks from the workers' events.)
        task_send_sent_event=False,
        # Only runnable-now work sits in Redis; these routes keep creates and polls apart
        # so a burst of one never starves the other.
        task_queues=[Queue(SUBMIT_QUEUE), Queue(POLL_QUEUE)],
        task_default_queue=SUBMIT_QUEUE,
        task_routes={SUBMIT_TASK: {"queue": SUBMIT_QUEUE}, POLL_TASK: {"queue": POLL_QUEUE},
                     RECONCILE_TASK: {"queue": POLL_QUEUE}, WATCH_TASK: {"queue": POLL_QUEUE}},
        # (What a task returns, a one-line summary in row terms from `workers.work.summary`,
        # is never stored, as above; its repr travels in the `task-succeeded` event, cut at
        # the task's `resultrepr_maxsize`, and Flower shows it as the task's result.)
        # A restarted Redis is expected (it keeps nothing on disk): keep reconnecting.
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Unacked messages come back after this long; the dispatcher's DB lease already
        # re-issues lost work much sooner, so this is only the broker's own backstop.
        broker_transport_options={
            "visibility_timeout": 3600,
            # An idle worker's BRPOP returns after this long with nothing; a stopping worker
            # waits for that answer before it exits, so the default (1 s) made every `run`
            # end up to 1 s after its work. A message still returns the moment it is sent.
            "polling_interval": BRPOP_TIMEOUT_S,
        },
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Expired messages are dropped (a dispatcher re-issues anything still due).
        task_default_expires=None,
    )
    return app
