"""The fleet-wide halt after PiAPI refuses the account, kept in the database's `control` table."""

from __future__ import annotations

import logging
import os
import socket
from typing import NamedTuple

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from workers.db import session
from workers.models import Control

logger = logging.getLogger(__name__)

HALT_KEY = "halt"


def set_halt(engine: Engine, reason: str, now: float) -> None:
    """Stop admitting new creates fleet-wide until an operator (or `run`) clears it. The
    reason names the process PiAPI refused (host and pid): in a fleet, the machine whose
    key is wrong or whose account is out of credit."""
    reason = named(reason)
    try:
        _put(engine, reason, now)
    except IntegrityError:  # another thread or process halted it between our read and insert
        _put(engine, reason, now)
    logger.error("fleet halted: %s", reason)


def named(reason: str) -> str:
    """A halt's reason with the process PiAPI refused: `HTTP 401 (refused to pid 12 on a)`."""
    return f"{reason} (refused to pid {os.getpid()} on {socket.gethostname()})"


def _put(engine: Engine, reason: str, now: float) -> None:
    with session(engine) as s:
        row = s.get(Control, HALT_KEY)
        if row is None:
            s.add(Control(key=HALT_KEY, value=reason, updated_at=now))
        else:
            row.value, row.updated_at = reason, now


def get_halt(engine: Engine) -> str | None:
    """The reason the fleet is halted, or None."""
    found = halted_since(engine)
    return found[0] if found else None


class Halt(NamedTuple):
    """Why the fleet is halted, and since when (`_asdict()` is its JSON)."""

    reason: str
    since: float


def halted_since(engine: Engine) -> Halt | None:
    """Why and since when the fleet is halted, or None."""
    with session(engine) as s:
        row = s.get(Control, HALT_KEY)
        return Halt(row.value, row.updated_at) if row else None


def clear_halt(engine: Engine) -> None:
    """Let the fleet admit creates again."""
    with session(engine) as s:
        row = s.get(Control, HALT_KEY)
        if row is not None:
            s.delete(row)
