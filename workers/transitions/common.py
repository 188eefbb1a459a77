"""What both sides of the state machine share: claims, poll targets, the CAS helpers.

Every statement that changes `jobs.state` is built here, by `move`, from the table in
`workers.states`: a move the table does not allow raises `IllegalMove` when the module
building it is imported (statements are built once, at import).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVarTuple

from sqlalchemy import Row, Select, Update, and_, bindparam, or_
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from workers.db import transaction
from workers.models import JOBS
from workers.piapi import TaskView
from workers.states import IllegalMove, JobState, check_moves

logger = logging.getLogger(__name__)

_Columns = TypeVarTuple("_Columns")


@dataclass(frozen=True)
class ForRow:
    """Work on one of the user's rows, which names the row for the message's summary in
    Flower (keyword-only, so it comes after each subclass's own fields)."""

    row_key: str = field(default="", kw_only=True)
    """The user's row id."""


@dataclass(frozen=True)
class Posting(ForRow):
    """One create of a job: the job, the create's number, and what it posts."""

    job_id: int
    batch_id: str
    attempt_n: int
    """This create's number for its job; (job_id, attempt_n) names its `attempts` row."""
    model: str
    task_type: str
    input: dict[str, Any]
    tries: int
    """Retryable create failures in a row so far (a create that made no task is one)."""


@dataclass(frozen=True)
class Claim(Posting):
    """A job a worker now holds for one create, with what the create needs."""

    service_mode: str | None = None
    """`config.service_mode` to send (`public`, `private`), or None to send none."""


@dataclass(frozen=True)
class PollTarget(ForRow):
    """A running job a worker is about to GET."""

    job_id: int
    task_id: str
    polls: int
    poll_errors: int
    attempts: int
    max_attempts: int
    model: str
    task_type: str
    submitted_at: float | None
    retry_base: int = 0
    """`attempts` when an operator last retried the row (those no longer count)."""
    cancel_mode: str | None = None
    """The batch was cancelled: `finish` (running tasks finish) or `now` (abandoned)."""
    on_stuck: str | None = None
    """The batch's `--on-stuck` (None: the fleet's default)."""
    factor: float = 1.0
    """The row's input factor (`workers.expected.input_factor`): its poll schedule and stuck
    limit are its kind's per-unit ones times this, and its duration is recorded divided
    by it."""
    batch_id: str = field(default="", kw_only=True)
    """The row's batch: a slot its task frees may go to the batch's next row
    (`workers.handoff`)."""

    @property
    def counted_attempts(self) -> int:
        """Attempts that count against `max_attempts` (since the last operator retry)."""
        return self.attempts - self.retry_base


def moved(what: str, job_id: int) -> None:
    """Log a change skipped because the job is no longer where the caller left it."""
    logger.info("job %s: %s skipped, the job is no longer where this worker left it",
                job_id, what)


def rows_among(engine: Engine, statement: Select[*_Columns],
               ids: Iterable[int]) -> Sequence[Row[*_Columns]]:
    """The rows `statement` selects for `ids` (its expanding parameter `p_ids`): how a
    message's targets are loaded. No ids: no query."""
    listed = list(ids)
    if not listed:
        return []
    with transaction(engine) as conn:
        return conn.execute(statement, {"p_ids": listed}).all()


def usage_params(view: TaskView | None) -> dict[str, Any]:
    """Parameters for the usage columns (None keeps what was there)."""
    usage = view.usage if view is not None else None
    return {"p_consume": usage.consume if usage else None,
            "p_usage_type": (usage.type or None) if usage else None}


MOVE_OPTION = "piapi_bulk_move"
"""The execution option a statement built by `move` carries its `Move` in (SQLAlchemy
keeps execution options through `.where()` and `.values()`)."""


@dataclass(frozen=True)
class Move:
    """What one statement does to `jobs.state`: from any of `sources` to `target`."""

    sources: frozenset[JobState]
    target: JobState
    given: str | None = None
    """The bind parameter that names the source state at run time, if any (`Given`)."""


@dataclass(frozen=True)
class Given:
    """Source states named at run time by the bind parameter `name`: one of `states`
    (`state = :name`), or with `many` a list of them (`state IN :name`)."""

    name: str
    states: tuple[JobState, ...]
    many: bool = False


Sources = JobState | Collection[JobState] | Mapping[JobState, ColumnElement[bool] | None] | Given
"""One state; several (IN); a state -> extra condition mapping (OR of them, None for no
condition); or `Given` at run time."""

THIS_JOB = JOBS.c.id == bindparam("p_job")
"""The one job a statement is aimed at (parameter `p_job`)."""

MOVES: list[Move] = []
"""Every move built so far, one per statement (for tests: the table is the truth)."""


def _state_condition(sources: Sources) -> tuple[ColumnElement[bool], tuple[JobState, ...]]:
    state = JOBS.c.state
    if isinstance(sources, Given):
        param: BindParameter[str] = bindparam(sources.name, expanding=sources.many)
        return (state.in_(param) if sources.many else state == param), sources.states
    if isinstance(sources, JobState):
        return state == sources.value, (sources,)
    if isinstance(sources, Mapping):
        terms = [state == s.value if cond is None else and_(state == s.value, cond)
                 for s, cond in sources.items()]
        return or_(*terms), tuple(sources)
    listed = tuple(sources)
    return state.in_([s.value for s in listed]), listed


def move(sources: Sources, target: JobState, *where: ColumnElement[bool]) -> Update:
    """`UPDATE jobs SET state = target WHERE *where AND <state is one of sources>`: a
    compare-and-set on the states it expects. Raises IllegalMove unless `workers.states`
    allows every source -> target. Chain `.where()` for conditions after the state's and
    `.values()` for the other columns (never `state`)."""
    condition, states = _state_condition(sources)
    found = Move(check_moves(states, target), target,
                 sources.name if isinstance(sources, Given) else None)
    MOVES.append(found)
    return (JOBS.update().where(*where, condition).values(state=target.value)
            .execution_options(**{MOVE_OPTION: found}))


def move_of(statement: Any) -> Move | None:
    """The move a statement built by `move` makes (None for any other statement)."""
    found = statement.get_execution_options().get(MOVE_OPTION)
    return found if isinstance(found, Move) else None


def given(statement: Any, states: Collection[str]) -> list[str]:
    """`states` for a statement's `Given` parameter, once checked against what it declared
    (IllegalMove for a state it may not move from)."""
    declared = move_of(statement)
    if declared is None or declared.given is None:
        raise IllegalMove("this statement takes no source state at run time")
    bad = sorted(set(states) - declared.sources)
    if bad:
        raise IllegalMove(f"{', '.join(bad)} -> {declared.target} is not declared here")
    return [JobState(s).value for s in states]
