"""Retry policy as small pure functions: how long to back off, and which failures to retry."""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import StrEnum

BASE_BACKOFF_S = 1.0
"""First back-off after a retryable error."""
MAX_BACKOFF_S = 120.0
"""No back-off grows past this (before Retry-After, which may ask for longer)."""
JITTER_FRACTION = 0.5
"""Back-offs are drawn from [1 - this, 1] of the exponential value, so a fleet spreads out."""


def backoff_s(
    tries: int, retry_after_s: float | None = None, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before try number `tries + 1`, honouring the server's Retry-After.

    `tries` counts the retryable errors so far (1 after the first one).
    """
    exponent = max(tries - 1, 0)
    ceiling = min(MAX_BACKOFF_S, BASE_BACKOFF_S * (2.0**min(exponent, 30)))
    delay = ceiling * (1.0 - JITTER_FRACTION * rng())
    if retry_after_s is not None:
        # Never earlier than asked; a little jitter after it so waiters do not stampede.
        delay = max(delay, retry_after_s + 0.1 * ceiling * rng())
    return delay


class FailureClass(StrEnum):
    """What a task PiAPI reports `failed` means for the row."""

    TRANSIENT = "transient"  # try a new task
    INPUT = "input"  # the input itself is refused: never retry
    ACCOUNT = "account"  # the account's own credit, says the task: wait, then a new task.
    # Never a reason to halt the fleet: a task that got created was paid for up front; an
    # account that cannot pay has its next create refused, and that refusal halts.


PROVIDER_CREDIT_MARKERS = ("doesn't have enough credit", "does not have enough credit")
"""A provider pool account out of credits (PiAPI's, not yours): another task may run on
another pool account, so it is transient. Unless the text says "your"."""
ACCOUNT_MARKERS = (
    "insufficient balance", "insufficient credit", "enough balance", "enough credit",
    "balance is not enough", "out of credit", "payment required", "your balance", "your credit",
)
INPUT_MARKERS = (
    "moderation", "content policy", "nsfw", "sensitive", "prohibited", "violat",
    "invalid", "not supported", "unsupported", "too long", "bad request", "illegal",
)
TRANSIENT_MARKERS = (
    "no available account", "timeout", "timed out", "try again", "retry", "busy",
    "429", "500", "502", "503", "overload", "internal", "network", "unavailable",
    "rate limit", "temporar",
)


def classify_failure(text: str) -> FailureClass:
    """Classify a failed task's error text.

    Unknown text counts as transient: PiAPI refunds failed tasks, so one more try (bounded
    by the attempt limit) costs nothing unless it succeeds, and giving up on an unlisted
    provider hiccup would lose a row that would have completed.
    """
    lowered = text.lower()
    if any(m in lowered for m in PROVIDER_CREDIT_MARKERS) and "your " not in lowered:
        return FailureClass.TRANSIENT
    if any(m in lowered for m in ACCOUNT_MARKERS):
        return FailureClass.ACCOUNT
    if any(m in lowered for m in TRANSIENT_MARKERS):
        return FailureClass.TRANSIENT
    if any(m in lowered for m in INPUT_MARKERS):
        return FailureClass.INPUT
    return FailureClass.TRANSIENT
