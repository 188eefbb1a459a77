"""Operator controls, the pure parts: deadlines, id files, budget arithmetic, reports."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from scheduler.operator import CancelReport, RetryReport, parse_budget, parse_deadline, read_ids
from workers.catalog import SPECS, UNKNOWN_PRICE_USD, prior_cost_usd
from workers.prices import TARIFFS
from workers.settings import ConfigError
from workers.spending import Spend, allowance, money, pause_message
from workers.transitions.common import PollTarget

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("text", "seconds"), [
    ("30m", 1800), ("8h", 8 * 3600), ("1h30m", 5400), ("2d", 2 * 86400), ("45s", 45),
    ("1H30M", 5400), (" 10m ", 600),
])
def test_a_duration_counts_from_now(text: str, seconds: int) -> None:
    assert parse_deadline(text, NOW) == NOW + seconds


def test_a_naive_iso_time_is_local_time() -> None:
    at = datetime.fromtimestamp(NOW).replace(microsecond=0) + timedelta(hours=3)
    assert parse_deadline(at.isoformat(), NOW) == at.timestamp()


def test_an_iso_time_with_an_offset_is_that_instant() -> None:
    at = datetime.fromtimestamp(NOW + 3600, tz=UTC)
    assert parse_deadline(at.isoformat(), NOW) == pytest.approx(NOW + 3600)
    assert parse_deadline(at.strftime("%Y-%m-%dT%H:%M:%SZ"), NOW) == pytest.approx(NOW + 3600)


@pytest.mark.parametrize("text", ["", "soon", "10x", "1h-5m", "0m", "2020-01-01T00:00",
                                  "tomorrow 5pm", "h", "400d", "99999999999d",
                                  "9999-12-31T00:00"])
def test_a_bad_or_past_deadline_is_a_usage_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--deadline"):
        parse_deadline(text, NOW)


def test_a_budget_must_be_positive() -> None:
    assert parse_budget(None) is None
    assert parse_budget(2.5) == 2.5
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--budget-usd"):
            parse_budget(bad)


def test_an_ids_file_ignores_blanks_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("# rows to redo\nimg-1\n\n  img-2  # flaky\nimg-1\n#img-3\n")
    assert read_ids(path) == ["img-1", "img-2"]
    with pytest.raises(ConfigError, match="cannot read ids file"):
        read_ids(tmp_path / "missing.txt")


def test_an_ids_file_from_windows_is_read_as_written(tmp_path: Path) -> None:
    # Found by an exploratory run: the byte-order mark became part of the first id, and a
    # file in another encoding was a traceback.
    path = tmp_path / "ids.txt"
    path.write_bytes(b"\xef\xbb\xbfcx110\r\ncx111\r\n")
    assert read_ids(path) == ["cx110", "cx111"]
    path.write_bytes(b"caf\xe9\r\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_ids(path)


@pytest.mark.parametrize(("budget", "spent", "frozen", "next_usd", "n"), [
    (1.00, 0.00, 0.00, 0.01, 100),
    (0.10, 0.03, 0.04, 0.01, 3),     # exactly on the budget counts as within it
    (0.10, 0.09, 0.01, 0.01, 0),
    (0.10, 0.095, 0.0, 0.01, 0),     # the next task would pass the budget
    (0.10, 0.12, 0.0, 0.01, 0),      # already past it
    (5.00, 1.00, 2.00, 1.80, 1),
    (5.00, 0.0, 0.0, 0.0, 1_000_000_000),  # nothing waits that costs anything
])
def test_allowance_stops_before_the_next_task_would_pass_the_budget(
        budget: float, spent: float, frozen: float, next_usd: float, n: int) -> None:
    assert allowance(budget, spent, frozen, next_usd) == n
    if 0 < n < 1_000_000_000:
        assert spent + frozen + n * next_usd <= budget + 1e-9
        assert spent + frozen + (n + 1) * next_usd > budget


def test_the_pause_message_says_what_to_do() -> None:
    message = pause_message(Spend(0.08, 0.02, 0.01, 5, 0), 0.10)
    assert message == ("budget: spent $0.08 + frozen $0.02 of $0.10; re-run with a higher "
                       "--budget-usd to continue")
    assert money(0.004) == "$0.0040" and money(12.5) == "$12.50"


def test_priors_are_plausible_and_an_unknown_price_errs_high() -> None:
    assert prior_cost_usd("Qubico/joycaption", "joycaption-beta-one") == pytest.approx(0.01)
    assert prior_cost_usd("Wan", "wan26-txt2video") == pytest.approx(1.80)  # 15 s at 1080P
    known = [prior_cost_usd(s.model, s.task_type) for s in SPECS]
    assert max(known) <= UNKNOWN_PRICE_USD
    assert prior_cost_usd("no-such-model", "x") == UNKNOWN_PRICE_USD
    assert prior_cost_usd("Qubico/diffrhythm", "txt2audio-base") == UNKNOWN_PRICE_USD
    assert prior_cost_usd("kling", "video_generation") == pytest.approx(2.10)  # 3.0, 15 s pro
    assert prior_cost_usd("Qubico/tts", "zero-shot") == pytest.approx(0.25)  # 10,000 chars
    assert all((s.model, s.task_type) in TARIFFS for s in SPECS)  # every entry has a price


def test_attempts_before_an_operator_retry_do_not_count() -> None:
    t = PollTarget(1, "t", 0, 0, attempts=5, max_attempts=3, model="m", task_type="t",
                   submitted_at=None, retry_base=4)
    assert t.counted_attempts == 1


def test_reports() -> None:
    line = CancelReport("b1", "finish", 7, 3, 1).summary()
    assert line.startswith("batch b1 cancelled: 7 row(s) cancelled now; 3 running task(s)")
    assert "the others finish" in line and "1 lost create(s)" in line
    assert "abandoned" in CancelReport("b1", "now", 0, 2, 0).summary()
    report = RetryReport("b1", requeued=2, reconciling=1,
                         skipped=Counter({"completed (never re-run)": 4}),
                         unknown_ids=["nope"])
    assert report.lines() == [
        "batch b1: 2 row(s) requeued, 1 sent to reconciliation first (their last create's "
        "outcome is unknown), 4 skipped (4 completed (never re-run))",
        "1 id(s) not in the batch: nope",
    ]
