"""Recovery from every process and service, each on its own, with real processes.

Each test disrupts one thing mid-batch and then checks the promise: every row ends
completed with the emulator's own output, and no row was created at PiAPI twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy.engine import make_url

from tests.helpers import Emulator, MakeEmulator, Spawn, wait_until
from tests.integration import e2e
from workers.db import SqliteGate
from workers.keys import LOCK_KEY


@pytest.fixture
def emu(make_emulator: MakeEmulator) -> Emulator:
    """The emulator every test here runs against: an account limit of 8, tasks of 0.15-0.45 s."""
    return make_emulator("--time-scale", "0.01", "--concurrency", "8")


def _check_all_completed_once(results: list[dict[str, Any]], rows: list[dict[str, Any]],
                              emu: Emulator) -> None:
    stats = emu.stats()
    ledger = {t["task_id"]: t for t in emu.ledger()}
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    assert {r["status"] for r in results} == {"completed"}, [
        (r["id"], r["status"], r.get("error")) for r in results if r["status"] != "completed"]
    assert stats["max_creates_per_input"] == 1  # never posted twice
    for r in results:
        assert r["output"] == ledger[r["task_id"]]["output"]


def _run_disrupted(emu: Emulator, tmp_path: Path, database_url: str, n_rows: int,
                   done_before: int, disrupt: Callable[[subprocess.Popen[bytes]], None],
                   stall_s: str, timeout_s: float, *run_args: str) -> int:
    """`run` a batch (with `run_args` too), `disrupt` it once `done_before` rows have
    completed, and check every row completed exactly once; returns run's exit code."""
    rows = e2e.caption_rows(n_rows)
    manifest = e2e.write_jsonl(tmp_path / "rows.jsonl", rows)
    env = e2e.run_env(tmp_path, emu, database_url, PIAPI_BULK_STALL_S=stall_s)
    run = e2e.start_run(tmp_path, env, str(manifest), "-o", "out.jsonl", "--concurrency", "8",
                        *run_args)
    try:
        wait_until(lambda: e2e.count_state(database_url, "completed") >= done_before, 120,
                   what=f"{done_before} completed rows")
        disrupt(run)
        code = e2e.finish(run, timeout_s)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    e2e.wait_group_gone(run.pid)
    results = e2e.read_results(tmp_path / "out.jsonl")
    _check_all_completed_once(results, rows, emu)
    return code


def _holds_flock(pid: int, path: Path) -> bool:
    """True when `pid` holds a flock() on `path` (as /proc/locks lists it)."""
    inode = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue  # a waiter, or another kind of lock
        if int(fields[4]) == pid and int(fields[5].rsplit(":", 1)[1]) == inode:
            return True
    return False


@pytest.mark.parametrize("download", [False, True], ids=["", "download"])
def test_a_stalled_worker_is_detected_by_progress_and_restarted(tmp_path: Path,
                                                                 sqlite_url: str,
                                                                 emu: Emulator,
                                                                 download: bool) -> None:
    """Also with `--download`, whose pool records each completed row's files: it writes to
    the database, so it must not do so on the watch's thread, or the watch would wait for
    the frozen worker too."""
    stopped: list[int] = []
    gate = Path(SqliteGate(make_url(sqlite_url).database or "").path)

    def freeze_worker(run: subprocess.Popen[bytes]) -> None:
        # Up, but doing nothing: what a worker wedged on a dead connection looks like. It
        # is frozen while it holds the database's write gate, the worst moment: the
        # dispatcher then waits for it too, and only a watch that reads past the gate can
        # still see that nothing moves.
        # The worker runs freely while /proc/locks is watched; it is stopped the moment it
        # is seen holding the gate, and let go again if it let the gate go first.
        worker = e2e.child(run, " worker")
        deadline = time.monotonic() + 60
        while True:
            assert run.poll() is None, "the run ended before its worker was seen at the gate"
            assert time.monotonic() < deadline, "the worker was never seen holding the gate"
            if not _holds_flock(worker, gate):
                time.sleep(0.001)  # sampling, not waiting: look again in a moment
                continue
            os.kill(worker, signal.SIGSTOP)
            wait_until(lambda: e2e.process_state(worker) in "Tt", 10, interval_s=0.001,
                       what="the worker to stop")
            if _holds_flock(worker, gate):
                stopped.append(worker)
                return
            os.kill(worker, signal.SIGCONT)

    # Enough rows that the batch is still running while the worker is caught at the gate.
    extra = ("--download", str(tmp_path / "files")) if download else ()
    code = _run_disrupted(emu, tmp_path, sqlite_url, 200, 10, freeze_worker, "4", 180, *extra)
    assert code == 0
    out = (tmp_path / "run.out").read_text()
    assert "no row moved for 4s although work was due: restarted worker" in out, out
    worker = stopped[0]
    assert not Path(f"/proc/{worker}").exists() or "zombie" in Path(
        f"/proc/{worker}/status").read_text()


