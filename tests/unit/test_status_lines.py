"""What `piapi-bulk status` prints for a batch, and the database URL it names (masked)."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from scheduler.status import STALLED_AFTER_S, WIDTH, BatchStatus, human_lines, masked_url
from workers.states import JobState

T0 = datetime(2026, 3, 4, 15, 6, 30).timestamp()


def status(counts: dict[str, int], **extra: object) -> BatchStatus:
    full = {s.value: 0 for s in JobState} | counts
    return BatchStatus(id="b0123456789ab", source="/data/captions.csv", total=sum(full.values()),
                       counts=full, created_at=T0, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(("st", "phase"), [
    (status({"completed": 3}, done=True), "done"),
    (status({"completed": 3}, done=True, cancel_mode="finish"), "done"),
    (status({"queued": 2}), "waiting"),
    (status({"retry_wait": 1, "ambiguous": 1}), "waiting"),
    (status({"queued": 2, "running": 1}), "running"),
    (status({"submitting": 1}), "running"),
    (status({"completed": 1}, watched=1), "running"),
    (status({"queued": 2}, paused="budget: spent $1.00"), "paused"),
    (status({"running": 2}, cancel_mode="finish"), "cancelling"),
    (status({"completed": 2}, ingested=False), "ingesting"),
])
def test_phase(st: BatchStatus, phase: str) -> None:
    assert st.phase == phase


@pytest.mark.parametrize(("counts", "overdue_s", "done", "phase"), [
    ({"running": 2}, 30.0, False, "running"),  # a poll a bit late
    ({"running": 2}, STALLED_AFTER_S + 60, False, "stalled"),
    ({"ambiguous": 1}, STALLED_AFTER_S + 60, False, "stalled"),
    ({"completed": 2}, 9999.0, True, "done"),
])
def test_a_batch_whose_polls_are_long_overdue_is_stalled(
        counts: dict[str, int], overdue_s: float, done: bool, phase: str) -> None:
    st = status(counts, done=done, due_since=time.time() - overdue_s)  # now, not at collection
    assert st.phase == phase


def test_human_lines() -> None:
    st = status({"completed": 97, "failed": 2, "invalid": 1}, done=True, consumed_units=9_700_000,
                failures={"provider": 2})
    lines = human_lines(st, [("Qubico/joycaption", "joycaption-beta-one", 98), ("?", "?", 1),
                             ("Wan", "wan26-txt2video", 1)])
    assert lines == [
        "b0123456789ab  done       2026-03-04 15:06  /data/captions.csv",
        "  models: Qubico/joycaption joycaption-beta-one (98), ? ? (1), Wan wan26-txt2video (1)",
        "  100/100 finished: completed 97, failed 2, invalid 1; cost $0.97",
        "  failed: provider 2",
    ]


def test_human_lines_fit_in_100_columns() -> None:
    long_path = "/data/" + "/".join(["a-rather-long-folder-name"] * 6) + "/captions.csv"
    st = status({"queued": 5}, budget_usd=20.0, unchecked=5, concurrency=4)
    st.source = long_path
    models = [(f"Vendor/model-{i}", "some-task-type", 1) for i in range(10)]
    lines = human_lines(st, models)
    assert all(len(line) <= WIDTH for line in lines), [len(x) for x in lines]
    assert lines[0].endswith("/captions.csv") and "..." in lines[0]
    assert lines[1].endswith("...")
    assert any(line.startswith("  unchecked 5") for line in lines)
    assert "  budget $20.00, spent $0.00" in lines
    assert "  at most 4 in flight (--concurrency)" in lines  # the batch's own limit
    assert not any("in flight" in line for line in human_lines(status({"queued": 5}), []))


def test_the_home_folder_is_shown_as_a_tilde() -> None:
    st = status({"queued": 1})
    st.source = str(Path.home() / "work" / "captions.csv")
    assert human_lines(st, [])[0].endswith("  ~/work/captions.csv")
    assert human_lines(st, [])[1] == "  models: none"


@pytest.mark.parametrize(("url", "shown"), [
    ("sqlite:////home/me/.local/share/piapi-bulk/piapi-bulk.db",
     "sqlite:////home/me/.local/share/piapi-bulk/piapi-bulk.db"),
    ("sqlite:///relative.db", "sqlite:///relative.db"),
    ("postgresql://bulk:s3cret@db.internal:5432/piapi",
     "postgresql://bulk:***@db.internal:5432/piapi"),
    ("postgresql+psycopg://bulk@db/piapi", "postgresql+psycopg://bulk@db/piapi"),
    ("postgresql://db/piapi?user=bulk&password=s3cret&sslmode=require",
     "postgresql://db/piapi?user=bulk&password=***&sslmode=require"),
    ("not a url://u:s3cret@h", "not a url://u:***@h"),
    ("postgresql://u:s3/c?r#et@h/db", "postgresql://u:***@h/db"),  # not percent-encoded
])
def test_masked_url(url: str, shown: str) -> None:
    assert masked_url(url) == shown
    assert "s3cret" not in masked_url(url) and "et@" not in masked_url(url)


def test_status_json_is_the_contract() -> None:
    """`status --json`'s keys are a contract other tools read: the record's fields but the
    raw units and the ingest flag, `cancel_mode` as `cancelled`, and the derived figures."""
    st = status({"completed": 3, "running": 1}, consumed_units=25_000_000, cancel_mode="finish",
                ingested=False, failures={"provider": 1})
    out = st.to_json()
    assert set(out) == {
        "id", "source", "total", "counts", "finished", "done", "usd", "created_at",
        "budget_usd", "spent_usd", "paused", "deadline_at", "cancelled", "cancelled_at",
        "unchecked", "failures", "abandoned", "watched", "on_stuck", "reused", "concurrency",
        "due_since", "phase",
    }
    assert (out["finished"], out["usd"], out["spent_usd"]) == (3, 2.5, 2.5)
    assert out["cancelled"] == "finish" and out["failures"] == {"provider": 1}
    assert out["counts"] == st.counts and out["counts"] is not st.counts


def test_a_batch_nothing_serves_says_so() -> None:
    """Its rows still say `running` after the run was killed: the polls long overdue show
    that nothing serves it, and how to go on."""
    st = status({"running": 20, "queued": 5}, due_since=time.time() - 300)
    [line] = st.details()
    assert line.startswith("stalled: polls 5m0") and "same command" in line
    assert all(len(x) <= WIDTH for x in human_lines(st, []))
    assert human_lines(st, [])[0].split()[1] == "stalled"
    assert st.to_json()["phase"] == "stalled"
