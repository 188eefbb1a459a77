"""The HTTP surface in-process (Starlette TestClient, fake clock): bodies, statuses, headers."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

with warnings.catch_warnings():
    # Starlette 1.x prefers `httpx2` for its TestClient; plain httpx still works.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

from emulator.app import create_app
from emulator.clock import FakeClock
from emulator.config import FAMILIES, EmulatorConfig
from emulator.runtime import Runtime
from tests.emulator.conftest import joy, wan

KEY = {"x-api-key": "test-key"}


class Client:
    """A TestClient plus the emulator's runtime and fake clock."""

    def __init__(self, http: TestClient, rt: Runtime, clock: FakeClock) -> None:
        self.http, self.rt, self.clock = http, rt, clock

    def create(self, body: dict[str, Any]) -> Any:
        return self.http.post("/api/v1/task", json=body, headers=KEY)

    def configure(self, **patch: Any) -> Any:
        response = self.http.post("/_emulator/config", json=patch)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def client() -> Iterator[Client]:
    clock = FakeClock()
    config = EmulatorConfig(api_key="test-key", seed=3, port=9999)
    app = create_app(config, clock)
    with TestClient(app, base_url="http://127.0.0.1:9999") as http:
        yield Client(http, app.state.runtime, clock)


def test_auth_is_required_and_header_name_is_case_insensitive(client: Client) -> None:
    missing = client.http.get("/account/info")
    wrong = client.http.get("/account/info", headers={"x-api-key": "nope"})
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json() == {"code": 401, "message": "Unauthorized"}
    assert client.http.get("/account/info", headers={"X-API-KEY": "test-key"}).status_code == 200


def test_create_and_get_return_the_documented_envelope(client: Client) -> None:
    created = client.create({**joy(), "input": {"image": "http://x/a.png", "workflow_type": "w"}})
    assert created.status_code == 200
    assert created.headers["content-type"] == "application/json"
    body = created.json()
    data = body["data"]
    uuid.UUID(data["task_id"], version=4)
    assert (body["code"], body["message"], data["status"]) == (200, "success", "pending")
    assert data["input"] == {"caption_length": "any", "image": "http://x/a.png",
                             "prompt_style": "Descriptive"}
    assert data["meta"]["started_at"] == "0001-01-01T00:00:00Z"
    got = client.http.get(f"/api/v1/task/{data['task_id']}", headers=KEY)
    assert got.json() == body
    client.clock.advance(1000)
    done = client.http.get(f"/api/v1/task/{data['task_id']}", headers=KEY).json()["data"]
    assert done["status"] == "completed" and done["output"]["text"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "invalid JSON body"),
        (b'{"model":"nope","task_type":"x","input":{}}', "model nope is not supported"),
        (b'{"model":"Wan","task_type":"wan26-txt2video","input":{"prompt":"p","duration":"5"}}',
         "input.duration must be an integer"),
    ],
)
def test_bad_creates_are_400_and_create_nothing(
    client: Client, content: bytes, message: str
) -> None:
    response = client.http.post("/api/v1/task", content=content, headers=KEY)
    assert response.status_code == 400
    assert response.json() == {"code": 400, "message": message, "data": {
        "logs": [message],
        "error": {"code": 400, "raw_message": message, "message": message, "detail": None}}}
    assert client.http.get("/_emulator/stats").json()["creates"] == 0


def test_unknown_task_is_404_or_configured_400(client: Client) -> None:
    response = client.http.get("/api/v1/task/nope", headers=KEY)
    assert (response.status_code, response.json()) == (404, {"code": 404,
                                                             "message": "task not found"})
    client.configure(unknown_task_status=400)
    assert client.http.get("/api/v1/task/nope", headers=KEY).status_code == 400


