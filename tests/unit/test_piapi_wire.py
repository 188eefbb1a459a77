"""The PiAPI client's wire handling: envelopes, statuses, times, errors (no network)."""

from __future__ import annotations

import json
import re
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from workers import piapi
from workers.piapi import (
    AccountError,
    AmbiguousError,
    InvalidRequest,
    LimitScope,
    NetworkError,
    NotFound,
    Outcome,
    PiAPIClient,
    ProviderBusy,
    RateLimited,
    ServerError,
    parse_task,
    refusal_reason,
    retry_after_s,
)

DOCS = Path("/work/shared/piapi-docs")

CREATE_EXAMPLE: dict[str, Any] = {
    "code": 200,
    "data": {
        "task_id": "1e829971-31b6-44e6-83cc-84d20b9e089c",
        "model": "Qubico/joycaption",
        "task_type": "joycaption-beta-one",
        "status": "pending",
        "config": {"service_mode": "", "webhook_config": {"endpoint": "", "secret": ""}},
        "input": {"image": "https://piapi.ai/workspace/flux/input_example.png"},
        "output": None,
        "meta": {
            "created_at": "2025-07-16T06:21:33.896480518Z",
            "started_at": "0001-01-01T00:00:00Z",
            "ended_at": "0001-01-01T00:00:00Z",
            "usage": {"type": "llm", "frozen": 0, "consume": 100000},
            "is_using_private_pool": False,
        },
        "detail": None,
        "logs": [],
        "error": {"code": 0, "raw_message": "", "message": "", "detail": None},
    },
    "message": "success",
}


def test_parse_the_documented_create_answer() -> None:
    view = parse_task(CREATE_EXAMPLE["data"])
    assert view.task_id == "1e829971-31b6-44e6-83cc-84d20b9e089c"
    assert view.status == "pending"
    assert view.started_at is None and view.ended_at is None
    assert view.created_at == "2025-07-16T06:21:33.896480518Z"
    assert view.usage == piapi.Usage("llm", 0, 100000)
    assert view.error is None
    assert view.outcome is Outcome.PENDING and not view.outcome.ended


# (PiAPI's status word, what it means): every word in piapi.STATUS_OUTCOMES, and the rest.
STATUSES: list[tuple[str, Outcome]] = [
    ("pending", Outcome.PENDING),
    ("processing", Outcome.RUNNING),
    ("staged", Outcome.RUNNING),  # Midjourney over its limit: queued, not cancellable
    ("completed", Outcome.COMPLETED),
    ("finished", Outcome.COMPLETED),  # the history's word
    ("success", Outcome.COMPLETED),
    ("succeeded", Outcome.COMPLETED),
    ("failed", Outcome.FAILED),
    ("cancelled", Outcome.CANCELLED),
    ("canceled", Outcome.CANCELLED),
    ("Completed", Outcome.COMPLETED),  # the schema capitalises: compared case-insensitively
    (" PENDING ", Outcome.PENDING),
    ("queueing-up", Outcome.RUNNING),  # a word nobody documented: not ended
    ("", Outcome.RUNNING),
]


@pytest.mark.parametrize(("status", "expected"), STATUSES)
def test_status_outcome(status: str, expected: Outcome) -> None:
    view = parse_task(dict(CREATE_EXAMPLE["data"], status=status))
    assert view.outcome is expected
    assert view.outcome.ended is (expected in (Outcome.COMPLETED, Outcome.FAILED,
                                               Outcome.CANCELLED))
    row = piapi.parse_history_row({"task_id": "t", "status": status})
    assert row is not None and row.outcome is expected


def test_every_word_in_the_status_table_is_tested() -> None:
    assert set(piapi.STATUS_OUTCOMES.items()) <= set(STATUSES)


@pytest.mark.skipif(not DOCS.exists(), reason="shared docs not present")
def test_every_documented_status_word_is_in_the_table() -> None:
    text = (DOCS / "song-get-task.txt").read_text()
    allowed = text[text.index("Allowed values:\n", text.index("\nstatus\n")):].split("\n")[1]
    words = [w.lower() for w in re.findall(r"[A-Z][a-z]+", allowed)]
    assert words == ["completed", "processing", "pending", "failed", "staged"]
    assert set(words) <= set(piapi.STATUS_OUTCOMES)


