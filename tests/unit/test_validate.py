"""Row validation: table-driven cases and properties (never raises, typed output, idempotent)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.manifest import RawRow
from scheduler.validate import Defaults, Invalid, JobSpec, validate_row
from workers.catalog import MODELS, SPECS, Kind, TaskSpec, lookup

JOY = Defaults("Qubico/joycaption", "joycaption-beta-one")
NONE = Defaults()
WAN = {"model": "Wan", "task_type": "wan26-txt2video", "prompt": "a cat"}
FLUX = {"model": "Qubico/flux1-dev", "task_type": "txt2img", "prompt": "a cat"}
IMG = "https://example.com/a.jpg"


def check(fields: dict[str, Any], defaults: Defaults = JOY, *,
          csv: bool = True) -> JobSpec | Invalid:
    return validate_row(RawRow(4, 7, fields, csv), defaults)


# (name, fields, from_csv, defaults, expected input)
VALID: list[tuple[str, dict[str, Any], bool, Defaults, dict[str, Any]]] = [
    ("csv columns with defaults", {"image": IMG, "prompt_style": "descriptive",
                                   "caption_length": "long"}, True, JOY,
     {"image": IMG, "prompt_style": "descriptive", "caption_length": "long"}),
    ("row model beats default", {**WAN}, True, JOY, {"prompt": "a cat"}),
    ("int from string", {**WAN, "duration": "10", "seed": "+5"}, True, NONE,
     {"prompt": "a cat", "duration": 10, "seed": 5}),
    ("int from integral float string", {**WAN, "duration": " 15.0 "}, True, NONE,
     {"prompt": "a cat", "duration": 15}),
    ("int from JSON", {**WAN, "duration": 5, "seed": -3}, False, NONE,
     {"prompt": "a cat", "duration": 5, "seed": -3}),
    ("bool words", {**WAN, "audio": "Yes", "watermark": "FALSE", "prompt_extend": "1"}, True,
     NONE, {"prompt": "a cat", "audio": True, "watermark": False, "prompt_extend": True}),
    ("bool JSON 0/1", {**WAN, "audio": 0}, False, NONE, {"prompt": "a cat", "audio": False}),
    ("number", {**FLUX, "guidance_scale": "7.5", "steps": "20"}, True, NONE,
     {"prompt": "a cat", "guidance_scale": 7.5, "steps": 20}),
    ("number exponent", {**FLUX, "guidance_scale": "1e1"}, True, NONE,
     {"prompt": "a cat", "guidance_scale": 10.0}),
    ("string from number", {"image": 12, "caption_length": 1.5}, False, JOY,
     {"image": "12", "caption_length": "1.5"}),
    ("explicit input merged with columns",
     {"input": '{"image": "' + IMG + '"}', "prompt_style": "x"}, True, JOY,
     {"image": IMG, "prompt_style": "x"}),
    ("same value both ways is fine", {"input": '{"duration": 10}', "duration": "10", **WAN},
     True, NONE, {"prompt": "a cat", "duration": 10}),
    ("empty one side: the other is used", {"input": {"image": ""}, "image": IMG}, False, JOY,
     {"image": IMG}),
    ("null input fields dropped", {"input": {"image": IMG, "workflow_type": None}}, False, JOY,
     {"image": IMG}),
    ("open fields pass through", {"model": "kling", "task_type": "video_generation",
                                  "prompt": "p", "camera": {"x": 1}}, False, NONE,
     {"prompt": "p", "camera": {"x": 1}}),
    ("hailuo's own 'model' input goes in input",
     {"model": "hailuo", "task_type": "video_generation", "input": {"prompt": "p",
                                                                     "model": "t2v-01"}},
     False, NONE, {"prompt": "p", "model": "t2v-01"}),
    ("flux area at the limit", {**FLUX, "width": "1024", "height": "1024"}, True, NONE,
     {"prompt": "a cat", "width": 1024, "height": 1024}),
    ("music with no required field", {"model": "music-u", "task_type": "generate_music"},
     False, NONE, {}),
]


@pytest.mark.parametrize(("fields", "from_csv", "defaults", "expected"),
                         [c[1:] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_rows(fields: dict[str, Any], from_csv: bool, defaults: Defaults,
                    expected: dict[str, Any]) -> None:
    spec = check(fields, defaults, csv=from_csv)
    assert isinstance(spec, JobSpec), spec
    assert spec.input == expected
    assert (spec.seq, spec.line) == (4, 7)


# (name, fields, from_csv, defaults, reason)
INVALID: list[tuple[str, dict[str, Any], bool, Defaults, str]] = [
    ("missing model", {"image": IMG}, True, NONE,
     "missing model (no 'model' field and no default model)"),
    ("unknown model", {"model": "Nope/x", "image": IMG}, True, JOY,
     "unknown model 'Nope/x' (known: " + ", ".join(sorted(MODELS)) + ")"),
    ("missing task_type", {"model": "Wan", "prompt": "p"}, True, NONE,
     "missing task_type for model 'Wan' (known: wan26-img2video, wan26-txt2video)"),
    ("unknown task_type", {"model": "Wan", "task_type": "t2v", "prompt": "p"}, True, NONE,
     "unknown task_type 't2v' for model 'Wan' (known: wan26-img2video, wan26-txt2video)"),
    ("model not a string", {"model": 5}, False, JOY, "field 'model' must be a string, got 5"),
    ("missing required", {"prompt_style": "x"}, True, JOY,
     "missing required input field 'image'"),
    ("blank required", {"input": {"image": "  "}}, False, JOY,
     "missing required input field 'image'"),
    ("unknown field", {"image": IMG, "foo": "1"}, True, JOY,
     "unknown input field 'foo' for Qubico/joycaption joycaption-beta-one "
     "(known: caption_length, image, prompt_style, workflow_type)"),
    ("unknown fields", {"image": IMG, "foo": "1", "bar": "2"}, True, JOY,
     "unknown input fields 'foo', 'bar' for Qubico/joycaption joycaption-beta-one "
     "(known: caption_length, image, prompt_style, workflow_type)"),
    ("bad int", {**WAN, "duration": "abc"}, True, NONE,
     "field 'duration' must be an integer, got 'abc'"),
    ("fractional int", {**WAN, "seed": "5.5"}, True, NONE,
     "field 'seed' must be an integer, got '5.5'"),
    ("bool is not an int", {**WAN, "seed": True}, False, NONE,
     "field 'seed' must be an integer, got true"),
    ("empty int", {**WAN, "seed": ""}, False, NONE, "field 'seed' must be an integer, got ''"),
    ("choice", {**WAN, "duration": "7"}, True, NONE,
     "field 'duration' must be one of 5, 10, 15, got 7"),
    ("string choice", {**WAN, "resolution": "720p"}, True, NONE,
     "field 'resolution' must be one of '720P', '1080P', got '720p'"),
    ("below min", {**FLUX, "steps": "0"}, True, NONE, "field 'steps' must be at least 1, got 0"),
    ("above max", {**FLUX, "width": "4096"}, True, NONE,
     "field 'width' must be at most 2048, got 4096"),
    ("number range", {"model": "kling", "task_type": "video_generation", "prompt": "p",
                      "cfg_scale": "1.5"}, True, NONE,
     "field 'cfg_scale' must be at most 1, got 1.5"),
    ("not a number", {**FLUX, "guidance_scale": "nan"}, True, NONE,
     "field 'guidance_scale' must be a number, got 'nan'"),
    ("bad bool", {**WAN, "audio": "maybe"}, True, NONE,
     "field 'audio' must be a boolean (true/false/1/0/yes/no), got 'maybe'"),
    ("object for a string", {"image": {"url": IMG}}, False, JOY,
     "field 'image' must be a string, got an object"),
    ("flux area", {**FLUX, "width": "2048", "height": "1024"}, True, NONE,
     "width*height must be at most 1048576 for Qubico/flux1-dev, got 2048x1024 = 2097152"),
    ("input not JSON", {"input": "{nope", "image": IMG}, True, JOY,
     "field 'input' is not valid JSON: Expecting property name enclosed in double quotes "
     "at column 2"),
    ("input not an object", {"input": "[1]", "image": IMG}, True, JOY,
     "field 'input' must be a JSON object, got an array"),
    ("JSONL input must be an object", {"input": '{"image": "x"}'}, False, JOY,
     "field 'input' must be a JSON object, got '{\"image\": \"x\"}'"),
    ("conflict", {"input": {"image": "a.jpg"}, "image": "b.jpg"}, False, JOY,
     "field 'image' differs between 'input' ('a.jpg') and its own column ('b.jpg')"),
    ("bad id", {"id": [1], "image": IMG}, False, JOY,
     "field 'id' must be a string or an integer, got an array"),
    ("long value shortened", {**WAN, "duration": "x" * 100}, True, NONE,
     "field 'duration' must be an integer, got '" + "x" * 37 + "...'"),
]


@pytest.mark.parametrize(("fields", "from_csv", "defaults", "reason"),
                         [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_rows(fields: dict[str, Any], from_csv: bool, defaults: Defaults,
                      reason: str) -> None:
    result = check(fields, defaults, csv=from_csv)
    assert isinstance(result, Invalid), result
    assert result.reason == reason
    assert "\n" not in result.reason


def test_invalid_keeps_what_could_be_read() -> None:
    result = check({"id": "r1", "model": "Wan", "task_type": "wan26-txt2video",
                    "metadata": '{"k": [1, 2]}'})
    assert isinstance(result, Invalid)
    assert (result.row_key, result.model, result.task_type) == ("r1", "Wan", "wan26-txt2video")
    assert result.metadata == {"k": [1, 2]}


@pytest.mark.parametrize(("fields", "from_csv", "key"), [
    ({}, True, "4"),
    ({"id": "abc"}, True, "abc"),
    ({"id": 17}, False, "17"),
    ({"id": ""}, False, "4"),
    ({"id": None}, False, "4"),
])
def test_row_key(fields: dict[str, Any], from_csv: bool, key: str) -> None:
    result = check({**fields, "image": IMG}, csv=from_csv)
    assert result.row_key == key


@pytest.mark.parametrize(("metadata", "from_csv", "expected"), [
    ('{"a": 1}', True, {"a": 1}),
    ("123", True, 123),
    ("plain words", True, "plain words"),
    ("NaN", True, "NaN"),
    ("123", False, "123"),  # JSONL: a string stays a string
    ({"a": [1, None]}, False, {"a": [1, None]}),
])
def test_metadata_passes_through(metadata: Any, from_csv: bool, expected: Any) -> None:
    result = check({"image": IMG, "metadata": metadata}, csv=from_csv)
    assert isinstance(result, JobSpec)
    assert result.metadata == expected


# --- Properties --------------------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
            | st.sampled_from(["5", "10", "+5", "5.0", "1e3", "yes", "0", "720P", "", " "]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
_field_names = [*sorted({name for spec in SPECS for name in spec.fields}), "foo", "id"]


@st.composite
def rows(draw: st.DrawFn) -> tuple[RawRow, Defaults]:
    """Rows aimed at one catalog spec, so that many (not all) come out valid."""
    from_csv = draw(st.booleans())
    spec = draw(st.sampled_from(SPECS))
    cell = st.text(max_size=8) | st.sampled_from(["5", "10", "true", "720P", "1024", "0.5"])
    value = cell if from_csv else _values | cell
    names = st.sampled_from(sorted(spec.fields) or ["prompt"]) | st.sampled_from(_field_names)
    fields: dict[str, Any] = draw(st.dictionaries(names, value, max_size=5))
    for name in spec.required:
        if draw(st.integers(0, 9)):
            fields[name] = draw(st.text(min_size=1, max_size=8))
    model, task_type = draw(st.sampled_from([(spec.model, spec.task_type)] * 4 + [("Nope", "x")]))
    defaults = Defaults()
    if draw(st.booleans()):
        fields["model"], fields["task_type"] = model, task_type
    elif draw(st.integers(0, 9)):
        defaults = Defaults(model, task_type)
    if draw(st.integers(0, 3)) == 0:
        fields["input"] = draw(st.dictionaries(names, _values, max_size=3) | _values)
    if draw(st.booleans()):
        fields["metadata"] = draw(_values)
    return RawRow(draw(st.integers(1, 10**6)), draw(st.integers(1, 10**7)), fields,
                  from_csv), defaults


def conforms(value: Any, kind: Kind) -> bool:
    if kind is Kind.INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is Kind.NUM:
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind is Kind.BOOL:
        return isinstance(value, bool)
    return isinstance(value, str)


def assert_conforms(job: JobSpec) -> None:
    spec = lookup(job.model, job.task_type)
    assert isinstance(spec, TaskSpec)
    for name in spec.required:
        assert isinstance(job.input.get(name), str | int | float) and str(job.input[name]).strip()
    for name, value in job.input.items():
        field = spec.fields.get(name)
        if field is None:
            assert spec.open_fields, name
            continue
        assert conforms(value, field.kind), (name, value)
        assert not field.choices or value in field.choices
        assert field.min is None or value >= field.min
        assert field.max is None or value <= field.max


@settings(max_examples=500, deadline=None)
@given(rows())
def test_never_raises_and_valid_rows_conform(case: tuple[RawRow, Defaults]) -> None:
    raw, defaults = case
    result = validate_row(raw, defaults)
    assert (result.seq, result.line) == (raw.seq, raw.line)
    if isinstance(result, Invalid):
        assert result.reason and "\n" not in result.reason
        return
    assert_conforms(result)


@settings(max_examples=500, deadline=None)
@given(rows())
def test_validating_a_job_spec_again_changes_nothing(case: tuple[RawRow, Defaults]) -> None:
    raw, defaults = case
    first = validate_row(raw, defaults)
    if not isinstance(first, JobSpec):
        return
    again = validate_row(RawRow(first.seq, first.line, {
        "id": first.row_key, "model": first.model, "task_type": first.task_type,
        "input": first.input, "metadata": first.metadata}), Defaults())
    assert again == first
