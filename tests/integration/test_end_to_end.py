"""`piapi-bulk run` end to end on real parts: emulator over HTTP, redis-server, Celery, a DB."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.helpers import HTTP, MakeEmulator, wait_until
from tests.integration import e2e


def test_mixed_manifest_completes_in_order(tmp_path: Path, database_url: str,
                                           make_emulator: MakeEmulator) -> None:
    rows = e2e.caption_rows(30) + [
        {"id": f"vid-{i}", "model": "Wan", "task_type": "wan26-txt2video",
         "input": {"prompt": f"a scene {i}", "duration": 5}} for i in range(1, 3)
    ]
    manifest = e2e.write_jsonl(tmp_path / "mixed.jsonl", rows)
    # Videos of 30-60 s (0.6-1.2 s here) rather than Wan's 120-240: what counts is two kinds.
    emu = make_emulator("--time-scale", "0.02", "--concurrency", "10", "--duration", "wan=30:60")
    env = e2e.run_env(tmp_path, emu, database_url)
    code = e2e.finish(e2e.start_run(tmp_path, env, str(manifest), "-o", "out.jsonl"), 180)
    results = e2e.read_results(tmp_path / "out.jsonl")
    stats = emu.stats()
    ledger = {t["task_id"]: t for t in emu.ledger()}
    # The same command again: same batch, nothing re-run, same results.
    again = e2e.finish(e2e.start_run(tmp_path, env, str(manifest), "-o", "again.jsonl",
                                     name="again"), 60)
    assert again == 0
    assert e2e.read_results(tmp_path / "again.jsonl") == results
    assert emu.stats()["requests"]["create"] == stats["requests"]["create"]
    assert code == 0, (tmp_path / "run.out").read_text()[-3000:]
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    assert [r["line"] for r in results] == list(range(1, len(rows) + 1))
    assert {r["status"] for r in results} == {"completed"}
    for r in results:
        assert r["output"] == ledger[r["task_id"]]["output"]
        assert r["attempts"] == 1 and r["error"] is None and r["usage"]["consume"] > 0
    assert all(r["output"]["text"] for r in results if r["model"] == "Qubico/joycaption")
    assert all(r["urls"] and r["urls"][0].endswith(".mp4") for r in results if r["model"] == "Wan")
    assert results[0]["metadata"] == {"n": 1}
    assert stats["max_creates_per_input"] == 1 and stats["creates"] == len(rows)
    assert stats["peak_in_flight"] <= 10


@pytest.mark.parametrize("policy", ["reconcile", "fail"])
def test_worker_killed_mid_batch_then_same_run_again(tmp_path: Path, database_url: str, policy: str,
                                                     make_emulator: MakeEmulator) -> None:
    rows = e2e.caption_rows(30)
    manifest = e2e.write_jsonl(tmp_path / "kill.jsonl", rows)
    # Each create takes 0.5 s at the emulator, so creates are in flight at most instants.
    emu = make_emulator("--time-scale", "0.02", "--concurrency", "8",
                        "--create-latency-s", "0.5")
    env = e2e.run_env(tmp_path, emu, database_url)
    args = (str(manifest), "-o", "out.jsonl", "--concurrency", "8",
            "--on-ambiguous", policy)
    first = e2e.start_run(tmp_path, env, *args, name="run1")
    # Kill at an instant when a create is in flight (the case that must not double-post).
    wait_until(lambda: e2e.count_state(database_url, "completed") >= 10
               and e2e.count_state(database_url, "submitting") >= 1, 120,
               what="10 completed rows and a create in flight")
    os.kill(e2e.child(first, " worker"), signal.SIGKILL)  # the worker dies mid-create
    os.kill(first.pid, signal.SIGKILL)  # and so does the whole run
    first.wait(timeout=10)
    e2e.wait_group_gone(first.pid)
    second = e2e.start_run(tmp_path, env, *args, name="run2")
    code = e2e.finish(second, 240)
    results = e2e.read_results(tmp_path / "out.jsonl")
    stats = emu.stats()
    ledger = {t["task_id"]: t for t in emu.ledger()}
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    # Never posted twice: the emulator saw at most one create per row.
    assert stats["max_creates_per_input"] == 1
    for r in results:
        if r["status"] == "completed":
            assert r["output"] == ledger[r["task_id"]]["output"]
            assert r["attempts"] == 1
    unsettled = [r for r in results if r["status"] != "completed"]
    if policy == "reconcile":
        # The creates in flight at the kill were found in PiAPI's history and adopted (or,
        # if they never reached it, posted again): every row completes.
        assert not unsettled and code == 0
        log = (tmp_path / "run" / "logs" / "worker.log").read_text()
        assert "adopted task" in log or "made no task" in log
    else:
        for r in unsettled:
            assert r["status"] == "failed" and r["error"]["kind"] == "ambiguous", r
            assert r["attempts"] == 1
        # Only creates in flight at the kill can be ambiguous: at most the concurrency.
        assert 1 <= len(unsettled) <= 8, [r["id"] for r in unsettled]
        assert code == 1


def test_refuse_mode_never_exceeds_the_account_limit(tmp_path: Path, database_url: str,
                                                     make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--time-scale", "0.01", "--concurrency", "5",
                        "--over-limit", "refuse")
    # No --concurrency: the account's limit.
    rows = e2e.caption_rows(40)
    code, results, stats, _ = e2e.run_manifest(emu, tmp_path, database_url, rows, 180)
    assert code == 0, (tmp_path / "run.out").read_text()[-3000:]
    assert {r["status"] for r in results} == {"completed"} and len(results) == 40
    assert stats["peak_in_flight"] <= 5
    assert stats["creates_refused"] == 0  # the dispatcher never even asked for a sixth
    assert stats["max_creates_per_input"] == 1


def test_a_concurrency_above_the_account_limit_is_held_to_it(tmp_path: Path, sqlite_url: str,
                                                             make_emulator: MakeEmulator) -> None:
    """`--concurrency` leaves room for other users of the account when lower than its
    limit; above it, the account's limit still holds (it went over it, queued at PiAPI)."""
    emu = make_emulator("--time-scale", "0.01", "--concurrency", "3")
    out = e2e.run_manifest(emu, tmp_path, sqlite_url, e2e.caption_rows(30), 180,
                           ("--concurrency", "6"))
    said = (tmp_path / "run.out").read_text()
    assert out.code == 0, said[-3000:]
    assert "(account limit 3 in flight; --concurrency 6 is above it)" in said, said[:2000]
    assert out.stats["peak_in_flight"] <= 3 and out.stats["max_creates_per_input"] == 1


