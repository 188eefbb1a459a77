"""The real emulator process over HTTP on loopback: what a client of PiAPI will see."""

from __future__ import annotations

import math
import re
import time

import httpx
import pytest

from tests.emulator.conftest import Live, Receiver, joy, wan
from tests.helpers import HTTP, wait_until

RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
ZERO = "0001-01-01T00:00:00Z"


def test_create_returns_the_exact_documented_envelope(live: Live) -> None:
    response = live.create({
        **joy("https://piapi.ai/workspace/flux/input_example.png"),
        "input": {"workflow_type": "joycaption-beta-one", "prompt_style": "Descriptive",
                  "caption_length": "any",
                  "image": "https://piapi.ai/workspace/flux/input_example.png"},
        "config": {"webhook_config": {"endpoint": "", "secret": ""}},
    })
    assert response.status_code == 200
    body = response.json()
    data = body["data"]
    created_at = data["meta"].pop("created_at")
    assert RFC3339_NS.match(created_at)
    assert body == {
        "code": 200,
        "data": {
            "task_id": data["task_id"], "model": "Qubico/joycaption",
            "task_type": "joycaption-beta-one", "status": "pending",
            "config": {"service_mode": "", "webhook_config": {"endpoint": "", "secret": ""}},
            "input": {"caption_length": "any",
                      "image": "https://piapi.ai/workspace/flux/input_example.png",
                      "prompt_style": "Descriptive"},
            "output": None,
            "meta": {"started_at": ZERO, "ended_at": ZERO,
                     "usage": {"type": "llm", "frozen": 0, "consume": 100000},
                     "is_using_private_pool": False},
            "detail": None, "logs": [],
            "error": {"code": 0, "raw_message": "", "message": "", "detail": None},
        },
        "message": "success",
    }


def test_task_goes_pending_processing_completed(live: Live) -> None:
    # 0.15 s pending, then 0.6 s processing, at time scale 0.01
    live.configure(durations_s={"joycaption": [60, 60]}, queue_wait_fraction=[0.25, 0.25])
    created = live.create(joy()).json()["data"]
    task_id = created["task_id"]
    seen = [created["status"]]

    def done() -> bool:
        status = live.task(task_id)["status"]
        if seen[-1] != status:
            seen.append(status)
        return status == "completed"

    wait_until(done, timeout_s=10, interval_s=0.01, what="task to complete")
    assert seen == ["pending", "processing", "completed"]
    data = live.task(task_id)
    meta = data["meta"]
    assert meta["created_at"] < meta["started_at"] < meta["ended_at"]
    assert "https://example.test/a.png" in data["output"]["text"]


def test_auth_validation_and_unknown_ids(live: Live) -> None:
    anonymous = HTTP.get(f"{live.url}/api/v1/task/x", timeout=5)
    assert (anonymous.status_code, anonymous.json()) == (401, {"code": 401,
                                                               "message": "Unauthorized"})
    shouting = HTTP.get(f"{live.url}/account/info", headers={"X-Api-Key": "live-key"},
                         timeout=5)
    assert shouting.status_code == 200
    bad = live.create(wan(duration=7))
    assert (bad.status_code, bad.json()["message"]) == (400, "input.duration must be one of "
                                                              "5, 10, 15")
    assert live.http.get("/api/v1/task/00000000-0000-4000-8000-000000000000").status_code == 404
    assert live.stats()["creates"] == 0


def test_refuse_mode_answers_429_with_retry_after(live: Live) -> None:
    live.configure(over_limit="refuse", concurrency=2)
    assert [live.create(joy(f"http://x/{i}.png")).status_code for i in range(2)] == [200, 200]
    refused = live.create(joy("http://x/3.png"))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    body = refused.json()
    assert (body["code"], body["message"]) == (429, "concurrent task limit exceeded")
    assert body["data"]["error"]["message"] == "concurrent task limit exceeded"
    stats = live.stats()
    assert (stats["creates"], stats["creates_refused"], stats["in_flight"]) == (2, 1, 2)


def test_rpm_limit_answers_429(live: Live) -> None:
    live.configure(rpm=6)  # one request per 10 s, burst 1
    statuses = [live.http.get("/account/info") for _ in range(3)]
    assert statuses[0].status_code == 200
    limited = statuses[1]
    assert limited.status_code == 429
    assert limited.json() == {"code": 429, "message": "rate limit exceeded"}
    exact = float(limited.headers["x-ratelimit-reset-after"])
    assert 0 < exact <= 10.0 and int(limited.headers["retry-after"]) == math.ceil(exact)
    assert live.stats()["rate_limited"] == 2


