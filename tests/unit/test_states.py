"""The job state machine: the table, and the statements built from it.

The table (`workers.states.ALLOWED`) is the truth: every statement that changes
`jobs.state` is built by `workers.transitions.common.move`, which refuses a move the table
does not hold. These tests find every such statement in the code (module by module) and
check it against the table both ways; `tests/integration/test_transitions.py` runs them on
real databases.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Update

import scheduler
import workers
from workers.models import JOBS
from workers.settings import Settings
from workers.states import (
    ACTIVE,
    ALLOWED,
    IN_FLIGHT,
    TERMINAL,
    AmbiguousPolicy,
    AttemptState,
    IllegalMove,
    JobState,
    sources_of,
)
from workers.transitions import create, operator
from workers.transitions.common import MOVES, Given, Move, given, move, move_of

Pair = tuple[JobState, JobState]


def _values(name: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _values(f"{name}[{key!r}]", item)
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            yield from _values(f"{name}[{i}]", item)
    else:
        yield name, value


def state_writers() -> dict[str, Update]:
    """Every module-level statement of workers/ and scheduler/ that sets `jobs.state`, by
    `module.name` (statements are built once, at import, so this finds them all)."""
    found: dict[str, Update] = {}
    for package in (workers, scheduler):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                for path, item in _values(name, value):
                    if (isinstance(item, Update) and item.table is JOBS
                            and re.search(r"\bstate=", str(item).split(" WHERE ")[0])):
                        found[f"{info.name}.{path}"] = item
    return found


WRITERS = state_writers()


def declared(statement: Update) -> Move:
    found = move_of(statement)
    assert found is not None
    return found


def pairs(m: Move) -> set[Pair]:
    return {(s, m.target) for s in m.sources}


def table_pairs() -> set[Pair]:
    return {(s, t) for s, targets in ALLOWED.items() for t in targets}


# --- the statements, checked against the table ---------------------------------------------

def test_the_statements_are_found() -> None:
    # A guard on the guard: the walk sees the modules that change state.
    modules = {name.rsplit(".", 1)[0].split("[")[0] for name in WRITERS}
    assert {"workers.transitions.create", "workers.transitions.poll",
            "workers.reconcile.records", "workers.transitions.operator",
            "workers.transitions.reuse", "workers.transitions.watch"} <= modules
    assert len(WRITERS) >= 25


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_statement_that_sets_jobs_state_is_built_by_move(name: str) -> None:
    statement = WRITERS[name]
    m = move_of(statement)
    assert m is not None, f"{name} sets jobs.state without workers.transitions.common.move"
    assert pairs(m) <= table_pairs()
    # Nothing chained after `move` changed the target it was checked for...
    assert statement.compile().params["state"] == m.target.value
    # ...and the compare-and-set on the state is still there.
    assert "jobs.state" in str(statement).split(" WHERE ", 1)[1]


def test_every_move_of_the_table_is_made_by_some_statement() -> None:
    # The other way round: a move no statement makes is drift (the table says more than
    # the code does), and would hide the next statement that starts making it unannounced.
    made = set().union(*(pairs(declared(s)) for s in WRITERS.values()))
    assert table_pairs() - made == set()


def test_the_registry_holds_what_the_modules_built() -> None:
    for statement in WRITERS.values():
        assert declared(statement) in MOVES


def test_the_ways_out_of_a_terminal_state_are_the_documented_ones() -> None:
    out = {name: sorted(pairs(declared(s)) & {(a, b) for a, b in table_pairs()
                                              if a in TERMINAL})
           for name, s in WRITERS.items()}
    out = {name: found for name, found in out.items() if found}
    f, c = JobState.FAILED, JobState.CANCELLED
    q, amb, run, done = (JobState.QUEUED, JobState.AMBIGUOUS, JobState.RUNNING,
                         JobState.COMPLETED)
    assert out == {
        # An operator's retry: failed and cancelled rows go back to queued, or to
        # ambiguous when their last create's outcome is unknown.
        "workers.transitions.operator._RETRY_ALL[0]": [(c, q), (f, q)],
        "workers.transitions.operator._RETRY_ALL[1]": [(c, amb), (f, amb)],
        "workers.transitions.operator._RETRY_KEYED[0]": [(c, q), (f, q)],
        "workers.transitions.operator._RETRY_KEYED[1]": [(c, amb), (f, amb)],
        # A task abandoned (stuck, or by cancel --now) by a row that then failed or was
        # cancelled completed after all: paid for, so the row takes its result.
        "workers.transitions.watch._TAKE_FROM_WAITING": [(c, done), (f, done)],
        # A create's answer arriving after its row failed as ambiguous: the task is adopted.
        "workers.transitions.create._ADOPT": [(f, run)],
    }


# --- move() itself ---------------------------------------------------------------------------

@pytest.mark.parametrize(("src", "dst"), sorted(
    (s, t) for s in JobState for t in JobState if t not in ALLOWED[s]))
def test_a_move_not_in_the_table_is_refused_when_built(src: JobState, dst: JobState) -> None:
    built = len(MOVES)
    with pytest.raises(IllegalMove):
        move(src, dst)
    # One bad source among allowed ones is enough, whatever the form.
    good = sorted(sources_of(dst))
    for form in ([*good, src], dict.fromkeys([*good, src]), Given("p_state", (*good, src))):
        with pytest.raises(IllegalMove):
            move(form, dst)
    assert len(MOVES) == built


def test_a_module_with_a_move_missing_from_the_table_does_not_import(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rogue_transitions.py").write_text(
        "from workers.states import JobState\n"
        "from workers.transitions.common import move\n"
        "_UNDO = move(JobState.COMPLETED, JobState.QUEUED)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(IllegalMove, match="completed -> queued"):
        importlib.import_module("rogue_transitions")
    sys.modules.pop("rogue_transitions", None)


def test_move_builds_the_compare_and_set_it_was_given() -> None:
    claim = move({JobState.QUEUED: None, JobState.RETRY_WAIT: JOBS.c.next_at <= 5},
                 JobState.SUBMITTING, JOBS.c.id == 1)
    assert re.sub(r"\s+", " ", str(claim)).endswith(
        "WHERE jobs.id = :id_1 AND (jobs.state = :state_1 OR jobs.state = :state_2 "
        "AND jobs.next_at <= :next_at_1)")
    assert declared(claim) == Move(frozenset({JobState.QUEUED, JobState.RETRY_WAIT}),
                                   JobState.SUBMITTING)
    found_in = move(Given("p_state", (JobState.QUEUED,)), JobState.RETRY_WAIT)
    assert str(found_in).endswith("WHERE jobs.state = :p_state")
    assert declared(found_in).given == "p_state"


def test_a_source_state_given_at_run_time_is_checked_against_the_declaration() -> None:
    cancel = operator._CANCEL_IN
    assert given(cancel, [JobState.QUEUED, "ambiguous"]) == ["queued", "ambiguous"]
    with pytest.raises(IllegalMove, match="completed -> cancelled"):
        given(cancel, [JobState.QUEUED, JobState.COMPLETED])
    with pytest.raises(IllegalMove):
        given(create._CREATED, [JobState.SUBMITTING])  # its source is fixed in the SQL


# --- the table itself ------------------------------------------------------------------------

def test_every_state_has_a_row() -> None:
    assert set(ALLOWED) == set(JobState)


def test_the_table_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        ALLOWED[JobState.COMPLETED] = frozenset({JobState.QUEUED})  # type: ignore[index]


def test_completed_and_invalid_are_final_and_invalid_is_never_reached() -> None:
    assert ALLOWED[JobState.COMPLETED] == ALLOWED[JobState.INVALID] == frozenset()
    assert sources_of(JobState.INVALID) == frozenset()  # only ingest writes it


def test_a_create_can_only_start_from_queued_or_retry_wait() -> None:
    assert sources_of(JobState.SUBMITTING) == {JobState.QUEUED, JobState.RETRY_WAIT}


def test_an_ambiguous_row_is_never_posted_again_directly() -> None:
    # Adopted, failed, cancelled, or sent back to wait: never straight to another create.
    assert JobState.SUBMITTING not in ALLOWED[JobState.AMBIGUOUS]


def test_running_is_reached_only_with_a_task_id() -> None:
    # A create's answer, or a task found (reconciliation) or arriving late (adoption).
    assert sources_of(JobState.RUNNING) == {JobState.SUBMITTING, JobState.AMBIGUOUS,
                                            JobState.FAILED}


def test_partition() -> None:
    assert set(JobState) == TERMINAL | ACTIVE
    assert not TERMINAL & ACTIVE
    assert IN_FLIGHT <= ACTIVE


def test_attempt_states_are_the_strings_the_database_holds() -> None:
    assert [s.value for s in AttemptState] == [
        "posting", "created", "refused", "ambiguous", "absent", "completed", "failed",
        "cancelled", "abandoned"]


# --- the ambiguous policy --------------------------------------------------------------------

@pytest.mark.parametrize("value", ["reconcile", "retry", "fail"])
def test_the_ambiguous_policy_is_read_from_the_same_strings(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PIAPI_BULK_ON_AMBIGUOUS", value)
    assert Settings().on_ambiguous is AmbiguousPolicy(value)


def test_an_unknown_ambiguous_policy_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIAPI_BULK_ON_AMBIGUOUS", "hope")
    with pytest.raises(ValidationError):
        Settings()
