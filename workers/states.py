"""The state machine: every state a row (and a create) can be in, and which changes are allowed.

queued -> submitting -> running -> completed | failed | cancelled, plus retry_wait (a
retryable error, waiting for its next try) and ambiguous (the create's outcome is unknown).
`invalid` is where a row that failed validation starts and stays. A row that gave up on a
stuck task may still complete from queued, retry_wait or failed: the abandoned task
completed after all and the row had no result yet (`workers.stuck`). A waiting row may
also complete by taking the task of a completed twin, or wait in retry_wait for a twin in
flight (`workers.transitions.reuse`). A failed row whose lost create's answer arrives late
adopts the task (`workers.transitions.create`).

`ALLOWED` is the truth: every statement that changes `jobs.state` is built by
`workers.transitions.common.move`, which refuses (at import) a move missing from it. Also
here: how one create stands (`AttemptState`), the ambiguous policy, and error kinds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from types import MappingProxyType


class JobState(StrEnum):
    """Where a manifest row is in its life."""

    QUEUED = "queued"
    SUBMITTING = "submitting"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    AMBIGUOUS = "ambiguous"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INVALID = "invalid"


TERMINAL: frozenset[JobState] = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.INVALID}
)
ACTIVE: frozenset[JobState] = frozenset(set(JobState) - TERMINAL)
IN_FLIGHT: frozenset[JobState] = frozenset({JobState.SUBMITTING, JobState.RUNNING})
"""States holding (or maybe holding) one of the account's concurrency slots at PiAPI."""

ALLOWED: Mapping[JobState, frozenset[JobState]] = MappingProxyType({
    JobState.QUEUED: frozenset({
        JobState.SUBMITTING,  # claimed for a create
        JobState.CANCELLED,  # an operator's cancel, a deadline
        # A late result (workers.stuck), or a completed twin's task taken
        # (workers.transitions.reuse).
        JobState.COMPLETED,
        JobState.RETRY_WAIT,  # waiting for a twin in flight instead of paying twice
    }),
    JobState.SUBMITTING: frozenset({
        JobState.RUNNING,  # PiAPI answered with a task id
        JobState.RETRY_WAIT,  # refused with a retryable error; nothing was created
        JobState.QUEUED,  # refused for an account-wide reason (key, credit): try later
        JobState.AMBIGUOUS,  # outcome unknown (no answer, or the worker's lease ran out)
        JobState.FAILED,  # refused for a reason retrying cannot fix, or retries exhausted
    }),
    JobState.RUNNING: frozenset({
        JobState.COMPLETED,  # the task completed (or a late result replaced it)
        JobState.FAILED,  # the task failed for good, PiAPI lost it, or it got stuck
        JobState.RETRY_WAIT,  # the task failed and a new one may be created
        JobState.CANCELLED,  # its batch was cancelled
    }),
    JobState.RETRY_WAIT: frozenset({
        JobState.SUBMITTING,  # claimed for a create, once due
        JobState.CANCELLED,  # an operator's cancel, a deadline
        JobState.COMPLETED,  # a late result, a twin's task
        # A row leased from retry_wait whose twin is (still) in flight waits again, its
        # next look pushed back (workers.transitions.reuse.resolve_twins).
        JobState.RETRY_WAIT,
    }),
    JobState.AMBIGUOUS: frozenset({
        JobState.RUNNING,  # the lost create's task was found and adopted
        JobState.QUEUED,  # policy retry: posted again without looking
        JobState.RETRY_WAIT,  # the lost create made no task: posted again, bounded
        JobState.FAILED,  # given up on (policy fail, reconciliation timed out, bound)
        JobState.CANCELLED,  # cancel --now
    }),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset({
        # An operator's explicit retry: posted again, or (when the last create's outcome is
        # unknown) reconciled first, so a task that may exist is found before any new create.
        JobState.QUEUED,
        JobState.AMBIGUOUS,
        # An abandoned stuck task that completed after all (workers.stuck).
        JobState.COMPLETED,
        # Adoption: a create's answer that arrives after its row was declared ambiguous and
        # then failed (kind ambiguous: policy fail, or reconciliation gave up) names a task
        # that exists and is paid for; the row takes it rather than lose it
        # (workers.transitions.create.record_created).
        JobState.RUNNING,
    }),
    JobState.CANCELLED: frozenset({
        JobState.QUEUED, JobState.AMBIGUOUS,  # an operator's retry
        # A task abandoned by `cancel --now` (or as stuck) that completed after all: it is
        # paid for, so the row takes its result (workers.stuck).
        JobState.COMPLETED,
    }),
    JobState.INVALID: frozenset(),
})
"""Every move a job may make, each for the reason beside it. The statements that change
`jobs.state` are built from it (`workers.transitions.common.move`): a move missing here
cannot be built, so a new one must be added (with its reason) first."""


