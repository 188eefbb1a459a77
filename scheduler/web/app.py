"""The `piapi-bulk web` app: routes, the auth around them, and the webhook receiver's routes
when webhooks are configured (one server for both).

    GET /                        the run page (server-rendered; refreshes from the JSON)
    GET /api/batches             its JSON (`data.dashboard`); ?limit=N batches, newest first
    GET /batches/{id}/results    the batch's results as JSONL, streamed from the database
    GET /metrics                 Prometheus text (`metrics.RunCollector`)
    GET /healthz                 always open
    POST /hooks/{job_id}/{token} PiAPI's webhooks, with their own per-job checks
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from scheduler.export import iter_results
from scheduler.status import batch_status
from scheduler.web import data, page
from scheduler.web.auth import RequireAuth, WebAuth
from scheduler.web.metrics import registry
from workers.fleet import Fleet


@dataclass
class WebConfig:
    """What the app reads from and links to."""

    reader: Engine
    """Reads the page, JSON, metrics and results (`workers.db.make_read_engine`)."""
    fleet: Callable[[], Fleet | None] = lambda: None
    """The fleet's Redis, looked up at each scrape (a `run`'s private Redis comes and goes)."""
    flower_url: str = "http://127.0.0.1:5555"
    auth: WebAuth = field(default_factory=WebAuth)
    clock: Callable[[], float] = time.time


def _token_query(request: Request, auth: WebAuth) -> str:
    """`?token=...` when the page was opened with the token in its URL (its links and the
    script's requests need it too), else ""."""
    token = request.query_params.get("token")
    return "?" + urlencode({"token": token}) if auth.token and token else ""


def _limit(request: Request) -> int:
    try:
        return max(1, min(int(request.query_params.get("limit", data.MAX_BATCHES)), 200))
    except ValueError:
        return data.MAX_BATCHES


def web_routes(cfg: WebConfig) -> list[BaseRoute]:
    """The page, its JSON, the results files and /metrics."""
    models = data.ModelCache()
    scrape = registry(cfg.reader, cfg.fleet, models)

    def model(request: Request) -> dict[str, object]:
        return data.dashboard(cfg.reader, cfg.clock(), cfg.flower_url, _limit(request),
                              models)

    async def index(request: Request) -> Response:
        found = await run_in_threadpool(model, request)
        return HTMLResponse(page.render(found, _token_query(request, cfg.auth)))

    async def batches(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(model, request))

    async def results(request: Request) -> Response:
        batch_id = str(request.path_params["batch_id"])
        if await run_in_threadpool(batch_status, cfg.reader, batch_id) is None:
            return JSONResponse({"error": f"no batch {batch_id}"}, status_code=404)

        def lines() -> Iterator[str]:
            for obj in iter_results(cfg.reader, batch_id):
                yield json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson", headers={
            "content-disposition": f'attachment; filename="{batch_id}.results.jsonl"'})

    async def metrics(_: Request) -> Response:
        body = await run_in_threadpool(generate_latest, scrape)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/", index, methods=["GET"]),
        Route("/api/batches", batches, methods=["GET"]),
        Route("/batches/{batch_id}/results", results, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def create_web_app(cfg: WebConfig | None, hooks: Sequence[BaseRoute] | None = None) -> Starlette:
    """The server: the page's routes (`cfg`; None leaves them out, for a webhook receiver
    bound where no web credentials are set) and the webhook receiver's `hooks` (with its
    /healthz), else a /healthz of its own."""
    routes: list[BaseRoute] = list(hooks or [])
    if not hooks:
        routes.append(Route("/healthz", _healthz, methods=["GET"]))
    if cfg is None:
        return Starlette(routes=routes)
    return Starlette(routes=[*web_routes(cfg), *routes],
                     middleware=[Middleware(RequireAuth, auth=cfg.auth)])


async def _healthz(_: Request) -> Response:
    return JSONResponse({"ok": True})
