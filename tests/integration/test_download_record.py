"""The download record on both databases, with the pool in this process: an fsspec
`memory://` destination, a fetcher killed between its record and its rename, a lease taken
over, and a name two batches would share.

Rows are completed directly in the database with outputs on the emulator's files (any
UUID-shaped name is served), so only the downloads run.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

import scheduler.downloader
from scheduler.downloader import Downloader, download_batch
from tests.helpers import HTTP, Emulator, MakeEmulator
from tests.integration.e2e import add_batch, set_jobs
from workers import downloads as rec
from workers.fetch import Destination, fetch
from workers.models import DOWNLOADS
from workers.retry import backoff_s

FILE_BYTES = 70_000


def _complete(engine: Engine, emu: Emulator, batch_id: str, rows: int,
              files_per_row: int = 1) -> list[list[str]]:
    """A batch of completed rows, each with `files_per_row` image URLs on the emulator."""
    ids = add_batch(engine, batch_id, rows=rows)
    urls = []
    for n, job_id in enumerate(ids):
        mine = [f"{emu.url}/ephemeral/{uuid.uuid4()}.png" for _ in range(files_per_row)]
        output = {"image_url": mine[0]} if files_per_row == 1 else {"image_urls": mine}
        set_jobs(engine, job_id, state="completed", output_json=json.dumps(output),
                 finished_at=1000.0 + n, task_id=str(uuid.uuid4()))
        urls.append(mine)
    return urls


def _served(emu: Emulator) -> dict[str, Any]:
    return dict(HTTP.get(f"{emu.url}/_emulator/files", timeout=5).json()["files"])


def _emulator(make_emulator: MakeEmulator) -> Emulator:
    emu = make_emulator()
    emu.configure(file_bytes=FILE_BYTES)
    return emu


def test_download_into_an_fsspec_memory_folder(engine: Engine,
                                               make_emulator: MakeEmulator) -> None:
    emu = _emulator(make_emulator)
    urls = _complete(engine, emu, "b1", rows=3, files_per_row=2)
    lines: list[str] = []
    where = f"memory://kept-{uuid.uuid4().hex[:8]}"
    assert download_batch(engine, "b1", where, 2, lines.append) == 0
    fs = fsspec.filesystem("memory")
    served = _served(emu)
    for key, mine in zip(("1", "2", "3"), urls, strict=True):
        for n, url in enumerate(mine, 1):
            body = fs.cat(f"{where}/{key}_{n}.png")
            entry = served[url.rsplit("/", 1)[1]]
            assert (len(body), hashlib.sha256(body).hexdigest()) == (
                entry["bytes"], entry["sha256"]) and entry["fetches"] == 1
    shown = where.replace("://", ":///")
    assert lines[-1] == f"6 output files kept in {shown}", lines
    # How many were still to fetch when the pool had read the record depends on how fast the
    # first fetches ran meanwhile: at most all six, said at most once.
    for line in lines[:-1]:
        waiting = int(line.split()[0])
        assert 0 < waiting <= 6 and line.endswith(f"still to fetch into {shown}"), lines
    assert len(lines) <= 2, lines
    assert download_batch(engine, "b1", where, 2, lines.append) == 0  # nothing fetched again
    assert {e["fetches"] for e in _served(emu).values()} == {1}


def test_files_answering_503_are_fetched_again_after_a_back_off(
        engine: Engine, make_emulator: MakeEmulator, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The pool's back-off, a tenth as long (0.1, 0.2, 0.4, 0.8 s instead of 1, 2, 4, 8 s):
    # the same waits between tries, without 15 s of them.
    monkeypatch.setattr(scheduler.downloader, "backoff_s",
                        lambda tries: backoff_s(tries) / 10)
    emu = _emulator(make_emulator)
    emu.configure(files_fail_first=2)
    urls = _complete(engine, emu, "b1", rows=4)
    assert download_batch(engine, "b1", str(tmp_path / "kept"), 4, lambda _: None) == 0
    ledger = HTTP.get(f"{emu.url}/_emulator/files", timeout=5).json()
    assert ledger["failed"] == 8  # two 503s per file, then served
    assert {e["fetches"] for e in ledger["files"].values()} == {1}
    for key, (url,) in zip("1234", urls, strict=True):
        body = (tmp_path / "kept" / f"{key}.png").read_bytes()
        assert hashlib.sha256(body).hexdigest() == ledger["files"][url.rsplit("/", 1)[1]][
            "sha256"]

    emu.configure(files_fail_first=100)  # never served: the file fails after its tries
    ((url,),) = _complete(engine, emu, "b2", rows=1)
    lines: list[str] = []
    assert download_batch(engine, "b2", str(tmp_path / "kept2"), 1, lines.append) == 1
    with engine.connect() as conn:
        error = conn.execute(select(DOWNLOADS.c.error).where(DOWNLOADS.c.url == url)).scalar()
    assert error == "HTTP 503 (after 5 tries)"
    assert "1 not kept (unavailable 1)" in lines[-1]


def test_a_fetcher_killed_after_its_record_is_completed_from_the_disk(
        engine: Engine, make_emulator: MakeEmulator, tmp_path: Path) -> None:
    emu = _emulator(make_emulator)
    (mine,) = _complete(engine, emu, "b1", rows=1)
    dest = Destination(str(tmp_path / "kept"))
    dest.ensure()
    pool = Downloader(engine, dest, ["b1"], 1)
    pool._feed()  # the rows' files recorded, pending
    (claim,) = rec.claim(engine, dest.key, ["b1"], now=2000.0, limit=5, lease_s=15)
    with httpx.Client() as client:
        stored = fetch(client, claim.url, dest, claim.name)
    assert rec.record_stored(engine, claim, stored, 2001.0)
    pool.close()  # ... and the fetcher dies before the rename

    lines: list[str] = []
    assert download_batch(engine, "b1", str(tmp_path / "kept"), 1, lines.append) == 0
    kept = tmp_path / "kept" / "1.png"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == stored.sha256
    assert _served(emu)[mine[0].rsplit("/", 1)[1]]["fetches"] == 1  # renamed, not fetched
    assert not list((tmp_path / "kept").glob(".*.part"))


def test_a_claim_taken_over_records_nothing(engine: Engine, make_emulator: MakeEmulator,
                                            tmp_path: Path) -> None:
    emu = _emulator(make_emulator)
    _complete(engine, emu, "b1", rows=1)
    dest = Destination(str(tmp_path / "kept"))
    pool = Downloader(engine, dest, ["b1"], 1)
    pool._feed()
    pool.close()
    (first,) = rec.claim(engine, dest.key, ["b1"], now=2000.0, limit=5, lease_s=15)
    assert rec.claim(engine, dest.key, ["b1"], now=2010.0, limit=5, lease_s=15) == []
    (second,) = rec.claim(engine, dest.key, ["b1"], now=2016.0, limit=5, lease_s=15)
    assert second.tries == first.tries + 1
    assert not rec.renew(engine, first, 3000.0)
    assert not rec.record_failed(engine, first, "http", "late", 2017.0)
    assert rec.record_failed(engine, second, "http", "HTTP 403", 2017.0)
    with engine.connect() as conn:
        assert conn.execute(select(DOWNLOADS.c.state, DOWNLOADS.c.error)).one() == (
            "failed", "HTTP 403")


def test_two_batches_with_the_same_row_ids_never_share_a_file(
        engine: Engine, make_emulator: MakeEmulator, tmp_path: Path) -> None:
    emu = _emulator(make_emulator)
    _complete(engine, emu, "b1", rows=2)
    _complete(engine, emu, "b2", rows=2)
    folder = str(tmp_path / "kept")
    assert download_batch(engine, "b1", folder, 2, lambda _: None) == 0
    assert download_batch(engine, "b2", folder, 2, lambda _: None) == 0
    with engine.connect() as conn:
        files = dict(conn.execute(select(DOWNLOADS.c.job_id, DOWNLOADS.c.file)).all())
    assert len(set(files.values())) == 4
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == sorted(
        ["1.png", "2.png"] + [f"{n}~{job}.png" for job, f in files.items()
                              for n in ("1", "2") if f.startswith(f"{n}~")])
    served = _served(emu)
    assert len(served) == 4 and {e["fetches"] for e in served.values()} == {1}
