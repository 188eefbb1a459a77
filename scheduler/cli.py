"""The `piapi-bulk` command line: run, estimate, submit, doctor, status, cancel, retry, forget,
db, export, download, worker, dispatcher, webhook, web, flower, emulator."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from scheduler.manifest import ManifestError

try:  # recent typer vendors its own copy of click; older ones use click itself
    from typer._click import exceptions as click_exc  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc  # type: ignore[no-redef,unused-ignore]
from workers.settings import ConfigError, Settings
from workers.states import AmbiguousPolicy

app = typer.Typer(
    name="piapi-bulk",
    help="Run CSV/JSONL manifests through PiAPI: never lose a row, never pay twice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
logger = logging.getLogger(__name__)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

def _print_version(value: bool) -> None:
    """`--version`: print `piapi-bulk <version>` and exit 0."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"piapi-bulk {version('piapi-bulk')}")
    except PackageNotFoundError:  # run from a source tree that was never installed
        typer.echo("piapi-bulk (version unknown: not installed)")
    raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Options before the command."""


ModelOpt = Annotated[str | None, typer.Option("--model", help="Model for rows without one.")]
TaskTypeOpt = Annotated[
    str | None, typer.Option("--task-type", help="Task type for rows without one.")
]
ConcurrencyOpt = Annotated[
    int | None,
    typer.Option("--concurrency", min=1,
                 help="Most tasks in flight (default: the account's own limit)."),
]
MaxAttemptsOpt = Annotated[
    int | None, typer.Option("--max-attempts", min=1,
                             help="PiAPI tasks per row at most, when tasks fail (default 3).")
]
BudgetOpt = Annotated[
    float | None,
    typer.Option("--budget-usd", help="Stop creating tasks before the batch's cost would pass "
                 "this many US dollars (kept with the batch; give it again to change it)."),
]
StrictOpt = Annotated[
    bool,
    typer.Option("--strict", help="Rows for models not in piapi-bulk's catalogue are invalid "
                 "instead of sent unchecked (also PIAPI_BULK_STRICT=1)."),
]
ServiceModeOpt = Annotated[
    str | None,
    typer.Option("--service-mode", help="config.service_mode for rows without their own "
                 "service_mode: public (pay as you go), private (your own connected accounts, "
                 "HYA) or empty (the workspace default)."),
]
DeadlineOpt = Annotated[
    str | None,
    typer.Option("--deadline", help="Start no task after this: an ISO-8601 time (local time "
                 "unless it has an offset) or a duration from now such as 30m, 8h, 1h30m."),
]

OnStuckOpt = Annotated[
    str | None,
    typer.Option("--on-stuck", help="A task still running far past its kind's expected "
                 "duration (PiAPI cannot cancel it): retry (default; abandon it and create a "
                 "new one within --max-attempts), fail (the row fails, kind stuck) or wait "
                 "(keep waiting). Kept with the batch. Stuck pending tasks are always "
                 "cancelled and replaced."),
]
ReuseOpt = Annotated[
    bool | None,
    typer.Option("--reuse/--no-reuse", help="A row whose twin (same id, model, task type "
                 "and input, in any batch) completed within PIAPI_BULK_REUSE_WINDOW_S takes "
                 "its task instead of paying again (default: on). Kept with the batch."),
]
ManifestArg = Annotated[
    Path, typer.Argument(help="CSV or JSONL manifest (may be gzipped), or a folder of images.")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="An input field for every row "
                 "(repeatable; a row's own value wins; for a folder the only source)."),
]
SidecarOpt = Annotated[
    bool,
    typer.Option("--captions-as-sidecar", help="Write each completed caption of a local "
                 "image next to it as <image name>.txt (with the results file)."),
]


def _fields(values: list[str] | None) -> dict[str, str]:
    from scheduler.options import parse_set

    try:
        return parse_set(values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _settings(**overrides: Any) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"bad setting {first['loc'][0]}: {first['msg']}") from exc
    clean = {k: v for k, v in overrides.items() if v is not None}
    return settings.model_copy(update=clean) if clean else settings


def _service_mode(value: str | None) -> str | None:
    from scheduler.options import parse_service_mode

    try:
        return parse_service_mode(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _run_dir() -> Path:
    return Path(os.environ.get("PIAPI_BULK_RUN_DIR", ".piapi-bulk"))


def _secrets(settings: Settings) -> list[str]:
    return [settings.api_key.get_secret_value()] if settings.api_key else []


@app.command()
def run(
    manifest: ManifestArg,
    model: ModelOpt = None,
    task_type: TaskTypeOpt = None,
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="Results file (JSONL).")] = None,
    concurrency: ConcurrencyOpt = None,
    rpm: Annotated[int | None, typer.Option("--rpm", min=0,
                                            help="Fleet-wide PiAPI requests per minute.")] = None,
    max_attempts: MaxAttemptsOpt = None,
    on_ambiguous: Annotated[
        str | None,
        typer.Option("--on-ambiguous", help="A create whose answer was lost: reconcile "
                     "(default; find its task first), retry (post again: may pay twice) or "
                     "fail (never posted twice)."),
    ] = None,
    budget_usd: BudgetOpt = None,
    deadline: DeadlineOpt = None,
    strict: StrictOpt = False,
    service_mode: ServiceModeOpt = None,
    on_stuck: OnStuckOpt = None,
    all_batches: Annotated[bool, typer.Option(
        "--all", help="Also run the other open batches in the database (by default run "
        "creates tasks only for this manifest's rows).")] = False,
    reuse: ReuseOpt = None,
    set_fields: SetOpt = None,
    captions_as_sidecar: SidecarOpt = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the estimate (see estimate) and exit: nothing is created, "
        "nothing started.")] = False,
    notify: Annotated[str | None, typer.Option(
        "--notify", help="POST a JSON summary to this URL (a chat webhook, say) when the batch "
        "finishes, ends with failed rows or pauses on its budget.")] = None,
    download: Annotated[str | None, typer.Option(
        "--download", help="Keep every output file in this folder (or fsspec URL such as "
        "s3://bucket/prefix) as its row completes, with its size and sha256 in the results "
        "(files).")] = None,
) -> None:
    """Process a manifest end to end and write the results file (resumes when re-run)."""
    import time

    if dry_run:
        _estimate(manifest, model, task_type, strict, service_mode, concurrency, as_json=False,
                  set_fields=set_fields)
        return

    from scheduler.notify import check_url
    from scheduler.operator import parse_budget, parse_deadline, parse_on_stuck
    from scheduler.runner import RunOptions
    from scheduler.runner import run as run_batch
    from workers.logs import setup_logging

    budget = parse_budget(budget_usd)
    deadline_at = parse_deadline(deadline, time.time()) if deadline is not None else None
    mode = _service_mode(service_mode)
    settings = _settings(rpm=rpm, on_ambiguous=on_ambiguous)
    if settings.on_ambiguous not in tuple(AmbiguousPolicy):
        raise ConfigError("--on-ambiguous must be reconcile, retry or fail")
    run_dir = _run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    notify_url = check_url(notify) if notify is not None else None
    setup_logging("INFO", [*_secrets(settings), *([notify_url] if notify_url else [])],
                  log_file=run_dir / "run.log")
    opts = RunOptions(manifest=manifest, output=output, model=model, task_type=task_type,
                      concurrency=concurrency, max_attempts=max_attempts, run_dir=run_dir,
                      budget_usd=budget, deadline_at=deadline_at,
                      strict=strict or settings.strict, service_mode=mode,
                      on_stuck=parse_on_stuck(on_stuck), all_batches=all_batches,
                      command=shlex.join(["piapi-bulk", *sys.argv[1:]]), reuse=reuse,
                      fields=_fields(set_fields), captions_as_sidecar=captions_as_sidecar,
                      notify=notify_url, download=download)
    raise typer.Exit(run_batch(settings, opts, Console(stderr=False)))


def _estimate(manifest: Path, model: str | None, task_type: str | None, strict: bool,
              service_mode: str | None, concurrency: int | None, as_json: bool,
              set_fields: list[str] | None) -> None:
    from scheduler.estimate.command import EstimateOptions, estimate
    from scheduler.estimate.view import show, to_json
    from workers.logs import setup_logging

    settings = _settings()
    setup_logging("WARNING", _secrets(settings))
    opts = EstimateOptions(manifest, model, task_type, strict or settings.strict,
                           _service_mode(service_mode), concurrency, _fields(set_fields))
    found = estimate(settings, opts)
    if as_json:
        typer.echo(json.dumps(to_json(found), indent=2))
    else:
        console = Console()
        show(found, console if console.is_terminal else Console(width=120))


@app.command("estimate")
def estimate_cmd(
    manifest: ManifestArg,
    model: ModelOpt = None,
    task_type: TaskTypeOpt = None,
    strict: StrictOpt = False,
    service_mode: ServiceModeOpt = None,
    concurrency: ConcurrencyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    set_fields: SetOpt = None,
) -> None:
    """Validate every row and print, per model and task type, the rows, invalid rows, the
    cost and the wall time, with the account's balance; creates nothing."""
    _estimate(manifest, model, task_type, strict, service_mode, concurrency, as_json,
              set_fields)


