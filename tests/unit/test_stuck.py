"""Stuck tasks: the pure policy, and what a poll makes of a task far past its kind's tail."""

from __future__ import annotations

from dataclasses import replace

import pytest

from workers import stuck
from workers.piapi import TaskView, Usage, status_outcome
from workers.states import AttemptState, ErrorKind
from workers.stuck import Action, OnStuck
from workers.transitions.common import PollTarget
from workers.transitions.poll import PollOutcome
from workers.work.poll import PollFacts, decide_poll

LIMIT = 300.0
"""Joycaption's stuck limit before anything is learned: 10 x its 30 s prior."""
T0 = 1_000_000.0


@pytest.mark.parametrize(("status", "age", "policy", "left", "expected"), [
    # Not stuck yet: whatever the status and policy.
    ("processing", LIMIT, OnStuck.RETRY, True, None),
    ("pending", LIMIT - 1, OnStuck.FAIL, True, None),
    # Pending: always cancelled first (PiAPI refunds it), whatever the policy.
    ("pending", LIMIT + 1, OnStuck.RETRY, True, Action.CANCEL),
    ("pending", LIMIT + 1, OnStuck.FAIL, False, Action.CANCEL),
    ("pending", LIMIT + 1, OnStuck.WAIT, True, Action.CANCEL),
    # Anything else PiAPI cannot cancel: by policy.
    ("processing", LIMIT + 1, OnStuck.RETRY, True, Action.REPLACE),
    ("processing", LIMIT + 1, OnStuck.RETRY, False, Action.FAIL),
    ("processing", LIMIT + 1, OnStuck.FAIL, True, Action.FAIL),
    ("processing", LIMIT + 1, OnStuck.WAIT, True, None),
    ("processing", LIMIT + 1, OnStuck.WAIT, False, None),
    ("staged", LIMIT + 1, OnStuck.RETRY, True, Action.REPLACE),
    ("queueing-up", LIMIT + 1, OnStuck.FAIL, True, Action.FAIL),  # a status nobody documented
])
def test_action(status: str, age: float, policy: OnStuck, left: bool,
                expected: Action | None) -> None:
    assert stuck.action(status_outcome(status), age, LIMIT, policy, left) is expected


@pytest.mark.parametrize(("age", "policy", "left", "expected"), [
    (LIMIT + 1, OnStuck.RETRY, True, None),  # try the cancel again at the next poll
    (2 * LIMIT, OnStuck.FAIL, True, None),
    (2 * LIMIT + 1, OnStuck.RETRY, True, Action.REPLACE),  # the cancel never works: give up
    (2 * LIMIT + 1, OnStuck.RETRY, False, Action.FAIL),
    (2 * LIMIT + 1, OnStuck.WAIT, True, None),
])
def test_a_pending_task_that_will_not_cancel(age: float, policy: OnStuck, left: bool,
                                             expected: Action | None) -> None:
    assert stuck.after_failed_cancel(age, LIMIT, policy, left) is expected


def test_after_a_cancel_and_the_policy_of_a_batch() -> None:
    assert stuck.after_cancel(True) is Action.REPLACE
    assert stuck.after_cancel(False) is Action.FAIL
    assert stuck.policy_of(None, "retry") is OnStuck.RETRY
    assert stuck.policy_of("wait", "retry") is OnStuck.WAIT
    assert stuck.policy_of("nonsense", "fail") is OnStuck.FAIL


def test_the_watch_is_bounded_and_its_looks_spaced() -> None:
    assert stuck.watch_until(T0, LIMIT) == T0 + 10 * LIMIT
    assert stuck.watch_until(T0, 3.6) == T0 + stuck.WATCH_MIN_S  # fast kinds: minutes too
    assert stuck.watch_interval_s(LIMIT) == LIMIT / 2
    assert stuck.watch_interval_s(1e6) == stuck.MAX_WATCH_INTERVAL_S
    assert stuck.watch_interval_s(0.0) == stuck.MIN_WATCH_INTERVAL_S
    until = stuck.watch_until(T0, LIMIT)
    assert stuck.next_look_at(T0, LIMIT, until) == T0 + LIMIT / 2
    assert stuck.next_look_at(until - 1, LIMIT, until) == until  # the last look: at the bound
    assert stuck.next_look_at(until, LIMIT, until) > until  # never a look in the past


def test_messages() -> None:
    assert stuck.seconds(3.25) == "3.2s" and stuck.seconds(312.4) == "312s"
    gone = stuck.abandoned_message("t1", "processing", 400, LIMIT)
    assert gone.startswith("task t1 stuck processing for 400s (expected at most 300s)")
    assert stuck.failed_message(gone, OnStuck.FAIL, 1, 3) == gone + " (--on-stuck fail)"
    assert stuck.failed_message(gone, OnStuck.RETRY, 3, 3).startswith(
        "stuck: 3 of 3 attempts used; last: task t1 stuck processing")


