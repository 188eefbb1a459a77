"""Helpers for end-to-end tests: `piapi-bulk` as a process, manifests, results, the record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import func, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, col

from tests.helpers import (
    EMULATOR_KEY,
    HTTP,
    REPO,
    Emulator,
    Spawn,
    free_port,
    polled_engine,
    stop_process,
    wait_until,
)
from workers.db import session
from workers.models import JOBS, Batch, Job

FAST_TIMEOUTS = {
    # Small HTTP timeouts keep the create lease short, so a killed worker's rows are
    # taken back within seconds in tests (default: about a minute).
    "PIAPI_CONNECT_TIMEOUT_S": "1",
    "PIAPI_READ_TIMEOUT_S": "3",
    "PIAPI_WRITE_TIMEOUT_S": "1",
    "PIAPI_POOL_TIMEOUT_S": "1",
    "PIAPI_BULK_LEASE_MARGIN_S": "1",
}


@dataclass(frozen=True)
class NoPiAPI:
    """For commands that never reach PiAPI: a key, and an address where nothing answers."""

    url: str = "http://127.0.0.1:9"
    api_key: str = EMULATOR_KEY


NO_PIAPI = NoPiAPI()

WEBHOOK_SECRET = "a-master-secret-for-tests-0123456789"
"""The master secret of the tests' webhook receivers (16 characters or more)."""


def run_env(tmp_path: Path, emu: Emulator | NoPiAPI, database_url: str,
            **extra: str) -> dict[str, str]:
    """The environment of `piapi-bulk` commands against `emu`: FAST_TIMEOUTS, this database,
    a run folder in tmp_path, and no REDIS_URL or PIAPI_RPM from the caller's environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PIAPI_RPM")}
    env.update(FAST_TIMEOUTS)
    env.update({
        "PIAPI_API_KEY": emu.api_key,
        "PIAPI_BASE_URL": emu.url,
        "PIAPI_UPLOAD_URL": emu.url,  # the emulator serves the upload endpoint too
        "DATABASE_URL": database_url,
        "PIAPI_BULK_RUN_DIR": str(tmp_path / "run"),
        "PYTHONPATH": str(REPO),
    })
    env.update(extra)
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "scheduler.cli", *args]


def db_env(tmp_path: Path, database_url: str) -> dict[str, str]:
    """The environment of a command that needs only the database (no PiAPI, no Redis)."""
    return {"DATABASE_URL": database_url, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
            "HOME": str(tmp_path)}


def piapi_bulk(cwd: Path, env: dict[str, str], *args: str,
               timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`piapi-bulk ARGS...` run to its end in `cwd`: exit code, stdout and stderr as text."""
    return subprocess.run(cli(*args), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL, check=False)


def webhook_receiver(spawn: Spawn, env: dict[str, str], port: int) -> str:
    """`piapi-bulk webhook --port PORT` started by the `spawn` fixture (log: webhook.log),
    once it answers; its base URL."""
    spawn(env, "webhook", "--port", str(port), log="webhook.log")
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: HTTP.get(base + "/healthz", timeout=1).status_code == 200, 30,
               what="the webhook receiver")
    return base


def webhook_run_env(tmp_path: Path, emu: Emulator, database_url: str, redis_url: str,
                    spawn: Spawn) -> tuple[dict[str, str], str]:
    """The environment of a run that PiAPI calls back (`run_env` with this Redis and
    WEBHOOK_SECRET), and the base URL of the `piapi-bulk webhook` started for it."""
    port = free_port()
    env = run_env(tmp_path, emu, database_url, REDIS_URL=redis_url,
                  PIAPI_BULK_WEBHOOK_URL=f"http://127.0.0.1:{port}/hooks",
                  PIAPI_BULK_WEBHOOK_SECRET=WEBHOOK_SECRET)
    return env, webhook_receiver(spawn, env, port)


STARTED: list[subprocess.Popen[bytes]] = []
"""The runs `start_run` started in this pytest process, until `stop_leftover_runs`."""


def start_run(tmp_path: Path, env: dict[str, str], *args: str,
              name: str = "run") -> subprocess.Popen[bytes]:
    """`piapi-bulk run ...` in its own session (so its whole tree can be found and killed)."""
    out = open(tmp_path / f"{name}.out", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cli("run", *args), env=env, cwd=tmp_path, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    STARTED.append(proc)
    return proc


def stop_leftover_runs(timeout_s: float = 20.0) -> list[int]:
    """Stop every run `start_run` started that still runs, with its whole session (its
    Redis, worker and dispatcher): a test that failed before `finish` left it behind, and
    it would run on for good, its emulator gone. SIGTERM (the run's own Ctrl-C), SIGKILL
    after `timeout_s`. The pids stopped."""
    stopped = []
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            stopped.append(proc.pid)
            stop_process(proc, timeout_s, group=True)
    return stopped


def finish(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def _stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first, then ppid)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_state(pid: int) -> str:
    """The process's state letter in /proc (R, S, T stopped, Z zombie, ...); raises
    FileNotFoundError once it is gone."""
    return _stat_fields(pid)[0]


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, cmdline) of the direct children of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(entry.name)[1])
            if ppid == pid:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((int(entry.name), cmd))
        except (OSError, ValueError, IndexError):
            continue
    return found


