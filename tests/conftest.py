"""Fixtures that own real services: a private redis-server, throwaway databases, the emulator."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