def test_delete_cancels_only_pending(client: Client) -> None:
    task_id = client.create(wan()).json()["data"]["task_id"]
    response = client.http.delete(f"/api/v1/task/{task_id}", headers=KEY)
    assert response.json() == {"code": 200, "message": f"task {task_id} canceled"}
    again = client.http.delete(f"/api/v1/task/{task_id}", headers=KEY)
    assert (again.status_code, again.json()["message"]) == (400, "task is not pending")
    data = client.http.get(f"/api/v1/task/{task_id}", headers=KEY).json()["data"]
    assert data["status"] == "failed" and data["error"]["message"] == "task canceled"
    assert data["meta"]["usage"] == {"type": "point", "frozen": 0, "consume": 0}
    assert client.http.delete("/api/v1/task/nope", headers=KEY).status_code == 404


def test_account_info_tracks_the_wallet(client: Client) -> None:
    client.create(wan())
    data = client.http.get("/account/info", headers=KEY).json()["data"]
    assert data["max_concurrent_task_count"] == 10
    assert data["wallet"] == {"point_remain": 10**12 - 4_000_000, "point_frozen": 4_000_000,
                              "point_used": 0}
    assert data["equivalent_in_usd"] == pytest.approx((10**12 - 4_000_000) / 1e7)


def test_active_tasks_grouped_by_family_or_absent(client: Client) -> None:
    client.configure(active_tasks_families="all")
    a = client.create(wan()).json()["data"]["task_id"]
    client.create(joy())
    data = client.http.get("/account/active_tasks", headers=KEY).json()["data"]
    assert set(data) == set(FAMILIES)
    assert data["wan"] == {"pending_count": 1, "processing_count": 0, "staged_count": 0,
                           "active_tasks": [{"task_id": a, "status": "pending"}]}
    client.configure(active_tasks_enabled=False)
    assert client.http.get("/account/active_tasks", headers=KEY).status_code == 404


def test_history_full_shape_paging_and_faults(client: Client) -> None:
    client.configure(history_shape="full", history_lag_s=0)
    ids = [client.create(joy(f"http://x/{i}.png")).json()["data"]["task_id"] for i in range(3)]
    page = client.http.get("/api/open/tasks/histories?page=1&page_size=2", headers=KEY).json()
    rows = page["data"]["data"]
    assert (page["data"]["page"], page["data"]["size"], page["data"]["total"]) == (1, 2, 3)
    assert [r["taskId"] for r in rows] == ids[:0:-1]
    assert rows[0]["detail"]["input"]["image"] == "http://x/2.png"
    assert set(rows[0]) == {"id", "taskId", "taskModel", "action", "status", "createdAt",
                            "updatedAt", "usage", "usageType", "serviceMode", "detail"}
    bad = client.http.get("/api/open/tasks/histories?page_size=101", headers=KEY)
    assert bad.status_code == 400
    client.configure(history_fault_rate=1.0)
    assert client.http.get("/api/open/tasks/histories", headers=KEY).status_code == 500


def test_history_lag_is_in_model_seconds_scaled_like_durations(client: Client) -> None:
    assert client.rt.config.history_lag_s == 3.0  # the default, at time scale 1 here
    client.create(joy())
    url = "/api/open/tasks/histories"
    client.clock.advance(2.999)
    assert client.http.get(url, headers=KEY).json()["data"]["total"] == 0
    client.clock.advance(0.001)
    assert client.http.get(url, headers=KEY).json()["data"]["total"] == 1
    client.configure(history_lag_s=5.0, time_scale=0.1)  # 0.5 s of real time
    client.create(joy("http://x/b.png"))
    client.clock.advance(0.499)
    assert client.http.get(url, headers=KEY).json()["data"]["total"] == 1
    client.clock.advance(0.001)
    assert client.http.get(url, headers=KEY).json()["data"]["total"] == 2