def child(proc: subprocess.Popen[bytes], needle: str) -> int:
    """The pid of the one direct child of `proc` whose command line holds `needle`."""
    found = [pid for pid, cmd in children(proc.pid) if needle in cmd]
    assert len(found) == 1, children(proc.pid)
    return found[0]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_group_gone(pgid: int, timeout_s: float = 60) -> None:
    wait_until(lambda: not group_alive(pgid), timeout_s, what=f"process group {pgid} to exit")


def count_state(database_url: str, state: str) -> int:
    with Session(polled_engine(database_url)) as s:
        return int(s.scalar(select(func.count()).where(col(Job.state) == state)) or 0)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def caption_rows(n: int, prefix: str = "img") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i}", "model": "Qubico/joycaption",
             "task_type": "joycaption-beta-one",
             "input": {"image": f"https://example.test/{prefix}/{i}.png"},
             "metadata": {"n": i}} for i in range(1, n + 1)]


def flux_rows(n: int, prefix: str = "flux") -> list[dict[str, Any]]:
    """Flux txt2img rows: a family /account/active_tasks documents."""
    return [{"id": f"{prefix}-{i}", "model": "Qubico/flux1-schnell", "task_type": "txt2img",
             "input": {"prompt": f"a lighthouse at dusk, take {i}", "width": 512,
                       "height": 512}} for i in range(1, n + 1)]


def wan_rows(n: int, prefix: str = "wan") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i}", "model": "Wan", "task_type": "wan26-txt2video",
             "input": {"prompt": f"a slow pan over hills, take {i}", "duration": 5}}
            for i in range(1, n + 1)]


class RunOutcome(NamedTuple):
    """What a `run` against a fresh emulator left: exit code, results, emulator figures."""

    code: int
    results: list[dict[str, Any]]
    stats: dict[str, Any]
    ledger: list[dict[str, Any]]


RunRows = Callable[..., RunOutcome]
"""The `run_rows` fixture (tests/integration/conftest.py)."""


def run_manifest(emu: Emulator, tmp_path: Path, database_url: str, rows: list[Any],
                 timeout_s: float = 240, run_args: tuple[str, ...] = (),
                 **env_extra: str) -> RunOutcome:
    """`run` on these rows (m.jsonl, results in out.jsonl) against `emu`, to the end."""
    env = run_env(tmp_path, emu, database_url, **env_extra)
    return run_in(env, emu, tmp_path, rows, timeout_s, run_args)


def run_in(env: dict[str, str], emu: Emulator, tmp_path: Path, rows: list[Any],
           timeout_s: float = 240, run_args: tuple[str, ...] = ()) -> RunOutcome:
    """`run_manifest` in an environment made already (`run_env`, `webhook_run_env`)."""
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    code = finish(start_run(tmp_path, env, str(manifest), "-o", "out.jsonl", *run_args),
                  timeout_s)
    return RunOutcome(code, read_results(tmp_path / "out.jsonl"), emu.stats(), emu.ledger())


JOY_KIND = ("Qubico/joycaption", "joycaption-beta-one")
RECORD_T0 = 1_000_000.0
"""When batches made directly in the database (`add_batch`) were created."""


def add_old_batch(conn: Connection, job_state: str | None = None, attempts: int = 0) -> None:
    """Batch `old` (and, given `job_state`, one job in that state after `attempts` creates),
    written with only the columns the first schema had: a schema-upgrade test drops the
    newer columns (and `alembic_version`) first, then checks what `create_tables` (the
    migrations) makes of the rows."""
    conn.execute(text(
        "INSERT INTO batches (id, content_hash, source, created_at, ingested, total, invalid, "
        "max_attempts, done) VALUES ('old', 'h', 's', 1, true, :total, 0, 3, false)"),
        {"total": 0 if job_state is None else 1})
    if job_state is not None:
        conn.execute(text(
            "INSERT INTO jobs (batch_id, seq, line, row_key, state, attempts, posts, tries, "
            "polls, poll_errors, created_at) "
            "VALUES ('old', 1, 1, '1', :state, :attempts, :attempts, 0, 0, 0, 1)"),
            {"state": job_state, "attempts": attempts})


def add_batch(engine: Engine, batch_id: str = "b1", rows: int = 3,
              kind: tuple[str, str] = JOY_KIND, **batch: Any) -> list[int]:
    """An ingested batch of `rows` queued jobs of `kind`, written straight to the database;
    returns the job ids in order."""
    with session(engine) as s:
        s.add(Batch(id=batch_id, content_hash=batch_id * 8, source="t.jsonl",
                    created_at=RECORD_T0, ingested=True, total=rows, **batch))
        s.flush()
        jobs = [Job(batch_id=batch_id, seq=i, line=i, row_key=str(i), model=kind[0],
                    task_type=kind[1], input_json=f'{{"image":"u{batch_id}{i}"}}')
                for i in range(1, rows + 1)]
        s.add_all(jobs)
        s.flush()
        return [int(j.id) for j in jobs if j.id is not None]


def set_jobs(engine: Engine, *job_ids: int, **values: Any) -> None:
    """Test set-up: give these jobs these column values, as a test needs them."""
    with engine.begin() as conn:
        conn.execute(update(JOBS).where(JOBS.c.id.in_(job_ids)).values(**values))


def job(engine: Engine, job_id: int) -> Job:
    """The job row as it is in the database now."""
    with Session(engine) as s:
        return s.get_one(Job, job_id)
