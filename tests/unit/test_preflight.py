"""Preflight: manifest-wide mistakes are one usage error; per-row problems stay per-row."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.manifest import RawRow
from scheduler.preflight import (
    KNOWN_NAMES,
    Sample,
    close_name,
    edit_distance,
    model_problem,
    preflight,
    problem,
    read_sample,
    require_manifest,
)
from workers.catalog import MODELS
from workers.settings import ConfigError

JOY, JOY_T = "Qubico/joycaption", "joycaption-beta-one"
IMG = "https://example.com/a.jpg"


def csv_sample(columns: tuple[str, ...], *rows: tuple[str, ...]) -> Sample:
    """A CSV's sample: empty cells left out of the fields, as the reader does."""
    raw = tuple(RawRow(i, i + 1, {c: v for c, v in zip(columns, row, strict=True) if v}, True)
                for i, row in enumerate(rows, 1))
    return Sample(columns, raw)


def jsonl_sample(*rows: dict[str, Any]) -> Sample:
    raw = tuple(RawRow(i, i, dict(r)) for i, r in enumerate(rows, 1))
    return Sample(tuple(dict.fromkeys(k for r in rows for k in r)), raw)


CAPTIONS = csv_sample(("image", "prompt_style"), (IMG, "Descriptive"), (IMG, ""))


@pytest.mark.parametrize(("model", "expected"), [
    ("Qubico/joycaptoin", "unknown model Qubico/joycaptoin (did you mean Qubico/joycaption?)"),
    ("qubico/joycaption", "unknown model qubico/joycaption (did you mean Qubico/joycaption?)"),
    ("joycaption", "unknown model joycaption (did you mean Qubico/joycaption?)"),
    ("wan", "unknown model wan (did you mean Wan?)"),
    ("hailou", "unknown model hailou (did you mean hailuo?)"),
    ("midjourny", "unknown model midjourny (did you mean midjourney?)"),
    ("Qubico/flux-schnell", "unknown model Qubico/flux-schnell (did you mean "
     "Qubico/flux1-schnell?)"),
    ("Qubico/diffrhythm", None),      # PiAPI has it; piapi-bulk does not check it
    ("music-s", None),
    ("Qubico/not-a-model", None),     # close to nothing: passed through unchecked
    ("Qubico/flux1-pro", None),       # a sibling, not a slip of the keys
    ("Qubico/hunyuan-video", None),
    ("veo3", None),
    (JOY, None),
])
def test_model_typos_are_usage_errors_other_unknown_models_pass(model: str,
                                                                 expected: str | None) -> None:
    assert model_problem(model) == expected
    assert problem(CAPTIONS, model, JOY_T) == expected


@pytest.mark.parametrize("model", ["Qubico/diffrhythm", "Qubico/not-a-model", "music-s"])
def test_strict_refuses_any_model_outside_the_catalogue(model: str) -> None:
    found = model_problem(model, strict=True)
    assert found is not None and found.startswith(f"unknown model {model}: --strict takes only")
    assert JOY in found and "\n" not in found
    assert model_problem(JOY, strict=True) is None


def test_a_typo_says_did_you_mean_with_strict_too() -> None:
    assert model_problem("Qubico/joycaptoin", strict=True) == (
        "unknown model Qubico/joycaptoin (did you mean Qubico/joycaption?)")


def test_per_row_models_are_not_usage_errors() -> None:
    sample = jsonl_sample({"model": "Qubico/joycaptoin", "task_type": JOY_T, "image": IMG})
    assert problem(sample, None, None) is None


@pytest.mark.parametrize(("model", "task_type", "expected"), [
    (JOY, "joycaption-beta", "unknown task type joycaption-beta for model Qubico/joycaption "
     "(did you mean joycaption-beta-one?)"),
    ("Wan", "t2v", "unknown task type t2v for model Wan (known: wan26-img2video, "
     "wan26-txt2video)"),
    ("Wan", "wan26-txt2vid", "unknown task type wan26-txt2vid for model Wan (did you mean "
     "wan26-txt2video?)"),
    ("Qubico/diffrhythm", "anything", None),  # unchecked models: any task type
])
def test_task_type_unknown_to_a_known_model(model: str, task_type: str,
                                            expected: str | None) -> None:
    sample = jsonl_sample({"prompt": "p", "image": IMG})
    assert problem(sample, model, task_type) == expected


