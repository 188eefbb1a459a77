"""Start-up with the cyclic garbage collector paused.

Each `piapi-bulk` command is a process, and `run` starts a worker and a dispatcher for every
batch, so start-up is what most of them cost: about a second of CPU, nearly all of it
importing (SQLAlchemy, pydantic, Celery, httpx, redis). Imports make many objects and free
few, so the collector's passes over them during start-up find nothing to collect; they took
about a sixth of it (measured: `import workers.tasks` 1.11 s of CPU with the collector, 0.93 s
without, medians of 15 interleaved runs). Once started, what was loaded is frozen
(`gc.freeze`): later passes skip it, as the exit's last pass does (`serve.exit_without_collecting`).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the collector off, then turn it back on (unless it was off already)
    with everything made so far frozen out of its passes."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_on:
            gc.enable()
