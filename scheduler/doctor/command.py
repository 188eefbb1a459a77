"""`piapi-bulk doctor` end to end: key, account, active_tasks, probe, history; findings stored."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from scheduler.doctor.checks import (
    Observed,
    carry_over,
    conclude,
    read_history,
    summarise_manifest,
)
from scheduler.doctor.probe import (
    PROBE_MODEL,
    PROBE_TASK_TYPE,
    PROBE_USD,
    ProbeResult,
    run_probe,
)
from scheduler.doctor.view import RunConfig, as_json, screen, warnings
from scheduler.validate import Defaults
from workers import findings as stored_findings
from workers.db import create_tables, make_engine
from workers.findings import Findings
from workers.piapi import AccountError, AccountInfo, PiAPIClient, PiAPIError
from workers.runtime import build_client
from workers.settings import ConfigError, Settings

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 120.0
"""How long --probe waits for its task to be listed, by default."""


@dataclass(frozen=True)
class DoctorOptions:
    """The command line of `piapi-bulk doctor`."""

    manifest: Path | None = None
    model: str | None = None
    task_type: str | None = None
    probe: bool = False
    yes: bool = False
    as_json: bool = False
    probe_timeout_s: float = PROBE_TIMEOUT_S


def observe(client: PiAPIClient, observed: Observed, *, probe: Callable[[], ProbeResult] | None,
            clock: Callable[[], float] = time.time) -> Observed:
    """Read active_tasks, run the probe (if asked), then read the history.

    The probe comes before the history reads, so they see its task: a task known to exist,
    of a known model, that each filter must list.
    """
    try:
        observed.active = client.active_task_counts()
    except PiAPIError as exc:
        observed.active_error = str(exc)
    models = observed.manifest.models
    if probe is not None:
        observed.probe = probe()
        if observed.probe.task_id is not None:
            models = [PROBE_MODEL, *models]
    observed.listings = read_history(client, models, clock())
    return observed


def _client(settings: Settings, requests: Counter[str]) -> PiAPIClient:
    return build_client(settings, before_request=lambda kind: requests.update((kind,)))


def _account(client: PiAPIClient, base_url: str) -> AccountInfo:
    """The account, or the one-line error `main` prints (exit 2)."""
    try:
        return client.account_info()
    except AccountError as exc:
        raise ConfigError(f"PiAPI refused the API key ({exc}); check PIAPI_API_KEY") from exc
    except PiAPIError as exc:
        raise ConfigError(f"cannot reach PiAPI at {base_url}: {exc}") from exc


def probe_price() -> str:
    """What --probe spends, in words."""
    return f"one {PROBE_MODEL} {PROBE_TASK_TYPE} task (about ${PROBE_USD:.3f})"


def _previous(settings: Settings) -> Findings | None:
    """The findings an earlier check stored (None: none, or the database cannot be read)."""
    try:
        engine = make_engine(settings.database_url)
        try:
            create_tables(engine)
            return stored_findings.load(engine)
        finally:
            engine.dispose()
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("doctor: earlier findings not read: %s", exc)
        return None


def _store(settings: Settings, findings: Findings) -> str | None:
    """Store the findings for `run`; an error to show, or None."""
    try:
        engine = make_engine(settings.database_url)
        try:
            stored_findings.store(engine, findings)
        finally:
            engine.dispose()
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("doctor findings not stored: %s", exc)
        return f"not stored ({type(exc).__name__}: check DATABASE_URL)"
    return None


@dataclass(frozen=True)
class DoctorResult:
    """What to print on stdout, and the exit code."""

    text: str
    code: int


def run_doctor(settings: Settings, opts: DoctorOptions, out: Console, err: Console,
               confirm: Callable[[str], bool] | None) -> DoctorResult:
    """Check the account; `confirm` asks the user before --probe spends (None: cannot ask)."""
    key = settings.require_api_key()
    if opts.probe and not opts.yes and confirm is None:
        raise ConfigError(f"--probe creates {probe_price()}: add --yes to confirm")
    manifest = summarise_manifest(opts.manifest, Defaults(opts.model, opts.task_type))
    requests: Counter[str] = Counter()
    with _client(settings, requests) as client:
        observed = Observed(settings.base_url, _account(client, settings.base_url), manifest,
                            requests=requests)
        probe = opts.probe and (opts.yes or (confirm is not None and confirm(
            f"--probe creates {probe_price()} on this account. Go on?")))
        if probe:
            err.print(f"probe: creating {probe_price()}, then reading the history for it "
                      f"(up to {opts.probe_timeout_s:.0f} s)", highlight=False)
        elif opts.probe:
            err.print("probe skipped: the checks are read-only", highlight=False)
        observe(client, observed, probe=(lambda: run_probe(
            client, timeout_s=opts.probe_timeout_s)) if probe else None)
    cfg = RunConfig(settings.active_tasks, bool(settings.webhook_url), settings.on_ambiguous)
    found = carry_over(conclude(observed.listings, observed.probe, observed.active,
                                observed.active_error is None, time.time()),
                       _previous(settings))
    warns = [w.replace(key, "***") for w in warnings(observed, found, cfg)]
    found = replace(found, notes=tuple(warns))
    store_error = _store(settings, found)
    text = _render(observed, found, cfg, warns, store_error, opts.as_json, out)
    failed = store_error is not None or bool(observed.probe and observed.probe.error) or any(
        x.kind == "none" and x.error for x in observed.listings)
    return DoctorResult(text.replace(key, "***"), 1 if failed else 0)


def _render(o: Observed, f: Findings, cfg: RunConfig, warns: list[str], store_error: str | None,
            as_json_: bool, out: Console) -> str:
    if as_json_:
        return json.dumps(as_json(o, f, cfg, warns, store_error is None), indent=2) + "\n"
    stored = store_error or "stored in DATABASE_URL: run uses them, piapi-bulk status shows them"
    with out.capture() as captured:
        out.print(screen(o, f, cfg, warns, stored), highlight=False)
    return "".join(line.rstrip() + "\n" for line in captured.get().splitlines())
