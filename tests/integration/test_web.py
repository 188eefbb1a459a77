"""`piapi-bulk web` during and after a real run, read by headless Chromium and Prometheus'
parser; `run --notify` posting to a receiver in the test; the bind rule's usage error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scheduler.services import free_port
from tests.helpers import HTTP, MakeEmulator, Spawn, wait_until
from tests.integration.e2e import (
    NO_PIAPI,
    caption_rows,
    finish,
    piapi_bulk,
    run_env,
    start_run,
    write_jsonl,
)
from workers.spending import money

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT_COPY = "PIAPI_BULK_WEB_SCREENSHOT"
"""Set to a path (docs/web.png) to keep the screenshot the test takes there."""


def chromium(tmp_path: Path, *args: str) -> str:
    """Headless Chromium on its own profile; its stdout."""
    assert CHROMIUM is not None
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}",
                          *args], capture_output=True, text=True, timeout=90, check=True)
    return out.stdout


def panel(dom: str, batch_id: str) -> dict[str, Any]:
    """What the rendered DOM shows for a batch: counts by state, finished, total, cost."""
    start = dom.index(f'data-batch="{batch_id}"')
    end = dom.find("</section>", start)
    section = dom[start:end]
    fields = dict(re.findall(r'data-k="([\w.]+)"[^>]*>([^<]*)<', section))
    return {"counts": {k.split(".", 1)[1]: int(v) for k, v in fields.items()
                       if k.startswith("counts.")},
            "finished": int(fields["finished"]), "total": int(fields["total"]),
            "usd": fields["usd"], "bars": section.count("<rect ")}


def metric_rows(base: str, batch_id: str) -> tuple[dict[str, int], dict[str, Any]]:
    """/metrics parsed: rows by state of the batch (summed over models), and every sample."""
    text = HTTP.get(base + "/metrics", timeout=10).text
    samples: dict[str, Any] = {}
    rows: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
            if s.name == "piapi_bulk_rows" and s.labels["batch"] == batch_id:
                rows[s.labels["state"]] = rows.get(s.labels["state"], 0) + int(s.value)
    return rows, samples


def status_json(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    out = piapi_bulk(tmp_path, env, "status", "--json")
    assert out.returncode == 0, out.stderr
    [batch] = json.loads(out.stdout)["batches"]
    return dict(batch)


class Receiver(BaseHTTPRequestHandler):
    """Keeps every JSON body POSTed to it (`server.bodies`)."""

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        self.server.bodies.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook/T0KEN", server.bodies  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get "
                    "install chromium; make install does it)")
def test_page_in_a_browser_and_metrics_during_and_after_a_run(
        tmp_path: Path, sqlite_url: str, make_emulator: MakeEmulator, spawn: Spawn,
        receiver: tuple[str, list[dict[str, Any]]]) -> None:
    hook_url, bodies = receiver
    rows = caption_rows(100)  # about 15 s: 0.75-2.25 s a task, 10 at a time
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    emu = make_emulator("--time-scale", "0.05", "--concurrency", "10", "--fault-fail", "0.1",
                        "--seed", "7")
    env = run_env(tmp_path, emu, sqlite_url)
    proc = start_run(tmp_path, env, str(manifest), "-o", "out.jsonl", "--max-attempts", "1",
                     "--notify", hook_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spawn(env, "web", "--port", str(port), log="web.log")
    batches = wait_until(lambda: HTTP.get(base + "/api/batches", timeout=5).json()["batches"],
                         60, what="the web server and the batch")
    batch_id = batches[0]["id"]
    assert f"serving the run page at /, its JSON at /api/batches, /metrics on {base}" in (
        tmp_path / "web.log").read_text()  # where it is, said as it starts
    wait_until(lambda: 20 <= HTTP.get(base + "/api/batches", timeout=5).json()["batches"][0][
        "counts"]["completed"] <= 70, 90, interval_s=0.3, what="rows completing")

    # During the run: the browser shows the batch and consistent counts and cost.
    shot = tmp_path / "web.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", base + "/")
    dom = chromium(tmp_path, "--dump-dom", base + "/")
    live = panel(dom, batch_id)
    assert live["total"] == 100 and sum(live["counts"].values()) == 100
    assert 20 <= live["counts"]["completed"] <= live["finished"] < 100
    assert re.fullmatch(r"\$\d+\.\d{2,4}", live["usd"]) and live["bars"] == 10
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if keep := env.get(SCREENSHOT_COPY):
        shutil.copyfile(shot, keep)
    rows_now, samples = metric_rows(base, batch_id)
    assert sum(rows_now.values()) == 100
    creates = sum(v for k, v in samples.items() if k.startswith("piapi_bulk_requests_total")
                  and '"endpoint": "create"' in k)
    histogram = samples['piapi_bulk_request_seconds_count{"endpoint": "create"}']
    assert creates >= 20 and histogram == creates
    assert samples['piapi_bulk_request_seconds_bucket{"endpoint": "get", "le": "+Inf"}'] > 0

    code = finish(proc, 180)
    assert code == 1, (tmp_path / "run.out").read_text()[-3000:]  # some rows failed

    # After the run: the page and /metrics say what `status --json` says.
    st = status_json(tmp_path, env)
    final = panel(chromium(tmp_path, "--dump-dom", base + "/"), batch_id)
    assert final["counts"] == st["counts"] and final["finished"] == st["finished"] == 100
    assert final["usd"] == money(st["usd"])
    rows_after, samples = metric_rows(base, batch_id)
    assert rows_after == {state: n for state, n in st["counts"].items() if n}
    assert samples['piapi_bulk_usd_spent{"batch": "' + batch_id + '"}'] == pytest.approx(st["usd"])
    assert st["failures"] and st["counts"]["failed"] > 0

    # The notification: the batch ended with failed rows.
    wait_until(lambda: bodies, 10, what="the notification")
    [note] = bodies
    assert note["batch"] == batch_id and note["event"] == "failed"
    assert note["counts"] == st["counts"] and note["failures"] == st["failures"]
    assert note["cost_usd"] == pytest.approx(st["usd"]) and note["wall_s"] > 0
    assert note["results"] == "out.jsonl" and "example.test" not in json.dumps(note)
    assert "T0KEN" not in (tmp_path / "run" / "run.log").read_text()
    results = HTTP.get(f"{base}/batches/{batch_id}/results", timeout=30).text.splitlines()
    assert results == (tmp_path / "out.jsonl").read_text().splitlines()


def test_notify_on_a_budget_pause(tmp_path: Path, sqlite_url: str,
                                  make_emulator: MakeEmulator,
                                  receiver: tuple[str, list[dict[str, Any]]]) -> None:
    hook_url, bodies = receiver
    manifest = write_jsonl(tmp_path / "m.jsonl", caption_rows(10))  # $0.01 a task
    emu = make_emulator("--time-scale", "0.02")
    env = run_env(tmp_path, emu, sqlite_url)
    code = finish(start_run(tmp_path, env, str(manifest), "-o", "out.jsonl", "--concurrency",
                            "2", "--budget-usd", "0.03", "--notify", hook_url), 120)
    assert code == 3, (tmp_path / "run.out").read_text()[-3000:]
    [note] = bodies
    assert note["event"] == "paused_budget" and 0 < note["cost_usd"] <= 0.03
    assert note["counts"]["completed"] == round(note["cost_usd"] / 0.01)


def test_web_off_loopback_needs_credentials(tmp_path: Path, sqlite_url: str) -> None:
    env = run_env(tmp_path, NO_PIAPI, sqlite_url)
    out = piapi_bulk(tmp_path, env, "web", "--host", "0.0.0.0", "--port", "9")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "piapi-bulk: refusing to serve the run page on 0.0.0.0 without PIAPI_BULK_WEB_TOKEN "
        "or PIAPI_BULK_WEB_BASIC_AUTH=user:password"]
    bad = piapi_bulk(tmp_path, {**env, "PIAPI_BULK_WEB_BASIC_AUTH": "nocolon"}, "web",
                     "--port", "9")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "piapi-bulk: PIAPI_BULK_WEB_BASIC_AUTH must be user:password"]
    hook = piapi_bulk(tmp_path, env, "run", str(write_jsonl(tmp_path / "m.jsonl", [])),
                      "--notify", "chat.example/hook")
    assert hook.returncode == 2 and hook.stderr.strip().splitlines() == [
        "piapi-bulk: --notify needs an http(s) URL"]


def test_fleet_report_adds_metered_requests_and_429s(redis_url: str) -> None:
    import redis

    from workers.fleet import Fleet
    from workers.metering import RequestMeter

    fleet = Fleet(redis.Redis.from_url(redis_url), clock=lambda: 1_000_000.0)
    meter = RequestMeter()
    for status, seconds in (("200", 0.01), ("200", 0.2), ("429", 0.03)):
        meter.observe("create", status, seconds)
    meter.observe("get", "error", 3.0)
    fleet.report(4, rate_429=1, conc_429=2, metered=meter.drain())
    meter.observe("get", "200", 0.04)
    fleet.report(1, metered=meter.drain())
    fleet.report(0, wake=True)  # a wake-up alone adds nothing
    totals = fleet.request_totals()
    assert totals.requests == {("create", "200"): 2, ("create", "429"): 1,
                               ("get", "error"): 1, ("get", "200"): 1}
    assert dict(totals.buckets["create"])["+Inf"] == 3
    assert dict(totals.buckets["get"])["0.05"] == 1 and dict(totals.buckets["get"])["+Inf"] == 2
    assert totals.sum_s["get"] == pytest.approx(3.04, abs=0.003)
    assert totals.limited == {"rate": 1, "concurrency": 2}
    # The dispatcher's own counters are as before.
    assert fleet.concurrency_refusals() == 2
    fleet.clock = lambda: 1_000_001.0
    window = fleet.window(1)
    assert (window.requests, window.rate_429, window.conc_429) == (5, 1, 2)
