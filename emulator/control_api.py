"""The unauthenticated control API under /_emulator/: stats, ledger, files, config, advance
(the clock), reset."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emulator.files import file_routes
from emulator.responses import error, json_response
from emulator.runtime import ConfigError, Runtime
from emulator.views import ledger

MAX_ADVANCE_S = 86_400
"""The most one `POST /_emulator/advance` moves the clock (a day)."""


def configure(rt: Runtime, body: bytes) -> Response:
    """`POST /_emulator/config`: apply a JSON patch of settings; the settings as now."""
    try:
        patch = json.loads(body)
    except ValueError:
        return error(400, "invalid JSON body")
    if not isinstance(patch, dict):
        return error(400, "config patch must be a JSON object")
    try:
        rt.apply_patch(patch)
    except ConfigError as exc:
        return error(400, str(exc))
    return json_response(rt.config.public_config())


def advance_clock(rt: Runtime, body: bytes) -> Response:
    """`POST /_emulator/advance`: move the clock forward; the stats as of the new time."""
    seconds = advance_seconds(body)
    if isinstance(seconds, str):
        return error(400, seconds)
    rt.clock.advance(seconds)
    stats = rt.stats()  # reading advances the engine to the new time
    rt.poke()  # hand on the webhooks of what ended, re-arm the timer
    return json_response(stats)


def advance_seconds(body: bytes) -> float | str:
    """The seconds of a `POST /_emulator/advance` body `{"seconds": N}`, or what is wrong."""
    try:
        seconds = json.loads(body)["seconds"]
    except (ValueError, TypeError, KeyError):
        return 'body must be {"seconds": N}'
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not (
            0 <= seconds <= MAX_ADVANCE_S):
        return f"seconds must be a number from 0 to {MAX_ADVANCE_S}"
    return float(seconds)


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
        return configure(rt, await request.body())

    async def advance(request: Request) -> Response:
        return advance_clock(rt, await request.body())

    async def reset(request: Request) -> Response:
        rt.reset()
        return json_response({"code": 200, "message": "reset"})

    return [
        Route("/_emulator/stats", stats, methods=["GET"]),
        Route("/_emulator/ledger", get_ledger, methods=["GET"]),
        *file_routes(rt.files),
        Route("/_emulator/config", get_config, methods=["GET"]),
        Route("/_emulator/config", patch_config, methods=["POST"]),
        Route("/_emulator/advance", advance, methods=["POST"]),
        Route("/_emulator/reset", reset, methods=["POST"]),
    ]
