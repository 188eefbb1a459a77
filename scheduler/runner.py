"""`piapi-bulk run`: ingest, make sure a dispatcher and a worker run, watch, export, exit.

Everything `run` starts (a private redis-server when REDIS_URL is unset, a dispatcher and a
worker when none are running) is its child and stops with it. Running the same command
again after any interruption resumes the same batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from rich.console import Console
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from scheduler import notify
from scheduler.atomic_file import write_problem
from scheduler.downloader import Downloader, open_destination, report_downloads, start_pool
from scheduler.estimate.command import EstimateOptions
from scheduler.export import export
from scheduler.ingest import IngestResult, batch_id_for, ingest
from scheduler.interrupt import Interrupted, StopRequest
from scheduler.live import RateMeter, combined, describe, progress_bar, summary_lines
from scheduler.liveness import ProgressWatch
from scheduler.operator import PauseWatch, set_limits
from scheduler.options import option_conflict, unchecked_lines
from scheduler.preflight import preflight, require_manifest
from scheduler.results_name import default_output
from scheduler.services import (
    Services,
    ensure_services,
    standing_dispatcher,
    start_private_redis,
    start_services,
)
from scheduler.sidecars import Sidecars, write_sidecars
from scheduler.status import BatchStatus, batch_status, cancelled_text, tasks_created
from workers.db import (
    create_tables,
    is_transient,
    make_engine,
    make_read_engine,
    retry_transient,
    transaction,
)
from workers.fleet import Fleet
from workers.halt import clear_halt, get_halt
from workers.leases import open_batches
from workers.models import JOBS
from workers.piapi import AccountError, PiAPIError, RetryableError
from workers.retry import backoff_s
from workers.runtime import build_client
from workers.settings import ConfigError, Settings
from workers.states import ACTIVE, JobState
from workers.transitions.reuse import reuse_completed

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ROWS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BUDGET = 3
"""The batch's budget is reached: what was in flight finished, the rest waits."""
REDIS_URL_FILE = "redis_url"
WATCH_INTERVAL_S = 0.5
DB_WAIT_S = 600.0
"""How long `run` waits for a restarting database before giving up."""
LIVENESS_EVERY_S = 5.0
"""How often `run` checks that the fleet makes progress."""
CLAIM_RENEW_S = 5.0
"""How often `run` renews its claim on its batches (they lapse after `fleet.CLAIM_TTL_S`)."""
PLAIN_REPORT_EVERY_S = 5.0
"""Without a terminal (CI, logs), a progress line this often instead of a live bar."""


@dataclass(frozen=True)
class RunOptions(EstimateOptions):
    """The `run` command's options: the estimate's (`run --dry-run` is one), and these."""

    output: Path | None = None
    max_attempts: int | None = None
    run_dir: Path = Path(".piapi-bulk")
    worker_threads: int | None = None
    budget_usd: float | None = None
    """Stored on the batch when given (else the stored one is kept)."""
    deadline_at: float | None = None
    on_stuck: str | None = None
    """Stored on the batch when given (else the stored one, else the fleet's, applies)."""
    all_batches: bool = False
    """`--all`: also run the other open batches in the database (default: only this one)."""
    command: str | None = None
    """This command line as typed, for the retry hint after failed rows."""
    reuse: bool | None = None
    """`--reuse`/`--no-reuse`, stored on the batch when given (a new batch reuses)."""
    captions_as_sidecar: bool = False
    """Write each local image's caption next to it as `<name>.txt` with the results."""
    overwrite_sidecars: bool = False
    """...also over a `.txt` holding other text (else it is left as it is)."""
    notify: str | None = None
    """`--notify URL`: where to POST a summary when the batch ends or pauses (`notify`)."""
    download: str | None = None
    """`--download DIR`: completed rows' output files are kept there (an fsspec URL)."""

    @property
    def sidecars(self) -> Sidecars | None:
        """How captions are written as sidecars; None: they are not."""
        if not self.captions_as_sidecar:
            return None
        return Sidecars.REPLACE if self.overwrite_sidecars else Sidecars.KEEP