def test_redis_restarted_empty_mid_run(tmp_path: Path, database_url: str,
                                       emu: Emulator) -> None:
    def kill_redis(run: subprocess.Popen[bytes]) -> None:
        # Redis dies with every queued message and lease; `run` starts it again on the
        # same port, empty (it keeps nothing on disk).
        os.kill(e2e.child(run, "redis-server"), signal.SIGKILL)

    code = _run_disrupted(emu, tmp_path, database_url, 50, 15, kill_redis, "10", 240)
    assert code == 0
    dispatcher_log = (tmp_path / "run" / "logs" / "dispatcher.log").read_text()
    assert dispatcher_log.count("new Redis epoch") >= 2, dispatcher_log[-3000:]


def test_database_restarted_mid_run(tmp_path: Path, private_pg: Any, emu: Emulator) -> None:
    url = private_pg.create_database("piapi_bulk_restart")
    # Every connection is cut; the server is back in a second.
    code = _run_disrupted(emu, tmp_path, url, 50, 15, lambda _run: private_pg.restart(), "15",
                          240)
    assert code == 0


def _lock_pid(client: redis.Redis) -> int | None:
    value = client.get(LOCK_KEY)
    return int(value.decode().split(":")[1]) if value else None


@pytest.mark.parametrize("disruption", ["kill-dispatcher", "flush-redis"])
def test_fleet_survives(tmp_path: Path, database_url: str, redis_url: str, disruption: str,
                        emu: Emulator, spawn: Spawn) -> None:
    """A fleet of a worker and two dispatchers: the active dispatcher SIGKILLed (the
    standby takes the lock over), or Redis flushed (the dispatcher rebuilds the runnable
    work from the database)."""
    rows = e2e.caption_rows(50)
    manifest = e2e.write_jsonl(tmp_path / "fleet.jsonl", rows)
    client = redis.Redis.from_url(redis_url)
    try:
        env = e2e.run_env(tmp_path, emu, database_url, REDIS_URL=redis_url)
        batch = _submit(tmp_path, env, manifest)
        spawn(env, "worker", log="worker.log")
        dispatchers = {}
        for name in ("d1", "d2"):
            proc = spawn(env, "dispatcher", "--concurrency", "8", log=f"{name}.log")
            dispatchers[proc.pid] = proc
        wait_until(lambda: e2e.count_state(database_url, "completed") >= 15, 120,
                   what="15 completed rows")
        active = _lock_pid(client)
        assert active in dispatchers
        if disruption == "kill-dispatcher":
            dispatchers[active].kill()
            dispatchers[active].wait(timeout=10)
            standby = next(pid for pid in dispatchers if pid != active)
            wait_until(lambda: _lock_pid(client) == standby, 30,
                       what="the standby dispatcher to take the lock")
        else:
            client.flushall()
        wait_until(lambda: e2e.count_state(database_url, "completed") == len(rows), 180,
                   what="every row completed")
        assert _submit(tmp_path, env, manifest) == batch  # the same manifest: the same batch
        exported = e2e.piapi_bulk(tmp_path, env, "export", batch, "-o", "out.jsonl")
        assert exported.returncode == 0, exported.stderr
        results = e2e.read_results(tmp_path / "out.jsonl")
        _check_all_completed_once(results, rows, emu)
    finally:
        client.close()


def _submit(tmp_path: Path, env: dict[str, str], manifest: Path) -> str:
    """`piapi-bulk submit MANIFEST`: the batch id (the same manifest again names the same
    batch, and changes nothing)."""
    done = e2e.piapi_bulk(tmp_path, env, "submit", str(manifest))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]
