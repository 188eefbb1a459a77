"""`run` spends only on its own manifest, and an interrupted run still leaves its results.

Through the CLI against the emulator's ledger (every task it created): a batch `submit`ted
earlier is not created by a later `run` of another manifest unless `--all` says so; SIGINT
to the run's process group, or SIGTERM to `run` alone, ends it with exit 130 and a results
file holding every row, the unfinished ones `pending`.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from sqlalchemy.engine import Engine

from scheduler.runner import held_back
from tests.helpers import MakeEmulator, wait_until
from tests.integration.e2e import (
    add_batch,
    caption_rows,
    count_state,
    finish,
    piapi_bulk,
    read_results,
    run_env,
    start_run,
    wait_group_gone,
    wan_rows,
    write_jsonl,
)


def test_run_creates_only_its_own_rows_and_all_runs_the_others(
        tmp_path: Path, database_url: str, make_emulator: MakeEmulator) -> None:
    video = write_jsonl(tmp_path / "video.jsonl", wan_rows(2))
    tiny = write_jsonl(tmp_path / "tiny.jsonl", caption_rows(5))
    emu = make_emulator("--time-scale", "0.01", "--concurrency", "10")
    env = run_env(tmp_path, emu, database_url)
    submitted = piapi_bulk(tmp_path, env, "submit", str(video))
    assert submitted.returncode == 0, submitted.stderr
    video_batch = submitted.stdout.strip().splitlines()[-1]

    code = finish(start_run(tmp_path, env, str(tiny), "-o", "tiny.results.jsonl"), 120)
    out = (tmp_path / "run.out").read_text()
    assert code == 0, out
    ledger = emu.ledger()
    assert len(ledger) == 5, ledger
    assert {t["model"] for t in ledger} == {"Qubico/joycaption"}
    assert "1 other open batch (2 rows to run) in this database left alone" in out
    assert count_state(database_url, "queued") == 2  # the submitted batch, untouched

    # --all: the same command also runs the submitted batch, and waits for it.
    code = finish(start_run(tmp_path, env, str(tiny), "-o", "tiny.results.jsonl", "--all",
                            name="run-all"), 180)
    out = (tmp_path / "run-all.out").read_text()
    assert code == 0, out
    assert "--all: also running 1 other open batch (2 rows to run)" in out
    ledger = emu.ledger()
    assert len(ledger) == 7
    assert sorted(t["model"] for t in ledger).count("Wan") == 2
    status = json.loads(piapi_bulk(tmp_path, env, "status", video_batch, "--json").stdout)
    assert status["batches"][0]["counts"]["completed"] == 2


def _interrupt_mid_run(make_emulator: MakeEmulator, tmp_path: Path, database_url: str,
                       send: str) -> None:
    rows = wan_rows(12)
    manifest = write_jsonl(tmp_path / "long.jsonl", rows)
    # Wan takes minutes at PiAPI; at this scale about 20 s, so the run is surely mid-way.
    emu = make_emulator("--time-scale", "0.1", "--concurrency", "4")
    env = run_env(tmp_path, emu, database_url)
    proc = start_run(tmp_path, env, str(manifest), "-o", "long.results.jsonl")
    wait_until(lambda: count_state(database_url, "running") >= 1, 60,
               what="a task to be running")
    if send == "group":
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    else:
        proc.send_signal(signal.SIGTERM)  # what a scheduler or `timeout` does
    code = finish(proc, 90)
    out = (tmp_path / "run.out").read_text()
    assert code == 130, out
    wait_group_gone(proc.pid)
    results = read_results(tmp_path / "long.results.jsonl")
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    statuses = {r["status"] for r in results}
    assert "pending" in statuses, statuses
    assert statuses <= {"pending", "completed"}
    assert "interrupted; 12 rows written to long.results.jsonl" in out
    assert out.count("Traceback") == 0
    assert len(emu.ledger()) <= 12


def test_sigint_to_the_process_group_writes_results_and_exits_130(
        tmp_path: Path, database_url: str, make_emulator: MakeEmulator) -> None:
    _interrupt_mid_run(make_emulator, tmp_path, database_url, "group")


def test_sigterm_to_run_writes_results_and_exits_130(tmp_path: Path, sqlite_url: str,
                                                     make_emulator: MakeEmulator) -> None:
    _interrupt_mid_run(make_emulator, tmp_path, sqlite_url, "run")


def test_status_json_says_done_after_a_completed_run(tmp_path: Path, sqlite_url: str,
                                                     make_emulator: MakeEmulator) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", caption_rows(20))
    emu = make_emulator("--time-scale", "0.01")
    env = run_env(tmp_path, emu, sqlite_url)
    assert finish(start_run(tmp_path, env, str(manifest), "-o", "out.jsonl"), 120) == 0
    status = json.loads(piapi_bulk(tmp_path, env, "status", "--json").stdout)
    (batch,) = status["batches"]
    assert batch["finished"] == batch["total"] == 20
    assert batch["done"] is True


def test_two_runs_on_one_redis_each_run_their_own_batch(tmp_path: Path, sqlite_url: str,
                                                        redis_url: str,
                                                        make_emulator: MakeEmulator) -> None:
    """Two `run`s sharing REDIS_URL: the second finds the first's scoped dispatcher and
    workers, starts its own (they would stop with the first run), and each run creates
    exactly its own rows."""
    videos = wan_rows(6)
    captions = caption_rows(10)
    long_manifest = write_jsonl(tmp_path / "videos.jsonl", videos)
    short_manifest = write_jsonl(tmp_path / "captions.jsonl", captions)
    emu = make_emulator("--time-scale", "0.05", "--concurrency", "10")
    env = run_env(tmp_path, emu, sqlite_url, REDIS_URL=redis_url)
    first = start_run(tmp_path, env, str(long_manifest), "-o", "videos.out", name="first")
    wait_until(lambda: count_state(sqlite_url, "running") >= 1, 60,
               what="the first run's tasks to be running")
    second = start_run(tmp_path, env, str(short_manifest), "-o", "captions.out",
                       name="second")
    assert finish(second, 120) == 0, (tmp_path / "second.out").read_text()
    assert finish(first, 180) == 0, (tmp_path / "first.out").read_text()
    ledger = emu.ledger()
    assert sorted(t["model"] for t in ledger) == ["Qubico/joycaption"] * 10 + ["Wan"] * 6
    assert {r["status"] for r in read_results(tmp_path / "videos.out")} == {"completed"}
    assert {r["status"] for r in read_results(tmp_path / "captions.out")} == {"completed"}


def test_sigterm_during_ingest_stops_between_chunks(tmp_path: Path, sqlite_url: str,
                                                    make_emulator: MakeEmulator) -> None:
    """A stop asked for while a large manifest is being stored ends the run at the next
    chunk boundary: exit 130, no traceback, nothing created, and no results file, since a
    file now would leave out the rows not read yet (every manifest row has its line is the
    promise). The same command then reads on and writes every row."""
    rows = caption_rows(300_000)  # ingest takes several seconds: the signal lands in it
    manifest = write_jsonl(tmp_path / "big.jsonl", rows)
    emu = make_emulator("--time-scale", "0.01")
    env = run_env(tmp_path, emu, sqlite_url)
    proc = start_run(tmp_path, env, str(manifest), "-o", "big.results.jsonl")
    wait_until(lambda: count_state(sqlite_url, "queued") >= 5000, 120,
               what="the first chunk of the ingest")
    proc.send_signal(signal.SIGTERM)
    code = finish(proc, 60)
    out = (tmp_path / "run.out").read_text()
    assert code == 130, out
    stored = count_state(sqlite_url, "queued")
    assert 0 < stored < len(rows), "the ingest was not interrupted part-way"
    assert (f"interrupted while reading the manifest ({stored} rows stored); "
            "big.results.jsonl is not written until every row is read") in out, out
    assert out.count("Traceback") == 0, out
    assert not (tmp_path / "big.results.jsonl").exists()
    assert emu.ledger() == []
    status = json.loads(piapi_bulk(tmp_path, env, "status", "--json").stdout)
    assert [(b["total"], b["done"]) for b in status["batches"]] == [(stored, False)]


def test_run_all_names_the_batches_that_create_nothing_now(engine: Engine) -> None:
    # Found by an exploratory run: `--all` said it also ran a batch paused on its budget,
    # then ended with that batch untouched.
    add_batch(engine, "live", 1)
    add_batch(engine, "paused", 1, paused="budget reached")
    add_batch(engine, "stopped", 1, cancel_mode="now")
    assert held_back(engine, ["live", "paused", "stopped"]) == {
        "paused": "paused: budget reached", "stopped": "cancelled (--now)"}
    assert held_back(engine, []) == {}
