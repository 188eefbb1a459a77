"""Shared builders for emulator unit tests: an engine on a fake clock."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from emulator.clock import FakeClock
from emulator.config import FAMILIES, EmulatorConfig
from emulator.counters import Counters
from emulator.engine import Engine
from emulator.faults import FaultInjector
from tests.helpers import Emulator, start_emulator

JOY = {"model": "Qubico/joycaption", "task_type": "joycaption-beta-one"}


def joy(image: str = "https://example.test/a.png", **extra: Any) -> dict[str, Any]:
    """A Joycaption create body."""
    return {**JOY, "input": {"image": image, **extra}}


def wan(prompt: str = "a cat", **extra: Any) -> dict[str, Any]:
    """A Wan text-to-video create body."""
    return {"model": "Wan", "task_type": "wan26-txt2video", "input": {"prompt": prompt, **extra}}


class Harness:
    """An engine, its fake clock and counters."""

    def __init__(self, **settings: Any) -> None:
        # Fixed durations and queue waits unless a test asks otherwise: exact times to assert.
        defaults: dict[str, Any] = {
            "seed": 1,
            "durations_s": dict.fromkeys(FAMILIES, (10.0, 10.0)),
            "queue_wait_fraction": (0.1, 0.1),
        }
        self.config = EmulatorConfig(**{**defaults, **settings})
        self.clock = FakeClock()
        self.counters = Counters()
        self.faults = FaultInjector(self.config, self.counters, random.Random(2))
        self.engine = Engine(
            self.config, self.clock, self.faults, random.Random(1), "http://127.0.0.1:9"
        )

    def at(self, t: float) -> None:
        """Move the fake clock to `t` seconds after its start."""
        self.clock.t = 1_750_000_000.0 + t

    @property
    def t0(self) -> float:
        return 1_750_000_000.0


@pytest.fixture
def h() -> Harness:
    return Harness()


# ---- live emulator process (integration tests) ---------------------------------------------

LIVE_KEY = "live-key"
STATIC = {"host", "port", "seed", "api_key"}


class Live:
    """A running `python -m emulator` and an httpx client for it."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.url = emulator.url
        self.http = httpx.Client(base_url=self.url, headers={"x-api-key": LIVE_KEY}, timeout=10)
        self.baseline = {k: v for k, v in self.config().items() if k not in STATIC}

    def config(self) -> dict[str, Any]:
        return dict(self.http.get("/_emulator/config").json())

    def configure(self, **patch: Any) -> dict[str, Any]:
        response = self.http.post("/_emulator/config", json=patch)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def restore(self) -> None:
        """Back to the starting settings, with no tasks and zero counters."""
        self.configure(**self.baseline)
        assert self.http.post("/_emulator/reset").status_code == 200

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get("/_emulator/stats").json())

    def ledger(self, **params: str) -> list[dict[str, Any]]:
        return list(self.http.get("/_emulator/ledger", params=params).json()["tasks"])

    def create(self, body: dict[str, Any]) -> httpx.Response:
        return self.http.post("/api/v1/task", json=body)

    def task(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/task/{task_id}")
        assert response.status_code == 200, response.text
        return dict(response.json()["data"])


@pytest.fixture(scope="module")
def live_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    log = tmp_path_factory.mktemp("emulator") / "emulator.log"
    # Real-world durations x 0.01: a Joycaption task takes 0.15-0.45 s.
    live = Live(start_emulator(log, "--time-scale", "0.01", api_key=LIVE_KEY))
    try:
        yield live
    finally:
        live.http.close()
        live.emulator.stop()


@pytest.fixture
def live(live_process: Live) -> Live:
    live_process.restore()
    return live_process


class Receiver:
    """A webhook receiver on loopback: records each POST; answers from a status script."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.arrived: list[float] = []
        """The wall time each POST arrived, beside `received`."""
        self.statuses = list(statuses or [])
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.received.append((
                        {k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
                    receiver.arrived.append(time.time())
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[tuple[dict[str, str], dict[str, Any]]]:
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()
