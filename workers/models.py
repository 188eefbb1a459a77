"""The database tables: batches, jobs (one per manifest row), attempts (one per create), downloads.

Times are float Unix seconds. JSON payloads are stored as text so SQLite and PostgreSQL
behave the same. The API key is never stored anywhere here.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, Table, Text, UniqueConstraint, text, true
from sqlmodel import Field, SQLModel

from workers.states import AttemptState, JobState

ID = BigInteger().with_variant(Integer(), "sqlite")
"""64-bit ids on PostgreSQL; INTEGER on SQLite, where only that type autoincrements (rowid)."""


class Batch(SQLModel, table=True):
    """One ingested manifest; the same manifest (content hash) is the same batch."""

    __tablename__ = "batches"

    id: str = Field(primary_key=True, max_length=40)
    content_hash: str = Field(index=True, unique=True, max_length=64)
    source: str = Field(sa_column=Column(Text, nullable=False))
    default_model: str | None = None
    default_task_type: str | None = None
    created_at: float
    ingested: bool = False
    """False while ingest is still adding rows (a crashed ingest resumes where it stopped)."""
    total: int = 0
    invalid: int = 0
    max_attempts: int = 3
    concurrency: int | None = None
    """Optional cap on this batch's tasks in flight, under the account-wide limit."""
    done: bool = False
    """Set by the dispatcher once no row of the batch can change any more."""
    budget_usd: float | None = None
    """Creates stop before spent + in-flight estimates + the next task would pass this."""
    deadline_at: float | None = None
    """No create starts after this; rows still waiting then end cancelled."""
    cancel_mode: str | None = Field(default=None, max_length=8)
    """Set by `piapi-bulk cancel`: `finish` (running tasks finish) or `now` (abandoned)."""
    cancelled_at: float | None = None
    paused: str | None = Field(default=None, sa_column=Column(Text))
    """Why admission is paused (the budget is reached), for `status` and `run`."""
    service_mode: str | None = Field(default=None, max_length=16)
    """The `--service-mode` the batch was ingested with (rows without their own got it)."""
    on_stuck: str | None = Field(default=None, max_length=8)
    """`--on-stuck` for this batch: `retry`, `fail` or `wait` (None: the fleet's
    PIAPI_BULK_ON_STUCK). See `workers.stuck`."""
    reuse: bool = Field(default=True, sa_column_kwargs={"server_default": true()})
    """Rows take the task of a completed twin (same fingerprint, any batch) instead of
    paying again; False with `--no-reuse`. See `workers.transitions.reuse`."""


