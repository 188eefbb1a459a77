"""`piapi-bulk run`: ingest, make sure a dispatcher and a worker run, watch, export, exit.

Everything `run` starts (a private redis-server when REDIS_URL is unset, a dispatcher and a
worker when none are running) is its child and stops with it. Running the same command
again after any interruption resumes the same batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from scheduler.controls import PauseWatch, set_limits
from scheduler.dispatcher import LOCK_KEY
from scheduler.export import export
from scheduler.ingest import IngestResult, ingest
from scheduler.liveness import ProgressWatch
from scheduler.options import option_conflict, unchecked_lines
from scheduler.services import Child, cli_argv, start_private_redis
from scheduler.status import BatchStatus, batch_status, tasks_created
from workers.app import create_celery
from workers.control import clear_halt, get_halt
from workers.db import create_tables, is_transient, make_engine, retry_transient
from workers.piapi import AccountError, PiAPIError
from workers.runtime import build_client
from workers.settings import ConfigError, Settings
from workers.states import JobState
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
PLAIN_REPORT_EVERY_S = 5.0
"""Without a terminal (CI, logs), a progress line this often instead of a live bar."""


@dataclass(frozen=True)
class RunOptions:
    """The `run` command's options."""

    manifest: Path
    output: Path | None = None
    model: str | None = None
    task_type: str | None = None
    concurrency: int | None = None
    max_attempts: int | None = None
    run_dir: Path = Path(".piapi-bulk")
    worker_threads: int | None = None
    budget_usd: float | None = None
    """Stored on the batch when given (else the stored one is kept)."""
    deadline_at: float | None = None
    strict: bool = False
    """Rows for models not in the catalogue are invalid instead of sent unchecked."""
    service_mode: str | None = None
    """`--service-mode` for rows without their own ('' = the workspace default)."""
    on_stuck: str | None = None
    """Stored on the batch when given (else the stored one, else the fleet's, applies)."""
    reuse: bool | None = None
    """`--reuse`/`--no-reuse`, stored on the batch when given (a new batch reuses)."""


def default_output(manifest: Path) -> Path:
    """`captions.csv.gz` -> `captions.results.jsonl` in the current directory."""
    name = manifest.name
    if name.endswith(".gz"):
        name = name[:-3]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return Path(f"{stem}.results.jsonl")


def check_account(settings: Settings) -> int | None:
    """Fail fast (exit 2) if PiAPI refuses the key; the account's concurrency limit."""
    client = build_client(settings)
    try:
        return client.account_info().max_concurrent_tasks
    except AccountError as exc:
        raise ConfigError(f"PiAPI refused the API key ({exc}); check PIAPI_API_KEY") from exc
    except PiAPIError as exc:
        raise ConfigError(f"cannot reach PiAPI at {settings.base_url}: {exc}") from exc
    finally:
        client.close()


