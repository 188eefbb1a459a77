"""History rows in the documented shape, the unfiltered history, per-family in-flight counts."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from workers.piapi import Outcome, PiAPIClient, parse_history_row

DOCUMENTED_ROW: dict[str, Any] = {
    "task_id": "9b2c", "task_model": "Qubico/flux1-schnell", "action": "txt2img",
    "status": "finished", "usage": 20000, "usage_type": "point", "service_mode": "public",
    "detail": {"model": "Qubico/flux1-schnell", "task_id": "9b2c", "workflow_type": ""},
    "created_at": "2025-12-17T10:28:49.852849612Z", "updated_at": "2025-12-17T10:28:55Z",
}


@pytest.mark.parametrize(("row", "expect"), [
    (DOCUMENTED_ROW, ("9b2c", "Qubico/flux1-schnell", "txt2img", Outcome.COMPLETED)),
    # detail names the model the task was made with; the row's own field may be a family
    ({**DOCUMENTED_ROW, "task_model": "flux"},
     ("9b2c", "Qubico/flux1-schnell", "txt2img", Outcome.COMPLETED)),
    ({**DOCUMENTED_ROW, "detail": None, "status": "Processing"},
     ("9b2c", "Qubico/flux1-schnell", "txt2img", Outcome.RUNNING)),
    ({"taskId": "t1", "taskModel": "Wan", "action": "wan26-txt2video", "status": "Completed",
      "detail": None}, ("t1", "Wan", "wan26-txt2video", Outcome.COMPLETED)),
])
def test_history_row_shapes(row: dict[str, Any], expect: tuple[str, str, str, Outcome]) -> None:
    parsed = parse_history_row(row)
    assert parsed is not None
    assert (parsed.task_id, parsed.model, parsed.task_type, parsed.outcome) == expect


def test_documented_row_has_a_time_and_no_input() -> None:
    parsed = parse_history_row(DOCUMENTED_ROW)
    assert parsed is not None and parsed.input is None
    assert parsed.created_at is not None and 1.7e9 < parsed.created_at < 1.8e9


def _client(handler: Any) -> PiAPIClient:
    return PiAPIClient("http://piapi.test", "k" * 32, transport=httpx.MockTransport(handler))


def test_history_without_filter_sends_no_model_and_reports_row_fields() -> None:
    seen: list[httpx.QueryParams] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params)
        return httpx.Response(200, json={"code": 200, "message": "success", "data": {
            "data": [DOCUMENTED_ROW, {"taskId": "t2", "detail": {"input": {"p": 1}}}],
            "total": 2}})

    with _client(handler) as client:
        page = client.task_history(None, 100.0, 200.5, page_size=5)
        client.task_history("flux", 100.0, 200.5)
    assert "model" not in seen[0] and seen[0]["page_size"] == "5"
    assert seen[0]["end_time"] == "201" and seen[1]["model"] == "flux"
    assert [r.task_id for r in page.rows] == ["9b2c", "t2"] and page.total == 2
    assert {"task_id", "task_model", "detail.workflow_type", "taskId", "detail.input"} \
        <= page.fields
    assert page.rows[1].input == {"p": 1}


@pytest.mark.parametrize(("status", "body", "counts"), [
    (200, {"flux": {"pending_count": 2, "processing_count": 1, "staged_count": 0},
           "kling": {"pending_count": 0, "processing_count": 0}, "note": "x"},
     {"flux": 3, "kling": 0}),
    (200, {"flux": "busy"}, None),
    (200, [], None),
    (404, {}, None),
])
def test_active_task_counts_per_family(status: int, body: Any,
                                       counts: dict[str, int] | None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/account/active_tasks"
        return httpx.Response(status, json={"code": status, "message": "", "data": body})

    with _client(handler) as client:
        assert client.active_task_counts() == counts
        assert client.active_tasks() == (sum(counts.values()) if counts else None)
