"""`piapi-bulk flower`: Flower on the fleet's Redis or on the run in progress here, as a child
this command supervises (stopped when that run ends, or on Ctrl-C).

Which Redis: `REDIS_URL` (a standing fleet), else the private Redis of the `run` in progress
in this directory (`run` writes its URL in the run folder). A run's Redis goes when the run
ends: Flower is then stopped, with one line, exit 0 (Flower alone would retry forever). A
standing fleet's Redis may restart (it keeps nothing on disk) and come back: Flower, like
the fleet, rides that out. The task list shows what an operator reads, a task's result
being its message's summary in row terms (`workers.work.summary`).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

import redis

from workers.settings import ConfigError

TASK_COLUMNS = "name,args,result,state,received,runtime"
"""Flower's task list columns (its default shows uuid and worker, not args and result)."""
PING_EVERY_S = 1.0
GONE_AFTER_S = 2.0
"""A run's Redis that has not answered for this long is gone: the run ended."""
STOP_WAIT_S = 5.0
"""How long Flower is given to stop on SIGTERM before it is killed."""
LOG_NAME = "flower.log"
"""Flower's own log, in the run folder, when it watches a run."""
NO_RUN = ("no run in progress here: start one with `piapi-bulk run MANIFEST` "
          "(or set REDIS_URL for a standing fleet)")


@dataclass(frozen=True)
class Target:
    """The Redis Flower watches, and whether it is a run's own (which ends with the run)."""

    redis_url: str
    run_dir: Path | None = None
    """The folder of the run whose Redis this is (None: a standing fleet's REDIS_URL)."""


def resolve(redis_url: str | None, run_dir: Path, url_file: str) -> Target:
    """REDIS_URL, else the run in progress in `run_dir` (its `url_file` names a Redis that
    answers); neither: a one-line usage error."""
    if redis_url:
        return Target(redis_url)
    path = run_dir / url_file
    url = path.read_text().strip() if path.is_file() else ""
    if not url or not answers(url):
        raise ConfigError(NO_RUN)  # no file, or one a killed run left behind
    return Target(url, run_dir)


def answers(url: str) -> bool:
    """True when the Redis at `url` answers a PING within a second."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def flower_argv(celery_bin: str, redis_url: str, address: str, port: int,
                basic_auth: str | None) -> list[str]:
    """The `celery flower` command line."""
    argv = [celery_bin, "--broker", redis_url, "flower", f"--address={address}",
            f"--port={port}", f"--tasks_columns={TASK_COLUMNS}"]
    if basic_auth:
        argv.append(f"--basic_auth={basic_auth}")
    return argv


def where(url: str) -> str:
    """A Redis URL without its password, for a message."""
    head, sep, tail = url.rpartition("@")
    return f"{head.split('://')[0]}://…@{tail}" if sep else url


def supervise(argv: list[str], env: dict[str, str], target: Target,
              say: Callable[[str], None]) -> int:
    """Run Flower until it exits, the run's Redis goes (exit 0) or Ctrl-C/SIGTERM (exit 0)."""
    stop = Asked()

    def asked(signum: int, frame: FrameType | None) -> None:
        stop.yes = True  # only a flag: a handler taking a lock could wait on itself

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, asked)
    log: IO[bytes] | None = None
    if target.run_dir is not None:
        log = open(target.run_dir / LOG_NAME, "ab")  # noqa: SIM115  closed below
    try:
        # Its own session: Ctrl-C reaches this process only, which stops Flower once.
        child = subprocess.Popen(argv, env=env, start_new_session=True, stdout=log,
                                 stderr=subprocess.STDOUT if log else None)
        return _watch(child, target, stop, say)
    finally:
        if log is not None:
            log.close()


class Asked:
    """Whether Ctrl-C or SIGTERM asked Flower to stop (set by the signal handler)."""

    def __init__(self) -> None:
        self.yes = False


def _watch(child: subprocess.Popen[bytes], target: Target, stop: Asked,
           say: Callable[[str], None]) -> int:
    gone_since: float | None = None
    while not stop.yes:
        time.sleep(PING_EVERY_S)
        if stop.yes:
            break
        code = child.poll()
        if code is not None:
            say(f"Flower exited with code {code}" + _log_hint(target))
            return code or 1
        if target.run_dir is None:
            continue
        now = time.monotonic()
        if answers(target.redis_url):
            gone_since = None
            continue
        gone_since = gone_since if gone_since is not None else now
        if now - gone_since >= GONE_AFTER_S:
            end(child)
            say(f"the Redis at {where(target.redis_url)} went away (the run ended): "
                "Flower stopped")
            return 0
    end(child)
    say("Flower stopped")
    return 0


def _log_hint(target: Target) -> str:
    return f" (its log: {target.run_dir / LOG_NAME})" if target.run_dir else ""


def end(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if Flower is still there after `STOP_WAIT_S`."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(STOP_WAIT_S)
