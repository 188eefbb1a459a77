"""Typed checks and normalisation of a task's `input` against a table of field specs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["str", "int", "bool", "number", "list"]
_KIND_NAMES = {"str": "a string", "int": "an integer", "bool": "a boolean", "number": "a number",
               "list": "a list"}


class InvalidRequest(Exception):
    """A create request PiAPI answers with HTTP 400; `message` is the reason sent back."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One input field: its JSON type, whether required, its default and allowed values."""

    name: str
    kind: Kind
    required: bool = False
    default: Any = None
    """Filled in when the field is absent; None leaves it absent."""
    choices: tuple[Any, ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    max_length: int | None = None
    """Longest string, in characters."""
    items: tuple[FieldSpec, ...] = ()
    """For a `list`: the fields of each item, an object (e.g. Flux `lora_settings`)."""


def type_ok(kind: Kind, value: object) -> bool:
    """Whether `value` (decoded JSON) has the JSON type `kind`; booleans are not numbers."""
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    return isinstance(value, int | float)


def _check_value(spec: FieldSpec, value: object, where: str) -> Any:
    if not type_ok(spec.kind, value):
        raise InvalidRequest(f"{where} must be {_KIND_NAMES[spec.kind]}")
    if spec.choices and value not in spec.choices:
        allowed = ", ".join(str(c) for c in spec.choices)
        raise InvalidRequest(f"{where} must be one of {allowed}")
    if isinstance(value, str) and spec.max_length is not None and len(value) > spec.max_length:
        raise InvalidRequest(f"{where} must be at most {spec.max_length} characters")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if spec.min_value is not None and value < spec.min_value:
            raise InvalidRequest(f"{where} must be at least {spec.min_value:g}")
        if spec.max_value is not None and value > spec.max_value:
            raise InvalidRequest(f"{where} must be at most {spec.max_value:g}")
    if isinstance(value, list) and spec.items:
        return [normalise_input(spec.items, item, f"{where}[{i}]")
                for i, item in enumerate(value)]
    return value


def normalise_input(
    fields: tuple[FieldSpec, ...], raw: object, where: str = "input"
) -> dict[str, Any]:
    """Validate `raw` and return it normalised: keys sorted, defaults filled, unknown keys dropped.

    A null value counts as absent; an empty string (or list) counts as absent for a required
    field. `where` names the object in error messages (`input`, `input.lora_settings[0]`).
    """
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where} must be an object")
    out: dict[str, Any] = {}
    for spec in fields:
        value = raw.get(spec.name)
        if value is None or (spec.required and value in ("", [])):
            if spec.required:
                raise InvalidRequest(f"{where}.{spec.name} is required")
            if spec.default is not None:
                out[spec.name] = spec.default
            continue
        out[spec.name] = _check_value(spec, value, f"{where}.{spec.name}")
    return dict(sorted(out.items()))
