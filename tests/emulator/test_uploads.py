"""The emulator's upload endpoint in-process: the documented body and answers, the 10 MB
bound, the plan refusal, files served back, and the ledger's record of each upload."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

from emulator.app import create_app
from emulator.clock import FakeClock
from emulator.config import EmulatorConfig
from emulator.uploads import MAX_UPLOAD_BYTES
from tests.emulator.test_app import KEY, Client


@pytest.fixture
def client() -> Iterator[Client]:
    clock = FakeClock()
    app = create_app(EmulatorConfig(api_key="test-key", seed=3, port=9999), clock)
    with TestClient(app, base_url="http://127.0.0.1:9999") as http:
        yield Client(http, app.state.runtime, clock)


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def _upload(c: Client, body: Any) -> Any:
    return c.http.post("/api/ephemeral_resource", json=body, headers=KEY)


def _body(data: bytes = PNG, name: str = "cat.png") -> dict[str, str]:
    return {"file_name": name, "file_data": base64.b64encode(data).decode()}


def test_an_upload_is_served_back_and_in_the_ledger(client: Client) -> None:
    client.clock.t += 5
    answer = _upload(client, _body())
    assert answer.status_code == 200
    body = answer.json()
    assert body["code"] == 200 and body["message"] == "success"
    url = body["data"]["url"]
    assert url.startswith("http://127.0.0.1:9999/uploads/") and url.endswith("/cat.png")
    served = client.http.get(url.removeprefix("http://127.0.0.1:9999"))
    assert served.status_code == 200 and served.content == PNG
    assert served.headers["content-type"] == "image/png"
    (row,) = client.http.get("/_emulator/ledger").json()["uploads"]
    assert row == {"url": url, "file_name": "cat.png", "size": len(PNG),
                   "uploaded_at": "2025-06-15T15:06:45.000000000Z"}
    assert client.http.get("/_emulator/stats").json()["requests"]["upload"] == 1


@pytest.mark.parametrize("body", [
    {"file_name": "cat.png"},
    {"file_data": base64.b64encode(PNG).decode()},
    {"file_name": "", "file_data": base64.b64encode(PNG).decode()},
    {"file_name": "a/b.png", "file_data": base64.b64encode(PNG).decode()},
    {"file_name": "cat.png", "file_data": "not base64!"},
    {"file_name": "cat.png", "file_data": ""},
    ["not", "an", "object"],
], ids=["no data", "no name", "empty name", "a path", "bad base64", "empty", "a list"])
def test_bad_input_is_400(client: Client, body: Any) -> None:
    answer = _upload(client, body)
    assert answer.status_code == 400
    assert answer.json() == {"code": 400, "message": "Invalid request parameters"}
    assert client.http.get("/_emulator/ledger").json()["uploads"] == []


def test_ten_megabytes_at_most(client: Client) -> None:
    assert _upload(client, _body(b"\0" * MAX_UPLOAD_BYTES)).status_code == 200
    assert _upload(client, _body(b"\0" * (MAX_UPLOAD_BYTES + 1))).status_code == 400


def test_a_plan_below_creator_is_refused(client: Client) -> None:
    client.configure(upload_plan="free")
    answer = _upload(client, _body())
    assert answer.status_code == 403
    assert answer.json() == {"code": 403, "message": "Insufficient plan level"}
    assert client.http.get("/_emulator/ledger").json()["uploads"] == []


def test_the_first_uploads_can_fail(client: Client) -> None:
    client.configure(upload_fail_first=2)
    assert [_upload(client, _body()).status_code for _ in range(3)] == [503, 503, 200]
    assert len(client.http.get("/_emulator/ledger").json()["uploads"]) == 1


def test_uploads_need_the_key_and_a_file_url_its_name(client: Client) -> None:
    assert client.http.post("/api/ephemeral_resource", json=_body()).status_code == 401
    url = _upload(client, _body()).json()["data"]["url"]
    path = url.removeprefix("http://127.0.0.1:9999")
    assert client.http.get(path.replace("cat.png", "dog.png")).status_code == 404
