"""Every emulator setting in one typed object, with defaults that mimic PiAPI at real speed
and answer the least generous way its docs allow (more generous answers are options)."""

from __future__ import annotations

import math
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

Probability = float
WEBHOOK_EVENTS = ("pending", "processing", "completed", "failed", "cancelled")

DEFAULT_DURATIONS_S: dict[str, tuple[float, float]] = {
    "joycaption": (15.0, 45.0), "wan": (120.0, 240.0), "flux": (5.0, 15.0),
    "kling": (120.0, 300.0), "hailuo": (60.0, 180.0), "tts": (10.0, 40.0),
    "midjourney": (30.0, 90.0), "music-u": (60.0, 180.0), "hunyuan": (120.0, 300.0),
    "trellis": (30.0, 90.0), "image_toolkit": (5.0, 20.0), "seedance": (60.0, 180.0),
    "diffrhythm": (20.0, 60.0),
}
"""Each model family's task duration range (min, max) in seconds at time scale 1."""
FAMILIES = tuple(DEFAULT_DURATIONS_S)
"""The emulator's model families (durations, and /account/active_tasks with families=all):
written once, as the keys of `DEFAULT_DURATIONS_S`."""

STATIC_FIELDS = frozenset({"host", "port", "seed"})
"""Settings fixed at start: `POST /_emulator/config` refuses to change them."""


def _default_api_key() -> SecretStr:
    return SecretStr(os.environ.get("PIAPI_API_KEY") or "emulator-key")


def _prob(description: str) -> Any:
    return Field(default=0.0, ge=0.0, le=1.0, description=description)


