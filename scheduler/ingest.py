"""Manifest to database: one batch row and one job row per manifest row, idempotent, resumable.

The batch id comes from the content: the file's bytes (a folder's: its path and listing,
see `scheduler/folder.py`), the default model and task type, and the `--set` fields.
Ingesting the same manifest again finds the same batch and adds nothing; an ingest that
crashed part-way is resumed (rows are committed in order, a chunk per transaction, so what
is stored is always a clean prefix 1..N of the data rows).

Every data row becomes a job: `queued` when valid, `invalid` (with the reason) when it could
not be read, failed validation, or repeats an id seen earlier in the manifest (the first
occurrence stays valid). A row for a model piapi-bulk's catalogue does not know is queued
`unchecked` (or invalid when the ingest is `strict`). A valid row carries its fingerprint
(row id, model, task type, input, and the content of its local files), which finds its
twins in other batches (`workers.transitions.reuse`).

`--service-mode` and `--strict` are not part of the batch's identity: the same manifest
with another service mode is still the same batch (its rows are never sent twice). The
caller checks that the options given can apply to the batch (`scheduler/options.py`).

Rows go in with executemany (SQLite) or COPY (PostgreSQL).
Two ingests of the same new manifest at the same moment are not supported: the second fails
on the batch's unique content hash or on a job's (batch_id, seq) and leaves the first intact.
The file is read twice (hash, then rows): it must not change while it is being ingested.
Local files named in URL fields are checked as rows are read (`scheduler/local_files.py`),
relative to the manifest's folder.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Engine

from scheduler.folder import FolderManifest, image_field
from scheduler.local_files import LocalFileProblem, LocalFiles, content_digest
from scheduler.manifest import BadRow, Item, Manifest, ManifestError, open_manifest
from scheduler.validate import Defaults, Invalid, JobSpec, validate_row
from workers.durations import typical_by_kind
from workers.expected import expected_s, rank
from workers.models import BATCHES, JOBS, Batch
from workers.states import ErrorKind, JobState
from workers.uploads import local_files

logger = logging.getLogger(__name__)

SAMPLE_INVALID = 50
"""How many invalid rows (the first ones) an IngestResult lists."""

_QUEUED, _INVALID = JobState.QUEUED.value, JobState.INVALID.value
_KIND_INVALID = ErrorKind.INVALID.value
COLUMNS = (
    "batch_id", "seq", "line", "row_key", "model", "task_type", "input_json", "metadata_json",
    "state", "attempts", "tries", "polls", "poll_errors", "created_at", "error_kind",
    "error_message", "unchecked", "service_mode", "fingerprint", "priority",
)
"""Job columns an ingest writes, in the order of each row tuple."""

Row = tuple[Any, ...]


@dataclass(frozen=True)
class IngestResult:
    """The batch a manifest became and what its rows are."""

    batch_id: str
    total: int
    invalid: int
    created: bool
    """True when this call created the batch; False when it existed (finished or resumed)."""
    invalid_rows: list[tuple[int, str, str]]
    """The first invalid rows as (line, row_key, reason), at most SAMPLE_INVALID."""
    resumed: bool = False
    """True when this call finished an ingest that an earlier one left part-way."""
    unchecked: list[tuple[str, str, int]] = field(default_factory=list)
    """(model, task_type, rows) for each kind of row sent unchecked (not in the catalogue)."""
    service_mode: str | None = None
    """The batch's default service mode (the `--service-mode` it was first ingested with)."""
    notes: tuple[str, ...] = ()
    """Lines to show about the source (a folder's skipped files)."""


def batch_hash(file_hash: str, default_model: str | None, default_task_type: str | None,
               fields: Mapping[str, str] | None = None) -> str:
    """The batch's content hash: the manifest's bytes and the defaults that apply to it
    (the `--set` fields only when there are some, so older batches keep their hash)."""
    parts: list[Any] = [file_hash, default_model, default_task_type]
    if fields:
        parts.append(sorted(fields.items()))
    payload = json.dumps(parts)
    return hashlib.sha256(payload.encode()).hexdigest()


