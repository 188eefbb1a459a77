"""The commands that take a manifest: `run` (end to end, or --dry-run), `estimate` and
`submit` (ingest for a running fleet)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from scheduler.cli.app import (
    app,
    check_sidecar_flags,
    database,
    load_settings,
    parse_fields,
    run_folder,
    secrets_of,
    service_mode_of,
)
from scheduler.cli.options import (
    BudgetOpt,
    ConcurrencyOpt,
    DeadlineOpt,
    JsonOpt,
    ManifestArg,
    MaxAttemptsOpt,
    ModelOpt,
    OnStuckOpt,
    OverwriteSidecarsOpt,
    ReuseOpt,
    ServiceModeOpt,
    SetOpt,
    SidecarOpt,
    StrictOpt,
    TaskTypeOpt,
)
from scheduler.cli.startup import collector_paused
from workers.settings import ConfigError
from workers.states import AmbiguousPolicy


@app.command()
def run(
    manifest: ManifestArg,
    model: ModelOpt = None, task_type: TaskTypeOpt = None, set_fields: SetOpt = None,
    strict: StrictOpt = False, service_mode: ServiceModeOpt = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Results file (JSONL). Default: <manifest stem>.results.jsonl, "
        "or <manifest name>.results.jsonl when that one holds another manifest's.")] = None,
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
    budget_usd: BudgetOpt = None, deadline: DeadlineOpt = None,
    on_stuck: OnStuckOpt = None, reuse: ReuseOpt = None,
    all_batches: Annotated[bool, typer.Option(
        "--all", help="Also run the other open batches in the database (by default run "
        "creates tasks only for this manifest's rows).")] = False,
    captions_as_sidecar: SidecarOpt = False, overwrite_sidecars: OverwriteSidecarsOpt = False,
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
        estimate_cmd(manifest, model=model, task_type=task_type, set_fields=set_fields,
                     strict=strict, service_mode=service_mode, concurrency=concurrency)
        return

    with collector_paused():  # the run's modules: most of what it loads (see startup.py)
        from scheduler.notify import check_url
        from scheduler.operator import parse_budget, parse_deadline, parse_on_stuck
        from scheduler.runner import RunOptions
        from scheduler.runner import run as run_batch
        from workers.logs import setup_logging

    check_sidecar_flags(captions_as_sidecar, overwrite_sidecars)
    budget = parse_budget(budget_usd)
    deadline_at = parse_deadline(deadline, time.time()) if deadline is not None else None
    mode = service_mode_of(service_mode)
    settings = load_settings(rpm=rpm, on_ambiguous=on_ambiguous)
    if settings.on_ambiguous not in tuple(AmbiguousPolicy):
        raise ConfigError("--on-ambiguous must be reconcile, retry or fail")
    run_dir = run_folder()
    run_dir.mkdir(parents=True, exist_ok=True)
    notify_url = check_url(notify) if notify is not None else None
    setup_logging("INFO", [*secrets_of(settings), *([notify_url] if notify_url else [])],
                  log_file=run_dir / "run.log")
    opts = RunOptions(manifest=manifest, output=output, model=model, task_type=task_type,
                      concurrency=concurrency, max_attempts=max_attempts, run_dir=run_dir,
                      budget_usd=budget, deadline_at=deadline_at,
                      strict=strict or settings.strict, service_mode=mode,
                      on_stuck=parse_on_stuck(on_stuck), all_batches=all_batches,
                      command=shlex.join(["piapi-bulk", *sys.argv[1:]]), reuse=reuse,
                      fields=parse_fields(set_fields), captions_as_sidecar=captions_as_sidecar,
                      overwrite_sidecars=overwrite_sidecars, notify=notify_url, download=download)
    raise typer.Exit(run_batch(settings, opts, Console(stderr=False)))


@app.command("estimate")
def estimate_cmd(
    manifest: ManifestArg,
    model: ModelOpt = None, task_type: TaskTypeOpt = None, set_fields: SetOpt = None,
    strict: StrictOpt = False, service_mode: ServiceModeOpt = None,
    concurrency: ConcurrencyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate every row and print, per model and task type, the rows, invalid rows, the
    cost and the wall time, with the account's balance; creates nothing."""
    from scheduler.estimate.command import EstimateOptions, estimate
    from scheduler.estimate.view import show, to_json
    from workers.logs import setup_logging

    settings = load_settings()
    setup_logging("WARNING", secrets_of(settings))
    opts = EstimateOptions(manifest, model, task_type, strict or settings.strict,
                           service_mode_of(service_mode), concurrency, parse_fields(set_fields))
    found = estimate(settings, opts)
    if as_json:
        typer.echo(json.dumps(to_json(found), indent=2))
    else:
        console = Console()
        show(found, console if console.is_terminal else Console(width=120))


@app.command()
def submit(
    manifest: ManifestArg,
    model: ModelOpt = None, task_type: TaskTypeOpt = None, set_fields: SetOpt = None,
    strict: StrictOpt = False, service_mode: ServiceModeOpt = None,
    concurrency: ConcurrencyOpt = None, max_attempts: MaxAttemptsOpt = None,
    budget_usd: BudgetOpt = None, deadline: DeadlineOpt = None,
    on_stuck: OnStuckOpt = None, reuse: ReuseOpt = None,
) -> None:
    """Ingest a manifest as a batch for the running fleet; prints the batch id last."""
    import time

    from scheduler.ingest import ingest
    from scheduler.operator import parse_budget, parse_deadline, parse_on_stuck, set_limits
    from scheduler.options import option_conflict, unchecked_lines
    from scheduler.preflight import preflight, require_manifest
    from scheduler.status import batch_status
    from workers.transitions.reuse import reuse_completed

    budget = parse_budget(budget_usd)
    deadline_at = parse_deadline(deadline, time.time()) if deadline is not None else None
    mode = service_mode_of(service_mode)
    stuck_policy = parse_on_stuck(on_stuck)
    settings = load_settings()
    strict = strict or settings.strict
    fields = parse_fields(set_fields)
    require_manifest(manifest)
    preflight(manifest, model, task_type, strict, tuple(fields))  # before any batch exists
    engine = database(settings)
    result = ingest(engine, manifest, default_model=model, default_task_type=task_type,
                    default_service_mode=mode, strict=strict, fields=fields,
                    max_attempts=max_attempts,
                    default_max_attempts=settings.max_attempts, concurrency=concurrency)
    problem = option_conflict(engine, result, strict=strict, service_mode=mode)
    if problem:
        raise ConfigError(problem)
    set_limits(engine, result.batch_id, budget_usd=budget, deadline_at=deadline_at,
               on_stuck=stuck_policy, reuse=reuse)
    reused = reuse_completed(engine, result.batch_id, time.time(), settings.reuse_window_s)
    err = Console(stderr=True)
    err.print(f"{'new' if result.created else 'existing'} batch: {result.total} rows, "
              f"{result.invalid} invalid", highlight=False)
    stored = batch_status(engine, result.batch_id)
    for control in stored.controls() if stored is not None else ():  # now in effect
        err.print(f"  {control}", highlight=False, markup=False, soft_wrap=True)
    if reused:
        err.print(f"{reused} rows reused (a twin in another batch completed)", highlight=False)
    for text in (*result.notes, *unchecked_lines(result)):
        err.print(text, highlight=False, markup=False, soft_wrap=True)
    for line, key, reason in result.invalid_rows[:20]:
        err.print(f"  line {line} (id {key}): {reason}", highlight=False, markup=False,
                  soft_wrap=True)
    typer.echo(result.batch_id)