def test_task_type_is_judged_against_the_models_of_the_rows_it_applies_to() -> None:
    rows = jsonl_sample({"model": "Wan", "prompt": "p"}, {"model": JOY, "image": IMG})
    assert problem(rows, None, JOY_T) is None  # right for some rows: the others are per-row
    wan_only = jsonl_sample({"model": "Wan", "prompt": "p"})
    assert problem(wan_only, None, JOY_T) == (
        "unknown task type joycaption-beta-one for model Wan (known: wan26-img2video, "
        "wan26-txt2video)")


@pytest.mark.parametrize("sample", [
    csv_sample(("image", "prompt_style"), (IMG, "x")),
    csv_sample(("model", "image"), ("", IMG), ("", IMG)),
    jsonl_sample({"input": {"image": IMG}}),
])
def test_no_model_at_all(sample: Sample) -> None:
    assert problem(sample, None, JOY_T) == "no model: give --model or a model column"


def test_a_model_column_or_option_is_enough() -> None:
    assert problem(csv_sample(("model", "image"), (JOY, IMG)), None, JOY_T) is None
    assert problem(csv_sample(("model", "image"), ("", IMG), (JOY, IMG)), None, JOY_T) is None
    assert problem(csv_sample(("image",), (IMG,)), JOY, JOY_T) is None


def test_no_task_type_at_all() -> None:
    assert problem(csv_sample(("image",), (IMG,)), JOY, None) == (
        "no task type: give --task-type or a task_type column (known for these rows: "
        "joycaption-beta-one)")
    assert problem(jsonl_sample({"task_type": JOY_T, "image": IMG}), JOY, None) is None


def test_no_column_is_a_field_of_the_model() -> None:
    sample = csv_sample(("url", "caption style"), (IMG, "x"))
    assert problem(sample, JOY, JOY_T) == (
        "no column is an input field of Qubico/joycaption joycaption-beta-one: found url, "
        "caption style; expected image, prompt_style, caption_length, workflow_type (or id, "
        "input, metadata, model, service_mode, task_type)")
    jsonl = jsonl_sample({"url": IMG}, {"url": IMG, "style": "x"})
    found = problem(jsonl, JOY, JOY_T)
    assert found is not None and "found url, style;" in found


def test_rows_naming_their_own_task_type_are_judged_per_row() -> None:
    assert problem(jsonl_sample({"task_type": "nope", "text": "x"}), "Wan", None) is None
    # ...but a --task-type the --model does not have is a mistake, whatever the rows say
    found = problem(jsonl_sample({"task_type": "nope", "text": "x"}), "Wan", "t2v")
    assert found is not None and found.startswith("unknown task type t2v for model Wan")


def test_a_required_field_no_column_gives() -> None:
    sample = csv_sample(("url", "prompt_style"), (IMG, "x"))
    assert problem(sample, JOY, JOY_T) == (
        "no column gives image, which Qubico/joycaption joycaption-beta-one needs: found url, "
        "prompt_style; expected image, prompt_style, caption_length, workflow_type")
    hailuo = jsonl_sample({"expand_prompt": True})
    assert problem(hailuo, "hailuo", "video_generation") == (
        "no column gives prompt or image_url, which hailuo video_generation needs: found "
        "expand_prompt; expected prompt, model, image_url, expand_prompt")