Source = Manifest | FolderManifest


def open_source(path: str | os.PathLike[str], model: str | None,
                task_type: str | None) -> Source:
    """The manifest at `path`: a file, or a folder of images (a row per image)."""
    if Path(path).is_dir():
        folder = FolderManifest(path, image_field(model, task_type))
        if not folder.files:
            raise ManifestError(f"no image files in {folder.path}"
                                + (f" ({folder.skipped} other files skipped)"
                                   if folder.skipped else ""))
        return folder
    return open_manifest(path)


def source_folder(source: Source) -> Path:
    """The folder a source's relative local paths start from: the folder itself, or the
    manifest file's folder."""
    return source.path if isinstance(source, FolderManifest) else source.path.parent


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""For metadata: compact, but key order kept (it is passed through, never compared)."""


def batch_id_for(path: str | os.PathLike[str], default_model: str | None,
                 default_task_type: str | None,
                 fields: Mapping[str, str] | None = None) -> str:
    """The id `ingest` gives (or gave) the batch of this manifest (a file or a folder) with
    these defaults and `--set` fields."""
    with open_source(path, default_model, default_task_type) as manifest:
        return _batch_id(batch_hash(manifest.content_hash(), default_model, default_task_type,
                                    fields))


def _batch_id(digest: str) -> str:
    return "b" + digest[:12]


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys, so equal inputs are equal text."""
    return _CANONICAL.encode(value)


def fingerprint(row_key: str, model: str, task_type: str, input_json: str,
                contents: Sequence[str] = ()) -> str:
    """The row's fingerprint: sha256 hex of `canonical_json([row_key, model, task_type,
    input])`, given the input already as canonical JSON (`input_json`, as stored), with
    `contents` appended when the input names local files (their SHA-256s, in field order).

    Rows with the same fingerprint are twins (`workers.transitions.reuse`). The row id is
    part of it on purpose: two rows with the same prompt and different ids are two samples.
    A local file is in the input as its path, which stays the same when the image is
    edited: its content is part of it too, or an edited image would take the caption of
    the image it was.
    """
    head = _CANONICAL.encode([row_key, model, task_type])
    tail = f",{_CANONICAL.encode(list(contents))}]" if contents else "]"
    return hashlib.sha256(f"{head[:-1]},{input_json}{tail}".encode()).hexdigest()


@dataclass
class _Tally:
    """What is stored so far, and the ids seen (id -> line of its first occurrence)."""

    stored_seq: int = 0
    total: int = 0
    invalid: int = 0
    seen: dict[str, int] = field(default_factory=dict)
    sample: list[tuple[int, str, str]] = field(default_factory=list)
    unchecked: dict[tuple[str, str], int] = field(default_factory=dict)
    typical_s: dict[tuple[str, str], float] = field(default_factory=dict)
    """Each kind's learned mean duration (kinds with enough samples), for `jobs.priority`."""


