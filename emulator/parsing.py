"""Turn a create-task body into a validated request: spec, normalised input and config, markers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from emulator.catalog import TaskSpec, lookup
from emulator.tasks import Fate
from emulator.validation import InvalidRequest

MARKERS: tuple[tuple[str, Fate], ...] = (
    ("[[moderation]]", Fate.FAIL_MODERATION),
    ("[[fail-credits]]", Fate.FAIL_CREDITS),
    ("[[fail]]", Fate.FAIL_TRANSIENT),
    ("[[stuck-processing]]", Fate.STUCK_PROCESSING),
    ("[[stuck]]", Fate.STUCK_PENDING),
)
"""Input markers that force a fate, strongest first, so tests need no randomness."""


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """A create body that passed validation."""

    spec: TaskSpec
    input: dict[str, Any]
    config: dict[str, Any]
    input_key: str
    forced_fate: Fate | None
    workflow_type: str = ""
    """`input.workflow_type` as sent, kept for the history's `detail` (the input drops it)."""


def input_key(model: object, task_type: object, raw_input: object) -> str:
    """sha256 of canonical JSON of {model, task_type, input as sent}: 'same row' in the stats."""
    canonical = json.dumps(
        {"model": model, "task_type": task_type, "input": raw_input},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}{key} must be a string")
    return value


def _object(obj: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where}{key} must be an object")
    return value


def normalise_config(body: dict[str, Any], service_modes: tuple[str, ...]) -> dict[str, Any]:
    """The echoed `config`: service_mode (one of `service_modes`) and webhook endpoint/secret,
    '' when not given."""
    config = _object(body, "config", "")
    webhook = _object(config, "webhook_config", "config.")
    mode = _string(config, "service_mode", "config.")
    if mode not in service_modes:
        allowed = ", ".join(repr(m) for m in service_modes)
        raise InvalidRequest(f"config.service_mode must be one of {allowed}")
    return {
        "service_mode": mode,
        "webhook_config": {
            "endpoint": _string(webhook, "endpoint", "config.webhook_config."),
            "secret": _string(webhook, "secret", "config.webhook_config."),
        },
    }


def forced_fate(input_: dict[str, Any]) -> Fate | None:
    """The fate a marker in any string field of the input asks for, if any."""
    texts = [v for v in input_.values() if isinstance(v, str) and "[[" in v]
    for marker, fate in MARKERS:
        if any(marker in text for text in texts):
            return fate
    return None


def parse_create(body: object) -> CreateRequest:
    """Validate a decoded create body; InvalidRequest carries the 400 message."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    model, task_type = body.get("model"), body.get("task_type")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model is required")
    if not isinstance(task_type, str) or not task_type:
        raise InvalidRequest("task_type is required")
    spec = lookup(model, task_type)
    raw_input = body.get("input")
    if raw_input is None:
        raise InvalidRequest("input is required")
    normalised = spec.normalise(raw_input)
    workflow_type = raw_input.get("workflow_type") if isinstance(raw_input, dict) else None
    return CreateRequest(
        spec=spec,
        input=normalised,
        config=normalise_config(body, spec.service_modes),
        input_key=input_key(model, task_type, raw_input),
        forced_fate=forced_fate(normalised),
        workflow_type=workflow_type if isinstance(workflow_type, str) else "",
    )
