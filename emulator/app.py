"""The Starlette app: PiAPI routes (auth, faults, rate limit) over the engine; thin by design."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import mimetypes
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emulator.clock import Clock
from emulator.config import EmulatorConfig
from emulator.control_api import control_routes
from emulator.engine import OutOfBalance, OverLimit
from emulator.history import HistoryQuery
from emulator.latency import NetworkLatency
from emulator.responses import (
    GENERIC_FAILURE,
    JSON,
    DroppedResponse,
    error,
    fault_response,
    install_drop_log_filter,
    json_response,
    rate_limited,
    refusal,
)
from emulator.runtime import Runtime, base_url_for
from emulator.uploads import BAD_INPUT, PLAN_REFUSED, UPLOAD_PATH, decode_body
from emulator.validation import InvalidRequest
from emulator.views import account_info, active_tasks, history_page

Handler = Callable[[Request], Awaitable[Response]]
MAX_PAGE_SIZE = 100


def _success(data: object) -> Response:
    return json_response({"code": 200, "data": data, "message": "success"})


async def _wait_for_disconnect(request: Request, timeout_s: float) -> None:
    """Wait until the client goes away, at most `timeout_s`."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watch(), timeout_s)


def _history_query(request: Request) -> HistoryQuery:
    params = request.query_params
    try:
        page = int(params.get("page") or 1)
        page_size = int(params.get("page_size") or 10)
        start = params.get("start_time")
        end = params.get("end_time")
        query = HistoryQuery(
            page=page, page_size=page_size, model=params.get("model") or "",
            start_time=float(start) if start else None, end_time=float(end) if end else None,
        )
    except ValueError as exc:
        raise InvalidRequest("page, page_size, start_time and end_time must be numbers") from exc
    if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"page must be >= 1 and page_size between 1 and {MAX_PAGE_SIZE}")
    return query


def _client(request: Request) -> str:
    """The client's address, for the ledger (which host made or polled a task)."""
    return request.client.host if request.client else ""


