"""The doctor's read-only checks: the manifest's models, the history read with and without
filters, and the findings concluded from what was seen (never from what the docs say)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from scheduler.doctor.probe import ProbeResult
from scheduler.estimate.tally import Tally
from scheduler.manifest import read_manifest
from scheduler.validate import Defaults
from workers.catalog import history_family
from workers.findings import Findings, HistoryFilter, RowModel
from workers.piapi import AccountInfo, HistoryRow, InvalidRequest, PiAPIClient, PiAPIError

WINDOW_S = 24 * 3600.0
"""The history is read over the last day: long enough to hold some tasks of a used account."""
PAGE_SIZE = 20
"""Rows per history read: enough to see several models, cheap for PiAPI."""
MAX_MODELS = 3
"""Models whose filters are tried (one or two GETs each)."""
DOCUMENTED_FAMILIES = frozenset({
    "diffrhythm", "flux", "gpts", "hailuo", "hug_video", "hunyuan", "image_toolkit", "kling",
    "llm", "luma", "mj", "mmaudio", "music-s", "music-u", "sd", "skyreels", "trellis", "tts",
    "video_toolkit", "wan"})
"""The history's documented `model` filter values."""

FilterKind = Literal["none", "family", "exact"]
Verdict = Literal["works", "broader", "misses", "refused", "error", "unknown"]
"""works: rows, all of the model asked for, none known missing · broader: other models' rows
too (the value is ignored) · misses: a task of the model known to exist is not listed ·
refused: 4xx · error: 5xx or unreachable · unknown: nothing listed, nothing known to miss."""


@dataclass(frozen=True)
class Kind:
    """The manifest's rows of one model and task type."""

    model: str
    task_type: str
    rows: int
    usd: float
    """Their cost at the price table's prices (as `estimate` says it)."""


@dataclass(frozen=True)
class ManifestSummary:
    """The models a batch will use, from a manifest and/or --model."""

    kinds: tuple[Kind, ...] = ()
    invalid: int = 0
    path: str | None = None

    @property
    def models(self) -> list[str]:
        """Distinct models, the most rows first."""
        rows: Counter[str] = Counter()
        for k in self.kinds:
            rows[k.model] += k.rows
        return [m for m, _ in rows.most_common()] or [k.model for k in self.kinds]

    @property
    def usd(self) -> float:
        """The estimated cost of every valid row."""
        return sum(k.usd for k in self.kinds)


def summarise_manifest(path: Path | None, defaults: Defaults) -> ManifestSummary:
    """Rows per (model, task type) of the manifest (or just --model when there is none),
    counted as `estimate` and ingest count them (a repeated id is an invalid row)."""
    if path is None:
        if defaults.model is None:
            return ManifestSummary()
        return ManifestSummary((Kind(defaults.model, defaults.task_type or "", 0, 0.0),))
    tally = Tally(defaults).add_all(read_manifest(path))
    kinds = tuple(Kind(k.model, k.task_type, k.rows, k.usd) for k in tally.sorted_kinds()
                  if k.rows)
    return ManifestSummary(kinds, sum(k.invalid for k in tally.kinds.values()), str(path))


@dataclass(frozen=True)
class Listing:
    """One history read and what it showed."""

    kind: FilterKind
    value: str | None
    """The `model` filter sent (None: no filter)."""
    model: str | None = None
    """The model it was read for."""
    rows: tuple[HistoryRow, ...] = ()
    total: int | None = None
    fields: frozenset[str] = frozenset()
    error: str | None = None
    verdict: Verdict = "unknown"


def belongs(kind: FilterKind, value: str, row_model: str) -> bool:
    """Whether a row of `row_model` is one the filter `value` asked for."""
    if kind == "exact":
        return row_model.casefold() == value.casefold()
    # a family: a mapped model of it, the family's own name, or an unmapped name containing it
    return history_family(row_model) == value or value in row_model.casefold()


def judge(kind: FilterKind, value: str, rows: Sequence[HistoryRow],
          expect: set[str]) -> Verdict:
    """What a filtered read says about the filter; `expect`: ids of tasks it must list
    (seen in the unfiltered read). A full page may have pushed some out: one must show."""
    if any(not belongs(kind, value, r.model) for r in rows):
        return "broader"
    listed = {r.task_id for r in rows}
    missing = expect - listed
    if missing and (len(rows) < PAGE_SIZE or not expect & listed):
        return "misses"
    return "works" if rows else "unknown"


def _read(client: PiAPIClient, kind: FilterKind, value: str | None, model: str | None,
          now: float) -> Listing:
    try:
        page = client.task_history(value, now - WINDOW_S, now + 60, page_size=PAGE_SIZE)
    except InvalidRequest as exc:
        return Listing(kind, value, model, error=str(exc), verdict="refused")
    except PiAPIError as exc:
        return Listing(kind, value, model, error=str(exc), verdict="error")
    return Listing(kind, value, model, tuple(page.rows), page.total, page.fields)


def _queries(models: Iterable[str]) -> list[tuple[FilterKind, str, str]]:
    """(kind, filter value, model) for each model: its family, and its exact name when
    that differs from the family (`kling` is both); each value once."""
    out: list[tuple[FilterKind, str, str]] = []
    seen: set[str] = set()
    for model in models:
        family = history_family(model)
        wanted: list[tuple[FilterKind, str]] = [("family", family)] if family else []
        if family is None or family.casefold() != model.casefold():
            wanted.append(("exact", model))
        for kind, value in wanted:
            if value not in seen:
                seen.add(value)
                out.append((kind, value, model))
    return out