# --- what a poll makes of it ------------------------------------------------------------------
class _Client:
    """Answers cancels as PiAPI would: only a pending task can be cancelled."""

    def __init__(self, cancels: bool) -> None:
        self.cancels = cancels
        self.cancelled: list[str] = []

    def cancel_task(self, task_id: str) -> bool:
        self.cancelled.append(task_id)
        return self.cancels


def _poll(status: str, age: float, *, policy: str | None = None, fleet: str = "retry",
          attempts: int = 1, cancels: bool = True) -> tuple[PollOutcome, _Client]:
    """A poll's decision as the worker makes it: decided, and decided again with PiAPI's
    answer when it asked for a cancel."""
    client = _Client(cancels)
    target = PollTarget(7, "t1", 3, 0, attempts=attempts, max_attempts=2,
                        model="Qubico/joycaption", task_type="joycaption-beta-one",
                        submitted_at=T0, on_stuck=policy)
    view = TaskView("t1", "Qubico/joycaption", "joycaption-beta-one", status, None,
                    Usage("llm", 0, 100000), None, None, None, None)
    facts = PollFacts(now=T0 + age, stuck_after_s=LIMIT, next_poll_at=T0 + age + 1.0,
                      on_stuck=fleet, backoff=lambda tries, after: 1.0)
    decision = decide_poll(target, view, facts)
    if decision.ask_cancel:
        decision = decide_poll(target, view,
                               replace(facts, cancelled=client.cancel_task(target.task_id)))
    assert decision.record is not None
    return decision.record, client


@pytest.mark.parametrize(("status", "age", "policy", "attempts", "kind", "attempt_state"), [
    ("processing", LIMIT - 1, None, 1, "progress", None),
    # the fleet's default: retry
    ("processing", LIMIT + 1, None, 1, "retry", AttemptState.ABANDONED),
    ("processing", LIMIT + 1, "retry", 2, "failed", AttemptState.ABANDONED),  # out of attempts
    ("processing", LIMIT + 1, "fail", 1, "failed", AttemptState.ABANDONED),
    ("processing", 50 * LIMIT, "wait", 1, "progress", None),
    ("staged", LIMIT + 1, "retry", 1, "retry", AttemptState.ABANDONED),
    ("pending", LIMIT + 1, "wait", 1, "retry", AttemptState.CANCELLED),
    ("pending", LIMIT + 1, "fail", 2, "failed", AttemptState.CANCELLED),
])
def test_a_poll_of_a_stuck_task(status: str, age: float, policy: str | None, attempts: int,
                                kind: str, attempt_state: AttemptState | None) -> None:
    outcome, client = _poll(status, age, policy=policy, attempts=attempts)
    assert (outcome.kind, outcome.attempt_state) == (kind, attempt_state)
    assert client.cancelled == (["t1"] if status == "pending" and age > LIMIT else [])
    if kind in ("retry", "failed"):
        assert outcome.error_kind is ErrorKind.STUCK
    if attempt_state == AttemptState.ABANDONED:  # watched from now on, its first look soon
        assert outcome.watch_until == T0 + age + 10 * LIMIT
        assert outcome.watch_next == T0 + age + LIMIT / 2
        assert outcome.attempt_error is not None or outcome.kind == "retry"
        assert outcome.view is not None and outcome.view.usage == Usage("llm", 0, 100000)
    if attempt_state == AttemptState.CANCELLED:  # refunded: no usage recorded for it
        assert outcome.watch_until is None
        assert outcome.view is not None and outcome.view.usage == Usage("llm", 0, 0)


def test_the_batch_policy_wins_over_the_fleet_default() -> None:
    outcome, _ = _poll("processing", LIMIT + 1, policy="fail", fleet="wait")
    assert outcome.kind == "failed" and "(--on-stuck fail)" in outcome.message
    outcome, _ = _poll("processing", LIMIT + 1, policy=None, fleet="wait")
    assert outcome.kind == "progress"


def test_a_pending_task_that_will_not_cancel_is_polled_then_given_up() -> None:
    outcome, client = _poll("pending", LIMIT + 1, cancels=False)
    assert outcome.kind == "progress" and client.cancelled == ["t1"]
    outcome, _ = _poll("pending", 2 * LIMIT + 1, cancels=False)
    assert (outcome.kind, outcome.attempt_state) == ("retry", AttemptState.ABANDONED)


def test_out_of_attempts_the_row_says_so() -> None:
    outcome, _ = _poll("processing", LIMIT + 1, attempts=2)
    assert outcome.message.startswith("stuck: 2 of 2 attempts used; last: task t1 stuck "
                                      "processing for")
    assert outcome.attempt_error is not None and outcome.attempt_error.startswith("task t1")


def test_the_on_stuck_option_is_checked() -> None:
    from scheduler.operator import parse_on_stuck
    from workers.settings import ConfigError

    assert [parse_on_stuck(v) for v in ("retry", "fail", "wait", None)] == [
        "retry", "fail", "wait", None]
    with pytest.raises(ConfigError, match="must be retry, fail or wait"):
        parse_on_stuck("later")
