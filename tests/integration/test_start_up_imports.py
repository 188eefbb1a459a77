"""What a process pays for at start-up: `run` starts a worker and a dispatcher for every
batch, and each `piapi-bulk` command is a process, so modules they never use stay unloaded
(measured by the interpreter's own import log, in real child processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workers.db import create_tables, make_engine

pytestmark = pytest.mark.integration


def _imported(args: list[str]) -> set[str]:
    """Top-level packages a child `python -X importtime ARGS` imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    names = (line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
             if line.startswith("import time:") and "|" in line)
    return {name.split(".")[0] for name in names}


def test_a_process_on_a_database_at_head_does_not_load_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    create_tables(make_engine(url))  # the first process upgrades (and loads Alembic)
    code = ("from workers.db import create_tables, make_engine; "
            f"create_tables(make_engine({url!r}))")
    loaded = _imported(["-c", code])
    assert "sqlalchemy" in loaded  # the probe sees imports at all
    assert "alembic" not in loaded


@pytest.mark.parametrize("command", [["worker", "--help"], ["run", "--help"], ["status", "--help"]])
def test_commands_other_than_the_emulator_do_not_load_it(command: list[str]) -> None:
    loaded = _imported(["-m", "scheduler.cli", *command])
    assert "typer" in loaded
    assert "emulator" not in loaded and "uvicorn" not in loaded


@pytest.mark.parametrize("command", [["emulator", "--help"], ["--help"]])
def test_the_emulator_command_is_there_when_named_or_listed(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "scheduler.cli", *command],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("--time-scale" if command[0] == "emulator" else "emulator") in done.stdout