class Job(SQLModel, table=True):
    """One manifest row and everything known about its PiAPI task."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("batch_id", "seq", name="uq_jobs_batch_seq"),
        Index("ix_jobs_state_next", "state", "next_at"),
        Index("ix_jobs_batch_state_seq", "batch_id", "state", "seq"),
        # Rows a message is out for (the dispatcher counts them every pass).
        Index("ix_jobs_lease_until", "lease_until"),
        # Twins of a row (the same row in another batch), looked up before paying.
        Index("ix_jobs_fingerprint", "fingerprint"),
        # A batch's recently finished rows (`piapi-bulk web`'s rate, ETA and slowest rows;
        # the rows the download pool looks at next);
        # partial, so ingest does not pay for it.
        Index("ix_jobs_batch_finished", "batch_id", "finished_at",
              postgresql_where=text("finished_at IS NOT NULL"),
              sqlite_where=text("finished_at IS NOT NULL")),
    )

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    batch_id: str = Field(foreign_key="batches.id", max_length=40)
    seq: int
    """1-based data-row number: the order of the results file."""
    line: int
    """Line of the manifest file where the row starts."""
    priority: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """The row's expected task duration in whole seconds (`workers.expected`), set at ingest:
    waiting rows are created longest first, ties in manifest order. 0 for invalid rows and
    rows ingested before there was a priority (all equal: manifest order)."""
    row_key: str = Field(sa_column=Column(Text, nullable=False))
    """The row's `id` column, or its data-row number."""
    model: str | None = None
    task_type: str | None = None
    input_json: str | None = Field(default=None, sa_column=Column(Text))
    metadata_json: str | None = Field(default=None, sa_column=Column(Text))
    unchecked: bool | None = None
    """True when the model is not in piapi-bulk's catalogue: the input is sent as given,
    without field checks (None otherwise)."""
    service_mode: str | None = Field(default=None, max_length=16)
    """`config.service_mode` sent with each create (`public`, `private`); None: not sent."""

    state: str = Field(default=JobState.QUEUED.value, max_length=16)
    attempts: int = 0
    """PiAPI tasks created (or possibly created) for this row."""
    posts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """Creates begun for this row (attempt rows), refused ones included."""
    tries: int = 0
    """Retryable create errors in a row since the last success."""
    retry_base: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """`attempts` when an operator last retried the row: `attempts - retry_base` is what
    counts against the batch's max_attempts."""
    reconcile_from: float | None = None
    """Set when an operator retries a row whose create's outcome is unknown: its
    reconciliation period starts here instead of at the (old) attempt."""
    task_id: str | None = Field(default=None, max_length=64)
    remote_status: str | None = Field(default=None, max_length=32)
    next_at: float | None = None
    """When the job is next due: its next poll (running) or next try (retry_wait)."""
    lease_until: float | None = None
    """While in the future, a worker holds the job (a message for it is out)."""
    lease_epoch: str | None = Field(default=None, max_length=32)
    """The Redis epoch of the dispatch; a flushed Redis voids leases of older epochs."""
    polls: int = 0
    poll_errors: int = 0
    created_at: float = 0.0
    submitted_at: float | None = None
    finished_at: float | None = None
    output_json: str | None = Field(default=None, sa_column=Column(Text))
    usage_consume: int | None = Field(default=None, sa_column=Column(BigInteger))
    usage_type: str | None = Field(default=None, max_length=16)
    error_kind: str | None = Field(default=None, max_length=32)
    error_message: str | None = Field(default=None, sa_column=Column(Text))
    fingerprint: str | None = Field(default=None, max_length=64)
    """sha256 of the canonical JSON of [row_key, model, task_type, input] (valid rows only):
    rows with the same one are twins, and one's completed task serves the others."""
    reused_from: int | None = Field(default=None, sa_column=Column(BigInteger))
    """The job whose paid task this row took instead of creating its own (the original,
    never another reused row); None for a row that created its own."""


class Attempt(SQLModel, table=True):
    """One POST to create a PiAPI task for a job: recorded before it is sent."""

    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("job_id", "n", name="uq_attempts_job_n"),
        # Reconciliation looks up our creates after a lost one.
        Index("ix_attempts_started_at", "started_at"),
        # Abandoned tasks still watched, by next look (the dispatcher reads them every
        # pass); partial, so the millions of ordinary attempts are not in it.
        Index("ix_attempts_watched", "next_at", postgresql_where=text("watch_until IS NOT NULL"),
              sqlite_where=text("watch_until IS NOT NULL")),
        # Abandoned attempts of a job, for the cost of a batch and its results file.
        Index("ix_attempts_abandoned", "job_id", postgresql_where=text("state = 'abandoned'"),
              sqlite_where=text("state = 'abandoned'")),
    )

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    job_id: int = Field(sa_column=Column(ID, nullable=False, index=True))
    n: int
    """1-based number of this POST for its job."""
    state: str = Field(default=AttemptState.POSTING.value, max_length=16)
    """An `AttemptState` value: posting, created, refused, ambiguous, absent, completed,
    failed, cancelled or abandoned (see `workers.states.AttemptState`)."""
    task_id: str | None = Field(default=None, max_length=64, index=True)
    started_at: float
    ended_at: float | None = None
    consume: int | None = Field(default=None, sa_column=Column(BigInteger))
    error: str | None = Field(default=None, sa_column=Column(Text))
    watch_until: float | None = None
    """An abandoned task is looked at now and then until it ends or this time passes; till
    then it counts as in flight (it holds a slot at PiAPI). None: not watched."""
    next_at: float | None = None
    """When a watched task is next looked at (also pushed past a dispatched look's lease)."""
    upload_urls: str | None = Field(default=None, sa_column=Column(Text))
    """The URLs this create sent for the row's local files, as a JSON object (input field
    -> URL; an array item's field as `field[i].key`), written just before the POST; None
    when the row has no local file."""


class Control(SQLModel, table=True):
    """Fleet-wide switches kept in the record (for example a halt after the key is refused)."""

    __tablename__ = "control"

    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: float


