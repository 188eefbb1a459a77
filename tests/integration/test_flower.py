"""Flower, started the way `make flower` starts it, lists the running worker over HTTP."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import REPO, MakeEmulator, Spawn, free_port, stop_process, wait_until
from tests.integration.e2e import caption_rows, piapi_bulk, write_jsonl


@pytest.fixture
def worker(redis_url: str, sqlite_url: str, make_emulator: MakeEmulator,
           spawn: Spawn) -> dict[str, str]:
    """A worker on the private Redis (and its environment, for Flower)."""
    emu = make_emulator("--time-scale", "0.05")
    env = {**os.environ, "PIAPI_API_KEY": emu.api_key, "PIAPI_BASE_URL": emu.url,
           "REDIS_URL": redis_url, "DATABASE_URL": sqlite_url, "PYTHONPATH": str(REPO)}
    spawn(env, "worker", "--concurrency", "2", log="worker.log")
    return env


def _flower(spawn: Spawn, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return spawn(env, "flower", "--port", str(port), log="flower.log")


def test_flower_lists_the_running_worker(tmp_path: Path, worker: dict[str, str],
                                         spawn: Spawn) -> None:
    port = free_port()
    proc = _flower(spawn, worker, port)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(base + "/", timeout=2).status_code == 200, 60,
               what="Flower's page")

    def listed() -> bool:
        workers = httpx.get(base + "/api/workers", timeout=5).json()
        return any(name.startswith("piapi-bulk-") for name in workers)

    wait_until(listed, 60, interval_s=0.5, what="the worker in /api/workers")
    stop_process(proc)  # now, so that its log is complete
    log = (tmp_path / "flower.log").read_text()
    assert "127.0.0.1" in log or "Visit me" in log


def test_flower_with_basic_auth_refuses_anonymous(worker: dict[str, str], spawn: Spawn) -> None:
    port = free_port()
    env = {**worker, "FLOWER_BASIC_AUTH": "operator:s3cret-pass"}
    _flower(spawn, env, port)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(base + "/api/workers", timeout=2,
                                 auth=("operator", "s3cret-pass")).status_code == 200,
               60, what="Flower with auth")
    assert httpx.get(base + "/api/workers", timeout=2).status_code == 401
    assert httpx.get(base + "/", timeout=2).status_code == 401


def test_flower_refuses_a_public_address_without_auth(tmp_path: Path, redis_url: str) -> None:
    write_jsonl(tmp_path / "m.jsonl", caption_rows(1))
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url}
    done = piapi_bulk(tmp_path, env, "flower", "--address", "0.0.0.0", timeout_s=30)
    assert done.returncode == 2 and "FLOWER_BASIC_AUTH" in done.stderr


def test_flower_require_auth_refuses_to_start_without_it(tmp_path: Path, redis_url: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url}
    done = piapi_bulk(tmp_path, env, "flower", "--require-auth", timeout_s=30)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "FLOWER_BASIC_AUTH" in done.stderr


def test_flower_task_view_never_shows_the_api_key(tmp_path: Path, redis_url: str, sqlite_url: str,
                                                  make_emulator: MakeEmulator,
                                                  spawn: Spawn) -> None:
    """Flower shows every task's arguments: they are job ids, never the key or inputs."""
    key = f"sk-live-{uuid.uuid4().hex}"
    emu = make_emulator("--time-scale", "0.02", api_key=key)
    env = {**os.environ, "PIAPI_API_KEY": key, "PIAPI_BASE_URL": emu.url,
           "REDIS_URL": redis_url, "DATABASE_URL": sqlite_url, "PYTHONPATH": str(REPO)}
    manifest = write_jsonl(tmp_path / "m.jsonl", caption_rows(10))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    _flower(spawn, env, port)
    wait_until(lambda: httpx.get(base + "/", timeout=2).status_code == 200, 60,
               what="Flower's page")
    for args in (["worker", "--concurrency", "2"], ["dispatcher", "--concurrency", "4"]):
        spawn(env, *args, log="fleet.log")
    submitted = piapi_bulk(tmp_path, env, "submit", str(manifest))
    assert submitted.returncode == 0, submitted.stderr

    def succeeded_tasks() -> dict[str, Any]:
        tasks: dict[str, Any] = httpx.get(base + "/api/tasks", timeout=5).json()
        names = {t.get("name") for t in tasks.values() if t.get("state") == "SUCCESS"}
        return tasks if {"piapi_bulk.submit", "piapi_bulk.poll"} <= names else {}

    tasks = wait_until(succeeded_tasks, 120, interval_s=0.5,
                       what="Flower to list finished submit and poll tasks")
    views = [httpx.get(f"{base}/api/task/info/{task_id}", timeout=5).text
             for task_id in list(tasks)[:20]]
    listing = httpx.get(base + "/api/tasks", timeout=5).text
    pages = [httpx.get(f"{base}/task/{task_id}", timeout=5).text for task_id in list(tasks)[:5]]
    # The arguments Flower shows are lists of job ids.
    submit = next(t for t in tasks.values() if t.get("name") == "piapi_bulk.submit")
    assert submit["args"].startswith("[[") and submit["args"].replace(" ", "").strip("[]")
    for text in [listing, *views, *pages]:
        assert key not in text
        assert "example.test" not in text  # nor the rows' inputs
