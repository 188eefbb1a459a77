"""Recovery from every process and service, each on its own, with real processes.

Each test disrupts one thing mid-batch and then checks the promise: every row ends
completed with the emulator's own output, and no row was created at PiAPI twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.helpers import stop_process, wait_until
from tests.integration.e2e import (
    Emulator,
    caption_rows,
    children,
    cli,
    count_state,
    emulator,
    finish,
    read_results,
    run_env,
    start_run,
    wait_group_gone,
    write_jsonl,
)
from workers.keys import LOCK_KEY


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


def _child(run: subprocess.Popen[bytes], needle: str) -> int:
    found = [pid for pid, cmd in children(run.pid) if needle in cmd]
    assert len(found) == 1, children(run.pid)
    return found[0]


def _run_disrupted(tmp_path: Path, database_url: str, n_rows: int, done_before: int,
                   disrupt: Callable[[subprocess.Popen[bytes]], None], stall_s: str,
                   timeout_s: float) -> int:
    """`run` a batch, `disrupt` it once `done_before` rows have completed, and check every
    row completed exactly once; returns run's exit code."""
    rows = caption_rows(n_rows)
    manifest = write_jsonl(tmp_path / "rows.jsonl", rows)
    emu = emulator(tmp_path, "--time-scale", "0.02", "--concurrency", "8")
    try:
        env = run_env(tmp_path, emu, database_url, PIAPI_BULK_STALL_S=stall_s)
        run = start_run(tmp_path, env, str(manifest), "-o", "out.jsonl", "--concurrency", "8")
        try:
            wait_until(lambda: count_state(database_url, "completed") >= done_before, 120,
                       what=f"{done_before} completed rows")
            disrupt(run)
            code = finish(run, timeout_s)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
        wait_group_gone(run.pid)
        results = read_results(tmp_path / "out.jsonl")
        _check_all_completed_once(results, rows, emu)
    finally:
        emu.stop()
    return code


def test_a_stalled_worker_is_detected_by_progress_and_restarted(tmp_path: Path,
                                                                 sqlite_url: str) -> None:
    stopped: list[int] = []

    def freeze_worker(run: subprocess.Popen[bytes]) -> None:
        # Up, but doing nothing: what a worker wedged on a dead connection looks like.
        stopped.append(_child(run, " worker"))
        os.kill(stopped[0], signal.SIGSTOP)

    code = _run_disrupted(tmp_path, sqlite_url, 60, 10, freeze_worker, "4", 180)
    assert code == 0
    out = (tmp_path / "run.out").read_text()
    assert "no row moved for 4s although work was due: restarted worker" in out, out
    worker = stopped[0]
    assert not Path(f"/proc/{worker}").exists() or "zombie" in Path(
        f"/proc/{worker}/status").read_text()


def test_redis_restarted_empty_mid_run(tmp_path: Path, database_url: str) -> None:
    def kill_redis(run: subprocess.Popen[bytes]) -> None:
        # Redis dies with every queued message and lease; `run` starts it again on the
        # same port, empty (it keeps nothing on disk).
        os.kill(_child(run, "redis-server"), signal.SIGKILL)

    code = _run_disrupted(tmp_path, database_url, 80, 15, kill_redis, "10", 240)
    assert code == 0
    dispatcher_log = (tmp_path / "run" / "logs" / "dispatcher.log").read_text()
    assert dispatcher_log.count("new Redis epoch") >= 2, dispatcher_log[-3000:]


def test_database_restarted_mid_run(tmp_path: Path, private_pg: Any) -> None:
    url = private_pg.create_database("piapi_bulk_restart")
    # Every connection is cut; the server is back in a second.
    code = _run_disrupted(tmp_path, url, 80, 15, lambda _run: private_pg.restart(), "15", 240)
    assert code == 0


def _fleet_env(env: dict[str, str], redis_url: str) -> dict[str, str]:
    return {**env, "REDIS_URL": redis_url}


def _start(tmp_path: Path, env: dict[str, str], name: str, *args: str) -> subprocess.Popen[bytes]:
    out = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115
    return subprocess.Popen(cli(*args), env=env, cwd=tmp_path, stdout=out,
                            stderr=subprocess.STDOUT)


def _lock_pid(client: redis.Redis) -> int | None:
    value = client.get(LOCK_KEY)
    return int(value.decode().split(":")[1]) if value else None


@pytest.mark.parametrize("disruption", ["kill-dispatcher", "flush-redis"])
def test_fleet_survives(tmp_path: Path, database_url: str, redis_url: str,
                        disruption: str) -> None:
    """A fleet of a worker and two dispatchers: the active dispatcher SIGKILLed (the
    standby takes the lock over), or Redis flushed (the dispatcher rebuilds the runnable
    work from the database)."""
    rows = caption_rows(80)
    manifest = write_jsonl(tmp_path / "fleet.jsonl", rows)
    emu = emulator(tmp_path, "--time-scale", "0.02", "--concurrency", "8")
    procs: list[subprocess.Popen[bytes]] = []
    client = redis.Redis.from_url(redis_url)
    try:
        env = _fleet_env(run_env(tmp_path, emu, database_url), redis_url)
        subprocess.run(cli("submit", str(manifest)), env=env, cwd=tmp_path, check=True,
                       capture_output=True, timeout=60)
        procs.append(_start(tmp_path, env, "worker", "worker"))
        dispatchers = {}
        for name in ("d1", "d2"):
            proc = _start(tmp_path, env, name, "dispatcher", "--concurrency", "8")
            procs.append(proc)
            dispatchers[proc.pid] = proc
        wait_until(lambda: count_state(database_url, "completed") >= 15, 120,
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
        wait_until(lambda: count_state(database_url, "completed") == len(rows), 180,
                   what="every row completed")
        subprocess.run(cli("export", _batch_id(tmp_path, env, manifest), "-o", "out.jsonl"),
                       env=env, cwd=tmp_path, check=True, capture_output=True, timeout=60)
        results = read_results(tmp_path / "out.jsonl")
        _check_all_completed_once(results, rows, emu)
    finally:
        for proc in procs:
            stop_process(proc, timeout_s=20)
        client.close()
        emu.stop()


def _batch_id(tmp_path: Path, env: dict[str, str], manifest: Path) -> str:
    # Submitting the same manifest again names the same batch (and changes nothing).
    done = subprocess.run(cli("submit", str(manifest)), env=env, cwd=tmp_path, check=True,
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip().splitlines()[-1]
