"""The harness's watch loops stop a run past its deadline or when one of its processes exits
(`SystemRun._gave_up`), with real child processes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bench.procs import Proc
from bench.runs import Ctx, RunSpec, SystemRun
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def test_a_run_gives_up_past_its_deadline_or_when_a_process_exits(tmp_path: Path) -> None:
    spec = RunSpec("s", None, None, tmp_path / "m.csv", 1, 1, [], deadline_s=10.0)
    run = SystemRun(spec, Ctx(tmp_path, 0, "k", 1, 1, False), tmp_path, "sqlite://")
    env = dict(os.environ)
    run.hook = None
    run.dispatcher = run.stack.add(Proc("dispatcher", "dispatcher", [
        sys.executable, "-c", "import time; time.sleep(60)"], env, tmp_path / "d.log"))
    worker = Proc("worker-1", "worker", [sys.executable, "-c", "print('boom'); exit(3)"], env,
                  tmp_path / "w.log")
    run.workers = [run.stack.add(worker)]
    try:
        assert run._gave_up(11.0, "late") and (run.status, run.error) == ("timeout", "late")
        run.status, run.error = "ok", None
        wait_until(lambda: not worker.alive(), 10.0, what="the worker to exit")
        assert run._gave_up(1.0, "late") and run.status == "error"
        assert run.error is not None and run.error.startswith("worker-1 exited 3:")
        assert "boom" in run.error
        run.workers, run.status, run.error = [], "ok", None
        assert not run._gave_up(1.0, "late") and (run.status, run.error) == ("ok", None)
    finally:
        run.stack.close()
