"""Child processes that `run` owns: a private redis-server, a dispatcher and a worker.

Every child gets PR_SET_PDEATHSIG, so if `run` itself is killed (even with SIGKILL) its
children stop too instead of running on unattended.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis

from workers.settings import ConfigError

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
MAX_RESTARTS = 5
"""A child that dies more often than this in one run ends the run instead."""


def _die_with_parent() -> None:  # pragma: no cover  (runs in the child, before exec)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A supervised child process with its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        """Start (or restart) the process."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, preexec_fn=_die_with_parent,
            )
        logger.info("started %s (pid %s), log %s", self.name, self.proc.pid, self.log_path)

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
        self.start()
        return True

    def kill(self, timeout_s: float = 20.0) -> None:
        """SIGKILL (works on a stopped or wedged process too) and reap."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.kill()
        self.proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs; killing it", self.name, timeout_s)
            self.proc.kill()
            self.proc.wait(timeout=timeout_s)


def start_private_redis(run_dir: Path) -> tuple[str, Child]:
    """A redis-server on a free loopback port that keeps nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            "redis-server is not installed and REDIS_URL is not set; install it "
            "(apt-get install redis-server, or `make install-redis`) or point REDIS_URL at one"
        )
    port = free_port()
    child = Child(
        "redis-server",
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(run_dir)],
        dict(os.environ), run_dir / "redis.log",
    )
    child.start()
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 15
    try:
        while not _answers(client):
            if not child.alive() or time.monotonic() > deadline:
                child.stop()
                raise ConfigError(f"private redis-server did not start; see {child.log_path}")
            time.sleep(0.05)
    finally:
        client.close()
    return url, child


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def cli_argv(*args: str) -> list[str]:
    """argv running this same piapi-bulk installation with `args`."""
    return [sys.executable, "-m", "scheduler.cli", *args]