def test_rpm_limit_answers_429_with_retry_after(client: Client) -> None:
    client.configure(rpm=60)  # one a second, burst 1
    assert client.http.get("/account/info", headers=KEY).status_code == 200
    limited = client.http.get("/account/info", headers=KEY)
    assert limited.status_code == 429
    assert limited.json() == {"code": 429, "message": "rate limit exceeded"}
    assert limited.headers["retry-after"] == "1"
    assert float(limited.headers["x-ratelimit-reset-after"]) == pytest.approx(1.0)
    client.clock.advance(0.75)
    assert float(client.http.get("/account/info", headers=KEY)
                 .headers["x-ratelimit-reset-after"]) == pytest.approx(0.25)
    client.clock.advance(0.25)
    assert client.http.get("/account/info", headers=KEY).status_code == 200
    assert client.http.get("/_emulator/stats").json()["rate_limited"] == 2


def test_refuse_mode_429_with_retry_after(client: Client) -> None:
    client.configure(over_limit="refuse", concurrency=1, refuse_retry_after_s=3)
    assert client.create(joy()).status_code == 200
    refused = client.create(joy("http://x/b.png"))
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
    body = refused.json()
    assert (body["code"], body["message"]) == (429, "concurrent task limit exceeded")
    assert body["data"]["logs"] == ["concurrent task limit exceeded"]
    stats = client.http.get("/_emulator/stats").json()
    assert (stats["creates"], stats["creates_refused"]) == (1, 1)


def test_edge_faults_answer_before_anything(client: Client) -> None:
    client.configure(fault_5xx=1.0)
    statuses = {client.create(joy()).status_code for _ in range(30)}
    assert statuses <= {500, 502, 503} and len(statuses) > 1
    client.configure(fault_5xx=0.0, fault_429=1.0)
    limited = client.http.get("/account/info", headers=KEY)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    stats = client.http.get("/_emulator/stats").json()
    assert stats["creates"] == 0
    assert (stats["faults"]["5xx"], stats["faults"]["429"]) == (30, 1)


def test_output_files_are_served_without_auth(client: Client) -> None:
    client.create(wan())
    client.clock.advance(10_000)
    task = next(iter(client.rt.engine.tasks.values()))
    url = client.http.get(f"/api/v1/task/{task.task_id}", headers=KEY).json()["data"][
        "output"]["video_url"]
    assert url.startswith("http://127.0.0.1:9999/ephemeral/") and url.endswith(".mp4")
    response = client.http.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    assert response.content
    assert client.http.get("/ephemeral/../../etc/passwd").status_code == 404
    assert client.http.get(f"/ephemeral/{uuid.uuid4()}.exe").status_code == 404


def test_control_config_masks_the_key_and_validates_patches(client: Client) -> None:
    config = client.http.get("/_emulator/config").json()
    assert config["api_key"] == "**********" and config["concurrency"] == 10
    for patch in ({"concurrency": -1}, {"port": 1}, {"nope": 1}, {"fault_5xx": 2}):
        response = client.http.post("/_emulator/config", json=patch)
        assert response.status_code == 400, patch
    assert client.configure(concurrency=3, time_scale=0.5)["time_scale"] == 0.5


def test_advance_moves_the_clock_and_tasks_end_as_if_that_time_passed(client: Client) -> None:
    task_id = client.create(joy()).json()["data"]["task_id"]
    before = client.clock.now()
    for bad in ({}, {"seconds": -1}, {"seconds": "5"}, {"seconds": True}, {"seconds": 1e9}):
        response = client.http.post("/_emulator/advance", json=bad)
        assert response.status_code == 400, bad
    assert client.clock.now() == before
    stats = client.http.post("/_emulator/advance", json={"seconds": 1000}).json()
    assert client.clock.now() == before + 1000 and stats["creates"] == 1
    done = client.http.get(f"/api/v1/task/{task_id}", headers=KEY).json()["data"]
    assert done["status"] == "completed"


