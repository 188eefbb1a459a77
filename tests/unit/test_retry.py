"""Retry policy: back-off bounds, Retry-After, and classification of task failures."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from workers.db import create_tables, make_engine
from workers.halt import get_halt
from workers.piapi import PiAPIClient, parse_task
from workers.retry import (
    BASE_BACKOFF_S,
    MAX_BACKOFF_S,
    FailureClass,
    backoff_s,
    classify_failure,
    should_retry,
)
from workers.transitions import PollTarget
from workers.work import WorkerContext, outcome_of


@pytest.mark.parametrize(
    ("tries", "rng", "expected"),
    [
        (1, 0.0, BASE_BACKOFF_S),
        (1, 1.0, BASE_BACKOFF_S * 0.5),
        (2, 0.0, 2 * BASE_BACKOFF_S),
        (3, 0.0, 4 * BASE_BACKOFF_S),
        (50, 0.0, MAX_BACKOFF_S),
        (50, 1.0, MAX_BACKOFF_S * 0.5),
        (0, 0.0, BASE_BACKOFF_S),
    ],
)
def test_backoff_table(tries: int, rng: float, expected: float) -> None:
    assert backoff_s(tries, None, lambda: rng) == pytest.approx(expected)


@pytest.mark.parametrize("tries", range(0, 40))
@pytest.mark.parametrize("rng", [0.0, 0.3, 0.999])
def test_backoff_is_bounded(tries: int, rng: float) -> None:
    delay = backoff_s(tries, None, lambda: rng)
    assert 0 < delay <= MAX_BACKOFF_S


@pytest.mark.parametrize("retry_after", [0.0, 1.0, 12.0, 300.0])
def test_retry_after_is_never_undercut(retry_after: float) -> None:
    for rng in (0.0, 0.5, 1.0):
        assert backoff_s(1, retry_after, lambda r=rng: r) >= retry_after


def test_should_retry_bound() -> None:
    assert should_retry(0, 3)
    assert should_retry(2, 3)
    assert not should_retry(3, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no available account, please retry later", FailureClass.TRANSIENT),
        ("suno api status: 429", FailureClass.TRANSIENT),
        ("task timeout", FailureClass.TRANSIENT),
        ("content moderation failed; failed to do request", FailureClass.INPUT),
        ("prompt violates our content policy", FailureClass.INPUT),
        ("invalid image url", FailureClass.INPUT),
        ("doesn't have enough credits", FailureClass.TRANSIENT),  # a provider pool's
        ("account 12 does not have enough credits; failed", FailureClass.TRANSIENT),
        ("your account doesn't have enough credits", FailureClass.ACCOUNT),
        ("insufficient balance", FailureClass.ACCOUNT),
        ("Insufficient credits in your account", FailureClass.ACCOUNT),
        ("insufficient resources on the node", FailureClass.TRANSIENT),
        ("something nobody documented", FailureClass.TRANSIENT),
        ("", FailureClass.TRANSIENT),
    ],
)
def test_classify_failure(text: str, expected: FailureClass) -> None:
    assert classify_failure(text) is expected


@pytest.mark.parametrize(("error", "logs", "kind", "error_kind"), [
    ({"raw_message": "account 4 doesn't have enough credits"}, [], "retry", "provider"),
    ({}, ["doesn't have enough credits"], "retry", "provider"),
    ({"message": "insufficient balance"}, [], "retry", "account"),
    ({"raw_message": "prompt violates our content policy"}, [], "failed", "input"),
])
def test_a_failed_task_never_halts_the_fleet(tmp_path: Path, error: dict[str, str],
                                             logs: list[str], kind: str,
                                             error_kind: str) -> None:
    """Only a refused key or an account-level create refusal halts; a failed task (even
    one naming credits) is retried as a new task within the attempt limit, or fails."""
    engine = make_engine(f"sqlite:///{tmp_path / 'halt.db'}")
    create_tables(engine)
    ctx = WorkerContext(engine=engine, client=cast(PiAPIClient, None), lease_s=30.0,
                        max_tries=3, clock=lambda: 1000.0, rng=lambda: 0.0)
    target = PollTarget(job_id=1, task_id="t1", polls=2, poll_errors=0, attempts=1,
                        max_attempts=3, model="Qubico/joycaption",
                        task_type="joycaption-beta-one", submitted_at=990.0)
    view = parse_task({"task_id": "t1", "status": "failed", "logs": logs,
                       "error": {"code": 0, "message": "", "raw_message": "", **error}})
    outcome = outcome_of(ctx, target, view)
    assert (outcome.kind, str(outcome.error_kind)) == (kind, error_kind)
    assert get_halt(engine) is None
    engine.dispose()