class Api:
    """Route handlers over one Runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def guarded(self, name: str, handler: Handler) -> Handler:
        """Count, inject edge faults, check the key and the request rate, then handle."""
        rt = self.rt

        async def endpoint(request: Request) -> Response:
            rt.counters.requests[name] += 1
            fault = rt.faults.edge_fault()
            if fault is not None:
                return fault_response(fault)
            given = request.headers.get("x-api-key", "")
            expected = rt.config.api_key.get_secret_value()
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error(401, "Unauthorized")
            wait_s = rt.limiter.check()
            if wait_s > 0:
                rt.counters.rate_limited += 1
                return rate_limited(wait_s)
            rt.engine.advance()
            response = await handler(request)
            rt.poke()
            return response

        return endpoint

    async def create(self, request: Request) -> Response:
        """POST /api/v1/task."""
        rt = self.rt
        try:
            body = json.loads(await request.body())
        except ValueError:
            return refusal(400, "invalid JSON body")
        if rt.faults.lost_create():
            return DroppedResponse()
        try:
            task = rt.engine.create(body)
        except InvalidRequest as exc:
            return refusal(400, exc.message)
        except OutOfBalance as exc:
            # The account's wallet (not the provider pool's): only `data` says so.
            return refusal(402, str(exc), message=GENERIC_FAILURE)
        except OverLimit:
            rt.counters.creates_refused += 1
            retry_after = str(rt.config.refuse_retry_after_s)
            return refusal(429, "concurrent task limit exceeded",
                           headers={"Retry-After": retry_after})
        task.created_by = _client(request)
        envelope = task.envelope()  # the answer as of creation, whatever happens next
        rt.poke()
        fault = rt.faults.create_fault()
        if rt.config.create_latency_s > 0:
            await asyncio.sleep(rt.config.create_latency_s)
        if fault == "ambiguous":
            return DroppedResponse()
        if fault == "hang":
            await _wait_for_disconnect(request, rt.config.hang_s)
        return Response(envelope, media_type=JSON)

    async def get(self, request: Request) -> Response:
        """GET /api/v1/task/{task_id}."""
        task = self.rt.engine.get(request.path_params["task_id"])
        if task is None:
            return error(self.rt.config.unknown_task_status, "task not found")
        task.seen_by(_client(request), self.rt.engine.clock.now())
        return Response(task.envelope(), media_type=JSON)

    async def delete(self, request: Request) -> Response:
        """DELETE /api/v1/task/{task_id}: cancel while pending."""
        task_id = request.path_params["task_id"]
        result = self.rt.engine.cancel(task_id)
        if result == "not_found":
            return error(self.rt.config.unknown_task_status, "task not found")
        if result == "not_pending":
            return error(400, "task is not pending")
        return json_response({"code": 200, "message": f"task {task_id} canceled"})

    async def account_info(self, request: Request) -> Response:
        """GET /account/info."""
        return _success(account_info(self.rt.engine))

    async def active_tasks(self, request: Request) -> Response:
        """GET /account/active_tasks (404 when disabled, to exercise client fallbacks)."""
        if not self.rt.config.active_tasks_enabled:
            return error(404, "not found")
        return _success(active_tasks(self.rt.engine))

    async def histories(self, request: Request) -> Response:
        """GET /api/open/tasks/histories."""
        if self.rt.faults.history_fault():
            return error(500, "internal error")
        try:
            query = _history_query(request)
        except InvalidRequest as exc:
            return error(400, exc.message)
        return _success(history_page(self.rt.engine, query))

    async def files(self, request: Request) -> Response:
        """GET /ephemeral/{name}: bytes standing in for an output file (no auth)."""
        self.rt.counters.requests["files"] += 1
        return await self.rt.files.serve(request)

    async def upload(self, request: Request) -> Response:
        """POST /api/ephemeral_resource: store the file, answer the URL it is served at."""
        rt = self.rt
        store = rt.uploads
        store.seen += 1
        if store.seen <= rt.config.upload_fail_first:
            return error(503, "service unavailable")
        if rt.config.upload_plan == "free":
            return error(403, PLAN_REFUSED)
        decoded = decode_body(await request.body())
        if decoded is None:
            return error(400, BAD_INPUT)
        stored = store.add(*decoded, base_url_for(rt.config), rt.clock.now())
        return _success({"url": stored.url})

    async def uploaded(self, request: Request) -> Response:
        """GET /uploads/{file_id}/{name}: an uploaded file's bytes (no auth)."""
        found = self.rt.uploads.files.get(request.path_params["file_id"])
        if found is None or found.file_name != request.path_params["name"]:
            return error(404, "file not found")
        media_type = mimetypes.guess_type(found.file_name)[0] or "application/octet-stream"
        return Response(found.data, media_type=media_type)

    def routes(self) -> list[Route]:
        """The PiAPI routes."""
        g = self.guarded
        return [
            Route("/api/v1/task", g("create", self.create), methods=["POST"]),
            Route("/api/v1/task/{task_id}", g("get", self.get), methods=["GET"]),
            Route("/api/v1/task/{task_id}", g("delete", self.delete), methods=["DELETE"]),
            Route("/account/info", g("account_info", self.account_info), methods=["GET"]),
            Route("/account/active_tasks", g("active_tasks", self.active_tasks),
                  methods=["GET"]),
            Route("/api/open/tasks/histories", g("histories", self.histories),
                  methods=["GET"]),
            Route("/ephemeral/{name}", self.files, methods=["GET"]),
            Route(UPLOAD_PATH, g("upload", self.upload), methods=["POST"]),
            Route("/uploads/{file_id}/{name}", self.uploaded, methods=["GET"]),
        ]


def create_app(config: EmulatorConfig | None = None, clock: Clock | None = None) -> Starlette:
    """The emulator as an ASGI app; `app.state.runtime` exposes its parts to tests."""
    rt = Runtime(config or EmulatorConfig(), clock)
    install_drop_log_filter()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await rt.aclose()

    app = Starlette(
        routes=[*Api(rt).routes(), *control_routes(rt)], lifespan=lifespan,
        middleware=[Middleware(NetworkLatency, config=rt.config, rng=rt.latency_rng)],
    )
    app.state.runtime = rt
    return app
