"""Outputs kept: `run --download DIR` and `download BATCH --to DIR` store every output file
with the size and sha256 the emulator served, fetch none twice (a run killed mid-way and
started again included), and a 404 or a full disk is a per-row reason, never a crash.

Checked against the emulator's own ledger of files served (`/_emulator/files`), the files
on disk and the results.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.helpers import HTTP, Emulator, MakeEmulator, opened, wait_until
from tests.integration.e2e import (
    count_state,
    finish,
    flux_rows,
    piapi_bulk,
    read_results,
    run_env,
    run_manifest,
    start_run,
    wait_group_gone,
    wan_rows,
    write_jsonl,
)
from workers.models import DOWNLOADS
from workers.output_files import output_files

FILE_BYTES = 300_000
"""Big enough that a file takes several reads and writes."""


def _emulator(make_emulator: MakeEmulator, **config: Any) -> Emulator:
    emu = make_emulator("--time-scale", "0.01", "--concurrency", "10")
    emu.configure(file_bytes=FILE_BYTES, **config)
    return emu


def _served(emu: Emulator) -> dict[str, Any]:
    return dict(HTTP.get(f"{emu.url}/_emulator/files", timeout=5).json())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_kept(results: list[dict[str, Any]], emu: Emulator, folder: Path) -> int:
    """Every output file of every completed row is in `folder`, as the results say and
    with the bytes the emulator served, each fetched exactly once; returns the files."""
    served = _served(emu)["files"]
    kept = 0
    for row in results:
        assert row["status"] == "completed", row
        urls = output_files(row["output"])
        assert urls, row
        assert [f["url"] for f in row["files"]] == urls, row
        for f in row["files"]:
            path = Path(f["path"])
            assert path.parent == folder.resolve(), f
            name = f["url"].rsplit("/", 1)[-1]
            assert f["bytes"] == path.stat().st_size == served[name]["bytes"] == FILE_BYTES
            assert f["sha256"] == _sha256(path) == served[name]["sha256"]
            kept += 1
    assert {n: s["fetches"] for n, s in served.items()} == dict.fromkeys(served, 1)
    assert len(served) == kept
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]
    return kept


def test_run_download_keeps_every_output_with_its_size_and_hash(
        tmp_path: Path, database_url: str, make_emulator: MakeEmulator) -> None:
    emu = _emulator(make_emulator)
    rows = flux_rows(40) + wan_rows(4)
    outcome = run_manifest(emu, tmp_path, database_url, rows, 180,
                           ("--download", "kept"))
    assert outcome.code == 0, (tmp_path / "run.out").read_text()
    kept = _check_kept(outcome.results, emu, tmp_path / "kept")
    assert kept == 44
    assert (tmp_path / "kept" / "flux-1.png").is_file()
    assert (tmp_path / "kept" / "wan-4.mp4").is_file()
    assert "44 output files kept in" in (tmp_path / "run.out").read_text()


def _downloads(database_url: str, state: str) -> int:
    with opened(database_url) as engine, engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(DOWNLOADS)
                               .where(DOWNLOADS.c.state == state)) or 0)


def test_a_run_killed_mid_download_and_started_again_fetches_no_file_twice(
        tmp_path: Path, sqlite_url: str, make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--time-scale", "0.05", "--concurrency", "6")
    emu.configure(file_bytes=FILE_BYTES)
    rows = flux_rows(30)
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    env = run_env(tmp_path, emu, sqlite_url)
    args = (str(manifest), "-o", "out.jsonl", "--download", "kept")
    proc = start_run(tmp_path, env, *args)
    wait_until(lambda: _downloads(sqlite_url, "done") >= 5, 90, what="some files kept")
    # Hold the next files at the emulator: the kill then finds fetches under way (claimed
    # in the record, their requests sent) and none between its bytes and its record.
    emu.configure(files_paused=True)
    wait_until(lambda: 0 < _served(emu)["waiting"] == _downloads(sqlite_url, "fetching"), 30,
               what="fetches held at the emulator")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    wait_group_gone(proc.pid)
    assert _downloads(sqlite_url, "pending") + _downloads(sqlite_url, "fetching") > 0
    emu.configure(files_paused=False)

    code = finish(start_run(tmp_path, env, *args, name="again"), 180)
    assert code == 0, (tmp_path / "again.out").read_text()
    results = read_results(tmp_path / "out.jsonl")
    assert [r["id"] for r in results] == [r["id"] for r in rows]
    assert _check_kept(results, emu, tmp_path / "kept") == 30


def test_an_output_gone_from_piapi_is_that_rows_reason_and_the_run_ends(
        tmp_path: Path, sqlite_url: str, make_emulator: MakeEmulator) -> None:
    emu = _emulator(make_emulator, files_gone=0.3)
    outcome = run_manifest(emu, tmp_path, sqlite_url, flux_rows(20), 120,
                           ("--download", "kept"))
    out = (tmp_path / "run.out").read_text()
    assert outcome.code == 1, out  # rows completed, but not every file was kept
    gone = [r for r in outcome.results if r.get("download_errors")]
    kept = [r for r in outcome.results if not r.get("download_errors")]
    assert gone and kept
    for row in gone:
        assert row["status"] == "completed" and row["files"] == []
        (error,) = row["download_errors"]
        assert error == {"url": row["output"]["image_url"],
                         "error": "output no longer on PiAPI's servers (HTTP 404)"}
        assert not (tmp_path / "kept" / f"{row['id']}.png").exists()
    for row in kept:
        assert Path(row["files"][0]["path"]).stat().st_size == FILE_BYTES
    ledger = _served(emu)
    assert ledger["refused"] == len(gone)  # a 404 is final: asked once
    assert f"{len(kept)} output files kept in" in out
    assert f"{len(gone)} not kept (gone {len(gone)})" in out
    assert "Traceback" not in out


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 256 KiB tmpfs mounted at tmp_path/small (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.integration
def test_a_full_disk_gives_each_row_its_reason_and_the_run_ends(
        tmp_path: Path, sqlite_url: str, make_emulator: MakeEmulator, small_disk: Path) -> None:
    emu = make_emulator("--time-scale", "0.01", "--concurrency", "10")
    emu.configure(file_bytes=100_000)  # two fit in 256 KiB
    outcome = run_manifest(emu, tmp_path, sqlite_url, flux_rows(12), 120,
                           ("--download", str(small_disk)))
    out = (tmp_path / "run.out").read_text()
    assert outcome.code == 1, out
    assert "Traceback" not in out
    assert out.count("stopped downloading for this run") == 1, out
    full = [r for r in outcome.results if r.get("download_errors")]
    kept = [r for r in outcome.results if r["files"]]
    assert len(full) + len(kept) == 12 and full
    assert all(r["status"] == "completed" for r in outcome.results)
    for row in full:
        assert "disk full" in row["download_errors"][0]["error"], row
    for row in kept:
        (f,) = row["files"]
        assert _sha256(Path(f["path"])) == f["sha256"]
    assert not [p for p in small_disk.iterdir() if p.name.endswith(".part")]


def test_download_later_fetches_a_finished_batch_once(
        tmp_path: Path, sqlite_url: str, make_emulator: MakeEmulator) -> None:
    emu = _emulator(make_emulator)
    outcome = run_manifest(emu, tmp_path, sqlite_url, flux_rows(10), 120)
    assert outcome.code == 0
    assert "files" not in outcome.results[0]
    assert _served(emu)["files"] == {}
    env = run_env(tmp_path, emu, sqlite_url)
    status = json.loads(piapi_bulk(tmp_path, env, "status", "--json").stdout)
    batch = status["batches"][0]["id"]
    gone_url = outcome.results[3]["output"]["image_url"]
    HTTP.post(f"{emu.url}/_emulator/files/expire", json={"names": [gone_url]}, timeout=5)

    first = piapi_bulk(tmp_path, env, "download", batch, "--to", "later")
    assert first.returncode == 1, first.stderr
    assert "9 output files kept in" in first.stderr and "not kept (gone 1)" in first.stderr
    again = piapi_bulk(tmp_path, env, "download", batch, "--to", "later")
    assert again.returncode == 1 and "9 output files kept in" in again.stderr
    served = _served(emu)
    assert len(served["files"]) == 9
    assert {s["fetches"] for s in served["files"].values()} == {1}  # nothing fetched again
    assert served["refused"] == 1  # nor the gone one asked again

    exported = piapi_bulk(tmp_path, env, "export", batch, "-o", "later.jsonl")
    assert exported.returncode == 0
    results = read_results(tmp_path / "later.jsonl")
    assert results[3]["download_errors"][0]["error"].endswith("(HTTP 404)")
    for row in results[:3] + results[4:]:
        (f,) = row["files"]
        assert f["sha256"] == _sha256(tmp_path / "later" / f"{row['id']}.png")

    usage = piapi_bulk(tmp_path, env, "download", "nope", "--to", "later")
    assert usage.returncode == 2 and usage.stderr.strip() == "piapi-bulk: no batch nope"


def test_kept_files_deleted_or_cut_since_are_fetched_again(
        tmp_path: Path, sqlite_url: str, make_emulator: MakeEmulator) -> None:
    # Found by an exploratory run: a kept file deleted or damaged on disk stayed so, and
    # every later run said all were kept; a killed fetch's .part file stayed for good.
    emu = _emulator(make_emulator)
    outcome = run_manifest(emu, tmp_path, sqlite_url, flux_rows(4), 120, ("--download", "kept"))
    assert outcome.code == 0
    kept = tmp_path / "kept"
    (kept / "flux-1.png").unlink()
    (kept / "flux-2.png").write_bytes(b"cut short")
    stale, fresh = kept / ".flux-3.0123456789ab.part", kept / ".flux-4.ba9876543210.part"
    stale.write_bytes(b"half")
    os.utime(stale, (1_700_000_000, 1_700_000_000))  # long untouched: a killed fetch's
    fresh.write_bytes(b"half")  # being written now, by all that can be told
    env = run_env(tmp_path, emu, sqlite_url)
    batch = json.loads(piapi_bulk(tmp_path, env, "status", "--json").stdout)["batches"][0]["id"]

    again = piapi_bulk(tmp_path, env, "download", batch, "--to", "kept")
    assert again.returncode == 0, again.stderr
    assert "2 kept files no longer in" in again.stderr and "4 output files kept" in again.stderr
    assert not stale.exists() and fresh.exists()
    fresh.unlink()
    exported = piapi_bulk(tmp_path, env, "export", batch, "-o", "again.jsonl")
    assert exported.returncode == 0
    results = read_results(tmp_path / "again.jsonl")
    served = {n: s["fetches"] for n, s in _served(emu)["files"].items()}
    assert sorted(served.values()) == [1, 1, 2, 2]  # the two lost ones, fetched once more
    for row in results:
        (f,) = row["files"]
        assert f["bytes"] == FILE_BYTES and f["sha256"] == _sha256(Path(f["path"]))


def test_sigterm_while_the_last_files_download_ends_the_run(
        tmp_path: Path, sqlite_url: str, make_emulator: MakeEmulator) -> None:
    """Every row has ended and `run` waits for its files (the emulator holds them): SIGTERM
    ends it as during the batch, exit 130 with the results written, not after the files."""
    emu = _emulator(make_emulator, files_paused=True)
    rows = flux_rows(6)
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    env = run_env(tmp_path, emu, sqlite_url)
    proc = start_run(tmp_path, env, str(manifest), "-o", "out.jsonl", "--download", "kept")
    wait_until(lambda: count_state(sqlite_url, "completed") == len(rows), 90,
               what="every row completed")
    wait_until(lambda: _served(emu)["waiting"] > 0, 30, what="fetches held at the emulator")
    proc.send_signal(signal.SIGTERM)
    said = "interrupted; 6 rows written to out.jsonl"
    wait_until(lambda: said in (tmp_path / "run.out").read_text(), 30,
               what="the run to say it was interrupted, its files still held")
    # Written and said with the files held: then let the emulator answer the fetches, so
    # that they end now rather than at their 20 s read timeout.
    emu.configure(files_paused=False)
    code = finish(proc, 60)
    out = (tmp_path / "run.out").read_text()
    assert code == 130, out
    assert said in out and "Traceback" not in out
    assert {r["status"] for r in read_results(tmp_path / "out.jsonl")} == {"completed"}