@app.command()
def submit(
    manifest: ManifestArg,
    model: ModelOpt = None,
    task_type: TaskTypeOpt = None,
    concurrency: ConcurrencyOpt = None,
    max_attempts: MaxAttemptsOpt = None,
    budget_usd: BudgetOpt = None,
    deadline: DeadlineOpt = None,
    strict: StrictOpt = False,
    service_mode: ServiceModeOpt = None,
    on_stuck: OnStuckOpt = None,
    reuse: ReuseOpt = None,
    set_fields: SetOpt = None,
) -> None:
    """Ingest a manifest as a batch for the running fleet; prints the batch id last."""
    import time

    from scheduler.ingest import ingest
    from scheduler.operator import parse_budget, parse_deadline, parse_on_stuck, set_limits
    from scheduler.options import option_conflict, unchecked_lines
    from scheduler.preflight import preflight
    from workers.db import create_tables, make_engine
    from workers.transitions.reuse import reuse_completed

    budget = parse_budget(budget_usd)
    deadline_at = parse_deadline(deadline, time.time()) if deadline is not None else None
    mode = _service_mode(service_mode)
    stuck_policy = parse_on_stuck(on_stuck)
    settings = _settings()
    strict = strict or settings.strict
    fields = _fields(set_fields)
    if not (manifest.is_file() or manifest.is_dir()):
        raise ConfigError(f"cannot read manifest {manifest}: no such file")
    preflight(manifest, model, task_type, strict, tuple(fields))  # before any batch exists
    engine = make_engine(settings.database_url)
    create_tables(engine)
    result = ingest(engine, manifest, default_model=model, default_task_type=task_type,
                    default_service_mode=mode, strict=strict, fields=fields,
                    max_attempts=max_attempts or settings.max_attempts, concurrency=concurrency)
    problem = option_conflict(engine, result, strict=strict, service_mode=mode)
    if problem:
        raise ConfigError(problem)
    set_limits(engine, result.batch_id, budget_usd=budget, deadline_at=deadline_at,
               on_stuck=stuck_policy, reuse=reuse)
    reused = reuse_completed(engine, result.batch_id, time.time(), settings.reuse_window_s)
    err = Console(stderr=True)
    err.print(f"{'new' if result.created else 'existing'} batch: {result.total} rows, "
              f"{result.invalid} invalid", highlight=False)
    if reused:
        err.print(f"{reused} rows reused (a twin in another batch completed)", highlight=False)
    for text in (*result.notes, *unchecked_lines(result)):
        err.print(text, highlight=False, markup=False, soft_wrap=True)
    for line, key, reason in result.invalid_rows[:20]:
        err.print(f"  line {line} (id {key}): {reason}", highlight=False, markup=False,
                  soft_wrap=True)
    typer.echo(result.batch_id)