def test_reset_clears_tasks_and_counters(client: Client) -> None:
    client.create(joy())
    assert client.http.post("/_emulator/reset").status_code == 200
    stats = client.http.get("/_emulator/stats").json()
    assert stats["creates"] == 0 and stats["requests"]["total"] == 0
    assert client.http.get("/_emulator/ledger").json() == {"tasks": [], "uploads": []}


def test_stats_and_ledger_keys(client: Client) -> None:
    task_id = client.create(joy()).json()["data"]["task_id"]
    client.create(joy())
    stats = client.http.get("/_emulator/stats").json()
    assert {
        "requests", "creates", "creates_refused", "rate_limited", "faults", "in_flight",
        "peak_in_flight", "in_flight_integral_s", "processing_integral_s",
        "max_creates_per_input", "creates_per_input_histogram", "tasks_by_status", "webhooks",
        "consumed_units", "frozen_units", "started_at",
    } <= set(stats)
    assert stats["requests"]["create"] == 2 and stats["requests"]["total"] == 2
    assert stats["max_creates_per_input"] == 2 and stats["creates_per_input_histogram"] == {
        "2": 1}
    ledger = client.http.get("/_emulator/ledger").json()["tasks"]
    assert ledger[0]["task_id"] == task_id
    assert set(ledger[0]) == {"task_id", "model", "task_type", "input_key", "input", "status",
                              "fate", "created_at", "ended_at", "consume", "output", "error",
                              "charged", "webhook_endpoint", "created_by", "polls_by",
                              "end_seen_by", "end_seen_at"}
    assert ledger[0]["fate"] == "complete"
    key = ledger[0]["input_key"]
    assert len(client.http.get(f"/_emulator/ledger?input_key={key}").json()["tasks"]) == 2
    assert client.http.get("/_emulator/ledger?input_key=zzz").json()["tasks"] == []


def test_ledger_names_the_client_of_each_create_and_poll(client: Client) -> None:
    task_id = client.create(joy()).json()["data"]["task_id"]
    client.http.get(f"/api/v1/task/{task_id}", headers=KEY)
    row = client.http.get("/_emulator/ledger").json()["tasks"][0]
    assert row["created_by"] and row["polls_by"] == {row["created_by"]: 1}
    assert row["end_seen_by"] == "" and row["end_seen_at"] is None  # still running
    client.clock.advance(3600)
    client.http.get(f"/api/v1/task/{task_id}", headers=KEY)
    row = client.http.get("/_emulator/ledger").json()["tasks"][0]
    assert row["polls_by"] == {row["created_by"]: 2}
    assert row["end_seen_by"] == row["created_by"] and row["end_seen_at"]


def test_duration_patches_merge_per_family(client: Client) -> None:
    client.configure(durations_s={"wan": [1, 2]})
    config = client.configure(durations_s={"flux": [3, 4]})
    assert config["durations_s"]["wan"] == [1.0, 2.0]
    assert config["durations_s"]["flux"] == [3.0, 4.0]
    assert config["durations_s"]["joycaption"] == [15.0, 45.0]


def test_out_of_balance_is_a_402_whose_reason_is_only_inside_data(client: Client) -> None:
    client.configure(balance_points=5_000_000)  # $0.50: one 5 s Wan ($0.40), not two
    assert client.create(wan()).status_code == 200
    refused = client.create(wan("another"))
    assert refused.status_code == 402
    body = refused.json()
    assert (body["code"], body["message"]) == (402, "failed to do request")
    reason = "insufficient balance: the task costs 4000000 points, 1000000 remain"
    assert body["data"] == {"logs": [reason], "error": {
        "code": 402, "raw_message": reason, "message": reason, "detail": None}}
    stats = client.http.get("/_emulator/stats").json()
    assert (stats["creates"], stats["frozen_units"]) == (1, 4_000_000)
    assert client.create(joy()).status_code == 200  # $0.01 still fits


