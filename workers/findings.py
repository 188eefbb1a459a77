"""What `piapi-bulk doctor` learned about the account's PiAPI, kept in the database for `run`.

PiAPI documents some answers only loosely (the history's filter values and fields, how soon
a task is listed, which families /account/active_tasks counts). The doctor measures them
once with the real key; the fleet reads the findings and stays on its safe defaults for
anything not measured (every field here may be None: unknown).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy.engine import Engine

from workers.catalog import history_family
from workers.db import session
from workers.models import Control

logger = logging.getLogger(__name__)

FINDINGS_KEY = "doctor"
HistoryFilter = Literal["family", "exact", "none"]
RowModel = Literal["exact", "family"]


@dataclass(frozen=True)
class Findings:
    """The account's PiAPI as the doctor found it; None means not measured."""

    checked_at: float
    history_filter: HistoryFilter | None = None
    """Which `model` filter values the history honours: "exact" (model names too),
    "family" (documented family names only) or "none" (no filter works: read unfiltered)."""
    history_has_input: bool | None = None
    """Whether history rows carry the task's input (documented: they do not)."""
    history_lag_s: float | None = None
    """Seconds from sending a create until its task was first listed, measured with
    --probe (an upper bound: the history is polled every few seconds)."""
    history_lists_pending: bool | None = None
    """Whether a task is listed while still pending (--probe; None also when the probe task
    was first listed processing or ended: that says nothing of tasks waiting in the queue)."""
    echoes_input: bool | None = None
    """Whether GET /api/v1/task/{id} echoes the input as sent, so a candidate task can be
    confirmed by a GET (measured with --probe)."""
    active_families: tuple[str, ...] | None = None
    """The families /account/active_tasks reported."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    history_row_model: RowModel | None = None
    """What a history row names as its model: "exact" (the model the task was created
    with, e.g. Qubico/flux1-schnell) or "family" (e.g. flux: rows cannot be told apart by
    model, so a candidate's model is confirmed by a GET)."""
    history_fields: tuple[str, ...] | None = None
    """The keys history rows carried (a `detail` object's as `detail.<key>`)."""
    probed_at: float | None = None
    """When --probe measured history_lag_s, history_lists_pending and echoes_input (a later
    check without --probe keeps these)."""

    def history_filter_value(self, model: str) -> str | None:
        """The history `model` filter for `model`'s tasks: its exact name, its documented
        family, or None to read the history unfiltered (no filter known to work, the
        model has no family, or never measured: unfiltered is complete, only longer)."""
        if self.history_filter == "exact":
            return model
        if self.history_filter == "family":
            return history_family(model)
        return None

    def to_json(self) -> str:
        """The findings as one JSON object."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Findings:
        """Findings from `to_json`'s output (unknown keys ignored)."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("findings are not a JSON object")
        known: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                 for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def store(engine: Engine, findings: Findings) -> None:
    """Keep the findings for the fleet (replacing older ones)."""
    with session(engine) as s:
        row = s.get(Control, FINDINGS_KEY)
        if row is None:
            s.add(Control(key=FINDINGS_KEY, value=findings.to_json(),
                          updated_at=findings.checked_at))
        else:
            row.value, row.updated_at = findings.to_json(), findings.checked_at


def load(engine: Engine) -> Findings | None:
    """The stored findings, or None when the doctor never ran (or they cannot be read)."""
    with session(engine) as s:
        row = s.get(Control, FINDINGS_KEY)
        text = row.value if row else None
    if text is None:
        return None
    try:
        return Findings.from_json(text)
    except (ValueError, TypeError) as exc:
        logger.warning("ignoring unreadable doctor findings: %s", exc)
        return None
