"""The poll half: what each answer PiAPI can give a GET of a running task means for its row.

Stuck tasks (the age past the learned tail) are tabled in test_stuck.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest

from workers import piapi, stuck
from workers.piapi import (
    LimitScope,
    PermanentError,
    PiAPIClient,
    PiAPIError,
    RetryableError,
    Usage,
    parse_task,
)
from workers.states import ErrorKind
from workers.transitions.common import PollTarget
from workers.work.poll import (
    ACCOUNT_RETRY_S,
    CANCELLED_AT_PIAPI,
    EMPTY_OUTPUT_GRACE,
    EMPTY_OUTPUT_RECHECK_S,
    NOT_FOUND_GRACE,
    PollAnswer,
    PollDecision,
    PollFacts,
    decide_poll,
)

NOW = 1_000_000.0
SUBMITTED = NOW - 20.0
NEXT_POLL = NOW + 7.0
TARGET = PollTarget(job_id=1, task_id="t1", polls=1, poll_errors=0, attempts=1,
                    max_attempts=3, model="Qubico/joycaption",
                    task_type="joycaption-beta-one", submitted_at=SUBMITTED)


def backoff(tries: int, retry_after_s: float | None) -> float:
    """A back-off that shows what it was asked: 10 s per try, plus any Retry-After."""
    return 10.0 * tries + (retry_after_s or 0.0)


FACTS = PollFacts(now=NOW, stuck_after_s=300.0, next_poll_at=NEXT_POLL, on_stuck="retry",
                  backoff=backoff)


def task(status: str, output: Any = None, error: str = "", **meta: str) -> PollAnswer:
    """A GET's answer: the task in PiAPI's envelope shape."""
    return parse_task({"task_id": "t1", "status": status, "output": output,
                       "error": {"code": 0, "raw_message": error, "message": ""},
                       "meta": {"usage": {"type": "llm", "frozen": 0, "consume": 100000},
                                **meta}})


def refused(status: int, message: str = "", **headers: str) -> PollAnswer:
    """The client's exception for a GET PiAPI refused with this status."""
    try:
        piapi.raise_for_status(httpx.Response(status, json={"code": status, "message": message},
                                              headers=headers), create=False)
    except (RetryableError, PermanentError) as exc:
        return exc
    raise AssertionError("not a refusal")


def not_sent() -> PollAnswer:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    try:
        PiAPIClient("http://piapi.test", "k" * 32,
                    transport=httpx.MockTransport(fail)).get_task("t1")
    except (RetryableError, PermanentError) as exc:
        return exc
    except PiAPIError:
        pass
    raise AssertionError("no error")


CAPTION = {"text": "a cat"}

