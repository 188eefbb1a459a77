"""bench/profile.py's pure parts: py-spy's collapsed stacks summarised by library and by our
functions, the text it writes, and where the profiled run goes among the steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.profile import (
    Frame,
    format_text,
    library_of,
    package_of,
    parse_frame,
    summarise_collapsed,
    with_profiled_run,
)

CELERY = "<module> (scheduler/cli/__main__.py:4);main (celery/worker/worker.py:200)"
TASK = f"{CELERY};submit (workers/tasks.py:40);_submit_one (workers/work.py:90)"
SEND = f"{TASK};PiAPIClient._send (workers/piapi.py:120)"

# 100 samples: 40 in httpx under our code, 10 in h11 under httpx, 20 in our own code calling
# json (stdlib: ours by the leaf-most library frame), 15 in kombu under Celery, 10 in
# SQLAlchemy under our code, 5 in threading only; plus 30 of an idle pool thread.
COLLAPSED = "\n".join([
    f"{SEND};Client.send (httpx/_client.py:900);Connection.read (ssl.py:1100) 40",
    f"{SEND};Client.send (httpx/_client.py:900);H11Connection.next (h11/_connection.py:400) 10",
    f"{TASK};encode (workers/messages.py:12);dumps (json/__init__.py:231) 20",
    f"{CELERY};Producer.publish (kombu/messaging.py:170) 15",
    f"{TASK};Session.execute (sqlalchemy/orm/session.py:2300) 10",
    "_bootstrap (threading.py:1002);Thread.run (threading.py:982);Condition.notify "
    "(threading.py:382) 5",
    "_bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81) 30",
    "",
    "not a stack line",
])


def test_parse_frame_splits_function_file_and_line() -> None:
    assert parse_frame("PiAPIClient._send (workers/piapi.py:120)") == Frame(
        "PiAPIClient._send", "workers/piapi.py", 120)
    assert parse_frame("submit_jobs.<locals>.<lambda> (workers/work.py:7)").function == (
        "submit_jobs.<locals>.<lambda>")
    assert parse_frame("f (a (b).py:3)") == Frame("f", "a (b).py", 3)
    assert parse_frame("tick (scheduler/dispatcher.py)") == Frame(
        "tick", "scheduler/dispatcher.py")
    assert parse_frame("") == Frame("", "")


def test_package_and_library_of_a_file() -> None:
    assert package_of("sqlalchemy/engine/base.py") == "sqlalchemy"
    assert package_of("threading.py") == "threading"
    assert package_of("/x/.venv/lib/python3.11/site-packages/httpcore/_sync/a.py") == "httpcore"
    assert library_of(Frame("f", "h11/_state.py")) == "http"
    assert library_of(Frame("f", "redis/connection.py")) == "messaging"
    assert library_of(Frame("f", "psycopg/cursor.py")) == "db"
    assert library_of(Frame("f", "scheduler/dispatcher.py")) == "ours"
    assert library_of(Frame("f", "workersx/a.py")) is None
    assert library_of(Frame("f", "json/__init__.py")) is None


def test_summary_attributes_each_sample_to_its_leaf_most_library() -> None:
    s = summarise_collapsed(COLLAPSED)
    assert s["samples"] == 100 and s["idle_samples"] == 30
    assert s["libraries"] == {"http": 0.5, "ours": 0.2, "messaging": 0.15, "db": 0.1,
                              "other": 0.05}
    assert list(s["libraries"]) == ["http", "ours", "messaging", "db", "other"]
    assert s["other_leaves"] == [["threading.py:Condition.notify", 0.05]]


def test_our_functions_are_inclusive_and_counted_once_per_sample() -> None:
    recursive = f"{TASK};_submit_one (workers/work.py:95);PiAPIClient._send (workers/piapi.py:1) 4"
    s = summarise_collapsed(f"{COLLAPSED}\n{recursive}")
    assert s["samples"] == 104
    ours = dict((name, f) for name, f in s["ours_inclusive"])
    # 40 + 10 + 20 + 10 + 4 samples have workers/work.py:_submit_one, the recursive one once.
    assert ours["workers/work.py:_submit_one"] == round(84 / 104, 4)
    assert ours["workers/piapi.py:PiAPIClient._send"] == round(54 / 104, 4)
    assert ours["workers/messages.py:encode"] == round(20 / 104, 4)
    assert "celery/worker/worker.py:main" not in ours  # a library, not ours
    assert s["ours_inclusive"][0][1] >= s["ours_inclusive"][-1][1]
    assert len(summarise_collapsed(COLLAPSED, top=2)["ours_inclusive"]) == 2


def test_an_empty_profile_has_no_samples_and_no_division_by_zero() -> None:
    s = summarise_collapsed("")
    assert s["samples"] == 0 and set(s["libraries"].values()) == {0.0}
    assert s["ours_inclusive"] == [] and s["other_leaves"] == []


def test_text_block_per_process() -> None:
    text = format_text(["header line"], {"worker (pid 7)": summarise_collapsed(COLLAPSED)})
    lines = text.splitlines()
    assert lines[0] == "header line"
    assert lines[1].startswith("== worker (pid 7): 100 samples (+ 30 of idle pool threads")
    assert lines[2] == "    50.0%  httpx/httpcore/h11 (HTTP client)"
    assert "    20.0%  piapi-bulk code (self)" in lines
    assert "  -- top leaves in other: threading.py:Condition.notify 5.0%" in lines
    assert "    80.0%  workers/work.py:_submit_one" in lines


ENV: Any = object()  # not used until the profiled step runs
OUT = Path("/nonexistent/results")


def _steps() -> list[tuple[str, Any]]:
    return [("1", lambda: None), ("5 (on 1)", lambda: None), ("3", lambda: None)]


@pytest.mark.parametrize(("wanted", "quick", "added"), [
    (None, False, True), (None, True, False), (True, True, True), (False, False, False)])
def test_the_profiled_run_follows_scenario_1(wanted: bool | None, quick: bool,
                                             added: bool) -> None:
    steps = with_profiled_run(_steps(), ENV, OUT, wanted, quick)
    labels = [label for label, _ in steps]
    assert labels == (["1", "1 (profiled)", "5 (on 1)", "3"] if added else ["1", "5 (on 1)", "3"])


def test_no_profiled_run_without_scenario_1() -> None:
    steps = _steps()[1:]
    assert with_profiled_run(steps, ENV, OUT, True, False) == steps
