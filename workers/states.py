"""The job state machine: every state a row can be in and which changes are allowed.

queued -> submitting -> running -> completed | failed | cancelled, plus retry_wait (a
retryable error, waiting for its next try) and ambiguous (the create's outcome is unknown).
`invalid` is where a row that failed validation starts and stays. A row that gave up on a
stuck task may still complete from queued, retry_wait or failed: the abandoned task
completed after all and the row had no result yet (`workers.stuck`). A waiting row may
also complete by taking the task of a completed twin, or wait in retry_wait for a twin in
flight (`workers.transitions.reuse`).
"""

from __future__ import annotations

from enum import StrEnum


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

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.SUBMITTING, JobState.CANCELLED,
                                # a late result (workers.stuck), or a twin's task taken
                                # (workers.transitions.reuse)
                                JobState.COMPLETED,
                                # waiting for a twin in flight instead of paying twice
                                JobState.RETRY_WAIT}),
    JobState.SUBMITTING: frozenset(
        {
            JobState.RUNNING,  # PiAPI answered with a task id
            JobState.RETRY_WAIT,  # refused with a retryable error; nothing was created
            JobState.QUEUED,  # refused for an account-wide reason (key, credit): try later
            JobState.AMBIGUOUS,  # outcome unknown
            JobState.FAILED,  # refused for a reason retrying cannot fix
        }
    ),
    JobState.RUNNING: frozenset(
        {JobState.COMPLETED, JobState.FAILED, JobState.RETRY_WAIT, JobState.CANCELLED}
    ),
    JobState.RETRY_WAIT: frozenset({JobState.SUBMITTING, JobState.CANCELLED,
                                    JobState.COMPLETED}),  # a late result, a twin's task
    JobState.AMBIGUOUS: frozenset(
        {JobState.RUNNING, JobState.QUEUED, JobState.RETRY_WAIT, JobState.FAILED,
         JobState.CANCELLED}
    ),
    JobState.COMPLETED: frozenset(),
    # An operator's explicit retry: posted again, or (when the last create's outcome is
    # unknown) reconciled first, so a task that may exist is found before any new create.
    # ...or an abandoned stuck task that completed after all (workers.stuck).
    JobState.FAILED: frozenset({JobState.QUEUED, JobState.AMBIGUOUS, JobState.COMPLETED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED, JobState.AMBIGUOUS}),
    JobState.INVALID: frozenset(),
}


def can_move(src: JobState, dst: JobState) -> bool:
    """True when a job may go from `src` to `dst`."""
    return dst in ALLOWED[src]


def sources_of(dst: JobState) -> frozenset[JobState]:
    """Every state a job may reach `dst` from."""
    return frozenset(s for s, targets in ALLOWED.items() if dst in targets)


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
