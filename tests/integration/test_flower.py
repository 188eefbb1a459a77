"""Flower, started the way `make flower` starts it: the running worker, tasks in row terms
(batch, row ids, outcomes) in a real browser, no stored result, no key or input shown, and
`piapi-bulk flower` ending with the run it watches."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from scheduler.flower_cmd import NO_RUN
from tests.helpers import HTTP, REPO, MakeEmulator, Spawn, free_port, stop_process, wait_until
from tests.integration import e2e
from workers.app import POLL_TASK, SUBMIT_TASK

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT_COPY = "PIAPI_BULK_FLOWER_SCREENSHOT"
"""Set to a path (docs/flower.png) to keep the screenshot of the task list there."""


@pytest.fixture
def worker(redis_url: str, sqlite_url: str, make_emulator: MakeEmulator,
           spawn: Spawn) -> dict[str, str]:
    """A worker on the private Redis (and its environment, for Flower)."""
    emu = make_emulator("--time-scale", "0.05")
    env = {**os.environ, "PIAPI_API_KEY": emu.api_key, "PIAPI_BASE_URL": emu.url,
           "REDIS_URL": redis_url, "DATABASE_URL": sqlite_url, "PYTHONPATH": str(REPO)}
    spawn(env, "worker", "--concurrency", "2", log="worker.log")
    return env


def _flower_and_fleet(spawn: Spawn, env: dict[str, str]) -> str:
    """Flower on a free port, then a worker and a dispatcher on the same Redis; Flower's
    base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    _flower(spawn, env, port)
    wait_until(lambda: HTTP.get(base + "/", timeout=2).status_code == 200, 60,
               what="Flower's page")
    for args in (["worker", "--concurrency", "2"], ["dispatcher", "--concurrency", "4"]):
        spawn(env, *args, log="fleet.log")
    return base


def _flower(spawn: Spawn, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    return spawn(env, "flower", "--port", str(port), log="flower.log")


def test_flower_lists_the_running_worker(tmp_path: Path, worker: dict[str, str],
                                         spawn: Spawn) -> None:
    port = free_port()
    proc = _flower(spawn, worker, port)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: HTTP.get(base + "/", timeout=2).status_code == 200, 60,
               what="Flower's page")

    def listed() -> bool:
        # refresh: Flower asks the workers again (its list is otherwise the one it made at
        # start-up, before a worker slow to boot under load had answered).
        got = HTTP.get(base + "/api/workers", params={"refresh": "1"}, timeout=15)
        return got.status_code == 200 and any(n.startswith("piapi-bulk-") for n in got.json())

    wait_until(listed, 120, interval_s=1.0, what="the worker in /api/workers")
    stop_process(proc)  # now, so that its log is complete
    log = (tmp_path / "flower.log").read_text()
    assert "127.0.0.1" in log or "Visit me" in log


def test_flower_with_basic_auth_refuses_anonymous(redis_url: str, spawn: Spawn) -> None:
    # Flower alone on the fleet's Redis: what it refuses does not depend on a worker.
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO),
           "FLOWER_BASIC_AUTH": "operator:s3cret-pass"}
    _flower(spawn, env, port)
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: HTTP.get(base + "/api/workers", timeout=2,
                                 auth=("operator", "s3cret-pass")).status_code == 200,
               60, what="Flower with auth")
    assert HTTP.get(base + "/api/workers", timeout=2).status_code == 401
    assert HTTP.get(base + "/", timeout=2).status_code == 401


def test_flower_refuses_a_public_address_without_auth(tmp_path: Path, redis_url: str) -> None:
    e2e.write_jsonl(tmp_path / "m.jsonl", e2e.caption_rows(1))
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url}
    done = e2e.piapi_bulk(tmp_path, env, "flower", "--address", "0.0.0.0", timeout_s=30)
    assert done.returncode == 2 and "FLOWER_BASIC_AUTH" in done.stderr


