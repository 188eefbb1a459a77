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
Work = tuple[float, float, float]
"""Rows' work for the wall-time model: (units of work, seconds per unit, the largest units
of one row). A row of default options is one unit, so rows of one unit each are
(rows, seconds per task, 1)."""


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
    longest_units: float = 0.0
    """The largest work of one valid row, in the same units: the longest single task is
    this many times a unit's duration (a 15 s Wan clip is 3 units of a 5 s one)."""
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
        units = work_units(factor)
        self.rows += 1
        self.units += units
        self.longest_units = max(self.longest_units, units)
        self.usd += usd
        self.upper += basis is Basis.UPPER
        self.unknown += basis is Basis.UNKNOWN
        self.unchecked += unchecked

    def mean_task_s(self, per_unit_s: float) -> float:
        """A task's mean duration among these rows, from a kind's duration per unit."""
        return per_unit_s * self.units / self.rows if self.rows else per_unit_s

    def longest_task_s(self, per_unit_s: float) -> float:
        """The longest single task among these rows (its row's units times a kind's
        duration per unit); a unit's duration with no rows."""
        return per_unit_s * self.longest_units if self.rows else per_unit_s

    def work(self, per_unit_s: float) -> Work:
        """These rows' work for `wall_time_s`, at a kind's duration per unit."""
        return (self.units, per_unit_s, self.longest_units)

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
    """How long one unit of a kind's work takes (a task of the default options), and where
    that comes from."""

    seconds: float
    """Seconds per unit: a row's task takes its units (`workers.expected.input_factor`)
    times this."""
    samples: int = 0
    """Completed tasks it was learned from; 0: the catalogue's prior."""

    @property
    def learned(self) -> bool:
        """True when learned from completed tasks (else a prior)."""
        return self.samples > 0


def wall_time_s(work: Iterable[Work], concurrency: int) -> float:
    """How long rows take with `concurrency` tasks in flight, from `Work` triples (units of
    work, seconds per unit, the largest units of one row): total task-seconds /
    concurrency, but never less than the longest single task, a row's units times its
    seconds per unit (0 with no rows). Ignores retries, polling delays and queueing at
    PiAPI."""
    busy = [(units, seconds, longest) for units, seconds, longest in work if units > 0]
    if not busy:
        return 0.0
    total = sum(units * seconds for units, seconds, _ in busy)
    longest_task = max(seconds * longest for _, seconds, longest in busy)
    return max(total / max(1, concurrency), longest_task)


def kind_wall_times(kinds: Iterable[KindTally], durations: Mapping[Kind, Duration],
                    concurrency: int) -> dict[Kind, float]:
    """Each kind's wall time as if it ran alone with the whole concurrency."""
    return {(k.model, k.task_type): wall_time_s(
        [k.work(durations[(k.model, k.task_type)].seconds)], concurrency)
        for k in kinds if (k.model, k.task_type) in durations}