class DurationSample(SQLModel, table=True):
    """How long one completed task took (PiAPI's created -> ended), for the poll schedule."""

    __tablename__ = "duration_samples"
    __table_args__ = (Index("ix_duration_samples_kind", "model", "task_type", "id"),)

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    model: str = Field(max_length=64)
    task_type: str = Field(max_length=64)
    duration_s: float
    at: float


class Download(SQLModel, table=True):
    """One output file of a completed row, to keep at a destination (`run --download DIR`,
    `download BATCH --to DIR`); see `workers.downloads` for the moves between states."""

    __tablename__ = "downloads"
    __table_args__ = (
        # One file per name and destination: two rows can never write the same path.
        UniqueConstraint("dest", "name", name="uq_downloads_dest_name"),
        Index("ix_downloads_job", "job_id"),
        Index("ix_downloads_batch_state", "batch_id", "state", "next_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    job_id: int = Field(sa_column=Column(ID, nullable=False))
    batch_id: str = Field(max_length=40)
    n: int
    """Place of the URL among the row's output files (0-based)."""
    url: str = Field(sa_column=Column(Text, nullable=False))
    dest: str = Field(sa_column=Column(Text, nullable=False))
    """The destination folder as an fsspec URL (a local folder: its absolute path)."""
    name: str = Field(sa_column=Column(Text, nullable=False))
    """The file's name in `dest` without extension (the row id, sanitised, `_n` after)."""
    state: str = Field(default="pending", max_length=16)
    """pending, fetching, done or failed."""
    file: str | None = Field(default=None, sa_column=Column(Text))
    """The final file's name in `dest` (`name.ext`; the extension known once fetched)."""
    tmp: str | None = Field(default=None, sa_column=Column(Text))
    """The temporary file in `dest` the bytes were streamed to, until it is renamed."""
    bytes: int | None = Field(default=None, sa_column=Column(BigInteger))
    sha256: str | None = Field(default=None, max_length=64)
    error_kind: str | None = Field(default=None, max_length=16)
    """gone (404/410: final), http (another 4xx), unavailable (5xx, 429, network errors,
    after the last try), disk_full, destination."""
    error: str | None = Field(default=None, sa_column=Column(Text))
    tries: int = 0
    """Claims so far: also the token a fetch's records check (a re-claim voids them)."""
    next_at: float = 0.0
    """When a pending file may be fetched (after a back-off)."""
    lease_until: float | None = None
    """While fetching: another fetcher may take the file over after this."""
    updated_at: float = 0.0


class LeaderTerm(SQLModel, table=True):
    """The dispatcher leader's term: one row (id 1), the fencing token of `workers.fencing`.

    Raised by one each time a dispatcher takes the lead, in the database itself, so it only
    ever grows (a Redis restart or a clock step cannot take it back)."""

    __tablename__ = "leader_term"

    id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    term: int = Field(sa_column=Column(BigInteger, nullable=False))
    holder: str = Field(sa_column=Column(Text, nullable=False))
    """The lock token of the dispatcher that took `term` ("host:pid:hex")."""
    taken_at: float


# Core tables, for the hot paths that run pre-built statements instead of the ORM.
BATCHES: Table = SQLModel.metadata.tables["batches"]
JOBS: Table = SQLModel.metadata.tables["jobs"]
# The next rows to create: the longest expected first, then in manifest order (the lease's
# ORDER BY priority DESC, seq, read off the index, never sorted). Partial, so the planner
# never walks the finished part of a batch (PostgreSQL preferred the unique (batch_id, seq)
# index and filtered on state: a lease scanned every finished row before it). Declared
# here, on the table's columns, for the DESC.
Index("ix_jobs_queued_priority", JOBS.c.batch_id, JOBS.c.priority.desc(), JOBS.c.seq,
      postgresql_where=text("state = 'queued'"), sqlite_where=text("state = 'queued'"))
ATTEMPTS: Table = SQLModel.metadata.tables["attempts"]
DURATION_SAMPLES: Table = SQLModel.metadata.tables["duration_samples"]
DOWNLOADS: Table = SQLModel.metadata.tables["downloads"]
LEADER_TERM: Table = SQLModel.metadata.tables["leader_term"]
