"""One typed settings object, read from the environment once at the edge and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from workers.polling import EAGER_GAP
from workers.states import AmbiguousPolicy
from workers.webhook_signing import WebhookSigner


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


APP_NAME = "piapi-bulk"
REDIS_SCHEMES = ("redis", "rediss", "unix")
"""The URL schemes redis-py opens."""


def default_database_path() -> Path:
    """Where the default SQLite database lives: the user's data folder (for example
    ~/.local/share/piapi-bulk/piapi-bulk.db; XDG_DATA_HOME moves it), so every run of
    this user, from any folder, sees the same record."""
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False)) / "piapi-bulk.db"


def default_database_url() -> str:
    """`sqlite:///` + `default_database_path()`, its folder created."""
    path = default_database_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class Settings(BaseSettings):
    """Everything configurable about piapi-bulk; durations are float seconds (`_s`)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    # --- the user-facing contract -------------------------------------------------------
    api_key: SecretStr | None = Field(None, validation_alias=_env("PIAPI_API_KEY"))
    base_url: str = Field("https://api.piapi.ai", validation_alias=_env("PIAPI_BASE_URL"))
    upload_url: str = Field("https://upload.theapi.app",
                            validation_alias=_env("PIAPI_UPLOAD_URL"))
    """Where local files are uploaded (`POST {upload_url}/api/ephemeral_resource`); the
    emulator serves the endpoint at its own base URL."""
    redis_url: str | None = Field(None, validation_alias=_env("REDIS_URL"))
    database_url: str = Field(default_factory=default_database_url,
                              validation_alias=_env("DATABASE_URL"))
    """Default: a SQLite file in the user's data folder (`default_database_path()`)."""

    @field_validator("database_url")
    @classmethod
    def _database_url_usable(cls, url: str) -> str:
        """SQLite or PostgreSQL, and a SQLite file's folder must exist: SQLite creates the
        file, not its folders, and a mistyped path is better refused than created."""
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL ({exc})") from exc
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(f"{backend} is not supported: give a sqlite:/// or postgresql:// URL")
        if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
            folder = Path(str(parsed.database)).parent
            if not folder.is_dir():
                raise ValueError(f"the folder {folder} does not exist; create it first")
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis_url_usable(cls, url: str | None) -> str | None:
        """A URL redis-py can open (its schemes), so a typo is one line at start-up rather
        than a traceback from the first connection. Empty = unset (`run` starts its own)."""
        if not url:
            return None
        scheme = urlsplit(url).scheme
        if scheme not in REDIS_SCHEMES:
            raise ValueError("not a Redis URL: it must start with redis://, rediss:// or unix:// "
                             "(for example redis://127.0.0.1:6379/0)")
        return url

    rpm: int = Field(0, ge=0, validation_alias=_env("PIAPI_RPM"))
    """Fleet-wide PiAPI request budget per minute (creates and polls alike); 0 = no limit."""

    # --- timeouts (PiAPI HTTP calls) ----------------------------------------------------
    connect_timeout_s: float = Field(5.0, gt=0, validation_alias=_env("PIAPI_CONNECT_TIMEOUT_S"))
    read_timeout_s: float = Field(30.0, gt=0, validation_alias=_env("PIAPI_READ_TIMEOUT_S"))
    """Also bounds a create: past it, a create's outcome is unknown (ambiguous)."""
    write_timeout_s: float = Field(10.0, gt=0, validation_alias=_env("PIAPI_WRITE_TIMEOUT_S"))
    pool_timeout_s: float = Field(5.0, gt=0, validation_alias=_env("PIAPI_POOL_TIMEOUT_S"))

    # --- scheduling ---------------------------------------------------------------------
    concurrency: int | None = Field(None, ge=1, validation_alias=_env("PIAPI_CONCURRENCY"))
    """Tasks in flight at PiAPI; unset = the account's max_concurrent_task_count."""
    max_attempts: int = Field(3, ge=1, validation_alias=_env("PIAPI_MAX_ATTEMPTS"))
    strict: bool = Field(False, validation_alias=_env("PIAPI_BULK_STRICT"))
    """Rows for models not in piapi-bulk's catalogue are invalid instead of sent unchecked
    (`--strict`)."""
    max_tries: int = Field(12, ge=1, validation_alias=_env("PIAPI_BULK_MAX_TRIES"))
    """Retryable create errors (429, 5xx, network) tolerated per row before it fails."""
    dispatch_interval_s: float = Field(
        1.0, gt=0, validation_alias=_env("PIAPI_BULK_DISPATCH_INTERVAL_S")
    )
    """Longest the dispatcher sleeps between passes (it is woken sooner by events)."""
    lease_margin_s: float = Field(10.0, gt=0, validation_alias=_env("PIAPI_BULK_LEASE_MARGIN_S"))
    """Added to the HTTP timeout to get how long a worker may hold a job before it is taken back."""
    batch_size: int = Field(16, ge=1, validation_alias=_env("PIAPI_BULK_BATCH_SIZE"))
    """Most job ids carried by one Celery message."""
    on_ambiguous: AmbiguousPolicy = Field(
        AmbiguousPolicy.RECONCILE, validation_alias=_env("PIAPI_BULK_ON_AMBIGUOUS")
    )
    """A create whose answer was lost: `reconcile` (look for its task in PiAPI's history
    and webhooks first; post again only if it made none), `retry` (post again at once: may
    pay twice), `fail` (the row fails; never posted twice)."""
    on_stuck: Literal["retry", "fail", "wait"] = Field(
        "retry", validation_alias=_env("PIAPI_BULK_ON_STUCK")
    )
    """A task still running far past its kind's expected duration (PiAPI cannot cancel it
    once processing): `retry` (abandon it, create a new one within the attempt limit),
    `fail` (abandon it, the row fails with kind stuck), `wait` (keep waiting for it). The
    fleet's default; a batch's `--on-stuck` overrides it. Stuck pending tasks are always
    cancelled (refunded) and replaced within the attempt limit."""
    reconcile_timeout_s: float = Field(
        1800.0, gt=0, validation_alias=_env("PIAPI_BULK_RECONCILE_TIMEOUT_S")
    )
    """How long reconciliation may take before the row fails (kind ambiguous)."""
    reuse_window_s: float = Field(
        72 * 3600.0, gt=0, validation_alias=_env("PIAPI_BULK_REUSE_WINDOW_S")
    )
    """A row takes the task of a completed twin (same row id, model, task type and input, in
    any batch) only when the twin finished within this long (PiAPI deletes outputs after a
    few days). `--no-reuse` turns reuse off for a batch."""
    handoff: bool = Field(True, validation_alias=_env("PIAPI_BULK_HANDOFF"))
    """A worker whose poll frees a slot creates its batch's next row in it at once (the
    dispatcher keeps the rows it may take, `workers.handoff`); off: every freed slot
    waits for the dispatcher's next pass."""
    poll_gap: float = Field(EAGER_GAP, ge=0, le=1, validation_alias=_env("PIAPI_BULK_POLL_GAP"))
    """Where only polls tell that a task ended (no webhooks, no in-flight count for its
    family), how far apart its polls are, as a fraction of its kind's median duration:
    smaller finds ended tasks sooner (fuller slots) for more GETs (`workers.polling.
    eager_grid`); 0: a few polls at learned quantiles (fewest GETs)."""
    stall_s: float = Field(120.0, gt=0, validation_alias=_env("PIAPI_BULK_STALL_S"))
    """`run` restarts the workers and dispatcher it started when no row has moved for this
    long while work waited for them (liveness by progress, not by a process being up)."""

    active_tasks: Literal["auto", "off"] = Field(
        "auto", validation_alias=_env("PIAPI_BULK_ACTIVE_TASKS")
    )
    """auto: refill slots from PiAPI's own in-flight count (/account/active_tasks) when the
    account offers it; off: only from what polls have seen."""
    account_poll_min_s: float = Field(
        0.02, gt=0, validation_alias=_env("PIAPI_BULK_ACCOUNT_POLL_MIN_S")
    )
    """Fastest the dispatcher reads PiAPI's in-flight count (when slots may have freed)."""
    dispatcher_stats: Path | None = Field(
        None, validation_alias=_env("PIAPI_BULK_DISPATCHER_STATS")
    )
    """Opt-in: the dispatcher appends one JSON line per pass here (its timing and SQL
    statement count, `scheduler.passstats`); unset = nothing recorded."""

    # --- webhooks -----------------------------------------------------------------------
    webhook_url: str | None = Field(None, validation_alias=_env("PIAPI_BULK_WEBHOOK_URL"))
    """Public base URL of `piapi-bulk webhook` (…/hooks); set it to have PiAPI call back."""
    webhook_secret: SecretStr | None = Field(
        None, validation_alias=_env("PIAPI_BULK_WEBHOOK_SECRET")
    )
    """Master secret the per-batch webhook secrets and per-job URL tokens derive from."""

    # --- the run page (`piapi-bulk web`) -------------------------------------------------
    web_token: SecretStr | None = Field(None, validation_alias=_env("PIAPI_BULK_WEB_TOKEN"))
    """Bearer token (or `?token=`) the page, its JSON and /metrics ask for; needed (or
    `web_basic_auth`) to serve them on an address other than loopback."""
    web_basic_auth: SecretStr | None = Field(
        None, validation_alias=_env("PIAPI_BULK_WEB_BASIC_AUTH")
    )
    """`user:password` for basic auth on the page, instead of or besides the token."""
    flower_url: str = Field("http://127.0.0.1:5555", validation_alias=_env("PIAPI_BULK_FLOWER_URL"))
    """Where the page links to Flower."""

    # --- worker process -----------------------------------------------------------------
    worker_concurrency: int = Field(
        4, ge=1, validation_alias=_env("PIAPI_BULK_WORKER_CONCURRENCY")
    )
    """Celery threads per worker process (each runs one message of several jobs)."""
    http_concurrency: int = Field(
        32, ge=1, validation_alias=_env("PIAPI_BULK_HTTP_CONCURRENCY")
    )
    """PiAPI requests a worker process has in flight at most (a message's jobs run side
    by side on these)."""
    worker_pool: Literal["threads", "prefork", "solo"] = Field(
        "threads", validation_alias=_env("PIAPI_BULK_WORKER_POOL")
    )
    download_concurrency: int = Field(
        4, ge=1, validation_alias=_env("PIAPI_BULK_DOWNLOAD_CONCURRENCY")
    )
    """Output files `run --download` and `download` fetch side by side (their own threads,
    apart from the workers: PiAPI work never waits for a download)."""

    @property
    def request_timeout_s(self) -> float:
        """Longest a single PiAPI request may take, all phases together."""
        return (self.pool_timeout_s + self.connect_timeout_s + self.write_timeout_s
                + self.read_timeout_s)

    @property
    def lease_s(self) -> float:
        """How long a dispatched job stays reserved for the worker that got it."""
        return self.request_timeout_s + self.lease_margin_s

    def require_api_key(self) -> str:
        """The API key, or a clear error when it is not set."""
        if self.api_key is None or not self.api_key.get_secret_value().strip():
            raise ConfigError("PIAPI_API_KEY is not set; export your PiAPI API key first")
        return self.api_key.get_secret_value().strip()

    def webhook_signer(self) -> WebhookSigner | None:
        """The webhook signer when webhooks are configured, or None."""
        if not self.webhook_url:
            return None
        if self.webhook_secret is None or len(self.webhook_secret.get_secret_value()) < 16:
            raise ConfigError("PIAPI_BULK_WEBHOOK_URL needs PIAPI_BULK_WEBHOOK_SECRET "
                              "(16 characters or more)")
        return WebhookSigner(self.webhook_url, self.webhook_secret.get_secret_value())

    def require_redis_url(self) -> str:
        """The Redis URL, or a clear error when it is not set."""
        if not self.redis_url:
            raise ConfigError("REDIS_URL is not set (for example redis://127.0.0.1:6379/0)")
        return self.redis_url


class ConfigError(Exception):
    """A usage or configuration problem the user must fix (exit code 2)."""
