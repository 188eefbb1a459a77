"""`run` asks PiAPI for the account first (the key, the concurrency limit): a passing 5xx
is asked again, not the end of the run; a PiAPI that keeps failing is one clear line.
Real HTTP to the emulator, whose faults are switched off between two tries."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.runner import ACCOUNT_TRIES, check_account
from tests.helpers import EMULATOR_KEY, MakeEmulator
from workers.settings import ConfigError, Settings


def test_the_account_is_asked_again_after_a_passing_5xx(tmp_path: Path,
                                                        make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--concurrency", "7", "--fault-5xx", "1.0", "--seed", "3")
    settings = Settings(base_url=emu.url, api_key=EMULATOR_KEY,
                        database_url=f"sqlite:///{tmp_path / 'db'}")
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            emu.configure(fault_5xx=0.0)  # PiAPI is back for the third try

    assert check_account(settings, sleep=sleep) == 7
    assert len(waits) == 2 and all(w > 0 for w in waits)  # backing off

    emu.configure(fault_5xx=1.0)
    waits.clear()
    with pytest.raises(ConfigError, match=f"cannot reach PiAPI at {emu.url}: HTTP 5"):
        check_account(settings, sleep=waits.append)
    assert len(waits) == ACCOUNT_TRIES - 1