@pytest.mark.parametrize(("output", "expected"), [
    (None, False), ("", False), ({"video": ""}, False), ({"a": [0, 0.0, None]}, False),
    ([" "], False), ("text", True), ({"images": ["", "https://x/y.png"]}, True),
])
def test_output_placeholders_are_not_content(output: Any, expected: bool) -> None:
    assert parse_task(dict(CREATE_EXAMPLE["data"], output=output)).has_output is expected


def test_null_times_meta_and_logs_are_tolerated() -> None:
    data = dict(CREATE_EXAMPLE["data"], meta={}, logs=None, error=None)
    data["meta"] = {"created_at": None, "started_at": None}
    view = parse_task(data)
    assert view.created_at is None and view.usage is None


def test_failed_task_error_text() -> None:
    data = dict(CREATE_EXAMPLE["data"], status="failed",
                error={"code": 10000, "raw_message": "no available account", "message": "failed",
                       "detail": None})
    view = parse_task(data)
    assert view.error is not None and view.error.text == "no available account; failed"


def test_a_body_without_task_id_is_a_server_error() -> None:
    with pytest.raises(ServerError):
        parse_task({"status": "pending"})


@pytest.mark.parametrize(
    ("status", "create", "expected"),
    [
        (429, True, RateLimited),
        (500, True, ServerError),
        (502, False, ServerError),
        (503, True, ServerError),
        (504, True, AmbiguousError),
        (522, True, AmbiguousError),
        (504, False, ServerError),
        (400, True, InvalidRequest),
        (401, False, AccountError),
        (402, True, AccountError),
        (403, True, AccountError),
        (404, False, NotFound),
    ],
)
def test_status_mapping(status: int, create: bool, expected: type[Exception]) -> None:
    response = httpx.Response(status, json={"code": status, "message": "x"})
    with pytest.raises(expected):
        piapi.raise_for_status(response, create=create)


# (create?, the 429's words, its scope)
LIMITS: list[tuple[bool, str, LimitScope]] = [
    (True, "concurrent task limit exceeded", LimitScope.CONCURRENCY),  # the emulator's
    (True, "Concurrency limit reached", LimitScope.CONCURRENCY),
    (True, "task limit reached", LimitScope.CONCURRENCY),
    (True, "too many requests", LimitScope.RATE),
    (True, "rate limit exceeded", LimitScope.RATE),
    (True, "", LimitScope.CONCURRENCY),  # a create's 429 that names neither
    (False, "concurrent task limit exceeded", LimitScope.RATE),  # a read adds no task
    (False, "too many requests", LimitScope.RATE),
    (False, "", LimitScope.RATE),
]


@pytest.mark.parametrize(("create", "message", "expected"), LIMITS)
def test_a_429_says_which_limit(create: bool, message: str, expected: LimitScope) -> None:
    body = {"code": 429, "message": message} if message else {}
    response = httpx.Response(429, json=body, headers={"Retry-After": "3"})
    with pytest.raises(RateLimited) as caught:
        piapi.raise_for_status(response, create=create)
    assert (caught.value.scope, caught.value.retry_after_s) == (expected, 3.0)


def test_credit_message_is_an_account_error() -> None:
    response = httpx.Response(400, json={"code": 400, "message": "insufficient credits"})
    with pytest.raises(AccountError):
        piapi.raise_for_status(response, create=True)


NO_ERROR = {"code": 0, "raw_message": "", "message": "", "detail": None}


def _refusal(top: str | None = None, *, raw: str = "", message: str = "",
             logs: list[Any] | None = None, code: int = 400) -> dict[str, Any]:
    """A refusal body as PiAPI may send it: the reason in `data.error`, `data.logs` or
    the top-level `message`."""
    body: dict[str, Any] = {"code": code, "data": {
        "task_id": "", "error": {**NO_ERROR, "raw_message": raw, "message": message},
        "logs": logs if logs is not None else []}}
    if top is not None:
        body["message"] = top
    return body


