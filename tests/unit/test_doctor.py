"""The doctor's conclusions (pure) and its probe's clock work, with no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from scheduler.doctor.checks import (
    PAGE_SIZE,
    Listing,
    carry_over,
    conclude,
    has_input,
    history_filter,
    judge,
    row_model,
    summarise_manifest,
)
from scheduler.doctor.probe import PROBE_INPUT, PROBE_MODEL, ProbeResult, run_probe
from scheduler.doctor.view import fields_text, status_line
from scheduler.validate import Defaults
from workers.catalog import UNKNOWN_PRICE_USD
from workers.findings import Findings
from workers.piapi import HistoryRow, PiAPIClient

JOY = "Qubico/joycaption"


def row(task_id: str, model: str = JOY, inp: dict[str, Any] | None = None,
        status: str = "completed") -> HistoryRow:
    return HistoryRow(task_id, model, "t", status, 1.0, inp)


@pytest.mark.parametrize(("kind", "value", "rows", "expect", "verdict"), [
    ("exact", JOY, [row("a"), row("b")], {"a", "b"}, "works"),
    ("exact", JOY, [row("a"), row("w", "Wan")], {"a"}, "broader"),
    ("exact", JOY, [], {"a"}, "misses"),
    ("exact", JOY, [row("b")], {"a", "b"}, "misses"),
    ("exact", JOY, [], set(), "unknown"),
    # a full page may have pushed an expected task out; one of them must show
    ("exact", JOY, [row(str(i)) for i in range(PAGE_SIZE)], {"0", "zz"}, "works"),
    ("exact", JOY, [row(str(i)) for i in range(PAGE_SIZE)], {"zz"}, "misses"),
    ("family", "flux", [row("a", PROBE_MODEL), row("b", "Qubico/flux1-dev")], {"a"}, "works"),
    ("family", "flux", [row("a", "flux")], {"a"}, "works"),
    ("family", "wan", [row("a", "Wan"), row("b", JOY)], {"a"}, "broader"),
])
def test_judge_a_filtered_read(kind: Any, value: str, rows: list[HistoryRow], expect: set[str],
                               verdict: str) -> None:
    assert judge(kind, value, rows, expect) == verdict


def listing(kind: Any, verdict: Any, rows: tuple[HistoryRow, ...] = ()) -> Listing:
    return Listing(kind, None if kind == "none" else "v", rows=rows, verdict=verdict)


PLAIN = listing("none", "works", (row("a"),))


@pytest.mark.parametrize(("listings", "expected"), [
    ([PLAIN, listing("exact", "works"), listing("family", "misses")], "exact"),
    ([PLAIN, listing("exact", "misses"), listing("family", "works")], "family"),
    ([PLAIN, listing("exact", "works"), listing("exact", "misses"),
      listing("family", "works")], "family"),  # exact missed once: not trusted
    ([PLAIN, listing("exact", "broader"), listing("family", "refused")], "none"),
    ([PLAIN, listing("exact", "misses"), listing("family", "unknown")], "none"),
    ([PLAIN, listing("exact", "unknown"), listing("family", "unknown")], None),
    ([listing("none", "unknown"), listing("exact", "unknown")], None),  # history empty
    ([listing("none", "error")], None),  # history down
])
def test_which_filter_the_history_honours(listings: list[Listing], expected: str | None) -> None:
    assert history_filter(listings) == expected


def probe(**kw: Any) -> ProbeResult:
    return ProbeResult(**{"task_id": "p", "echo_read": True, **kw})


def test_inputs_in_rows_the_probe_decides() -> None:
    with_input = [listing("none", "works", (row("a", inp={"image": "x"}),))]
    without = [listing("none", "works", (row("a"), row("b", inp={"image": "x"})))]
    assert has_input(with_input, None) is True
    assert has_input(without, None) is False
    assert has_input([listing("none", "unknown")], None) is None
    echoed_other = probe(row=row("p", PROBE_MODEL, inp={"prompt": "something else"}))
    assert has_input(with_input, echoed_other) is False
    assert has_input([], probe(row=row("p", PROBE_MODEL, inp=dict(PROBE_INPUT)))) is True


@pytest.mark.parametrize(("models", "expected"), [
    ([JOY, "Wan"], "exact"),
    (["Wan", "kling"], None),  # spelled like their families: cannot tell
    (["wan", "flux"], "family"),
    ([JOY, "flux"], None),  # both seen: not one answer
])
def test_what_rows_name_as_model(models: list[str], expected: str | None) -> None:
    rows = tuple(row(str(i), m) for i, m in enumerate(models))
    assert row_model([listing("none", "works", rows)], None) == expected


def test_row_model_from_the_probe_row() -> None:
    plain = [listing("none", "works", (row("a", "flux"),))]
    assert row_model(plain, probe(row=row("p", PROBE_MODEL))) == "exact"
    assert row_model([], probe(row=row("p", "flux"))) == "family"


def test_conclude_and_carry_over_keep_what_was_not_measured_again() -> None:
    probed = probe(lag_s=2.1234, first_status="pending", row=row("p", PROBE_MODEL),
                   echoed=dict(PROBE_INPUT), active_counted=True)
    first = conclude([PLAIN, listing("exact", "works")], probed, {"flux": 1}, True, 100.0)
    assert (first.history_filter, first.history_lag_s, first.history_lists_pending,
            first.echoes_input, first.probed_at) == ("exact", 2.123, True, True, 100.0)
    assert first.active_families == ("flux",)
    later = conclude([listing("none", "unknown")], None, None, True, 200.0, notes=("n",))
    merged = carry_over(later, first)
    assert (merged.checked_at, merged.probed_at, merged.history_lag_s) == (200.0, 100.0, 2.123)
    assert merged.history_filter == "exact" and merged.notes == ("n",)
    assert merged.active_families == ()  # measured now: active_tasks not offered
    newer = carry_over(conclude([PLAIN, listing("exact", "misses")], None, None, False, 300.0),
                       merged)
    assert newer.history_filter == "none" and newer.active_families is None


def test_findings_json_is_tolerant_of_older_and_newer_fields() -> None:
    old = json.dumps({"checked_at": 5.0, "history_filter": "family",
                      "active_families": ["flux"], "notes": [], "from_the_future": 1})
    f = Findings.from_json(old)
    assert (f.history_filter, f.active_families, f.history_row_model) == ("family", ("flux",),
                                                                          None)
    assert Findings.from_json(f.to_json()) == f
    assert f.history_filter_value("Qubico/flux1-dev") == "flux"
    assert f.history_filter_value(JOY) is None  # no family: unfiltered
    assert Findings(1.0, history_filter="exact").history_filter_value(JOY) == JOY
    assert Findings(1.0).history_filter_value("Wan") is None  # not measured: unfiltered
    with pytest.raises(ValueError):
        Findings.from_json("[]")


def test_status_line() -> None:
    f = Findings(0.0, history_filter="family", history_has_input=False, history_lag_s=2.14)
    line = status_line(f)
    assert line.startswith("doctor: checked ")
    assert line.endswith(": history filter family, no inputs, lag 2.1 s")
    assert "not checked" in status_line(Findings(0.0)) and "not measured" in status_line(
        Findings(0.0))
    assert ": history read unfiltered, inputs in rows," in status_line(
        Findings(0.0, history_filter="none", history_has_input=True))


def test_fields_text() -> None:
    assert fields_text(["task_id", "detail", "detail.model", "detail.task_id"]) == \
        "task_id, detail{model, task_id}"
    assert fields_text([]) == "nothing seen"


def test_manifest_summary(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join([
        json.dumps({"image": "https://x/1.png"}),
        json.dumps({"image": "https://x/2.png"}),
        json.dumps({"model": "Wan", "task_type": "wan26-txt2video", "prompt": "p"}),
        json.dumps({"model": "Wan", "task_type": "nope", "prompt": "p"}),
        json.dumps({"model": "nope"}),  # not in the catalogue: sent unchecked
        json.dumps({"id": "3", "image": "https://x/3.png"}),  # the third row's id again
    ]) + "\n")
    m = summarise_manifest(path, Defaults(JOY, "joycaption-beta-one"))
    # Counted as estimate counts: a repeated id is invalid, prices from the price table.
    assert m.models == [JOY, "Wan", "nope"] and m.invalid == 2
    assert m.usd == pytest.approx(2 * 0.01 + 0.40 + UNKNOWN_PRICE_USD)
    assert summarise_manifest(None, Defaults("Wan")).models == ["Wan"]
    assert summarise_manifest(None, Defaults()).models == []


class FakeAccount:
    """A PiAPI whose history lists the probe task `lag_s` after its create, on a fake clock."""

    def __init__(self, lag_s: float, status: str = "pending") -> None:
        self.now, self.lag_s, self.status = 1000.0, lag_s, status
        self.created_at: float | None = None
        self.requests: list[str] = []

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append(path)
        task = {"task_id": "p1", "model": PROBE_MODEL, "task_type": "txt2img",
                "status": self.status, "input": dict(PROBE_INPUT)}
        if path == "/api/v1/task":
            self.created_at = self.now
            data: Any = task
        elif path == "/api/v1/task/p1":
            data = task
        elif path == "/account/active_tasks":
            data = {"flux": {"pending_count": 1, "processing_count": 0}}
        else:
            assert "model" not in request.url.params  # the probe reads the history unfiltered
            seen = self.created_at is not None and self.now >= self.created_at + self.lag_s
            data = {"data": [{"task_id": "p1", "task_model": PROBE_MODEL, "action": "txt2img",
                              "status": self.status, "detail": {"model": PROBE_MODEL}}]
                    if seen else [], "total": int(seen)}
        return httpx.Response(200, json={"code": 200, "message": "success", "data": data})


@pytest.mark.parametrize(("lag_s", "timeout_s", "listed"), [(0.0, 30, True), (7.0, 30, True),
                                                             (50.0, 30, False)])
def test_probe_measures_the_lag_on_its_clock(lag_s: float, timeout_s: float,
                                             listed: bool) -> None:
    fake = FakeAccount(lag_s)
    with PiAPIClient("http://piapi.test", "k" * 32,
                     transport=httpx.MockTransport(fake.handler)) as client:
        result = run_probe(client, timeout_s=timeout_s, clock=lambda: fake.now, sleep=fake.sleep)
    assert result.task_id == "p1" and result.listed is listed
    assert result.echoes_input is True and result.active_counted is True
    assert result.row_input_matches is (False if listed else None)  # documented rows: no input
    if listed:
        assert result.lag_s is not None and lag_s <= result.lag_s <= lag_s + 5.0
        assert result.lists_pending is True
    else:
        assert result.lag_s is None and result.waited_s <= timeout_s
    assert fake.requests.count("/api/v1/task") == 1  # one paid task, whatever happens


def test_a_probe_task_listed_only_once_ended_says_nothing_about_pending() -> None:
    fake = FakeAccount(3.0, status="completed")
    with PiAPIClient("http://piapi.test", "k" * 32,
                     transport=httpx.MockTransport(fake.handler)) as client:
        result = run_probe(client, timeout_s=30, clock=lambda: fake.now, sleep=fake.sleep)
    assert result.listed and result.lists_pending is None
