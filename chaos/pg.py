"""A private PostgreSQL for one chaos run: initdb in a temp dir, a free loopback port, trust auth.

Nothing shared is touched: the cluster lives in its own temp directory, listens on
127.0.0.1 only (and on a Unix socket in that directory), and is removed at the end.
PostgreSQL refuses to run as root, so as root every PostgreSQL binary runs as the
`postgres` system user (through `setpriv`, which also sets the parent-death signal after
changing user: the postmaster is our direct child and gets SIGINT, a fast shutdown, if the
harness dies). As any other user they run as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

from bench.procs import BenchError, Proc, Stack, wait_for
from scheduler.services import free_port

PG_USER = "postgres"
"""The system user PostgreSQL runs as when the harness runs as root."""
DB_NAME = "piapi_bulk_chaos"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0


class PgUnavailable(Exception):
    """A private PostgreSQL cannot be made here (one clear line for the user)."""


def _as_user() -> tuple[list[str], int | None, int | None]:
    """argv prefix running a command as the PostgreSQL user, and that user's uid/gid."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError as exc:
        raise PgUnavailable(f"running as root, and there is no '{PG_USER}' system user to run "
                            "PostgreSQL as (initdb refuses root): create one or run as a "
                            "non-root user") from exc
    if shutil.which("setpriv") is None:
        raise PgUnavailable("running as root, and setpriv (util-linux) is missing: it is needed "
                            f"to run PostgreSQL as '{PG_USER}'")
    prefix = ["setpriv", "--reuid", str(pw.pw_uid), "--regid", str(pw.pw_gid), "--init-groups",
              "--pdeathsig", "INT", "--"]
    return prefix, pw.pw_uid, pw.pw_gid


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PgUnavailable(f"{name} is not on PATH: install PostgreSQL's server binaries "
                            "(e.g. apt-get install postgresql) to run the chaos test")
    return path


def preflight() -> None:
    """PgUnavailable (one line) when a private PostgreSQL cannot be made here."""
    _as_user()
    for name in ("initdb", "pg_ctl", "postgres"):
        _binary(name)


class PrivatePostgres:
    """One throwaway PostgreSQL cluster; `start()`, `restart()`, `close()`."""

    def __init__(self, stack: Stack, logs: Path, *, host: str = "127.0.0.1",
                 port: int | None = None, wrap: Sequence[str] = (),
                 trust: str | None = None) -> None:
        """`host`/`port`: where it listens (default a free loopback port); `wrap`: an argv
        prefix for the postmaster (e.g. `ip netns exec NS`, for the fleet harness);
        `trust`: a network (CIDR) whose clients are trusted too (default: loopback only)."""
        self.stack, self.logs = stack, logs
        self.host, self.wrap, self.trust = host, list(wrap), trust
        self.prefix, uid, gid = _as_user()
        self.initdb, self.pg_ctl = _binary("initdb"), _binary("pg_ctl")
        self.postgres = _binary("postgres")
        self.root = Path(tempfile.mkdtemp(prefix="piapi-chaos-pg-"))
        self.data = self.root / "data"
        if uid is not None and gid is not None:
            os.chown(self.root, uid, gid)
        self.port = port or free_port()
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def admin_url(self) -> str:
        """The cluster's maintenance database."""
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/postgres"

    @property
    def url(self) -> str:
        """The run's database (DATABASE_URL of every piapi-bulk process)."""
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{DB_NAME}"

    def _run(self, *argv: str, timeout_s: float) -> None:
        done = subprocess.run([*self.prefix, *argv], capture_output=True, text=True,
                              timeout=timeout_s, check=False, cwd=self.root)
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise BenchError(f"{Path(argv[0]).name} exited {done.returncode}: "
                             + " | ".join(tail))

    def init(self) -> None:
        """initdb (trust auth, no fsync while creating), then start and create the database."""
        self._run(self.initdb, "-D", str(self.data), "-U", PG_USER, "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--locale=C", timeout_s=120)
        if self.trust:
            with open(self.data / "pg_hba.conf", "a", encoding="utf-8") as hba:
                hba.write(f"host all all {self.trust} trust\n")
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')

    def start(self) -> None:
        """The postmaster as our direct child, until it accepts connections."""
        argv = [*self.wrap, *self.prefix, self.postgres, "-D", str(self.data),
                "-p", str(self.port), "-c", f"listen_addresses={self.host}",
                "-c", f"unix_socket_directories={self.root}",
                "-c", "max_connections=200", "-c", "logging_collector=off"]
        self.starts += 1
        self.proc = self.stack.add(Proc(f"postgres-{self.starts}", "postgres", argv,
                                        dict(os.environ), self.logs / "postgres.log",
                                        cwd=self.root))
        proc = self.proc

        def up() -> bool:
            if not proc.alive():
                raise BenchError(f"postgres exited {proc.returncode}:\n{proc.log_tail()}")
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=2):
                return True

        wait_for(up, START_TIMEOUT_S, "the private PostgreSQL to accept connections", 0.1)

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m MODE, then reap the postmaster (SIGKILL as a last resort)."""
        if self.proc is None or not self.proc.alive():
            return
        with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
            self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w",
                      "-t", str(int(STOP_TIMEOUT_S)), "stop", timeout_s=STOP_TIMEOUT_S + 5)
        if self.proc.wait(10) is None:
            self.proc.stop(5)

    def restart(self, mode: str = "fast") -> float:
        """Stop and start again on the same port; seconds the database was down."""
        began = time.monotonic()
        self.stop(mode)
        self.start()
        return time.monotonic() - began

    def close(self) -> None:
        """Stop the cluster and remove its directory."""
        try:
            self.stop("fast")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
