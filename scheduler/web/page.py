"""The run page as server-rendered HTML: a panel per batch with its progress bar, counts,
cost, ETA, rows per minute as inline SVG, failures with sample rows and the slowest rows.

The first paint is complete without JavaScript; `assets.SCRIPT` then refreshes the numbers
from `/api/batches`. Every value from the database is escaped.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any

from scheduler.web import assets
from scheduler.web.rates import duration_text
from workers.spending import money
from workers.states import JobState

CHART_W, CHART_H = 600, 90
STATE_ORDER = [s.value for s in (JobState.COMPLETED, JobState.RUNNING, JobState.SUBMITTING,
                                 JobState.QUEUED, JobState.RETRY_WAIT, JobState.AMBIGUOUS,
                                 JobState.FAILED, JobState.CANCELLED, JobState.INVALID)]


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def chart_svg(per_minute: list[list[int]]) -> str:
    """Rows finished per minute as bars, the current minute on the right."""
    peak = max((n for _, n in per_minute), default=0) or 1
    width = CHART_W / max(len(per_minute), 1)
    bars = []
    for i, (minute_ts, n) in enumerate(per_minute):
        h = round(n / peak * (CHART_H - 14), 1)
        label = datetime.fromtimestamp(minute_ts).strftime("%H:%M")
        bars.append(f'<rect x="{i * width:.1f}" y="{CHART_H - h:.1f}" width="{width - 1:.1f}" '
                    f'height="{h}"><title>{label}: {n} rows</title></rect>')
    return (f'<svg class="chart" viewBox="0 0 {CHART_W} {CHART_H}" width="{CHART_W}" '
            f'height="{CHART_H}" role="img" aria-label="rows finished per minute, last hour">'
            f'<text x="2" y="10" class="peak">{peak}/min</text>{"".join(bars)}</svg>')


def _counts(b: dict[str, Any]) -> str:
    cells = "".join(
        f'<tr class="state-{_e(state)}"><th>{_e(state)}</th>'
        f'<td data-k="counts.{_e(state)}">{b["counts"].get(state, 0)}</td></tr>'
        for state in STATE_ORDER)
    return f'<table class="counts">{cells}</table>'


def _failures(b: dict[str, Any]) -> str:
    if not b["failures"]:
        return '<div class="failures" data-k="failures"></div>'
    rows = []
    for kind, n in sorted(b["failures"].items(), key=lambda kv: -kv[1]):
        samples = b["failure_samples"].get(kind, [])
        first = True
        for s in samples or [{"id": "", "line": "", "error": ""}]:
            head = (f'<td rowspan="{max(len(samples), 1)}" class="kind">{_e(kind)} '
                    f'<b>{n}</b></td>' if first else "")
            rows.append(f'<tr>{head}<td>{_e(s["id"])}</td><td>{_e(s["line"])}</td>'
                        f'<td class="err">{_e(s["error"])}</td></tr>')
            first = False
    return ('<div class="failures" data-k="failures"><h3>Failures by kind</h3><table>'
            '<tr><th>kind</th><th>row id</th><th>line</th><th>error</th></tr>'
            f'{"".join(rows)}</table></div>')


def _slowest(b: dict[str, Any]) -> str:
    flying = "".join(
        f'<tr><td>{_e(r["id"])}</td><td>{_e(r["model"])}</td><td>{_e(r["state"])}</td>'
        f'<td>{_e(duration_text(r["age_s"]))}</td></tr>' for r in b["slowest"]["in_flight"])
    done = "".join(
        f'<tr><td>{_e(r["id"])}</td><td>{_e(r["model"])}</td><td>completed</td>'
        f'<td>{_e(duration_text(r["took_s"]))}</td></tr>' for r in b["slowest"]["finished"])
    return ('<div class="slowest"><h3>Slowest rows</h3><table>'
            '<tr><th>row id</th><th>model</th><th>state</th><th>age / took</th></tr>'
            f'<tbody data-k="slowest.in_flight">{flying}</tbody>'
            f'<tbody data-k="slowest.finished">{done}</tbody></table></div>')


def _js_json(value: Any) -> str:
    """`value` as JavaScript's JSON.stringify writes it (the script compares the two)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def batch_panel(b: dict[str, Any], token_query: str) -> str:
    """One batch's panel."""
    bid = _e(b["id"])
    rate = b["rate"]
    budget = f' of {money(b["budget_usd"])}' if b["budget_usd"] is not None else ""
    controls = "".join(
        f'<li{" class=paused" if line.startswith(("paused", "cancelled")) else ""}>'
        f'{_e(line)}</li>' for line in b.get("controls", ()))
    models = ", ".join(f'{_e(m["model"])} {_e(m["task_type"])} ({m["rows"]})'
                       for m in b["models"])
    return f"""
<section class="batch" id="batch-{bid}" data-batch="{bid}">
  <h2><span class="batch-id">{bid}</span> <span class="phase" data-k="phase">{_e(b["phase"])}
  </span></h2>
  <p class="source">{_e(b["source"])} · {models or "no rows"}</p>
  <progress max="{max(b["total"], 1)}" value="{b["finished"]}"></progress>
  <p class="summary"><span data-k="finished">{b["finished"]}</span>/<span data-k="total"
  >{b["total"]}</span> finished · cost <span class="cost" data-k="usd">{money(b["usd"])}</span
  >{_e(budget)} · <span data-k="rate">{rate["recent_per_min"]:g}</span> rows/min · ETA
  <span data-k="eta">{_e(duration_text(rate["eta_s"]))}</span> ·
  <a href="{_e(b["results_url"] + token_query)}">results (JSONL)</a></p>
  <ul class="controls" data-controls="{_e(_js_json(b.get("controls", [])))}">{controls}</ul>
  <div class="cols">{_counts(b)}<div class="chartbox"><h3>Rows finished per minute</h3>
  <div data-k="chart">{chart_svg(b["rate"]["per_minute"])}</div></div></div>
  {_failures(b)}
  {_slowest(b)}
</section>"""


def render(model: dict[str, Any], token_query: str = "") -> str:
    """The page for `/api/batches`'s object; `token_query` (`?token=...` or "") is kept on
    links and on the script's requests."""
    panels = "".join(batch_panel(b, token_query) for b in model["batches"]) or (
        '<p class="empty">No batches yet: <code>piapi-bulk run manifest.csv</code></p>')
    when = datetime.fromtimestamp(model["generated_at"]).strftime("%Y-%m-%d %H:%M:%S")
    halt = model.get("halted")
    banner = "" if not halt else (
        f'<p class="halted">Fleet halted since '
        f'{datetime.fromtimestamp(halt["since"]).strftime("%Y-%m-%d %H:%M")}: '
        f'{_e(halt["reason"])}. No task is created until PiAPI accepts the key again (a '
        f'running dispatcher checks every minute; <code>piapi-bulk run</code> lifts it).</p>')
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>piapi-bulk</title><style>{assets.STYLE}</style></head>
<body data-halted="{_e(halt["reason"]) if halt else ""}"><header><h1>piapi-bulk</h1>
<p><span data-k="in_flight">{model["in_flight"]}</span> tasks in flight · updated
<span id="updated">{when}</span> · <a href="{_e(model["flower_url"])}">Flower</a> ·
<a href="metrics{_e(token_query)}">metrics</a> ·
<a href="api/batches{_e(token_query)}">JSON</a></p>{banner}</header>
<main>{panels}</main>
<script>{assets.SCRIPT}</script></body></html>"""