@app.command()
def doctor(
    manifest: Annotated[Path | None, typer.Argument(
        help="Manifest whose models to check (optional; or --model).")] = None,
    model: ModelOpt = None,
    task_type: TaskTypeOpt = None,
    probe: Annotated[bool, typer.Option(
        "--probe", help="Spend one Flux schnell task (about $0.002) to measure the history's "
        "lag and whether GET echoes inputs.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask before --probe spends.")]
    = False,
    probe_timeout: Annotated[float, typer.Option(
        "--probe-timeout", min=1, help="Seconds --probe waits for its task to be listed.")]
    = 120.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the key, the account and how PiAPI's history and active_tasks behave for these
    models; store the findings for run (read-only unless --probe)."""
    from scheduler.doctor.command import DoctorOptions, run_doctor
    from workers.logs import setup_logging

    settings = _settings()
    setup_logging("WARNING", _secrets(settings))
    if manifest is not None and not manifest.is_file():
        raise ConfigError(f"cannot read manifest {manifest}: no such file")
    opts = DoctorOptions(manifest=manifest, model=model, task_type=task_type, probe=probe,
                         yes=yes, as_json=as_json, probe_timeout_s=probe_timeout)
    confirm = ((lambda q: typer.confirm(q, default=False, err=True))
               if sys.stdin.isatty() else None)
    result = run_doctor(settings, opts, Console(), Console(stderr=True), confirm)
    sys.stdout.write(result.text)
    raise typer.Exit(result.code)


@app.command()
def status(
    batch: Annotated[str | None, typer.Argument(help="Batch id (default: every batch).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The database, then each batch (newest first): manifest, created, models, counts by
    state, cost, and whether it is done."""
    from scheduler.doctor.view import status_line
    from scheduler.status import all_statuses, batch_models, batch_status, human_lines, masked_url
    from workers.db import create_tables, make_engine
    from workers.findings import load as load_findings

    settings = _settings()
    engine = make_engine(settings.database_url)
    create_tables(engine)
    if batch:
        one = batch_status(engine, batch)
        if one is None:
            raise ConfigError(f"no batch {batch}")
        statuses = [one]
    else:
        statuses = all_statuses(engine)
    found = load_findings(engine)
    database = masked_url(settings.database_url)
    models = {s.id: batch_models(engine, s.id) for s in statuses}
    if as_json:
        typer.echo(json.dumps({
            "database": database,
            "batches": [{**s.to_json(), "phase": s.phase, "models": [
                {"model": m, "task_type": t, "rows": n} for m, t, n in models[s.id]]}
                for s in statuses],
            "doctor": json.loads(found.to_json()) if found else None}, indent=2))
        return
    typer.echo(f"database: {database}")
    if found is not None:
        typer.echo(status_line(found))
    if not statuses:
        typer.echo("no batches")
    for s in statuses:
        for line in human_lines(s, models[s.id]):
            typer.echo(line)


@app.command()
def cancel(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    now: Annotated[bool, typer.Option("--now", help="Also abandon running tasks that PiAPI "
                                      "can no longer cancel (they may still be charged).")]
    = False,
) -> None:
    """Stop a batch: no more tasks are created, waiting rows end cancelled, pending tasks
    are cancelled at PiAPI; running ones finish (or, with --now, are abandoned)."""
    from scheduler import operator
    from workers.db import create_tables, make_engine

    settings = _settings()
    engine = make_engine(settings.database_url)
    create_tables(engine)
    report = operator.cancel(engine, batch, now)
    typer.echo(report.summary())
    if (report.running or report.reconciling) and not operator.dispatcher_running(
            _fleet_redis_url(settings)):
        typer.echo("no dispatcher is running: the running tasks are dealt with when the fleet "
                   "next runs (piapi-bulk run on the same manifest, or dispatcher + worker)")


@app.command()
def retry(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    failed: Annotated[bool, typer.Option("--failed", help="Only rows that failed "
                                         "(default: failed and cancelled rows).")] = False,
    ids: Annotated[Path | None, typer.Option("--ids", help="Only these row ids (the "
                                             "manifest's id column), one a line.")] = None,
) -> None:
    """A new attempt for a batch's failed (and cancelled) rows; never for completed ones.

    The next `piapi-bulk run` of the same manifest, or a running fleet, runs them."""
    from scheduler import operator
    from workers.db import create_tables, make_engine

    keys = operator.read_ids(ids) if ids is not None else None
    engine = make_engine(_settings().database_url)
    create_tables(engine)
    report = operator.retry(engine, batch, failed_only=failed, keys=keys)
    for line in report.lines():
        typer.echo(line)


def forget(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
) -> None:
    """Remove a batch, its rows and their attempts from the database (refused while any of
    its tasks is in flight: cancel it first)."""
    from scheduler.forget import forget as forget_batch
    from workers.db import create_tables, make_engine

    engine = make_engine(_settings().database_url)
    create_tables(engine)
    gone = forget_batch(engine, batch)
    typer.echo(gone.summary())
    if gone.left:
        raise ConfigError(f"{gone.left} row(s) of batch {batch} were taken by a running fleet "
                          "meanwhile: the batch is cancelled; forget it again once they end")


app.command("forget")(forget)
app.command("delete", help="Same as forget.")(forget)

db_app = typer.Typer(help="The database's schema: its migration, and upgrading it.",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring DATABASE_URL's schema to the newest migration (once per release, before the
    fleet; run and the services also do it on start-up). Safe beside other starters."""
    from workers.db import make_engine
    from workers.migrate import upgrade

    engine = make_engine(_settings().database_url)
    try:
        typer.echo(upgrade(engine).summary())
    finally:
        engine.dispose()


@db_app.command("current")
def db_current() -> None:
    """Print the database's migration (revision), and whether it is the newest."""
    from workers.db import make_engine
    from workers.migrate import current, head

    engine = make_engine(_settings().database_url)
    try:
        revision = current(engine)
    finally:
        engine.dispose()
    if revision is None:
        typer.echo(f"none (an empty database, or one made before migrations); head is {head()}")
    else:
        typer.echo(revision + (" (head)" if revision == head() else f" (head is {head()})"))


def _fleet_redis_url(settings: Settings) -> str | None:
    """REDIS_URL, else the private Redis of a `run` in progress in this directory."""
    from scheduler.runner import REDIS_URL_FILE

    run_file = _run_dir() / REDIS_URL_FILE
    if settings.redis_url:
        return settings.redis_url
    return run_file.read_text().strip() if run_file.is_file() else None


@app.command("export")
def export_cmd(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Results file.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl (the results lines) or csv "
                                     "(a row per manifest row, for spreadsheets).")] = "jsonl",
    captions_as_sidecar: SidecarOpt = False,
) -> None:
    """Write a batch's results file (one line per manifest row, in input order)."""
    from scheduler.export import export
    from scheduler.status import batch_status
    from workers.db import create_tables, make_engine

    if fmt not in ("jsonl", "csv"):
        raise ConfigError(f"--format must be jsonl or csv, got {fmt!r}")
    engine = make_engine(_settings().database_url)
    create_tables(engine)
    if batch_status(engine, batch) is None:
        raise ConfigError(f"no batch {batch}")
    rows = export(engine, batch, output, fmt)
    typer.echo(f"{rows} rows written to {output}", err=True)
    if captions_as_sidecar:
        from scheduler.sidecars import write_sidecars

        written, same = write_sidecars(engine, batch)
        typer.echo(f"captions: {written} sidecar .txt files written, {same} already up to "
                   "date", err=True)


