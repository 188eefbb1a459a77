"""The `piapi-bulk` command line: run, estimate, submit, doctor, status, cancel, retry, forget,
db, export, download, worker, dispatcher, webhook, web, flower, emulator.

One module per group of commands (`manifests`, `operate`, `serve`), each registering on the
one Typer app of `app`, assembled in `entry`; the options several commands take are declared
once in `options`. This module stays light: `main` loads the rest with the collector paused
(`startup.collector_paused`).
"""

from __future__ import annotations

from scheduler.cli.startup import collector_paused


def main() -> None:
    """Entry point (`piapi-bulk`, `python -m scheduler.cli`): see `entry.main`."""
    with collector_paused():
        from scheduler.cli import entry
    entry.main()
