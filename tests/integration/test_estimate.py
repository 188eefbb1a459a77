"""`run --dry-run` and `estimate` against the emulator: the estimate is printed, nothing is
created (the emulator's ledger stays empty, the database gets no batch), and a balance
below the estimate is one warning line."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from tests.helpers import REPO, Emulator, MakeEmulator, opened
from tests.integration.e2e import NO_PIAPI, piapi_bulk, run_env
from workers.db import is_sqlite
from workers.models import BATCHES

pytestmark = pytest.mark.integration  # every test here runs piapi-bulk as a process

DEMO = str(REPO / "examples" / "demo.jsonl")


def assert_nothing_created(emu: Emulator, tmp_path: Path, database_url: str) -> None:
    assert emu.ledger() == [] and emu.stats()["requests"]["create"] == 0
    assert not (tmp_path / "run").exists()  # no run folder, no private Redis
    if is_sqlite(database_url):
        assert not (tmp_path / "piapi-bulk.db").exists()  # not even created empty
        return
    with opened(database_url) as engine:
        if inspect(engine).has_table(BATCHES.name):
            with engine.connect() as conn:
                assert conn.execute(select(func.count()).select_from(BATCHES)).scalar_one() == 0


def kind_line(text: str, model: str) -> str:
    (line,) = [x for x in text.splitlines() if re.match(rf"^\W*{re.escape(model)}\s", x)]
    return line


def test_dry_run_prints_the_estimate_and_creates_nothing(
        tmp_path: Path, database_url: str, make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--concurrency", "20")
    env = run_env(tmp_path, emu, database_url)
    done = piapi_bulk(tmp_path, env, "run", DEMO, "--dry-run")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for model, cells in (("Qubico/joycaption", ["joycaption-beta-one", "200", "$2.00"]),
                         ("Wan", ["wan26-txt2video", "5", "$2.00", "$0.40", "3m00s prior"]),
                         ("music-u", ["generate_music", "2", "$0.10"])):
        line = kind_line(out, model)
        assert all(cell in line for cell in cells), line
    assert "$4.10" in kind_line(out, "total")
    assert "concurrency 20 (the account's limit)" in out
    assert "balance: $100,000.00" in out and "warning" not in out
    assert "nothing was created" in out
    assert_nothing_created(emu, tmp_path, database_url)

    done = piapi_bulk(tmp_path, env, "estimate", DEMO, "--json", "--concurrency", "5")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["rows"], data["invalid"], data["usd"]) == (207, 0, pytest.approx(4.10))
    assert data["concurrency"] == {"value": 5, "from": "--concurrency"}
    kinds = {k["model"]: k for k in data["kinds"]}
    assert kinds["Wan"]["usd"] == pytest.approx(2.0) and kinds["Wan"]["duration"] == "prior"
    assert data["wall_s"] == pytest.approx((200 * 30 + 5 * 180 + 2 * 120) / 5)
    assert data["balance_usd"] == pytest.approx(100_000) and not data["balance_below_estimate"]
    assert_nothing_created(emu, tmp_path, database_url)


def test_a_balance_below_the_estimate_is_one_warning(
        tmp_path: Path, sqlite_url: str, make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--balance-points", "10000000")  # $1.00
    env = run_env(tmp_path, emu, sqlite_url)
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(Path(DEMO).read_text() + '{"id": "video-9", "model": "Wan", "task_type": '
                        '"wan26-txt2video", "input": {"prompt": "p", "duration": 7}}\n')
    done = piapi_bulk(tmp_path, env, "estimate", str(manifest))
    assert done.returncode == 0, done.stderr
    warnings = [x for x in done.stdout.splitlines() if x.startswith("warning:")]
    assert warnings == ["warning: the balance $1.00 is below the estimate $4.10 ($3.10 short): "
                        "the run would stop when it runs out"]
    assert re.search(r"invalid 1: Wan wan26-txt2video: field 'duration' must be one of 5, 10, "
                     r"15, got 7 \(line 208\)", done.stdout)
    emu.configure(account_balance=False)
    done = piapi_bulk(tmp_path, env, "estimate", str(manifest))
    assert done.returncode == 0 and "balance: not reported" in done.stdout
    assert_nothing_created(emu, tmp_path, sqlite_url)


def test_without_a_key_or_with_a_mistake(tmp_path: Path, sqlite_url: str) -> None:
    env = {k: v for k, v in run_env(tmp_path, NO_PIAPI, sqlite_url).items()
           if k != "PIAPI_API_KEY"}
    done = piapi_bulk(tmp_path, env, "run", DEMO, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "concurrency 10 (assumed: the account was not read)" in done.stdout
    assert "account: not read (no PIAPI_API_KEY)" in done.stdout
    assert "$4.10" in done.stdout
    env = run_env(tmp_path, NO_PIAPI, sqlite_url)  # a key, but PiAPI does not answer
    done = piapi_bulk(tmp_path, env, "estimate", DEMO)
    assert done.returncode == 0 and "account: PiAPI not reachable at" in done.stdout
    done = piapi_bulk(tmp_path, env, "estimate", DEMO, "--model", "Qubico/joycaptoin")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("piapi-bulk: unknown model Qubico/joycaptoin (did you mean "
                           "Qubico/joycaption?)\n")
    assert not os.path.exists(tmp_path / "piapi-bulk.db")
