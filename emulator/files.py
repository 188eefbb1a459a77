"""The fake output files at /ephemeral/{name}: bodies of a chosen size, some gone (404) as
PiAPI's are after a few days, and a ledger of every body served, per file.

A body is derived from the file's name alone (same name, same bytes), so a client's
stored copy can be checked against the ledger's size and sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emulator.config import EmulatorConfig
from emulator.responses import FILE_BODIES, error, json_response

_FILE_NAME = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(\w+)$")
PAUSE_POLL_S = 0.02
"""While files are paused, a held request looks this often whether it may go on."""


def body_of(name: str, ext: str, size: int) -> bytes:
    """The file's bytes: the type's few magic bytes, padded to `size` with bytes drawn
    from the name."""
    magic = FILE_BODIES[ext][1]
    if size <= len(magic):
        return magic
    return magic + random.Random(name).randbytes(size - len(magic))


def is_gone(name: str, fraction: float) -> bool:
    """Whether a file is one of the `fraction` that answer 404 (chosen by name, so the
    same file always answers the same)."""
    if fraction <= 0:
        return False
    draw = int.from_bytes(hashlib.sha256(f"gone/{name}".encode()).digest()[:8], "big")
    return draw / 2**64 < fraction


class Files:
    """Serves the files and keeps their ledger."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.served: dict[str, dict[str, Any]] = {}
        self.expired: set[str] = set()
        self.refused = 0
        self.failed = 0
        self.asked: dict[str, int] = {}
        self.waiting = 0

    def reset(self) -> None:
        """Forget the ledger and the expired files."""
        self.served = {}
        self.expired = set()
        self.refused = 0
        self.failed = 0
        self.asked = {}

    def expire(self, names: list[str]) -> None:
        """These files answer 404 from now on."""
        self.expired.update(names)

    async def serve(self, request: Request) -> Response:
        """GET /ephemeral/{name}: the body (after any pause), or 404."""
        name = request.path_params["name"]
        match = _FILE_NAME.match(name)
        if match is None or match.group(1) not in FILE_BODIES:
            return error(404, "file not found")
        if name in self.expired or is_gone(name, self.config.files_gone):
            self.refused += 1
            return error(404, "file not found")
        self.asked[name] = self.asked.get(name, 0) + 1
        if self.asked[name] <= self.config.files_fail_first:
            self.failed += 1
            return error(503, "service unavailable")
        if not await self._wait_unpaused(request):
            return Response(status_code=499)  # the client went away: nothing was served
        ext = match.group(1)
        body = body_of(name, ext, self.config.file_bytes)
        entry = self.served.setdefault(name, {"fetches": 0, "bytes": len(body),
                                              "sha256": hashlib.sha256(body).hexdigest()})
        entry["fetches"] += 1
        return Response(body, media_type=FILE_BODIES[ext][0])

    async def _wait_unpaused(self, request: Request) -> bool:
        """Hold the request while `files_paused`; False if the client left meanwhile."""
        if not self.config.files_paused:
            return True
        self.waiting += 1
        try:
            while self.config.files_paused:
                if await request.is_disconnected():
                    return False
                await asyncio.sleep(PAUSE_POLL_S)
            return not await request.is_disconnected()
        finally:
            self.waiting -= 1

    def snapshot(self) -> dict[str, Any]:
        """The ledger: per file served, its fetches, size and sha256; 404s, 503s; held
        requests."""
        return {"files": self.served, "refused": self.refused, "failed": self.failed,
                "waiting": self.waiting, "expired": sorted(self.expired)}


def file_routes(files: Files) -> list[Route]:
    """`GET /_emulator/files` (the ledger) and `POST /_emulator/files/expire`
    (`{"names": [file names or URLs]}`: those files answer 404 from then on)."""

    async def ledger(request: Request) -> Response:
        return json_response(files.snapshot())

    async def expire(request: Request) -> Response:
        try:
            names = json.loads(await request.body())["names"]
        except (ValueError, KeyError, TypeError):
            return error(400, 'expected {"names": [file names]}')
        files.expire([str(n).rsplit("/", 1)[-1] for n in names])
        return json_response(files.snapshot())

    return [Route("/_emulator/files", ledger, methods=["GET"]),
            Route("/_emulator/files/expire", expire, methods=["POST"])]