# (name, body, expected reason)
REASONS: list[tuple[str, Any, str]] = [
    ("top-level only", {"code": 400, "message": "invalid request"}, "invalid request"),
    ("raw message first, top-level after", _refusal("failed to create task",
                                                    raw="prompt is too long", message="bad"),
     "prompt is too long (failed to create task)"),
    ("error message", _refusal("failed", message="image url unreachable"),
     "image url unreachable (failed)"),
    ("logs of strings", _refusal("bad request", logs=["queued", " image url unreachable "]),
     "queued; image url unreachable (bad request)"),
    ("logs of objects, the last three", _refusal(None, logs=[
        "one", {"level": "error", "message": "two"}, {"msg": "three"}, {"time": 5},
        {"error": "four"}]), "two; three; four"),
    ("the top-level message is not repeated", _refusal("Insufficient Credits",
                                                       message="insufficient credits"),
     "insufficient credits"),
    ("error beats logs", _refusal(None, raw="raw", logs=["log"]), "raw"),
    ("one line", _refusal("a\nb", raw="x\n  y"), "x y (a b)"),
    ("bounded", _refusal(None, raw="z" * 1000), "z" * (piapi.MESSAGE_CHARS - 3) + "..."),
    ("nothing said", _refusal(None), ""),
    ("not an object", ["x"], ""),
    ("data not an object", {"message": "m", "data": "oops"}, "m"),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in REASONS],
                         ids=[c[0] for c in REASONS])
def test_refusal_reason(body: Any, expected: str) -> None:
    assert refusal_reason(body) == expected


# (name, HTTP status, create?, body, exception)
REFUSALS: list[tuple[str, int, bool, Any, type[Exception]]] = [
    ("account credit on create, in data.error", 400, True,
     _refusal("failed to create task", raw="Your account balance is insufficient"),
     AccountError),
    ("account credit on create, top-level", 400, True,
     {"code": 400, "message": "insufficient credits"}, AccountError),
    ("a pool account's credits on create are the provider's", 400, True,
     _refusal("failed", logs=["account 7 doesn't have enough credits"]), ProviderBusy),
    ("no available account on create", 400, True,
     _refusal("no available account, please retry later"), ProviderBusy),
    ("'your account' is the account", 400, True,
     _refusal(None, raw="your account doesn't have enough credits"), AccountError),
    ("a read's text never halts", 400, False, {"code": 400, "message": "insufficient credit"},
     InvalidRequest),
    ("a refused key on a read does", 401, False, {"code": 401, "message": "Unauthorized"},
     AccountError),
    ("payment required on create", 402, True, _refusal(None), AccountError),
    ("plain bad input", 400, True, _refusal("bad", raw="field image is required"),
     InvalidRequest),
]


@pytest.mark.parametrize(("status", "create", "body", "expected"), [c[1:] for c in REFUSALS],
                         ids=[c[0] for c in REFUSALS])
def test_refusals_by_status_and_reason(status: int, create: bool, body: Any,
                                       expected: type[Exception]) -> None:
    with pytest.raises(expected) as caught:
        piapi.raise_for_status(httpx.Response(status, json=body), create=create)
    reason = refusal_reason(body)
    assert str(caught.value) == (f"HTTP {status}: {reason}" if reason else f"HTTP {status}")


def test_the_specific_reason_reaches_the_exception_text() -> None:
    body = _refusal("failed to create task", raw="image url unreachable")
    client = _client(lambda r: httpx.Response(400, json=body))
    with pytest.raises(InvalidRequest, match=r"^HTTP 400: image url unreachable \(failed to "
                                             r"create task\)$"):
        client.create_task("m", "t", {})


@pytest.mark.parametrize(("create", "expected"), [(True, AccountError),
                                                  (False, InvalidRequest)])
def test_an_error_code_in_a_200_is_read_like_a_status(create: bool,
                                                      expected: type[Exception]) -> None:
    body = _refusal("failed", message="insufficient balance")
    client = _client(lambda r: httpx.Response(200, json=body))
    with pytest.raises(expected, match="insufficient balance"):
        if create:
            client.create_task("m", "t", {})
        else:
            client.get_task("t")


def test_a_provider_refusal_in_a_200_on_create_is_retryable() -> None:
    body = _refusal("failed", raw="account 3 does not have enough credits")
    with pytest.raises(ProviderBusy):
        _client(lambda r: httpx.Response(200, json=body)).create_task("m", "t", {})