def _results_file(opts: RunOptions, run_dir: Path, console: Console) -> Path:
    """The results file (`-o`, else the default, said when it is not the usual name),
    checked before anything is paid for."""
    output, note = (opts.output, None) if opts.output else default_output(opts.manifest,
                                                                         run_dir)
    if problem := write_problem(output):
        raise ConfigError(problem)
    if note:
        console.print(note, highlight=False)
    return output


ACCOUNT_TRIES = 4
"""How many times `run` asks /account/info at its start before it gives up on PiAPI: a
5xx, a 429 or a dropped connection is retried with backoff (about 7 s in all)."""


def check_account(settings: Settings,
                  sleep: Callable[[float], None] = time.sleep) -> int | None:
    """Fail fast (exit 2) if PiAPI refuses the key, or cannot be reached after
    `ACCOUNT_TRIES` (a passing 5xx ends no run); the account's concurrency limit."""
    client = build_client(settings)
    try:
        tries = 0
        while True:
            tries += 1
            try:
                return client.account_info().max_concurrent_tasks
            except RetryableError as exc:
                if tries >= ACCOUNT_TRIES:
                    raise
                logger.info("/account/info: %s; asking again", exc)
                sleep(backoff_s(tries, exc.retry_after_s))
    except AccountError as exc:
        raise ConfigError(f"PiAPI refused the API key ({exc}); check PIAPI_API_KEY") from exc
    except PiAPIError as exc:
        raise ConfigError(f"cannot reach PiAPI at {settings.base_url}: {exc}") from exc
    finally:
        client.close()


def _check_liveness(liveness: ProgressWatch, services: Services, console: Console) -> None:
    try:
        if not liveness.check():
            return
    except DBAPIError as exc:
        if not is_transient(exc):
            raise
        return  # the database is restarting: look again next time
    restarted = services.restart_fleet()
    message = (f"no row moved for {liveness.stall_s:.0f}s although work was due: "
               + (f"restarted {', '.join(restarted)}" if restarted
                  else "the fleet serving this Redis is not ours to restart; check it"))
    logger.warning("%s", message)
    console.print(message, style="yellow", highlight=False, markup=False, soft_wrap=True)


