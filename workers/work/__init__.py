"""What a worker does for a message, without Celery, in the order a job meets it:

- `context`: `WorkerContext` (the record, the API, the limits, a clock) and `Tally` (a
  message's requests and 429s, reported to the fleet once: `with reported(ctx) as tally`);
- `create`: claim due jobs, POST each, record what PiAPI answered (`decide_create`);
- `poll`: GET running jobs' tasks, record what each answer means (`decide_poll`).

PiAPI's words are read in `workers.piapi`; the halves decide what an answer means for the
row in pure functions, table-tested, and the I/O around them only gathers and records.
"""

from workers.work.context import Tally, WorkerContext, reported

__all__ = ["Tally", "WorkerContext", "reported"]
