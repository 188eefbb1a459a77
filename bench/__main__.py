"""`python -m bench`: run the scenarios, write bench/results/<UTC stamp>.json and latest.json,
print a short table.

    python -m bench [--scenarios 1,2,3,4,5,6,7,8,9,10] [--db sqlite,postgresql] [--quick]
                    [--out bench/results] [--workers 2] [--worker-threads 16] [--keep-logs]
                    [--at REV]

Exit code 0 when every run completed (whatever the targets say; --strict: also every target
passed), 1 when a run failed or timed out, 2 for bad arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import report
from bench.backlog import s7_backlog
from bench.headroom import s3_headroom
from bench.latency import latency_scenario
from bench.procs import REPO, command_exists, command_output, measure_rev, pg_reachable, source
from bench.profile import with_profiled_run
from bench.ratelimit import s6_rate_limit
from bench.runs import Ctx
from bench.scenarios import (
    FULL,
    QUICK,
    Env,
    attach_baseline_ratios,
    s1_captions,
    s2_video,
    s4_ingest,
    s5_baseline,
)
from bench.services import our_env
from bench.short import s10_short

ALL_SCENARIOS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
DBS = ("sqlite", "postgresql")
API_KEY = "bench-key-not-a-secret-0123456789"


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="1,2,3,4,5,6,7,8,9,10", help="comma-separated, e.g. 1,5")
    p.add_argument("--db", default="sqlite,postgresql", help="sqlite,postgresql")
    p.add_argument("--quick", action="store_true", help="small sizes: a few minutes in all")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--workers", type=int, default=2, help="worker processes per run")
    p.add_argument("--worker-threads", type=int, default=16, help="threads per worker")
    p.add_argument("--seed", type=int, default=7, help="the emulator's seed")
    p.add_argument("--keep-logs", action="store_true", help="keep every run's logs")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, help="one more run "
                   "after 1, py-spy'd, not judged (default: on, off with --quick)")
    p.add_argument("--at", metavar="REV", help="measure this commit (a `git archive` of it) "
                   "instead of the working tree, which others may be editing")
    args = p.parse_args(argv)
    try:
        args.scenario_set = {int(s) for s in args.scenarios.split(",") if s.strip()}
    except ValueError:
        p.error("--scenarios takes numbers, e.g. 1,2,5")
    args.dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    if not args.scenario_set <= set(ALL_SCENARIOS) or not set(args.dbs) <= set(DBS):
        p.error(f"scenarios are {ALL_SCENARIOS}, databases {DBS}")
    return args


def _tree_hash(root: Path) -> str:
    """sha256 over the measured code as it is on disk (others may be editing it meanwhile)."""
    digest = hashlib.sha256()
    for top in ("workers", "scheduler", "emulator"):
        for path in sorted((root / top).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _measured(args: argparse.Namespace) -> dict[str, Any]:
    root = source()
    if args.at:
        return {"what": "git archive", "rev": args.at, "commit": args.at_commit,
                "tree_sha256": _tree_hash(root)}
    return {"what": "working tree", "path": str(root),
            "git_dirty": command_output(["git", "status", "--porcelain", "--", "workers",
                                         "scheduler", "emulator"]).splitlines(),
            "tree_sha256": _tree_hash(root)}


def _pg_version() -> str | None:
    import psycopg

    from bench.procs import PG_ADMIN_URL

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else None
    except psycopg.Error:
        return None


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _meta(args: argparse.Namespace, started: str) -> dict[str, Any]:
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                   .splitlines() if line.startswith("MemTotal:")), 0)
    plan = QUICK if args.quick else FULL
    return {
        "schema": 1, "started_at": started, "quick": args.quick,
        "scenarios": sorted(args.scenario_set), "dbs": args.dbs,
        "version": {
            "git_commit": command_output(["git", "rev-parse", "HEAD"]),
            "measured": _measured(args),
            "python": sys.version.split()[0],
            "redis_server": command_output(["redis-server", "--version"]),
            "postgresql": _pg_version(),
        },
        "machine": {"nproc": os.cpu_count(), "cpu_model": _cpu_model(),
                    "mem_total_mb": mem_kb // 1024, "loadavg_before": os.getloadavg(),
                    "platform": platform.platform()},
        "settings": {"workers": args.workers, "worker_threads": args.worker_threads,
                     "seed": args.seed, "plan": asdict(plan)},
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, int]:
    checks = [c for r in runs for c in r.get("checks", [])]
    return {
        "runs": len(runs),
        "runs_not_ok": sum(1 for r in runs if r["status"] not in ("ok", "skipped")),
        "runs_skipped": sum(1 for r in runs if r["status"] == "skipped"),
        "checks_passed": sum(1 for c in checks if c["pass"] is True),
        "checks_failed": sum(1 for c in checks if c["pass"] is False),
        "checks_unjudged": sum(1 for c in checks if c["pass"] is None),
    }


def _plan_steps(env: Env, chosen: set[int]) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    if 1 in chosen:
        steps.append(("1", lambda: s1_captions(env)))
    if 5 in chosen and (1 in chosen or 2 not in chosen):
        steps.append(("5 (on 1)", lambda: s5_baseline(env, {1})))
    if 2 in chosen:
        steps.append(("2", lambda: s2_video(env)))
    if 5 in chosen and (2 in chosen or 1 not in chosen):
        steps.append(("5 (on 2)", lambda: s5_baseline(env, {2})))
    later: dict[int, Any] = {
        3: lambda: s3_headroom(env), 4: lambda: s4_ingest(env), 6: lambda: s6_rate_limit(env),
        7: lambda: s7_backlog(env), 8: lambda: latency_scenario(env, 8),
        9: lambda: latency_scenario(env, 9), 10: lambda: s10_short(env),
    }
    steps += [(str(n), run) for n, run in later.items() if n in chosen]
    return steps


def _env(args: argparse.Namespace, workdir: Path) -> Env:
    ctx = Ctx(workdir=workdir, seed=args.seed, api_key=API_KEY, workers=args.workers,
              worker_threads=args.worker_threads, keep_logs=args.keep_logs)
    skipped: dict[str, str] = {}
    if "postgresql" in args.dbs:
        problem = pg_reachable()
        if problem:
            skipped["postgresql"] = f"PostgreSQL unreachable ({problem})"
    webhooks = False
    if args.scenario_set & {2, 8}:  # the scenarios with webhook variants
        env = our_env(api_key=API_KEY, base_url="http://127.0.0.1:9", database_url="sqlite://",
                      redis_url=None, run_dir=workdir, extra={})
        webhooks = command_exists(env, "webhook")
    return Env(ctx, QUICK if args.quick else FULL, args.dbs, webhooks, skipped)


def _raise_interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios; the exit code (see the module docstring)."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if shutil.which("redis-server") is None:
        print("bench: redis-server is not installed (make install-redis)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started_mono = time.monotonic()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stamp = started.replace("-", "").replace(":", "")
    workdir = Path(tempfile.mkdtemp(prefix="piapi-bench-"))
    if args.at:
        args.at_commit = measure_rev(args.at, workdir, "bench")
    doc: dict[str, Any] = {"meta": _meta(args, started), "runs": []}
    env = _env(args, workdir)
    doc["runs"] = env.results
    doc["meta"]["webhook_receiver_available"] = env.webhooks_available

    def save() -> None:
        last = doc["runs"][-1]
        print(f"[bench]   {report.one_line(last)}", file=sys.stderr, flush=True)
        attach_baseline_ratios(doc["runs"])
        doc["meta"]["duration_s"] = round(time.monotonic() - started_mono, 1)
        doc["summary"] = _summary(doc["runs"])
        report.write(doc, args.out, stamp)

    env.on_result = save
    code = 0
    try:
        for label, step in with_profiled_run(_plan_steps(env, args.scenario_set), env, args.out,
                                             args.profile, args.quick):
            print(f"[bench] scenario {label} ...", file=sys.stderr, flush=True)
            step()
    except KeyboardInterrupt:
        doc["meta"]["interrupted"] = True
        code = 130
    attach_baseline_ratios(doc["runs"])
    doc["meta"]["duration_s"] = round(time.monotonic() - started_mono, 1)
    doc["summary"] = _summary(doc["runs"])
    paths = report.write(doc, args.out, stamp)
    print(report.table(doc))
    print(f"\nresults: {paths[0]} (and {paths[1].name})")
    _cleanup(workdir, doc["runs"])
    if code:
        return code
    if doc["summary"]["runs_not_ok"]:
        return 1
    return 1 if args.strict and doc["summary"]["checks_failed"] else 0


def _cleanup(workdir: Path, runs: list[dict[str, Any]]) -> None:
    kept = [r["logs"] for r in runs if r.get("logs")]
    kept += [s["logs"] for r in runs for s in r.get("figures", {}).get("steps", []) if "logs" in s]
    for path in workdir.glob("*.jsonl"):
        path.unlink(missing_ok=True)
    for path in workdir.glob("*.csv"):
        path.unlink(missing_ok=True)
    for path in workdir.glob("src-*"):
        shutil.rmtree(path, ignore_errors=True)
    if kept:
        print(f"logs kept under {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
