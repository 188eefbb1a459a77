"""The unauthenticated control API under /_emulator/: stats, ledger, files, config, reset."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emulator.files import file_routes
from emulator.responses import error, json_response
from emulator.runtime import ConfigError, Runtime
from emulator.views import ledger


def control_routes(rt: Runtime) -> list[Route]:
    """Routes for tests and benchmarks to observe and steer the emulator."""

    async def stats(request: Request) -> Response:
        body = rt.stats()
        rt.poke()  # reading advanced the engine: hand on any webhooks it produced
        return json_response(body)

    async def get_ledger(request: Request) -> Response:
        body = {**ledger(rt.engine, request.query_params.get("input_key")),
                "uploads": rt.uploads.ledger()}
        rt.poke()
        return json_response(body)

    async def get_config(request: Request) -> Response:
        return json_response(rt.config.public_config())

    async def patch_config(request: Request) -> Response:
        try:
            patch = json.loads(await request.body())
        except ValueError:
            return error(400, "invalid JSON body")
        if not isinstance(patch, dict):
            return error(400, "config patch must be a JSON object")
        try:
            rt.apply_patch(patch)
        except ConfigError as exc:
            return error(400, str(exc))
        return json_response(rt.config.public_config())

    async def reset(request: Request) -> Response:
        rt.reset()
        return json_response({"code": 200, "message": "reset"})

    return [
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/ledger", get_ledger, methods=["GET"]),
        *file_routes(rt.files),
        Route("/_emulator/config", get_config, methods=["GET"]),
        Route("/_emulator/config", patch_config, methods=["POST"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
    ]
