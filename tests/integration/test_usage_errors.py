"""A command-line mistake costs nothing: one line on stderr, exit 2, no batch, no request."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.helpers import MakeEmulator, opened
from tests.integration.e2e import (
    NO_PIAPI,
    caption_rows,
    db_env,
    piapi_bulk,
    run_env,
    write_jsonl,
)
from workers.db import create_tables
from workers.models import BATCHES, JOBS

pytestmark = pytest.mark.integration  # every test here runs piapi-bulk as a process

JOY_T = "joycaption-beta-one"


def batches_and_jobs(database_url: str) -> tuple[int, int]:
    with opened(database_url) as engine:
        create_tables(engine)
        with engine.connect() as conn:
            return (int(conn.execute(select(func.count()).select_from(BATCHES)).scalar_one()),
                    int(conn.execute(select(func.count()).select_from(JOBS)).scalar_one()))


@pytest.mark.parametrize(("args", "message"), [
    (("--model", "Qubico/joycaptoin", "--task-type", JOY_T),
     "piapi-bulk: unknown model Qubico/joycaptoin (did you mean Qubico/joycaption?)"),
    (("--task-type", JOY_T), "piapi-bulk: no model: give --model or a model column"),
    (("--model", "Qubico/joycaption", "--task-type", "joycaption"),
     "piapi-bulk: unknown task type joycaption for model Qubico/joycaption (did you mean "
     "joycaption-beta-one?)"),
    (("--model", "Qubico/diffrhythm", "--task-type", "txt2audio-base", "--strict"),
     "piapi-bulk: unknown model Qubico/diffrhythm: --strict takes only models in "
     "piapi-bulk's catalogue ("),
])
def test_usage_errors_create_no_batch_and_send_nothing(tmp_path: Path, sqlite_url: str,
                                                       args: tuple[str, ...], message: str,
                                                       make_emulator: MakeEmulator) -> None:
    rows = [{k: v for k, v in r.items() if k not in ("model", "task_type")}
            for r in caption_rows(30)]
    manifest = write_jsonl(tmp_path / "captions.jsonl", rows)
    emu = make_emulator()
    env = run_env(tmp_path, emu, sqlite_url)
    for command in ("run", "submit"):
        output = ("-o", "out.jsonl") if command == "run" else ()
        done = piapi_bulk(tmp_path, env, command, str(manifest), *args, *output)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith(message), done.stderr
        assert done.stdout == ""
    ledger, stats = emu.ledger(), emu.stats()
    assert ledger == [] and stats["creates"] == 0
    assert batches_and_jobs(sqlite_url) == (0, 0)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(("output", "message"), [
    ("results", "piapi-bulk: {tmp}/results is a folder, not a file"),
    ("missing/out.jsonl", "piapi-bulk: cannot write {tmp}/missing/out.jsonl: no folder "
                          "{tmp}/missing"),
])
def test_a_results_file_that_cannot_be_written_is_refused_before_anything_is_paid(
        tmp_path: Path, sqlite_url: str, output: str, message: str,
        make_emulator: MakeEmulator) -> None:
    # Found by an exploratory run: every row ran and was paid for, then the results file
    # failed with a traceback.
    (tmp_path / "results").mkdir()
    manifest = write_jsonl(tmp_path / "captions.jsonl", caption_rows(3))
    emu = make_emulator()
    env = run_env(tmp_path, emu, sqlite_url)
    done = piapi_bulk(tmp_path, env, "run", str(manifest), "-o", str(tmp_path / output))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr == message.format(tmp=tmp_path) + "\n"
    assert emu.stats()["creates"] == 0 and batches_and_jobs(sqlite_url) == (0, 0)


def test_overwrite_sidecars_alone_is_a_usage_error(tmp_path: Path, sqlite_url: str) -> None:
    # It did nothing, silently.
    manifest = write_jsonl(tmp_path / "captions.jsonl", caption_rows(1))
    env = db_env(tmp_path, sqlite_url)
    for args in (("run", str(manifest)), ("export", "b1", "-o", "out.jsonl")):
        done = piapi_bulk(tmp_path, env, *args, "--overwrite-sidecars")
        assert done.returncode == 2, done.stderr
        assert done.stderr == "piapi-bulk: --overwrite-sidecars needs --captions-as-sidecar\n"


def test_a_misnamed_column_is_a_usage_error(tmp_path: Path, sqlite_url: str) -> None:
    manifest = tmp_path / "captions.csv"
    manifest.write_text("url,style\n" + "".join(
        f"https://example.test/{i}.png,Descriptive\n" for i in range(40)))
    env = run_env(tmp_path, NO_PIAPI, sqlite_url)
    done = piapi_bulk(tmp_path, env, "submit", str(manifest), "--model", "Qubico/joycaption",
                      "--task-type", JOY_T)
    assert done.returncode == 2
    assert done.stderr == (
        "piapi-bulk: no column is an input field of Qubico/joycaption joycaption-beta-one: "
        "found url, style; expected image, prompt_style, caption_length, workflow_type (or id, "
        "input, metadata, model, service_mode, task_type)\n")
    assert batches_and_jobs(sqlite_url) == (0, 0)


def test_a_model_piapi_bulk_does_not_know_is_still_passed_through(tmp_path: Path,
                                                                  sqlite_url: str) -> None:
    manifest = write_jsonl(tmp_path / "songs.jsonl", [{"lyrics": "[00:01.00]la"}])
    env = run_env(tmp_path, NO_PIAPI, sqlite_url)
    done = piapi_bulk(tmp_path, env, "submit", str(manifest), "--model", "Qubico/diffrhythm",
                      "--task-type", "txt2audio-base")
    assert done.returncode == 0, done.stderr
    assert "will be sent unchecked" in done.stderr
    assert batches_and_jobs(sqlite_url) == (1, 1)


def test_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    done = piapi_bulk(tmp_path, dict(os.environ), "--version")
    assert (done.returncode, done.stdout, done.stderr) == (
        0, f"piapi-bulk {version('piapi-bulk')}\n", "")
    assert version("piapi-bulk").count(".") >= 1


@pytest.mark.parametrize(("url", "message"), [
    ("sqlite:///{tmp}/no-such-folder/piapi-bulk.db",
     "piapi-bulk: bad setting DATABASE_URL: the folder {tmp}/no-such-folder does not exist; "
     "create it first\n"),
    ("not a url", "piapi-bulk: bad setting DATABASE_URL: not a database URL (Could not parse "
     "SQLAlchemy URL from given URL string)\n"),
    ("mysql://u@127.0.0.1/db", "piapi-bulk: bad setting DATABASE_URL: mysql is not supported: "
     "give a sqlite:/// or postgresql:// URL\n"),
    # Nothing listens on port 1: the database cannot be reached (its password not shown).
    ("postgresql://u:secret@127.0.0.1:1/db", "piapi-bulk: cannot use the database "
     "postgresql://u:***@127.0.0.1:1/db: connection failed: "),
])
@pytest.mark.parametrize("command", [("status",), ("export", "b1", "-o", "out.jsonl"),
                                     ("submit", "rows.jsonl", "--model", "Qubico/joycaption")])
def test_a_bad_database_url_is_one_line(tmp_path: Path, url: str, message: str,
                                        command: tuple[str, ...]) -> None:
    write_jsonl(tmp_path / "rows.jsonl", caption_rows(3))
    done = piapi_bulk(tmp_path, db_env(tmp_path, url.format(tmp=tmp_path)), *command)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(message.format(tmp=tmp_path)), done.stderr
    assert done.stderr.count("\n") == 1 and "secret" not in done.stderr, done.stderr
    assert not (tmp_path / "no-such-folder").exists() and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("command", ["web", "webhook", "flower"])
def test_a_port_out_of_range_is_one_line(tmp_path: Path, sqlite_url: str, command: str) -> None:
    done = piapi_bulk(tmp_path, db_env(tmp_path, sqlite_url), command, "--port", "99999",
                      timeout_s=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("piapi-bulk: Invalid value for '--port'")
    assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize("command", ["web", "webhook", "flower", "emulator"])
def test_a_port_in_use_is_one_line(tmp_path: Path, sqlite_url: str, command: str) -> None:
    """Another program listens on the port: one line and exit 2 (flower and the emulator
    printed a traceback and exited 1, web exited 3 after uvicorn's own line)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = piapi_bulk(tmp_path, db_env(tmp_path, sqlite_url), command, "--port", str(port),
                          timeout_s=30)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr.endswith(f"cannot listen on 127.0.0.1:{port}: Address already in use "
                                "(give another --port)\n"), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize(("url", "message"), [
    # Nothing listens on port 1 on loopback (the password is masked).
    ("redis://:secret@127.0.0.1:1/0", "piapi-bulk: cannot reach Redis redis://:***@127.0.0.1:1/0: "
     "Error 111 connecting to 127.0.0.1:1. Connection refused."),
    ("secret-garbage", "piapi-bulk: bad setting REDIS_URL: not a Redis URL: it must start with "
     "redis://, rediss:// or unix:// (for example redis://127.0.0.1:6379/0)"),
])
@pytest.mark.parametrize("command", [
    ("run", "rows.jsonl", "-o", "out.jsonl", "--model", "Qubico/joycaption"), ("dispatcher",)])
def test_a_redis_that_cannot_be_used_is_one_line(tmp_path: Path, sqlite_url: str,
                                                 command: tuple[str, ...], url: str,
                                                 message: str,
                                                 make_emulator: MakeEmulator) -> None:
    """REDIS_URL names a fleet's Redis; when it is no Redis URL, or nothing answers there,
    the command says so in one line, password masked, and creates no task and no batch
    (a batch left behind would wait for a fleet that cannot serve it)."""
    write_jsonl(tmp_path / "rows.jsonl", caption_rows(3))
    emu = make_emulator()
    env = run_env(tmp_path, emu, sqlite_url, REDIS_URL=url)
    done = piapi_bulk(tmp_path, env, *command)
    assert done.returncode == 2
    # (the dispatcher logs its start first, on stderr too)
    assert done.stderr.splitlines()[-1] == message
    assert "Traceback" not in done.stderr and "secret" not in done.stderr
    assert emu.stats()["creates"] == 0 and not (tmp_path / "out.jsonl").exists()
    env.pop("REDIS_URL")
    listed = piapi_bulk(tmp_path, env, "status", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["batches"] == []