def test_flower_require_auth_refuses_to_start_without_it(tmp_path: Path, redis_url: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": redis_url}
    done = e2e.piapi_bulk(tmp_path, env, "flower", "--require-auth", timeout_s=30)
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
    manifest = e2e.write_jsonl(tmp_path / "m.jsonl", e2e.caption_rows(10))
    base = _flower_and_fleet(spawn, env)
    submitted = e2e.piapi_bulk(tmp_path, env, "submit", str(manifest))
    assert submitted.returncode == 0, submitted.stderr

    def succeeded_tasks() -> dict[str, Any]:
        tasks: dict[str, Any] = HTTP.get(base + "/api/tasks", timeout=5).json()
        names = {t.get("name") for t in tasks.values() if t.get("state") == "SUCCESS"}
        return tasks if {SUBMIT_TASK, POLL_TASK} <= names else {}

    tasks = wait_until(succeeded_tasks, 120, interval_s=0.5,
                       what="Flower to list finished create and poll tasks")
    views = [HTTP.get(f"{base}/api/task/info/{task_id}", timeout=5).text
             for task_id in list(tasks)[:20]]
    listing = HTTP.get(base + "/api/tasks", timeout=5).text
    pages = [HTTP.get(f"{base}/task/{task_id}", timeout=5).text for task_id in list(tasks)[:5]]
    # The arguments Flower shows are lists of job ids and the batch they belong to.
    submit = next(t for t in tasks.values() if t.get("name") == SUBMIT_TASK)
    assert submit["args"].startswith("[[") and submit["args"].rstrip("]").endswith("'")
    for text in [listing, *views, *pages]:
        assert key not in text
        assert "example.test" not in text  # nor the rows' inputs


def test_flower_search_finds_one_batch_by_its_id(tmp_path: Path, redis_url: str,
                                                 sqlite_url: str, make_emulator: MakeEmulator,
                                                 spawn: Spawn) -> None:
    """Two batches through one fleet: `args:<batch>` lists that batch's tasks only."""
    emu = make_emulator("--time-scale", "0.02")
    env = {**os.environ, "PIAPI_API_KEY": emu.api_key, "PIAPI_BASE_URL": emu.url,
           "REDIS_URL": redis_url, "DATABASE_URL": sqlite_url, "PYTHONPATH": str(REPO)}
    base = _flower_and_fleet(spawn, env)
    batches = []
    for prefix in ("cat", "dog"):
        manifest = e2e.write_jsonl(tmp_path / f"{prefix}.jsonl", e2e.caption_rows(6, prefix=prefix))
        done = e2e.piapi_bulk(tmp_path, env, "submit", str(manifest))
        assert done.returncode == 0, done.stderr
        batches.append(done.stdout.split()[-1])  # `submit` prints the batch id last

    def found(batch: str) -> dict[str, Any]:
        got: dict[str, Any] = HTTP.get(base + "/api/tasks", params={"search": f"args:{batch}"},
                                        timeout=5).json()
        return got

    def both_polled() -> bool:
        return all(any(t["name"] == POLL_TASK for t in found(b).values()) for b in batches)

    wait_until(both_polled, 120, interval_s=0.5, what="poll tasks of both batches")
    for batch, other, prefix in ((batches[0], batches[1], "cat"), (batches[1], batches[0], "dog")):
        mine = found(batch)
        assert mine and all(batch in t["args"] and other not in t["args"] for t in mine.values())
        results = [t["result"] for t in mine.values() if t.get("result")]
        assert results and all(batch in r and f"{prefix}-" in r for r in results)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get "
                    "install chromium; make install does it)")
