"""The options and arguments more than one command takes, each declared once (its flag,
its help text) as an `Annotated` type the commands' signatures name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# what the rows are
ManifestArg = Annotated[Path, typer.Argument(help=(
    "CSV or JSONL manifest (may be gzipped), or a folder of images."
))]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Model for rows without one.")]
TaskTypeOpt = Annotated[str | None, typer.Option("--task-type", help=(
    "Task type for rows without one."
))]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=(
    "An input field for every row (repeatable; a row's own value wins; for a folder the only "
    "source)."
))]
ServiceModeOpt = Annotated[str | None, typer.Option("--service-mode", help=(
    "config.service_mode for rows without their own service_mode: public (pay as you go), "
    "private (your own connected accounts, HYA) or empty (the workspace default)."
))]
StrictOpt = Annotated[bool, typer.Option("--strict", help=(
    "Rows for models not in piapi-bulk's catalogue are invalid instead of sent unchecked "
    "(also PIAPI_BULK_STRICT=1)."
))]

# how they run (each kept with the batch)
ConcurrencyOpt = Annotated[int | None, typer.Option("--concurrency", min=1, help=(
    "Most tasks in flight (default: the account's own limit)."
))]
MaxAttemptsOpt = Annotated[int | None, typer.Option("--max-attempts", min=1, help=(
    "PiAPI tasks per row at most, when tasks fail (default 3)."
))]
BudgetOpt = Annotated[float | None, typer.Option("--budget-usd", help=(
    "Stop creating tasks before the batch's cost would pass this many US dollars (kept with "
    "the batch; give it again to change it)."
))]
DeadlineOpt = Annotated[str | None, typer.Option("--deadline", help=(
    "Start no task after this: an ISO-8601 time (local time unless it has an offset) or a "
    "duration from now such as 30m, 8h, 1h30m."
))]
OnStuckOpt = Annotated[str | None, typer.Option("--on-stuck", help=(
    "A task still running far past its kind's expected duration (PiAPI cannot cancel it): "
    "retry (default; abandon it and create a new one within --max-attempts), fail (the row "
    "fails, kind stuck) or wait (keep waiting). Kept with the batch. Stuck pending tasks are "
    "always cancelled and replaced."
))]
ReuseOpt = Annotated[bool | None, typer.Option("--reuse/--no-reuse", help=(
    "A row whose twin (same id, model, task type and input, in any batch) completed within "
    "PIAPI_BULK_REUSE_WINDOW_S takes its task instead of paying again (default: on). Kept "
    "with the batch."
))]

# what is written
SidecarOpt = Annotated[bool, typer.Option("--captions-as-sidecar", help=(
    "Write each completed caption of a local image next to it as <image name>.txt (with the "
    "results file)."
))]
OverwriteSidecarsOpt = Annotated[bool, typer.Option("--overwrite-sidecars", help=(
    "With --captions-as-sidecar: also write over a .txt that holds other text (edited by "
    "hand, another tool's); by default it is left as it is and counted."
))]

# the other commands
BatchArg = Annotated[str, typer.Argument(help="Batch id.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
LogLevelOpt = Annotated[str, typer.Option("--loglevel")]
PortOpt = Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")]
