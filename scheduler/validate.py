"""Row validation: a manifest row becomes a typed, checked JobSpec or an Invalid with a reason.

Pure: no I/O, no state; `validate_row` never raises for any row a reader can produce.

Reserved fields are `id`, `model`, `task_type`, `input`, `metadata` and `service_mode` (it
goes to the request's `config`: `public`, `private` or empty); every other field is an
input field, merged into `input`. A field given both ways must agree (after typing) when
both are non-empty; otherwise the row is invalid. When one of the two is empty, the
non-empty one is used. Input fields that are null are dropped (like empty CSV cells).

Input fields are checked against `workers.catalog` strictly, for CSV columns as for JSON
keys: a field the (model, task_type) does not list makes the row invalid unless the spec has
`open_fields` (users rename or drop extra columns; nothing unknown reaches the paid API).
Typed fields accept their JSON type or a string holding it, since CSV cells are strings:
integers "5", "+5" and "5.0" (not "5.5", not true), numbers "0.5" or "1e3" (finite only),
booleans true/false/1/0/yes/no in any case, arrays a JSON array or a string holding one
(each item an object with the item keys the spec requires). String fields take strings,
and numbers as their decimal form; objects, arrays and booleans are refused. A field the
catalogue types as a URL (a file PiAPI fetches: Joycaption's `image`, Kling's `image_url`,
F5-TTS's `ref_audio`...) must be an absolute http(s) URL with a host, or a local file
(a path or `file:` URL) when the caller gives a resolver (`Defaults.local`, which ingest
does: the file is checked and stored as its absolute path, and uploaded by the worker;
without one a local file is refused); any other scheme is refused. `choices`,
`min`, `max` and `max_len` apply after conversion; Flux models also need width*height <=
1,048,576 when both are given; a spec's `one_of` and cross-field `check` come last.

A model the catalog does not list at all (with a task type) is passed through unchecked:
its input is sent as given, with no field checks, and the JobSpec says `unchecked`. JSON
values stay as they are; CSV cells stay strings, except a cell holding a JSON object or
array, which becomes that value (a CSV cell has no other way to carry one; a cell that
only looks like one, such as lyrics starting "[Verse]", stays a string). With `strict`,
such rows are invalid instead. A known model with an unknown task type, a missing task
type or a bad field is always invalid: a malformed task never reaches the paid API.

Duplicate ids are not checked here: that needs every id seen so far (see `ingest`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler.fieldtypes import CONVERTERS, KIND_WORDS, LOCAL_FILE, url_problem
from scheduler.manifest import RawRow, parse_json
from workers.catalog import MODELS, SERVICE_MODES, FieldSpec, Kind, TaskSpec, lookup, task_types

RESERVED = frozenset({"id", "model", "task_type", "input", "metadata", "service_mode"})
"""Row fields that are not input fields."""
NAME_CHARS = 64
"""Longest model or task type name a passed-through row may have (the record's limit)."""
SHOW_CHARS = 40
"""How much of an offending value a reason quotes."""



@dataclass(frozen=True, slots=True)
class Defaults:
    """Model, task type and service mode for rows that do not name their own (`--model`,
    `--task-type`, `--service-mode`)."""

    model: str | None = None
    task_type: str | None = None
    service_mode: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)
    """Input fields for every row (`--set KEY=VALUE`); a row's own non-empty value wins."""
    local: Callable[[str], str] | None = None
    """Resolves a local file named in a URL field to its checked absolute path (raising
    ValueError with the reason); None: local files are refused."""


@dataclass(slots=True)
class JobSpec:
    """A valid row: what to send to PiAPI, with the user's metadata to pass through."""

    seq: int
    line: int
    row_key: str
    model: str
    task_type: str
    input: dict[str, Any]
    metadata: Any
    unchecked: bool = False
    """True when the model is not in the catalog: the input is sent as given, unchecked."""
    service_mode: str | None = None
    """`config.service_mode` for the create (`public` or `private`); None: not sent."""


@dataclass(slots=True)
class Invalid:
    """A row that will not be sent, why (one line), and what could be read of it."""

    seq: int
    line: int
    row_key: str
    model: str | None
    task_type: str | None
    reason: str
    metadata: Any


