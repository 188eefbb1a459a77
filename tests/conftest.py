"""Fixtures that own real services: a private redis-server, throwaway databases, the emulator,
`piapi-bulk` processes; and the `integration` marker, set from what a test uses.

A test that uses `redis_server` (or `redis_url`), `make_emulator`, `spawn`, `private_pg`, the
emulator package's `live_process`, or runs on the PostgreSQL case of `database_url`, is
marked `integration` here. One that starts a process another way (`piapi-bulk` through
`subprocess`) carries `pytest.mark.integration` itself: a test without the marker that tries
fails at once, so `pytest -m "not integration"` stays a quick check with no processes.
"""

from __future__ import annotations

import gc
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from tests.helpers import (
    EMULATOR_KEY,
    Emulator,
    dispose_polled_engines,
    opened,
    start_emulator,
    stop_process,
)
from workers.db import create_tables

PG_ADMIN_URL = os.environ.get("PIAPI_BULK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_PG = os.environ.get("PIAPI_BULK_REQUIRE_PG") == "1"


@pytest.fixture(scope="session", autouse=True)
def _private_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The default database lives in the user's data folder: tests (and the commands they
    start) get a throwaway one, never the real user's."""
    saved = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if saved is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = saved


def pytest_configure(config: pytest.Config) -> None:
    """Collection (importing every test module and what they import) runs with the cyclic
    collector paused, as piapi-bulk's own start-up does (scheduler/cli/startup.py)."""
    gc.disable()


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection loaded is frozen out of the collector's passes, which then walk only
    what the tests make."""
    gc.freeze()
    gc.enable()


INTEGRATION_FIXTURES = frozenset({"redis_server", "make_emulator", "spawn", "private_pg",
                                  "live_process"})
"""Fixtures that start processes or services: a test using one is an integration test."""


RUN_FIXTURES = frozenset({"make_emulator", "spawn", "private_pg"})
"""Fixtures of the tests that run piapi-bulk end to end: the longest, tens of seconds each."""


def _is_postgresql(item: pytest.Item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return bool(params.get("database_url") == "postgresql")


def _longest_first(item: pytest.Item) -> tuple[int, int]:
    """End-to-end runs first (PostgreSQL's before SQLite's), then the other integration tests,
    then the quick ones, so that the pytest-xdist workers, given one test at a time
    (`make test`: --maxschedchunk 1), all end on short tests. Only the order changes."""
    uses = set(getattr(item, "fixturenames", ()))
    group = 0 if uses & RUN_FIXTURES else 1 if item.get_closest_marker("integration") else 2
    return group, 0 if _is_postgresql(item) else 1


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if uses & INTEGRATION_FIXTURES or _is_postgresql(item):
            item.add_marker(pytest.mark.integration)
    items.sort(key=_longest_first)  # stable: collection order within a group


@pytest.fixture(autouse=True)
def _polled_engines_closed() -> Iterator[None]:
    """What the test's polls kept open (`helpers.polled_engine`) is closed after it."""
    yield
    dispose_polled_engines()


@pytest.fixture(autouse=True)
def _no_processes_in_fast_tests(request: pytest.FixtureRequest,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A test not marked `integration` may not start a process: it would slow down the quick
    check (`pytest -m "not integration"`) without saying so."""
    if request.node.get_closest_marker("integration") is not None:
        return

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kw: Any) -> None:
        raise RuntimeError(f"{request.node.nodeid} starts a process ({args!r}) but is not "
                           "marked integration: add pytest.mark.integration, or use a "
                           "fixture of tests/conftest.py that starts it")

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


def _pg_connect(url: str):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=3)


def _pg_reachable() -> str | None:
    try:
        with _pg_connect(PG_ADMIN_URL):
            return None
    except Exception as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)


@pytest.fixture(scope="session")
def pg_available() -> bool:
    problem = _pg_reachable()
    if problem is None:
        return True
    if REQUIRE_PG:
        pytest.fail(f"PostgreSQL is required (PIAPI_BULK_REQUIRE_PG=1) but unreachable: {problem}")
    return False


def _pg_database() -> Iterator[str]:
    name = f"piapi_bulk_test_{uuid.uuid4().hex[:16]}"
    with _pg_connect(PG_ADMIN_URL) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with _pg_connect(PG_ADMIN_URL) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_available: bool
) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'piapi-bulk.db'}"
        return
    if not pg_available:
        pytest.skip("PostgreSQL not reachable")
    yield from _pg_database()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on a fresh database with the tables (SQLite file or PostgreSQL, per run).

    `database_url` is parametrized over SQLite and PostgreSQL; it skips PostgreSQL when no
    server answers, unless PIAPI_BULK_REQUIRE_PG=1 makes that a failure.
    """
    with opened(database_url) as eng:
        create_tables(eng)
        yield eng


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file for tests that do not depend on the database kind."""
    return f"sqlite:///{tmp_path / 'piapi-bulk.db'}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port (never the shared one on 6379)."""
    from scheduler.services import start_private_redis
    from workers.settings import ConfigError

    try:
        url, server = start_private_redis(tmp_path_factory.mktemp("redis"))
    except ConfigError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The private Redis, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture
def private_pg() -> Iterator[object]:
    """A private PostgreSQL server this test may restart (see tests/pgserver.py)."""
    from tests.pgserver import PrivatePostgres, available

    problem = available()
    if problem is not None:
        if REQUIRE_PG:
            pytest.fail(f"a private PostgreSQL is required here but cannot start: {problem}")
        pytest.skip(problem)
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def make_emulator(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """Start the emulator: `make_emulator("--time-scale", "0.02", api_key=...)` returns a
    running `Emulator` (tests/helpers.py; log in tmp_path/emulator.log); each one started is
    stopped after the test."""
    started: list[Emulator] = []

    def make(*args: str, api_key: str = EMULATOR_KEY) -> Emulator:
        emu = start_emulator(tmp_path / "emulator.log", *args, api_key=api_key)
        started.append(emu)
        return emu

    yield make
    for emu in reversed(started):
        emu.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a long-lived `piapi-bulk` command (worker, dispatcher, webhook, flower):
    `spawn(env, "worker", "--concurrency", "2", log="worker.log")`, output appended to that
    file in tmp_path, the current directory tmp_path. Each is stopped (SIGTERM, then
    SIGKILL after 20 s) after the test, the last started first."""
    from tests.integration.e2e import cli

    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], *args: str,
              log: str = "process.log") -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "ab") as out:
            proc = subprocess.Popen(cli(*args), env=env, cwd=tmp_path, stdout=out,
                                    stderr=subprocess.STDOUT)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        stop_process(proc, timeout_s=20)