def test_bad_rows_are_reported_and_the_rest_runs(tmp_path: Path, database_url: str,
                                                 make_emulator: MakeEmulator) -> None:
    good = e2e.caption_rows(4)
    lines: list[object] = [
        good[0],                                                        # line 1
        '{"id": "broken", "model": "Qubico/joycaption", ',               # line 2: malformed
        {**good[1], "id": "dup"},                                       # line 3
        {**good[2], "id": "dup"},                                       # line 4: duplicate id
        {"id": "noimg", "model": "Qubico/joycaption",                   # line 5: missing field
         "task_type": "joycaption-beta-one", "input": {"prompt_style": "Descriptive"}},
        {"id": "nomodel", "model": "Wan", "task_type": "x",             # line 6: unknown type
         "input": {"image": "https://example.test/x.png"}},
        "",                                                             # line 7: blank
        good[3],                                                        # line 8
    ]
    emu = make_emulator("--time-scale", "0.02")
    code, results, stats, _ = e2e.run_manifest(emu, tmp_path, database_url, lines, 180)
    assert code == 1
    by_line = {r["line"]: r for r in results}
    assert sorted(by_line) == [1, 2, 3, 4, 5, 6, 8]
    for line in (2, 4, 5, 6):
        assert by_line[line]["status"] == "invalid", by_line[line]
        assert by_line[line]["error"]["kind"] == "invalid" and by_line[line]["error"]["message"]
    assert "duplicate" in by_line[4]["error"]["message"]
    assert "image" in by_line[5]["error"]["message"]
    assert "unknown task_type 'x' for model 'Wan'" in by_line[6]["error"]["message"]
    for line in (1, 3, 8):
        assert by_line[line]["status"] == "completed"
    assert stats["creates"] == 3  # an invalid row never reaches the paid API
    out = (tmp_path / "run.out").read_text()
    assert "line 2" in out and "line 4" in out


