"""A row is paid for once, across batches: `run` and `submit` through the CLI, checked
against the emulator's ledger (every task it created)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.helpers import MakeEmulator
from tests.integration.e2e import (
    caption_rows,
    finish,
    piapi_bulk,
    read_results,
    run_env,
    start_run,
    write_jsonl,
)

EMULATOR_ARGS = ("--time-scale", "0.005", "--concurrency", "25")


def run_in(folder: Path, env: dict[str, str], manifest: Path, *args: str,
           timeout_s: float = 180) -> tuple[int, str]:
    """`piapi-bulk run MANIFEST -o out.jsonl ...` with `folder` as the current directory;
    exit code and output."""
    folder.mkdir(parents=True, exist_ok=True)
    code = finish(start_run(folder, env, str(manifest), "-o", "out.jsonl", *args), timeout_s)
    return code, (folder / "run.out").read_text()


def by_id(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in results}


def test_a_grown_manifest_pays_only_for_its_new_rows(tmp_path: Path, sqlite_url: str,
                                                     make_emulator: MakeEmulator) -> None:
    emu = make_emulator(*EMULATOR_ARGS)
    env = run_env(tmp_path, emu, sqlite_url)
    first = write_jsonl(tmp_path / "captions.jsonl", caption_rows(100))
    code, out = run_in(tmp_path / "one", env, first)
    assert code == 0, out[-3000:]
    assert len(emu.ledger()) == 100
    assert "0 rows reused, 100 created" in out
    created = re.search(r"new batch (b\w+)", out)
    assert created is not None
    first_batch = created.group(1)
    paid = by_id(read_results(tmp_path / "one" / "out.jsonl"))
    # The same command again: the batch is done, and the count says none is this run's.
    code, out = run_in(tmp_path / "one", env, first)
    assert code == 0 and "resuming batch" in out, out[-3000:]
    assert "0 rows reused, 100 created (0 by this run)" in out

    grown = write_jsonl(tmp_path / "captions.jsonl", caption_rows(105))
    code, out = run_in(tmp_path / "two", env, grown)
    assert code == 0, out[-3000:]
    ledger = emu.ledger()
    assert len(ledger) == 105  # exactly the 5 new rows were paid for
    assert "100 rows reused, 5 created" in out

    # --no-reuse: a new batch of the same rows (other bytes) pays for each row again.
    again = write_jsonl(tmp_path / "again.jsonl", [
        json.dumps(r, separators=(",", ":")) for r in caption_rows(10)])
    code, out = run_in(tmp_path / "three", env, again, "--no-reuse")
    assert code == 0, out[-3000:]
    assert len(emu.ledger()) == 115
    assert "0 rows reused, 10 created" in out
    results = read_results(tmp_path / "two" / "out.jsonl")
    assert len(results) == 105 and {r["status"] for r in results} == {"completed"}
    reused = [r for r in results if "reused_from" in r]
    assert [r["id"] for r in reused] == [f"img-{i}" for i in range(1, 101)]
    assert {r["reused_from"]["batch"] for r in reused} == {first_batch}
    tasks = {t["task_id"]: t for t in ledger}
    for r in reused:
        original = paid[r["id"]]
        assert r["reused_from"]["task_id"] == r["task_id"] == original["task_id"]
        assert r["output"] == original["output"] == tasks[r["task_id"]]["output"]
        assert r["usage"] == {"consume": 0, "usd": 0.0} and r["attempts"] == 0
    for r in results[100:]:
        assert r["task_id"] not in {p["task_id"] for p in paid.values()}
        assert r["usage"]["consume"] > 0
    fresh = read_results(tmp_path / "three" / "out.jsonl")
    assert not any("reused_from" in r for r in fresh)
    assert {r["task_id"] for r in fresh}.isdisjoint(r["task_id"] for r in paid.values())


def test_the_same_manifest_from_another_folder_pays_nothing(tmp_path: Path,
                                                            make_emulator: MakeEmulator) -> None:
    """No DATABASE_URL: both runs find the one database in the user's data folder."""
    emu = make_emulator(*EMULATOR_ARGS)
    env = run_env(tmp_path, emu, "unused", XDG_DATA_HOME=str(tmp_path / "data"))
    del env["DATABASE_URL"]
    rows = caption_rows(100)
    code, out = run_in(tmp_path / "a", env, write_jsonl(tmp_path / "a.jsonl", rows))
    assert code == 0, out[-3000:]
    assert len(emu.ledger()) == 100
    (tmp_path / "b").mkdir()
    moved = write_jsonl(tmp_path / "b" / "captions.jsonl", rows)
    code, out = run_in(tmp_path / "b", env, Path("captions.jsonl"))
    assert code == 0, out[-3000:]
    assert len(emu.ledger()) == 100  # not a single task more
    assert moved.is_file()
    assert (tmp_path / "data" / "piapi-bulk" / "piapi-bulk.db").is_file()
    assert not list((tmp_path / "a").glob("*.db")) and not list((tmp_path / "b").glob("*.db"))
    results = read_results(tmp_path / "b" / "out.jsonl")
    assert len(results) == 100 and {r["status"] for r in results} == {"completed"}


def test_a_twin_in_flight_in_another_batch_is_waited_for(tmp_path: Path, database_url: str,
                                                         make_emulator: MakeEmulator) -> None:
    """A batch submitted for the fleet, and a grown copy of it run while the first is still
    waiting or running: no row is created twice (the emulator counts creates per input).
    (The run's fleet serves the submitted batch too, oldest first, so the grown batch's rows
    find their twins dispatched or running and wait for them.)"""
    emu = make_emulator(*EMULATOR_ARGS)
    env = run_env(tmp_path, emu, database_url)
    submitted = write_jsonl(tmp_path / "submitted.jsonl", caption_rows(100))
    done = piapi_bulk(tmp_path, env, "submit", str(submitted))
    assert done.returncode == 0, done.stderr
    grown = write_jsonl(tmp_path / "grown.jsonl", caption_rows(105))
    code = finish(start_run(tmp_path, env, str(grown), "-o", "out.jsonl"), 180)
    assert code == 0, (tmp_path / "run.out").read_text()[-3000:]
    stats, ledger = emu.stats(), emu.ledger()
    assert len(ledger) == 105 and stats["max_creates_per_input"] == 1
    results = read_results(tmp_path / "out.jsonl")
    assert len(results) == 105 and {r["status"] for r in results} == {"completed"}