@app.command()
def download(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    to: Annotated[str, typer.Option("--to", help="Folder (or fsspec URL such as "
                                    "s3://bucket/prefix) to keep the files in.")],
) -> None:
    """Fetch the output files of a batch's completed rows into a folder (files already
    there with their recorded size and sha256 are not fetched again)."""
    from scheduler.downloader import download_batch
    from scheduler.status import batch_status
    from workers.db import create_tables, make_engine
    from workers.logs import setup_logging

    settings = _settings()
    setup_logging("WARNING", _secrets(settings))
    engine = make_engine(settings.database_url)
    create_tables(engine)
    if batch_status(engine, batch) is None:
        raise ConfigError(f"no batch {batch}")
    err = Console(stderr=True)
    raise typer.Exit(download_batch(engine, batch, to, settings.download_concurrency,
                                    lambda line: err.print(line, highlight=False,
                                                           markup=False, soft_wrap=True)))


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1,
                                                    help="Celery threads (default 4).")] = None,
    pool: Annotated[str | None, typer.Option("--pool", help="threads | prefork | solo")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
    name_prefix: Annotated[str, typer.Option(
        "--name-prefix", help="The worker's Celery name is PREFIX-<pid>@<host>.")]
    = "piapi-bulk",
) -> None:
    """A Celery worker that creates and polls PiAPI tasks."""
    from workers.app import POLL_QUEUE, SUBMIT_QUEUE, create_celery
    from workers.logs import setup_logging
    from workers.runtime import lazy_context
    from workers.tasks import register_tasks

    settings = _settings(worker_concurrency=concurrency, worker_pool=pool)
    settings.require_api_key()
    setup_logging(loglevel, _secrets(settings))
    celery_app = create_celery(settings.require_redis_url())
    register_tasks(celery_app, lazy_context(settings))
    celery_app.worker_main([
        "worker", "-P", settings.worker_pool, "-c", str(settings.worker_concurrency),
        "-Q", f"{SUBMIT_QUEUE},{POLL_QUEUE}", "-E", "--without-mingle", "--without-gossip",
        "-n", f"{name_prefix}-{os.getpid()}@%h", "--loglevel", loglevel,
    ])


