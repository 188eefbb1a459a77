"""The long-running commands: worker, dispatcher, webhook, web, flower (and the emulator's,
registered from `emulator.cli`)."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from scheduler.cli.app import (
    app,
    database,
    fleet_redis_url,
    load_settings,
    require_free_port,
    run_folder,
    secrets_of,
)
from scheduler.cli.options import ConcurrencyOpt, LogLevelOpt, PortOpt
from scheduler.cli.startup import collector_paused
from workers.settings import ConfigError

if TYPE_CHECKING:
    from workers.fleet import Fleet

logger = logging.getLogger(__name__)
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@contextmanager
def exit_without_collecting() -> Iterator[None]:
    """Once a long-running command is done, its objects are frozen (`gc.freeze`): the
    interpreter's last collection at exit then skips them. That collection took seconds of
    every worker's and dispatcher's stop (measured: the process, told to stop, had finished
    its work and was in the collector), and so of the end of every `run`; nothing is
    left to collect that exit would not free anyway."""
    try:
        yield
    finally:
        gc.freeze()


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1,
                                                    help="Celery threads (default 4).")] = None,
    pool: Annotated[str | None, typer.Option("--pool", help="threads | prefork | solo")] = None,
    loglevel: LogLevelOpt = "INFO",
    name_prefix: Annotated[str, typer.Option(
        "--name-prefix", help="The worker's Celery name is PREFIX-<pid>@<host>.")]
    = "piapi-bulk",
) -> None:
    """A Celery worker that creates and polls PiAPI tasks."""
    with collector_paused():
        from celery.utils.nodenames import default_nodename, host_format

        from workers.app import POLL_QUEUE, SUBMIT_QUEUE, create_celery
        from workers.logs import setup_logging
        from workers.runtime import lazy_context
        from workers.tasks import register_tasks

        settings = load_settings(worker_concurrency=concurrency, worker_pool=pool)
        settings.require_api_key()
        setup_logging(loglevel, secrets_of(settings))
        celery_app = create_celery(settings.require_redis_url())
        register_tasks(celery_app, lazy_context(settings))
        # The worker itself, not `celery worker`'s command line (`worker_main`): that loads
        # every `celery` subcommand and plugin (Flower's among them, with tornado and
        # prompt_toolkit: 370 modules) only to start this.
        celery_worker = celery_app.Worker(
            hostname=host_format(default_nodename(f"{name_prefix}-{os.getpid()}@%h")),
            pool_cls=settings.worker_pool, concurrency=settings.worker_concurrency,
            queues=[SUBMIT_QUEUE, POLL_QUEUE], task_events=True,
            without_mingle=True, without_gossip=True, loglevel=loglevel,
        )
    with exit_without_collecting():
        celery_worker.start()
    if celery_worker.exitcode:
        raise typer.Exit(celery_worker.exitcode)


@app.command()
def dispatcher(
    concurrency: ConcurrencyOpt = None,
    loglevel: LogLevelOpt = "INFO",
    scoped: Annotated[bool, typer.Option(
        "--scoped", help="Create tasks only for batches a `piapi-bulk run` claimed "
        "(what run starts); without it, every open batch is served.")] = False,
) -> None:
    """Feed due work to the workers (one active at a time; others stand by)."""
    with collector_paused():
        import redis

        from scheduler.dispatcher import Dispatcher
        from workers.app import create_celery
        from workers.fleet import Fleet
        from workers.logs import setup_logging
        from workers.runtime import build_budget, build_client

        settings = load_settings(concurrency=concurrency)
        setup_logging(loglevel, secrets_of(settings))
        client = build_client(settings)
        engine = database(settings)
        redis_url = settings.require_redis_url()
        stop = threading.Event()
        redis_client = redis.Redis.from_url(redis_url)  # thread-safe: a connection pool
        waker = Fleet(redis_client)

        def on_signal(*_: object) -> None:
            # The leader may be blocked reading Redis (`Fleet.wait`) for up to a pass interval:
            # wake it, from a thread of its own (no I/O in a signal handler), so it stops now.
            stop.set()
            threading.Thread(target=wake_quietly, args=(waker,), daemon=True).start()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        d = Dispatcher(
            engine, redis_client, create_celery(redis_url),
            lease_s=settings.lease_s, concurrency=settings.concurrency,
            account_limit=lambda: client.account_info().max_concurrent_tasks,
            # With webhooks, PiAPI says itself when a task ends: reading its in-flight count
            # as well would cost more GETs than it saves (measured: 2.4 GETs a task vs 1.0).
            account=(client if settings.active_tasks == "auto" and not settings.webhook_url
                     else None),
            rpm=settings.rpm, account_poll_min_s=settings.account_poll_min_s,
            budget=build_budget(settings, redis_client, Fleet(redis_client)),
            interval_s=settings.dispatch_interval_s, batch_size=settings.batch_size,
            on_ambiguous=settings.on_ambiguous, max_tries=settings.max_tries, scoped=scoped,
            reuse_window_s=settings.reuse_window_s, handoff=settings.handoff,
            # A test hook only (tests/integration/test_fencing.py): never set in production.
            pause_file=Path(pause) if (pause := os.environ.get("PIAPI_BULK_TEST_PAUSE_FILE"))
            else None,
        )
        if settings.dispatcher_stats is not None:
            from scheduler.passstats import PassStats

            d.on_pass = PassStats(engine, settings.dispatcher_stats).record
    logger.info("dispatcher %s starting (standby until it holds the lock)", d.token)
    with exit_without_collecting():
        d.run(stop)


def wake_quietly(fleet: Fleet) -> None:
    """Wake the leading dispatcher (`Fleet.wake`); nothing when Redis does not answer."""
    import redis

    with suppress(redis.RedisError):
        fleet.wake()


@app.command()
def webhook(
    host: Annotated[str, typer.Option("--host", help="Bind address.")] = "127.0.0.1",
    port: PortOpt = 8787,
    loglevel: LogLevelOpt = "INFO",
) -> None:
    """Receive PiAPI's webhooks (set PIAPI_BULK_WEBHOOK_URL to reach this at .../hooks);
    the same server as `web` (its page too, where allowed)."""
    _serve_web(host, port, loglevel, hooks=True)


@app.command()
def web(
    host: Annotated[str, typer.Option("--host", help="Bind address (another than loopback "
                                      "needs PIAPI_BULK_WEB_TOKEN or "
                                      "PIAPI_BULK_WEB_BASIC_AUTH).")] = "127.0.0.1",
    port: PortOpt = 8000,
    loglevel: LogLevelOpt = "INFO",
) -> None:
    """Serve the run page (batches, progress, cost, ETA, failures), its JSON at /api/batches
    and Prometheus /metrics; also the webhook receiver when webhooks are configured."""
    _serve_web(host, port, loglevel, hooks=False)


def _serve_web(host: str, port: int, loglevel: str, *, hooks: bool) -> None:
    from scheduler.web.serve import serve, web_secrets
    from workers.logs import setup_logging

    settings = load_settings()
    require_free_port(host, port)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    setup_logging(loglevel, [s for s in (secret, *web_secrets(settings), *secrets_of(settings))
                             if s])
    serve(settings, host, port, lambda: fleet_redis_url(settings), hooks=hooks)


@app.command()
def flower(
    port: PortOpt = 5555,
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
    require_free_port(address, port)
    target = flower_cmd.resolve(load_settings().redis_url, run_folder(), REDIS_URL_FILE)
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


def register_emulator() -> None:
    from emulator.cli import emulator_command

    app.command("emulator", help="A local PiAPI emulator (for tests, benchmarks and the demo).")(
        emulator_command
    )

