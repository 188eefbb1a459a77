"""Ctrl-C and SIGTERM for `run`: a stop asked for by a signal, taken at a safe point."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

logger = logging.getLogger(__name__)


class Interrupted(Exception):
    """The run was asked to stop (SIGINT or SIGTERM) and reached a safe point to do so."""


class StopRequest:
    """SIGINT and SIGTERM ask the run to stop; it stops at its next safe point.

    The handlers only set a flag. Raising from a handler (Python's default for SIGINT) can
    land anywhere, also between taking SQLite's lock file and the `try` that gives it back,
    and the results export that follows would then wait forever on a lock its own process
    holds. The run checks the flag between ingest chunks and between watch passes, where no
    transaction is open, so an interruption is seen within one chunk or the watch interval.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signum is None:  # later signals change nothing: one stop is enough
            logger.info("signal %d: stopping at the next safe point", signum)
            self.signum = signum

    @property
    def requested(self) -> bool:
        """Whether a stop was asked for."""
        return self.signum is not None

    def check(self, *_: object) -> None:
        """Raise `Interrupted` when a stop was asked for (usable as a progress callback)."""
        if self.signum is not None:
            raise Interrupted(f"signal {self.signum}")

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        """The handlers in place for SIGINT and SIGTERM; the previous ones back after."""
        previous = {sig: signal.signal(sig, self._handle)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
