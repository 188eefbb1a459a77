"""The estimate's tally (rows validated as ingest would, added up per kind), the wall-time
model and what is printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from sqlalchemy.engine import Engine

from scheduler.estimate.command import Account, Estimate, learned_durations
from scheduler.estimate.tally import (
    DUPLICATE,
    FIRST_LINES,
    MAX_REASONS,
    OTHER_REASONS,
    Duration,
    Kind,
    Tally,
    Work,
    kind_wall_times,
    wall_time_s,
)
from scheduler.estimate.view import show, table, to_json, warning
from scheduler.ingest import ingest
from scheduler.manifest import BadRow, Item, RawRow, read_manifest
from scheduler.validate import Defaults
from workers.prices import UNKNOWN_PRICE_USD, Basis

JOY = ("Qubico/joycaption", "joycaption-beta-one")
WAN = ("Wan", "wan26-txt2video")
IMG = "https://example.com/a.jpg"


def row(seq: int, **fields: Any) -> RawRow:
    return RawRow(seq, seq, fields)


NONE = Defaults()


def tally(items: list[Item], defaults: Defaults = NONE, strict: bool = False) -> Tally:
    return Tally(defaults, strict).add_all(items)


def test_rows_are_added_up_per_kind_with_their_prices_and_reasons() -> None:
    t = tally([
        row(1, model="Wan", task_type="wan26-txt2video", prompt="a", duration=10),
        row(2, model="Wan", task_type="wan26-txt2video", prompt="b", resolution="1080P"),
        row(3, model="Wan", task_type="wan26-txt2video", prompt="c", duration=7),
        row(4, image=IMG, id="x"),
        row(5, image=IMG, id="x"),
        BadRow(6, 6, "malformed JSON: Expecting value at column 1"),
        row(7, model="Qubico/diffrhythm", task_type="txt2audio-base", lyrics="la"),
    ], Defaults(*JOY))
    kinds = {(k.model, k.task_type): k for k in t.sorted_kinds()}
    wan, joy = kinds[WAN], kinds[JOY]
    assert (wan.rows, wan.invalid, wan.usd) == (2, 1, pytest.approx(0.80 + 0.60))
    assert list(wan.reasons) == ["field 'duration' must be one of 5, 10, 15, got 7"]
    # Work in default rows (learned durations are per unit): a 10 s clip and a 1080P one.
    assert (wan.units, joy.units) == (pytest.approx(2.0 + 1.5), 1.0)
    assert wan.mean_task_s(100.0) == pytest.approx(175.0)
    assert (joy.rows, joy.invalid, joy.usd) == (1, 1, pytest.approx(0.01))
    assert joy.reasons[DUPLICATE].lines == [5]
    assert kinds[("", "")].reasons["malformed JSON: Expecting value at column 1"].lines == [6]
    unknown = kinds[("Qubico/diffrhythm", "txt2audio-base")]
    assert (unknown.rows, unknown.unchecked, unknown.price) == (1, 1, Basis.UNKNOWN)
    assert unknown.usd == UNKNOWN_PRICE_USD
    strict = tally([row(1, model="Qubico/diffrhythm", task_type="txt2audio-base", lyrics="l")],
                   strict=True)
    assert [(k.rows, k.invalid) for k in strict.sorted_kinds()] == [(0, 1)]


def test_reasons_are_bounded_with_their_first_lines() -> None:
    items: list[Item] = [BadRow(i, i, f"reason {i % (MAX_REASONS + 3)}") for i in range(1, 101)]
    (kind,) = tally(items).sorted_kinds()
    assert kind.invalid == 100 and len(kind.reasons) == MAX_REASONS + 1
    assert sum(r.rows for r in kind.reasons.values()) == 100
    assert kind.reasons[OTHER_REASONS].rows == 27  # reasons 9, 10 and 0: 9 rows each
    assert all(len(r.lines) <= FIRST_LINES for r in kind.reasons.values())
    assert kind.reasons["reason 1"].lines == [1, 12, 23, 34, 45]


_ROW = st.one_of(
    st.builds(lambda key: {"image": IMG, "id": key}, st.sampled_from(["a", "b", "c", "4"])),
    st.just({"image": IMG}),
    st.just({"image": "./local.jpg"}),
    st.just({"prompt": "no image"}),
    st.just({"model": "Wan", "task_type": "wan26-txt2video", "prompt": "p", "duration": 10}),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_ROW, st.none()), max_size=30))
def test_the_tally_counts_every_row_once_as_ingest_would(rows: list[dict[str, Any] | None],
                                                         ) -> None:
    items: list[Item] = [BadRow(i, i, "bad") if r is None else row(i, **r)
                         for i, r in enumerate(rows, 1)]
    t = tally(items, Defaults(*JOY))
    kinds = t.sorted_kinds()
    assert sum(k.rows + k.invalid for k in kinds) == len(items)
    seen: set[str] = set()
    valid = {JOY: 0, WAN: 0}
    for i, r in enumerate(rows, 1):  # the reference: ingest's rules written out
        key = str(i) if r is None or "id" not in r else r["id"]
        ok = r is not None and key not in seen and (r.get("image") == IMG or "model" in r)
        seen.add(key)
        if ok and r is not None:
            valid[WAN if "model" in r else JOY] += 1
    got = {(k.model, k.task_type): k for k in kinds}
    for kind, n in valid.items():
        assert (got[kind].rows if kind in got else 0) == n
    assert sum(k.usd for k in kinds) == pytest.approx(0.01 * valid[JOY] + 0.80 * valid[WAN])


def test_the_tally_agrees_with_ingest(engine: Engine, tmp_path: Path) -> None:
    lines = [{"id": "a", "image": IMG}, {"id": "a", "image": IMG}, {"image": "nope"},
             {"model": "Wan", "task_type": "wan26-txt2video", "prompt": "p", "duration": 3},
             {"model": "Wan", "task_type": "wan26-txt2video", "prompt": "p"}, {"image": IMG}]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{oops\n")
    t = tally(list(read_manifest(path)), Defaults(*JOY))
    result = ingest(engine, path, default_model=JOY[0], default_task_type=JOY[1])
    assert sum(k.rows for k in t.kinds.values()) == result.total - result.invalid == 3
    assert sum(k.invalid for k in t.kinds.values()) == result.invalid == 4


@pytest.mark.parametrize(("work", "concurrency", "wall"), [
    ([], 10, 0.0),
    ([(200, 30.0, 1)], 10, 600.0),
    ([(5, 180.0, 1)], 10, 180.0),  # fewer rows than slots: the longest task
    ([(200, 30.0, 1), (5, 180.0, 1), (2, 120.0, 1)], 10, (6000 + 900 + 240) / 10),
    ([(3, 30.0, 1), (1, 500.0, 1)], 10, 500.0),
    ([(0, 999.0, 9), (10, 10.0, 1)], 1, 100.0),
    # Units of work: the longest task is its row's units times the seconds per unit.
    ([(3, 180.0, 3)], 10, 540.0),  # one 15 s Wan clip: 3 units of 180 s, in one task
    ([(8, 180.0, 3)], 10, 540.0),  # five 5 s clips and a 15 s one
    ([(8, 180.0, 3)], 2, 720.0),  # ... with 2 slots the total wins again
    ([(300, 30.0, 1), (3, 180.0, 3)], 10, (9000 + 540) / 10),
    ([(300, 30.0, 1), (3, 180.0, 3)], 100, 540.0),  # the longest of any kind
    ([(1.5, 180.0, 1.5), (1, 500.0, 1)], 10, 500.0),
    ([(0.5, 180.0, 0.5)], 10, 90.0),  # a row cheaper than the default: shorter too
])
def test_the_wall_time_model(work: list[Work], concurrency: int, wall: float) -> None:
    assert wall_time_s(work, concurrency) == pytest.approx(wall)


def wan_rows(durations: list[int], start: int = 1) -> list[Item]:
    return [row(i, model="Wan", task_type="wan26-txt2video", prompt="p", duration=d)
            for i, d in enumerate(durations, start)]


PRIORS = {WAN: Duration(180.0), JOY: Duration(30.0)}


def estimate_of(items: list[Item], concurrency: int = 10) -> Estimate:
    """What `command.estimate` makes of these rows, without the account or a database."""
    kinds = tally(items, Defaults(*JOY)).sorted_kinds()
    sent = [k for k in kinds if k.rows]
    found: dict[Kind, Duration] = {(k.model, k.task_type): PRIORS[(k.model, k.task_type)]
                                   for k in sent}
    total = wall_time_s([k.work(found[(k.model, k.task_type)].seconds) for k in sent],
                        concurrency)
    return Estimate("m.csv", kinds, found, kind_wall_times(sent, found, concurrency), total,
                    Account(concurrency, "--concurrency", None))


@pytest.mark.parametrize(
    ("clips", "concurrency", "units", "longest_units", "mean_s", "longest_s", "wall"), [
        ([15], 10, 3, 3, 540, 540, 540),  # one row of 3 units: never less than that row
        ([5], 10, 1, 1, 180, 180, 180),
        ([5, 5, 5, 5, 5, 15], 10, 8, 3, 240, 540, 540),
        ([5, 5, 5, 5, 15, 15], 10, 10, 3, 300, 540, 540),
        ([5, 10, 15], 10, 6, 3, 360, 540, 540),
        ([5, 10, 15], 1, 6, 3, 360, 540, 1080),  # one slot: the total
        ([10] * 30, 10, 60, 2, 360, 360, 1080),
    ])
def test_a_kinds_wall_time_is_never_below_its_longest_row(
        clips: list[int], concurrency: int, units: float, longest_units: float, mean_s: float,
        longest_s: float, wall: float) -> None:
    est = estimate_of(wan_rows(clips), concurrency)
    (wan,) = est.kinds
    assert wan.rows == len(clips)
    assert [wan.units, wan.longest_units] == pytest.approx([units, longest_units])
    per_unit = est.durations[WAN].seconds
    assert wan.mean_task_s(per_unit) == pytest.approx(mean_s)
    assert wan.longest_task_s(per_unit) == pytest.approx(longest_s)
    assert est.wall_s[WAN] == pytest.approx(wall) and est.total_wall_s == pytest.approx(wall)
    assert est.wall_s[WAN] >= wan.longest_task_s(per_unit) - 1e-9


@pytest.mark.parametrize(("images", "clips", "concurrency", "wall_joy", "wall_wan", "total"), [
    (300, [15], 10, 900, 540, (9000 + 540) / 10),
    (300, [15], 100, 90, 540, 540),  # the one long clip sets the whole run's wall time
    (10, [5, 15, 10], 10, 30, 540, 540),
    (0, [5, 5], 10, None, 180, 180),
])
def test_the_total_wall_time_is_never_below_the_longest_row_of_any_kind(
        images: int, clips: list[int], concurrency: int, wall_joy: float | None,
        wall_wan: float, total: float) -> None:
    items: list[Item] = [row(i, image=IMG) for i in range(1, images + 1)]
    est = estimate_of(items + wan_rows(clips, images + 1), concurrency)
    assert est.wall_s.get(JOY) == (None if wall_joy is None else pytest.approx(wall_joy))
    assert est.wall_s[WAN] == pytest.approx(wall_wan)
    assert est.total_wall_s == pytest.approx(total)


def test_one_long_row_shows_its_task_and_wall_time_alike() -> None:
    one = to_json(estimate_of(wan_rows([15])))
    (kind,) = one["kinds"]
    assert one["wall_s"] == pytest.approx(540) and kind["wall_s"] == pytest.approx(540)
    assert kind["duration_s"] == pytest.approx(540)  # a row's mean task, as before
    assert kind["longest_task_s"] == pytest.approx(540)
    assert (kind["duration_per_unit_s"], kind["units"]) == (180.0, pytest.approx(3))
    mixed = estimate_of(wan_rows([5, 5, 5, 5, 5, 15]))
    (kind,) = to_json(mixed)["kinds"]
    assert (kind["duration_s"], kind["longest_task_s"], kind["wall_s"]) == (
        pytest.approx(240), pytest.approx(540), pytest.approx(540))
    console = Console(width=120, record=True)
    console.print(table(mixed))
    (line,) = [x for x in console.export_text().splitlines() if "wan26-txt2video" in x]
    assert "4m00s prior, longest 9m00s" in line and line.rstrip(" │").endswith("9m00s")
    console = Console(width=120, record=True)
    console.print(table(estimate_of(wan_rows([5, 5]))))
    (line,) = [x for x in console.export_text().splitlines() if "wan26-txt2video" in x]
    assert "3m00s prior" in line and "longest" not in line  # all alike: the mean alone


def test_durations_without_a_database_are_priors_and_nothing_is_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    found, note = learned_durations(url, [JOY, ("x", "y")])
    assert found == {JOY: Duration(30.0), ("x", "y"): Duration(60.0)}
    assert note and "no database" in note and not (tmp_path / "none.db").exists()


def test_learned_durations_are_the_median(engine: Engine) -> None:
    from workers.db import session
    from workers.durations import add_samples

    with session(engine) as s:
        add_samples(s, [(*JOY, float(v)) for v in range(1, 26)], 0.0)
        add_samples(s, [(*WAN, 100.0)] * 3, 0.0)  # too few to trust: the prior
    found, note = learned_durations(engine.url.render_as_string(hide_password=False),
                                    [JOY, WAN])
    assert note is None
    assert found[JOY] == Duration(13.0, 25) and found[JOY].learned
    assert found[WAN] == Duration(180.0) and not found[WAN].learned


def _estimate(balance: float | None, note: str | None = None) -> Estimate:
    t = tally([row(i, image=IMG) for i in range(1, 301)]
              + [row(301, image="./x.jpg")], Defaults(*JOY))
    durations = {JOY: Duration(30.0, 40)}
    return Estimate("m.jsonl", t.sorted_kinds(), durations, {JOY: 900.0}, 900.0,
                    Account(10, "the account's limit", balance, note))


def test_the_report_and_the_balance_warning() -> None:
    low, rich = _estimate(1.0), _estimate(100.0)
    assert warning(low) == ("warning: the balance $1.00 is below the estimate $3.00 ($2.00 "
                            "short): the run would stop when it runs out")
    assert warning(rich) is None and warning(_estimate(None)) is None
    console = Console(width=120, record=True)
    show(low, console)
    text = console.export_text()
    assert "Qubico/joycaption" in text and "$3.00" in text and "15m00s" in text
    assert "30s learned" in text and "balance: $1.00" in text
    assert "invalid 1: Qubico/joycaption joycaption-beta-one: field 'image': local files" in text
    assert "(line 301)" in text and "nothing was created" in text
    data = json.loads(json.dumps(to_json(low)))
    assert (data["rows"], data["invalid"], data["usd"]) == (300, 1, 3.0)
    assert data["balance_below_estimate"] is True and data["created"] is False
    assert data["kinds"][0]["duration"] == "learned" and data["kinds"][0]["samples"] == 40


def test_balance_not_reported_or_unknown() -> None:
    console = Console(width=120, record=True)
    show(_estimate(None), console)
    assert "balance: not reported" in console.export_text()
    console = Console(width=120, record=True)
    show(_estimate(None, "not read (no PIAPI_API_KEY)"), console)
    text = console.export_text()
    assert "account: not read (no PIAPI_API_KEY)" in text and "balance: unknown" in text



def test_a_folder_estimate_says_what_it_skipped(tmp_path: Path) -> None:
    """As `run` does: the folder's files that are not images (and hidden ones) are one line,
    in the table's report and in the JSON."""
    from scheduler.estimate.command import EstimateOptions, estimate
    from tests.helpers import png_bytes
    from workers.settings import Settings

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.png").write_bytes(png_bytes())
    (photos / "notes.txt").write_text("not an image")
    settings = Settings(api_key=None, database_url=f"sqlite:///{tmp_path / 'none.db'}")
    found = estimate(settings, EstimateOptions(photos, *JOY))
    assert found.rows == 1
    expected = f"{photos}: 1 images, 1 file skipped (hidden, or not an image)"
    assert found.source_note == expected and to_json(found)["source_note"] == expected
    console = Console(width=200, record=True)
    show(found, console)
    assert expected in console.export_text()
    (photos / "notes.txt").unlink()
    assert estimate(settings, EstimateOptions(photos, *JOY)).source_note is None
