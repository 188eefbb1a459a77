"""A measured run of the baseline (bench.baseline) on a manifest against a fresh emulator.

The baseline's makespan runs from its process start to the moment its last row was done
(it reports that instant itself), the same span as the dispatcher's start to the last row.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import figures as fig
from bench.emu import Emu, summarise_ledger
from bench.metrics import Interference, Sampler, summarise
from bench.procs import REPO, Proc, Stack, start_emulator
from bench.runs import WATCH_INTERVAL_S, Ctx, RunSpec, fail, keep_or_drop_logs, new_result
from bench.services import our_env


def _baseline_timeline_point(t: float, stats: dict[str, Any]) -> dict[str, Any]:
    by_status = stats.get("tasks_by_status", {})
    ended = sum(n for s, n in by_status.items() if s not in ("pending", "processing"))
    return fig.timeline_point(t, ended, stats)


def _baseline_wait(proc: Proc, emu: Emu, spec: RunSpec, t0: float,
                   timeline: list[dict[str, Any]]) -> str | None:
    next_stats = 0.0
    while proc.alive():
        now = time.monotonic() - t0
        if now > spec.deadline_s:
            return f"not done after {spec.deadline_s:.0f} s"
        if now >= next_stats:
            timeline.append(_baseline_timeline_point(now, emu.stats()))
            next_stats += spec.stats_every_s
        time.sleep(WATCH_INTERVAL_S)
    return None


def run_baseline(spec: RunSpec, ctx: Ctx) -> dict[str, Any]:
    """The asyncio baseline (bench.baseline) on the same manifest against a fresh emulator."""
    result = new_result(spec, "baseline")
    result["params"]["poll_s"] = spec.poll_s
    logs = Path(tempfile.mkdtemp(prefix=f"{spec.scenario}-baseline-", dir=ctx.workdir))
    stack, sampler = Stack(), Sampler()
    timeline: list[dict[str, Any]] = []
    try:
        url, emu_proc = start_emulator(stack, logs, ctx.api_key, spec.emulator_args)
        emu = Emu(url)
        emu.reset()
        sampler.watch(emu_proc)
        sampler.start()
        env = our_env(api_key=ctx.api_key, base_url=url, database_url="", redis_url=None,
                      run_dir=logs, extra={})
        summary_path = logs / "summary.json"
        argv = [sys.executable, "-m", "bench.baseline", str(spec.manifest), "--base-url", url,
                "--concurrency", str(spec.concurrency), "--poll-s", str(spec.poll_s),
                "--out", str(logs / "results.jsonl"), "--summary", str(summary_path)]
        interference = Interference(sampler)
        wall0 = time.time()
        t0 = time.monotonic()
        env["PYTHONPATH"] = str(REPO)  # the baseline is part of the harness, not measured code
        proc = stack.add(Proc("baseline", "baseline", argv, env, logs / "baseline.log", REPO))
        sampler.watch(proc)
        timeout = _baseline_wait(proc, emu, spec, t0, timeline)
        elapsed = time.monotonic() - t0
        machine = interference.figures()
        proc.stop()
        if timeout:
            result["status"], result["error"] = "timeout", timeout
        elif proc.returncode != 0:
            result["status"] = "error"
            result["error"] = f"baseline exited {proc.returncode}:\n{proc.log_tail(5)}"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        makespan = summary["done_at"] - wall0 if "done_at" in summary else elapsed
        stats = emu.stats()
        timeline.append(_baseline_timeline_point(makespan, stats))
        ledger = summarise_ledger(emu.ledger())
        emu.close()
        emu_proc.stop()
        sampler.stop()
        figs = fig.load_figures(concurrency=spec.concurrency, rows=spec.rows,
                                makespan_s=makespan, stats_end=stats, stats_final=stats,
                                ledger=ledger, finished_rows=int(summary.get("finished", 0)))
        figs.update(fig.resource_figures(summarise(sampler.final_records(stack.procs)),
                                         figs["tasks"]))
        figs["baseline_summary"] = summary
        figs.update(machine)
        result["figures"], result["timeline"] = figs, timeline
    except Exception as exc:
        fail(result, exc)
    finally:
        sampler.stop()
        stack.close()
    keep_or_drop_logs(result, logs, ctx)
    return result