class Services:
    """The children this run started, supervised until the run ends."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def add(self, child: Child) -> Child:
        """Start a child and supervise it."""
        child.start()
        self.children.append(child)
        return child

    def supervise(self) -> str | None:
        """Restart dead children; a message when one keeps dying."""
        for child in self.children:
            if not child.revive():
                return f"{child.name} keeps exiting; see {child.log_path}"
        return None

    def restart_fleet(self) -> list[str]:
        """Kill and restart every child but Redis (the fleet stalled); their names."""
        restarted = []
        for child in self.children:
            if child.name != "redis-server":
                child.kill()
                child.start()
                restarted.append(child.name)
        return restarted

    def stop(self) -> None:
        """Stop every child, newest first (workers and dispatcher before Redis)."""
        for child in reversed(self.children):
            child.stop()


def _child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["REDIS_URL"] = settings.require_redis_url()
    env["DATABASE_URL"] = settings.database_url
    env["PIAPI_BASE_URL"] = settings.base_url
    env["PIAPI_RPM"] = str(settings.rpm)
    env["PIAPI_BULK_ON_AMBIGUOUS"] = settings.on_ambiguous
    return env


def ensure_services(settings: Settings, services: Services, opts: RunOptions,
                    log_dir: Path) -> None:
    """Start a dispatcher and a worker unless some are already serving this Redis."""
    url = settings.require_redis_url()
    env = _child_env(settings)
    client = redis.Redis.from_url(url)
    try:
        has_dispatcher = bool(client.exists(LOCK_KEY))
    finally:
        client.close()
    app = create_celery(url)
    try:
        workers = app.control.ping(timeout=1.0) or []
    finally:
        app.close()
    if not workers:
        argv = cli_argv("worker")
        if opts.worker_threads:
            argv += ["--concurrency", str(opts.worker_threads)]
        services.add(Child("worker", argv, env, log_dir / "worker.log"))
    else:
        logger.info("%d worker(s) already running on %s", len(workers), url)
    if not has_dispatcher:
        argv = cli_argv("dispatcher")
        if opts.concurrency:
            argv += ["--concurrency", str(opts.concurrency)]
        services.add(Child("dispatcher", argv, env, log_dir / "dispatcher.log"))
    else:
        logger.info("a dispatcher is already running on %s", url)


def _describe(st: BatchStatus) -> str:
    c = st.counts
    in_flight = c[JobState.SUBMITTING] + c[JobState.RUNNING]
    waiting = c[JobState.QUEUED] + c[JobState.RETRY_WAIT] + c[JobState.AMBIGUOUS]
    return (f"running {in_flight} · waiting {waiting} · done {c[JobState.COMPLETED]} · "
            f"failed {c[JobState.FAILED]} · invalid {c[JobState.INVALID]} · ${st.usd:.2f}")


@contextlib.contextmanager
def _progress(console: Console, total: int) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[detail]}"),
        console=console, transient=False, disable=not console.is_terminal,
    )
    with progress:
        yield progress


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
    console.print(f"[yellow]{message}[/]", highlight=False)


def watch(engine: Engine, batch_id: str, services: Services, console: Console,
          liveness: ProgressWatch | None = None) -> str | None:
    """Show progress until the batch has no active row (or its budget stopped it with
    nothing left in flight); a reason when it cannot finish.

    With `liveness`, the workers and dispatcher this run started are restarted when the
    fleet stops making progress although work is due (for example a worker wedged after
    Redis restarted).
    """
    st = batch_status(engine, batch_id)
    assert st is not None
    last_plain = 0.0
    last_liveness = time.monotonic()
    budget_stop = PauseWatch(engine, batch_id)
    with _progress(console, st.total) as progress:
        task = progress.add_task("piapi-bulk", total=st.total, detail="")
        while True:
            # The database may be restarting: wait for it rather than end the run.
            st = retry_transient(lambda: batch_status(engine, batch_id), wait_s=DB_WAIT_S)
            assert st is not None
            progress.update(task, completed=st.finished, total=st.total, detail=_describe(st))
            if not console.is_terminal and time.monotonic() - last_plain >= PLAIN_REPORT_EVERY_S:
                last_plain = time.monotonic()
                console.print(f"{st.finished}/{st.total} finished · {_describe(st)}",
                              soft_wrap=True)
            if st.active == 0 or budget_stop.stopped(st):
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


def _report_invalid(console: Console, result: IngestResult) -> None:
    if not result.invalid:
        return
    console.print(f"[yellow]{result.invalid} invalid row(s) will not be sent:[/]", highlight=False)
    for line, key, reason in result.invalid_rows[:20]:
        console.print(f"  line {line} (id {key}): {reason}", highlight=False, markup=False)
    if result.invalid > 20:
        console.print(f"  … and {result.invalid - 20} more (see the results file)")


def run(settings: Settings, opts: RunOptions, console: Console) -> int:
    """The whole `run` command; returns the exit code."""
    settings.require_api_key()
    if not opts.manifest.is_file():
        raise ConfigError(f"cannot read manifest {opts.manifest}: no such file")
    output = opts.output or default_output(opts.manifest)
    run_dir = opts.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    services = Services()
    try:
        if not settings.redis_url:
            url, redis_child = start_private_redis(run_dir)
            services.children.append(redis_child)
            settings = settings.model_copy(update={"redis_url": url})
            # So `piapi-bulk flower` (and `make flower`) find this run's private Redis.
            (run_dir / REDIS_URL_FILE).write_text(url + "\n")
        limit = check_account(settings)
        engine = make_engine(settings.database_url)
        create_tables(engine)
        result = ingest(engine, opts.manifest, default_model=opts.model,
                        default_task_type=opts.task_type,
                        default_service_mode=opts.service_mode, strict=opts.strict,
                        max_attempts=opts.max_attempts or settings.max_attempts,
                        concurrency=opts.concurrency)
        conflict = option_conflict(engine, result, strict=opts.strict,
                                   service_mode=opts.service_mode)
        if conflict:
            raise ConfigError(conflict)
        set_limits(engine, result.batch_id, budget_usd=opts.budget_usd,
                   deadline_at=opts.deadline_at, on_stuck=opts.on_stuck, reuse=opts.reuse)
        reused = reuse_completed(engine, result.batch_id, time.time(), settings.reuse_window_s)
        verb = "new batch" if result.created else "resuming batch"
        console.print(f"{verb} {result.batch_id}: {result.total} rows from {opts.manifest}"
                      f" (account limit {opts.concurrency or limit or '?'} in flight)")
        for line in unchecked_lines(result):
            console.print(line, style="yellow", highlight=False, markup=False, soft_wrap=True)
        _report_invalid(console, result)
        if reused:
            console.print(f"{reused} rows take the task of a twin that completed in an "
                          "earlier batch (--no-reuse to pay again)", highlight=False)
        clear_halt(engine)  # the key was just accepted
        before = batch_status(engine, result.batch_id)
        if before is not None and before.active:
            ensure_services(settings, services, opts, run_dir / "logs")
        problem = watch(engine, result.batch_id, services, console,
                        ProgressWatch(engine, settings.stall_s))
        rows = retry_transient(lambda: export(engine, result.batch_id, output),
                               wait_s=DB_WAIT_S)
        final = batch_status(engine, result.batch_id)
        assert final is not None
        console.print(f"{rows} rows · {_describe(final)} · results: {output}", soft_wrap=True)
        console.print(f"{final.reused} rows reused, {tasks_created(engine, result.batch_id)} "
                      "created", highlight=False)
        if problem:
            console.print(f"[red]{problem}[/]; run the same command again to resume")
            return EXIT_USAGE
        if final.paused and final.active:
            console.print(final.paused, style="yellow", highlight=False, markup=False,
                          soft_wrap=True)
            return EXIT_BUDGET
        ok = final.counts[JobState.COMPLETED] == final.total
        return EXIT_OK if ok else EXIT_ROWS_FAILED
    except KeyboardInterrupt:
        console.print("interrupted; run the same command again to resume")
        return EXIT_INTERRUPTED
    finally:
        services.stop()
        (run_dir / REDIS_URL_FILE).unlink(missing_ok=True)
