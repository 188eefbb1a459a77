"""Scenario 7, backlog: does a pass cost the same with 10^4, 10^5 or 10^6 rows queued?

For each backlog size N: a fresh database, N Joycaption rows ingested with `piapi-bulk
submit` (a generated CSV, as scenario 4), then a window of W rows run by the real dispatcher
and workers against the emulator (scenario 1's workload), and everything stopped: the rest
stays queued. The dispatcher writes a line per pass (PIAPI_BULK_DISPATCHER_STATS: time, SQL
statements); PostgreSQL's table counters (pg_stat_user_tables/indexes) are read before and
after the window, and its table and index sizes after the ingest and after the window.

The window ends when the emulator has seen W tasks end: the harness does not read `jobs`
during it (a COUNT over the backlog five times a second would be the very cost measured,
and would blur PostgreSQL's counters). A last flatness entry per database compares the
largest backlog with the smallest (`bench.flatness`).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench import figures as fig
from bench import flatness, manifests
from bench import targets as tg
from bench.metrics import redis_memory, summarise
from bench.procs import BenchError, database
from bench.runs import RunSpec, SystemRun, emulator_args, fail, keep_or_drop_logs, new_result
from bench.scenarios import CAPTIONS_REAL_S, MODEL_ARGS, Env, judged, skipped

SCENARIO = "s7_backlog"
STATS_FILE = "dispatcher-stats.jsonl"
WATCH_S = 0.5
BACKENDS_GONE_S = 20.0
"""How long the dispatcher's and workers' PostgreSQL backends get to exit (and so flush
their counters) once our processes are stopped."""

_TABLES = """
SELECT c.relname, pg_relation_size(c.oid), pg_indexes_size(c.oid),
       coalesce(s.seq_scan, 0), coalesce(s.seq_tup_read, 0), coalesce(s.idx_scan, 0),
       coalesce(s.idx_tup_fetch, 0), coalesce(s.n_live_tup, 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.relkind = 'r' AND n.nspname = 'public'
"""
_INDEXES = """
SELECT s.relname, s.indexrelname, pg_relation_size(s.indexrelid), s.idx_scan, s.idx_tup_read
FROM pg_stat_user_indexes s WHERE s.schemaname = 'public'
"""
_OTHERS = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
           "AND pid <> pg_backend_pid() AND pid <> ALL(%s)")


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def pg_snapshot(url: str) -> dict[str, Any]:
    """Sizes and scan counters of every table and index of the run's database."""
    with psycopg.connect(_plain(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        tables = {str(r[0]): {"bytes": int(r[1]), "index_bytes": int(r[2]),
                              "seq_scan": int(r[3]), "seq_tup_read": int(r[4]),
                              "idx_scan": int(r[5]), "idx_tup_fetch": int(r[6]),
                              "live_rows": int(r[7])}
                  for r in conn.execute(_TABLES).fetchall()}
        indexes = {f"{r[0]}.{r[1]}": {"bytes": int(r[2]), "idx_scan": int(r[3]),
                                      "idx_tup_read": int(r[4])}
                   for r in conn.execute(_INDEXES).fetchall()}
    return {"tables": tables, "indexes": indexes}


def wait_backends_gone(url: str, ours: list[int], timeout_s: float = BACKENDS_GONE_S) -> int:
    """Wait (bounded) until no session but the harness's (`ours`: backend pids) is connected
    to the run's database: a backend flushes its counters as it exits. Returns how many were
    still there at the deadline."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(_plain(url), autocommit=True, connect_timeout=5) as conn:
        while True:
            row = conn.execute(_OTHERS, (ours,)).fetchone()
            left = int(row[0]) if row else 0
            if left == 0 or time.monotonic() > deadline:
                return left
            time.sleep(0.1)


def _sizes(snap: dict[str, Any], rows: int) -> dict[str, Any]:
    jobs = snap["tables"].get("jobs", {})
    total = jobs.get("bytes", 0) + jobs.get("index_bytes", 0)
    return {"jobs_bytes": jobs.get("bytes"), "jobs_index_bytes": jobs.get("index_bytes"),
            "jobs_bytes_per_row": flatness.per_row(total, rows),
            "tables": {name: {"bytes": t["bytes"], "index_bytes": t["index_bytes"]}
                       for name, t in snap["tables"].items()},
            "indexes": {name: i["bytes"] for name, i in snap["indexes"].items()}}


def _scans(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    keys = ("seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch")
    tables = {name: flatness.deltas({k: before["tables"].get(name, {}).get(k, 0) for k in keys},
                                    {k: t[k] for k in keys})
              for name, t in after["tables"].items()}
    indexes = {name: flatness.deltas(
        {k: before["indexes"].get(name, {}).get(k, 0) for k in ("idx_scan", "idx_tup_read")},
        {k: i[k] for k in ("idx_scan", "idx_tup_read")})
        for name, i in after["indexes"].items() if i["idx_scan"]}
    return {"tables": tables, "indexes": indexes}


class BacklogRun(SystemRun):
    """A system run that stops after a window of W tasks ended, with the backlog's figures."""

    def window(self) -> None:
        """Until the emulator has seen W tasks end (bounded); Redis memory sampled."""
        target = self.spec.rows
        self.redis_used_max = 0.0
        while True:
            now = time.monotonic() - self.t0
            stats = self.emu.stats()
            ended = int(stats["creates"]) - int(stats["in_flight"])
            self.timeline.append(fig.timeline_point(now, ended, stats))
            self.redis_used_max = max(self.redis_used_max,
                                      redis_memory(self.redis_url)["used_memory_mb"])
            if ended >= target or self._gave_up(now, f"window not done after {now:.0f} s"):
                break
            time.sleep(WATCH_S)
        self.window_s = time.monotonic() - self.t0
        self.stats_window = stats
        self.extra.update(self.interference.figures())

    def stop_fleet(self) -> None:
        """The dispatcher first (no new leases), then the workers."""
        for proc in [self.dispatcher, *self.workers]:
            proc.stop()


def read_passes(path: Path) -> list[dict[str, Any]]:
    """The dispatcher's per-pass lines (none when it wrote nothing)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _window_figures(run: BacklogRun, passes: list[dict[str, Any]], backlog: int,
                    concurrency: int) -> dict[str, Any]:
    stats = run.stats_window
    ended = int(stats["creates"]) - int(stats["in_flight"])
    return {
        "backlog": backlog, "window_rows": run.spec.rows, "window_s": round(run.window_s, 3),
        "tasks_ended": ended, "tasks_created": int(stats["creates"]),
        "rows_per_s": round(ended / run.window_s, 2) if run.window_s else None,
        "slot_use": round(stats["in_flight_integral_s"] / (concurrency * run.window_s), 4)
        if run.window_s else None,
        "redis_used_mb_max": round(run.redis_used_max, 3),
        **flatness.pass_figures(passes),
    }


def run_backlog(env: Env, db: str, backlog: int) -> dict[str, Any]:
    """One backlog size on one database (never raises: the result says what happened)."""
    p, ctx = env.plan, env.ctx
    logs = Path(tempfile.mkdtemp(prefix=f"s7-{backlog}-{db}-", dir=ctx.workdir))
    args = emulator_args(ctx.seed, p.s1_concurrency, p.s1_time_scale,
                         {"joycaption": CAPTIONS_REAL_S})
    csv = manifests.captions_csv(ctx.workdir / f"s7-{backlog}.csv", backlog)
    spec = RunSpec(SCENARIO, f"{backlog}", db, csv, p.s7_window_rows, p.s1_concurrency, args,
                   deadline_s=120.0 + p.s7_window_rows / 10,
                   env={"PIAPI_BULK_DISPATCHER_STATS": str(logs / STATS_FILE)},
                   submit_args=MODEL_ARGS)
    result = new_result(spec, "system")
    result["params"]["backlog"] = backlog
    try:
        with database(db, logs) as url:
            run = BacklogRun(spec, ctx, logs, url)
            try:
                _measure(run, result, url, backlog, db)
            finally:
                run.sampler.stop()
                run.stack.close()
    except Exception as exc:
        fail(result, exc)
    finally:
        csv.unlink(missing_ok=True)
    keep_or_drop_logs(result, logs, ctx)
    return result


def _measure(run: BacklogRun, result: dict[str, Any], url: str, backlog: int, db: str) -> None:
    run.setup()
    pg = db == "postgresql"
    before = pg_snapshot(url) if pg else None
    sqlite_after_ingest = _sqlite_bytes(url) if not pg else None
    run.start_fleet()
    run.window()
    run.stop_fleet()
    watcher = run.watch.backend_pid()
    left = wait_backends_gone(url, [watcher] if watcher else []) if pg else 0
    after = pg_snapshot(url) if pg else None
    run.teardown()
    passes = read_passes(run.logs / STATS_FILE)
    if not passes:
        raise BenchError("the dispatcher wrote no pass statistics (PIAPI_BULK_DISPATCHER_STATS)")
    figs = _window_figures(run, passes, backlog, run.spec.concurrency)
    figs["ingest_s"] = round(run.ingest.seconds, 3)
    figs["redis_peak_mb"] = run.redis_mem["used_memory_peak_mb"]
    figs.update(run.extra)
    roles = summarise(run.sampler.final_records(run.stack.procs))["by_role"]
    figs["dispatcher_cpu_s"] = roles.get("dispatcher", {}).get("cpu_s")
    figs["postgres_backend_cpu_s"] = roles.get("postgres", {}).get("cpu_s")
    if before is not None and after is not None:
        scans = _scans(before, after)
        jobs = scans["tables"].get("jobs", {})
        figs.update({
            "jobs_seq_scan": jobs.get("seq_scan"), "jobs_seq_tup_read": jobs.get("seq_tup_read"),
            "jobs_idx_scan": jobs.get("idx_scan"), "jobs_idx_tup_fetch": jobs.get("idx_tup_fetch"),
            "jobs_seq_read_share_per_pass": flatness.seq_read_share(
                jobs.get("seq_tup_read"), figs["passes"], backlog),
            "jobs_idx_tup_fetch_per_pass": round(jobs.get("idx_tup_fetch", 0) / figs["passes"], 2),
            "scans": scans, "backends_left": left,
            "after_ingest": _sizes(before, backlog), "after_window": _sizes(after, backlog),
        })
        figs["jobs_bytes_per_row_after"] = figs["after_window"]["jobs_bytes_per_row"]
        figs["jobs_mb_after"] = round((figs["after_window"]["jobs_bytes"] or 0) / 2**20, 1)
        figs["jobs_index_mb_after"] = round(
            (figs["after_window"]["jobs_index_bytes"] or 0) / 2**20, 1)
    else:
        size = _sqlite_bytes(url)
        figs.update({"db_bytes_after_ingest": sqlite_after_ingest, "db_bytes_after": size,
                     "jobs_bytes_per_row_after": flatness.per_row(size, backlog)})
    result["figures"] = figs
    result["status"], result["error"] = run.status, run.error
    result["note"] = f"{backlog:,} queued, window of {run.spec.rows:,} rows, then stopped"
    result["timeline"] = run.timeline


def _sqlite_bytes(url: str) -> int:
    """The SQLite database's bytes on disk (main file and WAL)."""
    path = Path(str(make_url(url).database))
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def flatness_result(db: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest backlog against the smallest on one database, judged by FLAT."""
    ok = [r for r in runs if r["status"] == "ok" and r["figures"]]
    result = {"scenario": SCENARIO, "variant": "flatness", "db": db, "kind": "flatness",
              "status": "ok", "error": None, "note": None, "figures": {}, "checks": [],
              "verdict": "n/a"}
    if len(ok) < 2:
        result["note"] = "fewer than two backlog sizes measured: nothing to compare"
        return result
    ok.sort(key=lambda r: r["figures"]["backlog"])
    result["figures"] = flatness.compare(ok[0]["figures"], ok[-1]["figures"])
    return judged(result, flatness.FLAT)


def s7_backlog(env: Env) -> None:
    """Scenario 7 on each database: every backlog size, then the flatness comparison."""
    for db in env.dbs:
        if db in env.skipped_dbs:
            env.add(skipped(SCENARIO, None, db, env.skipped_dbs[db]))
            continue
        runs = []
        for backlog in env.plan.s7_backlogs:
            runs.append(tg.unjudged(run_backlog(env, db, backlog)))  # judged together below
            env.add(runs[-1])
        env.add(flatness_result(db, runs))
