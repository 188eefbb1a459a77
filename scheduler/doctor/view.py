"""What `piapi-bulk doctor` prints: one screen (rich) or JSON, the modes `run` will use, the
warnings, and the one-line summary `piapi-bulk status` shows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from scheduler.doctor.checks import WINDOW_S, Listing, Observed
from scheduler.doctor.probe import PROBE_MODEL, PROBE_TASK_TYPE, PROBE_USD, ProbeResult
from workers.catalog import ACTIVE_FAMILIES, active_family
from workers.findings import Findings
from workers.reconcile.settle import settle_s
from workers.states import AmbiguousPolicy


@dataclass(frozen=True)
class RunConfig:
    """The settings that change what `run` does with the findings."""

    active_tasks: str = "auto"
    webhooks: bool = False
    on_ambiguous: AmbiguousPolicy = AmbiguousPolicy.RECONCILE


def when(ts: float) -> str:
    """A Unix time as local time, to the second."""
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def status_line(f: Findings) -> str:
    """`doctor: checked <when>: history filter family, no inputs, lag 2.1 s`."""
    filters = {None: "history filter not checked", "none": "history read unfiltered"}
    parts = [filters.get(f.history_filter, f"history filter {f.history_filter}"),
             {True: "inputs in rows", False: "no inputs", None: "inputs not checked"}
             [f.history_has_input],
             f"lag {f.history_lag_s:.1f} s" if f.history_lag_s is not None
             else "lag not measured (--probe)"]
    if f.echoes_input is False:
        parts.append("GET echoes no input")
    return f"doctor: checked {when(f.checked_at)}: {', '.join(parts)}"


# --- what run will do ----------------------------------------------------------------------


def slots_mode(model: str, active: dict[str, int] | None, cfg: RunConfig) -> str:
    """Where `run` counts `model`'s tasks in flight from."""
    if cfg.active_tasks == "off":
        return "our own record (PIAPI_BULK_ACTIVE_TASKS=off)"
    if cfg.webhooks:
        return "our own record and webhooks (active_tasks is not read with webhooks on)"
    family = active_family(model)
    if active is not None and family is not None and family in active:
        return f"counted by PiAPI (active_tasks: {family})"
    return "counted from our own record"


def reconcile_mode(models: Sequence[str], f: Findings, cfg: RunConfig) -> list[str]:
    """How `run` settles a create whose answer was lost, a line each."""
    if cfg.on_ambiguous != AmbiguousPolicy.RECONCILE:
        what = ("posted again at once (may pay twice)" if cfg.on_ambiguous == AmbiguousPolicy.RETRY
                else "failed (never posted twice, never looked for)")
        return [f"off (on-ambiguous {cfg.on_ambiguous}): a lost create is {what}"]
    lines = []
    for model in models:
        value = f.history_filter_value(model)
        lines.append(f"{model}: history read with model={value}, then unfiltered" if value
                     else f"{model}: history read unfiltered")
    if f.history_has_input:
        lines.append("candidates matched from the listing (rows carry inputs)")
    else:
        lines.append("each candidate confirmed by a GET of it (rows carry no inputs)"
                     if f.history_has_input is False
                     else "each candidate confirmed by a GET of it (inputs in rows not checked)")
    wait = f"{settle_s(f):.0f} s"
    if f.history_lag_s is not None:
        lines.append(f"an absence trusted {wait} after the lost create at the earliest (lag "
                     f"{f.history_lag_s:.1f} s, measured {when(f.probed_at or f.checked_at)}), "
                     "and only once a later task of ours is listed")
    else:
        lines.append(f"listing lag not measured (--probe): an absence trusted {wait} after "
                     "the lost create at the earliest, and only once a later task of ours is "
                     "listed")
    if f.history_lists_pending is not True:
        lines.append("pending tasks not seen listed: an absence also waits until the lost "
                     "create's task would have ended (its kind's stuck limit), unless the "
                     "listing shows a pending task")
    return lines


def warnings(o: Observed, f: Findings, cfg: RunConfig) -> list[str]:
    """What will make `run` slower, costlier or less sure than it could be."""
    out = _active_warnings(o, cfg)
    plain = next((x for x in o.listings if x.kind == "none"), None)
    if plain is not None and plain.error:
        out.append(f"the history could not be read ({plain.error}): lost creates cannot be "
                   "reconciled while it is down")
    elif plain is not None and not plain.rows and o.probe is None:
        out.append("history empty: filters cannot be checked (run with --probe)")
    if f.history_filter in (None, "none"):  # else a filter that works is used anyway
        out += [f"model={x.value} does not list {x.model}'s tasks ({x.verdict}): "
                "reconciliation reads the history unfiltered"
                for x in o.listings if x.verdict in ("misses", "broader")]
    if f.echoes_input is False:
        out.append("GET does not echo the input as sent: a lost create's candidate task "
                   "cannot be confirmed by its input")
    if f.history_row_model == "family":
        out.append("history rows name only a family, not the model: every candidate is "
                   "confirmed by a GET")
    out += _probe_warnings(o.probe)
    if o.account.usd is not None and o.manifest.usd > o.account.usd:
        out.append(f"the manifest's estimated cost ${o.manifest.usd:,.2f} is more than the "
                   f"balance ${o.account.usd:,.2f}")
    return out


