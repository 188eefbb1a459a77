"""The `downloads` record: a completed row's output files to keep at a destination, and each
file's moves as compare-and-set statements.

    pending ──claim──▶ fetching ──(bytes recorded, renamed)──▶ done
       ▲                  │
       └──back-off────────┤ 5xx, 429, network (bounded tries)
                          └──▶ failed (404/410, another 4xx, destination full or refused,
                                       tries used up)

A claim counts a try and takes a lease; every later record checks the state and that try
(`tries`), so a fetcher whose lease was taken over records nothing. Size and sha256 are
recorded before the temporary file is renamed: a fetcher killed after that leaves a record
the next claim completes from the disk, without fetching again.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from workers.db import transaction
from workers.fetch import Stored, shown_path
from workers.models import DOWNLOADS, JOBS
from workers.output_files import file_name, output_files
from workers.states import JobState

PENDING, FETCHING, DONE, FAILED = "pending", "fetching", "done", "failed"
GONE = "gone"
"""The error kind of a file PiAPI no longer serves: never tried again by itself."""
D = DOWNLOADS.c


@dataclass(frozen=True)
class DownloadClaim:
    """A file a fetcher now holds, with what an earlier fetcher may have recorded."""

    id: int
    url: str
    name: str
    tries: int
    """This claim's try: the token its records check."""
    file: str | None
    tmp: str | None
    bytes: int | None
    sha256: str | None


@dataclass(frozen=True)
class NewJob:
    """A completed row whose files are not yet recorded for a destination."""

    id: int
    batch_id: str
    row_key: str
    output_json: str | None
    finished_at: float


def new_completed(engine: Engine, batch_id: str, dest: str, since: float, after_id: int,
                  limit: int) -> list[NewJob]:
    """Completed rows of a batch finished at `since` or later (after row `after_id` at
    exactly `since`), in that order, with no file recorded for `dest`."""
    j = JOBS.c
    recorded = exists().where(D.job_id == j.id, D.dest == dest)
    query = (select(j.id, j.batch_id, j.row_key, j.output_json, j.finished_at)
             .where(j.batch_id == batch_id, j.state == JobState.COMPLETED.value,
                    j.finished_at.is_not(None),
                    or_(j.finished_at > since, and_(j.finished_at == since, j.id > after_id)),
                    ~recorded)
             .order_by(j.finished_at, j.id).limit(limit))
    with transaction(engine) as conn:
        return [NewJob(int(i), str(b), str(k), o, float(f))
                for i, b, k, o, f in conn.execute(query)]


def add_files(engine: Engine, dest: str, jobs: Iterable[NewJob], now: float) -> int:
    """Record the output files of these rows for `dest` (pending); returns files added.

    A name another row already holds at `dest` (a row of another batch with the same id)
    gets the job id after it: two rows never write one path."""
    added = 0
    with transaction(engine) as conn:
        for job in jobs:
            urls = output_files(json.loads(job.output_json) if job.output_json else None)
            for n, url in enumerate(urls):
                name = file_name(job.row_key, n, len(urls))
                values = {"job_id": job.id, "batch_id": job.batch_id, "n": n, "url": url,
                          "dest": dest, "state": PENDING, "tries": 0, "next_at": 0.0,
                          "updated_at": now}
                if _insert(conn, {**values, "name": name}):
                    added += 1
                    continue
                holder = conn.execute(select(D.job_id).where(D.dest == dest,
                                                             D.name == name)).scalar()
                if holder != job.id:  # else another fetcher recorded this very file
                    added += _insert(conn, {**values, "name": f"{name}~{job.id}"})
    return added


def _insert(conn: Connection, values: dict[str, Any]) -> int:
    """INSERT unless (dest, name) is taken (then nothing); rows inserted (from RETURNING:
    PostgreSQL's rowcount is -1 here)."""
    build = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = build(DOWNLOADS).values(**values).on_conflict_do_nothing(
        index_elements=["dest", "name"]).returning(D.id)
    return len(conn.execute(stmt).all())


def claim(engine: Engine, dest: str, batch_ids: Collection[str], now: float, limit: int,
          lease_s: float) -> list[DownloadClaim]:
    """Take up to `limit` files of these batches that are due (pending and past their
    back-off, or fetching with a lapsed lease): each a try more, leased to the caller."""
    if limit <= 0:
        return []
    due = or_(and_(D.state == PENDING, D.next_at <= now),
              and_(D.state == FETCHING, D.lease_until < now))
    cols = (D.id, D.url, D.name, D.tries, D.file, D.tmp, D.bytes, D.sha256)
    claims: list[DownloadClaim] = []
    with transaction(engine) as conn:
        rows = conn.execute(select(*cols).where(D.dest == dest, D.batch_id.in_(batch_ids), due)
                            .order_by(D.id).limit(limit)).all()
        for i, url, name, tries, file, tmp, size, sha in rows:
            took = conn.execute(update(DOWNLOADS).where(D.id == i, D.tries == tries, due)
                                .values(state=FETCHING, tries=tries + 1,
                                        lease_until=now + lease_s, updated_at=now)).rowcount
            if took:
                claims.append(DownloadClaim(int(i), str(url), str(name), int(tries) + 1,
                                            file, tmp, size, sha))
    return claims


def _mine(c: DownloadClaim) -> Any:
    return and_(D.id == c.id, D.state == FETCHING, D.tries == c.tries)


