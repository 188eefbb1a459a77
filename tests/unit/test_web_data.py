"""The run page's JSON model and /metrics, from rows written straight to the database (SQLite
here; PostgreSQL too as an integration test), and the auth around the app's routes."""

from __future__ import annotations

import warnings

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

with warnings.catch_warnings():  # starlette 1.x would rather have httpx2; httpx is ours
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from scheduler.operator import set_limits
from scheduler.status import batch_status
from scheduler.web.app import WebConfig, create_web_app
from scheduler.web.auth import WebAuth
from scheduler.web.data import dashboard
from tests.integration.e2e import add_batch, set_jobs
from workers.models import BATCHES

NOW = 1_700_000_040.0  # a whole minute: NOW / 60 is an integer


def _rows(engine: Engine) -> list[int]:
    """Batch b1: 10 rows, 4 completed over the last 3 minutes, 2 failed (input, one with a
    signed URL in its message), 2 running, 2 queued."""
    ids = add_batch(engine, "b1", rows=10)
    for i, ago in enumerate((170, 100, 50, 10)):
        set_jobs(engine, ids[i], state="completed", submitted_at=NOW - ago - 5 * (i + 1),
                 finished_at=NOW - ago, usage_consume=100_000)
    set_jobs(engine, ids[4], state="failed", error_kind="input", finished_at=NOW - 20,
             error_message="cannot fetch https://cdn.test/x.png?sig=TOKEN")
    set_jobs(engine, ids[5], state="failed", error_kind="input", finished_at=NOW - 15,
             error_message="moderation")
    set_jobs(engine, ids[6], state="running", submitted_at=NOW - 30, task_id="t6")
    set_jobs(engine, ids[7], state="running", submitted_at=NOW - 90, task_id="t7")
    return ids


def test_dashboard_model(engine: Engine) -> None:
    _rows(engine)
    model = dashboard(engine, NOW, "http://flower.test")
    assert model["in_flight"] == 2 and model["flower_url"] == "http://flower.test"
    (b,) = model["batches"]
    st = batch_status(engine, "b1")
    assert st is not None
    assert b["counts"] == st.counts and b["usd"] == round(st.usd, 6) == 0.04
    assert (b["finished"], b["rows_left"], b["phase"]) == (6, 4, "running")
    series = b["rate"]["per_minute"]
    assert len(series) == 60 and sum(n for _, n in series) == 6
    assert series[-1] == [NOW, 0]  # the current minute, just begun
    # 6 rows in the last 170 s (5-minute window, starting at the first of them).
    assert b["rate"]["recent_per_min"] == round(6 * 60 / 170, 2)
    assert b["rate"]["eta_s"] == pytest.approx(4 * 170 / 6)  # 4 rows left at that rate
    samples = b["failure_samples"]["input"]
    assert [s["line"] for s in samples] == [5, 6]
    assert "TOKEN" not in samples[0]["error"] and "https://cdn.test/x.png?…" in samples[0]["error"]
    assert [r["id"] for r in b["slowest"]["in_flight"]] == ["8", "7"]
    assert b["slowest"]["in_flight"][0]["age_s"] == 90.0
    assert b["slowest"]["finished"][0] == {"id": "4", "line": 4, "model": "Qubico/joycaption",
                                           "task_type": "joycaption-beta-one", "took_s": 20.0}
    assert b["results_url"] == "/batches/b1/results"
    assert b["controls"] == []
    assert "ub1" not in str(model)  # no input value anywhere (add_batch's are "ub1<n>")


def test_the_page_model_names_the_controls_in_effect(engine: Engine) -> None:
    _rows(engine)
    set_limits(engine, "b1", budget_usd=5.0, deadline_at=NOW + 3600, on_stuck=None,
               reuse=None)
    with engine.begin() as conn:  # what the dispatcher writes when the budget is reached
        conn.execute(BATCHES.update().where(BATCHES.c.id == "b1").values(
            paused="budget reached"))
    (b,) = dashboard(engine, NOW, "http://flower.test")["batches"]
    budget, paused, deadline = b["controls"]
    assert budget == "budget $5.00"  # the spending is the page's own figure, not a control
    assert paused == "paused: budget reached" and deadline.startswith("deadline ")


def test_metrics_say_the_fleet_is_halted(engine: Engine) -> None:
    from workers.halt import set_halt

    set_halt(engine, "HTTP 401", NOW)
    app = create_web_app(WebConfig(reader=engine, clock=lambda: NOW))
    with TestClient(app) as client:
        text = client.get("/metrics").text
    assert "\npiapi_bulk_fleet_halted 1.0\n" in text


def test_metrics_match_the_status(engine: Engine) -> None:
    _rows(engine)
    mixed = add_batch(engine, "b2", rows=3)  # a batch of two models: counted by model
    set_jobs(engine, mixed[0], model="Qubico/flux1-schnell", task_type="txt2img",
             state="completed", usage_consume=20_000, finished_at=NOW - 5)
    app = create_web_app(WebConfig(reader=engine, clock=lambda: NOW))
    with TestClient(app) as client:
        text = client.get("/metrics").text
        lines = client.get("/batches/b1/results").text.splitlines()
        assert client.get("/batches/nope/results").status_code == 404
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    st = batch_status(engine, "b1")
    assert st is not None
    rows = {dict(labels)["state"]: int(v) for (name, labels), v in samples.items()
            if name == "piapi_bulk_rows" and dict(labels)["batch"] == "b1"}
    assert rows == {state: n for state, n in st.counts.items() if n}
    assert samples[("piapi_bulk_in_flight", ())] == 2
    assert samples[("piapi_bulk_fleet_halted", ())] == 0
    assert samples[("piapi_bulk_usd_spent", (("batch", "b1"),))] == st.usd
    assert len(lines) == 10 and '"status":"completed"' in lines[0]
    by_model = {(dict(labels)["model"], dict(labels)["state"]): int(v)
                for (name, labels), v in samples.items()
                if name == "piapi_bulk_rows" and dict(labels)["batch"] == "b2"}
    assert by_model == {("Qubico/flux1-schnell", "completed"): 1,
                        ("Qubico/joycaption", "queued"): 2}
    assert samples[("piapi_bulk_usd_spent", (("batch", "b2"),))] == pytest.approx(0.002)


def test_routes_need_the_credentials_but_webhooks_and_health_do_not(engine: Engine) -> None:
    add_batch(engine, "b1", rows=1)
    app = create_web_app(WebConfig(reader=engine, auth=WebAuth(token="tk", basic="u:p")))
    with TestClient(app) as client:
        for path in ("/", "/api/batches", "/metrics", "/batches/b1/results"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"authorization": "Bearer tk"}).status_code == 200
        assert client.get("/api/batches?token=tk").status_code == 200
        assert client.get("/api/batches", auth=("u", "p")).status_code == 200
        assert client.get("/api/batches", auth=("u", "x")).status_code == 401
        assert client.get("/healthz").status_code == 200
        page = client.get("/?token=tk").text
        assert 'href="/batches/b1/results?token=tk"' in page
