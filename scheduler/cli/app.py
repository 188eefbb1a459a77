"""The Typer app the command modules register on (`--version` is its own option), and what
the commands share: settings read from the environment, the parsing of --set and
--service-mode into usage errors, the run folder, the database, the secrets to mask.

Only the command modules (and `scheduler.cli`) import this: it holds no command itself.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from workers.settings import ConfigError, Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

app = typer.Typer(
    name="piapi-bulk",
    help="Run CSV/JSONL manifests through PiAPI: never lose a row, never pay twice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    """`--version`: print `piapi-bulk <version>` and exit 0."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"piapi-bulk {version('piapi-bulk')}")
    except PackageNotFoundError:  # run from a source tree that was never installed
        typer.echo("piapi-bulk (version unknown: not installed)")
    raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.")] = False,
) -> None:
    """Options before the command."""


def parse_fields(values: list[str] | None) -> dict[str, str]:
    from scheduler.options import parse_set

    try:
        return parse_set(values)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def service_problem(exc: BaseException) -> str | None:
    """One line for a database or a Redis that cannot be used (not reachable, the login
    refused, no such database...): which one, password masked, and the first line of why.
    None for any other error. Redis is looked up only when loaded: an error cannot come
    from a library the command never imported."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    from scheduler.status import masked_url

    redis = sys.modules.get("redis")
    if isinstance(exc, (OperationalError, InterfaceError)):
        url, what = _setting("database_url"), "use the database"
        exc = exc.orig if exc.orig is not None else exc
    elif redis is not None and isinstance(exc, redis.exceptions.ConnectionError):
        url, what = _setting("redis_url"), "reach Redis"
    else:
        return None
    why = str(exc).strip().splitlines()
    return (f"cannot {what}{f' {masked_url(url)}' if url else ''}: "
            f"{why[0] if why else type(exc).__name__}")


def _setting(name: str) -> str | None:
    try:
        value = getattr(Settings(), name)
    except ValidationError:
        return None
    return str(value) if value else None


def require_free_port(host: str, port: int) -> None:
    """A usage error (one line) when `host:port` cannot be listened on, checked as the
    servers bind (SO_REUSEADDR), before one starts and fails with a traceback or an exit
    code of its own."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                              "(give another --port)") from exc


def load_settings(**overrides: Any) -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        # A validator's own ValueError reads better without pydantic's "Value error, ".
        why = first.get("ctx", {}).get("error") if first["type"] == "value_error" else None
        raise ConfigError(f"bad setting {first['loc'][0]}: {why or first['msg']}") from exc
    clean = {k: v for k, v in overrides.items() if v is not None}
    return settings.model_copy(update=clean) if clean else settings


def check_sidecar_flags(captions_as_sidecar: bool, overwrite_sidecars: bool) -> None:
    """`--overwrite-sidecars` only with `--captions-as-sidecar` (alone it would do nothing)."""
    if overwrite_sidecars and not captions_as_sidecar:
        raise ConfigError("--overwrite-sidecars needs --captions-as-sidecar")


def service_mode_of(value: str | None) -> str | None:
    from scheduler.options import parse_service_mode

    try:
        return parse_service_mode(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def run_folder() -> Path:
    return Path(os.environ.get("PIAPI_BULK_RUN_DIR", ".piapi-bulk"))


def secrets_of(settings: Settings) -> list[str]:
    return [settings.api_key.get_secret_value()] if settings.api_key else []


def database(settings: Settings) -> Engine:
    """An engine on DATABASE_URL, its schema brought to the newest migration."""
    from workers.db import create_tables, make_engine

    engine = make_engine(settings.database_url)
    create_tables(engine)
    return engine


def read_database(settings: Settings) -> Engine:
    """An engine for a command that only reads (`status`, `export`), the schema brought to
    the newest migration first when it is not there yet. On SQLite it passes no gate and
    takes no write lock, so it answers while a worker holds both (even a frozen one,
    until the stall watch restarts it)."""
    from workers.db import make_read_engine
    from workers.migrate import HEAD, current

    reader = make_read_engine(settings.database_url)
    if current(reader) != HEAD:
        database(settings).dispose()
    return reader


def fleet_redis_url(settings: Settings) -> str | None:
    """REDIS_URL, else the private Redis of a `run` in progress in this directory."""
    from scheduler.runner import REDIS_URL_FILE

    run_file = run_folder() / REDIS_URL_FILE
    if settings.redis_url:
        return settings.redis_url
    return run_file.read_text().strip() if run_file.is_file() else None
