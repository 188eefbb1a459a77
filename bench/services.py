"""piapi-bulk's own processes as a run starts them: ingest, workers, dispatcher, webhooks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

from bench.procs import BenchError, Proc, Stack, port_answers, source, wait_for
from scheduler.services import cli_argv

WORKER_READY_TIMEOUT_S = 120.0
INGEST_ROLE = "ingest"


def our_env(*, api_key: str, base_url: str, database_url: str, redis_url: str | None,
            run_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of every piapi-bulk process of a run.

    Inherited PIAPI_*, REDIS_URL and DATABASE_URL are dropped, so a developer's shell never
    changes what is measured: only piapi-bulk's defaults and the run's `extra` apply.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIAPI_") and k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({
        "PIAPI_API_KEY": api_key,
        "PIAPI_BASE_URL": base_url,
        "DATABASE_URL": database_url,
        "PIAPI_BULK_RUN_DIR": str(run_dir),
        "PYTHONPATH": str(source()),
    })
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


@dataclass
class Ingest:
    """One `piapi-bulk submit`: how long it took and what it used."""

    seconds: float
    exit_code: int | None
    cpu_s: float
    maxrss_mb: float
    proc: Proc


def ingest(stack: Stack, env: dict[str, str], manifest: Path, logs: Path, timeout_s: float,
           args: tuple[str, ...] = (), watch: Callable[[Proc], None] | None = None) -> Ingest:
    """Run `piapi-bulk submit MANIFEST ARGS` to completion (bounded) and measure it."""
    proc = stack.add(Proc("submit", INGEST_ROLE, cli_argv("submit", str(manifest), *args), env,
                          logs / "submit.log"))
    if watch is not None:
        watch(proc)
    code = proc.wait(timeout_s)
    seconds = time.monotonic() - proc.started_mono
    if code is None:
        proc.stop(5)
        raise BenchError(f"submit did not finish within {timeout_s:.0f}s")
    if code != 0:
        raise BenchError(f"submit exited {code}:\n{proc.log_tail()}")
    usage = proc.usage
    return Ingest(seconds, code, usage.cpu_s if usage else 0.0,
                  usage.maxrss_mb if usage else 0.0, proc)


def start_workers(stack: Stack, env: dict[str, str], logs: Path, count: int,
                  threads: int) -> list[Proc]:
    """`count` worker processes of `threads` threads each (not yet known to be ready)."""
    return [stack.add(Proc(f"worker-{i}", "worker",
                           cli_argv("worker", "--concurrency", str(threads)), env,
                           logs / f"worker-{i}.log"))
            for i in range(count)]


def wait_workers_ready(redis_url: str, workers: list[Proc]) -> float:
    """Block until every worker answers a Celery ping; seconds it took."""
    app = Celery("bench", broker=redis_url, set_as_current=False)
    started = time.monotonic()

    def ready() -> bool:
        for proc in workers:
            if not proc.alive():
                raise BenchError(f"{proc.name} exited {proc.returncode}:\n{proc.log_tail()}")
        return len(app.control.ping(timeout=0.5) or []) >= len(workers)

    try:
        wait_for(ready, WORKER_READY_TIMEOUT_S, "the workers to answer a ping", interval_s=0.2)
    finally:
        app.close()
    return time.monotonic() - started


def start_dispatcher(stack: Stack, env: dict[str, str], logs: Path, concurrency: int) -> Proc:
    """The dispatcher, told the account's concurrency explicitly."""
    return stack.add(Proc("dispatcher", "dispatcher",
                          cli_argv("dispatcher", "--concurrency", str(concurrency)), env,
                          logs / "dispatcher.log"))


def webhook_url(port: int) -> str:
    """The PIAPI_BULK_WEBHOOK_URL for a receiver on `port`."""
    return f"http://127.0.0.1:{port}/hooks"


def start_webhook_receiver(stack: Stack, env: dict[str, str], logs: Path, port: int) -> Proc:
    """`piapi-bulk webhook --port PORT`, once it listens."""
    proc = stack.add(Proc("webhook", "webhook", cli_argv("webhook", "--port", str(port)), env,
                          logs / "webhook.log"))

    def up() -> bool:
        if not proc.alive():
            raise BenchError(f"webhook receiver exited:\n{proc.log_tail()}")
        return port_answers(port)

    wait_for(up, 60, "the webhook receiver to listen", interval_s=0.1)
    return proc
