"""`piapi-bulk doctor` against the emulator over real HTTP: its findings follow what the
emulator does (not what the docs say), it stays read-only unless told, and the key never
shows up anywhere.

Each emulator mode below is one parametrised case: the emulator's arguments and the
findings the doctor must come to. A new emulator behaviour is one more `Mode`.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from emulator.config import FAMILIES
from scheduler.status import masked_url
from tests.helpers import Emulator, MakeEmulator, opened
from tests.integration.e2e import piapi_bulk, run_env, write_jsonl
from workers.db import create_tables
from workers.findings import Findings, load
from workers.piapi import PiAPIClient

JOY = "Qubico/joycaption"
JOY_TYPE = "joycaption-beta-one"
FLUX = "Qubico/flux1-schnell"


@dataclass(frozen=True)
class Mode:
    """An emulator mode and the findings `doctor --probe` must come to in it."""

    name: str
    args: tuple[str, ...]
    expect: dict[str, Any]
    lag_s: tuple[float, float] = (0.0, 2.0)
    """Bounds on the lag measured (the probe reads the history at most 5 s apart)."""
    slots_flux: str = "counted by PiAPI (active_tasks: flux)"
    warnings: tuple[str, ...] = field(default=())
    """Fragments the doctor's warnings must contain."""


GENEROUS = {"history_filter": "exact", "history_has_input": True, "history_row_model": "exact",
            "history_lists_pending": True, "echoes_input": True}
GENEROUS_ARGS = ("--history-model-filter", "exact", "--active-tasks-families", "all",
                 "--history-lag-s", "0")
FULL = ("--history-shape", "full", *GENEROUS_ARGS)
"""The emulator's generous options: rows with inputs, the exact model filter, every family
in active_tasks, no listing lag (its defaults are the documented, least generous answers)."""
DOCUMENTED_FAMILIES = ["flux", "kling", "luma", "midjourney", "music-s", "music-u"]
MODES = [
    Mode("generous", FULL, {**GENEROUS, "active_families": sorted(FAMILIES)},
         warnings=("active_tasks does not count Qubico/joycaption",)),
    Mode("documented default", (), {
        "history_filter": "family", "history_has_input": False, "history_row_model": "exact",
        # Listed 3 s after its create, the probe task already runs: whether a task waiting
        # in the queue is listed stays unknown.
        "history_lists_pending": None, "echoes_input": True,
        "active_families": DOCUMENTED_FAMILIES},
        lag_s=(3.0, 9.0), warnings=("active_tasks does not count Qubico/joycaption",)),
    Mode("summary rows", ("--history-shape", "documented", *GENEROUS_ARGS),
         {**GENEROUS, "history_has_input": False}),
    Mode("listing lag", (*FULL, "--history-lag-s", "2"),
         {**GENEROUS, "history_lists_pending": None}, lag_s=(2.0, 7.5)),
    Mode("no active_tasks", (*FULL, "--no-active-tasks"), {**GENEROUS, "active_families": []},
         slots_flux="counted from our own record",
         warnings=("/account/active_tasks: not offered",)),
]


def doctor(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return piapi_bulk(tmp_path, env, "doctor", *args, timeout_s=90)


def stored(database_url: str) -> tuple[Findings | None, str]:
    """The stored findings, and the raw control row (to look for the key in)."""
    with opened(database_url) as engine:
        create_tables(engine)
        with engine.connect() as conn:
            raw = conn.execute(text("SELECT value FROM control WHERE key = 'doctor'")).scalar()
        return load(engine), str(raw or "")


def creates(emu: Emulator) -> int:
    return int(emu.stats()["requests"]["create"])


def assert_no_key(emu: Emulator, *texts: str) -> None:
    for t in texts:
        assert emu.api_key not in t


@pytest.fixture
def started(make_emulator: MakeEmulator) -> Emulator:
    return make_emulator(*FULL)


@pytest.mark.parametrize("mode", MODES, ids=[m.name for m in MODES])
def test_probe_findings_follow_what_the_emulator_does(tmp_path: Path, sqlite_url: str,
                                                      mode: Mode,
                                                      make_emulator: MakeEmulator) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"model": JOY, "task_type": JOY_TYPE, "image": "https://example.test/1.png"},
        {"model": FLUX, "task_type": "txt2img", "prompt": "a cat"},
    ])
    emu = make_emulator(*mode.args)
    env = run_env(tmp_path, emu, sqlite_url)
    done = doctor(tmp_path, env, str(manifest), "--probe", "--yes", "--json",
                  "--probe-timeout", "30")
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert creates(emu) == 1  # the probe's one task, nothing else
    found = report["findings"]
    assert {k: found[k] for k in mode.expect} == mode.expect
    assert mode.lag_s[0] <= found["history_lag_s"] <= mode.lag_s[1]
    assert found["probed_at"] is not None and report["probe"]["listed"] is True
    assert report["run"]["slots"] == {JOY: "counted from our own record", FLUX: mode.slots_flux}
    assert "$0.002" in done.stderr  # the price, said before spending it
    for fragment in mode.warnings:
        assert any(fragment in w for w in report["warnings"]), report["warnings"]
    kept, raw = stored(sqlite_url)
    assert kept is not None and json.loads(kept.to_json()) == found
    assert_no_key(emu, done.stdout, done.stderr, raw)