def test_ambiguous_create_drops_the_connection_but_creates_the_task(live: Live) -> None:
    live.configure(fault_ambiguous=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        live.create(joy("http://x/ambiguous.png"))
    tasks = live.ledger()
    assert len(tasks) == 1 and tasks[0]["model"] == "Qubico/joycaption"
    stats = live.stats()
    assert stats["creates"] == 1 and stats["faults"]["ambiguous"] == 1
    live.configure(fault_ambiguous=0.0)
    wait_until(lambda: live.ledger()[0]["charged"], timeout_s=10, what="the dropped task to run")


def test_hung_create_times_out_the_client_and_the_task_runs(live: Live) -> None:
    live.configure(fault_hang=1.0, hang_s=30.0)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        live.http.post("/api/v1/task", json=joy(), timeout=httpx.Timeout(5, read=0.3))
    assert time.monotonic() - started < 5
    assert len(live.ledger()) == 1 and live.stats()["faults"]["hang"] == 1
    assert live.http.get("/account/info").status_code == 200


def test_create_latency_creates_before_answering(live: Live) -> None:
    live.configure(create_latency_s=2.0)
    with pytest.raises(httpx.ReadTimeout):
        live.http.post("/api/v1/task", json=joy(), timeout=httpx.Timeout(5, read=0.2))
    assert len(live.ledger()) == 1


def test_webhooks_are_delivered_with_the_secret(live: Live, receiver: Receiver) -> None:
    body = {**joy(), "config": {"webhook_config": {"endpoint": receiver.url,
                                                   "secret": "s3cret"}}}
    task_id = live.create(body).json()["data"]["task_id"]

    def statuses() -> set[str]:
        return {event["data"]["status"] for _, event in receiver.events()}

    wait_until(lambda: statuses() == {"processing", "completed"}, timeout_s=10,
               what="processing and completed webhooks")
    for headers, event in receiver.events():
        assert headers["x-webhook-secret"] == "s3cret"
        assert isinstance(event["timestamp"], int) and set(event) == {"timestamp", "data"}
        assert event["data"]["task_id"] == task_id
    completed = next(e for _, e in receiver.events() if e["data"]["status"] == "completed")
    assert completed["data"] == live.task(task_id)
    assert live.stats()["webhooks"]["sent"] == 2


def test_webhook_failures_are_retried(live: Live) -> None:
    receiver = Receiver(statuses=[500, 503])
    try:
        live.configure(webhook_events=["completed"])
        hook = {"webhook_config": {"endpoint": receiver.url, "secret": "x"}}
        live.create({**joy(), "config": hook})
        wait_until(lambda: live.stats()["webhooks"]["sent"] == 1, timeout_s=10,
                   what="the third attempt to succeed")
        assert live.stats()["webhooks"]["attempts"] == 3
        assert len(receiver.events()) == 3
    finally:
        receiver.close()


def test_webhooks_never_leave_the_host(live: Live) -> None:
    hook = {"webhook_config": {"endpoint": "http://192.0.2.1/hook", "secret": "x"}}
    live.create({**joy(), "config": hook})
    wait_until(lambda: live.stats()["webhooks"]["skipped"] == 2, timeout_s=10,
               what="both events to be skipped")
    assert live.stats()["webhooks"]["attempts"] == 0


def test_history_paging_and_filters(live: Live) -> None:
    since = int(time.time())
    ids = [live.create(joy(f"http://x/{i}.png")).json()["data"]["task_id"] for i in range(3)]
    wan_id = live.create(wan()).json()["data"]["task_id"]
    url = "/api/open/tasks/histories"

    def total(**params: object) -> int:
        return int(live.http.get(url, params=params).json()["data"]["total"])

    # Listed after history_lag_s (3 model seconds) x time scale 0.01 = 0.03 s.
    wait_until(lambda: total() == 4, timeout_s=10, what="all four tasks to be listed")
    first = live.http.get(url, params={"page": 1, "page_size": 3}).json()["data"]
    second = live.http.get(url, params={"page": 2, "page_size": 3}).json()["data"]
    assert (first["total"], first["size"], second["size"]) == (4, 3, 1)
    assert [r["task_id"] for r in first["data"] + second["data"]] == [wan_id, *ids[::-1]]
    only_wan = live.http.get(url, params={"model": "wan"}).json()["data"]
    assert [r["task_id"] for r in only_wan["data"]] == [wan_id]
    assert only_wan["data"][0]["detail"] == {"model": "Wan", "task_id": wan_id,
                                             "workflow_type": ""}
    assert total(model="Wan") == 0  # a model name is not a documented family
    live.configure(history_shape="full", history_model_filter="exact")
    exact = live.http.get(url, params={"model": "Wan"}).json()["data"]["data"]
    assert exact[0]["detail"]["input"]["prompt"] == "a cat"
    window = {"start_time": since, "end_time": int(time.time()) + 1}
    assert live.http.get(url, params=window).json()["data"]["total"] == 4
    assert total(start_time=int(time.time()) + 100) == 0


def test_stats_count_requests_and_outcomes(live: Live) -> None:
    task_id = live.create(joy()).json()["data"]["task_id"]
    live.create(joy("http://x/[[moderation]].png"))
    live.http.get(f"/api/v1/task/{task_id}")
    live.http.delete(f"/api/v1/task/{task_id}")
    live.http.get("/account/info")
    live.http.get("/account/active_tasks")
    live.http.get("/api/open/tasks/histories")
    wait_until(lambda: live.stats()["in_flight"] == 0, timeout_s=10, what="tasks to end")
    stats = live.stats()
    assert {k: v for k, v in stats["requests"].items() if v} == {
        "create": 2, "get": 1, "delete": 1, "account_info": 1, "active_tasks": 1,
        "histories": 1, "total": 7}
    assert stats["creates"] == 2 and sum(stats["tasks_by_status"].values()) == 2
    assert stats["in_flight_integral_s"] > 0 and stats["peak_in_flight"] == 2


def test_output_file_is_served(live: Live) -> None:
    task_id = live.create({"model": "Qubico/flux1-schnell", "task_type": "txt2img",
                           "input": {"prompt": "p"}}).json()["data"]["task_id"]
    wait_until(lambda: live.task(task_id)["status"] == "completed", timeout_s=10,
               what="flux task")
    url = live.task(task_id)["output"]["image_url"]
    assert url.startswith(f"{live.url}/ephemeral/") and url.endswith(".png")
    response = HTTP.get(url, timeout=5)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