def test_csv_cells_are_typed_per_model(tmp_path: Path, sqlite_url: str,
                                       make_emulator: MakeEmulator) -> None:
    manifest = tmp_path / "videos.csv"
    manifest.write_text(
        "id,prompt,duration,watermark\n"
        "a,a calm lake,10,false\n"
        "b,a storm,abc,true\n"
        "c,a forest,5,\n"
    )
    emu = make_emulator("--time-scale", "0.01")
    env = e2e.run_env(tmp_path, emu, sqlite_url)
    code = e2e.finish(e2e.start_run(tmp_path, env, str(manifest), "--model", "Wan", "--task-type",
                                    "wan26-txt2video", "-o", "out.jsonl"), 180)
    results = e2e.read_results(tmp_path / "out.jsonl")
    assert code == 1
    assert [r["status"] for r in results] == ["completed", "invalid", "completed"]
    assert "duration" in results[1]["error"]["message"]


def test_unknown_model_sent_unchecked_strict_and_service_mode(tmp_path: Path, sqlite_url: str,
                                                              make_emulator: MakeEmulator) -> None:
    """A model the catalogue does not know is sent as given and marked unchecked (this
    one is unknown to the emulator too, so PiAPI's refusal ends the row; a model PiAPI does
    run completes: see test_documented_piapi);
    --service-mode reaches the create's config; --strict refuses such rows before any
    create; another --service-mode for an existing batch is refused with exit 2."""
    song = {"id": "song", "model": "Qubico/not-a-model", "task_type": "txt2audio-base",
            "input": {"lyrics": "[00:01.00]la", "style_prompt": "jazz"}}
    manifest = e2e.write_jsonl(tmp_path / "m.jsonl", [*e2e.caption_rows(2), song])
    emu = make_emulator("--time-scale", "0.02")
    env = e2e.run_env(tmp_path, emu, sqlite_url)
    code = e2e.finish(e2e.start_run(tmp_path, env, str(manifest), "-o", "out.jsonl",
                                    "--service-mode", "public"), 180)
    results = e2e.read_results(tmp_path / "out.jsonl")
    task = HTTP.get(f"{emu.url}/api/v1/task/{results[0]['task_id']}",
                     headers={"x-api-key": emu.api_key}, timeout=5).json()["data"]
    ledger = emu.ledger()
    out = (tmp_path / "run.out").read_text()
    assert code == 1, out[-3000:]
    assert ("model Qubico/not-a-model task type txt2audio-base is not in piapi-bulk's "
            "catalogue: 1 row will be sent unchecked (--strict refuses them)") in out
    assert [r["status"] for r in results] == ["completed", "completed", "failed"]
    assert [r.get("unchecked") for r in results] == [None, None, True]
    assert results[2]["error"]["kind"] == "input"
    assert "not-a-model" in results[2]["error"]["message"]
    assert task["config"]["service_mode"] == "public"
    assert {t["model"] for t in ledger} == {"Qubico/joycaption"}  # refused: no task

    status = e2e.piapi_bulk(tmp_path, env, "status", "--json")
    assert status.returncode == 0, status.stderr
    [batch] = json.loads(status.stdout)["batches"]
    assert batch["unchecked"] == 1
    again = e2e.piapi_bulk(tmp_path, env, "submit", str(manifest), "--service-mode", "private")
    assert again.returncode == 2 and "--service-mode public" in again.stderr

    strict = e2e.write_jsonl(tmp_path / "strict.jsonl", [song, *e2e.caption_rows(1, "s")])
    sub = e2e.piapi_bulk(tmp_path, {**env, "PIAPI_BULK_STRICT": "1"}, "submit", str(strict))
    assert sub.returncode == 0, sub.stderr
    assert "1 invalid" in sub.stderr and "unknown model 'Qubico/not-a-model'" in sub.stderr
    assert "unchecked" not in sub.stderr