class _Reject(Exception):
    """Internal: the row is invalid for `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def validate_row(raw: RawRow, defaults: Defaults, *, strict: bool = False) -> JobSpec | Invalid:
    """Check one row against the catalog; a JobSpec with a typed input, or an Invalid.

    A model the catalog does not know is passed through unchecked, unless `strict`."""
    fields = raw.fields
    metadata = _metadata(fields.get("metadata"), raw.from_csv)
    row_key, model, task_type = str(raw.seq), None, None
    try:
        row_key = _row_key(fields.get("id"), raw.seq)
        model = _name(fields, "model", defaults.model)
        task_type = _name(fields, "task_type", defaults.task_type)
        spec = _spec(model, task_type, strict)
        mode = _service_mode(fields.get("service_mode"), defaults.service_mode, spec)
        if spec is None:
            assert model is not None and task_type is not None
            data = _with_set(_passthrough_input(fields, raw.from_csv), defaults.fields)
            return JobSpec(raw.seq, raw.line, row_key, model, task_type, data, metadata,
                           unchecked=True, service_mode=mode)
        data = _input(fields, spec, raw.from_csv, defaults)
    except _Reject as exc:
        return Invalid(raw.seq, raw.line, row_key, model, task_type, exc.reason, metadata)
    return JobSpec(raw.seq, raw.line, row_key, spec.model, spec.task_type, data, metadata,
                   service_mode=mode)


def _show(value: Any) -> str:
    """A short, one-line rendering of a value for a reason."""
    if isinstance(value, str):
        text = value if len(value) <= SHOW_CHARS else value[: SHOW_CHARS - 3] + "..."
        return repr(text)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return "a very large number"
    return text if len(text) <= SHOW_CHARS else text[: SHOW_CHARS - 3] + "..."


def _metadata(value: Any, from_csv: bool) -> Any:
    """Metadata as given; a CSV cell holding JSON is parsed, any other cell stays a string."""
    if not (from_csv and isinstance(value, str)):
        return value
    try:
        return parse_json(value)
    except (ValueError, RecursionError):
        return value


def _row_key(value: Any, seq: int) -> str:
    if value is None or value == "":
        return str(seq)
    if isinstance(value, str):
        if "\x00" in value:  # PostgreSQL text cannot hold it
            raise _Reject("field 'id' must not contain a NUL character")
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:
            pass
    raise _Reject(f"field 'id' must be a string or an integer, got {_show(value)}")


def _name(fields: Mapping[str, Any], name: str, default: str | None) -> str | None:
    """The row's model or task type (stripped), else the default; None when neither."""
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default or None
    if not isinstance(value, str):
        raise _Reject(f"field {name!r} must be a string, got {_show(value)}")
    return value.strip()


def _spec(model: str | None, task_type: str | None, strict: bool) -> TaskSpec | None:
    """The catalog's spec for the row; None when the row is to be passed through."""
    if model is None:
        raise _Reject("missing model (no 'model' field and no default model)")
    spec = lookup(model, task_type) if task_type is not None else None
    if spec is not None:
        return spec
    if model in MODELS:
        known = ", ".join(task_types(model))
        if task_type is None:
            raise _Reject(f"missing task_type for model {model!r} (known: {known})")
        raise _Reject(
            f"unknown task_type {_show(task_type)} for model {model!r} (known: {known})")
    if strict:
        raise _Reject(f"unknown model {_show(model)} (known: {', '.join(sorted(MODELS))})")
    if task_type is None:
        raise _Reject(f"missing task_type for model {_show(model)} (a model not in "
                      "piapi-bulk's catalogue is sent unchecked, but needs its task_type)")
    for name, value in (("model", model), ("task_type", task_type)):
        if len(value) > NAME_CHARS or "\x00" in value:
            raise _Reject(f"field {name!r} must be at most {NAME_CHARS} characters, "
                          f"without NUL, got {_show(value)}")
    return None