def test_read_only_on_an_empty_account_says_so_and_creates_nothing(
        tmp_path: Path, sqlite_url: str, started: Emulator) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"model": JOY, "task_type": JOY_TYPE, "image": "https://example.test/1.png"},
        {"model": "Wan", "task_type": "wan26-txt2video", "prompt": "a cat"},
    ])
    env = {**run_env(tmp_path, started, sqlite_url), "COLUMNS": "120"}
    done = doctor(tmp_path, env, str(manifest))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) <= 40  # one screen
    screen = done.stdout
    assert "history empty: filters cannot be checked (run with --probe)" in screen
    assert "Qubico/joycaption: counted from our own record" in screen
    assert "read-only" in screen and "run: reconcile" in screen
    assert creates(started) == 0
    requests = started.stats()["requests"]
    assert requests["delete"] == 0 and requests["histories"] <= 5
    kept, _ = stored(sqlite_url)
    assert kept is not None and kept.history_filter is None and kept.probed_at is None
    assert_no_key(started, done.stdout, done.stderr)


def test_read_only_learns_filters_from_tasks_already_there_and_keeps_the_probes_lag(
        tmp_path: Path, database_url: str, started: Emulator) -> None:
    env = run_env(tmp_path, started, database_url)
    probed = doctor(tmp_path, env, "--probe", "--yes", "--json", "--probe-timeout", "30")
    assert probed.returncode == 0, probed.stderr
    lag = json.loads(probed.stdout)["findings"]["history_lag_s"]
    with PiAPIClient(started.url, started.api_key) as client:
        for i in range(3):
            client.create_task(JOY, JOY_TYPE, {"image": f"https://example.test/{i}.png"})
    before = creates(started)
    done = doctor(tmp_path, env, "--model", JOY, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert creates(started) == before
    exact = [h for h in report["history"] if h["filter"] == JOY]
    assert exact and exact[0]["verdict"] == "works" and exact[0]["rows"] == 3
    assert report["probe"] is None
    found = report["findings"]
    assert found["history_filter"] == "exact" and found["history_has_input"] is True
    assert found["history_lag_s"] == lag and found["probed_at"] is not None
    status = piapi_bulk(tmp_path, env, "status")
    database, first = status.stdout.splitlines()[:2]
    assert database == f"database: {masked_url(database_url)}"
    assert first.startswith("doctor: checked ")
    assert first.endswith(f": history filter exact, inputs in rows, lag {lag:.1f} s")
    status_json = piapi_bulk(tmp_path, env, "status", "--json")
    assert json.loads(status_json.stdout)["doctor"]["history_filter"] == "exact"


@pytest.mark.parametrize("extra", [(), ("--json",), ("--probe", "--yes")])
def test_a_wrong_key_is_one_line_and_exit_2(tmp_path: Path, sqlite_url: str,
                                            started: Emulator, extra: tuple[str, ...]) -> None:
    wrong = "wrong-key-9876543210"
    env = {**run_env(tmp_path, started, sqlite_url), "PIAPI_API_KEY": wrong}
    done = doctor(tmp_path, env, "--model", JOY, *extra)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("piapi-bulk: PiAPI refused the API key")
    assert wrong not in done.stderr and started.api_key not in done.stderr
    assert stored(sqlite_url)[0] is None and creates(started) == 0


def test_probe_without_yes_and_no_terminal_spends_nothing(tmp_path: Path, sqlite_url: str,
                                                          started: Emulator) -> None:
    env = run_env(tmp_path, started, sqlite_url)
    done = doctor(tmp_path, env, "--probe")
    assert done.returncode == 2 and done.stdout == ""
    assert "--yes" in done.stderr and "$0.002" in done.stderr
    assert started.stats()["requests"]["account_info"] == 0 and creates(started) == 0