@app.command()
def dispatcher(
    concurrency: ConcurrencyOpt = None,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
    scoped: Annotated[bool, typer.Option(
        "--scoped", help="Create tasks only for batches a `piapi-bulk run` claimed "
        "(what run starts); without it, every open batch is served.")] = False,
) -> None:
    """Feed due work to the workers (one active at a time; others stand by)."""
    import redis

    from scheduler.dispatcher import Dispatcher
    from workers.app import create_celery
    from workers.db import create_tables, make_engine
    from workers.fleet import Fleet
    from workers.logs import setup_logging
    from workers.runtime import build_budget, build_client

    settings = _settings(concurrency=concurrency)
    setup_logging(loglevel, _secrets(settings))
    client = build_client(settings)
    engine = make_engine(settings.database_url)
    create_tables(engine)
    redis_url = settings.require_redis_url()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    redis_client = redis.Redis.from_url(redis_url)
    d = Dispatcher(
        engine, redis_client, create_celery(redis_url),
        lease_s=settings.lease_s, concurrency=settings.concurrency,
        account_limit=lambda: client.account_info().max_concurrent_tasks,
        # With webhooks, PiAPI says itself when a task ends: reading its in-flight count
        # as well would cost more GETs than it saves (measured: 2.4 GETs a task vs 1.0).
        account=client if settings.active_tasks == "auto" and not settings.webhook_url else None,
        rpm=settings.rpm, account_poll_min_s=settings.account_poll_min_s,
        budget=build_budget(settings, redis_client, Fleet(redis_client)),
        interval_s=settings.dispatch_interval_s, batch_size=settings.batch_size,
        on_ambiguous=settings.on_ambiguous, max_tries=settings.max_tries, scoped=scoped,
        reuse_window_s=settings.reuse_window_s,
        # A test hook only (tests/integration/test_fencing.py): never set in production.
        pause_file=Path(pause) if (pause := os.environ.get("PIAPI_BULK_TEST_PAUSE_FILE"))
        else None,
    )
    if settings.dispatcher_stats is not None:
        from scheduler.passstats import PassStats

        d.on_pass = PassStats(engine, settings.dispatcher_stats).record
    logger.info("dispatcher %s starting (standby until it holds the lock)", d.token)
    d.run(stop)