def _service_mode(value: Any, default: str | None, spec: TaskSpec | None) -> str | None:
    """The row's `config.service_mode` (its own, else the default); None when empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        value = default or ""
    if not isinstance(value, str) or value.strip() not in ("", *SERVICE_MODES):
        raise _Reject(f"field 'service_mode' must be public, private or empty, "
                      f"got {_show(value)}")
    mode = value.strip() or None
    if mode is not None and spec is not None and mode not in spec.service_modes:
        allowed = " or ".join(spec.service_modes)
        raise _Reject(f"service_mode {mode!r} is not accepted by {spec.model} "
                      f"(only {allowed}, or empty)")
    return mode


def _passthrough_input(fields: Mapping[str, Any], from_csv: bool) -> dict[str, Any]:
    """The input of a row the catalog cannot check: columns and `input` as given (CSV cells
    holding a JSON object or array parsed), nulls dropped."""
    data = {k: _json_cell(v) if from_csv else v for k, v in fields.items()
            if k not in RESERVED}
    explicit = fields.get("input")
    if explicit is not None:
        data = _merge(_explicit_input(explicit, from_csv), data, None)
    return {k: v for k, v in data.items() if v is not None}


def _json_cell(value: Any) -> Any:
    """A CSV cell holding a JSON object or array, parsed; any other cell as it is."""
    if not (isinstance(value, str) and value.lstrip()[:1] in ("{", "[")):
        return value
    try:
        parsed = parse_json(value)
    except (ValueError, RecursionError):
        return value
    return parsed if isinstance(parsed, dict | list) else value


def _with_set(data: dict[str, Any], given: Mapping[str, str]) -> dict[str, Any]:
    """`data` with the `--set` fields it does not fill itself."""
    for name, value in given.items():
        if _empty(data.get(name)):
            data[name] = value
    return data


def _input(fields: Mapping[str, Any], spec: TaskSpec, from_csv: bool,
           defaults: Defaults) -> dict[str, Any]:
    """The merged, checked and typed input object."""
    data = {k: v for k, v in fields.items() if k not in RESERVED}
    explicit = fields.get("input")
    if explicit is not None:
        data = _merge(_explicit_input(explicit, from_csv), data, spec)
    if defaults.fields:
        data = _with_set(data, defaults.fields)
    local = defaults.local
    if None in data.values():
        data = {k: v for k, v in data.items() if v is not None}
    if not spec.open_fields and not data.keys() <= spec.fields.keys():
        _reject_unknown(data, spec)
    _check_present(data, spec)
    if data.keys() <= _plain_strings(spec) and all(type(v) is str for v in data.values()):
        typed = data  # the common CSV row: strings for string fields, nothing to convert
        for name in data.keys() & _url_fields(spec):
            typed[name] = _check_url(name, data[name], local)
    else:
        typed = {k: _typed(k, v, spec.fields.get(k), local) for k, v in data.items()}
        _check_area(typed, spec)
    if spec.check is not None and (reason := spec.check(typed)) is not None:
        raise _Reject(reason)
    return typed


def _check_present(data: Mapping[str, Any], spec: TaskSpec) -> None:
    for name in spec.required:
        if _empty(data.get(name)):
            raise _Reject(f"missing required input field {name!r}")
    if spec.one_of and all(_empty(data.get(name)) for name in spec.one_of):
        names = " or ".join(repr(n) for n in spec.one_of)
        raise _Reject(f"missing required input field: {names}")


_PLAIN: dict[tuple[str, str], frozenset[str]] = {}
_URLS: dict[tuple[str, str], frozenset[str]] = {}


def _plain_strings(spec: TaskSpec) -> frozenset[str]:
    """The spec's fields that take a string as it is (no conversion, no choices): URL
    fields included, which `_check_url` looks at."""
    key = (spec.model, spec.task_type)
    plain = _PLAIN.get(key)
    if plain is None:
        plain = _PLAIN[key] = frozenset(k for k, f in spec.fields.items()
                                        if _plain(f) or f.kind is Kind.URL)
    return plain


def _url_fields(spec: TaskSpec) -> frozenset[str]:
    """The spec's fields that hold a URL."""
    key = (spec.model, spec.task_type)
    urls = _URLS.get(key)
    if urls is None:
        urls = _URLS[key] = frozenset(k for k, f in spec.fields.items() if f.kind is Kind.URL)
    return urls


def _check_url(name: str, value: str, local: Callable[[str], str] | None) -> str:
    """The URL as given, or a local file's checked absolute path (with a resolver)."""
    problem = url_problem(value)
    if problem is None:
        return value
    if problem == LOCAL_FILE and local is not None:
        try:
            return local(value)
        except ValueError as exc:
            raise _Reject(f"field {name!r}: {exc}") from None
    raise _Reject(f"field {name!r}: {problem}, got {_show(value)}")


