"""Small helpers shared by the tests: free ports, bounded waits, child processes, the emulator."""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy.engine import Engine

from scheduler.services import free_port
from workers.db import make_engine

__all__ = ["HTTP", "REPO", "dispose_polled_engines", "free_port", "opened", "png_bytes",
           "polled_engine", "start_emulator", "stop_process", "wait_until"]

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent

HTTP = httpx.Client(cookies=http.cookiejar.CookieJar(
    http.cookiejar.DefaultCookiePolicy(allowed_domains=[])))
"""One client for the tests' own requests to the servers they start (the emulator, the web
page, Flower). `httpx.get` builds a client a call, and each loaded the CA bundle: 18 ms of
CPU, twenty times a second while a test polled a server that was starting. It keeps no
cookies, so no request carries what an earlier one (another test's) was given."""


def png_bytes(width: int = 2, height: int = 2, shade: int = 0) -> bytes:
    """A valid grey PNG (zlib and struct only; Pillow is no dependency), `shade` 0-255."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\0" + bytes([shade % 256]) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                                  0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@contextmanager
def opened(database_url: str) -> Iterator[Engine]:
    """An engine on this database for as long as it is needed; disposed after."""
    engine = make_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


_POLLED: dict[str, Engine] = {}


def polled_engine(database_url: str) -> Engine:
    """An engine on this database kept for the test's polls (`wait_until` predicates read
    the record twenty times a second; an engine a poll connected afresh each time, forking a
    PostgreSQL backend). Disposed after each test (`dispose_polled_engines`)."""
    engine = _POLLED.get(database_url)
    if engine is None:
        engine = _POLLED[database_url] = make_engine(database_url, pool_size=1)
    return engine


def dispose_polled_engines() -> None:
    """Close what `polled_engine` opened (tests/conftest.py does so after every test)."""
    while _POLLED:
        _POLLED.popitem()[1].dispose()


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
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = 10,
    *, group: bool = False,
) -> None:
    """Stop a process this test started: SIGTERM, then SIGKILL after `timeout_s`; with
    `group`, each signal goes to its whole process group (one started in a session of its
    own, with the children it started)."""
    if proc.poll() is not None:
        return

    def signal_it(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    signal_it(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        signal_it(signal.SIGKILL)
        proc.wait(timeout=timeout_s)


EMULATOR_KEY = "test-key-0123456789"
"""The API key emulators started by tests accept, unless a test gives its own."""


@dataclass
class Emulator:
    """A running emulator process and its control API."""

    port: int
    proc: subprocess.Popen[bytes]
    api_key: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        return dict(HTTP.get(f"{self.url}/_emulator/stats", timeout=5).json())

    def ledger(self) -> list[dict[str, Any]]:
        return list(HTTP.get(f"{self.url}/_emulator/ledger", timeout=10).json()["tasks"])

    def uploads(self) -> list[dict[str, Any]]:
        """Every file uploaded to the emulator, oldest first (url, file_name, size, time)."""
        return list(HTTP.get(f"{self.url}/_emulator/ledger", timeout=10).json()["uploads"])

    def configure(self, **config: Any) -> None:
        """Change settings of the running emulator (`/_emulator/config`)."""
        HTTP.post(f"{self.url}/_emulator/config", json=config, timeout=5).raise_for_status()

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward (`/_emulator/advance`): its tasks end as if that
        much time had passed, without the test waiting for it."""
        HTTP.post(f"{self.url}/_emulator/advance", json={"seconds": seconds},
                   timeout=5).raise_for_status()

    def stop(self) -> None:
        stop_process(self.proc)


MakeEmulator = Callable[..., Emulator]
"""The `make_emulator` fixture (tests/conftest.py): `make_emulator(*args, api_key=...)`."""

Spawn = Callable[..., "subprocess.Popen[bytes]"]
"""The `spawn` fixture (tests/conftest.py): `spawn(env, *command, log="name.log")`."""


def start_emulator(log: Path, *args: str, api_key: str = EMULATOR_KEY) -> Emulator:
    """`python -m emulator` on a free loopback port (seed 7 unless `args` give another), once
    it answers; its output is appended to `log`. Tests use the `make_emulator` fixture, which
    stops it afterwards."""
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "emulator", "--port", str(port), "--api-key", api_key,
             "--seed", "7", *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"emulator exited with {proc.returncode} (see {log})")
        return HTTP.get(f"http://127.0.0.1:{port}/_emulator/stats", timeout=1).status_code == 200

    try:
        wait_until(up, 20, what="emulator to answer")
    except BaseException:
        stop_process(proc)
        raise
    return Emulator(port, proc, api_key)
