"""Retry policy: back-off bounds, Retry-After, and classification of task failures."""

from __future__ import annotations

import pytest

from workers.retry import (
    BASE_BACKOFF_S,
    MAX_BACKOFF_S,
    FailureClass,
    backoff_s,
    classify_failure,
)


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
