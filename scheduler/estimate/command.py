"""`estimate` and `run --dry-run` end to end: usage errors, the rows added up, durations
learned so far, the account's concurrency and balance; nothing is written anywhere.

The database is only read (learned durations), and only if it exists: a SQLite file that
is not there yet is not created for an estimate. PiAPI is asked once, `GET /account/info`,
and only with a key; without one, or when PiAPI cannot be reached, the estimate still
comes, with the concurrency `DEFAULT_CONCURRENCY` (stated) and no balance.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from scheduler.estimate.tally import Duration, Kind, KindTally, Tally, kind_wall_times, wall_time_s
from scheduler.folder import FolderManifest
from scheduler.ingest import open_source, source_folder
from scheduler.local_files import LocalFiles
from scheduler.preflight import preflight, require_manifest
from scheduler.validate import Defaults
from workers import durations
from workers.catalog import prior_duration_s
from workers.db import is_sqlite, make_read_engine, normalise_url
from workers.models import DurationSample
from workers.piapi import AccountError, PiAPIError
from workers.runtime import build_client
from workers.settings import Settings

DEFAULT_CONCURRENCY = 10
"""Tasks in flight assumed when neither --concurrency, PIAPI_CONCURRENCY nor the account
says (the emulator's default limit; PiAPI publishes none per plan)."""



@dataclass(frozen=True)
class EstimateOptions:
    """The options `estimate` and `run --dry-run` share with `run` (`RunOptions` adds the
    rest): what the rows are and how many run at once."""

    manifest: Path
    model: str | None = None
    task_type: str | None = None
    strict: bool = False
    """Rows for models not in the catalogue are invalid instead of sent unchecked."""
    service_mode: str | None = None
    """`--service-mode` for rows without their own ('' = the workspace default)."""
    concurrency: int | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    """`--set KEY=VALUE`: input fields for every row (part of the batch's identity)."""


@dataclass(frozen=True)
class Account:
    """What the estimate knows of the account."""

    concurrency: int
    concurrency_from: str
    """Where `concurrency` comes from (--concurrency, PIAPI_CONCURRENCY, the account, a default)."""
    balance_usd: float | None
    """The credits left; None when they could not be read."""
    note: str | None = None
    """Why the account was not read, when it was not."""


@dataclass(frozen=True)
class Estimate:
    """What a manifest would cost and take."""

    manifest: str
    kinds: list[KindTally]
    durations: Mapping[Kind, Duration]
    wall_s: Mapping[Kind, float]
    total_wall_s: float
    account: Account
    durations_note: str | None = None
    source_note: str | None = None
    """What the manifest's reading skipped (a folder's hidden and non-image files)."""

    @property
    def rows(self) -> int:
        """Valid rows (those a run would send)."""
        return sum(k.rows for k in self.kinds)

    @property
    def invalid(self) -> int:
        """Rows a run would mark invalid."""
        return sum(k.invalid for k in self.kinds)

    @property
    def usd(self) -> float:
        """The valid rows' cost."""
        return sum(k.usd for k in self.kinds)

    @property
    def short_of_usd(self) -> float | None:
        """How much the balance falls short of the estimate (None: it does not, or unknown)."""
        balance = self.account.balance_usd
        if balance is None or balance >= self.usd:
            return None
        return self.usd - balance


def read_account(settings: Settings, concurrency: int | None) -> Account:
    """The concurrency to assume and the balance, from the options and `/account/info`."""
    chosen = (concurrency, "--concurrency") if concurrency else (
        (settings.concurrency, "PIAPI_CONCURRENCY") if settings.concurrency else (None, ""))
    key = settings.api_key.get_secret_value().strip() if settings.api_key else ""
    limit, balance, note = None, None, None
    if not key:
        note = "not read (no PIAPI_API_KEY)"
    else:
        client = build_client(settings)
        try:
            info = client.account_info()
            limit, balance = info.max_concurrent_tasks, info.usd
        except AccountError as exc:
            note = f"PiAPI refused the key ({exc})"
        except PiAPIError as exc:
            note = f"PiAPI not reachable at {settings.base_url} ({exc})"
        finally:
            client.close()
    if chosen[0]:
        return Account(chosen[0], chosen[1], balance, note)
    if limit:
        return Account(limit, "the account's limit", balance, note)
    why = "the account was not read" if note else "the account gave no limit"
    return Account(DEFAULT_CONCURRENCY, f"assumed: {why}", balance, note)


def _database_exists(url: str) -> bool:
    """False for a SQLite file not created yet (an estimate does not create it)."""
    if not is_sqlite(url):
        return True
    database = make_url(normalise_url(url)).database
    return database is not None and (database == ":memory:" or os.path.isfile(database))


def learned_durations(database_url: str,
                      kinds: Iterable[Kind]) -> tuple[dict[Kind, Duration], str | None]:
    """Per kind, the median duration learned from completed tasks (when enough are), else
    the catalogue's prior, both for a row of the default options (one unit of work: the
    samples are per unit, `workers.polling`); and a note when the database could not be
    read."""
    wanted = list(kinds)
    found = {kind: Duration(prior_duration_s(*kind)) for kind in wanted}
    if not wanted:
        return found, None
    if not _database_exists(database_url):
        return found, "no database yet: every duration is a prior"
    engine = make_read_engine(database_url)  # reads only: never waits for the fleet's writes
    try:
        if not inspect(engine).has_table(DurationSample.__tablename__):
            return found, "no durations in the database yet: every duration is a prior"
        for kind in wanted:
            learned = durations.load(engine, *kind)
            if learned.learned:
                found[kind] = Duration(learned.quantile(0.5), len(learned.samples))
    except SQLAlchemyError as exc:
        return found, f"database not read ({type(exc).__name__}): durations are priors"
    finally:
        engine.dispose()
    return found, None


def estimate(settings: Settings, opts: EstimateOptions) -> Estimate:
    """The estimate for `opts.manifest` (a file or a folder, read as ingest reads it, local
    files checked as ingest checks them); raises ConfigError or ManifestError (exit 2) for
    the usage errors `run` refuses."""
    require_manifest(opts.manifest)
    preflight(opts.manifest, opts.model, opts.task_type, opts.strict, tuple(opts.fields))
    account = read_account(settings, opts.concurrency)
    with open_source(opts.manifest, opts.model, opts.task_type) as source:
        defaults = Defaults(opts.model, opts.task_type, opts.service_mode or None,
                            dict(opts.fields), LocalFiles(source_folder(source)))
        tally = Tally(defaults, opts.strict).add_all(source)
        skipped = source.note if isinstance(source, FolderManifest) else None
    kinds = tally.sorted_kinds()
    sent = [k for k in kinds if k.rows]
    found, note = learned_durations(settings.database_url, [(k.model, k.task_type) for k in sent])
    total = wall_time_s([k.work(found[(k.model, k.task_type)].seconds) for k in sent],
                        account.concurrency)
    return Estimate(str(opts.manifest), kinds, found,
                    kind_wall_times(sent, found, account.concurrency), total, account, note,
                    skipped)