def _active_warnings(o: Observed, cfg: RunConfig) -> list[str]:
    if cfg.active_tasks == "off" or cfg.webhooks:
        return []
    if o.active is None:
        why = o.active_error or "not offered"
        return [f"/account/active_tasks: {why}: slots are counted from our record"]
    return [f"active_tasks does not count {m}: slots are counted from our record"
            for m in o.manifest.models if slots_mode(m, o.active, cfg).endswith("own record")]


def _probe_warnings(p: ProbeResult | None) -> list[str]:
    if p is None:
        return []
    if p.error:
        cost = f" (a task may exist: about ${PROBE_USD:.3f})" if p.maybe_created else ""
        return [f"probe: {p.error}{cost}"]
    out = []
    if not p.listed:
        out.append(f"the probe task was not listed within {p.waited_s:.0f} s: the history's "
                   "silence about a lost create proves little")
    if p.active_counted is False:
        out.append("active_tasks did not count the probe task just after its create")
    return out


# --- the screen ----------------------------------------------------------------------------


def _listing_line(x: Listing) -> str:
    if x.kind == "none":
        if x.error:
            return f"unfiltered: error ({x.error})"
        models = ", ".join(f"{m} {n}" for m, n in _count(x.rows))
        total = f" of {x.total}" if x.total is not None and x.total > len(x.rows) else ""
        return f"last {WINDOW_S / 3600:.0f} h, unfiltered: {_n(len(x.rows), 'row')}{total}" + (
            f" ({models})" if models else "")
    if x.error:
        return f"model={x.value}: {x.verdict} ({x.error})"
    meaning = {"works": f"works ({_n(len(x.rows), 'row')}, all {x.model}"
                        f"{'' if x.kind == 'exact' else ' family'})",
               "broader": f"ignored (other models' rows too, {_n(len(x.rows), 'row')})",
               "misses": f"misses {x.model}'s tasks the unfiltered listing shows",
               "unknown": f"no {x.model} task to check it with"}
    return f"model={x.value} ({x.kind}): {meaning.get(x.verdict, x.verdict)}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _count(rows: Sequence[Any]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.model or "?"] = counts.get(r.model or "?", 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


def _yes(value: bool | None, yes: str, no: str, unknown: str = "not checked") -> str:
    return unknown if value is None else (yes if value else no)


def fields_text(names: Sequence[str], most: int = 6) -> str:
    """Row keys as `a, b, detail{c, d, +3}`: a row's own keys, then its detail's."""
    own = [n for n in names if not n.startswith("detail.")]
    sub = [n.removeprefix("detail.") for n in names if n.startswith("detail.")]
    if sub:
        more = f", +{len(sub) - most}" if len(sub) > most else ""
        own = [n for n in own if n != "detail"] + [f"detail{{{', '.join(sub[:most])}{more}}}"]
    return ", ".join(own) or "nothing seen"


def _rows_line(f: Findings) -> str:
    return (f"rows carry: {fields_text(f.history_fields or ())} · "
            f"input: {_yes(f.history_has_input, 'yes', 'no')} · "
            f"model names: {f.history_row_model or 'not checked'}")


def _probe_lines(p: ProbeResult | None, f: Findings) -> list[str]:
    if p is None:
        kept = ([f"not run now: lag and echo kept from the probe of {when(f.probed_at)}"]
                if f.probed_at else [])
        return kept or [f"not run: --probe creates one {PROBE_MODEL} {PROBE_TASK_TYPE} task "
                        f"(about ${PROBE_USD:.3f}) to measure the lag and the GET's echo"]
    if p.error:
        return [f"failed: {p.error}"]
    listed = (f"listed after {p.lag_s:.1f} s, first as {p.first_status}" if p.lag_s is not None
              else f"not listed within {p.waited_s:.0f} s ({p.polls} reads)")
    lines = [f"task {p.task_id}: {listed}"]
    if p.listed and p.lists_pending is None:
        lines.append("it had left pending before it was listed: whether pending tasks are "
                     "listed is not known (a lost create is then judged absent only once its "
                     "task would have ended)")
    lines.append(f"GET echoes the input: {_yes(p.echoes_input, 'yes', 'no')} · "
                 f"active_tasks counted it: {_yes(p.active_counted, 'yes', 'no')}")
    return lines


