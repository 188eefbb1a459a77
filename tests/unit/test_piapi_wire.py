"""The PiAPI client's wire handling: envelopes, statuses, times, errors (no network)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from workers import piapi
from workers.piapi import (
    AccountError,
    AmbiguousError,
    InvalidRequest,
    NetworkError,
    NotFound,
    PiAPIClient,
    RateLimited,
    ServerError,
    parse_task,
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
    assert not view.is_terminal


def test_status_is_compared_case_insensitively() -> None:
    data = dict(CREATE_EXAMPLE["data"], status="Completed")
    assert parse_task(data).is_terminal


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


def test_credit_message_is_an_account_error() -> None:
    response = httpx.Response(400, json={"code": 400, "message": "insufficient credits"})
    with pytest.raises(AccountError):
        piapi.raise_for_status(response, create=True)


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
        assert view.status == "completed" and view.is_terminal
        assert view.output
