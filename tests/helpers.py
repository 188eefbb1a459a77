"""Small helpers shared by the tests: free ports (`scheduler.services.free_port`), bounded
waits, child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

from scheduler.services import free_port

__all__ = ["REPO", "free_port", "start_emulator", "stop_process", "wait_until"]

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


def wait_until(
    predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.05, what: str = ""
) -> T:
    """Call `predicate` until it returns something truthy; fail after `timeout_s`.

    The only way tests wait for something: bounded, and it says what it waited for.
    """
    deadline = time.monotonic() + timeout_s
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the predicate may fail until the thing is up
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(
                f"timed out after {timeout_s}s waiting for {what or predicate}{detail}"
            )
        time.sleep(interval_s)


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = 10
) -> None:
    """Stop a process this test started: SIGTERM, then SIGKILL after `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


def start_emulator(
    port: int, args: Sequence[str] = (), env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start `python -m emulator` on 127.0.0.1:`port` and wait until it answers."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--port", str(port), *args],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=REPO,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode}")
        return httpx.get(f"http://127.0.0.1:{port}/_emulator/stats", timeout=1).status_code == 200

    try:
        wait_until(up, 20, what="emulator to answer")
    except BaseException:
        stop_process(proc)
        raise
    return proc
