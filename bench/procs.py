"""Processes the benchmark owns: start them, stop them by PID, and read what they used.

Every child is started from the main thread with PR_SET_PDEATHSIG (it dies with the harness)
and in its own session (a Ctrl-C at the terminal reaches only the harness, which then stops
its children in order). Children are reaped with `os.wait4`, never `Popen.wait`, so the
kernel's exact CPU time and peak RSS of each child (and its reaped descendants) are kept.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from scheduler.services import cli_argv, die_with_parent, free_port, start_redis_server

REPO = Path(__file__).resolve().parent.parent
"""This checkout: where the harness (and the baseline) run from."""
_source = [REPO]
PG_ADMIN_URL = os.environ.get(
    "PIAPI_BULK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PG_PREFIX = "piapi_bulk_bench_"


def source() -> Path:
    """The tree whose piapi-bulk and emulator are measured (default: this working tree)."""
    return _source[0]


def use_source(path: Path) -> None:
    """Measure the code in `path` (e.g. a `git archive` of one commit) instead."""
    _source[0] = path


def command_output(argv: list[str]) -> str:
    """What a command run in this checkout prints (stripped), for reports; "" when it fails."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                              check=False, cwd=REPO).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def measure_rev(rev: str, workdir: Path, prog: str) -> str:
    """`git archive REV` unpacked under `workdir` becomes the code that runs (`use_source`);
    the commit. `prog` names the harness in the error for an unknown revision."""
    commit = command_output(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"])
    if not commit:
        raise SystemExit(f"{prog}: unknown revision {rev!r}")
    dest = workdir / f"src-{commit[:12]}"
    dest.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True,
                             check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=120)
    use_source(dest)
    return commit


class BenchError(Exception):
    """Something the benchmark needs did not start or answer in time."""


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str,
             interval_s: float = 0.05) -> None:
    """Call `predicate()` until truthy; BenchError after `timeout_s` (errors count as no)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except BenchError:
            raise
        except Exception as exc:
            last = exc
        time.sleep(interval_s)
    raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what} (last error: {last!r})")


@dataclass
class Usage:
    """What a finished child used, from wait4: CPU seconds and peak RSS."""

    cpu_s: float
    maxrss_mb: float


class Proc:
    """One child process with its output in a log file."""

    def __init__(self, name: str, role: str, argv: Sequence[str], env: dict[str, str],
                 log_path: Path, cwd: Path | None = None) -> None:
        self.name, self.role, self.argv, self.env = name, role, list(argv), env
        self.log_path, self.cwd = log_path, cwd or source()
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_mono = 0.0
        self.returncode: int | None = None
        self.usage: Usage | None = None

    def start(self) -> Proc:
        """Start the process (from the main thread: PDEATHSIG follows the starting thread)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.started_mono = time.monotonic()
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        """The process id (the process must have been started)."""
        assert self.popen is not None
        return self.popen.pid

    def _reap(self, flags: int) -> bool:
        if self.returncode is not None:
            return True
        try:
            pid, status, ru = os.wait4(self.pid, flags)
        except ChildProcessError:
            self.returncode = -1
            return True
        if pid == 0:
            return False
        self.returncode = os.waitstatus_to_exitcode(status)
        self.usage = Usage(ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0)
        assert self.popen is not None
        self.popen.returncode = self.returncode  # so Popen never waits or warns itself
        return True

    def alive(self) -> bool:
        """True while the process runs (reaps it, keeping its usage, once it has exited)."""
        return self.popen is not None and not self._reap(os.WNOHANG)

    def wait(self, timeout_s: float) -> int | None:
        """Wait for the process to exit on its own; its exit code, or None on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        return self.returncode

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`; always reaps."""
        if self.popen is None or not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if self.wait(timeout_s) is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap(0)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the log, for error reports."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Stack:
    """The processes of one run; `close()` stops them newest first."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        """Start `proc` and own it."""
        self.procs.append(proc)
        return proc.start()

    def close(self) -> None:
        """Stop every process still running, newest first."""
        for proc in reversed(self.procs):
            proc.stop()


def start_redis(stack: Stack, workdir: Path, port: int | None = None) -> tuple[str, Proc]:
    """A private redis-server on a loopback port (default: a free one) that keeps nothing
    on disk, so one started again on the same port comes back empty."""
    return start_redis_server(workdir, lambda argv, log_path: stack.add(Proc(
        "redis-server", "redis", argv, dict(os.environ), log_path)), port)


def start_emulator(stack: Stack, workdir: Path, api_key: str, args: Sequence[str]) -> tuple[
        str, Proc]:
    """`python -m emulator` on a free port with `args`; waits until its control API answers."""
    port = free_port()
    env = {**os.environ, "PIAPI_API_KEY": api_key, "PYTHONPATH": str(source())}
    argv = [sys.executable, "-m", "emulator", "--port", str(port), *args]
    proc = stack.add(Proc("emulator", "emulator", argv, env, workdir / "emulator.log"))
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if not proc.alive():
            raise BenchError(f"emulator exited:\n{proc.log_tail()}")
        return httpx.get(f"{url}/_emulator/stats", timeout=1).status_code == 200

    wait_for(up, 30, "the emulator to answer")
    return url, proc


def port_answers(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def command_exists(env: dict[str, str], *args: str) -> bool:
    """True when `piapi-bulk ARGS --help` exits 0 (a subcommand that is implemented)."""
    try:
        done = subprocess.run(cli_argv(*args, "--help"), env=env, cwd=source(), timeout=60,
                              capture_output=True, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def pg_reachable() -> str | None:
    """None when the PostgreSQL admin URL answers, else the reason it does not."""
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3):
            return None
    except Exception as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file, or a throwaway PostgreSQL database.

    The PostgreSQL database is named piapi_bulk_bench_<hex>; only it is ever dropped.
    """
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    name = f"{PG_PREFIX}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        drop_pg_database(name)


def drop_pg_database(name: str) -> None:
    """Drop one of our throwaway databases (refuses any other name)."""
    if not name.startswith(PG_PREFIX):
        raise ValueError(f"refusing to drop {name!r}: not a benchmark database")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
