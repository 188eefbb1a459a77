"""The upload client's wire handling: the documented request and answers, and every failure
read as one of the client's kinds (an upload is never ambiguous). No network."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from workers.piapi import (
    AccountError,
    InvalidRequest,
    NetworkError,
    PiAPIClient,
    PiAPIError,
    PlanRequired,
    RateLimited,
    ServerError,
)

UPLOAD = "https://upload.test"
URL = "https://img.theapi.app/ephemeral/0b7c.png"


def _client(answer: httpx.Response | type[httpx.TransportError],
            seen: list[httpx.Request] | None = None) -> PiAPIClient:
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if isinstance(answer, httpx.Response):
            return answer
        raise answer("x", request=request)

    return PiAPIClient("https://api.test", "k" * 32, upload_url=UPLOAD + "/",
                       transport=httpx.MockTransport(handle))


def test_the_documented_request_and_answer() -> None:
    seen: list[httpx.Request] = []
    client = _client(httpx.Response(200, json={"code": 200, "data": {"url": URL},
                                               "message": "success"}), seen)
    assert client.upload_file("cat.png", b"\x89PNG bytes") == URL
    (request,) = seen
    assert str(request.url) == f"{UPLOAD}/api/ephemeral_resource"
    assert request.method == "POST" and request.headers["x-api-key"] == "k" * 32
    body = json.loads(request.content)
    assert body == {"file_name": "cat.png",
                    "file_data": base64.b64encode(b"\x89PNG bytes").decode()}


# (name, the upload endpoint's answer, the client's error, its message)
ANSWERS: list[tuple[str, Any, type[PiAPIError], str]] = [
    ("plan below Creator", httpx.Response(403, json={"code": 403,
                                                     "message": "Insufficient plan level"}),
     PlanRequired, "HTTP 403: Insufficient plan level"),
    ("plan refusal inside a 200", httpx.Response(200, json={
        "code": 403, "message": "Insufficient plan level"}),
     PlanRequired, "HTTP 403: Insufficient plan level"),
    ("bad input", httpx.Response(400, json={"code": 400,
                                            "message": "Invalid request parameters"}),
     InvalidRequest, "HTTP 400: Invalid request parameters"),
    ("key refused", httpx.Response(401, json={"code": 401, "message": "Unauthorized"}),
     AccountError, "HTTP 401: Unauthorized"),
    ("server error", httpx.Response(503, json={"code": 503, "message": "busy"}),
     ServerError, "HTTP 503: busy"),
    ("too many requests", httpx.Response(429, json={"code": 429}), RateLimited, "HTTP 429"),
    ("no url in the answer", httpx.Response(200, json={"code": 200, "data": {}}),
     ServerError, "upload answer without a URL"),
    ("a url that is no http(s) URL", httpx.Response(200, json={"code": 200,
                                                               "data": {"url": "ftp://x"}}),
     ServerError, "upload answer without a URL"),
    ("unreadable answer", httpx.Response(200, text="<html>"), ServerError,
     "unreadable answer (HTTP 200)"),
    ("not sent", httpx.ConnectError, NetworkError, "ConnectError: request not sent"),
    # An upload makes no task and costs nothing: a lost answer is retryable, not ambiguous.
    ("no answer after sending", httpx.ReadTimeout, ServerError, "ReadTimeout: no answer"),
]


@pytest.mark.parametrize(("answer", "error", "message"), [a[1:] for a in ANSWERS],
                         ids=[a[0] for a in ANSWERS])
def test_upload_failures(answer: Any, error: type[PiAPIError], message: str) -> None:
    with pytest.raises(PiAPIError) as caught:
        _client(answer).upload_file("cat.png", b"x")
    assert type(caught.value) is error
    assert str(caught.value) == message


def test_a_plan_refusal_keeps_piapis_words() -> None:
    with pytest.raises(PlanRequired) as caught:
        _client(httpx.Response(403, json={"code": 403, "message": "Insufficient plan level"})
                ).upload_file("cat.png", b"x")
    assert caught.value.reason == "Insufficient plan level"