# (name, row changes, answer, (kind, error kind, next poll / retry at, message), and the
# decision's counter, 429 scope and halt)
POLLS: list[tuple[str, dict[str, Any], PollAnswer,
                  tuple[str, ErrorKind | None, float | None, str],
                  tuple[str | None, LimitScope | None, str | None]]] = [
    # Ended well.
    ("completed", {}, task("completed", CAPTION), ("completed", None, None, ""),
     ("completed", None, None)),
    ("succeeded", {}, task("succeeded", CAPTION), ("completed", None, None, ""),
     ("completed", None, None)),
    ("success", {}, task("Success", CAPTION), ("completed", None, None, ""),
     ("completed", None, None)),
    ("finished", {}, task("finished", CAPTION), ("completed", None, None, ""),
     ("completed", None, None)),
    ("completed, output still placeholders", {}, task("completed", {"text": ""}),
     ("progress", None, NOW + EMPTY_OUTPUT_RECHECK_S, ""), (None, None, None)),
    ("completed, placeholders past the grace", {"polls": EMPTY_OUTPUT_GRACE},
     task("completed", {"text": ""}), ("completed", None, None, ""), ("completed", None, None)),
    # Still going.
    ("pending", {}, task("pending"), ("progress", None, NEXT_POLL, ""), (None, None, None)),
    ("processing", {}, task("processing"), ("progress", None, NEXT_POLL, ""),
     (None, None, None)),
    ("staged", {}, task("staged"), ("progress", None, NEXT_POLL, ""), (None, None, None)),
    ("a word nobody documented", {}, task("queueing-up"), ("progress", None, NEXT_POLL, ""),
     (None, None, None)),
    ("no status at all", {}, task(""), ("progress", None, NEXT_POLL, ""), (None, None, None)),
    # Ended badly: a new task within the attempt limit, unless the input is at fault.
    ("failed: provider", {}, task("failed", error="no available account"),
     ("retry", ErrorKind.PROVIDER, NOW + 10.0, "no available account"),
     ("task_failed", None, None)),
    ("failed: a pool account's credits", {},
     task("failed", error="account 4 doesn't have enough credits"),
     ("retry", ErrorKind.PROVIDER, NOW + 10.0, "account 4 doesn't have enough credits"),
     ("task_failed", None, None)),
    ("failed: your balance (never halts)", {}, task("failed", error="insufficient balance"),
     ("retry", ErrorKind.ACCOUNT, NOW + ACCOUNT_RETRY_S, "insufficient balance"),
     ("task_failed", None, None)),
    ("failed: the input", {}, task("failed", error="prompt violates our content policy"),
     ("failed", ErrorKind.INPUT, None, "prompt violates our content policy"),
     ("task_failed", None, None)),
    ("failed: out of attempts", {"attempts": 3}, task("failed", error="no available account"),
     ("failed", ErrorKind.PROVIDER, None,
      "failed 3 of 3 attempts; last: no available account"), ("task_failed", None, None)),
    ("failed: attempts before an operator retry do not count", {"attempts": 3,
                                                                "retry_base": 2},
     task("failed", error="internal error"),
     ("retry", ErrorKind.PROVIDER, NOW + 30.0, "internal error"), ("task_failed", None, None)),
    ("failed with no words", {}, task("failed"),
     ("retry", ErrorKind.PROVIDER, NOW + 10.0, "task failed"), ("task_failed", None, None)),
    ("cancelled at PiAPI", {}, task("cancelled"),
     ("failed", ErrorKind.CANCELLED, None, "task cancelled"), ("task_failed", None, None)),
    ("canceled at PiAPI", {}, task("canceled"),
     ("failed", ErrorKind.CANCELLED, None, "task canceled"), ("task_failed", None, None)),
    # A cancelled batch: its running tasks finish (`finish`) or are abandoned (`now`).
    ("batch cancelled, its task failed", {"cancel_mode": "finish"},
     task("failed", error="no available account"),
     ("cancelled", ErrorKind.CANCELLED, None,
      "cancelled by operator; its task failed: no available account"),
     ("task_failed", None, None)),
    ("batch cancelled, its task processing", {"cancel_mode": "finish"}, task("processing"),
     ("progress", None, NEXT_POLL, ""), (None, None, None)),
    ("batch cancelled now, its task processing", {"cancel_mode": "now"}, task("processing"),
     ("cancelled", ErrorKind.CANCELLED, None,
      "cancelled by operator (--now) while its task was processing; task t1 may still "
      "finish and be charged: it is watched, and its result is used if it completes"),
     ("operator_abandoned", None, None)),
    ("batch cancelled, its task completed", {"cancel_mode": "now"}, task("completed", CAPTION),
     ("completed", None, None, ""), ("completed", None, None)),
    # No task in the answer: look again after a back-off.
    ("not found", {}, refused(404, "task not found"),
     ("poll_error", None, NOW + 10.0, "HTTP 404: task not found"), ("poll_error", None, None)),
    ("not found, past the grace", {"poll_errors": NOT_FOUND_GRACE},
     refused(404, "task not found"),
     ("lost", None, None, "PiAPI does not know the task: HTTP 404: task not found"),
     (None, None, None)),
    ("refused as invalid", {"poll_errors": 2}, refused(400, "bad task id"),
     ("poll_error", None, NOW + 30.0, "HTTP 400: bad task id"), ("poll_error", None, None)),
    ("key refused: the fleet halts", {}, refused(401, "Unauthorized"),
     ("poll_error", None, NOW + 10.0 + ACCOUNT_RETRY_S, "HTTP 401: Unauthorized"),
     ("poll_error", None, "PiAPI refused the account: HTTP 401: Unauthorized")),
    ("a read's credit words never halt", {}, refused(400, "insufficient credit"),
     ("poll_error", None, NOW + 10.0, "HTTP 400: insufficient credit"),
     ("poll_error", None, None)),
    ("429", {}, refused(429, "too many requests", **{"Retry-After": "4"}),
     ("poll_error", None, NOW + 14.0, "HTTP 429: too many requests"),
     ("poll_error", LimitScope.RATE, None)),
    ("a read's 429 is about the rate, whatever it says", {},
     refused(429, "concurrent task limit exceeded"),
     ("poll_error", None, NOW + 10.0, "HTTP 429: concurrent task limit exceeded"),
     ("poll_error", LimitScope.RATE, None)),
    ("server error", {}, refused(502, "bad gateway"),
     ("poll_error", None, NOW + 10.0, "HTTP 502: bad gateway"), ("poll_error", None, None)),
    ("no answer", {}, not_sent(), ("poll_error", None, NOW + 10.0, "ReadTimeout: no answer"),
     ("poll_error", None, None)),
]


