"""A private PostgreSQL server for tests that restart the database (never the shared one).

initdb refuses to run as root, so as root the server runs as the `postgres` system user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import free_port


def _as_postgres() -> list[str]:
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root without runuser: cannot start PostgreSQL")
    return [runuser, "-u", "postgres", "--"]


def available() -> str | None:
    """None when a private server can be started here, else why not."""
    for tool in ("initdb", "pg_ctl"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run PostgreSQL as"
    return None


class PrivatePostgres:
    """initdb into a temp dir, pg_ctl start on a free loopback port, trust auth."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="piapi-bulk-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.prefix = _as_postgres()
        if self.prefix:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)

    def _run(self, *argv: str, timeout_s: float = 60) -> None:
        subprocess.run([*self.prefix, *argv], check=True, timeout=timeout_s,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        if not self.data.exists():
            self._run(shutil.which("initdb") or "initdb", "-D", str(self.data), "-U", "postgres",
                      "--auth=trust", "--no-sync", "-E", "UTF8")
        self._ctl("start", "-w", "-t", "60", "-l", str(self.dir / "server.log"), "-o",
                  f"-p {self.port} -c listen_addresses=127.0.0.1 "
                  f"-c unix_socket_directories={self.dir} -c fsync=off")

    def _ctl(self, *args: str) -> None:
        self._run(shutil.which("pg_ctl") or "pg_ctl", "-D", str(self.data), *args, timeout_s=90)

    def restart(self) -> None:
        """Fast shutdown (every connection is cut) and start again."""
        self._ctl("restart", "-w", "-t", "60", "-m", "fast")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.data.exists():
            with contextlib.suppress(subprocess.CalledProcessError):  # not running
                self._ctl("stop", "-w", "-t", "30", "-m", "immediate")
        shutil.rmtree(self.dir, ignore_errors=True)