def screen(o: Observed, f: Findings, cfg: RunConfig, warns: Sequence[str],
           stored: str) -> RenderableType:
    """The doctor's report, one screen."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()

    def add(label: str, lines: Sequence[str]) -> None:
        for i, line in enumerate(lines):
            grid.add_row(label if i == 0 else "", Text(line))

    acct = o.account
    add("key", ["accepted (GET /account/info)"])
    add("account", [f"concurrency limit {acct.max_concurrent_tasks or 'not given'} · balance "
                    + (f"${acct.usd:,.2f}" if acct.usd is not None else "not given")])
    add("manifest", _manifest_lines(o))
    add("active_tasks", _active_lines(o, cfg))
    add("history", [*(_listing_line(x) for x in o.listings), _rows_line(f)])
    add("probe", _probe_lines(o.probe, f))
    add("run: slots", [f"{m}: {slots_mode(m, o.active, cfg)}" for m in o.manifest.models]
        or ["(no model given: use a manifest or --model)"])
    add("run: reconcile", reconcile_mode(o.manifest.models, f, cfg))
    add("warnings", [f"! {w}" for w in warns] or ["none"])
    add("findings", [stored])
    spent = ", ".join(f"{k} {n}" for k, n in sorted(o.requests.items()))
    add("requests", [f"{sum(o.requests.values())} to PiAPI ({spent})"])
    mode = "probe (one paid task)" if o.probe is not None else "read-only (GETs only)"
    title = Text(f"piapi-bulk doctor · {o.base_url} · {mode}", style="bold")
    return Group(title, grid)


def _manifest_lines(o: Observed) -> list[str]:
    m = o.manifest
    if not m.kinds:
        return ["none given (models from --model or a manifest are checked)"]
    if m.path is None:
        return [f"--model {m.kinds[0].model}"]
    rows = sum(k.rows for k in m.kinds)
    kinds = ", ".join(f"{k.model} {k.task_type} {k.rows}" for k in m.kinds)
    return [f"{m.path}: {rows} rows ({m.invalid} invalid), about ${m.usd:,.2f}: {kinds}"]


def _active_lines(o: Observed, cfg: RunConfig) -> list[str]:
    if o.active is None:
        return [f"not offered ({o.active_error})" if o.active_error else "not offered"]
    fams = ", ".join(f"{k} {v}" for k, v in sorted(o.active.items()))
    unused = sorted(set(o.active) - set(ACTIVE_FAMILIES.values()))
    lines = [f"reports {fams or 'no family'} (tasks in flight now)"]
    if unused:
        lines.append(f"not used: {', '.join(unused)} (no model is documented as counted there)")
    return lines


def as_json(o: Observed, f: Findings, cfg: RunConfig, warns: Sequence[str],
            stored: bool) -> dict[str, Any]:
    """The report as one JSON object (`doctor --json`)."""
    probe = None
    if o.probe is not None:
        p = o.probe
        probe = {"task_id": p.task_id, "error": p.error, "maybe_created": p.maybe_created,
                 "lag_s": p.lag_s, "first_status": p.first_status, "listed": p.listed,
                 "lists_pending": p.lists_pending, "echoes_input": p.echoes_input,
                 "row_input_matches": p.row_input_matches, "active_counted": p.active_counted,
                 "polls": p.polls, "waited_s": round(p.waited_s, 3)}
    return {
        "base_url": o.base_url,
        "key": "accepted",
        "account": {"max_concurrent_task_count": o.account.max_concurrent_tasks,
                    "equivalent_in_usd": o.account.usd},
        "manifest": {"path": o.manifest.path, "invalid": o.manifest.invalid,
                     "usd": round(o.manifest.usd, 6),
                     "kinds": [asdict(k) for k in o.manifest.kinds]},
        "active_tasks": {"families": o.active, "error": o.active_error},
        "history": [{"kind": x.kind, "filter": x.value, "model": x.model, "rows": len(x.rows),
                     "total": x.total, "verdict": x.verdict, "error": x.error}
                    for x in o.listings],
        "probe": probe,
        "run": {"slots": {m: slots_mode(m, o.active, cfg) for m in o.manifest.models},
                "reconcile": reconcile_mode(o.manifest.models, f, cfg)},
        "warnings": list(warns),
        "findings": asdict(f),
        "stored": stored,
        "requests": dict(o.requests),
    }
