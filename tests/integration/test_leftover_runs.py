"""A run a test started and did not finish (an assertion failed first) is stopped with its
whole tree when the test ends (`e2e.stop_leftover_runs`, called by an autouse fixture):
a CI run found one still running 40 minutes after its test failed, with its Redis, worker
and dispatcher."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import MakeEmulator, wait_until
from tests.integration.e2e import (
    STARTED,
    caption_rows,
    children,
    process_state,
    run_env,
    start_run,
    stop_leftover_runs,
    write_jsonl,
)


def _alive(pid: int) -> bool:
    try:
        state = process_state(pid)
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_run_left_running_is_stopped_with_its_children(
        tmp_path: Path, database_url: str, make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--duration", "joycaption=300:300")  # nothing ends by itself
    manifest = write_jsonl(tmp_path / "m.jsonl", caption_rows(3))
    proc = start_run(tmp_path, run_env(tmp_path, emu, database_url), str(manifest))
    assert STARTED[-1] is proc

    def whole_tree() -> list[tuple[int, str]] | None:
        kids = children(proc.pid)
        return kids if len(kids) >= 3 else None

    tree = wait_until(whole_tree, 60, what="the run's redis-server, worker and dispatcher")
    assert stop_leftover_runs() == [proc.pid]
    assert proc.returncode is not None and not STARTED
    gone = [pid for pid, _ in tree]
    wait_until(lambda: not any(_alive(pid) for pid in gone), 30, what="its children gone")
    assert stop_leftover_runs() == []  # nothing left to stop