class IllegalMove(ValueError):
    """A state change the table does not allow."""


def can_move(src: JobState, dst: JobState) -> bool:
    """True when a job may go from `src` to `dst`."""
    return dst in ALLOWED[src]


def sources_of(dst: JobState) -> frozenset[JobState]:
    """Every state a job may reach `dst` from."""
    return frozenset(s for s, targets in ALLOWED.items() if dst in targets)


def check_moves(sources: Iterable[JobState], dst: JobState) -> frozenset[JobState]:
    """`sources` as a set, when a job may go from each of them to `dst`; else IllegalMove."""
    found = frozenset(JobState(s) for s in sources)
    if not found:
        raise IllegalMove(f"a move to {dst} needs at least one source state")
    bad = sorted(s for s in found if not can_move(s, dst))
    if bad:
        raise IllegalMove(f"{', '.join(bad)} -> {dst} is not in workers.states.ALLOWED")
    return found


class AttemptState(StrEnum):
    """How one create (an `attempts` row) stands or ended."""

    POSTING = "posting"  # recorded, the POST is being sent
    CREATED = "created"  # PiAPI answered with a task id (or the task was found and adopted)
    REFUSED = "refused"  # PiAPI refused the create: nothing was made
    AMBIGUOUS = "ambiguous"  # no answer: a task may or may not exist
    ABSENT = "absent"  # reconciliation found the lost create made no task
    COMPLETED = "completed"  # its task completed (and the row took its result)
    FAILED = "failed"  # its task failed
    CANCELLED = "cancelled"  # its task was cancelled at PiAPI (pending: refunded)
    ABANDONED = "abandoned"
    """The row stopped waiting for its task: stuck far past its kind's expected duration,
    or its batch cancelled with --now while the task ran (see `workers.stuck`)."""


class AmbiguousPolicy(StrEnum):
    """What to do about a create whose answer was lost (PIAPI_BULK_ON_AMBIGUOUS)."""

    RECONCILE = "reconcile"  # look for its task in PiAPI's history first (the default)
    RETRY = "retry"  # post again at once: may pay twice
    FAIL = "fail"  # the row fails (kind ambiguous); never posted twice


class ErrorKind(StrEnum):
    """Why a row did not complete; the `error.kind` of a results line."""

    INVALID = "invalid"  # the manifest row failed validation
    INPUT = "input"  # PiAPI rejected the input (400) or moderation refused it
    PROVIDER = "provider"  # PiAPI ran the task and it failed, every attempt
    RETRIES_EXHAUSTED = "retries_exhausted"  # retryable errors past the bound
    AMBIGUOUS = "ambiguous"  # the create's outcome is unknown; never posted twice
    NOT_FOUND = "not_found"  # PiAPI no longer knows the task id
    STUCK = "stuck"  # its tasks never ended, far past their kind's expected duration
    ACCOUNT = "account"  # key rejected, out of credit
    CANCELLED = "cancelled"