@app.command()
def webhook(
    host: Annotated[str, typer.Option("--host", help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8787,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
) -> None:
    """Receive PiAPI's webhooks (set PIAPI_BULK_WEBHOOK_URL to reach this at .../hooks);
    the same server as `web` (its page too, where allowed)."""
    _serve_web(host, port, loglevel, hooks=True)


@app.command()
def web(
    host: Annotated[str, typer.Option("--host", help="Bind address (another than loopback "
                                      "needs PIAPI_BULK_WEB_TOKEN or "
                                      "PIAPI_BULK_WEB_BASIC_AUTH).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
) -> None:
    """Serve the run page (batches, progress, cost, ETA, failures), its JSON at /api/batches
    and Prometheus /metrics; also the webhook receiver when webhooks are configured."""
    _serve_web(host, port, loglevel, hooks=False)


def _serve_web(host: str, port: int, loglevel: str, *, hooks: bool) -> None:
    from scheduler.web.serve import serve, web_secrets
    from workers.logs import setup_logging

    settings = _settings()
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    setup_logging(loglevel, [s for s in (secret, *web_secrets(settings), *_secrets(settings))
                             if s])
    serve(settings, host, port, lambda: _fleet_redis_url(settings), hooks=hooks)


@app.command()
def flower(
    port: Annotated[int, typer.Option("--port")] = 5555,
    address: Annotated[str, typer.Option("--address", help="Bind address.")] = "127.0.0.1",
    require_auth: Annotated[bool, typer.Option(
        "--require-auth", help="Refuse to start without FLOWER_BASIC_AUTH (deployments).")] = False,
) -> None:
    """Open Flower on the fleet's Redis (basic auth when FLOWER_BASIC_AUTH=user:pass).

    Without REDIS_URL it watches the `run` in progress in this directory, and stops when
    that run ends. Each task's result is what its message did, in row terms.
    """
    from scheduler import flower_cmd
    from scheduler.runner import REDIS_URL_FILE

    env = dict(os.environ)
    basic_auth = env.get("FLOWER_BASIC_AUTH") or None
    if address not in LOOPBACK and not basic_auth:
        raise ConfigError(f"refusing to serve Flower on {address} without FLOWER_BASIC_AUTH")
    if require_auth and ":" not in (basic_auth or ""):
        raise ConfigError("--require-auth: set FLOWER_BASIC_AUTH=user:password")
    target = flower_cmd.resolve(_settings().redis_url, _run_dir(), REDIS_URL_FILE)
    celery_bin = shutil.which("celery", path=str(Path(sys.executable).parent)) or "celery"
    argv = flower_cmd.flower_argv(celery_bin, target.redis_url, address, port, basic_auth)
    if not basic_auth:
        env["FLOWER_UNAUTHENTICATED_API"] = "true"  # bound to loopback; the API lists workers
    what = "the run in progress here" if target.run_dir else "the fleet on REDIS_URL"
    host = f"[{address}]" if ":" in address else address
    print(f"Flower on http://{host}:{port} for {what}", flush=True)
    raise typer.Exit(flower_cmd.supervise(argv, env, target, _say))


def _say(line: str) -> None:
    print(line, flush=True)


def _register_emulator() -> None:
    from emulator.cli import emulator_command

    app.command("emulator", help="A local PiAPI emulator (for tests, benchmarks and the demo).")(
        emulator_command
    )


def main() -> None:
    """Entry point: usage and configuration errors are one line on stderr and exit 2."""
    _register_emulator()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="piapi-bulk", standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "piapi-bulk --help")
        code = 0
    except click_exc.UsageError as exc:
        hint = f" (try: {exc.ctx.command_path} --help)" if exc.ctx else ""
        print(f"piapi-bulk: {exc.format_message()}{hint}", file=sys.stderr)
        code = 2
    except (ConfigError, ManifestError) as exc:
        print(f"piapi-bulk: {exc}", file=sys.stderr)
        code = 2
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
