"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import MakeEmulator
from tests.integration.e2e import RunOutcome, RunRows, run_manifest, stop_leftover_runs


@pytest.fixture(autouse=True)
def _no_run_outlives_its_test() -> Iterator[None]:
    """A test that fails between `start_run` and `finish` leaves its run behind; stop it
    (and its Redis, worker and dispatcher) when the test ends, whatever the outcome."""
    yield
    stop_leftover_runs()


@pytest.fixture
def run_rows(tmp_path: Path, make_emulator: MakeEmulator) -> RunRows:
    """`run_rows(database_url, rows, emulator_args, timeout_s=240, run_args=(), **env)`:
    `piapi-bulk run` on these rows, to the end, against a fresh emulator started with
    `emulator_args`; (exit code, results, emulator stats, ledger) as a `RunOutcome`."""

    def run(database_url: str, rows: list[Any], emulator_args: list[str],
            timeout_s: float = 240, run_args: tuple[str, ...] = (),
            **env_extra: str) -> RunOutcome:
        return run_manifest(make_emulator(*emulator_args), tmp_path, database_url, rows,
                            timeout_s, run_args, **env_extra)

    return run
