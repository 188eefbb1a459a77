"""The command line: announcement line, option validation, and import isolation."""

from __future__ import annotations

import re
import select
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from emulator.cli import emulator_command
from emulator.config import EmulatorConfig
from tests.helpers import HTTP, REPO, stop_process


@pytest.mark.integration  # starts the emulator as a process
def test_port_zero_announces_the_real_address_and_serves() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--port", "0", "--time-scale", "0.5",
         "--concurrency", "3", "--over-limit", "refuse"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "no announcement within 20 s"
        line = proc.stdout.readline().decode()
        match = re.fullmatch(
            r"emulator listening on http://127\.0\.0\.1:(\d+) "
            r"\(time scale 0\.5, concurrency 3, over-limit refuse\)\n", line)
        assert match, line
        stats = HTTP.get(f"http://127.0.0.1:{match.group(1)}/_emulator/stats", timeout=5)
        assert stats.status_code == 200
    finally:
        stop_process(proc)


@pytest.mark.parametrize(
    "args",
    [["--over-limit", "bogus"], ["--duration", "wan=1"], ["--duration", "nope=1:2"],
     ["--fault-5xx", "1.5"], ["--concurrency", "-1"]],
)
def test_bad_options_exit_with_usage_error(args: list[str]) -> None:
    import typer

    app = typer.Typer()
    app.command()(emulator_command)
    result = CliRunner().invoke(app, ["--port", "0", *args])
    assert result.exit_code == 2


@pytest.mark.integration  # a fresh interpreter
def test_emulator_imports_nothing_from_the_project() -> None:
    code = (
        "import sys, emulator.cli, emulator.app;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('workers', 'scheduler', 'bench')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout


def _config_from(args: list[str], monkeypatch: pytest.MonkeyPatch) -> EmulatorConfig:
    import typer

    import emulator.cli

    seen: list[EmulatorConfig] = []
    monkeypatch.setattr(emulator.cli, "serve", seen.append)
    monkeypatch.delenv("PIAPI_API_KEY", raising=False)
    app = typer.Typer()
    app.command()(emulator_command)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return seen[0]


def test_cli_defaults_are_the_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _config_from([], monkeypatch) == EmulatorConfig()


def test_issue9_options_have_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_from([
        "--history-shape", "full", "--history-model-filter", "both", "--history-lag-s", "7",
        "--no-history-lists-pending", "--active-tasks-families", "all",
        "--fault-stuck-processing", "0.1", "--fault-fail-credits", "0.2",
        "--stuck-timeout-factor", "0",
    ], monkeypatch)
    assert (config.history_shape, config.history_model_filter, config.history_lag_s) == (
        "full", "both", 7.0)
    assert (config.history_lists_pending, config.active_tasks_families) == (False, "all")
    assert (config.fault_stuck_processing, config.fault_fail_credits) == (0.1, 0.2)
    assert config.stuck_timeout_factor == 0.0


@pytest.mark.parametrize(
    "args",
    [["--history-shape", "summary"], ["--history-model-filter", "fuzzy"],
     ["--active-tasks-families", "some"], ["--stuck-timeout-factor", "-1"]],
)
def test_bad_issue9_options_exit_with_usage_error(args: list[str]) -> None:
    import typer

    app = typer.Typer()
    app.command()(emulator_command)
    assert CliRunner().invoke(app, ["--port", "0", *args]).exit_code == 2


def test_latency_options_are_ms_on_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config_from(["--latency-ms", "150:50", "--create-latency-ms", "1000:500"],
                          monkeypatch)
    assert config.network_latency_s == pytest.approx((0.15, 0.05))
    assert config.network_create_latency_s == pytest.approx((1.0, 0.5))
    config = _config_from(["--latency-ms", "80"], monkeypatch)
    assert config.network_latency_s == pytest.approx((0.08, 0.0))
    assert config.network_create_latency_s is None  # creates get --latency-ms


@pytest.mark.parametrize(
    "args", [["--latency-ms", "fast"], ["--latency-ms", "-5"], ["--create-latency-ms", "1:2:3"]],
)
def test_a_bad_latency_option_is_one_line_and_exit_2(args: list[str]) -> None:
    import typer

    app = typer.Typer()
    app.command()(emulator_command)
    result = CliRunner().invoke(app, ["--port", "0", *args])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"emulator: {args[0]}: expected MEAN[:JITTER] in ms, numbers >= 0, got {args[1]!r}"]