class EmulatorConfig(BaseModel):
    """Settings of one emulator process; most can be changed at runtime via /_emulator/config."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # server
    host: str = Field("127.0.0.1", description="Interface to bind; loopback by default.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0 = any free port).")
    api_key: SecretStr = Field(
        default_factory=_default_api_key,
        description="Expected x-api-key; env PIAPI_API_KEY, else 'emulator-key'.",
    )
    seed: int | None = Field(None, description="Seed for every random choice; None = random.")

    # time and concurrency
    time_scale: float = Field(
        1.0, gt=0.0, description="Multiplier on real-world task durations (0.01 = 100x faster)."
    )
    durations_s: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_DURATIONS_S),
        description="Per family (min_s, max_s) uniform processing time before time_scale.",
    )
    queue_wait_fraction: tuple[float, float] = Field(
        (0.02, 0.05), description="Pending wait before processing, as a fraction of the duration."
    )
    concurrency: int = Field(
        10, ge=0, description="Account limit on pending+processing (max_concurrent_task_count)."
    )
    over_limit: Literal["queue", "refuse"] = Field(
        "queue", description="queue: accept and keep pending; refuse: HTTP 429 on create."
    )
    refuse_retry_after_s: int = Field(1, ge=0, description="Retry-After sent with refuse 429s.")
    balance_points: int = Field(10**12, ge=0, description="Starting wallet (1e7 points = $1).")
    account_balance: bool = Field(
        True, description="False: /account/info leaves the balance out (equivalent_in_usd "
        "and wallet), as a PiAPI that does not report it would.",
    )

    # request rate
    rpm: float = Field(0.0, ge=0.0, description="Requests per minute over all API calls; 0 = off.")
    rpm_burst_s: float = Field(1.0, gt=0.0, description="Bucket depth in seconds of rate.")

    # faults
    fault_5xx: Probability = _prob("Answer an API request 500/502/503 before handling it.")
    fault_429: Probability = _prob("Answer an API request with a spurious 429.")
    fault_retry_after_s: int = Field(1, ge=0, description="Retry-After of spurious 429s.")
    fault_ambiguous: Probability = _prob("Create the task, then drop the connection.")
    fault_hang: Probability = _prob("Create the task, then delay the response hang_s.")
    fault_lost: Probability = _prob("Drop the connection of a create before creating anything.")
    hang_s: float = Field(60.0, ge=0.0, description="Real seconds a hung create waits.")
    fault_stuck: Probability = _prob("Task never progresses (half pending, half processing).")
    fault_stuck_processing: Probability = _prob(
        "Task starts processing and never ends on its own, holding its concurrency slot."
    )
    stuck_timeout_factor: float = Field(
        20.0, ge=0.0, description=(
            "A stuck task fails 'task timeout' after this x its duration; 0 = never times out."
        ),
    )
    fault_fail: Probability = _prob("Task ends failed with a transient provider error.")
    fault_fail_credits: Probability = _prob(
        "Task ends failed: the provider pool \"doesn't have enough credits\" (error and logs)."
    )

    # latency (network: emulator.latency; server: create_latency_s): real wall time, not scaled
    network_latency_s: tuple[float, float] = Field(
        (0.0, 0.0), description=(
            "(mean, jitter) real seconds of network delay on every API request: uniform in "
            "[mean - jitter, mean + jitter] clamped at 0, half before handling, half before "
            "the answer; the control API is not delayed."
        ),
    )
    network_create_latency_s: tuple[float, float] | None = Field(
        None, description="(mean, jitter) for creates (POST /api/v1/task) instead; None = "
        "network_latency_s.",
    )
    create_latency_s: float = Field(
        0.0, ge=0.0, description=(
            "Real seconds the server takes between creating a task and answering (server "
            "time, all of it after the create; network_create_latency_s is the network)."
        ),
    )

    # uploads
    upload_plan: Literal["creator", "free"] = Field(
        "creator", description=(
            "The account's plan for uploads: creator (allowed) or free (403 \"Insufficient "
            "plan level\", as for plans below Creator)."
        ),
    )
    upload_fail_first: int = Field(
        0, ge=0, description="Answer the first N uploads (/api/ephemeral_resource) 503."
    )

    # output files
    file_bytes: int = Field(
        0, ge=0, le=64 * 1024 * 1024,
        description="Size of each output file served; 0 = a few bytes of the file's type.",
    )
    files_gone: Probability = _prob(
        "Output files that answer 404, as PiAPI's do after a few days (chosen by name)."
    )
    files_fail_first: int = Field(
        0, ge=0, description="Each output file answers 503 to its first this many requests."
    )
    files_paused: bool = Field(
        False, description="Hold every output file request until this is false again."
    )

    # history, account, cancel
    history_shape: Literal["documented", "full"] = Field(
        "documented", description=(
            "documented: rows with the documented fields only, no input; full: the listing "
            "before issue 9 (camelCase rows whose detail is the whole task data, input included)."
        ),
    )
    history_model_filter: Literal["family", "exact", "both"] = Field(
        "family", description=(
            "What the history's `model` filter matches: family (documented values: flux, wan, "
            "mj...; anything else lists nothing), exact (model names), or both."
        ),
    )
    history_fault_rate: Probability = _prob("The history endpoint answers 500.")
    history_lag_s: float = Field(
        3.0, ge=0.0,
        description="Seconds before a new task is listed, before time_scale (like durations).",
    )
    history_lists_pending: bool = Field(
        True, description="False: pending tasks are left out of the history listing."
    )
    active_tasks_enabled: bool = Field(True, description="False: /account/active_tasks is 404.")
    active_tasks_families: Literal["documented", "all"] = Field(
        "documented", description=(
            "documented: only flux, kling, luma, midjourney, music-s, music-u (zeros when idle; "
            "other models counted nowhere); all: every family the emulator has."
        ),
    )
    unknown_task_status: Literal[404, 400] = Field(404, description="HTTP status for unknown ids.")
    cancel_status: Literal["failed", "cancelled"] = Field(
        "failed", description="Status a task reads as after DELETE."
    )

    # webhooks
    webhook_events: list[str] = Field(
        default_factory=lambda: ["processing", "completed", "failed"],
        description="Statuses whose entry triggers a webhook delivery.",
    )
    webhook_loss: Probability = _prob("Drop a webhook delivery silently.")
    webhook_duplicate: Probability = _prob("Deliver a webhook twice.")
    webhook_retries: int = Field(3, ge=0, description="Retries after a failed delivery.")
    webhook_retry_interval_s: float = Field(
        5.0, ge=0.0, description="Pause between retries before time_scale (at least 0.05 s)."
    )
    webhook_timeout_s: float = Field(5.0, gt=0.0, description="Per-attempt HTTP timeout.")

    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "warning", description="Log level of the emulator and uvicorn."
    )

    @field_validator("api_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("api_key must not be empty")  # else a missing header would pass
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("durations_s")
    @classmethod
    def _check_durations(
        cls, value: dict[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        merged = dict(DEFAULT_DURATIONS_S)
        for family, (low, high) in value.items():
            if family not in FAMILIES:
                raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
            if not 0 <= low <= high:
                raise ValueError(f"duration range for {family} must satisfy 0 <= min <= max")
            merged[family] = (low, high)
        return merged

    @field_validator("network_latency_s", "network_create_latency_s")
    @classmethod
    def _check_latency(
        cls, value: tuple[float, float] | None
    ) -> tuple[float, float] | None:
        if value is not None and not all(math.isfinite(v) and v >= 0 for v in value):
            raise ValueError("latency mean and jitter must be finite numbers >= 0")
        return value

    @field_validator("queue_wait_fraction")
    @classmethod
    def _check_wait(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1]:
            raise ValueError("queue_wait_fraction must satisfy 0 <= min <= max")
        return value

    @field_validator("webhook_events")
    @classmethod
    def _check_events(cls, value: list[str]) -> list[str]:
        unknown = [e for e in value if e not in WEBHOOK_EVENTS]
        if unknown:
            raise ValueError(f"unknown webhook events {unknown}; known: {list(WEBHOOK_EVENTS)}")
        return value

    def public_config(self) -> dict[str, object]:
        """The settings as JSON-ready data, with the API key masked."""
        return self.model_dump(mode="json")


def parse_duration_override(text: str) -> tuple[str, tuple[float, float]]:
    """Parse a CLI override like `wan=120:480` into ("wan", (120.0, 480.0))."""
    family, sep, span = text.partition("=")
    low, sep2, high = span.partition(":")
    if not sep or not sep2:
        raise ValueError(f"expected FAMILY=MIN:MAX, got {text!r}")
    return family.strip().lower(), (float(low), float(high))


def parse_latency_ms(text: str) -> tuple[float, float]:
    """Parse `MEAN[:JITTER]` in milliseconds, e.g. `150:50`, into seconds (0.15, 0.05)."""
    mean, _, jitter = text.partition(":")
    try:
        values = (float(mean), float(jitter or 0))
    except ValueError:
        values = (math.nan, math.nan)
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"expected MEAN[:JITTER] in ms, numbers >= 0, got {text!r}")
    return values[0] / 1000, values[1] / 1000
