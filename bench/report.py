"""Results out: the JSON document (timestamped file and latest.json) and the stdout table."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.figures import downsample

PASS, FAIL = "✓", "✗"
LOAD_COLUMNS = (
    # (header, figure, format)
    ("mk/ideal", "makespan_over_ideal", "{:.2f}"),
    ("util", "utilization", "pct"),
    ("GET/task (task GETs)", "gets_per_task", "{:.2f}"),
    ("req/row", "requests_per_row", "{:.2f}"),
    ("create/row", "creates_per_row", "{:.3f}"),
    ("CPU s/1k", "cpu_s_per_1000_tasks", "{:.2f}"),
    ("RSS MB", "peak_rss_mb_max", "{:.0f}"),
    ("Redis MB", "redis_peak_mb", "{:.1f}"),
    ("other load", "unattributed_cores", "{:.2f}"),
)


def write(doc: dict[str, Any], out_dir: Path, stamp: str) -> list[Path]:
    """Write the results (each run's timeline downsampled) as `write_json` does."""
    return write_json(_compact(doc), out_dir, stamp)


def write_json(doc: dict[str, Any], out_dir: Path, stamp: str) -> list[Path]:
    """Write `<stamp>.json` and `latest.json` under `out_dir`, each atomically (the
    benchmark's and the chaos run's reports)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1) + "\n"
    paths = [out_dir / f"{stamp}.json", out_dir / "latest.json"]
    for path in paths:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths


def _compact(doc: dict[str, Any]) -> dict[str, Any]:
    runs = []
    for run in doc.get("runs", []):
        run = dict(run)
        if run.get("timeline"):
            run["timeline"] = downsample(run["timeline"], 240)
        runs.append(run)
    return {**doc, "runs": runs}


def _fmt(value: Any, style: str) -> str:
    if value is None:
        return "-"
    if style == "pct":
        return f"{100 * value:.1f}%"
    return style.format(value)


def _mark(run: dict[str, Any], figure: str) -> str:
    for check in run.get("checks", []):
        if check["figure"] == figure and check["pass"] is not None:
            return PASS if check["pass"] else FAIL
    return ""


def _load_row(run: dict[str, Any]) -> list[str]:
    figs = run.get("figures", {})
    ratios = run.get("baseline_ratio", {})
    cells = []
    for _, figure, style in LOAD_COLUMNS:
        cell = _fmt(figs.get(figure), style) + _mark(run, figure)
        task_only = figs.get("task_gets_per_task")
        if figure == "gets_per_task" and task_only not in (None, figs.get(figure)):
            cell += f" ({task_only:.2f})"
        if ratios.get(figure) is not None:
            cell += f" x{ratios[figure]:.2f}"
        cells.append(cell)
    return cells


def _short(run: dict[str, Any], width: int = 100) -> str:
    """A run's note or error on one line: its first line and, for a traceback, its last."""
    lines = [ln.strip() for ln in (run.get("note") or run.get("error") or "").splitlines()
             if ln.strip() and not set(ln.strip()) <= {"^", "~"}]
    text = f"{lines[0]} … {lines[-1]}" if len(lines) > 1 else (lines[0] if lines else "")
    return text if len(text) <= width else text[: width - 1] + "…"


def _name(run: dict[str, Any]) -> str:
    parts = [run["scenario"].split("_")[0], run.get("variant"), run.get("db")]
    return " ".join(p for p in parts if p)


def _status(run: dict[str, Any]) -> str:
    if run["status"] == "ok":
        return str(run.get("verdict", "n/a"))
    return str(run["status"])


def one_line(run: dict[str, Any]) -> str:
    """A progress line for a finished run."""
    f = run.get("figures") or {}
    keys = ("makespan_s", "makespan_over_ideal", "utilization", "sustained_rows_per_s",
            "ingest_s", "http_429", "unattributed_cores")
    shown = ", ".join(f"{k} {f[k]}" for k in keys if f.get(k) is not None)
    return f"{_name(run)}: {_status(run)} {shown} {_short(run, 80)}".rstrip()


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


LOAD_TITLE = "Scenarios 1, 2 and 5 (✓/✗ vs target; xR = this figure / the baseline's)"
SHORT_TITLE = ("Scenario 10: short tasks (0.15-0.45 s, C = 20), no completion signal; "
               "the baseline polls every 25 ms (✓/✗ vs the baseline; xR = / the baseline's)")
LATENCY_TITLE = ("Scenarios 8 and 9: 1 with latency, 150 ± 50 ms a request, creates 1 ± 0.5 s "
                 "(8: webhooks; 9: no completion signal; xR = / the baseline's)")


def _load_section(runs: list[dict[str, Any]], scenarios: tuple[str, ...] = (
        "s1_captions", "s2_video"), title: str = LOAD_TITLE) -> list[str]:
    rows = []
    for run in runs:
        if run["scenario"] in scenarios:
            rows.append([_name(run), _status(run), *_load_row(run),
                         _fmt((run.get("figures") or {}).get("makespan_s"), "{:.1f}")
                         + _mark(run, "makespan_s"),
                         _short(run)])
    if not rows:
        return []
    headers = ["run", "verdict", *(h for h, _, _ in LOAD_COLUMNS), "makespan s", "note"]
    return [title, *_table(headers, rows), ""]


def _section(runs: list[dict[str, Any]], scenario: str, title: str,
             line: Callable[[dict[str, Any], dict[str, Any]], str]) -> list[str]:
    """A titled block with `line(run, figures)` for each run of `scenario` (its status and
    note when it has no figures); nothing when the scenario did not run."""
    out = []
    for run in runs:
        if run["scenario"] != scenario:
            continue
        figs = run.get("figures") or {}
        label = " ".join(p for p in (run["db"], run.get("variant")) if p)
        out.append(line(run, figs) if figs else f"  {label}: {run['status']} {_short(run)}")
    return [title, *out, ""] if out else []


def _s3_line(run: dict[str, Any], figs: dict[str, Any]) -> str:
    steps = " · ".join(
        f"{s['offered_rows_per_s']:g}/s→{_fmt(s['steady_rows_per_s'], '{:.0f}')}/s "
        f"@{_fmt(s['steady_utilization'], 'pct')} {_fmt(s.get('gets_per_task'), '{:.1f}')} "
        f"GET/task (other {_fmt(s.get('unattributed_cores'), '{:.1f}')})"
        for s in figs["steps"])
    target = next((f" (target {c['target']})" for c in run.get("checks", [])
                   if c["figure"] == "sustained_rows_per_s"), "")
    ratio = (run.get("baseline_ratio") or {}).get("best_steady_rows_per_s_any_step")
    best = (f" · best step {figs.get('best_steady_rows_per_s_any_step') or 0:.0f} rows/s"
            + (f" x{ratio:.2f}" if ratio is not None else ""))
    return (f"  {run['db'] or run.get('variant'):<11} sustained "
            f"{figs['sustained_rows_per_s']:.0f} rows/s{_mark(run, 'sustained_rows_per_s')}"
            f"{target}{best} · steps: {steps}")


def _s4_line(run: dict[str, Any], f: dict[str, Any]) -> str:
    return (f"  {run['db']:<11} {f['rows']:,} rows in {f['ingest_s']:.1f} s"
            f"{_mark(run, 'ingest_s')} ({f['rows_per_s']:,.0f} rows/s) · peak RSS "
            f"{f['peak_rss_mb']:.0f} MB{_mark(run, 'peak_rss_mb')} · CPU {f['cpu_s']:.1f} s")


def _s6_line(run: dict[str, Any], f: dict[str, Any]) -> str:
    per = " ".join(str(w["http_429"]) for w in f.get("windows_429", []))
    judged = "settled_by_s" if run["variant"] != "correct" else "http_429"
    return (f"  {run['db']:<11} {run['variant']:<9} 429s total {f['http_429']}"
            f"{_mark(run, judged)} · per 10 s: {per} · settled by "
            f"{_fmt(f.get('settled_by_s_measured'), '{:g}')} s · "
            f"{_fmt(f.get('requests_per_s'), '{:.0f}')} req/s "
            f"({_fmt(f.get('budget_used'), 'pct')} of the budget) · other load "
            f"{_fmt(f.get('unattributed_cores'), '{:.2f}')}")


def _s7_line(run: dict[str, Any], f: dict[str, Any]) -> str:
    if run.get("variant") == "flatness":
        checks = " · ".join(f"{c['figure']} {_fmt(c['measured'], '{:g}')}"
                            f"{PASS if c['pass'] else FAIL if c['pass'] is False else ''}"
                            for c in run.get("checks", []))
        return f"  {run['db']:<11} flat, largest vs smallest: {checks}"
    size = (f"jobs {_fmt(f.get('jobs_mb_after'), '{:.1f}')} MB + indexes "
            f"{_fmt(f.get('jobs_index_mb_after'), '{:.1f}')} MB · "
            if "jobs_mb_after" in f else "")
    return (f"  {run['db']:<11} {f['backlog']:>9,} queued: pass p50/p95 "
            f"{_fmt(f.get('pass_ms_p50'), '{:.1f}')}/{_fmt(f.get('pass_ms_p95'), '{:.1f}')} ms,"
            f" housekeeping {_fmt(f.get('housekeeping_pass_ms_p50'), '{:.1f}')}/"
            f"{_fmt(f.get('housekeeping_pass_ms_p95'), '{:.1f}')} ms · SQL/pass p50/p95 "
            f"{_fmt(f.get('statements_p50'), '{:g}')}/{_fmt(f.get('statements_p95'), '{:g}')},"
            f" housekeeping {_fmt(f.get('housekeeping_statements_p50'), '{:g}')}/"
            f"{_fmt(f.get('housekeeping_statements_p95'), '{:g}')} · seq scans "
            f"{_fmt(f.get('jobs_seq_scan'), '{:d}')} · Redis "
            f"{_fmt(f.get('redis_used_mb_max'), '{:.1f}')} MB · {size}"
            f"{_fmt(f.get('jobs_bytes_per_row_after'), '{:.0f}')} B/row · "
            f"{_fmt(f.get('rows_per_s'), '{:.0f}')} rows/s @{_fmt(f.get('slot_use'), 'pct')} · "
            f"other load {_fmt(f.get('unattributed_cores'), '{:.2f}')}")


SECTIONS = (
    ("s3_headroom", "Scenario 3 headroom (offered rate → steady rows/s @ steady utilization "
     "(other load in cores))", _s3_line),
    ("s4_ingest", "Scenario 4 ingest (targets: < 60 s on PostgreSQL, RSS < 300 MB)", _s4_line),
    ("s6_rate_limit", "Scenario 6 rate limit (correct: zero 429s; wrong 2x: < 1% per window "
     "by 60 s)", _s6_line),
    ("s7_backlog", "Scenario 7 backlog (per pass: time and SQL statements; ordinary and "
     "housekeeping passes)", _s7_line),
)
"""The scenarios shown as a line per run under a title: (scenario, title, line)."""


def table(doc: dict[str, Any]) -> str:
    """The short human summary of a results document."""
    meta = doc["meta"]
    measured = meta["version"].get("measured", {})
    if measured.get("what") == "git archive":
        code = f"commit {measured['commit'][:10]} (git archive)"
    else:
        dirty = len(measured.get("git_dirty", []))
        code = (f"working tree at {meta['version']['git_commit'][:10]}"
                + (f" + {dirty} changed files" if dirty else ""))
    head = (f"piapi-bulk bench · {'quick' if meta['quick'] else 'full'} · {meta['started_at']} · "
            f"{code} · {meta['machine']['nproc']} cores · {meta.get('duration_s', 0) / 60:.1f} min")
    runs = doc["runs"]
    lines = [head, "", *_load_section(runs)]
    for scenario, title, line in SECTIONS:
        lines += _section(runs, scenario, title, line)
    lines += _load_section(runs, ("s8_latency_signal", "s9_latency_polling"), LATENCY_TITLE)
    lines += _load_section(runs, ("s10_short_polling",), SHORT_TITLE)
    s = doc.get("summary", {})
    lines.append(f"targets: {s.get('checks_passed', 0)} passed, {s.get('checks_failed', 0)} "
                 f"failed, {s.get('checks_unjudged', 0)} not judged · runs not ok: "
                 f"{s.get('runs_not_ok', 0)}")
    return "\n".join(lines)