def test_the_history_and_active_tasks_routes_answer_the_documented_default(
    client: Client,
) -> None:
    client.create(joy())
    client.create({"model": "kling", "task_type": "video_generation",
                   "input": {"prompt": "p"}})
    client.clock.advance(3.0)  # history_lag_s at time scale 1
    rows = client.http.get("/api/open/tasks/histories", headers=KEY).json()["data"]["data"]
    assert [r["task_model"] for r in rows] == ["kling", "Qubico/joycaption"]
    assert all("input" not in r and "input" not in r["detail"] for r in rows)
    by_family = client.http.get("/api/open/tasks/histories?model=kling", headers=KEY).json()
    assert by_family["data"]["total"] == 1
    data = client.http.get("/account/active_tasks", headers=KEY).json()["data"]
    assert set(data) == {"flux", "kling", "luma", "midjourney", "music-s", "music-u"}
    assert data["kling"]["pending_count"] + data["kling"]["processing_count"] == 1


def test_issue9_options_are_runtime_settings(client: Client) -> None:
    defaults = client.http.get("/_emulator/config").json()
    assert {k: defaults[k] for k in (
        "history_shape", "history_model_filter", "history_lag_s", "history_lists_pending",
        "active_tasks_families", "fault_stuck_processing", "fault_fail_credits",
        "stuck_timeout_factor")} == {
        "history_shape": "documented", "history_model_filter": "family", "history_lag_s": 3.0,
        "history_lists_pending": True, "active_tasks_families": "documented",
        "fault_stuck_processing": 0.0, "fault_fail_credits": 0.0, "stuck_timeout_factor": 20.0}
    patch = {"history_shape": "full", "history_model_filter": "exact", "history_lag_s": 0.5,
             "history_lists_pending": False, "active_tasks_families": "all",
             "fault_stuck_processing": 0.25, "fault_fail_credits": 0.5,
             "stuck_timeout_factor": 0}
    config = client.configure(**patch)
    assert {k: config[k] for k in patch} == patch
    for bad in ({"history_shape": "summary"}, {"history_model_filter": "x"},
                {"active_tasks_families": "none"}, {"stuck_timeout_factor": -1},
                {"fault_fail_credits": 1.5}):
        assert client.http.post("/_emulator/config", json=bad).status_code == 400, bad


@pytest.mark.parametrize(
    ("body", "key", "media_type"),
    [
        ({"model": "Qubico/tts", "task_type": "zero-shot",
          "input": {"gen_text": "hi", "ref_audio": "http://x/a.wav"}}, "audio_url",
         "audio/mpeg"),
        ({"model": "Qubico/trellis", "task_type": "image-to-3d", "input": {"image": "i"}},
         "model_file", "model/gltf-binary"),
        ({"model": "kling", "task_type": "video_generation",
          "input": {"prompt": "p", "version": "3.0", "duration": 4}}, "video", "video/mp4"),
    ],
)
def test_new_output_files_are_served_with_their_type(
    client: Client, body: dict[str, Any], key: str, media_type: str
) -> None:
    task_id = client.create(body).json()["data"]["task_id"]
    client.clock.advance(100_000)
    url = client.http.get(f"/api/v1/task/{task_id}", headers=KEY).json()["data"]["output"][key]
    response = client.http.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == media_type


def test_udio_clip_files_are_served(client: Client) -> None:
    task_id = client.create({"model": "music-u", "task_type": "generate_music",
                             "input": {"gpt_description_prompt": "jazz"}}).json()["data"][
        "task_id"]
    client.clock.advance(100_000)
    clips = client.http.get(f"/api/v1/task/{task_id}", headers=KEY).json()["data"]["output"][
        "clips"]
    urls = [clip[k] for clip in clips.values() if clip
            for k in ("audio_url", "video_url", "image_url")]
    assert len(urls) == 6
    assert {client.http.get(u).headers["content-type"] for u in urls} == {
        "audio/mpeg", "video/mp4", "image/jpeg"}