class Claims:
    """The batches this run serves, claimed in Redis for the dispatcher it started (see
    `Fleet.claim`) and renewed while the run watches them."""

    def __init__(self, fleet: Fleet, batch_ids: list[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fleet = fleet
        self.batch_ids = batch_ids
        self.clock = clock
        self._renewed = -math.inf

    def renew(self) -> None:
        """Claim the batches again when a renewal is due (best effort: Redis may be
        restarting, and a lost claim only pauses creates until the next renewal)."""
        if self.clock() - self._renewed < CLAIM_RENEW_S:
            return
        try:
            self.fleet.claim(self.batch_ids)
            if self._renewed == -math.inf:
                self.fleet.wake()  # a dispatcher waiting for work sees the claim at once
            self._renewed = self.clock()
        except redis.RedisError as exc:
            logger.warning("could not claim the run's batches in Redis (%s); retrying", exc)

    def release(self) -> None:
        """Drop the claims (the run ends)."""
        self.fleet.release(self.batch_ids)


def watch(engine: Engine, batch_ids: list[str], services: Services, console: Console,
          liveness: ProgressWatch | None = None, limit: int | None = None,
          chores: Sequence[Callable[[], None]] = ()) -> str | None:
    """Show progress until the batches have no active row (or their budget stopped them
    with nothing left in flight); a reason when they cannot finish.

    `engine` is only read from: give it `workers.db.make_read_engine`'s, which no frozen
    writer can hold up. With `liveness`, the workers and dispatcher this run started are
    restarted when the fleet stops making progress although work is due (for example a
    worker wedged after Redis restarted). `limit` is the concurrency shown beside the tasks
    in flight. `chores` run at the start of every turn, in order: a stop request's check
    (which raises `Interrupted` there, between passes), the claims' renewal, the download
    pool's notices. None may wait for the database: the download pool feeds itself on a
    thread of its own.
    """
    last_plain = 0.0
    last_liveness = time.monotonic()
    budget_stops = {batch_id: PauseWatch(engine, batch_id) for batch_id in batch_ids}

    def statuses() -> list[BatchStatus]:
        found = [batch_status(engine, batch_id) for batch_id in batch_ids]
        return [st for st in found if st is not None]

    st = combined(statuses())
    meter = RateMeter()
    with progress_bar(console, st.total) as progress:
        task = progress.add_task("piapi-bulk", total=st.total, detail="")
        while True:
            for chore in chores:
                chore()
            # The database may be restarting: wait for it rather than end the run.
            each = retry_transient(statuses, wait_s=DB_WAIT_S)
            st = combined(each)
            meter.add(time.monotonic(), st.finished)
            line = describe(st, limit, meter)
            progress.update(task, completed=st.finished, total=st.total, detail=line)
            if not console.is_terminal and time.monotonic() - last_plain >= PLAIN_REPORT_EVERY_S:
                last_plain = time.monotonic()
                console.print(f"{st.finished}/{st.total} finished · {line}", soft_wrap=True,
                              highlight=False)
            if all(one.active == 0 or budget_stops[one.id].stopped(one) for one in each):
                return None
            halt = retry_transient(lambda: get_halt(engine), wait_s=DB_WAIT_S)
            if halt:
                return f"stopped: {halt}"
            problem = services.supervise()
            if problem:
                return problem
            if liveness is not None and time.monotonic() - last_liveness >= LIVENESS_EVERY_S:
                last_liveness = time.monotonic()
                _check_liveness(liveness, services, console)
            time.sleep(WATCH_INTERVAL_S)


def other_open_batches(engine: Engine, batch_id: str) -> dict[str, int]:
    """Other batches in the database with rows still to run: id -> such rows."""
    active = [state.value for state in ACTIVE]
    j = JOBS.c
    with transaction(engine) as conn:
        rows = conn.execute(select(j.batch_id, func.count())
                            .where(j.state.in_(active), j.batch_id != batch_id)
                            .group_by(j.batch_id)).all()
    return {str(b): int(n) for b, n in rows}


def held_back(engine: Engine, batch_ids: Collection[str]) -> dict[str, str]:
    """Which of these batches create nothing now, and why (paused on the budget, cancelled),
    as the dispatcher reads them (`leases.open_batches`)."""
    wanted = set(batch_ids)
    return {b.id: cancelled_text(b.cancel_mode) if b.cancel_mode else f"paused: {b.paused}"
            for b in open_batches(engine) if b.id in wanted and (b.cancel_mode or b.paused)}


def _report_others(console: Console, engine: Engine, others: dict[str, int],
                   all_batches: bool, standing: bool = False) -> None:
    """One line on the database's other open batches: run too (--all, naming those that
    create nothing now, and why), run by the standing fleet on REDIS_URL (its dispatcher
    serves every open batch, oldest first), or left."""
    if not others:
        return
    rows = sum(others.values())
    what = (f"{len(others)} other open batch{'es' if len(others) > 1 else ''} "
            f"({rows} row{'s' if rows > 1 else ''} to run)")
    if all_batches:
        waits = "".join(f"; {bid} creates nothing ({why})"
                        for bid, why in held_back(engine, others).items())
        console.print(f"--all: also running {what}{waits}", highlight=False, markup=False,
                      soft_wrap=True)
    elif standing:
        console.print(f"{what} in this database: the standing fleet on REDIS_URL runs them "
                      "too, oldest batch first", style="yellow", highlight=False, markup=False,
                      soft_wrap=True)
    else:
        console.print(f"{what} in this database left alone: piapi-bulk status lists them; "
                      "run --all runs them too", style="yellow", highlight=False, markup=False,
                      soft_wrap=True)


def _report_failures(console: Console, final: BatchStatus, command: str | None) -> None:
    """Failed rows by error kind, cancelled rows, and the command that tries them again."""
    cancelled = final.counts.get(JobState.CANCELLED.value, 0)
    if not final.failures and not cancelled:
        return
    if final.failures:
        failed = sum(final.failures.values())
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(final.failures.items(),
                                                                key=lambda kv: -kv[1]))
        console.print(f"[red]{failed} row{'s' if failed > 1 else ''} failed[/] ({kinds}); "
                      "each has its reason in the results", highlight=False, soft_wrap=True)
    if cancelled:
        console.print(f"[yellow]{cancelled} row{'s' if cancelled > 1 else ''} cancelled[/] "
                      "(a deadline, or piapi-bulk cancel); each has its reason in the results",
                      highlight=False, soft_wrap=True)
    which = "" if cancelled else " --failed"
    again = f" && {command}" if command else " and run the same command again"
    console.print(f"to try them again: piapi-bulk retry {final.id}{which}{again}",
                  highlight=False, markup=False, soft_wrap=True)


def _report_invalid(console: Console, result: IngestResult) -> None:
    if not result.invalid:
        return
    console.print(f"[yellow]{result.invalid} invalid row(s) will not be sent:[/]", highlight=False)
    for line, key, reason in result.invalid_rows[:20]:
        console.print(f"  line {line} (id {key}): {reason}", highlight=False, markup=False,
                      soft_wrap=True)
    if result.invalid > 20:
        console.print(f"  … and {result.invalid - 20} more (see the results file)")


def run(settings: Settings, opts: RunOptions, console: Console) -> int:
    """The whole `run` command; returns the exit code.

    SIGTERM is taken as Ctrl-C: either way the run stops at its next safe point
    (`StopRequest`), the results file is written (rows still to run are `pending`) and the
    run exits 130.
    """
    started = time.monotonic()
    settings.require_api_key()
    require_manifest(opts.manifest)
    preflight(opts.manifest, opts.model, opts.task_type, opts.strict,  # nothing started yet
              tuple(opts.fields))
    dest = open_destination(opts.download) if opts.download else None
    run_dir = opts.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    output = _results_file(opts, run_dir, console)
    services = Services()
    claims: Claims | None = None
    engine: Engine | None = None
    batch_id: str | None = None
    pool: Downloader | None = None
    stop = StopRequest()
    with stop.installed():
        try:
            private = not settings.redis_url
            settings, fleet_redis = _redis_for_run(settings, opts, services)
            limit = check_account(settings)
            engine = make_engine(settings.database_url)
            create_tables(engine)
            stop.check()
            result = _ingest(settings, opts, engine, console, limit, stop)
            batch_id = result.batch_id
            created_before = 0 if result.created else tasks_created(engine, batch_id)
            others = other_open_batches(engine, result.batch_id)
            standing = bool(others) and not private and standing_dispatcher(
                settings.require_redis_url())
            _report_others(console, engine, others, opts.all_batches, standing)
            served = [result.batch_id, *(sorted(others) if opts.all_batches else [])]
            clear_halt(engine)  # the key was just accepted
            claims = Claims(Fleet(fleet_redis), served)
            claims.renew()
            statuses = [batch_status(engine, b) for b in served]
            stop.check()
            if not private and any(st is not None and st.active for st in statuses):
                ensure_services(settings, services, run_dir / "logs",
                                worker_threads=opts.worker_threads,
                                concurrency=opts.concurrency)
            if dest is not None:
                pool = start_pool(engine, dest, served, settings.download_concurrency,
                                  lambda line: console.print(line, style="yellow", markup=False,
                                                             highlight=False, soft_wrap=True))
            # The watch reads past the fleet's writes: on SQLite a worker frozen inside a
            # write transaction holds the gate and the write lock, and a watch that queued
            # behind it would never see the stall that restarting the worker would clear.
            reader = make_read_engine(settings.database_url)
            problem = watch(reader, served, services, console,
                            ProgressWatch(reader, settings.stall_s, batches=served),
                            opts.concurrency or limit,
                            [stop.check, claims.renew, *([pool.say_notices] if pool else [])])
            reader.dispose()
            kept = pool.finish(stop.check) if pool is not None else None  # results list files
            code = _finish(engine, result.batch_id, output, problem, console, opts.command,
                           started, opts.sidecars, created_before)
            if pool is not None and kept is not None:
                code = report_downloads(kept, pool.dest, result.batch_id, code,
                                        lambda line: console.print(line, highlight=False,
                                                                   markup=False, soft_wrap=True))
            notify.after_run(opts.notify, batch_status(engine, result.batch_id), code,
                             time.monotonic() - started, output)
            return code
        except Interrupted:
            if batch_id is None and engine is not None:  # stopped during the ingest
                stored = batch_status(engine, batch_id_for(opts.manifest, opts.model,
                                                           opts.task_type, opts.fields))
                if stored is not None and not stored.ingested:
                    return _interrupted_reading(console, stored.total, output)
                batch_id = stored.id if stored is not None else None
            return _interrupted(console, engine, batch_id, output, opts.sidecars)
        finally:
            if pool is not None:
                pool.close()
            if claims is not None:
                claims.release()
            services.stop()
            (run_dir / REDIS_URL_FILE).unlink(missing_ok=True)


def _redis_for_run(settings: Settings, opts: RunOptions,
                   services: Services) -> tuple[Settings, redis.Redis]:
    """The settings with the run's Redis, and a client of it: the fleet's (REDIS_URL),
    checked to answer before a batch is made for it; else a private one started now, with
    its worker and dispatcher."""
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url)
        client.ping()
        return settings, client
    url, redis_child = start_private_redis(opts.run_dir)
    services.children.append(redis_child)
    settings = settings.model_copy(update={"redis_url": url})
    # So `piapi-bulk flower` (and `make flower`) find this run's private Redis.
    (opts.run_dir / REDIS_URL_FILE).write_text(url + "\n")
    # No fleet can serve a Redis started a moment ago: the worker and the dispatcher start
    # now, and their seconds of start-up overlap the account check, the migrations and the
    # ingest (they wait for the claim `run` makes after the ingest).
    start_services(settings, services, opts.run_dir / "logs",
                   worker_threads=opts.worker_threads, concurrency=opts.concurrency)
    return settings, redis.Redis.from_url(url)


