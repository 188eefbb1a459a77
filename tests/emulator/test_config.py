"""EmulatorConfig defaults and validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from emulator.config import DEFAULT_DURATIONS_S, FAMILIES, EmulatorConfig, parse_duration_override


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIAPI_API_KEY", raising=False)
    config = EmulatorConfig()
    assert (config.host, config.port, config.time_scale, config.concurrency) == (
        "127.0.0.1", 8080, 1.0, 10)
    assert (config.over_limit, config.seed, config.rpm) == ("queue", None, 0.0)
    assert config.api_key.get_secret_value() == "emulator-key"
    # Real-world seconds (time_scale shortens them), and a copy per config: changing one
    # emulator's durations changes no other's.
    assert config.durations_s["joycaption"] == (15.0, 45.0)
    assert config.durations_s["wan"] == (120.0, 240.0)
    assert set(config.durations_s) == set(FAMILIES)
    assert config.durations_s is not DEFAULT_DURATIONS_S
    assert config.public_config()["api_key"] == "**********"


def test_api_key_defaults_from_env_and_must_not_be_empty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PIAPI_API_KEY", "from-env")
    assert EmulatorConfig().api_key.get_secret_value() == "from-env"
    with pytest.raises(ValidationError):
        EmulatorConfig(api_key="")


def test_duration_overrides_merge_over_defaults() -> None:
    assert parse_duration_override("wan=120:480") == ("wan", (120.0, 480.0))
    config = EmulatorConfig(durations_s={"wan": (120.0, 480.0)})
    assert config.durations_s["wan"] == (120.0, 480.0)
    assert config.durations_s["flux"] == DEFAULT_DURATIONS_S["flux"]


@pytest.mark.parametrize(
    "settings",
    [{"durations_s": {"luma": (1, 2)}}, {"durations_s": {"wan": (5, 1)}},
     {"fault_fail": 1.5}, {"over_limit": "wait"}, {"time_scale": 0}, {"nope": 1},
     {"webhook_events": ["done"]}, {"unknown_task_status": 410}],
)
def test_invalid_settings_are_rejected(settings: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        EmulatorConfig.model_validate(settings)


@pytest.mark.parametrize("text", ["wan", "wan=1", "wan=a:b", "=1:2:3"])
def test_bad_duration_overrides(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_override(text)
