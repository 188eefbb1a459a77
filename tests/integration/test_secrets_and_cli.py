"""The API key appears nowhere but the process environment; CLI errors are one clear line."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import text

from tests.helpers import MakeEmulator, opened, wait_until
from tests.integration import e2e
from workers.app import SUBMIT_TASK
from workers.db import is_sqlite

pytestmark = pytest.mark.integration  # every test here runs piapi-bulk as a process


def _base64_forms(secret: str) -> list[str]:
    """The key as it would look inside base64 at any of the three byte alignments."""
    forms = []
    raw = secret.encode()
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw).decode()
        forms.append(encoded[4 if pad else 0 : -4])
    return [f for f in forms if len(f) > 8]


class Monitor(threading.Thread):
    """Records every command the private Redis receives (Celery messages included)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        # No read timeout (redis-py's default is 5 s): Redis may be quiet for longer while
        # the worker and the dispatcher start, and a timeout would end the recording.
        # The thread ends when the run's Redis goes (or on `stop`); it is a daemon.
        self.client = redis.Redis.from_url(url, socket_timeout=None)
        self.commands: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with self.client.monitor() as m:
                for event in m.listen():
                    self.commands.append(str(event.get("command", "")))
                    if self.stop.is_set():
                        return
        except (redis.ConnectionError, OSError):
            return


def _decoded_messages(commands: list[str]) -> list[str]:
    """Celery message bodies in the pushed envelopes, base64-decoded."""
    bodies = []
    for command in commands:
        if not command.upper().startswith(("LPUSH", "RPUSH")):
            continue
        start = command.find("{")
        if start < 0:
            continue
        try:
            envelope: dict[str, Any] = json.loads(command[start:].encode().decode("unicode_escape"))
        except ValueError:
            continue
        body = envelope.get("body", "")
        try:
            bodies.append(base64.b64decode(body).decode())
        except ValueError:
            bodies.append(str(body))
        bodies.append(json.dumps(envelope.get("headers", {})))
    return bodies


def _db_text(database_url: str) -> str:
    if is_sqlite(database_url):
        path = Path(database_url.split("///", 1)[1])
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*")).decode(
            "latin-1")
    with opened(database_url) as engine, engine.connect() as conn:
        dump = []
        for table in ("batches", "jobs", "attempts", "control"):
            dump += [str(row) for row in conn.execute(text(f"SELECT * FROM {table}"))]
        return "\n".join(dump)


def test_the_api_key_is_nowhere(tmp_path: Path, database_url: str,
                                make_emulator: MakeEmulator) -> None:
    key = f"sk-live-{uuid.uuid4().hex}"
    manifest = e2e.write_jsonl(tmp_path / "m.jsonl", e2e.caption_rows(12))
    emu = make_emulator("--time-scale", "0.02", "--create-latency-s", "0.2", api_key=key)
    monitor: Monitor | None = None
    argvs: list[str] = []
    try:
        env = e2e.run_env(tmp_path, emu, database_url)
        proc = e2e.start_run(tmp_path, env, str(manifest), "-o", "out.jsonl")
        url_file = tmp_path / "run" / "redis_url"
        wait_until(url_file.exists, 60, what="the run's private Redis")
        monitor = Monitor(url_file.read_text().strip())
        monitor.start()
        wait_until(lambda: len(e2e.children(proc.pid)) >= 3, 60, what="worker and dispatcher")
        argvs = [cmd for _, cmd in e2e.children(proc.pid)]
        code = e2e.finish(proc, 180)
    finally:
        if monitor:
            monitor.stop.set()
    assert code == 0
    assert monitor is not None and any(SUBMIT_TASK in c for c in monitor.commands)
    messages = _decoded_messages(monitor.commands)
    assert any(f'"{SUBMIT_TASK}"' in m or "[[" in m for m in messages)
    places = {
        "child argv": "\n".join(argvs),
        "redis traffic": "\n".join(monitor.commands),
        "celery messages": "\n".join(messages),
        "results": (tmp_path / "out.jsonl").read_text(),
        "database": _db_text(database_url),
        "run output": (tmp_path / "run.out").read_text(),
    }
    for log in (tmp_path / "run").rglob("*.log"):
        places[str(log)] = log.read_text(errors="replace")
    assert len(places) >= 9  # run.log, worker.log, dispatcher.log, redis.log at least
    for where, content in places.items():
        assert key not in content, f"API key found in {where}"
        for form in _base64_forms(key):
            assert form not in content, f"base64 of the API key found in {where}"
    assert len(e2e.read_results(tmp_path / "out.jsonl")) == 12


def _bare_env(tmp_path: Path, sqlite_url: str, **extra: str) -> dict[str, str]:
    """A minimal environment (a key, nothing listening at PiAPI's address) for a `run` of
    m.jsonl, a one-row manifest written here."""
    e2e.write_jsonl(tmp_path / "m.jsonl", e2e.caption_rows(1))
    return {"PATH": "/usr/bin:/bin", "PIAPI_API_KEY": "k-123456", "DATABASE_URL": sqlite_url,
            "PIAPI_BASE_URL": e2e.NO_PIAPI.url, "PIAPI_BULK_RUN_DIR": str(tmp_path / "run"),
            **extra}


@pytest.mark.parametrize(
    ("args", "env_patch", "needle"),
    [
        (["run"], {}, "Missing argument"),
        (["run", "nope.csv"], {}, "nope.csv"),
        (["run", "m.jsonl"], {"PIAPI_API_KEY": ""}, "PIAPI_API_KEY"),
        (["run", "m.jsonl", "--concurrency", "zero"], {}, "concurrency"),
        (["export", "nobatch", "-o", "x.jsonl"], {}, "no batch"),
        (["frobnicate"], {}, "No such command"),
    ],
)
def test_usage_errors_are_one_line_exit_2(tmp_path: Path, sqlite_url: str, args: list[str],
                                          env_patch: dict[str, str], needle: str) -> None:
    done = e2e.piapi_bulk(tmp_path, _bare_env(tmp_path, sqlite_url, **env_patch), *args)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_piapi_is_a_clear_configuration_error(tmp_path: Path, sqlite_url: str) -> None:
    env = _bare_env(tmp_path, sqlite_url, PIAPI_CONNECT_TIMEOUT_S="1")
    done = e2e.piapi_bulk(tmp_path, env, "run", "m.jsonl")
    assert done.returncode == 2
    assert "cannot reach PiAPI" in done.stderr and "Traceback" not in done.stderr


def test_a_refused_key_is_a_clear_configuration_error(tmp_path: Path, sqlite_url: str,
                                                      make_emulator: MakeEmulator) -> None:
    e2e.write_jsonl(tmp_path / "m.jsonl", e2e.caption_rows(1))
    emu = make_emulator(api_key="the-right-key-0000")
    env = e2e.run_env(tmp_path, emu, sqlite_url, PIAPI_API_KEY="a-wrong-key-1111")
    done = e2e.piapi_bulk(tmp_path, env, "run", "m.jsonl")
    assert done.returncode == 2
    assert "refused the API key" in done.stderr and "a-wrong-key-1111" not in done.stderr