def limit_text(concurrency: int | None, account: int | None) -> str:
    """How many tasks the run keeps in flight, and which limit says so."""
    if concurrency is None:
        return f"account limit {account or '?'} in flight"
    if account is None:
        return f"at most {concurrency} in flight: --concurrency"
    if concurrency > account:
        return f"account limit {account} in flight; --concurrency {concurrency} is above it"
    if concurrency < account:
        return f"at most {concurrency} in flight: --concurrency; the account allows {account}"
    return f"account limit {account} in flight"


def _ingest(settings: Settings, opts: RunOptions, engine: Engine, console: Console,
            limit: int | None, stop: StopRequest) -> IngestResult:
    """The manifest as a batch (new or resumed), its options stored, rows with a completed
    twin reused; says what it found."""
    result = ingest(engine, opts.manifest, default_model=opts.model,
                    default_task_type=opts.task_type,
                    default_service_mode=opts.service_mode, strict=opts.strict,
                    fields=opts.fields, max_attempts=opts.max_attempts,
                    default_max_attempts=settings.max_attempts,
                    concurrency=opts.concurrency, progress=stop.check)
    conflict = option_conflict(engine, result, strict=opts.strict,
                               service_mode=opts.service_mode)
    if conflict:
        raise ConfigError(conflict)
    set_limits(engine, result.batch_id, budget_usd=opts.budget_usd,
               deadline_at=opts.deadline_at, on_stuck=opts.on_stuck, reuse=opts.reuse)
    reused = reuse_completed(engine, result.batch_id, time.time(), settings.reuse_window_s)
    verb = "new batch" if result.created else "resuming batch"
    console.print(f"{verb} {result.batch_id}: {result.total} rows from {opts.manifest}"
                  f" ({limit_text(opts.concurrency, limit)})",
                  highlight=False, markup=False, soft_wrap=True)
    for line in (*result.notes, *unchecked_lines(result)):
        console.print(line, style="yellow", highlight=False, markup=False, soft_wrap=True)
    _report_invalid(console, result)
    if reused:
        console.print(f"{reused} rows take the task of a twin that completed in an "
                      "earlier batch (--no-reuse to pay again)", highlight=False)
    return result