def read_history(client: PiAPIClient, models: Sequence[str], now: float) -> list[Listing]:
    """The last day unfiltered, then with each model's family and exact name as filter.

    The unfiltered read comes first: the tasks it shows are what a filtered read must list
    too. Without a model to try, the account's most common recent model is tried.
    """
    plain = _read(client, "none", None, None, now)
    if plain.error:
        return [plain]
    listed = Counter(r.model for r in plain.rows if r.model)
    wanted = list(dict.fromkeys(models))[:MAX_MODELS]
    if listed and not any(m in listed for m in wanted):
        wanted.append(listed.most_common(1)[0][0])
    out = [replace(plain, verdict="works" if plain.rows else "unknown")]
    for kind, value, model in _queries(wanted):
        listing = _read(client, kind, value, model, now)
        if listing.error is None:
            expect = {r.task_id for r in plain.rows if belongs(kind, value, r.model)}
            listing = replace(listing, verdict=judge(kind, value, listing.rows, expect))
        out.append(listing)
    return out


# --- conclusions -------------------------------------------------------------------------


def _kind_state(listings: Sequence[Listing], kind: FilterKind) -> str:
    """works / fails / unknown for one kind of filter over every read of that kind."""
    verdicts = {x.verdict for x in listings if x.kind == kind}
    if verdicts & {"misses", "refused", "broader"}:
        return "fails"
    return "works" if "works" in verdicts else "unknown"


def history_filter(listings: Sequence[Listing]) -> HistoryFilter | None:
    """The filter the history was seen to honour: exact names, family names, or none."""
    exact, family = _kind_state(listings, "exact"), _kind_state(listings, "family")
    if exact == "works":
        return "exact"
    if family == "works":
        return "family"
    plain_ok = any(x.kind == "none" and x.verdict == "works" for x in listings)
    tried = {state for state in (exact, family) if state != "unknown"}
    return "none" if plain_ok and tried == {"fails"} else None


def _rows(listings: Sequence[Listing]) -> list[HistoryRow]:
    return [r for x in listings if x.error is None for r in x.rows]


def has_input(listings: Sequence[Listing], probe: ProbeResult | None) -> bool | None:
    """Whether rows carry inputs: the probe's row decides (its input as sent); else every
    row seen must carry one."""
    if probe is not None and probe.row_input_matches is not None:
        return probe.row_input_matches
    rows = _rows(listings)
    return all(r.input is not None for r in rows) if rows else None


def row_model(listings: Sequence[Listing], probe: ProbeResult | None) -> RowModel | None:
    """What rows name as model: "exact" model names or only "family" names."""
    if probe is not None and probe.row is not None:
        names = {probe.row.model}
    else:
        names = {r.model for r in _rows(listings) if r.model}
    exact = any(_exact_name(n) for n in names)
    family = any(n in DOCUMENTED_FAMILIES and history_family(n) is None for n in names)
    if exact != family:
        return "exact" if exact else "family"
    return None


def _exact_name(name: str) -> bool:
    """A model name no family is spelled as (`Qubico/...`, `Wan` is not: family `wan`)."""
    family = history_family(name)
    return "/" in name or (family is not None and family != name.casefold())


def conclude(listings: Sequence[Listing], probe: ProbeResult | None,
             active: dict[str, int] | None, active_ok: bool, now: float,
             notes: Sequence[str] = ()) -> Findings:
    """The findings from this check alone (None wherever nothing was observed)."""
    probed = probe is not None and probe.task_id is not None
    seen_fields = {f for x in listings if x.error is None for f in x.fields}
    return Findings(
        checked_at=now,
        history_filter=history_filter(listings),
        history_has_input=has_input(listings, probe),
        history_lag_s=round(probe.lag_s, 3) if probe and probe.lag_s is not None else None,
        history_lists_pending=probe.lists_pending if probe else None,
        echoes_input=probe.echoes_input if probe else None,
        active_families=tuple(sorted(active or {})) if active_ok else None,
        notes=tuple(notes),
        history_row_model=row_model(listings, probe),
        history_fields=tuple(sorted(seen_fields)) or None,
        probed_at=now if probed else None,
    )


KEPT = tuple(f.name for f in fields(Findings)
             if f.name not in ("checked_at", "active_families", "notes"))
"""Findings a later check keeps from an earlier one when it did not observe them."""


def carry_over(new: Findings, old: Findings | None) -> Findings:
    """`new`, with what it did not observe taken from `old` (a probe's lag stays measured)."""
    if old is None:
        return new
    return replace(new, **{k: getattr(old, k) for k in KEPT
                           if getattr(new, k) is None and getattr(old, k) is not None})


@dataclass
class Observed:
    """Everything one doctor run saw, for the view and for `conclude`."""

    base_url: str
    account: AccountInfo
    manifest: ManifestSummary
    active: dict[str, int] | None = None
    active_error: str | None = None
    listings: list[Listing] = field(default_factory=list)
    probe: ProbeResult | None = None
    requests: Counter[str] = field(default_factory=Counter)
