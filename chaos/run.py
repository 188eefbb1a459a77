"""One chaos run: services up, the batch in, the fleet disrupted until every row is terminal,
then the results exported and the evidence read.

The harness is the supervisor. Every ~0.5 s it reads the jobs table (progress), who holds
the dispatcher lock and the Redis epoch (the timeline), and then:
- every ~20 s SIGKILLs a random worker and starts a replacement;
- once, each when enough rows are finished and the previous one is far enough behind:
  SIGKILLs the active dispatcher (and starts a new standby, so two remain), restarts Redis
  empty, restarts PostgreSQL;
- replaces any process that exits on its own (reported as unexpected);
- restarts the workers when the stall watch says work is due but nothing progresses.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.emu import Emu
from bench.manifests import captions_jsonl
from bench.procs import BenchError, Proc, Stack, start_emulator, start_redis
from bench.services import ingest, our_env, wait_workers_ready
from chaos.ending import Outcome as RunOutcome
from chaos.ending import Record, drain, read_evidence
from chaos.fleet import Fleet
from chaos.pg import PrivatePostgres
from chaos.plan import Plan
from chaos.watch import Db, Progress, progress_watch
from scheduler.services import cli_argv

API_KEY = "chaos-key-not-a-secret-0123456789"
TICK_S = 0.5
STALL_CHECK_S = 2.0
FINISH_RESERVE_S = 45.0
"""Kept back from the deadline for the export, the ledger and stopping everything."""


@dataclass
class Outcome(RunOutcome):
    """What the run did and saw, for the report: also the timeline (recovery times) and how
    the emulator drained."""

    timeline: list[dict[str, Any]] = field(default_factory=list)
    drained: dict[str, Any] = field(default_factory=dict)


class ChaosRun:
    """Set up, drive and wind down one run (see the module docstring)."""

    def __init__(self, plan: Plan, seed: int, workdir: Path, deadline: float) -> None:
        self.plan, self.seed, self.workdir, self.deadline = plan, seed, workdir, deadline
        self.logs = workdir / "logs"
        self.rng = random.Random(seed)
        self.stack = Stack()
        self.out = Outcome()
        self.started = time.monotonic()
        self.t0 = self.started
        self.pg: PrivatePostgres | None = None
        self.fleet: Fleet | None = None
        self.db: Db | None = None
        self.emu: Emu | None = None

    def now(self) -> float:
        """Seconds since the fleet started (t0)."""
        return time.monotonic() - self.t0

    # --- set-up -------------------------------------------------------------------------
    def setup(self) -> None:
        """Private PostgreSQL and Redis, the faulty emulator, the batch, then the fleet."""
        plan = self.plan
        self.pg = PrivatePostgres(self.stack, self.logs)
        self.pg.init()
        redis_url, redis_proc = start_redis(self.stack, self.logs)
        emu_url, _ = start_emulator(self.stack, self.logs, API_KEY,
                                    plan.emulator_args(self.seed))
        self.emu = Emu(emu_url)
        env = our_env(api_key=API_KEY, base_url=emu_url, database_url=self.pg.url,
                      redis_url=redis_url, run_dir=self.logs / "run", extra=plan.fleet_env)
        self.manifest = captions_jsonl(self.workdir / "chaos.jsonl", plan.rows, prefix="chaos")
        began = time.monotonic()
        ingest(self.stack, env, self.manifest, self.logs, timeout_s=300)
        self.out.times["ingest_s"] = round(time.monotonic() - began, 3)
        self.db = Db(self.pg.url)
        batches = self.db.batch_ids()
        if len(batches) != 1:
            raise BenchError(f"expected one batch after submit, found {batches}")
        self.batch_id = batches[0]
        self.fleet = Fleet(self.stack, env, self.logs, redis_url, redis_proc, plan.concurrency,
                           plan.worker_threads)
        workers = [self.fleet.start_worker() for _ in range(plan.workers)]
        wait_workers_ready(redis_url, workers)
        self.t0 = time.monotonic()
        self.out.times["setup_s"] = round(self.t0 - self.started, 3)
        for _ in range(plan.dispatchers):
            self.fleet.start_dispatcher()
        self.fleet.wait_leader(60)
        self.watch = progress_watch(self.pg.url, plan.stall_s)

    # --- the disrupted run --------------------------------------------------------------
    def drive(self) -> None:
        """Until every row is terminal (or the deadline): sample, disrupt, supervise."""
        assert self.fleet is not None and self.db is not None
        plan = self.plan
        pending = list(plan.one_offs)
        next_kill = self.rng.uniform(*plan.worker_kill_every_s)
        last_oneoff, next_stall_check = -1e9, STALL_CHECK_S
        stop_at = self.deadline - FINISH_RESERVE_S
        while True:
            progress = self._sample()
            t = self.now()
            if self.out.over(progress, t, settled=True, stop_at=stop_at, digits=3,
                             late="rows still active after {t:.0f} s (duration limit)"):
                break
            for event in self.fleet.replace_exited():
                self._record(event)
            share = progress.finished / progress.total if progress and progress.total else 0.0
            if pending and share >= pending[0].at and t - last_oneoff >= plan.disruption_gap_s \
                    and self._disrupt(pending[0].kind):
                pending.pop(0)
                last_oneoff = self.now()
            if t >= next_kill:
                self._record(self.fleet.kill_random_worker(self.rng))
                next_kill = self.now() + self.rng.uniform(*plan.worker_kill_every_s)
            if t >= next_stall_check:
                next_stall_check = t + STALL_CHECK_S
                if self.watch.check():
                    self._record(self.fleet.restart_workers(
                        f"no progress for {plan.stall_s:g} s while work was due"))
            time.sleep(max(0.0, TICK_S - (self.now() - t)))
        for kind in (p.kind for p in pending):
            self._record({"kind": kind, "skipped": "the run ended first"})

    def _sample(self) -> Progress | None:
        assert self.fleet is not None and self.db is not None
        progress = self.db.progress(self.batch_id)
        pid = self.fleet.lock_holder()[1]
        self.out.timeline.append({
            "t": round(self.now(), 2), "db_up": progress is not None,
            "finished": progress.finished if progress else None,
            "signature": list(progress.signature) if progress else None,
            "leader_pid": pid, "epoch": self.fleet.epoch(),
        })
        return progress

    def _disrupt(self, kind: str) -> bool:
        """Do one one-off disruption; False when it cannot be done right now."""
        assert self.fleet is not None and self.pg is not None
        if kind == "dispatcher_sigkill":
            pid = self.fleet.lock_holder()[1]
            if pid not in {p.pid for p in self.fleet.dispatchers if p.alive()}:
                return False  # nobody of ours leads this instant (a takeover under way)
            self._record(self.fleet.kill_active_dispatcher())
        elif kind == "redis_restart_flushed":
            t, epoch = self.now(), self.fleet.epoch()
            self._record(self.fleet.restart_redis(), t=t, epoch_before=epoch)
        elif kind == "postgres_restart":
            t = self.now()
            down = self.pg.restart("fast")
            self._record({"kind": kind, "mode": "pg_ctl stop -m fast, then start",
                          "down_s": round(down, 3)}, t=t)
        return True

    def _record(self, event: dict[str, Any], t: float | None = None, **extra: Any) -> None:
        event = {"t": round(self.now() if t is None else t, 2), **event, **extra}
        self.out.events.append(event)
        print(f"[chaos] t={event['t']:7.1f}s {json.dumps(event)[:200]}", flush=True,
              file=sys.stderr)

    # --- the end ------------------------------------------------------------------------
    def finish(self) -> None:
        """Stop the fleet, let the emulator drain, export the results, read the evidence."""
        assert self.fleet is not None and self.db is not None and self.emu is not None
        self.fleet.stop()
        self.out.drained = drain(self.emu, min(self.plan.drain_s, max(
            0.0, self.deadline - 30.0 - time.monotonic())))
        results = self.workdir / "results.jsonl"
        export = self.stack.add(Proc("export", "export", cli_argv(
            "export", self.batch_id, "-o", str(results)), self.fleet.env,
            self.logs / "export.log"))
        self.out.evidence = read_evidence(export, results, Record(
            self.db, self.batch_id, self.manifest, self.emu, self.plan.concurrency))

    def close(self) -> None:
        """Stop everything we started, the private PostgreSQL last-but-one, by PID."""
        try:
            if self.fleet is not None:
                self.fleet.stop()
            if self.db is not None:
                self.db.close()
            if self.emu is not None:
                self.emu.close()
            if self.pg is not None:
                self.pg.close()
        finally:
            self.stack.close()


def run(plan: Plan, seed: int, workdir: Path, deadline: float) -> tuple[Outcome, ChaosRun]:
    """One complete run; never raises for a failed run (the outcome says what happened)."""
    chaos = ChaosRun(plan, seed, workdir, deadline)
    try:
        chaos.setup()
        chaos.drive()
        chaos.finish()
    except Exception as exc:  # any failure of the run goes in its report
        chaos.out.status, chaos.out.error = "error", f"{type(exc).__name__}: {exc}"
    finally:
        chaos.close()
    return chaos.out, chaos
