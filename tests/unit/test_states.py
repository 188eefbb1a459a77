"""The job state machine: its table, and random walks through it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from workers.settings import Settings
from workers.states import (
    ACTIVE,
    ALLOWED,
    IN_FLIGHT,
    TERMINAL,
    AmbiguousPolicy,
    JobState,
    can_move,
    sources_of,
)


def test_every_state_has_a_row() -> None:
    assert set(ALLOWED) == set(JobState)


def test_completed_and_invalid_are_final() -> None:
    assert ALLOWED[JobState.COMPLETED] == frozenset()
    assert ALLOWED[JobState.INVALID] == frozenset()


def test_a_create_can_only_start_from_queued_or_retry_wait() -> None:
    assert sources_of(JobState.SUBMITTING) == {JobState.QUEUED, JobState.RETRY_WAIT}


def test_running_is_only_reached_by_a_create_answer_or_an_adoption() -> None:
    # (failed: a late create answer for a row failed as ambiguous is adopted)
    assert sources_of(JobState.RUNNING) == {JobState.SUBMITTING, JobState.AMBIGUOUS,
                                            JobState.FAILED}


def test_ambiguous_is_never_posted_again_directly() -> None:
    # From ambiguous a job may be adopted (running), failed, cancelled or explicitly
    # requeued by reconciliation, but never go straight to another create.
    assert JobState.SUBMITTING not in ALLOWED[JobState.AMBIGUOUS]


def test_ambiguous_is_reached_by_a_lost_create_or_an_operator_retry() -> None:
    assert sources_of(JobState.AMBIGUOUS) == {JobState.SUBMITTING, JobState.FAILED,
                                              JobState.CANCELLED}


def test_an_operator_retry_leaves_completed_and_invalid_rows_alone() -> None:
    for state in (JobState.COMPLETED, JobState.INVALID):
        assert not can_move(state, JobState.QUEUED)
        assert not can_move(state, JobState.AMBIGUOUS)
    assert ALLOWED[JobState.CANCELLED] == {JobState.QUEUED, JobState.AMBIGUOUS}
    # A failed row may also complete: a task it abandoned as stuck completed after all.
    assert ALLOWED[JobState.FAILED] == {JobState.QUEUED, JobState.AMBIGUOUS,
                                        JobState.COMPLETED, JobState.RUNNING}


def test_a_late_result_completes_only_a_row_without_one() -> None:
    assert sources_of(JobState.COMPLETED) == {JobState.RUNNING, JobState.QUEUED,
                                              JobState.RETRY_WAIT, JobState.FAILED}


def test_partition() -> None:
    assert set(JobState) == TERMINAL | ACTIVE
    assert not TERMINAL & ACTIVE
    assert IN_FLIGHT <= ACTIVE


@given(st.lists(st.sampled_from(list(JobState)), max_size=40))
def test_random_walks_respect_the_table(steps: list[JobState]) -> None:
    state = JobState.QUEUED
    seen_completed = False
    for nxt in steps:
        if can_move(state, nxt):
            assert nxt in ALLOWED[state]
            state = nxt
        seen_completed = seen_completed or state is JobState.COMPLETED
        if seen_completed:
            assert state is JobState.COMPLETED


@given(st.lists(st.sampled_from(list(JobState)), min_size=1, max_size=40))
def test_completed_absorbs(steps: list[JobState]) -> None:
    state = JobState.COMPLETED
    for nxt in steps:
        assert not can_move(state, nxt)


def test_a_waiting_row_may_take_a_twins_task_or_wait_for_it() -> None:
    # workers.transitions.reuse: completed with a twin's task, or retry_wait for one in flight.
    for state in (JobState.QUEUED, JobState.RETRY_WAIT):
        assert can_move(state, JobState.COMPLETED)
    assert can_move(JobState.QUEUED, JobState.RETRY_WAIT)


@pytest.mark.parametrize("value", ["reconcile", "retry", "fail"])
def test_the_ambiguous_policy_is_read_from_the_same_strings(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PIAPI_BULK_ON_AMBIGUOUS", value)
    assert Settings().on_ambiguous is AmbiguousPolicy(value)


def test_an_unknown_ambiguous_policy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIAPI_BULK_ON_AMBIGUOUS", "hope")
    with pytest.raises(ValidationError):
        Settings()
