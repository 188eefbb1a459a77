"""The create half: what each answer PiAPI can give a create means for its row."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from workers import piapi
from workers.piapi import (
    AmbiguousError,
    LimitScope,
    PermanentError,
    PiAPIClient,
    PiAPIError,
    PlanRequired,
    RetryableError,
    ServerError,
    parse_task,
)
from workers.uploads import LocalFileGone
from workers.work import Tally
from workers.work.create import (
    CreateAnswer,
    CreateVerdict,
    UploadFailure,
    decide_create,
    decide_upload,
)

TASK: dict[str, Any] = {"task_id": "t1", "model": "Qubico/joycaption",
                        "task_type": "joycaption-beta-one", "status": "pending"}


def _answer(exc: PiAPIError) -> CreateAnswer:
    assert isinstance(exc, AmbiguousError | RetryableError | PermanentError)
    return exc


def _refused(status: int, message: str = "", *, headers: dict[str, str] | None = None,
             json: Any = None) -> CreateAnswer:
    """The client's exception for a create PiAPI refused with this status and body."""
    body = json if json is not None else ({"code": status, "message": message} if message
                                          else {"code": status})
    try:
        piapi.raise_for_status(httpx.Response(status, json=body, headers=headers or {}),
                               create=True)
    except PiAPIError as exc:
        return _answer(exc)
    raise AssertionError("not a refusal")


def _sent(error: type[httpx.TransportError]) -> CreateAnswer:
    """The client's exception for a create whose connection failed this way."""
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("x", request=request)

    client = PiAPIClient("http://piapi.test", "k" * 32, transport=httpx.MockTransport(fail))
    try:
        client.create_task("m", "t", {})
    except PiAPIError as exc:
        return _answer(exc)
    raise AssertionError("no error")


# (name, PiAPI's answer, verdict, message, Retry-After, 429 scope)
CREATES: list[tuple[str, Any, CreateVerdict, str, float | None, LimitScope | None]] = [
    ("created", parse_task(TASK), CreateVerdict.CREATED, "", None, None),
    ("created, already completed", parse_task({**TASK, "status": "completed"}),
     CreateVerdict.CREATED, "", None, None),
    ("read timeout after sending", _sent(httpx.ReadTimeout), CreateVerdict.AMBIGUOUS,
     "ReadTimeout: no answer to create", None, None),
    ("gateway timeout", _refused(504, "gateway timeout"), CreateVerdict.AMBIGUOUS,
     "HTTP 504: gateway timeout", None, None),
    ("not sent", _sent(httpx.ConnectError), CreateVerdict.RETRY,
     "ConnectError: request not sent", None, None),
    ("over the concurrency limit", _refused(429, "concurrent task limit exceeded",
                                            headers={"Retry-After": "2"}),
     CreateVerdict.RETRY, "HTTP 429: concurrent task limit exceeded", 2.0,
     LimitScope.CONCURRENCY),
    ("too many requests", _refused(429, "too many requests"), CreateVerdict.RETRY,
     "HTTP 429: too many requests", None, LimitScope.RATE),
    ("a 429 naming neither limit", _refused(429), CreateVerdict.RETRY, "HTTP 429", None,
     LimitScope.CONCURRENCY),
    ("server error", _refused(503, "busy", headers={"Retry-After": "5"}), CreateVerdict.RETRY,
     "HTTP 503: busy", 5.0, None),
    ("provider pool busy", _refused(400, "no available account"), CreateVerdict.RETRY,
     "HTTP 400: no available account", None, None),
    ("a pool account out of credits", _refused(400, "account 7 doesn't have enough credits"),
     CreateVerdict.RETRY, "HTTP 400: account 7 doesn't have enough credits", None, None),
    ("key refused", _refused(401, "Unauthorized"), CreateVerdict.ACCOUNT,
     "PiAPI refused the account: HTTP 401: Unauthorized", None, None),
    ("out of credit", _refused(400, "insufficient credits"), CreateVerdict.ACCOUNT,
     "PiAPI refused the account: HTTP 400: insufficient credits", None, None),
    ("payment required", _refused(402), CreateVerdict.ACCOUNT,
     "PiAPI refused the account: HTTP 402", None, None),
    ("bad input", _refused(400, "field image is required"), CreateVerdict.REJECTED,
     "HTTP 400: field image is required", None, None),
    ("unknown model", _refused(404, "model not found"), CreateVerdict.REJECTED,
     "HTTP 404: model not found", None, None),
    ("upload refused for the plan", PlanRequired("HTTP 403: Insufficient plan level",
                                                 status=403, reason="Insufficient plan level"),
     CreateVerdict.PLAN, "uploads need the Creator plan or higher (PiAPI said: Insufficient "
     "plan level)", None, None),
]


@pytest.mark.parametrize(("answer", "verdict", "message", "retry_after_s", "limit"),
                         [c[1:] for c in CREATES], ids=[c[0] for c in CREATES])
def test_decide_create(answer: CreateAnswer, verdict: CreateVerdict, message: str,
                       retry_after_s: float | None, limit: LimitScope | None) -> None:
    d = decide_create(answer)
    assert (d.verdict, d.message, d.retry_after_s, d.limit) == (verdict, message,
                                                                retry_after_s, limit)
    assert d.view is (answer if verdict is CreateVerdict.CREATED else None)
    assert d.frees_slot is (verdict is not CreateVerdict.CREATED)


def test_every_verdict_is_in_the_table() -> None:
    assert {c[2] for c in CREATES} == set(CreateVerdict)


def test_a_message_reports_its_429s_by_scope() -> None:
    tally = Tally()
    for answer in (_refused(429, "concurrent task limit exceeded"), _refused(429),
                   _refused(429, "too many requests"), _refused(503), parse_task(TASK)):
        tally.limited(decide_create(answer).limit)
    assert (tally.conc_429, tally.rate_429) == (2, 1)


# (name, how uploading the row's files failed, verdict, message): the create was not sent,
# so every failure reads as a refused create would; never ambiguous.
UPLOADS: list[tuple[str, UploadFailure, CreateVerdict, str]] = [
    ("5xx", ServerError("HTTP 503: busy", status=503), CreateVerdict.RETRY,
     "upload failed: HTTP 503: busy"),
    ("answer lost after sending", ServerError("ReadTimeout: no answer"), CreateVerdict.RETRY,
     "upload failed: ReadTimeout: no answer"),
    ("plan below Creator", PlanRequired("HTTP 403: Insufficient plan level", status=403,
                                        reason="Insufficient plan level"),
     CreateVerdict.PLAN,
     "uploads need the Creator plan or higher (PiAPI said: Insufficient plan level)"),
    ("key refused", _refused(401, "Unauthorized"), CreateVerdict.ACCOUNT,
     "upload failed: PiAPI refused the account: HTTP 401: Unauthorized"),
    ("bad input", _refused(400, "Invalid request parameters"), CreateVerdict.REJECTED,
     "upload failed: HTTP 400: Invalid request parameters"),
    ("file gone", LocalFileGone("cannot read local file /p/cat.png: No such file or directory"),
     CreateVerdict.REJECTED, "cannot read local file /p/cat.png: No such file or directory"),
]


@pytest.mark.parametrize(("failure", "verdict", "message"), [u[1:] for u in UPLOADS],
                         ids=[u[0] for u in UPLOADS])
def test_decide_upload(failure: UploadFailure, verdict: CreateVerdict, message: str) -> None:
    d = decide_upload(failure)
    assert (d.verdict, d.message) == (verdict, message)
    assert d.verdict is not CreateVerdict.AMBIGUOUS and d.frees_slot
