"""The operator's commands on the database: doctor, status, cancel, retry, forget (delete),
db upgrade/current, export and download."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from scheduler.cli.app import (
    app,
    check_sidecar_flags,
    database,
    fleet_redis_url,
    load_settings,
    read_database,
    secrets_of,
)
from scheduler.cli.options import (
    BatchArg,
    JsonOpt,
    ModelOpt,
    OverwriteSidecarsOpt,
    SidecarOpt,
    TaskTypeOpt,
)
from workers.settings import ConfigError


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
    as_json: JsonOpt = False,
) -> None:
    """Check the key, the account and how PiAPI's history and active_tasks behave for these
    models; store the findings for run (read-only unless --probe)."""
    from scheduler.doctor.command import DoctorOptions, run_doctor
    from scheduler.preflight import require_manifest
    from workers.logs import setup_logging

    settings = load_settings()
    setup_logging("WARNING", secrets_of(settings))
    if manifest is not None:
        require_manifest(manifest, folder=False)
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
    as_json: JsonOpt = False,
) -> None:
    """The database, then each batch (newest first): manifest, created, models, counts by
    state, cost, and whether it is done."""
    from scheduler.doctor.view import status_line
    from scheduler.status import (
        all_statuses,
        batch_models,
        batch_status,
        halt_line,
        human_lines,
        masked_url,
    )
    from workers.findings import load as load_findings
    from workers.halt import halted_since

    settings = load_settings()
    engine = read_database(settings)
    if batch:
        one = batch_status(engine, batch)
        if one is None:
            raise ConfigError(f"no batch {batch}")
        statuses = [one]
    else:
        statuses = all_statuses(engine)
    found = load_findings(engine)
    halt = halted_since(engine)
    shown = masked_url(settings.database_url)
    models = {s.id: batch_models(engine, s.id) for s in statuses}
    if as_json:
        typer.echo(json.dumps({
            "database": shown,
            "halted": halt._asdict() if halt else None,
            "batches": [{**s.to_json(), "models": [
                {"model": m, "task_type": t, "rows": n} for m, t, n in models[s.id]]}
                for s in statuses],
            "doctor": json.loads(found.to_json()) if found else None}, indent=2))
        return
    typer.echo(f"database: {shown}")
    if halt is not None:
        typer.echo(halt_line(*halt))
    if found is not None:
        typer.echo(status_line(found))
    if not statuses:
        typer.echo("no batches")
    for s in statuses:
        for line in human_lines(s, models[s.id]):
            typer.echo(line)


@app.command()
def cancel(
    batch: BatchArg,
    now: Annotated[bool, typer.Option("--now", help="Also abandon running tasks that PiAPI "
                                      "can no longer cancel (they may still be charged).")]
    = False,
) -> None:
    """Stop a batch: no more tasks are created, waiting rows end cancelled, pending tasks
    are cancelled at PiAPI; running ones finish (or, with --now, are abandoned)."""
    from scheduler import operator

    settings = load_settings()
    engine = database(settings)
    report = operator.cancel(engine, batch, now)
    typer.echo(report.summary())
    if (report.running or report.reconciling) and not operator.dispatcher_running(
            fleet_redis_url(settings)):
        typer.echo("no dispatcher is running: the running tasks are dealt with when the fleet "
                   "next runs (piapi-bulk run on the same manifest, or dispatcher + worker)")


@app.command()
def retry(
    batch: BatchArg,
    failed: Annotated[bool, typer.Option("--failed", help="Only rows that failed "
                                         "(default: failed and cancelled rows).")] = False,
    ids: Annotated[Path | None, typer.Option("--ids", help="Only these row ids (the "
                                             "manifest's id column), one a line.")] = None,
) -> None:
    """A new attempt for a batch's failed (and cancelled) rows; never for completed ones.

    The next `piapi-bulk run` of the same manifest, or a running fleet, runs them."""
    from scheduler import operator

    keys = operator.read_ids(ids) if ids is not None else None
    engine = database(load_settings())
    report = operator.retry(engine, batch, failed_only=failed, keys=keys)
    for line in report.lines():
        typer.echo(line)


def forget(
    batch: BatchArg,
) -> None:
    """Remove a batch, its rows and their attempts from the database (refused while any of
    its tasks is in flight: cancel it first)."""
    from scheduler.forget import forget as forget_batch

    engine = database(load_settings())
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

    engine = make_engine(load_settings().database_url)
    try:
        typer.echo(upgrade(engine).summary())
    finally:
        engine.dispose()


@db_app.command("current")
def db_current() -> None:
    """Print the database's migration (revision), and whether it is the newest."""
    from workers.db import make_read_engine
    from workers.migrate import current, head

    engine = make_read_engine(load_settings().database_url)
    try:
        revision = current(engine)
    finally:
        engine.dispose()
    if revision is None:
        typer.echo(f"none (an empty database, or one made before migrations); head is {head()}")
    else:
        typer.echo(revision + (" (head)" if revision == head() else f" (head is {head()})"))


@app.command("export")
def export_cmd(
    batch: BatchArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Results file.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl (the results lines) or csv "
                                     "(a row per manifest row, for spreadsheets).")] = "jsonl",
    captions_as_sidecar: SidecarOpt = False,
    overwrite_sidecars: OverwriteSidecarsOpt = False,
) -> None:
    """Write a batch's results file (one line per manifest row, in input order)."""
    from scheduler.atomic_file import write_problem
    from scheduler.export import export
    from scheduler.status import batch_status

    if fmt not in ("jsonl", "csv"):
        raise ConfigError(f"--format must be jsonl or csv, got {fmt!r}")
    check_sidecar_flags(captions_as_sidecar, overwrite_sidecars)
    if problem := write_problem(output):
        raise ConfigError(problem)
    engine = read_database(load_settings())
    if batch_status(engine, batch) is None:
        raise ConfigError(f"no batch {batch}")
    rows = export(engine, batch, output, fmt)
    typer.echo(f"{rows} rows written to {output}", err=True)
    if captions_as_sidecar:
        from scheduler.sidecars import write_sidecars

        for line in write_sidecars(engine, batch, replace=overwrite_sidecars).lines():
            typer.echo(line, err=True)


@app.command()
def download(
    batch: BatchArg,
    to: Annotated[str, typer.Option("--to", help="Folder (or fsspec URL such as "
                                    "s3://bucket/prefix) to keep the files in.")],
) -> None:
    """Fetch the output files of a batch's completed rows into a folder (files already
    there with their recorded size and sha256 are not fetched again)."""
    from scheduler.downloader import download_batch
    from scheduler.status import batch_status
    from workers.logs import setup_logging

    settings = load_settings()
    setup_logging("WARNING", secrets_of(settings))
    engine = database(settings)
    if batch_status(engine, batch) is None:
        raise ConfigError(f"no batch {batch}")
    err = Console(stderr=True)
    raise typer.Exit(download_batch(engine, batch, to, settings.download_concurrency,
                                    lambda line: err.print(line, highlight=False,
                                                           markup=False, soft_wrap=True)))

