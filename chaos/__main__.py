"""`python -m chaos`: one chaos run, checked against the emulator's ledger; the JSON report on
stdout and in chaos/results/<UTC stamp>.json (and latest.json).

    python -m chaos [--rows 3000] [--duration-limit 600] [--quick] [--seed 7]
                    [--out chaos/results] [--keep-logs] [--at REV]
                    [--latency-ms MEAN[:JITTER]]

Exit code 0 when every check passed, 1 when one failed (or the run did not finish), 2 when
the run cannot be made here (one line on stderr), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.emu import http_429s
from bench.figures import downsample
from bench.procs import REPO, command_output, measure_rev
from chaos import checks, report
from chaos.ending import raise_interrupt, save_report, utc_stamp, verdict
from chaos.pg import PgUnavailable, preflight
from chaos.plan import FAULTS, FULL, QUICK, Plan
from chaos.run import Outcome, run
from emulator.config import parse_latency_ms


def _latency(text: str) -> str:
    """`MEAN[:JITTER]` in ms, checked as the emulator checks it."""
    try:
        parse_latency_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m chaos", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, help="manifest rows (default 3000; --quick: 600)")
    p.add_argument("--duration-limit", type=float, default=600.0,
                   help="seconds the whole run may take (default 600)")
    p.add_argument("--quick", action="store_true",
                   help="about 600 rows at C = 20: the same faults and kills, a few minutes")
    p.add_argument("--seed", type=int, default=7, help="seed of the emulator and the kills")
    p.add_argument("--out", type=Path, default=REPO / "chaos" / "results")
    p.add_argument("--keep-logs", action="store_true", help="keep the logs of a passing run")
    p.add_argument("--at", metavar="REV", help="run commit REV (a `git archive` of it) instead "
                   "of the working tree, which others may be editing")
    p.add_argument("--latency-ms", type=_latency, metavar="MEAN[:JITTER]",
                   help="network delay of every request to the emulator, in ms, e.g. 100:50 "
                   "(default: none)")
    args = p.parse_args(argv)
    if (args.rows is not None and args.rows < 1) or args.duration_limit < 60:
        p.error("--rows must be positive and --duration-limit at least 60")
    return args


def _meta(args: argparse.Namespace, plan: Plan, started: str) -> dict[str, Any]:
    return {
        "started_at": started, "quick": args.quick, "seed": args.seed,
        "git_commit": command_output(["git", "rev-parse", "HEAD"]),
        "measured": {"what": "git archive", "rev": args.at, "commit": args.at_commit}
        if args.at else {"what": "working tree", "path": str(REPO)},
        "git_dirty": command_output(["git", "status", "--porcelain", "--", "workers",
                                     "scheduler", "emulator", "chaos"]).splitlines(),
        "python": sys.version.split()[0],
        "redis_server": command_output(["redis-server", "--version"]),
        "postgres": command_output(["postgres", "--version"]), "nproc": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(), "plan": plan.to_json(), "faults": FAULTS,
        "emulator_args": plan.emulator_args(args.seed),
    }


def _utilization(stats: dict[str, Any], plan: Plan, work_s: float | None) -> float | None:
    """Task-seconds in flight at the emulator over the run / (limit x time to finish)."""
    integral = stats.get("in_flight_integral_s")
    if not work_s or integral is None:
        return None
    return round(float(integral) / (plan.concurrency * work_s), 3)


def _figures(out: Outcome, plan: Plan, elapsed: float) -> dict[str, Any]:
    figs: dict[str, Any] = {"elapsed_s": round(elapsed, 1), **out.times,
                            "rows": plan.rows, "rows_by_state": out.final_counts,
                            "drain": out.drained}
    ev = out.evidence
    if ev is None:
        return figs
    stats = ev.stats
    figs.update({
        "results_by_status": checks.counts(ev.results, "status"),
        "emulator_tasks": len(ev.ledger),
        "emulator_tasks_by_status": stats.get("tasks_by_status"),
        "emulator_peak_in_flight": stats.get("peak_in_flight"),
        "emulator_utilization": _utilization(stats, plan, out.times.get("work_s")),
        "http_429": http_429s(stats),
        "http_429_by_cause": {"spurious_fault": int(stats.get("faults", {}).get("429", 0)),
                              "refused_over_limit": int(stats.get("creates_refused", 0)),
                              "request_rate": int(stats.get("rate_limited", 0))},
        "faults_injected": {k: v for k, v in stats.get("faults", {}).items() if v},
        "requests": stats.get("requests"),
        "db_attempts_by_state": checks.counts(ev.attempts, "state"),
    })
    return figs


def build_report(args: argparse.Namespace, plan: Plan, out: Outcome, started: str,
                 elapsed: float) -> dict[str, Any]:
    """The JSON report: verdict, checks, figures, disruptions with their recovery."""
    for event in out.events:
        if not event.get("skipped") and event["kind"] != "unexpected_exit":
            event["recovery"] = report.recovery(event, out.timeline)
    doc: dict[str, Any] = {"pass": False, "status": out.status, "error": out.error,
                           "checks": [], "figures": _figures(out, plan, elapsed)}
    if out.evidence is not None:
        found, att = checks.run_checks(out.evidence)
        doc["checks"] = found
        doc["figures"]["creates_per_row"] = checks.creates_per_row(out.evidence, att)
    doc["checks"].append(report.disruptions_check(out.events))
    doc["pass"] = out.status == "ok" and all(c["pass"] for c in doc["checks"]) \
        and out.evidence is not None
    doc["disruptions"] = report.disruption_summary(out.events)
    doc["events"] = out.events
    doc["stalls_restarted"] = [e for e in out.events if e["kind"] == "workers_restarted"]
    doc["unexpected_exits"] = [e for e in out.events if e["kind"] == "unexpected_exit"]
    doc["meta"] = _meta(args, plan, started)
    doc["timeline"] = downsample(out.timeline, 300)
    return doc


def main(argv: list[str] | None = None) -> int:
    """One chaos run; the exit code (see the module docstring)."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    plan = QUICK if args.quick else FULL
    plan = replace(plan, rows=args.rows or plan.rows, duration_limit_s=args.duration_limit,
                   latency_ms=args.latency_ms)
    if shutil.which("redis-server") is None:
        print("chaos: redis-server is not installed (make install-redis)", file=sys.stderr)
        return 2
    try:
        preflight()
    except PgUnavailable as exc:
        print(f"chaos: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_interrupt)
    began = time.monotonic()
    started = utc_stamp()
    workdir = Path(tempfile.mkdtemp(prefix="piapi-chaos-"))
    args.at_commit = measure_rev(args.at, workdir, "chaos") if args.at else None
    network = f", latency {plan.latency_ms} ms" if plan.latency_ms else ""
    print(f"[chaos] {plan.rows} rows, C={plan.concurrency}, limit {plan.duration_limit_s:.0f} s"
          f"{network}, work dir {workdir}", file=sys.stderr, flush=True)
    try:
        out, _ = run(plan, args.seed, workdir, began + plan.duration_limit_s)
    except KeyboardInterrupt:
        print(f"chaos: interrupted (logs in {workdir})", file=sys.stderr)
        return 130
    doc = build_report(args, plan, out, started, time.monotonic() - began)
    path = save_report(doc, args.out, started, workdir, args.keep_logs)
    print(json.dumps({k: v for k, v in doc.items() if k != "timeline"}, indent=1))
    failed = [c["check"] for c in doc["checks"] if not c["pass"]]
    print(verdict("chaos", doc, [f"failed: {', '.join(failed)}" if failed else None,
                                 out.error], path), file=sys.stderr, flush=True)
    return 0 if doc["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
