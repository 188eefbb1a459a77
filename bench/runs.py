"""One measured piapi-bulk run on fresh services, and what every kind of run shares.

A system run: fresh emulator, Redis and database; `piapi-bulk submit` (ingest, not in the
makespan); emulator counters reset; workers started and pinged; then the dispatcher, whose
start is t0. The run ends when the database shows every row terminal (checked every 0.2 s),
when `run_for_s` is up (rate-limit runs), or at the deadline (status "timeout", partial
figures kept). Then everything is stopped and the figures are computed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bench import figures as fig
from bench.dbwatch import DbWatch, active, finished
from bench.emu import Emu, summarise_ledger
from bench.metrics import Interference, Sampler, redis_memory, self_cpu_s, summarise
from bench.procs import (
    REPO,
    BenchError,
    Proc,
    Stack,
    database,
    start_emulator,
    start_redis,
)
from bench.profile import Profiler, profile_header, profiler_for, stamp_now
from bench.services import (
    ingest,
    our_env,
    start_dispatcher,
    start_webhook_receiver,
    start_workers,
    wait_workers_ready,
    webhook_url,
)
from scheduler.services import free_port

WATCH_INTERVAL_S = 0.2
WEBHOOK_SECRET = "bench-webhook-secret-not-a-secret"
"""The receiver refuses to start without PIAPI_BULK_WEBHOOK_SECRET (16 characters or more)."""
INGEST_TIMEOUT_S = 900.0


@dataclass
class Ctx:
    """Harness-wide settings shared by every run."""

    workdir: Path
    seed: int
    api_key: str
    workers: int
    worker_threads: int
    keep_logs: bool
    out: Path | None = None
    """Where files beside the results go (profiles): `--out`; None = bench/results."""


@dataclass
class RunSpec:
    """What one run does."""

    scenario: str
    variant: str | None
    db: str | None
    manifest: Path
    rows: int
    concurrency: int
    emulator_args: list[str]
    deadline_s: float
    env: dict[str, str] = field(default_factory=dict)
    submit_args: tuple[str, ...] = ()
    webhooks: bool = False
    run_for_s: float | None = None
    stats_every_s: float = 1.0
    poll_s: float = 2.0
    """Baseline only: its fixed polling interval."""
    profile: bool = False
    """py-spy a worker and the dispatcher mid-run (`bench.profile`); the summary goes in
    `result["profile"]`, the files in `Ctx.out`. For a run whose figures are not judged."""


def emulator_args(seed: int, concurrency: int, time_scale: float, durations: dict[str, str],
                  *extra: str) -> list[str]:
    """Emulator options: seed, account concurrency, time scale and per-family durations."""
    args = ["--seed", str(seed), "--concurrency", str(concurrency),
            "--time-scale", repr(time_scale)]
    for family, span in durations.items():
        args += ["--duration", f"{family}={span}"]
    return [*args, *extra]


def new_result(spec: RunSpec, kind: str) -> dict[str, Any]:
    """The JSON skeleton of a run."""
    return {"scenario": spec.scenario, "variant": spec.variant, "db": spec.db, "kind": kind,
            "status": "ok", "error": None, "note": None,
            "loadavg_before": [round(x, 2) for x in os.getloadavg()],
            "params": {"rows": spec.rows, "concurrency": spec.concurrency,
                       "emulator_args": spec.emulator_args, "env": spec.env,
                       "webhooks": spec.webhooks, "run_for_s": spec.run_for_s,
                       "deadline_s": spec.deadline_s, "profile": spec.profile},
            "figures": {}, "timeline": []}


def fail(result: dict[str, Any], exc: BaseException, status: str = "error") -> None:
    """Mark a run failed by `exc`."""
    result["status"] = status
    result["error"] = f"{type(exc).__name__}: {exc}"


def keep_or_drop_logs(result: dict[str, Any], logs: Path, ctx: Ctx) -> None:
    """Keep a run's logs when it failed or when asked to; say where in the result."""
    if ctx.keep_logs or result["status"] != "ok":
        result["logs"] = str(logs)
    else:
        shutil.rmtree(logs, ignore_errors=True)


