"""Child processes that `run` owns: a private redis-server, a dispatcher and a worker,
started only when no fleet already serves the Redis (`ensure_services`), and supervised.

Every child gets PR_SET_PDEATHSIG, so if `run` itself is killed (even with SIGKILL) its
children stop too instead of running on unattended.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import redis

from scheduler.leader import break_lock
from workers.app import create_celery
from workers.keys import LOCK_KEY, SCOPED_SUFFIX
from workers.settings import ConfigError, Settings

logger = logging.getLogger(__name__)


class Process(Protocol):
    """What `start_redis_server` needs of the process it is handed."""

    def alive(self) -> bool: ...

    def stop(self, timeout_s: float = 20.0) -> None: ...


P = TypeVar("P", bound=Process)

PR_SET_PDEATHSIG = 1
MAX_RESTARTS = 5
"""A child that dies more often than this in one run ends the run instead."""
REDIS_START_S = 15.0
"""How long a private redis-server may take to answer its first PING."""
RUN_WORKER_PREFIX = "piapi-bulk-run-"
"""Names the Celery workers `run` starts (`piapi-bulk-run-<pid>@host`), so that another run
on the same Redis does not count on them staying."""


def die_with_parent() -> None:  # pragma: no cover  (runs in the child, before exec)
    """As a Popen `preexec_fn`: the child gets SIGTERM when its parent dies."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A supervised child process with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path,
                 after_death: Callable[[int], None] | None = None):
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.after_death = after_death
        """Called with the process id once the process is dead and reaped, before it is
        started again (the dispatcher's: give up the lock it may still hold)."""

    def start(self) -> Child:
        """Start (or restart) the process."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, preexec_fn=die_with_parent,
            )
        logger.info("started %s (pid %s), log %s", self.name, self.proc.pid, self.log_path)
        return self

    @property
    def pid(self) -> int | None:
        """The current process id."""
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def revive(self) -> bool:
        """Restart a dead child; False when it has died too often."""
        if self.alive():
            return True
        if self.restarts >= MAX_RESTARTS:
            return False
        self.restarts += 1
        code = self.proc.returncode if self.proc else None
        logger.warning("%s exited (%s); restarting (%d/%d)", self.name, code, self.restarts,
                       MAX_RESTARTS)
        self._dead()
        self.start()
        return True

    def _dead(self) -> None:
        if self.after_death is not None and self.proc is not None:
            self.after_death(self.proc.pid)

    def kill(self, timeout_s: float = 20.0) -> None:
        """SIGKILL (works on a stopped or wedged process too) and reap."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(timeout=timeout_s)
        self._dead()

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`."""
        self.terminate()
        self.reap(timeout_s)

    def terminate(self) -> None:
        """SIGTERM, without waiting (`reap` waits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def reap(self, timeout_s: float = 20.0) -> None:
        """Wait for a child told to stop, SIGKILL after `timeout_s`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs; killing it", self.name, timeout_s)
            self.proc.kill()
            self.proc.wait(timeout=timeout_s)


def redis_server_argv(port: int, workdir: Path, bind: str = "127.0.0.1") -> list[str]:
    """argv of a redis-server on `bind`:`port` (default loopback) that keeps nothing on
    disk, so one started again on the same port comes back empty; ConfigError when
    redis-server is missing."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            "redis-server is not installed; install it (apt-get install redis-server, or "
            "`make install-redis`), or point REDIS_URL at a running Redis for `run`"
        )
    return [binary, "--port", str(port), "--bind", bind, "--save", "",
            "--appendonly", "no", "--dir", str(workdir)]


def start_redis_server(workdir: Path, start: Callable[[list[str], Path], P],
                       port: int | None = None) -> tuple[str, P]:
    """A private redis-server on a loopback port (default: a free one), started by
    `start(argv, log_path)` as the caller's kind of process; its URL once it answers.

    `run` supervises it as a `Child`; the benchmark and chaos harnesses as their own
    processes (`bench.procs.start_redis`), the tests through `start_private_redis`."""
    port = port or free_port()
    log_path = workdir / "redis.log"
    proc = start(redis_server_argv(port, workdir), log_path)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + REDIS_START_S
    try:
        while not _answers(client):
            if not proc.alive() or time.monotonic() > deadline:
                proc.stop()
                raise ConfigError(f"private redis-server did not start; see {log_path}")
            time.sleep(0.05)
    finally:
        client.close()
    return url, proc


def start_private_redis(workdir: Path) -> tuple[str, Child]:
    """A redis-server on a free loopback port that keeps nothing on disk, as a `Child`."""
    return start_redis_server(
        workdir, lambda argv, log_path: Child("redis-server", argv, dict(os.environ),
                                              log_path).start())


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def cli_argv(*args: str) -> list[str]:
    """argv running this same piapi-bulk installation with `args`."""
    return [sys.executable, "-m", "scheduler.cli", *args]


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
        """Stop every child: the workers and the dispatcher together (each takes seconds to
        shut down: one after the other, the run's end waited for the sum), then Redis."""
        fleet = [c for c in reversed(self.children) if c.name != "redis-server"]
        for child in fleet:
            child.terminate()
        for child in fleet:
            child.reap()
        for child in reversed(self.children):
            child.stop()  # Redis; the others are gone already


def _child_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["REDIS_URL"] = settings.require_redis_url()
    env["DATABASE_URL"] = settings.database_url
    env["PIAPI_BASE_URL"] = settings.base_url
    env["PIAPI_UPLOAD_URL"] = settings.upload_url
    env["PIAPI_RPM"] = str(settings.rpm)
    env["PIAPI_BULK_ON_AMBIGUOUS"] = settings.on_ambiguous
    return env


def standing_dispatcher(redis_url: str) -> bool:
    """True when a standing fleet's dispatcher (not a run's scoped one) leads on this Redis:
    it serves every open batch in the database."""
    client = redis.Redis.from_url(redis_url)
    try:
        holder = client.get(LOCK_KEY)
    finally:
        client.close()
    return holder is not None and not _decoded(holder).endswith(SCOPED_SUFFIX)


def ensure_services(settings: Settings, services: Services, log_dir: Path, *,
                    worker_threads: int | None, concurrency: int | None) -> None:
    """Start a dispatcher and a worker unless some are already serving this Redis."""
    url = settings.require_redis_url()
    # A standing fleet's dispatcher serves every open batch, this one included; another
    # run's dispatcher serves only the batches claimed, so this run starts its own, which
    # stands by (and serves this run's claims meanwhile through the leader) and takes over
    # when that run ends.
    has_dispatcher = standing_dispatcher(url)
    app = create_celery(url)
    try:
        replies = app.control.ping(timeout=1.0) or []
    finally:
        app.close()
    # Workers another run started stop when that run ends: only a standing fleet's count.
    workers = [name for reply in replies for name in reply
               if not name.startswith(RUN_WORKER_PREFIX)]
    if workers:
        logger.info("%d worker(s) already running on %s", len(workers), url)
    if has_dispatcher:
        logger.info("a dispatcher is already running on %s", url)
    start_services(settings, services, log_dir, worker_threads=worker_threads,
                   concurrency=concurrency, worker=not workers, dispatcher=not has_dispatcher)


def start_services(settings: Settings, services: Services, log_dir: Path, *,
                   worker_threads: int | None, concurrency: int | None, worker: bool = True,
                   dispatcher: bool = True) -> None:
    """Start this run's worker and scoped dispatcher (either may be left out)."""
    env = _child_env(settings)
    if worker:
        argv = cli_argv("worker", "--name-prefix", RUN_WORKER_PREFIX.rstrip("-"))
        if worker_threads:
            argv += ["--concurrency", str(worker_threads)]
        services.add(Child("worker", argv, env, log_dir / "worker.log"))
    if dispatcher:
        argv = cli_argv("dispatcher", "--scoped")
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        url = settings.require_redis_url()
        services.add(Child("dispatcher", argv, env, log_dir / "dispatcher.log",
                           after_death=lambda pid: release_dead_leader(url, pid)))


def release_dead_leader(redis_url: str, pid: int) -> None:
    """Free the leader lock if our dispatcher `pid`, dead, still holds it (`leader.break_lock`),
    so its replacement leads at once rather than after the lock's TTL; nothing when Redis
    does not answer (the lock then expires by itself)."""
    client = redis.Redis.from_url(redis_url)
    try:
        if break_lock(client, pid):
            logger.info("released the leader lock of the dead dispatcher (pid %d)", pid)
    except redis.RedisError as exc:
        logger.info("could not release the dead dispatcher's lock (%s); it expires by itself",
                    exc)
    finally:
        client.close()


def _decoded(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
