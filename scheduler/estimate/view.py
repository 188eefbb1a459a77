"""What `estimate` and `run --dry-run` print: a table per (model, task type) and a few lines,
or one JSON object (`--json`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from scheduler.estimate.command import Estimate
from scheduler.estimate.tally import Duration, KindTally
from scheduler.status import duration
from workers.prices import UNKNOWN_PRICE_USD, Basis
from workers.spending import money as _money

NOTHING = "nothing was created: no batch, no task"
MODEL_NOTE = ("wall time: total task-seconds / concurrency, never less than the longest "
              "single task (duration: a row's mean task; retries and polling delays not "
              "counted)")


def money(usd: float) -> str:
    """Dollars for people; a sum of a million prices is rounded to a micro-dollar first, so
    float error does not show as extra digits."""
    return _money(round(usd, 6))


def _name(k: KindTally) -> tuple[str, str]:
    return (k.model or "(no model)", k.task_type or "(no task type)")


def _cost(k: KindTally) -> str:
    if not k.rows:
        return "-"
    flag = {Basis.EXACT: "", Basis.UPPER: " (at most)", Basis.UNKNOWN: " (unknown price)"}
    return money(k.usd) + flag[k.price]


def _took(k: KindTally, d: Duration) -> str:
    """The duration cell: a row's mean task, and the longest row's when it shows apart."""
    mean, longest = duration(k.mean_task_s(d.seconds)), duration(k.longest_task_s(d.seconds))
    return (f"{mean} {'learned' if d.learned else 'prior'}"
            + (f", longest {longest}" if longest != mean else ""))


def table(est: Estimate) -> Table:
    """One line per (model, task type), and the total."""
    t = Table(title=f"estimate for {est.manifest}", title_justify="left")
    for name in ("model", "task type", "rows", "invalid", "cost", "per task", "duration",
                 "wall time"):
        t.add_column(name, justify="right" if name not in ("model", "task type") else "left")
    for k in est.kinds:
        key = (k.model, k.task_type)
        d = est.durations.get(key)
        t.add_row(*_name(k), str(k.rows), str(k.invalid), _cost(k),
                  money(k.usd / k.rows) if k.rows else "-", _took(k, d) if d is not None else "-",
                  duration(est.wall_s[key]) if key in est.wall_s else "-")
    t.add_section()
    t.add_row("total", "", str(est.rows), str(est.invalid), money(est.usd), "", "",
              duration(est.total_wall_s), style="bold")
    return t


def _reason_lines(est: Estimate) -> list[str]:
    lines = []
    for k in est.kinds:
        for reason, found in k.reasons.items():
            at = ", ".join(map(str, found.lines)) + (", ..." if found.rows > len(found.lines)
                                                     else "")
            lines.append(f"  invalid {found.rows}: {' '.join(_name(k))}: {reason} "
                         f"(line{'s' if found.rows > 1 else ''} {at})")
    return lines


def _price_lines(est: Estimate) -> list[str]:
    lines = []
    for k in est.kinds:
        if k.unknown:
            lines.append(f"unknown price: {k.unknown} rows of {' '.join(_name(k))} counted at "
                         f"{money(UNKNOWN_PRICE_USD)} each (piapi-bulk has no price for it)")
        if k.upper:
            lines.append(f"at most: {k.upper} rows of {' '.join(_name(k))} (the price depends "
                         "on the image's size, counted at the largest)")
    return lines


def _account_lines(est: Estimate) -> list[str]:
    a = est.account
    learned = [f"{m} {t}" for (m, t), d in est.durations.items() if d.learned]
    source = ("durations: learned for " + ", ".join(learned) + "; priors otherwise"
              if learned else "durations: priors (nothing learned yet)")
    lines = [f"concurrency {a.concurrency} ({a.concurrency_from}); {source}"]
    if est.durations_note:
        lines.append(est.durations_note)
    if a.note:
        lines.append(f"account: {a.note}")
    if a.balance_usd is not None:
        lines.append(f"balance: {money(a.balance_usd)}")
    else:
        lines.append("balance: unknown" if a.note else "balance: not reported")
    return lines


def warning(est: Estimate) -> str | None:
    """The one-line warning when the balance is below the estimate."""
    short = est.short_of_usd
    if short is None or est.account.balance_usd is None:
        return None
    return (f"warning: the balance {money(est.account.balance_usd)} is below the estimate "
            f"{money(est.usd)} ({money(short)} short): the run would stop when it runs out")


def show(est: Estimate, console: Console) -> None:
    """The human report."""
    console.print(table(est))
    for line in [*([est.source_note] if est.source_note else []), *_reason_lines(est),
                 *_price_lines(est), MODEL_NOTE, *_account_lines(est), NOTHING]:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    found = warning(est)
    if found:
        console.print(found, style="bold yellow", highlight=False, markup=False, soft_wrap=True)


def to_json(est: Estimate) -> dict[str, Any]:
    """The estimate as one JSON-ready object."""
    a = est.account
    kinds = []
    for k in est.kinds:
        key = (k.model, k.task_type)
        d = est.durations.get(key)
        kinds.append({
            "model": k.model or None, "task_type": k.task_type or None, "rows": k.rows,
            "invalid": k.invalid, "usd": round(k.usd, 6), "price": k.price.value,
            "unchecked": k.unchecked,
            "duration_s": k.mean_task_s(d.seconds) if d else None,  # a row's mean task
            "longest_task_s": k.longest_task_s(d.seconds) if d else None,
            "duration_per_unit_s": d.seconds if d else None,  # what is learned (or a prior)
            "units": k.units,
            "duration": None if d is None else ("learned" if d.learned else "prior"),
            "samples": d.samples if d else 0,
            "wall_s": est.wall_s.get(key),
            "invalid_reasons": [{"reason": r, "rows": f.rows, "lines": f.lines}
                                for r, f in k.reasons.items()],
        })
    return {
        "manifest": est.manifest, "created": False, "rows": est.rows, "invalid": est.invalid,
        "usd": round(est.usd, 6), "wall_s": est.total_wall_s,
        "concurrency": {"value": a.concurrency, "from": a.concurrency_from},
        "balance_usd": a.balance_usd, "balance_below_estimate": est.short_of_usd is not None,
        "account_note": a.note, "durations_note": est.durations_note,
        "source_note": est.source_note,
        "wall_time_model": MODEL_NOTE, "kinds": kinds,
    }