@pytest.mark.parametrize(("status", "error", "logs", "expected"), [
    ("failed", NO_ERROR, ["started", {"message": "doesn't have enough credits"}],
     "started; doesn't have enough credits"),
    ("failed", {**NO_ERROR, "code": 10000}, ["provider said no"], "provider said no"),
    ("failed", {**NO_ERROR, "raw_message": "nsfw"}, ["ignored"], "nsfw"),
    ("failed", NO_ERROR, [], None),
    ("failed", None, None, None),
    ("processing", NO_ERROR, ["50% done"], None),  # progress logs are not an error
])
def test_a_failed_task_with_an_empty_error_reads_its_logs(
        status: str, error: Any, logs: Any, expected: str | None) -> None:
    view = parse_task(dict(CREATE_EXAMPLE["data"], status=status, error=error, logs=logs))
    assert (view.error.text if view.error else None) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [("12", 12.0), ("0.5", 0.5), ("100000", piapi.RETRY_AFTER_CAP_S), ("soon", None), ("", None)],
)
def test_retry_after(header: str, expected: float | None) -> None:
    headers = httpx.Headers({"retry-after": header} if header else {})
    assert retry_after_s(headers) == expected


def test_retry_after_http_date() -> None:
    headers = httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"})
    now = 1445412480.0  # 07:28:00 that day
    assert retry_after_s(headers, now=now) == pytest.approx(10.0)


def _client(handler: Any) -> PiAPIClient:
    return PiAPIClient("http://piapi.test", "k" * 32, transport=httpx.MockTransport(handler))


def test_error_code_inside_a_200_is_not_success() -> None:
    client = _client(lambda r: httpx.Response(200, json={"code": 500, "message": "boom"}))
    with pytest.raises(ServerError):
        client.get_task("t")


def test_code_zero_is_success() -> None:
    body = dict(CREATE_EXAMPLE, code=0)
    client = _client(lambda r: httpx.Response(200, json=body))
    assert client.get_task("t").task_id.startswith("1e82")


def test_unreadable_create_answer_is_ambiguous() -> None:
    client = _client(lambda r: httpx.Response(200, text="<html>cloudflare</html>"))
    with pytest.raises(AmbiguousError):
        client.create_task("m", "t", {})


def test_connect_error_on_create_is_retryable_not_ambiguous() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(NetworkError):
        _client(refuse).create_task("m", "t", {})


def test_read_timeout_on_create_is_ambiguous_but_on_get_retryable() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(AmbiguousError):
        _client(slow).create_task("m", "t", {})
    with pytest.raises(ServerError):
        _client(slow).get_task("t")


def test_request_carries_key_header_and_body() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=CREATE_EXAMPLE)

    _client(record).create_task("Qubico/joycaption", "joycaption-beta-one", {"image": "u"},
                                webhook_endpoint="http://127.0.0.1/h", webhook_secret="s")
    body = json.loads(seen[0].content)
    assert seen[0].headers["x-api-key"] == "k" * 32
    assert body["config"]["webhook_config"] == {"endpoint": "http://127.0.0.1/h", "secret": "s"}
    assert body["input"] == {"image": "u"}


@pytest.mark.skipif(not DOCS.exists(), reason="shared docs not present")
def test_parse_the_documented_webhook_bodies() -> None:
    for page in ("joycaption-get-task.txt", "wan-get-task.txt"):
        text = (DOCS / page).read_text()
        start = text.index('{\n    "timestamp"')
        body, _ = json.JSONDecoder().raw_decode(text[start:])
        view = parse_task(body["data"])
        assert view.status == "completed" and view.outcome is Outcome.COMPLETED
        assert view.output


@pytest.mark.parametrize(("urls", "default"), [
    (("https://api.piapi.ai", "https://upload.theapi.app"), True),  # production: the CA bundle
    (("http://127.0.0.1:8080", "https://upload.theapi.app"), True),  # uploads still go over TLS
    (("http://127.0.0.1:8080", "http://127.0.0.1:8080/upload"), False),  # the emulator
    (("HTTPS://api.piapi.ai",), True),
])
def test_only_a_client_calling_plain_http_alone_skips_the_ca_bundle(
        urls: tuple[str, ...], default: bool) -> None:
    verify = piapi.tls_verification(*urls)
    if default:
        assert verify is True
        return
    assert isinstance(verify, ssl.SSLContext)
    # Not verification turned off: a context that trusts no CA, so refuses any certificate.
    assert verify.verify_mode == ssl.CERT_REQUIRED and verify.check_hostname
    assert verify.cert_store_stats()["x509_ca"] == 0
