"""Every change of a job's state, each a compare-and-set on the state it expects.

`UPDATE jobs SET state = :new WHERE id = :id AND state = :expected` (plus whatever else
must still hold), with the row count checked: a Celery message delivered twice, a worker
that lost its lease, or two dispatchers racing can never apply a change twice. This package
is the only code that writes `jobs.state`: `create` for the create side, `poll` for
running tasks, `watch` for late results of abandoned stuck tasks and `reuse` for rows
that take a completed twin's task instead of paying again (imported as modules:
`from workers.transitions import watch`). Each statement that changes `jobs.state` is
built by `common.move` from the table in `workers.states`, which it must agree with. The
moves of ambiguous rows (lost creates) live with the rest of reconciliation, in
`workers.reconcile.records`, built the same way.
"""

from workers.transitions.common import Claim, PollTarget
from workers.transitions.create import (
    claim_for_submit,
    claim_many,
    expire_submitting,
    hint_submitting,
    record_ambiguous,
    record_create_rejected,
    record_create_requeued,
    record_create_retry,
    record_created,
    resolve_ambiguous_as_failed,
)
from workers.transitions.poll import (
    Handoff,
    PollOutcome,
    Recorded,
    load_poll_targets,
    mark_due,
    record_and_hand_off,
    record_completed,
    record_poll_outcomes,
    record_progress,
    record_task_failed,
)

__all__ = [
    "Claim",
    "Handoff",
    "PollOutcome",
    "PollTarget",
    "Recorded",
    "claim_for_submit",
    "claim_many",
    "expire_submitting",
    "hint_submitting",
    "load_poll_targets",
    "mark_due",
    "record_ambiguous",
    "record_and_hand_off",
    "record_completed",
    "record_create_rejected",
    "record_create_requeued",
    "record_create_retry",
    "record_created",
    "record_poll_outcomes",
    "record_progress",
    "record_task_failed",
    "resolve_ambiguous_as_failed",
]