@pytest.mark.parametrize("sample", [
    csv_sample(("input", "prompt_style"), ('{"image": "' + IMG + '"}', "x")),  # input gives it
    csv_sample(("image", "url"), (IMG, "x")),  # a stray column: per-row
    csv_sample(("image",), ("",), (IMG,)),  # empty cells: per-row
    jsonl_sample({"image": IMG}, {"prompt_style": "x"}),  # one row lacks it: per-row
    jsonl_sample({"model": "Wan", "task_type": "wan26-txt2video", "prompt": "p"},
                 {"model": JOY, "task_type": JOY_T, "url": IMG}),  # mixed models: per-row
    Sample(("image",), ()),  # no readable row
    Sample((), ()),
])
def test_per_row_problems_are_left_to_the_rows(sample: Sample) -> None:
    assert problem(sample, JOY, JOY_T) is None


def test_open_field_models_take_any_column_but_still_need_theirs() -> None:
    assert problem(jsonl_sample({"prompt": "p", "camera": 1}), "kling", "video_generation") is None
    found = problem(jsonl_sample({"camera": 1}), "kling", "video_generation")
    assert found is not None and found.startswith("no column gives prompt, which kling")


@pytest.mark.parametrize(("a", "b", "n"), [
    ("", "", 0), ("a", "", 1), ("abc", "abc", 0), ("abc", "acb", 1), ("hailou", "hailuo", 1),
    ("kitten", "sitting", 3), ("joycaptoin", "joycaption", 1), ("flux1-pro", "flux1-dev", 3),
])
def test_edit_distance(a: str, b: str, n: int) -> None:
    assert edit_distance(a, b) == n == edit_distance(b, a)


@given(st.text(max_size=70))
def test_close_name_never_raises_and_names_a_known_model(name: str) -> None:
    near = close_name(name, KNOWN_NAMES)
    assert near is None or (near in KNOWN_NAMES and near != name)


@given(st.sampled_from(sorted(MODELS)), st.data())
def test_one_slip_in_a_long_known_name_is_a_typo(model: str, data: st.DataObject) -> None:
    if len(model) < 8:
        return
    i = data.draw(st.integers(0, len(model) - 2))
    swapped = model[:i] + model[i + 1] + model[i] + model[i + 2:]
    if swapped != model and swapped not in KNOWN_NAMES:
        assert close_name(swapped, KNOWN_NAMES) == model


def test_read_sample_and_preflight_on_files(tmp_path: Path) -> None:
    csv = tmp_path / "c.csv"
    csv.write_text("url,style\n" + "".join(f"{IMG},x\n" for _ in range(50)))
    sample = read_sample(csv)
    assert sample.columns == ("url", "style") and len(sample.rows) == 20
    with pytest.raises(ConfigError, match=r"^no column is an input field"):
        preflight(csv, JOY, JOY_T)
    jsonl = tmp_path / "j.jsonl"
    jsonl.write_text("{broken\n" + json.dumps({"image": IMG, "id": "a"}) + "\n")
    sample = read_sample(jsonl)
    assert sample.columns == ("image", "id") and len(sample.rows) == 1
    preflight(jsonl, JOY, JOY_T)
    with pytest.raises(ConfigError, match=r"did you mean Qubico/joycaption\?"):
        preflight(jsonl, "Qubico/joycaptoin", JOY_T)


def test_a_folder_takes_its_image_field_from_its_files(tmp_path: Path) -> None:
    # Found by an exploratory run: `--set image=URL` on a folder was silently ignored.
    preflight(tmp_path, JOY, JOY_T, fields=("prompt_style",))
    with pytest.raises(ConfigError, match=r"^--set image: a folder's rows take their image "):
        preflight(tmp_path, JOY, JOY_T, fields=("image",))


def test_a_manifest_must_be_a_file_or_a_folder(tmp_path: Path) -> None:
    # Found by an exploratory run: `run <(zcat m.csv.gz)` said "no such file".
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"pipe: not a regular file \(a pipe or a device"):
        require_manifest(fifo)
    with pytest.raises(ConfigError, match=r"missing.csv: no such file$"):
        require_manifest(tmp_path / "missing.csv")
    require_manifest(tmp_path)
    with pytest.raises(ConfigError, match="a folder, where a file is needed"):
        require_manifest(tmp_path, folder=False)
