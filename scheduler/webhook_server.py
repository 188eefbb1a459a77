"""`piapi-bulk webhook`: receives PiAPI's task webhooks and makes the named job due for a GET.

PiAPI does not sign webhooks: it echoes the secret it was given in `x-webhook-secret`,
and the same secret is visible in every echoed task payload. So a webhook is never trusted
on its own. A call must name a job with that job's URL token and carry its batch's secret
(both compared in constant time); even then it only makes the job due for one confirming
GET now. Forged, replayed, duplicated or stale calls change nothing but, at most, the time
of one GET. Polling stays the safety net for webhooks that never arrive.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal, get_args

from sqlalchemy import select
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from workers import transitions as tr
from workers.db import transaction
from workers.fleet import Fleet
from workers.models import JOBS
from workers.piapi import Outcome, status_outcome
from workers.reconcile import records as ambiguous
from workers.webhook_signing import WebhookSigner

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000


Seen = Literal["received", "due", "ignored", "rejected"]
"""What became of a call: every call is received, then made due, ignored or rejected."""


class Counters:
    """What the receiver has seen (served at /stats for operators and tests): calls by
    what became of them, and ignored or rejected ones by reason."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter(dict.fromkeys(get_args(Seen), 0))
        self.reasons: Counter[str] = Counter()

    def add(self, seen: Seen, why: str | None = None) -> None:
        """Count one call as `seen`, and its reason when it has one."""
        self.calls[seen] += 1
        if why is not None:
            self.reasons[why] += 1

    def ignore(self, why: str) -> Response:
        self.add("ignored", why)
        return JSONResponse({"ok": True, "ignored": why})

    def reject(self, why: str, status: int) -> Response:
        self.add("rejected", why)
        return JSONResponse({"ok": False}, status_code=status)

    def stats(self) -> dict[str, Any]:
        """The JSON /stats serves: each count, then `reasons`."""
        return {**self.calls, "reasons": dict(self.reasons)}


def _job(engine: Engine, job_id: int) -> tuple[str, str | None, str] | None:
    with transaction(engine) as conn:
        row = conn.execute(select(JOBS.c.batch_id, JOBS.c.task_id, JOBS.c.state)
                           .where(JOBS.c.id == job_id)).first()
    return (str(row[0]), row[1], str(row[2])) if row else None


def _hint(body: bytes) -> tuple[str | None, Outcome | None]:
    """The task id the body claims and what its status word means (unverified)."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return None, None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        return None, None
    task_id, status = data.get("task_id"), data.get("status")
    return (task_id if isinstance(task_id, str) else None,
            status_outcome(status) if isinstance(status, str) else None)


class Receiver:
    """Checks a webhook call and, when it names a running job's task, makes the job due."""

    def __init__(self, engine: Engine, signer: WebhookSigner, fleet: Fleet | None,
                 clock: Callable[[], float]) -> None:
        self.engine, self.signer, self.fleet, self.clock = engine, signer, fleet, clock
        self.counters = Counters()

    async def hook(self, request: Request) -> Response:
        """POST /hooks/{job_id}/{token}."""
        self.counters.add("received")
        checked = await self._authenticate(request)
        if isinstance(checked, Response):
            return checked
        job_id, current_task, state, body = checked
        task_id, outcome = _hint(body)
        if state == "ambiguous" and task_id:
            # The job's create lost its answer; this names the task it made (a GET confirms).
            if await run_in_threadpool(ambiguous.hint, self.engine, job_id, task_id,
                                       self.clock()):
                return self._made_due()
            return self.counters.ignore("already looking")
        if outcome is not None and not outcome.ended:
            return self.counters.ignore("not terminal")
        if state == "submitting" and task_id:
            # PiAPI called back before the create's answer was recorded: the create's
            # record will make this task due at once (else it would wait for its schedule).
            if await run_in_threadpool(tr.hint_submitting, self.engine, job_id, task_id):
                return self._made_due()
            return self.counters.ignore("not the job's running task")
        if task_id is None or task_id != current_task or state != "running":
            return self.counters.ignore("not the job's running task")
        if not await run_in_threadpool(tr.mark_due, self.engine, job_id, task_id, self.clock()):
            return self.counters.ignore("already due")
        return self._made_due()

    def _made_due(self) -> Response:
        """The job is due for a GET now: wake the dispatcher to send it."""
        self.counters.add("due")
        if self.fleet is not None:
            self.fleet.wake()
        return JSONResponse({"ok": True, "due": True})

    async def _authenticate(
        self, request: Request
    ) -> Response | tuple[int, str | None, str, bytes]:
        """The job a genuine call names, or the response refusing the call."""
        try:
            job_id = int(request.path_params["job_id"])
        except ValueError:
            return self.counters.reject("bad job id", 404)
        if not self.signer.valid_token(job_id, str(request.path_params["token"])):
            return self.counters.reject("bad token", 404)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return self.counters.reject("body too large", 413)
        job = await run_in_threadpool(_job, self.engine, job_id)
        if job is None:
            return self.counters.reject("no such job", 404)
        batch_id, current_task, state = job
        if not self.signer.valid_secret(batch_id, request.headers.get("x-webhook-secret", "")):
            return self.counters.reject("bad secret", 401)
        return job_id, current_task, state, body


def webhook_routes(engine: Engine, signer: WebhookSigner, fleet: Fleet | None,
                   clock: Callable[[], float] = time.time) -> list[Route]:
    """The receiver's routes: POST /hooks/{job_id}/{token}; GET /healthz; GET /stats (also
    mounted in `piapi-bulk web`'s app, `scheduler.web.app`)."""
    receiver = Receiver(engine, signer, fleet, clock)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"ok": True})

    async def stats(_: Request) -> Response:
        return JSONResponse(receiver.counters.stats())

    return [
        Route("/hooks/{job_id}/{token}", receiver.hook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
    ]


def create_app(engine: Engine, signer: WebhookSigner, fleet: Fleet | None,
               clock: Callable[[], float] = time.time) -> Starlette:
    """The receiver alone (`webhook_routes`)."""
    return Starlette(routes=webhook_routes(engine, signer, fleet, clock))