def _explicit_input(value: Any, from_csv: bool) -> dict[str, Any]:
    """The `input` field as an object: a JSON object, or (in CSV) a cell holding one."""
    if value is None:
        return {}
    if isinstance(value, str) and from_csv:
        try:
            value = parse_json(value)
        except json.JSONDecodeError as exc:
            raise _Reject(
                f"field 'input' is not valid JSON: {exc.msg} at column {exc.colno}") from None
        except (ValueError, RecursionError) as exc:
            raise _Reject(f"field 'input' is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise _Reject(f"field 'input' must be a JSON object, got {_show(value)}")
    return value


def _plain(field: FieldSpec) -> bool:
    """True for a string field that takes any string as it is."""
    return field.kind is Kind.STR and not field.choices and field.max_len is None


def _merge(explicit: dict[str, Any], extra: dict[str, Any],
           spec: TaskSpec | None) -> dict[str, Any]:
    merged = dict(extra)
    for name, value in explicit.items():
        other = merged.get(name)
        if _empty(value) and not _empty(other):
            continue
        field = spec.fields.get(name) if spec is not None else None
        if not _empty(other) and not _same(name, value, other, field):
            raise _Reject(f"field {name!r} differs between 'input' ({_show(value)}) "
                          f"and its own column ({_show(other)})")
        merged[name] = value
    return merged


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _same(name: str, a: Any, b: Any, field: FieldSpec | None) -> bool:
    """True when two values of a field mean the same (after typing, when it is typed)."""
    if type(a) is type(b) and a == b:
        return True
    if field is None:  # unchecked: a CSV cell equal to the JSON text of the other value
        return any(type(x) is str and type(y) is not str and x.strip() == _COMPACT.encode(y)
                   for x, y in ((a, b), (b, a)))
    try:
        return bool(_typed(name, a, field) == _typed(name, b, field))
    except _Reject:
        return False


def _reject_unknown(data: Mapping[str, Any], spec: TaskSpec) -> None:
    unknown = [k for k in data if k not in spec.fields]
    names = ", ".join(repr(k) for k in unknown)
    plural = "s" if len(unknown) > 1 else ""
    raise _Reject(f"unknown input field{plural} {names} for {spec.model} {spec.task_type}"
                  f" (known: {', '.join(sorted(spec.fields))})")


def _typed(name: str, value: Any, field: FieldSpec | None,
           local: Callable[[str], str] | None = None) -> Any:
    """The value converted to the field's JSON type and checked; unlisted fields unchanged
    (`local` resolves local files in URL fields, see `Defaults.local`)."""
    if field is None or (type(value) is str and _plain(field)):
        return value  # the common case, kept fast: min and max apply to numbers only
    converted = CONVERTERS[field.kind](value)
    if converted is None:
        raise _Reject(f"field {name!r} must be {KIND_WORDS[field.kind]}, got {_show(value)}")
    if field.kind is Kind.URL:
        converted = _check_url(name, converted, local)
    if field.choices and converted not in field.choices:
        choices = ", ".join(_show(c) for c in field.choices)
        raise _Reject(f"field {name!r} must be one of {choices}, got {_show(converted)}")
    if field.min is not None or field.max is not None:
        _check_range(name, converted, field)
    if field.max_len is not None and len(converted) > field.max_len:
        raise _Reject(f"field {name!r} must be at most {field.max_len} characters, "
                      f"got {len(converted)}")
    if field.items is not None:
        converted = [_item(name, i, item, field, local) for i, item in enumerate(converted)]
    return converted


def _item(name: str, i: int, item: Any, field: FieldSpec,
          local: Callable[[str], str] | None) -> dict[str, Any]:
    """One object of an array field: required keys present, listed keys typed."""
    where = f"{name}[{i}]"
    if not isinstance(item, dict):
        raise _Reject(f"field {where!r} must be an object, got {_show(item)}")
    for key in field.item_required:
        if _empty(item.get(key)):
            raise _Reject(f"field {where!r} needs {key!r}")
    specs = field.items or {}
    return {k: _typed(f"{where}.{k}", v, specs.get(k), local) if v is not None else v
            for k, v in item.items()}


def _check_range(name: str, value: Any, field: FieldSpec) -> None:
    if not isinstance(value, int | float):
        return
    if field.min is not None and value < field.min:
        raise _Reject(f"field {name!r} must be at least {field.min:g}, got {_show(value)}")
    if field.max is not None and value > field.max:
        raise _Reject(f"field {name!r} must be at most {field.max:g}, got {_show(value)}")


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _check_area(data: Mapping[str, Any], spec: TaskSpec) -> None:
    limit = spec.max_pixels
    if limit is None:
        return
    width, height = data.get("width"), data.get("height")
    if isinstance(width, int) and isinstance(height, int) and width * height > limit:
        raise _Reject(f"width*height must be at most {limit} for {spec.model}, "
                      f"got {width}x{height} = {width * height}")