def _finish(engine: Engine, batch_id: str, output: Path, problem: str | None,
            console: Console, command: str | None, started: float,
            sidecars: Sidecars | None = None, created_before: int = 0) -> int:
    """Write the results file, say how the batch ended; the exit code. `created_before`:
    the batch's tasks before this run (a resumed batch's count covers earlier runs too)."""
    rows = _export(engine, batch_id, output, sidecars, console)
    final = batch_status(engine, batch_id)
    assert final is not None
    for line in summary_lines(final, time.monotonic() - started, str(output), rows):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    created = tasks_created(engine, batch_id)
    earlier = f" ({created - created_before} by this run)" if created_before else ""
    console.print(f"{final.reused} rows reused, {created} created{earlier}", highlight=False)
    if problem:
        console.print(f"{problem}; run the same command again to resume", style="red",
                      highlight=False, markup=False, soft_wrap=True)
        return EXIT_USAGE
    if final.paused and final.active:
        console.print(final.paused, style="yellow", highlight=False, markup=False,
                      soft_wrap=True)
        return EXIT_BUDGET
    _report_failures(console, final, command)
    ok = final.counts[JobState.COMPLETED] == final.total
    return EXIT_OK if ok else EXIT_ROWS_FAILED


def _export(engine: Engine, batch_id: str, output: Path, sidecars: Sidecars | None = None,
            console: Console | None = None) -> int:
    rows = retry_transient(lambda: export(engine, batch_id, output), wait_s=DB_WAIT_S)
    if sidecars is not None:
        report = retry_transient(
            lambda: write_sidecars(engine, batch_id, replace=sidecars is Sidecars.REPLACE),
            wait_s=DB_WAIT_S)
        if console is not None:
            for line in report.lines():
                console.print(line, highlight=False, markup=False, soft_wrap=True)
    return rows


def _interrupted_reading(console: Console, stored: int, output: Path) -> int:
    """Stopped while the manifest was read: the rows not read yet are not in the database,
    so a results file now would leave them out (one line per manifest row is the promise);
    it is written once the whole manifest is read."""
    console.print(f"interrupted while reading the manifest ({stored} rows stored); {output} "
                  "is not written until every row is read; run the same command again to "
                  "resume", highlight=False, markup=False, soft_wrap=True)
    return EXIT_INTERRUPTED


def _interrupted(console: Console, engine: Engine | None, batch_id: str | None,
                 output: Path, sidecars: Sidecars | None = None) -> int:
    """Write what is known so far (rows still to run are `pending`) and say how to go on."""
    written = ""
    if engine is not None and batch_id is not None:
        try:
            rows = _export(engine, batch_id, output, sidecars)
            written = f"; {rows} rows written to {output} (unfinished ones pending)"
        except (DBAPIError, OSError) as exc:
            written = f"; could not write {output}: {exc}"
    console.print(f"interrupted{written}; run the same command again to resume",
                  highlight=False, markup=False, soft_wrap=True)
    return EXIT_INTERRUPTED