def test_flower_on_a_run_speaks_rows_and_ends_with_it(tmp_path: Path, sqlite_url: str,
                                                      make_emulator: MakeEmulator,
                                                      spawn: Spawn) -> None:
    key = f"sk-live-{uuid.uuid4().hex}"
    rows = e2e.caption_rows(50)
    manifest = e2e.write_jsonl(tmp_path / "m.jsonl", rows)
    emu = make_emulator("--time-scale", "0.05", "--concurrency", "5", api_key=key)
    env = e2e.run_env(tmp_path, emu, sqlite_url)
    proc = e2e.start_run(tmp_path, env, str(manifest), "-o", "out.jsonl")
    url_file = tmp_path / "run" / "redis_url"
    wait_until(url_file.exists, 60, what="the run's private Redis")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    watcher = spawn(env, "flower", "--port", str(port), log="flower.out")
    wait_until(lambda: HTTP.get(base + "/", timeout=2).status_code == 200, 60,
               what="Flower's page")

    def summaries() -> list[dict[str, Any]]:
        tasks = HTTP.get(base + "/api/tasks", timeout=5).json().values()
        done = [t for t in tasks if t.get("state") == "SUCCESS" and t.get("result")]
        names = {t["name"] for t in done}
        # Rows are created by submit messages, or by the poll that freed their slot
        # (`workers.handoff`): its summary names them too.
        created = SUBMIT_TASK in names or any("handed a freed slot" in t["result"] for t in done)
        return done if POLL_TASK in names and created and len(done) >= 8 else []

    done = wait_until(summaries, 120, interval_s=0.5, what="create and poll tasks in Flower")
    batch = done[0]["args"].rsplit("'", 2)[-2]
    assert batch.startswith("b") and all(batch in t["result"] for t in done)
    assert any("img-" in t["result"] and " created" in t["result"] for t in done)

    # The task list, rendered by a real browser after its table's data loaded.
    shot = tmp_path / "flower.png"
    page = f"{base}/tasks"
    _chromium(tmp_path, "--virtual-time-budget=8000", f"--screenshot={shot}",
              "--window-size=1600,700", page)
    dom = _chromium(tmp_path, "--virtual-time-budget=8000", "--dump-dom", page)
    assert f"batch {batch}: row" in dom and "img-" in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if keep := os.environ.get(SCREENSHOT_COPY):
        shutil.copyfile(shot, keep)

    # Nothing stored in Redis as a result; no key or input in any page Flower serves.
    private = redis.Redis.from_url(url_file.read_text().strip())
    stored = [k.decode() for k in private.scan_iter(count=1000)]
    assert not [k for k in stored if "celery-task-meta" in k or "result" in k], stored
    texts = [dom, HTTP.get(base + "/api/tasks", timeout=5).text]
    texts += [HTTP.get(base + path, timeout=5).text for path in ("/", "/tasks", "/broker")]
    texts += [HTTP.get(f"{base}/task/{t['uuid']}", timeout=5).text for t in done[:5]]
    inputs = [row["input"]["image"] for row in rows]
    for text in texts:
        assert key not in text and "example.test" not in text
        assert not [value for value in inputs if value in text]

    # The run ends, its Redis goes: Flower stops within seconds, one line, exit 0. (Its
    # tasks end at once, the next ones in a tenth of the time: nothing is left to see.)
    emu.configure(time_scale=0.005)
    emu.advance(3)  # past the longest task so far (2.25 s)
    assert e2e.finish(proc, 240) == 0
    assert wait_until(lambda: watcher.poll() is not None, 20, interval_s=0.2,
                      what="piapi-bulk flower to stop") is True
    assert watcher.returncode == 0
    out = (tmp_path / "flower.out").read_text().strip().splitlines()
    assert out[-1].startswith("the Redis at redis://") and out[-1].endswith("Flower stopped")
    assert len(out) == 2 and "Traceback" not in "\n".join(out), out  # the start line, the end


@pytest.mark.integration
def test_flower_without_a_run_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"PIAPI_BULK_RUN_DIR": str(tmp_path / "run"), "PYTHONPATH": str(REPO)})
    done = e2e.piapi_bulk(tmp_path, env, "flower", timeout_s=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"piapi-bulk: {NO_RUN}\n"
    # A run killed without cleaning up leaves its Redis URL behind: still no run here.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "redis_url").write_text(f"redis://127.0.0.1:{free_port()}/0\n")
    done = e2e.piapi_bulk(tmp_path, env, "flower", timeout_s=30)
    assert done.returncode == 2 and done.stderr == f"piapi-bulk: {NO_RUN}\n"


def _chromium(tmp_path: Path, *args: str) -> str:
    """Headless Chromium on its own profile; its stdout."""
    assert CHROMIUM is not None
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}",
                          *args], capture_output=True, text=True, timeout=90, check=True)
    return out.stdout


def test_a_message_of_the_old_name_and_shape_still_runs(tmp_path: Path, worker: dict[str, str],
                                                       sqlite_url: str) -> None:
    """A message an older dispatcher left in Redis (`piapi_bulk.submit`, `[[ids]]`) is run by
    the new worker, not dropped: its rows are created once."""
    from sqlalchemy import select

    from workers.app import OLD_NAMES, SUBMIT_QUEUE, create_celery
    from workers.db import make_engine
    from workers.models import JOBS

    assert OLD_NAMES["piapi_bulk.submit"] == SUBMIT_TASK
    manifest = e2e.write_jsonl(tmp_path / "m.jsonl", e2e.caption_rows(3))
    env = {k: v for k, v in worker.items() if k != "REDIS_URL"}
    done = e2e.piapi_bulk(tmp_path, env, "submit", str(manifest))  # ingested; no dispatcher here
    assert done.returncode == 0, done.stderr
    engine = make_engine(sqlite_url)

    def states() -> dict[int, str]:
        with engine.connect() as conn:
            return {int(i): str(s) for i, s in conn.execute(select(JOBS.c.id, JOBS.c.state))}

    ids = sorted(states())
    create_celery(worker["REDIS_URL"]).send_task("piapi_bulk.submit", args=[ids],
                                                 queue=SUBMIT_QUEUE)
    wait_until(lambda: set(states().values()) <= {"running", "completed"}, 60, interval_s=0.2,
               what="the old message's rows created")
    engine.dispose()
