"""The command line assembled: the groups of commands imported (in the order `--help` lists
them) and the one entry point that maps usage and configuration errors to one line."""

from __future__ import annotations

import gc
import sys

import typer

from scheduler.cli import manifests, operate, serve
from scheduler.cli.app import app, service_problem
from scheduler.manifest import ManifestError
from workers.settings import ConfigError

try:  # recent typer vendors its own copy of click; older ones use click itself
    from typer._click import exceptions as click_exc  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc  # type: ignore[no-redef,unused-ignore]

__all__ = ["app", "main", "manifests", "operate", "serve"]


def needs_emulator(args: list[str]) -> bool:
    """Whether this command line can reach the `emulator` command: it or the top-level
    help names it. Only then is it registered, since importing the emulator (an ASGI app,
    uvicorn) cost every other command, and every worker and dispatcher `run` starts, about a
    third of its start-up."""
    first = next((a for a in args if not a.startswith("-")), None)
    return first is None or first == "emulator"


def main() -> None:
    """Entry point: usage and configuration errors, and a database or Redis that cannot
    be used, are one line on stderr and exit 2."""
    if needs_emulator(sys.argv[1:]):
        serve.register_emulator()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="piapi-bulk", standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else "piapi-bulk --help")
        code = 0
    except click_exc.UsageError as exc:
        hint = f" (try: {exc.ctx.command_path} --help)" if exc.ctx else ""
        print(f"piapi-bulk: {exc.format_message()}{hint}", file=sys.stderr)
        code = 2
    except (ConfigError, ManifestError) as exc:
        print(f"piapi-bulk: {exc}", file=sys.stderr)
        code = 2
    except typer.Abort:
        code = 130
    except Exception as exc:  # a database or Redis that cannot be used is one line too
        problem = service_problem(exc)
        if problem is None:
            raise
        print(f"piapi-bulk: {problem}", file=sys.stderr)
        code = 2
    gc.freeze()  # exit skips its last collection (see serve.exit_without_collecting)
    sys.exit(code if isinstance(code, int) else 0)