class SystemRun:
    """The state of one piapi-bulk run while it goes (see the module docstring)."""

    def __init__(self, spec: RunSpec, ctx: Ctx, logs: Path, db_url: str) -> None:
        self.spec, self.ctx, self.logs, self.db_url = spec, ctx, logs, db_url
        self.stack = Stack()
        self.sampler = Sampler()
        self.timeline: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.status = "ok"
        self.error: str | None = None
        self.note: str | None = None
        self.workers: list[Proc] = []
        self.extra: dict[str, Any] = {}
        self.profiler: Profiler | None = None

    def setup(self) -> None:
        """Redis, the emulator, the ingest, the counters reset, the sampler on."""
        spec = self.spec
        self.redis_url, self.redis = start_redis(self.stack, self.logs)
        url, self.emu_proc = start_emulator(self.stack, self.logs, self.ctx.api_key,
                                            spec.emulator_args)
        self.emu = Emu(url)
        env_extra = dict(spec.env)
        if spec.webhooks:
            self.hook_port = free_port()
            env_extra["PIAPI_BULK_WEBHOOK_URL"] = webhook_url(self.hook_port)
            env_extra["PIAPI_BULK_WEBHOOK_SECRET"] = WEBHOOK_SECRET
        self.env = our_env(api_key=self.ctx.api_key, base_url=url, database_url=self.db_url,
                           redis_url=self.redis_url, run_dir=self.logs / "run", extra=env_extra)
        self.ingest = ingest(self.stack, self.env, spec.manifest, self.logs, INGEST_TIMEOUT_S,
                             spec.submit_args)
        self.watch = DbWatch(self.db_url)
        batches = self.watch.batch_ids()
        if len(batches) != 1:
            raise BenchError(f"expected one batch after submit, found {batches}")
        self.batch_id = batches[0]
        self.emu.reset()
        if spec.db == "postgresql":
            self.sampler.pg_database = make_url(self.db_url).database
        self.sampler.watch(self.redis)
        self.sampler.watch(self.emu_proc)
        self.sampler.start()

    def start_fleet(self) -> None:
        """Workers (pinged until ready), the webhook receiver if any, then the dispatcher."""
        self.workers = start_workers(self.stack, self.env, self.logs, self.ctx.workers,
                                     self.ctx.worker_threads)
        for proc in self.workers:
            self.sampler.watch(proc)
        self.hook: Proc | None = None
        if self.spec.webhooks:
            self.hook = start_webhook_receiver(self.stack, self.env, self.logs, self.hook_port)
            self.sampler.watch(self.hook)
        self.extra["workers_ready_s"] = round(
            wait_workers_ready(self.redis_url, self.workers), 3)
        self.cpu0 = self_cpu_s()
        self.interference = Interference(self.sampler)
        self.t0 = time.monotonic()
        self.dispatcher = start_dispatcher(self.stack, self.env, self.logs,
                                           self.spec.concurrency)
        self.sampler.watch(self.dispatcher)
        if self.spec.profile:
            self.profile_started, stamp = stamp_now()
            self.profiler = profiler_for(
                self.spec, self.ctx.out or REPO / "bench" / "results", stamp, self.logs,
                self.stack, self.sampler,
                [("worker", self.workers[0].pid), ("dispatcher", self.dispatcher.pid)])

    def _gave_up(self, now: float, late: str) -> bool:
        """Whether to stop watching a run that will not finish: `now` (s since the fleet
        started) past the spec's deadline (status `timeout`, error `late`), or one of our
        processes exited (status `error`, its exit code and log tail)."""
        if now > self.spec.deadline_s:
            self.status, self.error = "timeout", late
            return True
        for proc in [self.dispatcher, *self.workers, *([self.hook] if self.hook else [])]:
            if not proc.alive():
                self.status = "error"
                self.error = f"{proc.name} exited {proc.returncode}:\n{proc.log_tail(5)}"
                return True
        return False

    def wait(self) -> None:
        """Watch the database until every row is terminal, time is up, or a process died."""
        spec, next_stats = self.spec, 0.0
        while True:
            now = time.monotonic() - self.t0
            self.counts = self.watch.counts(self.batch_id)
            if self.profiler is not None:
                self.profiler.poll(now, finished(self.counts))
            if active(self.counts) == 0:
                break
            if spec.run_for_s is not None and now >= spec.run_for_s:
                self.note = f"stopped after {spec.run_for_s:g} s by design"
                break
            if self._gave_up(now, f"not done after {spec.deadline_s:.0f} s"):
                break
            if now >= next_stats:
                stats = self.emu.stats()
                self.timeline.append(fig.timeline_point(now, finished(self.counts), stats))
                next_stats += spec.stats_every_s
            time.sleep(WATCH_INTERVAL_S)
        self.makespan_s = time.monotonic() - self.t0
        self.wall_end = time.time()
        self.stats_end = self.emu.stats()
        self.timeline.append(fig.timeline_point(self.makespan_s, finished(self.counts),
                                                self.stats_end))
        if self.profiler is not None:  # before the CPU figures, which sample py-spy's
            self.profiler.stop(self.makespan_s, finished(self.counts))
        self.extra["harness_cpu_s"] = round(self_cpu_s() - self.cpu0, 3)
        self.extra.update(self.interference.figures())

    def teardown(self) -> None:
        """Stop our processes, read Redis memory and the emulator's final counters and ledger."""
        self.sampler.sample()
        for proc in [self.dispatcher, *([self.hook] if self.hook else []), *self.workers]:
            proc.stop()
        self.redis_mem = redis_memory(self.redis_url)
        self.redis.stop()
        self.stats_final = self.emu.stats()
        self.ledger = summarise_ledger(self.emu.ledger())
        self.emu.close()
        self.emu_proc.stop()
        self.sampler.stop()
        try:
            self.extra["failures"] = self.watch.failures(self.batch_id)
        except Exception as exc:  # the schema is the measured code's; it may change
            self.extra["failures"] = [{"kind": "unknown", "message": repr(exc), "rows": None}]
        self.watch.close()

    def figures(self) -> dict[str, Any]:
        """Every figure of this run."""
        figs = fig.load_figures(
            concurrency=self.spec.concurrency, rows=self.spec.rows, makespan_s=self.makespan_s,
            stats_end=self.stats_end, stats_final=self.stats_final, ledger=self.ledger,
            finished_rows=finished(self.counts))
        resources = summarise(self.sampler.final_records(self.stack.procs))
        figs.update(fig.resource_figures(resources, figs["tasks"]))
        figs["redis_peak_mb"] = self.redis_mem["used_memory_peak_mb"]
        figs["rows_by_state"] = self.counts
        if self.ledger.first_created is not None:
            figs["makespan_from_first_create_s"] = round(
                self.wall_end - self.ledger.first_created, 3)
        figs["ingest"] = {"seconds": round(self.ingest.seconds, 3),
                          "cpu_s": round(self.ingest.cpu_s, 3),
                          "peak_rss_mb": round(self.ingest.maxrss_mb, 1)}
        figs.update(self.extra)
        return figs

    def profile(self) -> dict[str, Any] | None:
        """The profile's summary (writing its text file), None when not profiled."""
        if self.profiler is None:
            return None
        return self.profiler.result(profile_header(self.spec, self.profiler,
                                                   self.profile_started))


def run_system(spec: RunSpec, ctx: Ctx) -> dict[str, Any]:
    """One piapi-bulk run; never raises for a failed run (the result says what happened)."""
    result = new_result(spec, "system")
    logs = Path(tempfile.mkdtemp(prefix=f"{spec.scenario}-{spec.db}-", dir=ctx.workdir))
    try:
        assert spec.db is not None
        with database(spec.db, logs) as db_url:
            run = SystemRun(spec, ctx, logs, db_url)
            try:
                run.setup()
                run.start_fleet()
                run.wait()
                run.teardown()
                result["figures"] = run.figures()
                result["status"], result["error"], result["note"] = run.status, run.error, run.note
                result["timeline"] = run.timeline
                if run.profiler is not None:
                    result["profile"] = run.profile()
            finally:
                run.sampler.stop()
                run.stack.close()
    except Exception as exc:
        fail(result, exc)
    keep_or_drop_logs(result, logs, ctx)
    return result
