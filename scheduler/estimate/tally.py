"""A manifest's rows added up per (model, task type), keeping no row: valid and invalid rows
(reasons with their first lines), the cost from the price table, and the wall-time model.

Rows are validated exactly as ingest validates them (`scheduler.validate.validate_row`, the
same duplicate-id rule), so the counts match what `run` would store. Memory stays flat in
the rows' number except for the duplicate-id check, which keeps a 64-bit hash per row id (a
hash collision, about one chance in 10^7 for 10^6 ids, would count one row as a duplicate).
Reasons are counted per kind up to `MAX_REASONS` distinct texts (the rest as "other
reasons"), and kinds up to `MAX_KINDS` (the rest under `OTHER_KINDS`). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from scheduler.manifest import BadRow, Item
from scheduler.validate import Defaults, Invalid, JobSpec, validate_row
from workers.expected import input_factor
from workers.polling import work_units
from workers.prices import Basis, price_usd

MAX_KINDS = 200
"""Distinct (model, task type) pairs tallied apart; more (a model column full of typos)
are tallied together under OTHER_KINDS."""
OTHER_KINDS = ("(other models)", "")
MAX_REASONS = 8
"""Distinct invalid reasons counted apart per kind; the rest count as OTHER_REASONS."""
OTHER_REASONS = "other reasons"
FIRST_LINES = 5
"""Line numbers kept per reason."""
DUPLICATE = "duplicate id (an earlier row has the same id)"

Kind = tuple[str, str]


@dataclass
class Reason:
    """One reason rows are invalid: how many, and the first lines."""

    rows: int = 0
    lines: list[int] = field(default_factory=list)


@dataclass
class KindTally:
    """What one (model, task type) of a manifest adds up to."""

    model: str
    task_type: str
    rows: int = 0
    """Valid rows: those `run` would send."""
    units: float = 0.0
    """The valid rows' work in default rows (the sum of their input factors,
    `workers.expected.input_factor`): learned durations are per such unit."""
    invalid: int = 0
    usd: float = 0.0
    """The valid rows' cost at the price table's prices."""
    upper: int = 0
    """Valid rows priced at an upper bound (the input cannot tell the price)."""
    unknown: int = 0
    """Valid rows with no known price (priced at `UNKNOWN_PRICE_USD`)."""
    unchecked: int = 0
    """Valid rows of a model the catalogue does not know (sent unchecked)."""
    reasons: dict[str, Reason] = field(default_factory=dict)

    def add_valid(self, usd: float, basis: Basis, unchecked: bool, factor: float = 1.0) -> None:
        """Count one valid row costing `usd`, of `factor` units of work."""
        self.rows += 1
        self.units += work_units(factor)
        self.usd += usd
        self.upper += basis is Basis.UPPER
        self.unknown += basis is Basis.UNKNOWN
        self.unchecked += unchecked

    def mean_task_s(self, per_unit_s: float) -> float:
        """A task's mean duration among these rows, from a kind's duration per unit."""
        return per_unit_s * self.units / self.rows if self.rows else per_unit_s

    def add_invalid(self, line: int, reason: str) -> None:
        """Count one invalid row, at `line`, for `reason`."""
        self.invalid += 1
        if reason not in self.reasons and len(self.reasons) >= MAX_REASONS:
            reason = OTHER_REASONS
        found = self.reasons.setdefault(reason, Reason())
        found.rows += 1
        if len(found.lines) < FIRST_LINES:
            found.lines.append(line)

    @property
    def price(self) -> Basis:
        """How far the cost can be trusted: unknown if any row's price is, and so on."""
        if self.unknown:
            return Basis.UNKNOWN
        return Basis.UPPER if self.upper else Basis.EXACT


class Tally:
    """Rows added up as they stream by (`add`); `kinds` is the result."""

    def __init__(self, defaults: Defaults, strict: bool = False) -> None:
        self.defaults = defaults
        self.strict = strict
        self.kinds: dict[Kind, KindTally] = {}
        self._seen: set[int] = set()

    def _kind(self, model: str | None, task_type: str | None) -> KindTally:
        key = (model or "", task_type or "")
        found = self.kinds.get(key)
        if found is None:
            if len(self.kinds) >= MAX_KINDS:
                key = OTHER_KINDS
            found = self.kinds.setdefault(key, KindTally(*key))
        return found

    def add(self, item: Item) -> None:
        """Validate one row as ingest would and count it."""
        if isinstance(item, BadRow):
            self._seen.add(hash(str(item.seq)))
            self._kind(None, None).add_invalid(item.line, item.reason)
            return
        spec = validate_row(item, self.defaults, strict=self.strict)
        key = hash(spec.row_key)
        repeated = key in self._seen
        self._seen.add(key)
        if isinstance(spec, Invalid):
            self._kind(spec.model, spec.task_type).add_invalid(spec.line, spec.reason)
        elif repeated:
            self._kind(spec.model, spec.task_type).add_invalid(spec.line, DUPLICATE)
        else:
            self._add_valid(spec)

    def _add_valid(self, spec: JobSpec) -> None:
        price = price_usd(spec.model, spec.task_type, spec.input)
        factor = input_factor(spec.model, spec.task_type, spec.input)
        self._kind(spec.model, spec.task_type).add_valid(price.usd, price.basis, spec.unchecked,
                                                         factor)

    def add_all(self, items: Iterable[Item]) -> Tally:
        """Count every row of `items`; returns self."""
        for item in items:
            self.add(item)
        return self

    def sorted_kinds(self) -> list[KindTally]:
        """The kinds, most rows first (invalid ones included), then by name."""
        return sorted(self.kinds.values(),
                      key=lambda k: (-(k.rows + k.invalid), k.model, k.task_type))


@dataclass(frozen=True)
class Duration:
    """How long one task of a kind takes, and where that comes from."""

    seconds: float
    samples: int = 0
    """Completed tasks it was learned from; 0: the catalogue's prior."""

    @property
    def learned(self) -> bool:
        """True when learned from completed tasks (else a prior)."""
        return self.samples > 0


def wall_time_s(work: Iterable[tuple[float, float]], concurrency: int) -> float:
    """How long rows take with `concurrency` tasks in flight, from (rows, seconds per task)
    pairs (or units of work and seconds per unit): total task-seconds / concurrency, but
    never less than the longest single task (0 with no rows). Ignores retries, polling
    delays and queueing at PiAPI."""
    busy = [(rows, seconds) for rows, seconds in work if rows > 0]
    if not busy:
        return 0.0
    total = sum(rows * seconds for rows, seconds in busy)
    return max(total / max(1, concurrency), max(seconds for _, seconds in busy))


def kind_wall_times(kinds: Iterable[KindTally], durations: Mapping[Kind, Duration],
                    concurrency: int) -> dict[Kind, float]:
    """Each kind's wall time as if it ran alone with the whole concurrency."""
    return {(k.model, k.task_type): wall_time_s(
        [(k.units, durations[(k.model, k.task_type)].seconds)], concurrency)
        for k in kinds if (k.model, k.task_type) in durations}