def _move(engine: Engine, c: DownloadClaim, **values: Any) -> bool:
    with transaction(engine) as conn:
        return bool(conn.execute(update(DOWNLOADS).where(_mine(c)).values(**values)).rowcount)


def renew(engine: Engine, c: DownloadClaim, lease_until: float) -> bool:
    """Keep the claim while its fetch goes on; False when it was taken over."""
    return _move(engine, c, lease_until=lease_until)


def record_stored(engine: Engine, c: DownloadClaim, stored: Stored, now: float) -> bool:
    """The file's bytes are in its temporary file: size and hash recorded before the
    rename. False when the claim was taken over meanwhile."""
    return _move(engine, c, file=stored.file, tmp=stored.tmp, bytes=stored.bytes,
                 sha256=stored.sha256, updated_at=now)


def record_done(engine: Engine, c: DownloadClaim, now: float) -> bool:
    """The file is at its final name."""
    return _move(engine, c, state=DONE, tmp=None, lease_until=None, error_kind=None,
                 error=None, updated_at=now)


def record_retry(engine: Engine, c: DownloadClaim, kind: str, error: str, next_at: float,
                 now: float) -> bool:
    """Fetch it again after a back-off."""
    return _move(engine, c, state=PENDING, next_at=next_at, lease_until=None,
                 error_kind=kind, error=error, updated_at=now)


def record_failed(engine: Engine, c: DownloadClaim, kind: str, error: str, now: float) -> bool:
    """The file will not be fetched (in this run)."""
    return _move(engine, c, state=FAILED, lease_until=None, error_kind=kind, error=error,
                 updated_at=now)


def release(engine: Engine, c: DownloadClaim, now: float) -> bool:
    """Give a claim back untried (the run is stopping)."""
    return _move(engine, c, state=PENDING, tries=c.tries - 1, next_at=now, lease_until=None,
                 updated_at=now)


def fail_waiting(engine: Engine, dest: str, batch_ids: Collection[str], kind: str,
                 error: str, now: float) -> int:
    """Every pending file of these batches ends failed with this reason (the destination
    cannot take more); returns how many."""
    with transaction(engine) as conn:
        return int(conn.execute(
            update(DOWNLOADS).where(D.dest == dest, D.batch_id.in_(batch_ids),
                                    D.state == PENDING)
            .values(state=FAILED, error_kind=kind, error=error, updated_at=now)).rowcount)


def reopen_failed(engine: Engine, dest: str, batch_ids: Collection[str], now: float) -> int:
    """Failed files (except those PiAPI no longer has) pending again, tries from zero: a new
    run or `download` tries them again."""
    with transaction(engine) as conn:
        return int(conn.execute(
            update(DOWNLOADS).where(D.dest == dest, D.batch_id.in_(batch_ids),
                                    D.state == FAILED,
                                    or_(D.error_kind.is_(None), D.error_kind != GONE))
            .values(state=PENDING, tries=0, next_at=0.0, updated_at=now)).rowcount)


def reopen_missing(engine: Engine, dest: str, batch_ids: Collection[str],
                   listing: dict[str, tuple[int, float | None]], now: float) -> int:
    """Kept files no longer at the destination with their recorded size (deleted, cut,
    replaced) pending again, to be fetched anew; returns how many."""
    with transaction(engine) as conn:
        kept = conn.execute(select(D.id, D.file, D.bytes).where(
            D.dest == dest, D.batch_id.in_(batch_ids), D.state == DONE)).all()
        gone = [int(i) for i, file, size in kept
                if file is None or listing.get(str(file), (None,))[0] != size]
        for at in range(0, len(gone), 500):
            conn.execute(update(DOWNLOADS).where(D.id.in_(gone[at:at + 500]), D.state == DONE)
                         .values(state=PENDING, tries=0, next_at=0.0, file=None, tmp=None,
                                 bytes=None, sha256=None, updated_at=now))
    return len(gone)


def counts(engine: Engine, dest: str, batch_ids: Collection[str]) -> dict[str, int]:
    """Files of these batches at `dest` by state, and failed ones by `failed:<kind>`."""
    found: dict[str, int] = {}
    with transaction(engine) as conn:
        rows = conn.execute(select(D.state, D.error_kind, func.count())
                            .where(D.dest == dest, D.batch_id.in_(batch_ids))
                            .group_by(D.state, D.error_kind)).all()
    for state, kind, n in rows:
        found[state] = found.get(state, 0) + int(n)
        if state == FAILED:
            key = f"failed:{kind or 'error'}"
            found[key] = found.get(key, 0) + int(n)
    return found


def files_of(conn: Connection, job_ids: Collection[int]) -> dict[int, dict[str, list[Any]]]:
    """For the results: per job, `files` ({url, path, bytes, sha256}: stored ones) and
    `download_errors` ({url, error}: files that could not be stored), oldest first."""
    found: dict[int, dict[str, list[Any]]] = {}
    if not job_ids:
        return found
    rows = conn.execute(select(D.job_id, D.url, D.dest, D.file, D.bytes, D.sha256, D.state,
                               D.error)
                        .where(D.job_id.in_(list(job_ids)), D.state.in_((DONE, FAILED)))
                        .order_by(D.job_id, D.id)).all()
    for job_id, url, dest, file, size, sha, state, error in rows:
        entry = found.setdefault(int(job_id), {"files": [], "download_errors": []})
        if state == DONE:
            entry["files"].append({"url": url, "path": shown_path(dest, file), "bytes": size,
                                   "sha256": sha})
        else:
            entry["download_errors"].append({"url": url, "error": error})
    return found