@pytest.mark.parametrize(("changes", "answer", "record", "extra"), [c[1:] for c in POLLS],
                         ids=[c[0] for c in POLLS])
def test_decide_poll(changes: dict[str, Any], answer: PollAnswer,
                     record: tuple[str, ErrorKind | None, float | None, str],
                     extra: tuple[str | None, LimitScope | None, str | None]) -> None:
    d = decide_poll(replace(TARGET, **changes), answer, FACTS)
    assert d.record is not None, "no cancel is asked for any of these"
    o = d.record
    assert (o.kind, o.error_kind, o.next_at, o.message) == record
    assert (d.counter, d.limit, d.halt) == extra
    assert o.view is (answer if not isinstance(answer, PiAPIError) else None)
    assert o.attempt_state == ("abandoned" if d.counter == "operator_abandoned" else None)
    if d.counter == "operator_abandoned":  # PiAPI runs it on: watched, holding its slot
        until = stuck.watch_until(NOW, FACTS.stuck_after_s)
        assert (o.watch_until, o.watch_next) == (until, stuck.next_look_at(
            NOW, FACTS.stuck_after_s, until))
    else:
        assert o.watch_until is None


def test_a_completed_task_records_how_long_it_took() -> None:
    view = task("completed", CAPTION, created_at="2025-07-16T06:21:30Z",
                ended_at="2025-07-16T06:21:42.5Z")
    d = decide_poll(TARGET, view, FACTS)
    assert d.record is not None and d.record.duration_s == 12.5
    d = decide_poll(TARGET, task("completed", CAPTION), FACTS)  # PiAPI gave no times
    assert d.record is not None and d.record.duration_s == NOW - SUBMITTED


def _decide_cancelling(changes: dict[str, Any], answer: PollAnswer,
                       cancels: bool) -> tuple[PollDecision, PollDecision]:
    """The first decision, and the one made with PiAPI's answer to the cancel it asked."""
    target = replace(TARGET, **changes)
    first = decide_poll(target, answer, FACTS)
    return first, decide_poll(target, answer, replace(FACTS, cancelled=cancels))


def test_a_cancelled_batch_cancels_its_pending_task_at_piapi() -> None:
    first, then = _decide_cancelling({"cancel_mode": "finish"}, task("pending"), cancels=True)
    assert first.ask_cancel and first.record is None
    o = then.record
    assert o is not None and (o.kind, o.error_kind, o.message, o.attempt_state) == (
        "cancelled", ErrorKind.CANCELLED, CANCELLED_AT_PIAPI, "cancelled")
    assert o.view is not None and o.view.usage == Usage("llm", 0, 0)  # refunded
    assert then.counter == "operator_cancelled"


@pytest.mark.parametrize(("mode", "kind"), [("finish", "progress"), ("now", "cancelled")])
def test_a_pending_task_that_will_not_cancel_runs_on_or_is_abandoned(mode: str,
                                                                     kind: str) -> None:
    first, then = _decide_cancelling({"cancel_mode": mode}, task("pending"), cancels=False)
    assert first.ask_cancel
    assert then.record is not None and then.record.kind == kind
    if kind == "cancelled":
        assert then.record.attempt_state == "abandoned"


def test_every_kind_of_record_is_in_the_table() -> None:
    kinds = {c[3][0] for c in POLLS}
    assert kinds == {"completed", "progress", "retry", "failed", "cancelled", "poll_error",
                     "lost"}
