"""A measured ingest: `piapi-bulk submit` of a big manifest into a fresh, empty database."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bench.dbwatch import DbWatch
from bench.metrics import Sampler, summarise
from bench.procs import Stack, database
from bench.runs import Ctx, RunSpec, fail, keep_or_drop_logs, new_result
from bench.services import ingest, our_env


def run_ingest(scenario: str, db: str, manifest: Path, rows: int, args: tuple[str, ...],
               ctx: Ctx, timeout_s: float) -> dict[str, Any]:
    """`piapi-bulk submit` of a big manifest into a fresh database: seconds and peak RSS."""
    spec = RunSpec(scenario, None, db, manifest, rows, 0, [], timeout_s)
    result = new_result(spec, "ingest")
    logs = Path(tempfile.mkdtemp(prefix=f"{scenario}-{db}-", dir=ctx.workdir))
    stack, sampler = Stack(), Sampler()
    try:
        with database(db, logs) as url:
            try:
                if db == "postgresql":
                    sampler.pg_database = make_url(url).database
                sampler.start()
                env = our_env(api_key=ctx.api_key, base_url="http://127.0.0.1:9",
                              database_url=url, redis_url=None, run_dir=logs / "run", extra={})
                done = ingest(stack, env, manifest, logs, timeout_s, args, watch=sampler.watch)
                sampler.stop()
                watch = DbWatch(url)
                in_db = watch.total_jobs()
                watch.close()
            finally:
                sampler.stop()
                stack.close()
        resources = summarise(sampler.final_records(stack.procs))
        result["figures"] = {
            "rows": rows, "rows_in_db": in_db, "ingest_s": round(done.seconds, 3),
            "rows_per_s": round(rows / done.seconds, 1),
            "cpu_s": round(done.cpu_s, 3),
            "peak_rss_mb": max(round(done.maxrss_mb, 1), resources["peak_rss_mb_max"]),
            "postgres_backend_cpu_s": resources["by_role"].get("postgres", {}).get("cpu_s"),
        }
        if in_db != rows:
            result["status"], result["error"] = "error", f"{in_db} rows in the DB, not {rows}"
    except Exception as exc:
        fail(result, exc)
    keep_or_drop_logs(result, logs, ctx)
    return result
