"""The `emulator` command: build an EmulatorConfig from options and serve it with uvicorn."""

from __future__ import annotations

import logging
import socket

import typer
import uvicorn
from pydantic import ValidationError

from emulator.app import create_app
from emulator.config import EmulatorConfig, parse_duration_override, parse_latency_ms

LISTEN_BACKLOG = 2048
GRACEFUL_SHUTDOWN_S = 2
"""Hung creates must not hold a stopping emulator for their full hang_s."""


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening before the announcement makes it true: early clients wait in the backlog.
    sock.listen(LISTEN_BACKLOG)
    return sock


def _durations(overrides: list[str]) -> dict[str, tuple[float, float]]:
    try:
        return dict(parse_duration_override(text) for text in overrides)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--duration") from exc


def _latency(option: str, text: str | None) -> tuple[float, float] | None:
    """`MEAN[:JITTER]` ms as seconds; a bad value ends the command with one line, exit 2."""
    if text is None:
        return None
    try:
        return parse_latency_ms(text)
    except ValueError as exc:
        typer.echo(f"emulator: {option}: {exc}", err=True)
        raise typer.Exit(2) from exc


def emulator_command(
    port: int = typer.Option(8080, help="TCP port; 0 picks a free one (printed)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    time_scale: float = typer.Option(1.0, help="Multiplier on task durations (0.01 = 100x)."),
    concurrency: int = typer.Option(10, help="Account limit on pending+processing tasks."),
    over_limit: str = typer.Option("queue", help="Over the limit: 'queue' or 'refuse' (429)."),
    rpm: float = typer.Option(0.0, help="Request budget per minute over all API calls; 0 = off."),
    rpm_burst_s: float = typer.Option(1.0, help="Token bucket depth, in seconds of rate."),
    seed: int | None = typer.Option(None, help="Seed for reproducible runs."),
    api_key: str = typer.Option(
        "emulator-key", envvar="PIAPI_API_KEY", show_default=False,
        help="Expected x-api-key (default: env PIAPI_API_KEY, else 'emulator-key').",
    ),
    duration: list[str] = typer.Option(  # noqa: B008 - typer's idiom
        [], help="Per-family duration range, e.g. wan=120:480 (repeatable)."
    ),
    fault_5xx: float = typer.Option(0.0, help="Probability of a 500/502/503 answer."),
    fault_429: float = typer.Option(0.0, help="Probability of a spurious 429."),
    fault_ambiguous: float = typer.Option(0.0, help="Create then drop the connection."),
    fault_hang: float = typer.Option(0.0, help="Create then answer only after --hang-s."),
    fault_lost: float = typer.Option(0.0, help="Drop a create's connection, creating nothing."),
    hang_s: float = typer.Option(60.0, help="Seconds a hung create waits."),
    fault_stuck: float = typer.Option(0.0, help="Probability a task never progresses."),
    fault_stuck_processing: float = typer.Option(
        0.0, help="Probability a task starts processing and never ends on its own."),
    stuck_timeout_factor: float = typer.Option(
        20.0, help="Stuck tasks fail 'task timeout' after N x duration; 0 = never."),
    fault_fail: float = typer.Option(0.0, help="Probability a task fails transiently."),
    fault_fail_credits: float = typer.Option(
        0.0, help="Probability a task fails \"doesn't have enough credits\" (provider pool)."),
    create_latency_s: float = typer.Option(
        0.0, help="Server seconds between creating a task and answering (not network)."),
    latency_ms: str = typer.Option(
        "0", metavar="MEAN[:JITTER]", help="Network delay of every API request in real ms "
        "(not time-scaled), uniform in [MEAN-JITTER, MEAN+JITTER] clamped at 0, seeded by "
        "--seed; half before handling, half before the answer. Not the /_emulator/ API."),
    create_latency_ms: str | None = typer.Option(
        None, metavar="MEAN[:JITTER]", help="The same for creates (POST /api/v1/task), "
        "instead of --latency-ms (default: --latency-ms)."),
    webhook_loss: float = typer.Option(0.0, help="Probability a webhook is dropped."),
    webhook_duplicate: float = typer.Option(0.0, help="Probability a webhook is sent twice."),
    history_shape: str = typer.Option(
        "documented", help="History rows: 'documented' (no input) or 'full' (task data)."),
    history_model_filter: str = typer.Option(
        "family", help="History `model` filter takes: 'family' (flux, wan, mj...), 'exact' "
        "(model names) or 'both'."),
    history_lag_s: float = typer.Option(
        3.0, help="Seconds before a new task shows in history, scaled by --time-scale."),
    history_lists_pending: bool = typer.Option(
        True, help="List pending tasks in the history (--no-...: leave them out)."),
    history_fault_rate: float = typer.Option(0.0, help="Probability history answers 500."),
    active_tasks: bool = typer.Option(True, help="Serve /account/active_tasks (else 404)."),
    active_tasks_families: str = typer.Option(
        "documented", help="active_tasks families: 'documented' (flux, kling, luma, "
        "midjourney, music-s, music-u) or 'all' (every emulated family)."),
    unknown_task_status: int = typer.Option(404, help="HTTP status for unknown task ids."),
    cancel_status: str = typer.Option("failed", help="Status after cancel: failed|cancelled."),
    balance_points: int = typer.Option(10**12, help="Starting wallet (1e7 points = $1)."),
    upload_plan: str = typer.Option(
        "creator", help="Plan for uploads: creator, or free (403 Insufficient plan level)."),
    upload_fail_first: int = typer.Option(0, help="Answer the first N uploads 503."),
    log_level: str = typer.Option("warning", help="Log level (debug, info, warning...)."),
) -> None:
    """Run the PiAPI emulator on loopback until interrupted."""
    network_latency_s = _latency("--latency-ms", latency_ms) or (0.0, 0.0)
    network_create_latency_s = _latency("--create-latency-ms", create_latency_ms)
    try:
        config = EmulatorConfig(
            port=port, host=host, time_scale=time_scale, concurrency=concurrency,
            over_limit=over_limit, rpm=rpm, rpm_burst_s=rpm_burst_s, seed=seed,
            api_key=api_key, durations_s=_durations(duration), fault_5xx=fault_5xx,
            fault_429=fault_429, fault_ambiguous=fault_ambiguous, fault_hang=fault_hang,
            fault_lost=fault_lost,
            hang_s=hang_s, fault_stuck=fault_stuck, stuck_timeout_factor=stuck_timeout_factor,
            fault_stuck_processing=fault_stuck_processing, fault_fail=fault_fail,
            fault_fail_credits=fault_fail_credits, create_latency_s=create_latency_s,
            network_latency_s=network_latency_s,
            network_create_latency_s=network_create_latency_s,
            webhook_loss=webhook_loss, webhook_duplicate=webhook_duplicate,
            history_shape=history_shape, history_model_filter=history_model_filter,
            history_lag_s=history_lag_s, history_lists_pending=history_lists_pending,
            history_fault_rate=history_fault_rate, active_tasks_enabled=active_tasks,
            active_tasks_families=active_tasks_families,
            unknown_task_status=unknown_task_status, cancel_status=cancel_status,
            balance_points=balance_points, upload_plan=upload_plan,
            upload_fail_first=upload_fail_first, log_level=log_level,
        )
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc
    serve(config)


def serve(config: EmulatorConfig) -> None:
    """Bind, announce the address on stdout, and serve until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        sock = _bind(config.host, config.port)
    except OSError as exc:  # one line, as for the other usage errors
        typer.echo(f"emulator: cannot listen on {config.host}:{config.port}: "
                   f"{exc.strerror or exc} (give another --port)", err=True)
        raise typer.Exit(2) from exc
    config.port = sock.getsockname()[1]
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(
        app, log_level=config.log_level, access_log=False, loop="auto", http="auto",
        lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, backlog=LISTEN_BACKLOG,
        proxy_headers=False,  # nothing proxies loopback traffic; saves work per request
    ))
    typer.echo(
        f"emulator listening on http://{config.host}:{config.port} "
        f"(time scale {config.time_scale:g}, concurrency {config.concurrency}, "
        f"over-limit {config.over_limit})"
    )
    server.run(sockets=[sock])
