"""The pure parts of `piapi-bulk web` and `run --notify`: rates and ETA, the auth rule,
request metering, scrubbing, the page's HTML and the notification's body."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from scheduler.notify import EVENTS, check_url, summary
from scheduler.status import BatchStatus
from scheduler.web import page, rates
from scheduler.web.auth import WebAuth, bind_problem
from scheduler.web.data import scrub
from workers.metering import RequestMeter, RequestTotals, endpoint_of
from workers.settings import ConfigError

NOW = 1_700_000_040.0  # a whole minute: NOW / 60 is an integer


def test_per_minute_fills_the_last_hour_oldest_first() -> None:
    last = rates.minute_of(NOW + 30)
    series = rates.per_minute({last: 4, last - 2: 7, last - 500: 99}, NOW + 30, minutes=5)
    assert series == [(last - 4, 0), (last - 3, 0), (last - 2, 7), (last - 1, 0), (last, 4)]


def test_chart_covers_the_batch_age_within_bounds() -> None:
    assert rates.chart_minutes(NOW - 30, NOW) == 10
    assert rates.chart_minutes(NOW - 25 * 60, NOW) == 26
    assert rates.chart_minutes(NOW - 86400, NOW) == 60


@pytest.mark.parametrize(("finished", "first_at", "now", "expected"), [
    (0, None, NOW, 0.0),                    # nothing finished lately
    (300, NOW - 600, NOW, 60.0),            # a steady batch: the full 5-minute window
    (60, NOW - 60, NOW, 60.0),              # began a minute ago: not averaged over five
    (5, NOW - 2, NOW, 10.0),                # a few rows in the first seconds: at least 30 s
    (10, NOW + 5, NOW, 20.0),               # a clock a little ahead: still at least 30 s
])
def test_recent_rate(finished: int, first_at: float | None, now: float,
                     expected: float) -> None:
    assert rates.recent_rate(finished, first_at, now) == pytest.approx(expected)


def test_eta() -> None:
    assert rates.eta_s(600, 60.0) == 600.0
    assert rates.eta_s(0, 0.0) == 0.0
    assert rates.eta_s(10, 0.0) is None


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "—"), (44.6, "45s"), (725, "12m 05s"), (3 * 3600 + 300, "3h 05m"),
    (2 * 86400 + 4 * 3600 + 59, "2d 4h")])
def test_duration_text(seconds: float | None, text: str) -> None:
    assert rates.duration_text(seconds) == text


def _basic(user_pass: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


def test_auth_rule() -> None:
    none, token, basic = WebAuth(), WebAuth(token="s3cret"), WebAuth(basic="ann:pw")
    assert none.allows({}, "")
    assert token.allows({"authorization": "Bearer s3cret"}, "")
    assert token.allows({}, "token=s3cret&limit=3")
    assert not token.allows({}, "")
    assert not token.allows({"authorization": "Bearer s3cre"}, "token=wrong")
    assert basic.allows(_basic("ann:pw"), "")
    assert not basic.allows(_basic("ann:px"), "")
    assert not basic.allows({"authorization": "Basic !!not base64"}, "")
    assert not basic.allows({}, "token=ann:pw")
    # Loopback needs nothing; elsewhere a token or basic auth; basic must be user:pass.
    for host in ("127.0.0.1", "localhost", "::1"):
        assert bind_problem(host, none) is None
    assert "PIAPI_BULK_WEB_TOKEN" in str(bind_problem("0.0.0.0", none))
    assert bind_problem("10.1.2.3", token) is None
    assert bind_problem("0.0.0.0", basic) is None
    assert "user:password" in str(bind_problem("127.0.0.1", WebAuth(basic="nocolon")))


@pytest.mark.parametrize(("method", "path", "endpoint"), [
    ("POST", "/api/v1/task", "create"), ("GET", "/api/v1/task/abc", "get"),
    ("DELETE", "/api/v1/task/abc", "cancel"), ("GET", "/account/info", "account"),
    ("GET", "/account/active_tasks", "account"),
    ("GET", "/api/open/tasks/histories", "history"), ("GET", "/elsewhere", "other")])
def test_endpoint_of(method: str, path: str, endpoint: str) -> None:
    assert endpoint_of(method, path) == endpoint


def test_meter_counts_and_drains_to_cumulative_buckets() -> None:
    meter = RequestMeter()
    meter.observe("create", "200", 0.01)
    meter.observe("create", "200", 0.3)
    meter.observe("create", "429", 0.02)
    meter.observe("get", "error", 99.0)  # past the last bound: +Inf only
    counts, latency = meter.drain()
    assert counts == {"create 200": 2, "create 429": 1, "get error": 1}
    assert meter.drain() == ({}, {})
    totals = RequestTotals.parse(counts, latency, {"rate": 1})
    assert totals.requests[("create", "200")] == 2
    create = dict(totals.buckets["create"])
    assert create["0.025"] == 2 and create["0.25"] == 2 and create["0.5"] == 3
    assert create["+Inf"] == 3 == sum(n for (e, _), n in totals.requests.items()
                                      if e == "create")
    assert dict(totals.buckets["get"])["30"] == 0 and dict(totals.buckets["get"])["+Inf"] == 1
    assert totals.sum_s["create"] == pytest.approx(0.33, abs=0.003)
    assert totals.limited == {"rate": 1}


def test_scrub_drops_url_tokens_and_bounds_length() -> None:
    text = scrub('fetch https://cdn.test/a.png?X-Amz-Signature=abc&tok=1 failed')
    assert "abc" not in text and "https://cdn.test/a.png?…" in text
    assert len(scrub("x" * 1000)) == 200
    assert scrub(None) == ""


def _batch_model() -> dict[str, object]:
    counts = {"queued": 3, "running": 2, "completed": 4, "failed": 1}
    return {
        "id": "b<1>", "source": "/m.jsonl", "total": 10, "counts": counts, "finished": 5,
        "usd": 0.0123, "budget_usd": None, "paused": None, "failures": {"input": 1},
        "phase": "running", "models": [{"model": "Qubico/joycaption",
                                        "task_type": "joycaption-beta-one", "rows": 10}],
        "rate": {"per_minute": [[int(NOW) - 60, 2], [int(NOW), 3]], "recent_per_min": 2.5,
                 "eta_s": 120.0},
        "failure_samples": {"input": [{"id": "r<9>", "line": 9, "error": "bad <image>"}]},
        "slowest": {"in_flight": [{"id": "r7", "model": "m", "state": "running",
                                   "age_s": 61.0}], "finished": []},
        "results_url": "/batches/b<1>/results",
    }


def test_page_renders_counts_cost_and_escapes() -> None:
    html = page.render({"generated_at": NOW, "flower_url": "http://127.0.0.1:5555",
                        "in_flight": 2, "batches": [_batch_model()]}, "?token=t%26")
    assert 'data-batch="b&lt;1&gt;"' in html and "<1>" not in html
    assert '<td data-k="counts.completed">4</td>' in html
    assert "$0.0123" in html and "2m 00s" in html and "1m 01s" in html
    assert "bad &lt;image&gt;" in html and "r&lt;9&gt;" in html
    assert 'href="/batches/b&lt;1&gt;/results?token=t%26"' in html
    assert html.count("<rect ") == 2


def test_the_page_lists_the_controls_in_effect() -> None:
    controls = ["at most 4 in flight (--concurrency)", "paused: budget <reached>",
                "deadline 2026-12-01T08:00:00+00:00", "cancelled at 2026-12-01T07:00:00+00:00"]
    html = page.render({"generated_at": NOW, "flower_url": "http://127.0.0.1:5555",
                        "in_flight": 0, "batches": [{**_batch_model(), "controls": controls}]})
    assert "<li>at most 4 in flight (--concurrency)</li>" in html
    assert "<li class=paused>paused: budget &lt;reached&gt;</li>" in html
    assert "<li>deadline 2026-12-01T08:00:00+00:00</li>" in html
    assert "<li class=paused>cancelled at" in html
    # The script reloads the page when the list changes: the same JSON as JSON.stringify.
    assert 'data-controls="[&quot;at most 4 in flight (--concurrency)&quot;,' in html


def test_the_page_says_the_fleet_is_halted() -> None:
    model = {"generated_at": NOW, "flower_url": "http://127.0.0.1:5555", "in_flight": 0,
             "batches": [_batch_model()]}
    assert 'class="halted"' not in page.render({**model, "halted": None})
    assert '<body data-halted="">' in page.render({**model, "halted": None})
    html = page.render({**model, "halted": {"reason": "HTTP 401 <key>", "since": NOW}})
    assert '<p class="halted">Fleet halted since ' in html
    assert "HTTP 401 &lt;key&gt;. No task is created until PiAPI accepts the key" in html
    assert '<body data-halted="HTTP 401 &lt;key&gt;">' in html  # the script reloads on change


def test_notification_body_and_events() -> None:
    st = BatchStatus(id="b1", source="/m.jsonl", total=3,
                     counts={"completed": 2, "failed": 1}, consumed_units=20_000,
                     failures={"input": 1})
    body = summary(st, "failed", 12.34, Path("out.jsonl"))
    assert body == {"batch": "b1", "event": "failed", "counts": {"completed": 2, "failed": 1},
                    "failures": {"input": 1}, "cost_usd": 0.002, "wall_s": 12.3,
                    "results": "out.jsonl", "text": body["text"]}
    assert "b1 failed: 3/3 finished" in body["text"]
    assert (EVENTS[0], EVENTS[3], EVENTS.get(1, "failed")) == (
        "finished", "paused_budget", "failed")
    assert check_url("https://hooks.example/T0/x") == "https://hooks.example/T0/x"
    with pytest.raises(ConfigError):
        check_url("hooks.example/x")