def ingest(
    engine: Engine,
    path: str | os.PathLike[str],
    *,
    default_model: str | None = None,
    default_task_type: str | None = None,
    default_service_mode: str | None = None,
    strict: bool = False,
    fields: Mapping[str, str] | None = None,
    max_attempts: int | None = None,
    default_max_attempts: int = 3,
    concurrency: int | None = None,
    chunk_size: int = 5000,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Store the manifest at `path` as a batch of jobs; returns the batch (new or existing).

    `max_attempts` and `concurrency` are written to the batch only when given (not None):
    an existing batch keeps what it has (a `submit` that only changes the budget resets
    nothing), a new one gets `default_max_attempts`.
    `default_service_mode` is stored with a new batch and applies to its rows without their
    own; `strict` makes rows for models the catalogue does not know invalid; `fields` (the
    `--set` fields) fill every row's input where the row gives no value (part of the
    batch's identity).
    `progress` is called after each committed chunk with the number of rows stored so far.
    Raises `ManifestError` (before writing anything) when the file cannot be read at all.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    with open_source(path, default_model, default_task_type) as manifest:
        digest = batch_hash(manifest.content_hash(), default_model, default_task_type, fields)
        notes = (manifest.note,) if isinstance(manifest, FolderManifest) and manifest.note \
            else ()
        batch, created = _batch(engine, manifest, digest, Defaults(
            default_model, default_task_type, default_service_mode or None))
        _settings(engine, batch, default_max_attempts if created and max_attempts is None
                  else max_attempts, concurrency)
        if batch.ingested:
            logger.info("manifest %s is batch %s, already ingested", path, batch.id)
            return replace(_result(engine, batch), notes=notes)
        tally = _tally(engine, batch.id) if not created else _Tally()
        if tally.stored_seq:
            logger.info("resuming ingest of batch %s after row %d", batch.id, tally.stored_seq)
        tally.typical_s = typical_by_kind(engine)
        started = time.monotonic()
        defaults = Defaults(batch.default_model, batch.default_task_type, batch.service_mode,
                            dict(fields or {}), LocalFiles(source_folder(manifest)))
        try:
            _load(engine, batch.id, defaults, manifest, tally, chunk_size, progress, strict)
        except ManifestError:
            if created:  # read part-way (a truncated gzip): no batch, as for any unreadable file
                _drop_unstarted(engine, batch.id)
            raise
        if created and tally.total == 0:  # a header and nothing else: a mistake, no batch
            _drop_unstarted(engine, batch.id)
            raise ManifestError(f"manifest {path} has no data rows")
    _analyze(engine)
    logger.info("ingested batch %s: %d rows, %d invalid, in %.1f s", batch.id, tally.total,
                tally.invalid, time.monotonic() - started)
    if created:
        unchecked = sorted((m, t, n) for (m, t), n in tally.unchecked.items())
    else:
        with engine.connect() as conn:
            unchecked = _unchecked(conn, batch.id)
    return IngestResult(batch.id, tally.total, tally.invalid, created, tally.sample,
                        resumed=not created, unchecked=unchecked,
                        service_mode=batch.service_mode, notes=notes)


def _analyze(engine: Engine) -> None:
    """Fresh planner statistics after a bulk load (PostgreSQL): without them the planner
    guessed from an empty table and read every row where an index finds a few."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE jobs")


def _batch(engine: Engine, manifest: Source, digest: str,
           defaults: Defaults) -> tuple[Batch, bool]:
    """The batch with this content hash, created (not yet ingested) when there is none."""
    with engine.begin() as conn:
        row = conn.execute(select(BATCHES).where(BATCHES.c.content_hash == digest)).first()
        if row is not None:
            return Batch.model_validate(row._mapping), False
        batch = Batch(id=_batch_id(digest), content_hash=digest,
                      source=str(manifest.path.resolve()), default_model=defaults.model,
                      default_task_type=defaults.task_type,
                      service_mode=defaults.service_mode, created_at=time.time())
        conn.execute(insert(BATCHES).values(batch.model_dump()))
    logger.info("new batch %s for %s", batch.id, manifest.path)
    return batch, True


def _drop_unstarted(engine: Engine, batch_id: str) -> None:
    """Delete a batch this ingest created and could not finish, when none of its rows was
    handed to a worker yet (a fleet may serve a batch while it is ingested): rows still
    queued and never leased, or invalid; the batch goes with its last row."""
    with engine.begin() as conn:
        conn.execute(delete(JOBS).where(
            JOBS.c.batch_id == batch_id, JOBS.c.state.in_([_QUEUED, _INVALID]),
            JOBS.c.lease_until.is_(None), JOBS.c.attempts == 0))
        if conn.execute(select(JOBS.c.id).where(JOBS.c.batch_id == batch_id).limit(1)).first():
            logger.warning("batch %s: its manifest could not be read to the end, and some of "
                           "its rows are already being worked on: it is kept", batch_id)
            return
        conn.execute(delete(BATCHES).where(BATCHES.c.id == batch_id))
    logger.info("batch %s dropped: its manifest could not be read to the end", batch_id)


def _settings(engine: Engine, batch: Batch, max_attempts: int | None,
              concurrency: int | None) -> None:
    """Apply the run settings given to this call (not None) to the batch, when they differ."""
    changes: dict[str, Any] = {}
    if max_attempts is not None and max_attempts != batch.max_attempts:
        changes["max_attempts"] = max_attempts
    if concurrency is not None and concurrency != batch.concurrency:
        changes["concurrency"] = concurrency
    if changes:
        with engine.begin() as conn:
            conn.execute(update(BATCHES).where(BATCHES.c.id == batch.id).values(**changes))
        for name, value in changes.items():
            setattr(batch, name, value)


def _result(engine: Engine, batch: Batch) -> IngestResult:
    """The result for a batch that is already fully stored."""
    with engine.connect() as conn:
        sample = _invalid_sample(conn, batch.id)
        unchecked = _unchecked(conn, batch.id)
    return IngestResult(batch.id, batch.total, batch.invalid, False, sample,
                        unchecked=unchecked, service_mode=batch.service_mode)


def _unchecked(conn: Connection, batch_id: str) -> list[tuple[str, str, int]]:
    """(model, task_type, rows) of the batch's unchecked rows."""
    rows = conn.execute(
        select(JOBS.c.model, JOBS.c.task_type, func.count())
        .where(JOBS.c.batch_id == batch_id, JOBS.c.unchecked.is_not(None))
        .group_by(JOBS.c.model, JOBS.c.task_type).order_by(JOBS.c.model, JOBS.c.task_type)
    ).all()
    return [(str(m), str(t), int(n)) for m, t, n in rows]


def _tally(engine: Engine, batch_id: str) -> _Tally:
    """What a crashed ingest left: the stored prefix, its counts and ids, read back."""
    tally = _Tally()
    with engine.connect() as conn:
        rows = conn.execution_options(yield_per=20_000).execute(
            select(JOBS.c.seq, JOBS.c.line, JOBS.c.row_key, JOBS.c.state)
            .where(JOBS.c.batch_id == batch_id).order_by(JOBS.c.seq))
        for seq, line, key, state in rows:
            tally.stored_seq = seq
            tally.total += 1
            tally.invalid += state == _INVALID
            tally.seen.setdefault(key, line)
        tally.sample = _invalid_sample(conn, batch_id)
    return tally


def _invalid_sample(conn: Connection, batch_id: str) -> list[tuple[int, str, str]]:
    """The batch's first invalid rows as (line, row_key, reason)."""
    rows = conn.execute(
        select(JOBS.c.line, JOBS.c.row_key, JOBS.c.error_message)
        .where(JOBS.c.batch_id == batch_id, JOBS.c.state == _INVALID)
        .order_by(JOBS.c.seq).limit(SAMPLE_INVALID)).all()
    return [(int(line), str(key), str(reason or "")) for line, key, reason in rows]


def _load(engine: Engine, batch_id: str, defaults: Defaults, items: Iterable[Item],
          tally: _Tally, chunk_size: int, progress: Callable[[int], None] | None,
          strict: bool) -> None:
    """Store every row after the stored prefix, a chunk per transaction; then mark done.

    Rows stream into the open INSERT or COPY as they are validated, so on PostgreSQL the
    server indexes one row while Python reads and checks the next.
    """
    rows = (_row(batch_id, item, defaults, tally, time.time(), strict)
            for item in items if item.seq > tally.stored_seq)
    with engine.connect() as conn:
        while True:
            with conn.begin():
                stored = _insert(conn, itertools.islice(rows, chunk_size))
                done = stored < chunk_size
                conn.execute(update(BATCHES).where(BATCHES.c.id == batch_id).values(
                    total=tally.total, invalid=tally.invalid, ingested=done))
            if progress is not None and stored:
                progress(tally.total)
            if done:
                return


def _duplicate(row_key: str, first: int) -> str:
    """Why a row whose id an earlier row has is invalid; a number may be a row's default id
    (its row number), which the user never wrote: said so."""
    why = f"duplicate id {row_key!r} (first at line {first}"
    return why + ("; a row without an id has its row number as id)" if row_key.isdigit()
                  else ")")


def _row(batch_id: str, item: Item, defaults: Defaults, tally: _Tally, now: float,
         strict: bool) -> Row:
    """The job row (a tuple in COLUMNS order) for one manifest item; updates the tally."""
    spec = (Invalid(item.seq, item.line, str(item.seq), None, None, item.reason, None)
            if isinstance(item, BadRow) else validate_row(item, defaults, strict=strict))
    first = tally.seen.setdefault(spec.row_key, spec.line)
    if isinstance(spec, JobSpec) and first != spec.line:
        spec = Invalid(spec.seq, spec.line, spec.row_key, spec.model, spec.task_type,
                       _duplicate(spec.row_key, first), spec.metadata)
    tally.total += 1
    tally.stored_seq = spec.seq
    meta = None if spec.metadata is None else _COMPACT.encode(spec.metadata)
    if isinstance(spec, Invalid):
        return _invalid_row(batch_id, spec, meta, now, tally)
    try:
        contents = [content_digest(f.path)
                    for f in local_files(spec.model, spec.task_type, spec.input)]
    except LocalFileProblem as exc:  # gone or unreadable since it was checked
        return _invalid_row(batch_id, Invalid(spec.seq, spec.line, spec.row_key, spec.model,
                                              spec.task_type, str(exc), spec.metadata),
                            meta, now, tally)
    unchecked = None
    kind = (spec.model, spec.task_type)
    if spec.unchecked:
        unchecked = True
        tally.unchecked[kind] = tally.unchecked.get(kind, 0) + 1
    input_json = _CANONICAL.encode(spec.input)
    priority = rank(expected_s(*kind, spec.input, tally.typical_s.get(kind)))
    return (batch_id, spec.seq, spec.line, spec.row_key, spec.model, spec.task_type,
            input_json, meta, _QUEUED, 0, 0, 0, 0, now, None, None, unchecked,
            spec.service_mode,
            fingerprint(spec.row_key, spec.model, spec.task_type, input_json, contents),
            priority)


def _invalid_row(batch_id: str, spec: Invalid, meta: str | None, now: float,
                 tally: _Tally) -> Row:
    """An `invalid` job row; text the row gave raw is kept storable (no NUL characters)."""
    tally.invalid += 1
    if len(tally.sample) < SAMPLE_INVALID:
        tally.sample.append((spec.line, spec.row_key, spec.reason))
    return (batch_id, spec.seq, spec.line, _storable(spec.row_key), _storable(spec.model),
            _storable(spec.task_type), None, meta, _INVALID, 0, 0, 0, 0, now, _KIND_INVALID,
            _storable(spec.reason), None, None, None, 0)


def _storable(text: str | None) -> str | None:
    """`text` without NUL characters, which PostgreSQL text columns cannot hold."""
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


def _insert(conn: Connection, rows: Iterable[Row]) -> int:
    """Insert job rows as they come (COPY on PostgreSQL, else executemany); returns how many.

    Tuples go straight to the driver: SQLAlchemy's per-row parameter processing for a list
    of dicts cost about 40% more on a million rows, for values that are plain already.
    """
    counted = _Counted(rows)
    dbapi = conn.connection.driver_connection
    assert dbapi is not None
    if conn.dialect.name == "postgresql":
        with dbapi.cursor() as cur, cur.copy(
                f"COPY {JOBS.name} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in counted:
                copy.write_row(row)
    else:
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        cursor = dbapi.cursor()
        try:
            cursor.executemany(f"INSERT INTO {JOBS.name} ({', '.join(COLUMNS)}) "
                               f"VALUES ({', '.join([mark] * len(COLUMNS))})", counted)
        finally:
            cursor.close()
    return counted.n


class _Counted:
    """An iterable that counts the items it passes on."""

    def __init__(self, items: Iterable[Row]) -> None:
        self._items = items
        self.n = 0

    def __iter__(self) -> Iterator[Row]:
        for item in self._items:
            self.n += 1
            yield item
