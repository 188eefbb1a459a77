"""Typed checks and normalisation of a task's `input` against a table of field specs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["str", "int", "bool", "number"]
_KIND_NAMES = {"str": "a string", "int": "an integer", "bool": "a boolean", "number": "a number"}


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


def type_ok(kind: Kind, value: object) -> bool:
    """Whether `value` (decoded JSON) has the JSON type `kind`; booleans are not numbers."""
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    return isinstance(value, int | float)


def _check_value(spec: FieldSpec, value: object) -> None:
    where = f"input.{spec.name}"
    if not type_ok(spec.kind, value):
        raise InvalidRequest(f"{where} must be {_KIND_NAMES[spec.kind]}")
    if spec.choices and value not in spec.choices:
        allowed = ", ".join(str(c) for c in spec.choices)
        raise InvalidRequest(f"{where} must be one of {allowed}")
    if isinstance(value, int | float):
        if spec.min_value is not None and value < spec.min_value:
            raise InvalidRequest(f"{where} must be at least {spec.min_value:g}")
        if spec.max_value is not None and value > spec.max_value:
            raise InvalidRequest(f"{where} must be at most {spec.max_value:g}")


def normalise_input(fields: tuple[FieldSpec, ...], raw: object) -> dict[str, Any]:
    """Validate `raw` and return it normalised: keys sorted, defaults filled, unknown keys dropped.

    A null value counts as absent; an empty string counts as absent for a required field.
    """
    if not isinstance(raw, dict):
        raise InvalidRequest("input must be an object")
    out: dict[str, Any] = {}
    for spec in fields:
        value = raw.get(spec.name)
        if value is None or (spec.required and value == ""):
            if spec.required:
                raise InvalidRequest(f"input.{spec.name} is required")
            if spec.default is not None:
                out[spec.name] = spec.default
            continue
        _check_value(spec, value)
        out[spec.name] = value
    return dict(sorted(out.items()))
